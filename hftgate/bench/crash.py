"""The kill -9 harness: a real execution service under a steady order flow, SIGKILLed again and again.

What it does (:func:`run_crash_harness`):

1. Starts ``python -m services.execution`` (:class:`~hftgate.bench.execution.ExecutionProcess`,
   durable journal on, state in a temporary directory, snapshots every ``snapshot_every_inputs``
   inputs so recoveries load a snapshot and replay a tail, journal kept whole).
2. One :class:`Trader` per account keeps an OrderStream busy at a steady rate: new orders from
   :class:`~hftgate.bench.execution.OrderFlow` (passive GTC limits, aggressive IOCs) and cancels
   of its own earlier orders. It records every input it sent and every ack and fill it saw. Acks
   on a stream answer its inputs in order, so each ack is tied to its input; inputs sent but not
   answered when the stream broke are *in doubt* (the service may or may not have taken them).
3. After a random delay it sends SIGKILL, waits for the traders to notice, and checks the state
   on disk (:class:`Verifier`), then restarts the service on the same port and times how long it
   takes to listen again; the traders reconnect and go on. ``kills`` times.
4. Finally it lets the flow run a little, stops the traders, stops the service gracefully, checks
   once more, and checks the ledger.

The checks, after every kill and at the end:

- *lost_acked*: an input the client saw accepted (ack with a sequence number) that is missing
  from the journal, or is there with another sequence number, order id or content. Recovery
  reads the journal (:func:`services.execution.recovery.load_state`, offline, on a copy that
  holds every input since the start). Right after each restart, GetOrder on the live service
  must also find the orders acked last before the kill.
- Every journaled input must be one the client sent (an acked one, or an in-doubt one: those the
  journal shows are adopted with its sequence number); anything else counts as lost_acked too.
- *books_match*: every journaled input, rebuilt from the CLIENT's records (not the journal's
  bytes), replayed in sequence order through :class:`hftgate.matching.reference.ReferenceEngine`,
  gives the same books (every resting order, its priority, price and quantities, and the last
  trade price) as the service's recovery (newest snapshot + journal tail) and as a replay of the
  whole journal.
- *duplicate_fills*: ledger rows beyond the reference's fills (as (buy order, sell order, price,
  quantity) multisets), plus fill reports the client saw twice (same trade id and order id).
- *ledger_matches*: the ledger's hash chain verifies and its fills are exactly the reference's,
  each once.

``recovery_ms_*``: from spawning the new process to its first SERVING answer on ``grpc.health.v1``
(it listens only once recovery and the ledger catch-up are done), interpreter start included;
``service_recovery_ms_*``
is the service's own figure for loading the snapshot and replaying the journal.

**Two shards** (``CrashSettings.shards=2``, the default of :func:`run`, as ``hftgate up`` runs
execution): :class:`hftgate.bench.gateway.ShardedSuite` starts two shard processes (BTCUSDT pinned
to shard 0, ETHUSDT to shard 1, one ledger database, one shard map), every account streams to
both, and the kills alternate between the shards while the other one keeps trading. Each shard
is checked on its own (input sequences and journaled order ids are per shard; acks and the
ledger carry public ids, the shard in bits 48-62, so the verifier adds the shard's base), and
the one ledger against the fills of both.

``hftgate bench crash --kills 10 --json`` runs :func:`run`; the short tests in ``make test``
call :func:`run_crash_harness` with a few kills, on one shard and on two.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import re
import shutil
import statistics
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hftgate.bench.execution import (
    DEMO_MID_PRICE_TICKS,
    DEMO_SYMBOL,
    Account,
    ExecutionProcess,
    OrderFlow,
    run_prefix,
)
from hftgate.grpcserver import CHANNEL_OPTIONS

log = logging.getLogger(__name__)

_SERVICE_RECOVERED = re.compile(r"recovered in ([0-9.]+) ms")
# Reconnect quickly after a restart instead of gRPC's default back-off (1 s, growing).
_RECONNECT_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 100),
]


@dataclass(frozen=True)
class CrashSettings:
    """How hard and how often to kill."""

    kills: int = 10
    accounts: tuple[str, ...] = ("alice", "bob")
    #: Inputs per account per second (steady, whatever the acks), and per stream message.
    rate_per_s: float = 2_000.0
    message_inputs: int = 10
    #: Inputs a trader may have unanswered before it waits.
    window_inputs: int = 500
    #: Share of inputs that cancel one of the account's earlier GTC orders.
    cancel_share: float = 0.1
    #: The kill comes this long (uniformly drawn, seconds) after the flow resumed.
    kill_after_s: tuple[float, float] = (0.3, 1.5)
    #: Flow after the last restart, before the graceful stop.
    final_flow_s: float = 1.0
    #: Snapshots this often, so most recoveries load a snapshot and replay a journal tail.
    snapshot_every_inputs: int = 1_000
    #: Share of aggressive (IOC) orders; below one half the books deepen as the run goes on,
    #: so the comparisons cover thousands of resting orders and their priority.
    take_share: float = 0.45
    #: After each restart, GetOrder checks this many of each trader's last acked orders.
    live_check_orders: int = 100
    startup_timeout_s: float = 60.0
    seed: int = 0
    #: Execution shards (1 or 2). With two (:class:`hftgate.bench.gateway.ShardedSuite`: BTCUSDT
    #: pinned to shard 0, ETHUSDT to shard 1, one ledger), every account trades on both, one
    #: stream per shard, and the kills alternate between the shards while the other keeps trading.
    shards: int = 1


@dataclass
class SentInput:
    """One input as the client sent it, and what it learned about it."""

    account: str
    kind: str  # "new" or "cancel"
    client_order_id: str  # the order's (for a cancel: the target's)
    side: int = 0
    price_ticks: int = 0
    quantity_lots: int = 0
    time_in_force: int = 0
    symbol: str = ""
    shard: int = 0  # the shard it was sent to (sequences and order ids are per shard)
    acked: bool = False
    in_doubt: bool = False
    status: int = 0
    sequence: int = 0
    order_id: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.account, self.kind, self.client_order_id)


class ClientRecord:
    """Everything every trader sent and saw, keyed for the verifier."""

    def __init__(self) -> None:
        self.inputs: dict[tuple[str, str, str], SentInput] = {}
        self.fill_reports: Counter[tuple[int, int]] = Counter()  # (trade id, order id) -> times seen

    def add(self, sent: SentInput) -> None:
        if sent.key in self.inputs:
            raise RuntimeError(f"input sent twice: {sent.key}")
        self.inputs[sent.key] = sent

    def acked_with_sequence(self, shard: int = 0) -> list[SentInput]:
        return [s for s in self.inputs.values() if s.acked and s.sequence > 0 and s.shard == shard]


class Trader:
    """One account's steady flow over OrderStream: :meth:`run_stream` once per service life."""

    def __init__(
        self,
        account: Account,
        flow: OrderFlow,
        record: ClientRecord,
        settings: CrashSettings,
        rng: random.Random,
        shard: int = 0,
    ) -> None:
        self.shard = shard
        self.account = account
        self.flow = flow
        self.record = record
        self.settings = settings
        self.rng = rng
        self.acks_this_stream = 0
        self.recent_acked: deque[SentInput] = deque(maxlen=settings.live_check_orders)
        self._cancellable: list[str] = []  # client ids of our acked, accepted GTC orders

    def _next_inputs(self, count: int) -> tuple[list[Any], list[SentInput]]:
        from hftgate.v1 import execution_pb2

        inputs, sent = [], []
        for _ in range(count):
            if self._cancellable and self.rng.random() < self.settings.cancel_share:
                target = self._cancellable.pop(self.rng.randrange(len(self._cancellable)))
                inputs.append(
                    execution_pb2.OrderInput(cancel=execution_pb2.CancelOrderRequest(client_order_id=target))
                )
                sent.append(
                    SentInput(self.account.name, "cancel", target, symbol=self.flow.symbol, shard=self.shard)
                )
                continue
            fields = self.flow.next_fields()
            inputs.append(execution_pb2.OrderInput(new_order=execution_pb2.NewOrder(**fields)))
            sent.append(
                SentInput(
                    self.account.name,
                    "new",
                    fields["client_order_id"],
                    side=fields["side"],
                    price_ticks=fields["price_ticks"],
                    quantity_lots=fields["quantity_lots"],
                    time_in_force=fields["time_in_force"],
                    symbol=fields["symbol"],
                    shard=self.shard,
                )
            )
        return inputs, sent

    def _on_ack(self, sent: SentInput, ack: Any) -> None:
        from hftgate.v1 import execution_pb2

        sent.acked = True
        sent.status = ack.status
        sent.sequence = ack.sequence
        if sent.kind == "new":
            sent.order_id = ack.order_id
        self.acks_this_stream += 1
        if ack.status == execution_pb2.ORDER_STATUS_REJECTED:
            return
        if sent.kind == "new":
            self.recent_acked.append(sent)
            if ack.status in (execution_pb2.ORDER_STATUS_NEW, execution_pb2.ORDER_STATUS_PARTIALLY_FILLED):
                self._cancellable.append(sent.client_order_id)

    async def run_stream(self, stub: Any, stopping: asyncio.Event) -> None:
        """One stream: send at the steady rate until it breaks or ``stopping``, then mark what is in doubt."""
        import grpc

        from hftgate.v1 import execution_pb2

        fill_types = (execution_pb2.EXEC_TYPE_FILL, execution_pb2.EXEC_TYPE_PARTIAL_FILL)
        call = stub.OrderStream(metadata=self.account.metadata)
        unanswered: deque[SentInput] = deque()
        room = asyncio.Condition()
        self.acks_this_stream = 0
        reading = True

        async def read() -> None:
            nonlocal reading
            try:
                async for response in call:
                    if len(response.acks) > len(unanswered):
                        raise RuntimeError(
                            f"{len(response.acks)} acks for {len(unanswered)} unanswered inputs"
                        )
                    for ack in response.acks:
                        self._on_ack(unanswered.popleft(), ack)
                    for report in response.executions:
                        if report.exec_type in fill_types:
                            self.record.fill_reports[(report.trade_id, report.order_id)] += 1
                    async with room:
                        room.notify_all()
            finally:
                reading = False
                async with room:
                    room.notify_all()

        reader = asyncio.create_task(read())
        interval_s = self.settings.message_inputs / self.settings.rate_per_s
        next_send = time.monotonic()
        try:
            while not stopping.is_set() and reading:
                async with room:
                    while len(unanswered) >= self.settings.window_inputs and reading:
                        await room.wait()
                if not reading:
                    break
                inputs, sent = self._next_inputs(self.settings.message_inputs)
                for one in sent:
                    self.record.add(one)
                unanswered.extend(sent)
                await call.write(execution_pb2.OrderStreamRequest(inputs=inputs))
                next_send += interval_s
                delay = next_send - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stopping.wait(), delay)
                else:
                    next_send = time.monotonic()  # behind: do not burst to catch up
            if reading:
                await call.done_writing()
            await reader
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:  # the service died under us
            log.debug("stream of %s ended: %s", self.account.name, exc)
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
            for unanswered_input in unanswered:
                unanswered_input.in_doubt = True


@dataclass
class KillCheck:
    """What one check of the on-disk state found."""

    journaled_inputs: int = 0
    in_doubt_adopted: int = 0
    lost_acked: int = 0
    unexplained_inputs: int = 0
    books_match: bool = True
    problems: list[str] = field(default_factory=list)


class Verifier:
    """Checks a stopped (or killed) service's state against the client's records, incrementally.

    Keeps a reference engine fed with every input verified so far, so each check replays only
    the inputs journaled since the previous one.
    """

    def __init__(self, process: ExecutionProcess, record: ClientRecord, shard: int = 0) -> None:
        from hftgate.matching.reference import ReferenceEngine
        from hftgate.shardmap import make_order_id
        from services.execution.config import load_config
        from services.execution.recovery import engine_config_of

        self.process = process
        self.record = record
        self.shard = shard
        # The journal holds the shard's own order ids; acks and the ledger carry public ones
        # (the shard id in bits 48-62): public = local + id_base.
        self.id_base = make_order_id(shard, 1) - 1
        self.config = load_config(process.environment())
        self.reference = ReferenceEngine(engine_config_of(self.config), symbols=())
        self.verified_through = 0  # input sequence
        self.reference_fills: Counter[tuple[int, int, int, int]] = Counter()  # (buy id, sell id, price, qty)

    def _load_copy(self, scratch: Path, name: str, with_snapshots: bool) -> Any:
        """``load_state`` on a copy of the journal (and snapshots), leaving the original as the killed
        process left it, for the restarted service to repair and recover by itself."""
        from services.execution.recovery import load_state

        target = scratch / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.process.journal_dir, target / "journal")
        snapshots = self.process.service_dir / "snapshots"
        if with_snapshots and snapshots.is_dir():
            shutil.copytree(snapshots, target / "snapshots")
        return load_state(target, self.config)

    def check(self, scratch: Path) -> KillCheck:
        from services.execution.recovery import comparable_books

        result = KillCheck()
        whole = self._load_copy(scratch, "whole-journal", with_snapshots=False)  # every input since seq 1
        # The newest snapshot and the journal tail after it, as the restarting service recovers.
        # Recovery refusing (a gap between snapshot and journal) is a finding, not a harness error.
        try:
            recovered_books = self._load_copy(scratch, "recovery", with_snapshots=True).books
        except Exception as exc:
            recovered_books = None
            result.books_match = False
            result.problems.append(f"recovery from the newest snapshot + journal tail refused: {exc}")
        if whole.first_input_seq != 1 and len(whole.inputs):
            result.problems.append(f"the journal no longer starts at input 1 (at {whole.first_input_seq})")
        for symbol_id in whole.symbols.values():
            if symbol_id not in self.reference.books:
                self.reference.add_symbol(symbol_id)

        fresh = whole.input_sequences > self.verified_through
        rows, sequences = whole.inputs[fresh], whole.input_sequences[fresh]
        result.journaled_inputs = len(rows)
        commands = self._client_commands(whole, rows, sequences, result)

        # Every input acked since the last check must be among those journaled since.
        journaled = set(sequences.tolist())
        for sent in self.record.acked_with_sequence(self.shard):
            if sent.sequence > self.verified_through and sent.sequence not in journaled:
                result.lost_acked += 1
                result.problems.append(f"{sent.key} acked as input {sent.sequence}, not in the journal")

        self._replay(commands)
        expected = comparable_books(self.reference, whole.symbols)
        for name, books in (("recovery (snapshot + tail)", recovered_books), ("whole journal", whole.books)):
            if books is not None and books != expected:
                result.books_match = False
                result.problems.append(
                    f"books from the {name} differ from the reference: {_diff(expected, books)}"
                )
        if len(sequences):
            self.verified_through = max(self.verified_through, int(sequences.max()))
        return result

    def _client_commands(
        self, whole: Any, rows: np.ndarray, sequences: np.ndarray, result: KillCheck
    ) -> np.ndarray:
        """The engine commands of the journaled ``rows`` rebuilt from what the client sent.

        Ties every journaled input to the client input it is (a new order by its client order id,
        a cancel by its target's), adopts in-doubt inputs with the journal's sequence and order id,
        and counts acked inputs that the journal holds differently.
        """
        from hftgate.matching.types import COMMAND_DTYPE, Action, OrderType, StpMode

        account_ids = {name: account_id for account_id, name in whole.accounts.items()}
        client_ids = whole.client_order_ids
        commands = np.zeros(len(rows), COMMAND_DTYPE)
        for i, (row, seq) in enumerate(zip(rows.tolist(), sequences.tolist(), strict=True)):
            order_id, account_id, action = row[0], row[1], row[8]
            kind = {Action.NEW: "new", Action.CANCEL: "cancel"}.get(action, f"action {action}")
            client_id = client_ids[order_id - 1] if 1 <= order_id <= len(client_ids) else ""
            sent = self.record.inputs.get((whole.accounts.get(account_id, ""), kind, client_id))
            if sent is None:
                result.unexplained_inputs += 1
                result.problems.append(f"journaled input {seq} ({kind} of order {order_id}) was never sent")
                continue  # its row stays zero: the reference rejects it and changes nothing
            if not sent.acked:
                result.in_doubt_adopted += 1
            elif sent.sequence and sent.sequence != seq:
                result.lost_acked += 1
                result.problems.append(f"{sent.key} acked as input {sent.sequence}, journaled as {seq}")
            sent.sequence = seq
            if kind == "cancel":
                commands["order_id"][i], commands["account_id"][i] = order_id, account_id
                commands["action"][i] = Action.CANCEL
                continue
            public_id = self.id_base + order_id
            if sent.order_id and sent.order_id != public_id:
                result.lost_acked += 1
                result.problems.append(f"{sent.key} acked as order {sent.order_id}, journaled as {public_id}")
            sent.order_id = public_id
            commands[i] = (
                order_id, account_ids[sent.account], sent.price_ticks, sent.quantity_lots, 0, 0,
                whole.symbols[sent.symbol], 0, Action.NEW, sent.side, OrderType.LIMIT, sent.time_in_force,
                0, StpMode.CANCEL_RESTING, 0,
            )  # fmt: skip
            # Price, quantity, side, type, time in force: as the service journaled them and as sent.
            as_journaled = (row[2], row[3], row[9], row[10], row[11])
            as_sent = (sent.price_ticks, sent.quantity_lots, sent.side, OrderType.LIMIT, sent.time_in_force)
            if as_journaled != as_sent:
                result.lost_acked += 1
                result.problems.append(f"{sent.key} journaled as {as_journaled}, sent as {as_sent}")
        return commands

    def _replay(self, commands: np.ndarray) -> None:
        """Feed the reference engine and keep its fills as (buy order, sell order, price, quantity)."""
        from hftgate.matching.types import EVENT_DTYPE, EventType, Side

        events = np.array(self.reference.process(commands), dtype=EVENT_DTYPE)
        fills = events[events["type"] == EventType.FILL]
        taker_buys = fills["side"] == Side.BUY
        buys = np.where(taker_buys, fills["order_id"], fills["maker_order_id"])
        sells = np.where(taker_buys, fills["maker_order_id"], fills["order_id"])
        base = self.id_base
        for buy, sell, price, qty in zip(
            buys.tolist(), sells.tolist(), fills["price"].tolist(), fills["qty"].tolist(), strict=True
        ):
            self.reference_fills[(base + buy, base + sell, price, qty)] += 1


def _diff(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    for name in sorted(set(expected) | set(actual)):
        a, b = expected.get(name), actual.get(name)
        if a != b:
            if a is None or b is None:
                return f"{name}: only on one side"
            for part in ("bids", "asks", "buy_stops", "sell_stops", "last_trade_price"):
                if getattr(a, part) != getattr(b, part):
                    ours, theirs = str(getattr(a, part))[:300], str(getattr(b, part))[:300]
                    return f"{name} {part}: reference {ours} vs {theirs}"
    return "?"


@dataclass
class CrashReport:
    kills: int = 0
    acked: int = 0
    in_doubt: int = 0
    in_doubt_adopted: int = 0
    journaled_inputs: int = 0
    lost_acked: int = 0
    duplicate_fills: int = 0
    books_match: bool = True
    ledger_matches: bool = True
    ledger_fills: int = 0
    reference_fills: int = 0
    acked_by_shard: dict[int, int] = field(default_factory=dict)
    recovery_ms: list[float] = field(default_factory=list)
    service_recovery_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def absorb(self, check: KillCheck) -> None:
        self.journaled_inputs += check.journaled_inputs
        self.in_doubt_adopted += check.in_doubt_adopted
        self.lost_acked += check.lost_acked + check.unexplained_inputs
        # The books are compared with a replay of the journaled inputs; a lost or unexplained input
        # means that replay is not the replay of what the client was told, so they cannot match.
        faithful = not (check.lost_acked or check.unexplained_inputs)
        self.books_match = self.books_match and check.books_match and faithful
        self.problems.extend(check.problems)

    def summary(self) -> dict[str, float | int | bool]:
        recovery = self.recovery_ms or [0.0]
        service = self.service_recovery_ms or [0.0]
        return {
            "kills": self.kills,
            "acked": self.acked,
            "in_doubt": self.in_doubt,
            "in_doubt_journaled": self.in_doubt_adopted,
            "journaled_inputs": self.journaled_inputs,
            "lost_acked": self.lost_acked,
            "duplicate_fills": self.duplicate_fills,
            "books_match": self.books_match,
            "ledger_matches": self.ledger_matches,
            "ledger_fills": self.ledger_fills,
            "recovery_ms_p50": round(statistics.median(recovery), 1),
            "recovery_ms_max": round(max(recovery), 1),
            "service_recovery_ms_p50": round(statistics.median(service), 1),
            "service_recovery_ms_max": round(max(service), 1),
            **self.recovery_trend(),
        }

    def recovery_trend(self) -> dict[str, float | int | bool]:
        """Recovery time by kill index (``recovery_ms_kill_<i>``, and the service's own figure), and
        the bar that it stays bounded: the last kill's recovery at most twice the first's (a service
        killed before any time or input trigger fired used to replay its whole journal each time)."""
        out: dict[str, float | int | bool] = {}
        for index, ms in enumerate(self.recovery_ms, start=1):
            out[f"recovery_ms_kill_{index}"] = round(ms, 1)
        for index, ms in enumerate(self.service_recovery_ms, start=1):
            out[f"service_recovery_ms_kill_{index}"] = round(ms, 1)
        if self.recovery_ms:
            first, last = self.recovery_ms[0], self.recovery_ms[-1]
            out["recovery_ms_last_over_first"] = round(last / first, 2) if first > 0 else 0.0
            out["recovery_bounded"] = last <= 2 * first
        return out


async def _live_check(stub: Any, traders: Sequence[Trader], report: CrashReport) -> None:
    """GetOrder on the restarted service for each trader's last acked orders: all must be there."""
    import grpc

    from hftgate.v1 import execution_pb2

    for trader in traders:
        for sent in list(trader.recent_acked):
            try:
                response = await stub.GetOrder(
                    execution_pb2.GetOrderRequest(order_id=sent.order_id), metadata=trader.account.metadata
                )
            except grpc.aio.AioRpcError as exc:
                report.lost_acked += 1
                report.problems.append(
                    f"GetOrder after restart: {sent.key} order {sent.order_id}: {exc.code().name}"
                )
                continue
            if response.order.request.client_order_id != sent.client_order_id:
                report.lost_acked += 1
                report.problems.append(
                    f"GetOrder after restart: order {sent.order_id} is "
                    f"{response.order.request.client_order_id!r}, acked as {sent.client_order_id!r}"
                )


async def _check_ledger(
    process: ExecutionProcess, verifiers: Sequence[Verifier], report: CrashReport
) -> None:
    """The one ledger (every shard writes to shard 0's) against every shard's reference fills."""
    from services.execution.ledger import Ledger

    ledger = await Ledger.open(process.ledger_url, verifiers[0].config.ledger_table)
    try:
        broken = await ledger.verify()
        entries = await ledger.entries()
    finally:
        await ledger.close()
    rows = Counter((e.buyer_order_id, e.seller_order_id, e.price_ticks, e.quantity_lots) for e in entries)
    expected: Counter[tuple[int, int, int, int]] = Counter()
    for verifier in verifiers:
        expected.update(verifier.reference_fills)
    extra = sum((rows - expected).values())
    missing = sum((expected - rows).values())
    report.ledger_fills = len(entries)
    report.reference_fills = sum(expected.values())
    report.duplicate_fills += extra
    if len({e.transaction_id for e in entries}) != len(entries):
        report.problems.append("ledger holds a transaction id twice")
        report.ledger_matches = False
    if broken is not None:
        report.problems.append(f"ledger chain broken at {broken}")
        report.ledger_matches = False
    if extra or missing:
        report.problems.append(f"ledger has {extra} fill(s) the reference does not and lacks {missing}")
        report.ledger_matches = False


@dataclass
class _Lane:
    """One shard under test: its process, its verifier, the traders streaming to it."""

    shard: int
    process: ExecutionProcess
    verifier: Verifier
    traders: list[Trader]
    streams: list[asyncio.Task[None]] = field(default_factory=list)
    restarted: bool = False


async def run_crash_harness(settings: CrashSettings, state_dir: Path) -> CrashReport:
    """Run the harness once with its state under ``state_dir``; see the module docstring."""
    import grpc

    from hftgate.v1 import execution_pb2_grpc

    if settings.shards not in (1, 2):
        raise ValueError(f"the crash harness runs 1 or 2 shards, not {settings.shards}")
    rng = random.Random(settings.seed)
    record = ClientRecord()
    report = CrashReport()
    scratch = state_dir / "verify"
    settings_env = {
        "snapshot_every_inputs": str(settings.snapshot_every_inputs),
        # Snapshots as often as the inputs trigger says, to kill the shard around them.
        "snapshot_min_interval_s": "0",
        "journal_truncate_after_snapshot": "false",
        "journal_durability": "fsync",
    }
    symbols: list[tuple[str, int]] = [(DEMO_SYMBOL, DEMO_MID_PRICE_TICKS)]
    suite = None
    if settings.shards == 1:
        # A map of its own under state_dir: never the suite's (HFTGATE_SHARD_MAP_DATABASE_URL names
        # the shards `hftgate up` runs, and a shard on another port is not in it).
        own_map = f"sqlite+aiosqlite:///{state_dir / 'shardmap.sqlite3'}"
        processes = [ExecutionProcess(state_dir, {**settings_env, "shard_map_database_url": own_map})]
    else:
        from hftgate.bench.gateway import MID_PRICE_TICKS, ShardedSuite

        suite = ShardedSuite(state_dir, gateway=False, shard_settings=settings_env)
        processes = suite.shards
        by_shard = {shard_id: symbol for symbol, shard_id in suite.pins.items()}
        symbols = [(by_shard[i], MID_PRICE_TICKS[by_shard[i]]) for i in range(len(processes))]
    prefix = run_prefix()
    lanes = []
    for shard, process in enumerate(processes):
        symbol, mid = symbols[shard]
        traders = []
        for n, name in enumerate(settings.accounts):
            seed = settings.seed * 100 + n + 1000 * shard
            flow = OrderFlow(
                f"{prefix}{shard}-{name}-",
                symbol=symbol,
                mid_price_ticks=mid,
                take_share=settings.take_share,
                seed=seed,
            )
            traders.append(Trader(process.account(name), flow, record, settings, random.Random(seed), shard))
        lanes.append(_Lane(shard, process, Verifier(process, record, shard), traders))
    stopping = asyncio.Event()
    channels: list[grpc.aio.Channel] = []
    try:
        if suite is not None:
            await suite.start(settings.startup_timeout_s)
        else:
            processes[0].spawn()
            await processes[0].wait_ready(settings.startup_timeout_s)
        stubs = []
        for lane in lanes:
            channels.append(grpc.aio.insecure_channel(lane.process.address, options=_RECONNECT_OPTIONS))
            stubs.append(execution_pb2_grpc.ExecutionServiceStub(channels[-1]))
        for kill in range(settings.kills + 1):
            for lane in lanes:
                if lane.streams:
                    continue  # still trading: another shard was killed
                await channels[lane.shard].channel_ready()
                if lane.restarted:
                    await _live_check(stubs[lane.shard], lane.traders, report)
                lane.streams = [
                    asyncio.create_task(t.run_stream(stubs[lane.shard], stopping)) for t in lane.traders
                ]
            await _until_flowing(
                [t for lane in lanes for t in lane.traders], [s for lane in lanes for s in lane.streams]
            )
            if kill == settings.kills:
                await asyncio.sleep(settings.final_flow_s)
                stopping.set()
                await asyncio.gather(*(s for lane in lanes for s in lane.streams))
                break
            await asyncio.sleep(rng.uniform(*settings.kill_after_s))
            victim = lanes[kill % len(lanes)]  # either shard, in turn
            victim.process.kill()
            report.kills += 1
            await asyncio.wait_for(asyncio.gather(*victim.streams), timeout=30)
            victim.streams = []
            report.absorb(victim.verifier.check(scratch / f"shard{victim.shard}"))
            victim.process.spawn()
            await victim.process.wait_ready(settings.startup_timeout_s)
            victim.restarted = True
            report.recovery_ms.append((time.monotonic() - victim.process.spawned_at) * 1000)
            service_figure = _SERVICE_RECOVERED.search(victim.process.log_tail(200))
            if service_figure:
                report.service_recovery_ms.append(float(service_figure.group(1)))
        for lane in reversed(lanes):
            code = lane.process.stop()
            if code != 0:
                report.problems.append(f"shard {lane.shard} exited with {code} on SIGTERM")
        for lane in lanes:
            report.absorb(lane.verifier.check(scratch / f"shard{lane.shard}"))
        await _check_ledger(processes[0], [lane.verifier for lane in lanes], report)
    finally:
        for channel in channels:
            await channel.close(None)
        for process in processes:
            process.kill()
    report.acked = sum(1 for s in record.inputs.values() if s.acked)
    report.acked_by_shard = dict(Counter(s.shard for s in record.inputs.values() if s.acked))
    report.in_doubt = sum(1 for s in record.inputs.values() if s.in_doubt)
    report.duplicate_fills += sum(times - 1 for times in record.fill_reports.values() if times > 1)
    for problem in report.problems[:20]:
        log.error("crash harness: %s", problem)
    return report


async def _until_flowing(traders: Sequence[Trader], streams: Sequence[asyncio.Task[None]]) -> None:
    """Wait until every trader has had an ack on its new stream (the flow really resumed)."""
    deadline = time.monotonic() + 30
    while any(t.acks_this_stream == 0 for t in traders):
        failed = [s for s in streams if s.done()]
        if failed:
            await failed[0]
            raise RuntimeError("a trader's stream ended before its first ack")
        if time.monotonic() > deadline:
            raise TimeoutError("the order flow did not resume within 30 s of the restart")
        await asyncio.sleep(0.01)


def run(
    repeats: int = 1, kills: int = 10, *, shards: int = 2, settings: CrashSettings | None = None
) -> dict[str, float | int | bool]:
    """``repeats`` harness runs of ``kills`` kills each (fresh state each) on ``shards`` shards (two,
    as ``hftgate up`` runs them, unless ``settings`` say); counts are summed over runs."""
    base = settings or CrashSettings(shards=shards)
    total = CrashReport()
    bounded = True  # per run: the last kill's recovery at most twice its first's
    for repeat in range(max(1, repeats)):
        one_settings = dataclasses.replace(base, kills=kills, seed=base.seed + repeat)
        with tempfile.TemporaryDirectory(prefix="hftgate-bench-crash-") as tmp:
            report = asyncio.run(run_crash_harness(one_settings, Path(tmp)))
        bounded = bounded and bool(report.recovery_trend().get("recovery_bounded", True))
        total.kills += report.kills
        total.acked += report.acked
        total.in_doubt += report.in_doubt
        total.in_doubt_adopted += report.in_doubt_adopted
        total.journaled_inputs += report.journaled_inputs
        total.lost_acked += report.lost_acked
        total.duplicate_fills += report.duplicate_fills
        total.books_match = total.books_match and report.books_match
        total.ledger_matches = total.ledger_matches and report.ledger_matches
        total.ledger_fills += report.ledger_fills
        total.recovery_ms.extend(report.recovery_ms)
        total.service_recovery_ms.extend(report.service_recovery_ms)
    out = total.summary()
    out["repeats"] = max(1, repeats)
    out["shards"] = base.shards
    out["recovery_bounded"] = bounded
    out["bars_hold"] = bool(
        out["kills"] >= kills * max(1, repeats)
        and out["lost_acked"] == 0
        and out["duplicate_fills"] == 0
        and out["books_match"]
        and out["ledger_matches"]
        and bounded
    )
    return out
