"""Replaying CME order-by-order records: how records become commands, and how close the engine's fills come
to the exchange's."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from hftgate.matching import Action, EventType, Side, TimeInForce
from hftgate.matching.mbo import (
    TRADE_ORDER_ID_BASE,
    data_dir,
    fill_agreement,
    load_mbo,
    mbo_files,
    mbo_fill_agreement,
    run_replay,
)

HEADER = (
    "ts_recv,ts_event,rtype,publisher_id,instrument_id,action,side,price,size,channel_id,order_id,flags,"
    "ts_in_delta,sequence"
)
TICK = 250_000_000  # 0.25 in 1e-9 units


def write_mbo(tmp_path: Path, records: list[tuple[int, str, str, float, int, int]]) -> Path:
    """A Databento-style MBO file from (ts_event, action, side, price, size, order_id) tuples."""
    lines = [HEADER] + [
        f"{ts},{ts},160,1,17077,{action},{side},{round(price * 1e9)},{size},0,{order_id},0,0,{i}"
        for i, (ts, action, side, price, size, order_id) in enumerate(records)
    ]
    path = tmp_path / "databento_glbx-mdp3_ESX9_mbo_test.csv.gz"
    with gzip.open(path, "wt") as stream:
        stream.write("\n".join(lines) + "\n")
    return path


def test_records_become_commands_for_the_same_orders(tmp_path: Path) -> None:
    path = write_mbo(
        tmp_path,
        [
            (1, "A", "B", 4800.00, 3, 11),
            (2, "A", "A", 4800.50, 2, 12),
            (3, "M", "B", 4800.25, 3, 11),
            (4, "T", "B", 4800.50, 2, 99),
            (4, "F", "A", 4800.50, 2, 12),
            (5, "C", "B", 4800.25, 3, 11),
        ],
    )
    replay = load_mbo(path)
    assert replay.tick_nanos == TICK
    commands = replay.commands
    assert commands["action"].tolist() == [Action.NEW, Action.NEW, Action.REPLACE, Action.NEW, Action.CANCEL]
    assert commands["price"].tolist()[:4] == [19200, 19202, 19201, 19202]
    trade = commands[3]
    assert trade["order_id"] >= TRADE_ORDER_ID_BASE
    assert (trade["side"], trade["tif"], trade["qty"]) == (Side.BUY, TimeInForce.IOC, 2)
    assert replay.fill_command.tolist() == [3]
    assert replay.fill_maker_order_id.tolist() == [12]
    events, _ = run_replay(replay)
    assert fill_agreement(replay, events) == replay.recorded_fill_qty == 2


def test_a_cancel_published_after_a_trade_of_the_same_event_is_applied_before_it(tmp_path: Path) -> None:
    # Orders 21 and 22 queue at one price; the exchange cancelled 21, then a buyer took 22. The cancel
    # carries the trade's timestamp but comes after it in the records.
    path = write_mbo(
        tmp_path,
        [
            (1, "A", "A", 4800.50, 1, 21),
            (2, "A", "A", 4800.50, 1, 22),
            (3, "T", "B", 4800.50, 1, 99),
            (3, "F", "A", 4800.50, 1, 22),
            (3, "C", "A", 4800.50, 1, 22),
            (3, "C", "A", 4800.50, 1, 21),
        ],
    )
    replay = load_mbo(path)
    events, _ = run_replay(replay)
    assert fill_agreement(replay, events) == 1


def test_crossing_pre_open_orders_wait_for_the_opening_auction(tmp_path: Path) -> None:
    path = write_mbo(
        tmp_path,
        [
            (1, "A", "B", 4800.00, 5, 31),
            (2, "A", "A", 4799.75, 3, 32),  # crosses: the market is not open yet
            (3, "T", "N", 4800.00, 3, 0),  # the opening print
            (3, "F", "N", 4800.00, 3, 31),
            (3, "F", "N", 4800.00, 3, 32),
            (4, "A", "A", 4800.25, 1, 33),
        ],
    )
    replay = load_mbo(path)
    events, engine = run_replay(replay)
    assert not np.any(events["type"] == EventType.FILL)  # the auction is not replayed as trades
    assert engine.best_bid() == (19200, 2)
    assert engine.best_ask() == (19201, 1)
    assert replay.recorded_fill_qty == 6  # the auction's fills count, as not reproduced
    assert fill_agreement(replay, events) == 0


def test_an_iceberg_slice_refilled_by_a_modify_re_enters_at_the_back(tmp_path: Path) -> None:
    path = write_mbo(
        tmp_path,
        [
            (1, "A", "A", 4800.50, 2, 41),  # an iceberg showing 2
            (2, "A", "A", 4800.50, 1, 42),
            (3, "T", "B", 4800.50, 2, 98),
            (3, "F", "A", 4800.50, 2, 41),
            (4, "M", "A", 4800.50, 2, 41),  # the next slice
            (5, "T", "B", 4800.50, 1, 99),
            (5, "F", "A", 4800.50, 1, 42),
        ],
    )
    replay = load_mbo(path)
    events, engine = run_replay(replay)
    assert fill_agreement(replay, events) == 3
    assert engine.orders(Side.SELL)["order_id"].tolist() == [41]


def test_agreement_counts_only_the_same_order_at_the_same_price(tmp_path: Path) -> None:
    path = write_mbo(
        tmp_path,
        [
            (1, "A", "A", 4800.50, 1, 51),
            (2, "A", "A", 4800.50, 1, 52),
            (3, "T", "B", 4800.50, 1, 99),
            (3, "F", "A", 4800.50, 1, 52),  # the exchange says 52; plain FIFO fills 51
        ],
    )
    replay = load_mbo(path)
    events, _ = run_replay(replay)
    assert fill_agreement(replay, events) == 0


def test_data_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HFTGATE_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    assert data_dir("/elsewhere") == Path("/elsewhere")
    assert mbo_files(tmp_path) == []


@pytest.mark.skipif(not mbo_files(data_dir()), reason="shared recorded data not available")
def test_the_recorded_cme_days_agree_above_ninety_percent() -> None:
    agreed, recorded = mbo_fill_agreement(data_dir())
    assert recorded > 9000
    assert agreed / recorded >= 0.90
