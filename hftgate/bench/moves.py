"""A symbol moved out and back under order flow (issue #15): ``move_pause_max_ms``,
``lost_acked``, ``duplicate_fills``, ``books_match``.

Two real execution shards (``python -m services.execution``) share a shard map; a client sends
SubmitOrder for one symbol at about ``rate_per_s`` (resting buys and sells around a mid price,
and every fifth order an IOC that takes from the book, so there are fills on both sides of the
moves) to the owner it knows, the way the routing client does: on NOT_SHARD_OWNER it sends to the
owner the ErrorInfo names, on UNAVAILABLE it waits the RetryInfo delay and sends again, one
order of the symbol at a time while the others wait for its answer
(:class:`hftgate.client.MovingSymbolGate`). A third of the way into the flow a
:class:`~services.scaler.moves.SymbolMover`, in a process of its own as the scaler is, moves the
symbol from shard 0 to shard 1 (scaling up); two thirds of the way, back to shard 0 (scaling
down: shard 0 drops its frozen copy of the book it handed over and takes the book shard 1 left). Then:

* ``move_pause_max_ms`` - the longest any order waited from its first send to its ack (turned
  away and sent again included), over both moves; ``move_pause_p50_ms`` the median, as a floor of
  the same run; ``move_window_ms`` how long the symbol was marked moving (mark published to move
  done), the longer of the two moves; ``move_out_window_ms`` / ``move_back_window_ms`` each;
* ``lost_acked`` - acknowledged orders that neither shard knows by their id afterwards;
* ``duplicate_fills`` - orders filled for more than their quantity across both shards' ledgers,
  plus trade ids that appear twice;
* ``books_match`` - both moves were done, and every order each carried is known afterwards by
  its original id (on shard 0 if the move back carried it, else on shard 1, where it finished),
  at its price, with no lot made or lost: its open plus filled quantity now is what the move
  carried (``orders_moved``, ``orders_moved_back``: how many each carried).

Figures are timings on a shared machine: read them against the floor of the same run.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hftgate.bench.execution import ExecutionProcess
from hftgate.client import HeldOrder, MovingSymbolGate, not_owner_info, retry_delay_s
from hftgate.security import ADMIN, load_suite_secret
from hftgate.shardmap import Shard, ShardMap, ShardMapStore
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from hftgate.v1 import shard_admin_pb2 as admin
from services.execution.handover import rows_of_book

SYMBOL = "BTCUSDT"
MID = 5_000_000
#: Bounds of one run (what the flow may send and how long a refused order is sent again).
MAX_ORDERS = 20_000
MAX_RESENDS = 1_000
#: Orders in flight per account at most: past it the flow waits (so a slow machine lowers the rate
#: rather than queueing thousands of calls, whose waits would measure the queue, not the move).
MAX_IN_FLIGHT = 32
#: How long an order waits for another order's probe of the moving symbol before sending itself
#: (the routing client's ``moving_retry_s``).
MOVING_WAIT_S = 2.0


class _Flow:
    def __init__(self, stubs: dict[str, api_grpc.ExecutionServiceStub], owner: str, metadata: Any) -> None:
        self.stubs = stubs
        self.owner = owner
        self.metadata = metadata
        self.waits_ms: list[float] = []
        self.acked: dict[int, tuple[str, int]] = {}  # order id -> (client id, quantity)
        self.errors = 0
        self.error_codes: dict[str, int] = {}
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.gate = MovingSymbolGate()

    async def send(self, order: api.NewOrder) -> None:
        async with self.slots:
            await self._send(order)

    async def _send(self, order: api.NewOrder) -> None:
        started = time.perf_counter()
        gate, symbol = self.gate, order.symbol
        probe = False
        try:
            for _ in range(MAX_RESENDS):
                if not probe and gate.probing(symbol):
                    held = gate.hold(symbol, order, 10.0)
                    await gate.wait(symbol, asyncio.get_running_loop().time() + MOVING_WAIT_S)
                    if held is not None:
                        if held.taken:  # sent with the probe's order
                            try:
                                ack = await held.result
                            except grpc.aio.AioRpcError as exc:
                                self._error(exc)
                                return
                            if ack is not None:
                                self._answered(order, ack, started)
                                return
                        else:
                            gate.unhold(symbol, held)
                try:
                    reply = await self.stubs[self.owner].SubmitOrder(
                        api.SubmitOrderRequest(order=order), metadata=self.metadata, timeout=10
                    )
                except grpc.aio.AioRpcError as exc:
                    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
                    delay_s: float | None = None
                    for detail in status.details if status is not None else ():
                        info = error_details_pb2.ErrorInfo()
                        retry = error_details_pb2.RetryInfo()
                        if detail.Unpack(info) and info.metadata.get("owner_address") in self.stubs:
                            self.owner = info.metadata["owner_address"]
                        elif detail.Unpack(retry):
                            delay_s = retry.retry_delay.ToNanoseconds() / 1e9
                    if probe and delay_s is None and exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        # (A probe refused as not the owner keeps probing, at the owner named.)
                        gate.release(symbol)
                        probe = False
                    if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE):
                        self._error(exc)
                        return
                    if delay_s is not None:
                        # As the routing client does: one probe per symbol, the others wait for it.
                        probe = gate.claim(symbol) or probe
                        if not probe:
                            continue
                    await asyncio.sleep(delay_s or 0.0)
                    continue
                self._answered(order, reply.ack, started)
                if probe:  # as the routing client does: the orders that waited go as one batch
                    held_orders = gate.take_held(symbol)
                    gate.release(symbol)
                    probe = False
                    if held_orders:
                        await self._send_held(held_orders)
                return
            self.errors += 1
        finally:
            if probe:
                gate.release(symbol)

    async def _send_held(self, held: list[HeldOrder]) -> None:
        """:meth:`hftgate.client.HftgateClient._send_held` against this flow's owner."""
        try:
            reply = await self.stubs[self.owner].SubmitOrders(
                api.SubmitOrdersRequest(orders=[h.order for h in held]), metadata=self.metadata, timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            alone = retry_delay_s(exc) is not None or not_owner_info(exc) is not None
            for h in held:
                if alone:  # refused whole (moving again, not the owner): each is sent alone
                    h.result.set_result(None)
                else:
                    h.result.set_exception(exc)
            return
        for h, ack in zip(held, reply.acks, strict=True):
            h.result.set_result(ack)

    def _answered(self, order: api.NewOrder, ack: api.OrderAck, started: float) -> None:
        self.waits_ms.append((time.perf_counter() - started) * 1000)
        if ack.sequence:
            self.acked[ack.order_id] = (order.client_order_id, order.quantity_lots)

    def _error(self, exc: grpc.aio.AioRpcError) -> None:
        self.errors += 1
        name = exc.code().name
        self.error_codes[name] = self.error_codes.get(name, 0) + 1


def _order(number: int) -> api.NewOrder:
    taker = number % 5 == 4
    side = common.SIDE_SELL if number % 2 else common.SIDE_BUY
    offset = 100 * (1 + number % 20)
    price = (MID - offset if side == common.SIDE_BUY else MID + offset) if not taker else MID
    return api.NewOrder(
        client_order_id=f"m{number}",
        symbol=SYMBOL,
        side=side,  # type: ignore[arg-type]
        order_type=api.ORDER_TYPE_LIMIT,
        time_in_force=api.TIME_IN_FORCE_IOC if taker else api.TIME_IN_FORCE_GTC,
        price_ticks=price if not taker else (MID + 10_000 if side == common.SIDE_BUY else MID - 10_000),
        quantity_lots=10 if not taker else 3,
    )


def _mover_child(
    url: str,
    environment: dict[str, str],
    tmp: str,
    ready: Any,
    go_out: Any,
    go_back: Any,
    results: Any,
) -> None:
    """The scaler's part, in a process of its own as in a deployment: move the symbol to shard 1
    once ``go_out`` is set, back to shard 0 once ``go_back`` is; put (mark times, end times,
    [(step, book bytes)] of both moves) on ``results``, or the error's text."""
    asyncio.run(_mover_main(url, environment, tmp, ready, go_out, go_back, results))


async def _mover_main(
    url: str, environment: dict[str, str], tmp: str, ready: Any, go_out: Any, go_back: Any, results: Any
) -> None:
    from services.scaler.moves import SymbolMover

    store = ShardMapStore(url)
    try:
        await store.start()
        secret = load_suite_secret(environment, state_dir=Path(tmp), create=False)
        mover = SymbolMover(store, secret.service_credentials(ADMIN), retry_delay_s=0.01)
        await mover.start()
        marked_at: list[float] = []
        finished_at: list[float] = []

        def note_mark(current: Any) -> None:
            if current.step == "export":  # the mark is published: the symbol refuses input from here
                marked_at.append(time.perf_counter())

        mover.before_step = note_mark
        done = []
        ready.set()
        for target, go in ((1, go_out), (0, go_back)):
            while not go.is_set():  # (an Event's wait would block this loop's thread)
                await asyncio.sleep(0.001)
            moved = await mover.move(SYMBOL, target)
            finished_at.append(time.perf_counter())
            done.append((moved.step, moved.book))
        await mover.close()
        results.put((marked_at, finished_at, done))
    except Exception as exc:  # reported to the bench, which raises it
        results.put(f"{type(exc).__name__}: {exc}")
    finally:
        await store.close()


async def _one_run(tmp: Path, rate_per_s: float, flow_s: float) -> dict[str, Any]:
    import multiprocessing

    from services.execution.ledger import Ledger

    url = f"sqlite+aiosqlite:///{tmp / 'shardmap.sqlite3'}"
    processes: list[ExecutionProcess] = []
    for shard_id in (0, 1):
        settings = {
            "shard_id": str(shard_id),
            "shard_map_database_url": url,
            "state_dir": str(tmp / f"shard{shard_id}"),
            "journal_durability": "fsync",
        }
        process = ExecutionProcess(tmp, settings)
        process.log_dir = tmp / f"logs{shard_id}"
        if processes:
            process.key_secret = processes[0].key_secret
        processes.append(process)
    store = ShardMapStore(url)
    channels: list[grpc.aio.Channel] = []
    mover_process: Any = None
    try:
        for process in processes:
            process.spawn()
        for process in processes:
            await process.wait_ready()
        await store.start()
        addresses = [p.address for p in processes]
        await store.create(ShardMap(1, [Shard(0, addresses[0]), Shard(1, addresses[1])], {SYMBOL: 0}))
        channels = [grpc.aio.insecure_channel(a) for a in addresses]
        stubs = {a: api_grpc.ExecutionServiceStub(c) for a, c in zip(addresses, channels, strict=True)}
        flows = [_Flow(stubs, addresses[0], processes[0].account(name).metadata) for name in ("alice", "bob")]
        # The mover runs where the scaler would: in a process of its own, not on this client's
        # event loop (whose 1,000 calls a second then delayed each of its steps).
        context = multiprocessing.get_context("spawn")  # never fork a process that holds gRPC objects
        ready, go_out, go_back, results = context.Event(), context.Event(), context.Event(), context.Queue()
        mover_process = context.Process(
            target=_mover_child,
            args=(url, processes[0].environment(), str(tmp), ready, go_out, go_back, results),
            daemon=True,
        )
        mover_process.start()
        deadline = time.monotonic() + 60
        while not ready.is_set():
            if not mover_process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the mover process did not start")
            await asyncio.sleep(0.01)
        pending: set[asyncio.Task[None]] = set()
        interval = 1.0 / rate_per_s
        count = min(MAX_ORDERS, int(rate_per_s * flow_s))
        started = time.perf_counter()
        for number in range(count):
            flow = flows[number % 2]
            if flow.slots.locked():  # the machine cannot keep the rate: wait rather than queue
                await flow.slots.acquire()
                flow.slots.release()
            task = asyncio.ensure_future(flow.send(_order(number)))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if number == count // 3:
                go_out.set()
            elif number == 2 * count // 3:
                go_back.set()
            delay = started + (number + 1) * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        sent_s = time.perf_counter() - started
        await asyncio.gather(*pending)
        reported = await asyncio.to_thread(results.get, True, 120)
        mover_process.join(30)
        if isinstance(reported, str):
            raise RuntimeError(f"the move failed: {reported}")
        marked_at, finished_at, ((out_step, out_book), (back_step, back_book)) = reported
        windows_ms = [(end - mark) * 1000 for mark, end in zip(marked_at, finished_at, strict=False)]

        # What each shard knows afterwards.
        lost = 0
        for flow in flows:
            for order_id in flow.acked:
                found = False
                for stub in (stubs[addresses[0]], stubs[addresses[1]]):
                    try:
                        await stub.GetOrder(api.GetOrderRequest(order_id=order_id), metadata=flow.metadata)
                        found = True
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                            raise
                lost += not found
        await asyncio.sleep(0.5)  # the ledgers are written off the order path
        entries = []
        for shard_id in (0, 1):
            ledger = await Ledger.open(f"sqlite+aiosqlite:///{tmp / f'shard{shard_id}' / 'ledger.sqlite3'}")
            try:
                entries.append(await ledger.entries())
            finally:
                await ledger.close()
        quantities = {oid: qty for flow in flows for oid, (_, qty) in flow.acked.items()}
        filled: dict[int, int] = {}
        trade_ids: list[str] = []
        for rows in entries:
            for row in rows:
                trade_ids.append(row.transaction_id)
                for order_id in (row.buyer_order_id, row.seller_order_id):
                    filled[order_id] = filled.get(order_id, 0) + row.quantity_lots
        duplicates = sum(1 for oid, lots in filled.items() if lots > quantities.get(oid, lots))
        duplicates += len(trade_ids) - len(set(trade_ids))
        moved_out = rows_of_book(admin.ExportSymbolResponse.FromString(out_book).book)
        moved_back = rows_of_book(admin.ExportSymbolResponse.FromString(back_book).book)
        books_match = out_step == "done" and back_step == "done"
        by_account = {name: processes[0].account(name).metadata for name in ("alice", "bob")}
        for moved_order in [*moved_out, *moved_back]:
            got = None
            for stub in (stubs[addresses[0]], stubs[addresses[1]]):  # back home, else where it ended
                try:
                    got = await stub.GetOrder(
                        api.GetOrderRequest(order_id=moved_order.original_order_id),
                        metadata=by_account[moved_order.account_name],
                    )
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
            if (
                got is None
                or got.order.request.price_ticks != moved_order.price_ticks
                or got.order.cum_quantity_lots < moved_order.cum_quantity_lots
                or got.order.leaves_quantity_lots + got.order.cum_quantity_lots
                != moved_order.leaves_quantity_lots + moved_order.cum_quantity_lots
            ):
                books_match = False
        waits = [w for flow in flows for w in flow.waits_ms]
        return {
            "move_pause_max_ms": max(waits),
            "move_pause_p50_ms": statistics.median(waits),
            "move_window_ms": max(windows_ms, default=0.0),
            "move_out_window_ms": windows_ms[0] if windows_ms else 0.0,
            "move_back_window_ms": windows_ms[1] if len(windows_ms) > 1 else 0.0,
            "lost_acked": lost,
            "duplicate_fills": duplicates,
            "books_match": books_match,
            "orders_acked": sum(len(f.acked) for f in flows),
            "orders_moved": len(moved_out),
            "orders_moved_back": len(moved_back),
            "fills": len(trade_ids),
            "errors": sum(f.errors for f in flows),
            "achieved_rate_per_s": count / max(1e-9, sent_s),
            "error_codes": ",".join(sorted({c for f in flows for c in f.error_codes})),
        }
    finally:
        for channel in channels:
            await channel.close(None)
        if mover_process is not None and mover_process.is_alive():
            mover_process.kill()
        await store.close()
        for process in processes:
            process.stop()


def run(repeats: int = 1, rate_per_s: float = 1_000.0, flow_s: float = 3.0) -> dict[str, float | int | bool]:
    """``repeats`` round trips (out and back) under ``rate_per_s`` orders/s (fresh shards each);
    worst figures kept."""
    out: dict[str, Any] = {}
    for _ in range(max(1, repeats)):
        with tempfile.TemporaryDirectory(prefix="hftgate-bench-moves-") as tmp:
            one = asyncio.run(_one_run(Path(tmp), rate_per_s, flow_s))
        if not out:
            out = dict(one)
            continue
        out["move_pause_max_ms"] = max(out["move_pause_max_ms"], one["move_pause_max_ms"])
        out["move_pause_p50_ms"] = max(out["move_pause_p50_ms"], one["move_pause_p50_ms"])
        for name in ("move_window_ms", "move_out_window_ms", "move_back_window_ms"):
            out[name] = max(out[name], one[name])
        counts = ("lost_acked", "duplicate_fills", "orders_acked", "orders_moved", "orders_moved_back")
        for name in (*counts, "fills", "errors"):
            out[name] += one[name]
        out["books_match"] = out["books_match"] and one["books_match"]
        out["error_codes"] = ",".join(
            sorted(set(filter(None, f"{out['error_codes']},{one['error_codes']}".split(","))))
        )
    out["repeats"] = max(1, repeats)
    out["move_rate_per_s"] = rate_per_s
    out["move_bars_hold"] = bool(
        out["move_pause_max_ms"] <= 100
        and out["lost_acked"] == 0
        and out["duplicate_fills"] == 0
        and out["books_match"]
    )
    return out
