"""The Python side of the new-order command builder (hftgate/native/admission.py): a batch and
lone orders admitted one C call each give the same rows, a lone order's id and rules are checked
in that call, a refusal writes nothing and says which order, and arrays of the wrong dtype or
length never reach C. The rules themselves: native/tests/test_admission.c."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hftgate.matching.types import COMMAND_DTYPE
from hftgate.native.admission import NewOrderCommands
from hftgate.native.client_ids import ClientIdIndex
from hftgate.native.risk import InstrumentRules, RiskCheck
from hftgate.v1 import common_pb2 as common
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


def lone_order_checks() -> tuple[RiskCheck, InstrumentRules, ClientIdIndex]:
    """A risk check bound to an account with room for anything, rules that take any price and
    size, and an index that knows one id of account 9 ("used")."""
    check = RiskCheck(NEW_ORDER_DTYPE)
    check.bind_account(False, 1 << 40, np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64), 0)
    # (trading enabled, max lots, price ceiling, max notional, band, reference, tick, lot)
    rules = InstrumentRules((1, 1 << 20, 1 << 20, 1 << 50, 0, 0, 1, 1))
    ids = ClientIdIndex()
    ids.add_one(9, b"used", 77)
    return check, rules, ids


def test_a_batch_and_lone_orders_admitted_one_call_each_give_the_same_rows() -> None:
    rng = random.Random(3)
    commands_of = builder()
    check, rules, ids = lone_order_checks()
    count = 1_000
    orders = random_orders(rng, count)
    symbols = np.array([rng.randint(0, 3) for _ in range(count)], np.int64)
    lengths = np.array([rng.randint(1, 64) for _ in range(count)], np.int64)
    commands, meta = np.empty(count, COMMAND_DTYPE), np.empty(count, META_DTYPE)
    commands_of.fill(orders, symbols, None, 9, 500, lengths, commands, meta)
    accepted = 0
    for i in range(count):
        before = tuple(bytes(b) for b in commands_of.one_bytes())
        client_id = f"c{i}-".ljust(int(lengths[i]), "x")[: int(lengths[i])].encode()
        reason = commands_of.admit_one(
            orders[i].item(), client_id, ids, check.one_account(10, 1), rules, int(symbols[i]), 9, 500 + i
        )
        command, row = commands_of.one_bytes()
        if reason:  # (the rules refuse some random mixes: post-only IOC, a stop without a price...)
            assert (bytes(command), bytes(row)) == before  # nothing written
            continue
        accepted += 1
        assert bytes(command) == commands[i : i + 1].tobytes()
        assert bytes(row) == meta[i : i + 1].tobytes()
        assert commands_of.one_command.tobytes() == bytes(command)
    assert accepted > 40
    market = (orders["order_type"] == 2) & (orders["protection"] == 0) & (symbols == 1)
    assert (commands["price"][market & (orders["side"] == 1)] == 1_030).all()
    assert (commands["price"][market & (orders["side"] == 2)] == 970).all()


def test_a_lone_orders_id_and_rules_are_checked_in_the_same_call() -> None:
    commands_of = builder()
    check, rules, ids = lone_order_checks()
    order = (1, 1, 1, 100, 0, 5, 0, 0, 0, 0, 0)  # a GTC buy limit of 5 at 100

    def admit(client_id: bytes, account_id: int = 9, fields: tuple[int, ...] = order, **kw: object) -> int:
        return commands_of.admit_one(
            fields,
            client_id,
            ids,
            check.one_account(10, 1),
            rules,
            1,
            account_id,
            1,
            **kw,  # type: ignore[arg-type]
        )

    assert admit(b"new") == 0
    assert admit(b"used") == common.REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID
    assert admit(b"used", account_id=10) == 0  # another account's ids are its own
    for bad in (b"", b"x" * 65, b"a b\n", "\u00e9".encode()):
        assert admit(bad) == common.REJECT_REASON_INVALID_ORDER, bad
    assert admit(b"x" * 64) == 0
    assert admit(b"new", fields=(7, *order[1:])) == common.REJECT_REASON_INVALID_ORDER  # no such side
    too_big = (1, 1, 1, 100, 0, 1 << 21, 0, 0, 0, 0, 0)
    assert admit(b"new", fields=too_big) == common.REJECT_REASON_MAX_QUANTITY
    before = tuple(bytes(b) for b in commands_of.one_bytes())
    assert admit(b"other", fields=(2, 1, 1, 90, 0, 3, 0, 0, 0, 0, 0), build=False) == 0
    assert tuple(bytes(b) for b in commands_of.one_bytes()) == before  # checked only: nothing written
    with pytest.raises(ValueError):  # an order id of 0 is no order's
        commands_of.admit_one(order, b"new", ids, check.one_account(10, 1), rules, 1, 9, 0)


def test_an_order_out_of_range_is_refused_and_nothing_is_written() -> None:
    commands_of = builder()
    orders = random_orders(random.Random(4), 3)
    orders[2]["side"] = 7
    commands, meta = np.zeros(3, COMMAND_DTYPE), np.zeros(3, META_DTYPE)
    with pytest.raises(ValueError, match="order 2 of 3"):
        commands_of.fill(orders, np.zeros(3, np.int64), None, 9, 1, np.ones(3, np.int64), commands, meta)
    assert not commands.tobytes().strip(b"\0") and not meta.tobytes().strip(b"\0")


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
