"""The Python side of the new-order command builder (hftgate/native/admission.py): a batch and a
single order give the same rows, a refusal writes nothing and says which order, and arrays of the
wrong dtype or length never reach C. The rules themselves: native/tests/test_admission.c."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hftgate.matching.types import COMMAND_DTYPE
from hftgate.native.admission import NewOrderCommands
from services.execution.records import META_DTYPE
from services.execution.risk import NEW_ORDER_DTYPE


def builder() -> NewOrderCommands:
    commands = NewOrderCommands(4, NEW_ORDER_DTYPE, COMMAND_DTYPE, META_DTYPE)
    commands.set_band(1, 1_000, 30)
    return commands


def random_orders(rng: random.Random, count: int) -> np.ndarray:
    orders = np.zeros(count, NEW_ORDER_DTYPE)
    for row in orders:
        row["side"] = rng.choice((1, 2))
        row["order_type"] = rng.randint(1, 4)
        row["tif"] = rng.randint(0, 3)
        row["price"] = rng.randint(1, 2_000)
        row["stop_price"] = rng.choice((0, rng.randint(1, 2_000)))
        row["quantity"] = rng.randint(1, 100)
        row["display"] = rng.choice((0, 1))
        row["post_only"] = rng.choice((0, 1))
        row["stp"] = rng.randint(0, 5)
        row["protection"] = rng.choice((0, 0, rng.randint(1, 2_000)))
        row["priority"] = rng.randint(-5, 5)
    return orders


def test_a_batch_and_one_order_at_a_time_give_the_same_rows() -> None:
    rng = random.Random(3)
    commands_of = builder()
    orders = random_orders(rng, 200)
    symbols = np.array([rng.randint(0, 3) for _ in range(200)], np.int64)
    lengths = np.array([rng.randint(1, 64) for _ in range(200)], np.int64)
    commands, meta = np.empty(200, COMMAND_DTYPE), np.empty(200, META_DTYPE)
    commands_of.fill(orders, symbols, None, 9, 500, lengths, commands, meta)
    for i in range(200):
        command, row = commands_of.one(orders[i].item(), int(symbols[i]), 9, 500 + i, int(lengths[i]))
        assert bytes(command) == commands[i : i + 1].tobytes()
        assert bytes(row) == meta[i : i + 1].tobytes()
    market = (orders["order_type"] == 2) & (orders["protection"] == 0) & (symbols == 1)
    assert (commands["price"][market & (orders["side"] == 1)] == 1_030).all()
    assert (commands["price"][market & (orders["side"] == 2)] == 970).all()


def test_an_order_out_of_range_is_refused_and_nothing_is_written() -> None:
    commands_of = builder()
    orders = random_orders(random.Random(4), 3)
    orders[2]["side"] = 7
    commands, meta = np.zeros(3, COMMAND_DTYPE), np.zeros(3, META_DTYPE)
    with pytest.raises(ValueError, match="order 2 of 3"):
        commands_of.fill(orders, np.zeros(3, np.int64), None, 9, 1, np.ones(3, np.int64), commands, meta)
    assert not commands.tobytes().strip(b"\0") and not meta.tobytes().strip(b"\0")
    with pytest.raises(ValueError):
        commands_of.one(orders[2].item(), 0, 9, 1, 1)


def test_arrays_that_do_not_fit_never_reach_c() -> None:
    commands_of = builder()
    orders = random_orders(random.Random(5), 2)
    ones = np.ones(2, np.int64)
    commands, meta = np.zeros(2, COMMAND_DTYPE), np.zeros(2, META_DTYPE)
    with pytest.raises(TypeError):
        commands_of.fill(orders, np.zeros(1, np.int64), None, 9, 1, ones, commands, meta)
    with pytest.raises(TypeError):
        commands_of.fill(orders, np.zeros(2, np.int64), None, 9, 1, ones[:1], commands, meta)
    with pytest.raises(TypeError):
        commands_of.fill(orders, np.zeros(2, np.int64), None, 9, 1, ones, commands[:1], meta)
    with pytest.raises(TypeError):
        commands_of.fill(orders, np.zeros(2, np.int64), None, 9, 1, ones, np.zeros(2, META_DTYPE), meta)


def test_strided_orders_are_read_as_the_rows_they_are() -> None:
    commands_of = builder()
    orders = random_orders(random.Random(6), 10)
    every_other = orders[::2]  # a view with a stride: not contiguous
    assert not every_other.flags.c_contiguous
    symbols = np.zeros(10, np.int64)[::2]
    commands, meta = np.empty(5, COMMAND_DTYPE), np.empty(5, META_DTYPE)
    commands_of.fill(every_other, symbols, None, 9, 1, np.ones(5, np.int64), commands, meta)
    assert commands["qty"].tolist() == every_other["quantity"].tolist()
