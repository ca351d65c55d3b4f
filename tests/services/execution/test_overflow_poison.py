"""Issue #13 part 1: nothing that was journaled can fail to apply, and no journal entry crash-loops.

Two legal orders (a buy at 2^61 ticks on an instrument with no band and no notional limit, and a
crossing sell of 4 lots) used to overflow int64 in apply_batch *after* the batch was journaled:
order entry stopped for good and every restart crashed on the same record. Here: admission bounds
every price by the instrument's ceiling (so price x lots fits with room to spare), apply_batch
never raises for a batch's values (hypothesis over extreme values, admitted or not), a batch that
does not fit the state is refused deterministically, and a restart comes up over poison records.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hftgate.matching import EngineConfig
from hftgate.matching.types import COMMAND_DTYPE, MAX_PRICE, MAX_QTY, Action, StpMode
from hftgate.native.client_ids import ClientIdIndex
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.journal import Journal
from services.execution.records import META_DTYPE, RECORD_BATCH, Batch, encode_batch
from services.execution.reference import AccountSpec, InstrumentSpec
from services.execution.risk import (
    MAX_POSITION_LIMIT_LOTS,
    NEW_ORDER_DTYPE,
    NOTIONAL_BOUND,
    AccountExposure,
    NewOrderRisk,
    TokenBucket,
    instrument_limits,
)
from services.execution.state import INTERNAL_REJECT_REASON, REJECTED, ExecutionState

from .conftest import key
from .reference_risk import reference_reasons

#: (A test's own: the checks' C structs are reused from call to call, not shared across threads.)
check_one_new_order = NewOrderRisk().check_one_new_order

INT64_MAX = (1 << 63) - 1
EDGES = [0, 1, 2, 3, 4, (1 << 20), (1 << 40), (1 << 40) + 1, (1 << 61) - 1, 1 << 61, (1 << 61) + 1,
         (1 << 62), INT64_MAX - 1, INT64_MAX]  # fmt: skip
edge_ints = st.one_of(st.sampled_from(EDGES), st.integers(0, INT64_MAX))
signed_edges = st.one_of(edge_ints, edge_ints.map(lambda v: -v))

instruments = st.builds(
    InstrumentSpec,
    symbol=st.just("X"),
    price_increment_ticks=st.one_of(st.just(1), st.sampled_from([0, 2, 7, 1 << 61]), edge_ints),
    quantity_increment_lots=st.one_of(st.just(1), edge_ints),
    max_order_lots=edge_ints,
    max_notional=signed_edges,
    price_band_ticks=signed_edges,
    reference_price_ticks=signed_edges,
)
orders = st.tuples(
    st.sampled_from([1, 2]),  # side
    st.sampled_from(
        [api.ORDER_TYPE_LIMIT, api.ORDER_TYPE_MARKET, api.ORDER_TYPE_STOP_LIMIT, api.ORDER_TYPE_STOP_MARKET]
    ),
    st.sampled_from([0, api.TIME_IN_FORCE_GTC, api.TIME_IN_FORCE_IOC, api.TIME_IN_FORCE_FOK]),
    signed_edges,  # price
    signed_edges,  # stop
    signed_edges,  # quantity
    st.just(0),  # display
    st.just(0),  # post only
    st.just(0),  # stp
    signed_edges,  # protection
    st.just(0),  # priority
)
ACCOUNT = AccountSpec(name="a", account_id=1, position_limit_lots=INT64_MAX, max_open_orders=10**9)


def _exposure() -> AccountExposure:
    zeros = np.zeros(1, np.int64)
    return AccountExposure(zeros, zeros.copy(), zeros.copy(), 0)


@settings(max_examples=400, deadline=None)
@given(spec=instruments, fields=orders)
def test_an_admitted_order_fits_the_bounds_apply_relies_on(
    spec: InstrumentSpec, fields: tuple[int, ...]
) -> None:
    limits = instrument_limits(spec)
    assert limits.price_ceiling * max(1, limits.max_lots) <= NOTIONAL_BOUND
    assert 1 <= limits.price_ceiling <= MAX_PRICE and 0 <= limits.max_lots <= MAX_QTY
    bucket = TokenBucket(1e9, 10**9)
    reason = check_one_new_order(fields, "c1", spec, 0, ACCOUNT, ClientIdIndex(), _exposure(), bucket)
    batch = np.array([fields], NEW_ORDER_DTYPE)
    rows = np.zeros(1, np.int64)
    args = (["c1"], rows, [spec], np.zeros(1, np.int64), ACCOUNT)
    # A batch of one through either entry and the reference agree, and none raises on any value.
    assert reference_reasons(batch, *args, {}, _exposure(), TokenBucket(1e9, 10**9))[0] == reason
    assert (
        NewOrderRisk().check_new_orders(batch, *args, ClientIdIndex(), _exposure(), TokenBucket(1e9, 10**9))[
            0
        ]
        == reason
    )
    if reason:
        return
    price, stop, qty = fields[3:6]
    protection = fields[9]
    assert 0 < qty <= limits.max_lots
    for value in (price, stop, protection):
        assert 0 <= value <= limits.price_ceiling
        assert value * qty <= NOTIONAL_BOUND


def test_the_issues_order_at_2_61_is_refused_at_admission_with_the_band_reason() -> None:
    spec = InstrumentSpec(symbol="X", max_notional=0, price_band_ticks=0)  # no band, no notional limit
    order = (1, api.ORDER_TYPE_LIMIT, api.TIME_IN_FORCE_GTC, 1 << 61, 0, 1, 0, 0, 0, 0, 0)
    reason = check_one_new_order(
        order, "c1", spec, 0, ACCOUNT, ClientIdIndex(), _exposure(), TokenBucket(1e9, 10**9)
    )
    assert reason == common.REJECT_REASON_PRICE_BAND
    ceiling = instrument_limits(spec).price_ceiling
    at_ceiling = (
        1,
        api.ORDER_TYPE_LIMIT,
        api.TIME_IN_FORCE_GTC,
        ceiling,
        0,
        spec.max_order_lots,
        0,
        0,
        0,
        0,
        0,
    )
    assert (
        check_one_new_order(
            at_ceiling, "c2", spec, 0, ACCOUNT, ClientIdIndex(), _exposure(), TokenBucket(1e9, 10**9)
        )
        == 0
    )


def test_a_position_limit_beyond_the_bound_counts_as_the_bound() -> None:
    spec = InstrumentSpec(symbol="X", max_order_lots=MAX_QTY)
    exposure = _exposure()
    exposure.position[0] = MAX_POSITION_LIMIT_LOTS
    order = (1, api.ORDER_TYPE_LIMIT, api.TIME_IN_FORCE_GTC, 1, 0, 1, 0, 0, 0, 0, 0)
    reason = check_one_new_order(
        order, "c1", spec, 0, ACCOUNT, ClientIdIndex(), exposure, TokenBucket(1e9, 10**9)
    )
    assert reason == common.REJECT_REASON_POSITION_LIMIT


# --- apply_batch on raw batches (admission bypassed, as a journal could hold them) ---------------


def _state() -> ExecutionState:
    state = ExecutionState(EngineConfig(max_symbols=2, max_levels_per_side=64, max_orders=4096), 1000)
    state.add_symbol(0, "X")
    for account in (1, 2, 3):
        state.add_account(account, f"acct{account}")
    return state


def _new_batch(state: ExecutionState, orders: list[tuple[int, int, int, int, int]]) -> Batch:
    """A batch of NEW orders: (account, side, engine type, tif, price, qty) as given, unchecked."""
    count = len(orders)
    commands = np.zeros(count, COMMAND_DTYPE)
    meta = np.zeros(count, META_DTYPE)
    ids = []
    for i, (account, side, tif, price, qty) in enumerate(orders):
        commands[i]["order_id"] = state.order_count + 1 + i
        commands[i]["account_id"] = account
        commands[i]["price"] = price
        commands[i]["qty"] = qty
        commands[i]["action"] = Action.NEW
        commands[i]["side"] = side
        commands[i]["order_type"] = api.ORDER_TYPE_LIMIT
        commands[i]["tif"] = tif
        commands[i]["stp_mode"] = StpMode.NONE
        meta[i]["client_price"] = price
        meta[i]["client_type"] = api.ORDER_TYPE_LIMIT
        meta[i]["client_tif"] = tif
        meta[i]["client_stp"] = api.SELF_TRADE_PREVENTION_ALLOW
        client_id = f"o{state.order_count + 1 + i}"
        meta[i]["client_id_length"] = len(client_id)
        ids.append(client_id)
    return Batch(state.next_input_seq, 1, 2, commands, meta, "".join(ids).encode("ascii"))


prices = st.one_of(st.sampled_from([1, 2, (1 << 61) - 1, 1 << 61, (1 << 61) + 1, INT64_MAX, -(1 << 61)]),
                   st.integers(-(1 << 62), INT64_MAX))  # fmt: skip
quantities = st.one_of(
    st.sampled_from([1, 4, MAX_QTY, MAX_QTY + 1, INT64_MAX, 0, -1]), st.integers(-5, INT64_MAX)
)
raw_orders = st.tuples(
    st.sampled_from([1, 2, 3]), st.sampled_from([1, 2]),
    st.sampled_from([api.TIME_IN_FORCE_GTC, api.TIME_IN_FORCE_IOC]), prices, quantities,
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(raw_orders, min_size=1, max_size=12), min_size=1, max_size=8))
def test_apply_never_raises_on_extreme_values(batches: list[list[tuple[int, int, int, int, int]]]) -> None:
    state = _state()
    for orders in batches:
        batch = _new_batch(state, orders)
        before = state.next_input_seq
        outcome = state.apply_batch(batch)  # must not raise
        assert state.next_input_seq == before + len(orders)
        assert len(outcome.status) == len(orders)
    table = state.orders[: state.order_count]
    table = table[table["status"] != REJECTED]
    assert (table["cum"] <= table["quantity"]).all() and (table["leaves"] >= 0).all()
    working = np.isin(table["status"], (api.ORDER_STATUS_NEW, api.ORDER_STATUS_PARTIALLY_FILLED))
    assert state.engine.live_orders == int(working.sum())


def test_many_fills_at_the_maximum_price_saturate_the_notional_instead_of_failing() -> None:
    state = _state()
    makers = [(2, 2, api.TIME_IN_FORCE_GTC, MAX_PRICE, MAX_QTY) for _ in range(10)]
    state.apply_batch(_new_batch(state, makers))
    # 3 lots at 2^61 fit int64 exactly; the issue's 4 lots are 2^63, one past it: saturated.
    fits = state.apply_batch(_new_batch(state, [(1, 1, api.TIME_IN_FORCE_IOC, MAX_PRICE, 3)]))
    outcome = state.apply_batch(_new_batch(state, [(1, 1, api.TIME_IN_FORCE_IOC, MAX_PRICE, 4)]))
    assert fits.status[0] == outcome.status[0] == api.ORDER_STATUS_FILLED
    assert state.orders[10]["notional"] == 3 * MAX_PRICE and state.orders[11]["notional"] == INT64_MAX
    # Then buys across all ten makers at the maximum price and quantity.
    big = state.apply_batch(_new_batch(state, [(3, 1, api.TIME_IN_FORCE_IOC, MAX_PRICE, MAX_QTY)] * 3))
    assert (big.status == api.ORDER_STATUS_FILLED).sum() >= 2
    notional = state.orders[: state.order_count]["notional"]
    assert (notional >= 0).all() and notional.max() == INT64_MAX
    assert state.position[state.account_row(1), 0] == 7


def test_a_batch_that_does_not_fit_is_refused_whole_and_changes_nothing_else() -> None:
    state = _state()
    state.apply_batch(_new_batch(state, [(1, 2, api.TIME_IN_FORCE_GTC, 100, 5)]))
    bad = _new_batch(state, [(2, 1, api.TIME_IN_FORCE_GTC, 100, 1), (2, 1, api.TIME_IN_FORCE_GTC, 99, 1)])
    bad.commands["order_id"][1] += 7  # ids out of turn
    orders_before, live_before = state.order_count, state.engine.live_orders
    outcome = state.apply_batch(bad)
    assert (outcome.status == REJECTED).all() and (outcome.reason == INTERNAL_REJECT_REASON).all()
    assert (outcome.order_ids == 0).all() and not len(outcome.reports) and not len(outcome.fills)
    assert (state.order_count, state.engine.live_orders) == (orders_before, live_before)
    assert state.next_input_seq == bad.first_input_seq + 2 and state.refused_batches == 1
    # The next batch applies normally, with the ids the refused one did not use.
    good = state.apply_batch(_new_batch(state, [(2, 1, api.TIME_IN_FORCE_IOC, 100, 2)]))
    assert good.status[0] == api.ORDER_STATUS_FILLED
    assert int(good.order_ids[0]) == orders_before + 1
    non_ascii = _new_batch(state, [(2, 1, api.TIME_IN_FORCE_GTC, 100, 1)])
    broken = Batch(
        non_ascii.first_input_seq,
        1,
        2,
        non_ascii.commands,
        non_ascii.meta,
        b"\xff" * len(non_ascii.client_ids),
    )
    assert state.apply_batch(broken).reason[0] == INTERNAL_REJECT_REASON


# --- through a real server: live, and restarts over poison records ------------------------------


def _limit(client_id: str, side: int, price: int, qty: int, tif: int = api.TIME_IN_FORCE_GTC) -> api.NewOrder:
    return api.NewOrder(
        client_order_id=client_id, symbol="BTCUSDT", side=side, order_type=api.ORDER_TYPE_LIMIT,  # type: ignore[arg-type]
        time_in_force=tif, price_ticks=price, quantity_lots=qty,  # type: ignore[arg-type]
    )  # fmt: skip


async def _submit(harness: Any, order: api.NewOrder, account: str) -> api.OrderAck:
    response = await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=order), metadata=key(account))
    return response.ack


async def test_the_issues_two_orders_leave_order_entry_working(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    harness = await launch(make_config(tmp_path))
    try:
        refused = await _submit(harness, _limit("big", common.SIDE_BUY, 1 << 61, 1), "alice")
        assert refused.status == REJECTED and refused.reason == common.REJECT_REASON_PRICE_BAND
        # A replace cannot bring the price there either.
        resting = await _submit(harness, _limit("rest", common.SIDE_BUY, 100, 4), "alice")
        replaced = await harness.stub.ReplaceOrder(
            api.ReplaceOrderRequest(order_id=resting.order_id, price_ticks=1 << 61), metadata=key("alice")
        )
        assert replaced.ack.status == REJECTED and replaced.ack.reason == common.REJECT_REASON_PRICE_BAND
        sell = await _submit(harness, _limit("s", common.SIDE_SELL, 100, 4, api.TIME_IN_FORCE_IOC), "bob")
        assert sell.status == api.ORDER_STATUS_FILLED
        after = await _submit(harness, _limit("after", common.SIDE_BUY, 90, 1), "carol")
        assert after.status == api.ORDER_STATUS_NEW and harness.core.apply_failed is None
    finally:
        await harness.close()


async def _write_records(config: Any, payloads: list[bytes]) -> None:
    journal = Journal.open(config.journal_path())
    journal.start()
    try:
        await asyncio.gather(*(journal.append(p, RECORD_BATCH) for p in payloads))
    finally:
        await journal.close()


async def test_a_restart_comes_up_over_poison_records_in_the_journal(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    config = make_config(tmp_path, snapshot_every_inputs=0, snapshot_every_s=0)
    harness = await launch(config)
    try:  # a book and two accounts in the journal
        await _submit(harness, _limit("a0", common.SIDE_BUY, 90, 1), "alice")
        await _submit(harness, _limit("b0", common.SIDE_BUY, 80, 1), "bob")
        state = harness.core.state
        alice, bob = (next(a for a, n in state.account_names.items() if n == who) for who in ("alice", "bob"))
    finally:
        await harness.close()
    # Written as a journal could hold them, past admission: the issue's pair at 2^61 x 4 lots, and
    # a batch whose order ids are out of turn.
    replay = ExecutionState(
        EngineConfig(max_symbols=config.max_symbols, max_levels_per_side=64, max_orders=4096), 10
    )
    replay.next_input_seq, replay.order_count = state.next_input_seq, state.order_count
    replay.orders = state.orders.copy()
    pair = _new_batch(
        replay,
        [(alice, 1, api.TIME_IN_FORCE_GTC, MAX_PRICE, 4), (bob, 2, api.TIME_IN_FORCE_IOC, MAX_PRICE, 4)],
    )
    out_of_turn = Batch(
        pair.first_input_seq + 2, 1, 2, pair.commands.copy(), pair.meta.copy(), pair.client_ids
    )
    out_of_turn.commands["order_id"] += 5
    await _write_records(config, [encode_batch(pair), encode_batch(out_of_turn)])

    harness = await launch(config)
    try:
        core = harness.core
        assert core.apply_failed is None and core.state.refused_batches == 1
        bought, sold = (core.state.orders[int(i) - 1] for i in pair.commands["order_id"])
        # 4 lots at 2^61: 2^63 ticks x lots, one past int64: saturated, not a crash loop.
        assert int(bought["cum"]) == int(sold["cum"]) == 4
        assert int(bought["notional"]) == int(sold["notional"]) == INT64_MAX
        assert bought["status"] == sold["status"] == api.ORDER_STATUS_FILLED
        ok = await _submit(harness, _limit("after", common.SIDE_BUY, 95, 1), "carol")
        assert ok.status == api.ORDER_STATUS_NEW and ok.sequence == pair.first_input_seq + 4
    finally:
        await harness.close()


async def test_a_record_that_fails_part_way_stops_intake_then_is_quarantined_on_restart(
    tmp_path: Path, make_config: Any, launch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that makes one input's apply fail after the engine ran, every time (live and on
    replay): live, intake stops (apply_failed, on_apply_failed); the restart passes the record
    over and serves."""
    original = ExecutionState.apply_batch

    def buggy(self: ExecutionState, batch: Batch) -> Any:
        outcome = original(self, batch)
        if b"poison" in batch.client_ids:
            raise RuntimeError("a bug after the engine ran")
        return outcome

    monkeypatch.setattr(ExecutionState, "apply_batch", buggy)
    config = make_config(tmp_path, snapshot_every_inputs=0, snapshot_every_s=0)
    harness = await launch(config)
    heard: list[str] = []
    try:
        server_hook = harness.core.on_apply_failed  # the server's: health turns NOT_SERVING
        assert server_hook is not None

        def hook(why: str) -> None:
            heard.append(why)
            server_hook(why)

        harness.core.on_apply_failed = hook
        first = await _submit(harness, _limit("ok-1", common.SIDE_BUY, 90, 1), "alice")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _submit(harness, _limit("poison", common.SIDE_BUY, 91, 1), "alice")
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert harness.core.apply_failed is not None and len(heard) == 1
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _submit(harness, _limit("ok-2", common.SIDE_BUY, 92, 1), "alice")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(harness.channel)
        for _ in range(100):
            status = (await health.Check(health_pb2.HealthCheckRequest())).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.01)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await harness.close()
    for attempt in range(2):  # every restart comes up the same way
        harness = await launch(config)
        try:
            assert harness.core.apply_failed is None
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await harness.stub.GetOrder(
                    api.GetOrderRequest(client_order_id="poison"), metadata=key("alice")
                )
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            again = await _submit(harness, _limit(f"again-{attempt}", common.SIDE_BUY, 93, 1), "alice")
            assert again.status == api.ORDER_STATUS_NEW and again.order_id > first.order_id
        finally:
            await harness.close()
