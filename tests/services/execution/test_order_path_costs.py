"""The order path's cheap paths keep their behaviour: fair admission without timers per light call,
heavy steps paced one per loop turn after light calls, retirement of many orders at once, client
ids read through the read-only view, and telemetry that makes no span when nothing records.

Costs themselves are benchmarks (`hftgate bench execution`); here only what the fast paths must
still do (and must not do) is tested.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry import trace

from hftgate.matching import EngineConfig
from hftgate.matching.types import COMMAND_DTYPE, Action, OrderType, StpMode, TimeInForce
from hftgate.telemetry import ServerTelemetryInterceptor
from hftgate.v1 import execution_pb2 as api
from services.execution.fairness import FairAdmission
from services.execution.records import META_DTYPE, Batch
from services.execution.state import OPEN_STATUSES, ExecutionState

# --- FairAdmission ------------------------------------------------------------------------------


async def test_a_light_call_without_a_flood_leaves_no_timer_nor_turn_behind() -> None:
    fair = FairAdmission(slice_inputs=100, light_grace_s=0.002)
    loop = asyncio.get_running_loop()
    scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
    ready = len(loop._ready)  # type: ignore[attr-defined]
    fair.light_enter()
    assert fair.admit(1, 1) is None
    fair.light_exit()
    assert len(loop._scheduled) == scheduled  # type: ignore[attr-defined]  # no call_later per call
    assert len(loop._ready) == ready  # type: ignore[attr-defined]  # no call_soon per call
    assert fair.waiting() == 0 and fair.queued_batches == 0


async def test_a_heavy_step_in_the_grace_after_a_light_call_waits_for_the_grace_to_end() -> None:
    fair = FairAdmission(slice_inputs=100, max_defer_s=5.0, light_grace_s=0.3)
    fair.light_enter()
    fair.light_exit()
    step = fair.heavy_step()  # the light call's response is still on its way: defer
    assert step is not None
    await asyncio.sleep(0.01)
    assert not step.done()
    await asyncio.wait_for(step, 2.0)  # released when the grace ends, not by max_defer_s (5 s)
    assert fair.deferred_steps == 1


async def test_a_light_call_extending_the_grace_keeps_heavy_steps_waiting() -> None:
    fair = FairAdmission(slice_inputs=100, max_defer_s=5.0, light_grace_s=0.4)
    fair.light_enter()
    fair.light_exit()
    step = fair.heavy_step()
    assert step is not None
    await asyncio.sleep(0.2)
    fair.light_enter()  # the next sequential call
    fair.light_exit()  # ends 0.2 s later than the first: its grace counts from here
    await asyncio.sleep(0.3)  # past the first grace, inside the second
    assert not step.done()
    await asyncio.wait_for(step, 2.0)


async def test_heavy_steps_run_freely_long_after_the_last_light_call() -> None:
    fair = FairAdmission(slice_inputs=100, light_grace_s=0.001, light_recent_s=0.01)
    fair.light_enter()
    fair.light_exit()
    await asyncio.sleep(0.03)  # past grace and the recent window
    assert [fair.heavy_step() for _ in range(5)] == [None] * 5
    assert fair.paced_steps == 0 and fair.deferred_steps == 0


async def test_after_a_light_call_heavy_steps_are_paced_one_per_loop_turn() -> None:
    fair = FairAdmission(slice_inputs=100, light_grace_s=0.001, light_recent_s=10.0)
    fair.light_enter()
    fair.light_exit()
    await asyncio.sleep(0.005)  # grace over, light calls still recent
    ran: list[tuple[str, int]] = []
    turn = 0

    async def count_turns() -> None:
        nonlocal turn
        while True:
            await asyncio.sleep(0)
            turn += 1

    async def heavy(name: str) -> None:
        step = fair.heavy_step()
        if step is not None:
            await step
        ran.append((name, turn))

    counter = asyncio.create_task(count_turns())
    try:
        await asyncio.gather(*(heavy(name) for name in "abcd"))
    finally:
        counter.cancel()
    assert [name for name, _ in ran] == list("abcd")  # first come, first run
    turns = [t for _, t in ran]
    assert len(set(turns)) == len(turns), f"two heavy steps ran in one loop turn: {ran}"
    assert fair.paced_steps == 3


async def test_a_light_call_during_pacing_stops_the_release_until_its_grace_ends() -> None:
    fair = FairAdmission(slice_inputs=100, max_defer_s=5.0, light_grace_s=0.03, light_recent_s=10.0)
    fair.light_enter()
    fair.light_exit()
    await asyncio.sleep(0.05)
    assert fair.heavy_step() is None  # the turn's one heavy step
    waiting = fair.heavy_step()
    assert waiting is not None
    fair.light_enter()  # a light call before the next turn
    await asyncio.sleep(0.01)
    assert not waiting.done()
    fair.light_exit()
    await asyncio.wait_for(waiting, 1.0)  # after that call's grace


async def test_a_paced_step_still_runs_while_a_light_call_never_ends() -> None:
    fair = FairAdmission(slice_inputs=100, max_defer_s=0.02, light_grace_s=0.001, light_recent_s=10.0)
    fair.light_enter()
    fair.light_exit()
    await asyncio.sleep(0.01)
    assert fair.heavy_step() is None
    waiting = fair.heavy_step()
    assert waiting is not None
    fair.light_enter()  # and never leaves
    await asyncio.wait_for(waiting, 1.0)  # one heavy step per max_defer_s: slowed, never stopped


# --- state: retirement in bulk and the client-id view -----------------------------------------------

ENGINE = EngineConfig(max_symbols=2, max_levels_per_side=256, max_orders=1 << 14)
MID = 1_000


def _state(retain_orders: int, retire: bool = True) -> ExecutionState:
    state = ExecutionState(ENGINE, retain_orders, retain_orders=retain_orders, retire=retire)
    state.add_symbol(0, "X")
    for account in (1, 2):
        state.add_account(account, f"acct{account}")
    return state


def _batch(state: ExecutionState, orders: list[tuple[int, int, int, int]]) -> Batch:
    """NEW limit orders ``(account, side, tif, price)`` of one lot, client ids ``c<order id>``."""
    count = len(orders)
    commands = np.zeros(count, COMMAND_DTYPE)
    meta = np.zeros(count, META_DTYPE)
    ids = []
    for i, (account, side, tif, price) in enumerate(orders):
        order_id = state.order_count + 1 + i
        client_id = f"c{order_id}"
        commands[i]["order_id"], commands[i]["account_id"] = order_id, account
        commands[i]["price"], commands[i]["qty"] = price, 1
        commands[i]["action"], commands[i]["side"] = Action.NEW, side
        commands[i]["order_type"], commands[i]["tif"] = OrderType.LIMIT, tif
        commands[i]["stp_mode"] = StpMode.NONE
        meta[i]["client_price"] = price
        meta[i]["client_type"] = api.ORDER_TYPE_LIMIT
        meta[i]["client_tif"] = api.TIME_IN_FORCE_GTC if tif == TimeInForce.GTC else api.TIME_IN_FORCE_IOC
        meta[i]["client_stp"] = api.SELF_TRADE_PREVENTION_ALLOW
        meta[i]["client_id_length"] = len(client_id)
        ids.append(client_id)
    return Batch(state.next_input_seq, 1, 2, commands, meta, "".join(ids).encode("ascii"))


def _flow(seed: int, sizes: list[int]) -> list[list[tuple[int, int, int, int]]]:
    rng = random.Random(seed)
    out = []
    for size in sizes:
        batch = []
        for _ in range(size):
            side = rng.randint(1, 2)
            if rng.random() < 0.5:  # takes the other side, or expires
                batch.append((rng.randint(1, 2), side, int(TimeInForce.IOC), MID + (2 if side == 1 else -2)))
            else:  # rests a tick or two behind
                price = MID - rng.randint(1, 2) if side == 1 else MID + rng.randint(1, 2)
                batch.append((rng.randint(1, 2), side, int(TimeInForce.GTC), price))
        out.append(batch)
    return out


def _run(sizes: list[int], retain: int) -> ExecutionState:
    state = _state(retain)
    for orders in _flow(7, sizes):
        state.apply_batch(_batch(state, orders))
    return state


@pytest.mark.parametrize("retain", [16, 50, 300])
def test_retiring_in_batches_keeps_exactly_what_retiring_one_by_one_keeps(retain: int) -> None:
    """The vectorized retirement of a batch's orders (ring slice or wrapped, survivors moved in
    bulk) leaves the same retained orders and client ids as the same orders in batches of one."""
    single = _run([1] * 1200, retain)
    batched = _run([100] * 12, retain)
    for state in (single, batched):
        assert state.order_count == 1200
        assert state.order_base == 1200 - retain
    ids_one, rows_one, clients_one = single.retained_orders()
    ids_many, rows_many, clients_many = batched.retained_orders()
    # The books differ (other interleavings of the engine), so compare the rule, not the rows:
    # every finished order outside the window whose reports are gone is retired in both...
    for state, ids, rows in ((single, ids_one, rows_one), (batched, ids_many, rows_many)):
        old = ids <= state.order_base
        finished = ~np.isin(rows["status"], OPEN_STATUSES)
        gone = rows["last_exec_seq"] < state.oldest_retained_report
        assert not (old & finished & gone).any()
        # ...every open order is retained, and the survivors index finds each retained old one.
        assert all(state.slot_of(int(i)) >= 0 for i in ids)
        assert state.retained_order_count == len(ids)
    assert clients_one == [f"c{i}" for i in ids_one.tolist()]
    assert clients_many == [f"c{i}" for i in ids_many.tolist()]


def test_batched_retirement_matches_a_replay_of_the_same_batches() -> None:
    first, second = _run([3, 100, 1, 250, 7, 100] * 6, 64), _run([3, 100, 1, 250, 7, 100] * 6, 64)
    a, b = first.retained_orders(), second.retained_orders()
    assert a[0].tolist() == b[0].tolist() and a[2] == b[2]
    assert a[1].tobytes() == b[1].tobytes()
    assert first.retired_orders == second.retired_orders > 0


def test_the_client_id_view_answers_window_survivors_and_retired_alike() -> None:
    state = _run([1] * 400, 32)
    ids, _, clients = state.retained_orders()
    view = state.client_ids
    for order_id, client_id in zip(ids.tolist(), clients, strict=True):
        assert view[order_id - 1] == client_id == state.client_id_of(order_id)
    retired = next(i for i in range(1, state.order_count + 1) if state.slot_of(i) < 0)
    assert view[retired - 1] == ""  # retired
    assert view[state.order_count] == ""  # never handed out
    assert view[-1] == ""
    assert state.client_id_of(state.order_count + 1) is None


def test_rows_by_id_gives_zero_rows_only_where_not_retained() -> None:
    state = _run([1] * 300, 32)
    ids = np.array([state.order_count, 1, state.order_count - 1], np.int64)
    rows = state.rows_by_id(ids)
    assert rows[0]["account_id"] in (1, 2) and rows[2]["account_id"] in (1, 2)
    assert rows[1].tobytes() == bytes(rows.dtype.itemsize)  # order 1 is retired: an all-zero row
    all_held = state.rows_by_id(ids[[0, 2]])
    assert all_held.tobytes() == rows[[0, 2]].tobytes()


# --- telemetry without a tracer provider -----------------------------------------------------------


class _Context:
    def __init__(self) -> None:
        self.metadata_reads = 0

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        self.metadata_reads += 1
        return (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),)

    def code(self) -> None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


async def test_without_a_provider_a_unary_call_reads_no_metadata_and_a_stream_no_message_spans() -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider), "tests run without one"
    interceptor = ServerTelemetryInterceptor()
    seen: list[Any] = []

    async def unary(request: Any, context: Any) -> api.SubmitOrderResponse:
        seen.append((request, trace.get_current_span().get_span_context().is_valid))
        return api.SubmitOrderResponse()

    async def stream(requests: Any, context: Any) -> api.SubmitOrderResponse:
        seen.append(type(requests).__name__)
        async for message in requests:
            seen.append(message)
        return api.SubmitOrderResponse()

    handlers = {
        "/t/Unary": grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=api.SubmitOrderRequest.FromString
        ),
        "/t/Stream": grpc.stream_unary_rpc_method_handler(
            stream, request_deserializer=api.OrderStreamRequest.FromString
        ),
    }

    class Details:
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    async def wrapped(method: str) -> Any:
        async def continuation(details: Any) -> Any:
            return handlers[details.method]

        return await interceptor.intercept_service(continuation, Details(method))

    context = _Context()
    request = api.SubmitOrderRequest(order=api.NewOrder(client_order_id="c1", symbol="X"))
    handler = await wrapped("/t/Unary")
    await handler.unary_unary(request.SerializeToString(), context)
    assert context.metadata_reads == 0
    assert seen == [(request, False)]  # decoded, and no span current

    seen.clear()
    message = api.OrderStreamRequest(inputs=[api.OrderInput(new_order=api.NewOrder(client_order_id="s1"))])

    async def requests() -> Any:
        yield message.SerializeToString()
        yield message.SerializeToString()

    handler = await wrapped("/t/Stream")
    await handler.stream_unary(requests(), context)
    assert seen[0] != "_TracedMessages"  # no per-message span wrapper
    assert seen[1:] == [message, message]

    malformed = await wrapped("/t/Unary")
    with pytest.raises(
        _Aborted, match=r"request is not a valid hftgate\.v1\.SubmitOrderRequest: "
    ) as refused:
        await malformed.unary_unary(b"\x0a\x05\xff", context)  # still decoded and refused precisely
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
