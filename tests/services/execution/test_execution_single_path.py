"""SubmitOrder's single-order path ends in the same state as the batch path for the same inputs."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hftgate.bench.execution import drive_stream
from hftgate.native.order_wire import NewOrderWireDecoder
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.recovery import comparable_books
from services.execution.state import ExecutionState

ACCOUNTS = ("alice", "bob")


def key(name: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", f"hftgate-demo-{name}"),)


def random_order(rng: random.Random, client_id: str) -> api.NewOrder:
    """Limit, IOC, market, stop and iceberg orders around one price, some of them invalid."""
    side = rng.choice((common.SIDE_BUY, common.SIDE_SELL))
    price = rng.randint(97, 103)
    qty = rng.randint(1, 12)
    roll = rng.random()
    fields: dict[str, Any] = {"order_type": api.ORDER_TYPE_LIMIT}
    if roll < 0.1:
        fields = {"order_type": api.ORDER_TYPE_MARKET}
        price = 0
    elif roll < 0.15:
        fields = {"order_type": api.ORDER_TYPE_STOP_LIMIT, "stop_price_ticks": price}
    elif roll < 0.2:
        fields = {"order_type": api.ORDER_TYPE_STOP_MARKET, "stop_price_ticks": price}
        price = 0
    elif roll < 0.27 and qty > 2:
        fields["display_quantity_lots"] = qty // 2
    elif roll < 0.35:
        fields["time_in_force"] = api.TIME_IN_FORCE_IOC
    elif roll < 0.4:
        fields["post_only"] = True
    elif roll < 0.43:
        qty = 0  # invalid quantity
    elif roll < 0.46:
        fields["self_trade_prevention"] = api.SELF_TRADE_PREVENTION_CANCEL_INCOMING
    symbol = "NOSUCH" if roll > 0.98 else rng.choice(("BTCUSDT", "ETHUSDT"))
    return api.NewOrder(
        client_order_id=client_id, symbol=symbol, side=side, price_ticks=price, quantity_lots=qty, **fields
    )


def ack_view(ack: api.OrderAck) -> tuple[Any, ...]:
    return (
        ack.client_order_id,
        ack.order_id,
        ack.sequence,
        ack.status,
        ack.reason,
        ack.reason_text,
        ack.price_ticks,
        ack.quantity_lots,
        ack.leaves_quantity_lots,
        ack.cum_quantity_lots,
        ack.durable,
    )


def state_view(state: ExecutionState) -> tuple[Any, ...]:
    """Everything but wall-clock timestamps (a batch and single calls are entered at other times)."""
    orders = state.orders[: state.order_count].copy()
    orders["created_ns"] = orders["updated_ns"] = 0
    reports = state.retained_reports_after(0).copy()
    reports["received_ns"] = reports["transact_ns"] = 0
    rows = len(state.open_orders)
    return (
        comparable_books(state.engine, state.symbol_ids),
        orders.tobytes(),
        list(state.client_ids),
        state.next_input_seq,
        state.next_report_seq,
        state.next_trade_id,
        state.position[:rows].tobytes(),
        state.open_buy[:rows].tobytes(),
        state.open_sell[:rows].tobytes(),
        state.open_orders.tobytes(),
        reports.tobytes(),
        state.trades,
        state.traded_lots,
    )


async def submit_runs(harness: Any, runs: list[tuple[str, list[api.NewOrder], bool]], mode: str) -> list[Any]:
    """Each run as one SubmitOrders call, or (unless ``mode`` is "batched") order by order where
    the run says so: SubmitOrder calls ("single"), or one OrderStream message an order ("stream")."""
    acks: list[tuple[Any, ...]] = []
    for who, orders, one_by_one in runs:
        if one_by_one and mode == "single":
            for order in orders:
                single = await harness.stub.SubmitOrder(
                    api.SubmitOrderRequest(order=order), metadata=key(who)
                )
                acks.append(ack_view(single.ack))
        elif one_by_one and mode == "stream":
            messages = [api.OrderStreamRequest(inputs=[api.OrderInput(new_order=o)]) for o in orders]
            account = SimpleNamespace(metadata=key(who))
            streamed, _ = await drive_stream(harness.stub, account, messages, window_inputs=1)
            acks.extend(ack_view(a) for a in streamed)
        else:
            response = await harness.stub.SubmitOrders(
                api.SubmitOrdersRequest(orders=orders), metadata=key(who)
            )
            acks.extend(ack_view(a) for a in response.acks)
    return acks


async def test_single_and_batched_submissions_give_the_state_of_all_batched(
    tmp_path: Path, make_config: Any, launch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(20261125)
    # Runs of orders from one account; the mixed server gets some runs order by order (SubmitOrder).
    runs = []
    for number in range(60):
        who = ACCOUNTS[number % 2]
        orders = [random_order(rng, f"r{number}-{i}") for i in range(rng.randint(2, 6))]
        if rng.random() < 0.1:
            orders.append(api.NewOrder(**{**_fields(orders[0]), "price_ticks": 100}))  # duplicate client id
        runs.append((who, orders, rng.random() < 0.6))

    one_by_one = sum(len(orders) for _, orders, single in runs if single)
    # Batches are read from their wire bytes in C (hftgate/native/order_wire.py) unless the mode
    # is "protobuf", where the decoder hands every message back to protobuf's reading.
    read_in_c: list[bool] = []
    wire_decode = NewOrderWireDecoder.decode

    def decode(decoder: NewOrderWireDecoder, data: bytes, message: int, max_orders: int) -> Any:
        decoded = None if mode == "protobuf" else wire_decode(decoder, data, message, max_orders)
        read_in_c.append(decoded is not None)
        return decoded

    monkeypatch.setattr(NewOrderWireDecoder, "decode", decode)
    views = {}
    for mode in ("single", "stream", "batched", "protobuf"):
        read_in_c.clear()
        harness = await launch(make_config(tmp_path / mode))
        harness.core.ack_poll_ns = 200_000 if mode == "single" else 0  # SubmitOrder polls for its fsync
        admission = harness.core.admission
        taken: list[int] = []

        def counted(*args: Any, taken: list[int] = taken, single_path: Any = admission.admit_one_new) -> Any:
            taken.append(1)
            return single_path(*args)

        admission.admit_one_new = counted  # type: ignore[method-assign]
        try:
            acks = await submit_runs(harness, runs, mode)
            assert harness.core._orders_in_flight == 0
            views[mode] = (acks, state_view(harness.core.state), harness.core.counters)
            assert harness.core.state.trades > 0
            # A lone order takes the single-order path whether it came by SubmitOrder or as a
            # one-order stream message (the batch path's numpy set-up costs more than its work).
            single_path = 0 if mode in ("batched", "protobuf") else one_by_one
            assert len(taken) == single_path, (mode, len(taken))
            assert read_in_c and all(read_in_c) == (mode != "protobuf"), mode
        finally:
            await harness.close()

    statuses = {ack[3] for ack in views["single"][0]}
    assert {api.ORDER_STATUS_REJECTED, api.ORDER_STATUS_FILLED, api.ORDER_STATUS_NEW} <= statuses
    for mode in ("single", "stream", "protobuf"):
        assert views[mode][0] == views["batched"][0], mode
        assert views[mode][1] == views["batched"][1], mode
        assert views[mode][2] == views["batched"][2], mode

    # Recovery replays the single-order records through the same apply path.
    harness = await launch(make_config(tmp_path / "single"))
    try:
        assert state_view(harness.core.state) == views["single"][1]
    finally:
        await harness.close()


def _fields(order: api.NewOrder) -> dict[str, Any]:
    return {field.name: value for field, value in order.ListFields()}


def test_single_order_risk_check_gives_the_batch_reasons() -> None:
    from services.execution.reference import AccountSpec
    from services.execution.risk import AccountExposure, NewOrderRisk, TokenBucket
    from tests.services.execution.test_execution_risk import INSTRUMENTS, KNOWN, random_batch

    rng = random.Random(7)
    risk = NewOrderRisk()
    for _ in range(3000):
        orders, ids, instrument_rows, symbol_ids = random_batch(rng, 1)
        account = AccountSpec(
            name="t",
            account_id=1,
            max_open_orders=rng.choice((1, 3, 100)),
            position_limit_lots=rng.choice((5, 30, 1000)),
            kill_switch=rng.random() < 0.05,
        )
        exposure = AccountExposure(
            position=np.array([rng.randint(-10, 10) for _ in range(4)], np.int64),
            open_buy=np.array([rng.randint(0, 10) for _ in range(4)], np.int64),
            open_sell=np.array([rng.randint(0, 10) for _ in range(4)], np.int64),
            open_orders=rng.choice((0, 1, 3, 100)),
        )
        burst, tokens = rng.choice((1, 100)), rng.choice((0.0, 0.5, 5.0))
        buckets = [TokenBucket(0.0, burst), TokenBucket(0.0, burst)]
        for bucket in buckets:
            bucket.tokens = min(float(burst), tokens)
        batch_reason = risk.check_new_orders(
            orders, ids, instrument_rows, INSTRUMENTS, symbol_ids, account, KNOWN, exposure, buckets[0]
        )
        row = int(instrument_rows[0])
        single_reason = risk.check_one_new_order(
            orders[0].item(), ids[0], INSTRUMENTS[row], int(symbol_ids[0]), account, KNOWN, exposure,
            buckets[1],
        )  # fmt: skip
        assert single_reason == int(batch_reason[0]), (orders, ids, instrument_rows)
        assert buckets[0].tokens == buckets[1].tokens


async def test_a_single_orders_deferred_publish_keeps_journal_order(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    """SubmitOrder publishes its reports and fills on the loop's next turn (its reply leaves
    first); batches in flight meanwhile still publish after it: reports reach subscribers and
    fills reach the ledger in journal order, and the published sequence never goes back."""
    import asyncio

    harness = await launch(make_config(tmp_path))
    publisher = harness.core.publisher
    seen: list[int] = []
    publish_one = publisher._publish

    def recorded(outcome: Any) -> None:
        if len(outcome.reports):
            seen.append(int(outcome.reports["sequence"][0]))
        publish_one(outcome)

    publisher._publish = recorded  # type: ignore[method-assign]
    try:
        rng = random.Random(7)

        async def singles(who: str, n: int) -> None:
            for i in range(n):
                order = random_order(rng, f"{who}-s{i}")
                await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=order), metadata=key(who))

        async def batches(who: str, n: int) -> None:
            for i in range(n):
                orders = [random_order(rng, f"{who}-b{i}-{j}") for j in range(5)]
                await harness.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=key(who))

        published: list[int] = []

        async def watch() -> None:
            while True:
                published.append(publisher.published_report_seq)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(
            singles("alice", 60), singles("bob", 60), batches("alice", 20), batches("bob", 20)
        )
        watcher.cancel()
        await publisher.drain()
        assert len(seen) > 100
        assert seen == sorted(seen)
        assert published == sorted(published)
        assert publisher.published_report_seq == harness.core.state.next_report_seq - 1
    finally:
        await harness.close()
