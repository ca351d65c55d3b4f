"""The order path: risk, one engine call and one journal record per batch, acks after durability.

:class:`ExecutionCore` is the execution service without gRPC. Every input reaches it as a batch of
:class:`Inputs` (one SubmitOrders call, one OrderStream message, one cancel...) from one account,
or, for SubmitOrder, as one :class:`NewOrderEntry` (:meth:`ExecutionCore.submit_order`: the same
steps and journal record with plain values instead of arrays), and goes through, synchronously on
the event loop:

1. **risk** -- :class:`~services.execution.risk.NewOrderRisk` for new orders (one C pass, the same
   for a batch of one),
   ownership and existence for cancels and replaces; refused inputs get their reason and are
   not journaled;
2. **match** -- the accepted inputs become one :class:`~services.execution.records.Batch`, which is
   appended to the journal (the writer thread starts making it durable) and then applied to
   :class:`~services.execution.state.ExecutionState` (one engine call) while the fsync runs;
3. **journal durable** -- the call awaits the record's future; group commit shares the fsync (a
   lone SubmitOrder may busy-poll for it instead: :attr:`ExecutionCore.ack_poll_ns`);
4. **ack** -- the caller (server.py) turns the :class:`Acks` into protos and sends them.

Reports go to StreamExecutions/OrderStream subscribers, and fills to the ledger (and to the market
data service), only after the record is durable, so nothing leaves the service that a crash
could take back. The ledger write happens after the acks, off the order path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hftgate.matching.types import COMMAND_DTYPE, Action, StpMode
from hftgate.matching.types import OrderType as EngineType
from hftgate.native.client_ids import joined
from hftgate.native.clock import now_ns
from hftgate.native.histogram import LatencyHistogram
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.fencing import Refusal, ShardFence, SymbolMoving
from services.execution.journal import Journal
from services.execution.ledger import Fill, Ledger, LedgerBacklogFull
from services.execution.records import (
    META_DTYPE,
    RECORD_ACCOUNT,
    RECORD_BATCH,
    RECORD_SYMBOL,
    Batch,
    decode_batch,
    encode_account,
    encode_batch,
    encode_one_batch,
    encode_symbol,
)
from services.execution.reference import NOT_HELD, AccountSpec, InstrumentSpec, ReferenceData
from services.execution.risk import (
    NEW_ORDER_DTYPE,
    AccountExposure,
    NewOrderRisk,
    TokenBucket,
    instrument_limits,
    position_limit,
)
from services.execution.state import OPEN_STATUSES, REJECTED, BatchOutcome, ExecutionState

log = logging.getLogger(__name__)

_ACTION_NEW = int(Action.NEW)  # an int, not the IntEnum, for numpy comparisons (see state.py)

KIND_NEW, KIND_CANCEL, KIND_REPLACE = api.ORDER_ACTION_NEW, api.ORDER_ACTION_CANCEL, api.ORDER_ACTION_REPLACE

# execution.proto SelfTradePrevention -> engine mode (UNSPECIFIED is the service default, CANCEL_RESTING).
_STP_TO_ENGINE = np.array(
    [StpMode.CANCEL_RESTING, StpMode.CANCEL_RESTING, StpMode.CANCEL_TAKER, StpMode.CANCEL_BOTH,
     StpMode.DECREMENT, StpMode.NONE], np.uint8,
)  # fmt: skip
_DEFAULT_TIF = np.array([0, api.TIME_IN_FORCE_GTC, api.TIME_IN_FORCE_IOC, api.TIME_IN_FORCE_GTC,
                         api.TIME_IN_FORCE_IOC], np.int64)  # fmt: skip


_STP_TO_ENGINE_LIST: list[int] = _STP_TO_ENGINE.tolist()
_DEFAULT_TIF_BY_TYPE: list[int] = _DEFAULT_TIF.tolist()
_NO_POSITIONS = np.zeros(0, np.int64)
_FIRST_POSITION = np.zeros(1, np.int64)
_NO_POSITIONS.setflags(write=False)
_FIRST_POSITION.setflags(write=False)


class RateLimited(Exception):
    """The account had no order-rate tokens left when the call arrived."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"order rate limit reached; retry in {retry_after_s:.3f} s")
        self.retry_after_s = retry_after_s


class NotOwner(Exception):
    """A known account named another account's order."""


class OrderNotFound(Exception):
    """The order never existed for this account."""


class ServiceUnavailable(Exception):
    """The service is recovering or stopping, or the journal cannot take more."""


class InputRefused(Exception):
    """The shard map, read again right before the journal append, says this shard may not take the
    call's input (fencing.py): ``refusal`` says why (another owner, or the symbol is moving).
    Nothing of the call was journaled."""

    def __init__(self, refusal: Refusal, shard_id: int) -> None:
        super().__init__(refusal.message(shard_id))
        self.refusal = refusal


@dataclass(slots=True)
class Inputs:
    """One batch of inputs from one account, as decoded from the wire (columns, input i at row i)."""

    kind: np.ndarray  # ORDER_ACTION_* per input
    symbols: list[str]  # NEW: symbol; others: ""
    client_ids: list[str]  # NEW: its client order id; CANCEL/REPLACE: the named client order id
    orders: np.ndarray  # NEW_ORDER_DTYPE; CANCEL/REPLACE use price, quantity, stop_price for the new values
    target_ids: np.ndarray  # int64 CANCEL/REPLACE: the named exchange order id (0 = by client id)
    prioritize: bool = False
    received_ns: int = 0
    arrival_ns: int = 0  # native clock at arrival (latency accounting)
    # Pre-set reasons for inputs refused by the decoder (e.g. an empty OrderInput).
    preset_reasons: np.ndarray | None = None
    cancel_reason: int = 0
    #: The shard map epoch the servicer checked the new orders' symbols at (-1: not checked);
    #: the core checks them again only when the map moved since (ExecutionCore._refence).
    fenced_epoch: int = -1

    def __len__(self) -> int:
        return len(self.kind)


@dataclass(slots=True)
class Acks:
    """One ack per input, in input order."""

    kind: np.ndarray
    client_ids: list[str]
    order_ids: np.ndarray
    sequences: np.ndarray
    status: np.ndarray
    reason: np.ndarray
    price: np.ndarray
    quantity: np.ndarray
    leaves: np.ndarray
    cum: np.ndarray
    priority_kept: np.ndarray
    received_ns: int
    durable: bool = False
    reports: np.ndarray | None = None  # REPORT_DTYPE of this batch (all accounts)
    arrival_ns: int = 0
    accepted: int = 0
    durable_at_ns: int = 0


#: A batch in flight on a stream: its journal future and the acks its sink gets once it is durable
#: (its own first, then those of the same sink's fully refused batches that arrived after it).
_InFlight = tuple[asyncio.Future[int], list[Acks]]


@dataclass(slots=True)
class NewOrderEntry:
    """The one new order of a SubmitOrder call, read off the wire into plain values (no arrays)."""

    symbol: str
    client_id: str
    fields: tuple[int, ...]  # in NEW_ORDER_DTYPE field order
    received_ns: int
    arrival_ns: int  # native clock at arrival (latency accounting)


@dataclass(slots=True)
class SingleAck:
    """:class:`Acks` of one new order (SubmitOrder), as plain values."""

    client_id: str
    received_ns: int
    arrival_ns: int
    order_id: int = 0
    sequence: int = 0  # 0 when refused
    status: int = 0
    reason: int = 0
    price: int = 0
    quantity: int = 0
    leaves: int = 0
    cum: int = 0
    durable: bool = False
    durable_at_ns: int = 0


@dataclass(slots=True)
class StageHistograms:
    """Latency per order-path stage (native clock, ns), one sample per accepted input."""

    risk: LatencyHistogram = field(default_factory=LatencyHistogram)
    match: LatencyHistogram = field(default_factory=LatencyHistogram)
    journal: LatencyHistogram = field(default_factory=LatencyHistogram)
    ack: LatencyHistogram = field(default_factory=LatencyHistogram)
    total: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass(slots=True)
class Counters:
    orders_received: int = 0
    orders_accepted: int = 0
    inputs_rejected: int = 0
    cancels_accepted: int = 0
    replaces_accepted: int = 0
    rejects_by_reason: dict[int, int] = field(default_factory=dict)


class ReaderTooSlow(Exception):
    """A stream fell so far behind the published reports that the ones it has not read yet would
    soon leave the retained window: it is cut off (execution.proto: RESOURCE_EXHAUSTED)."""

    def __init__(self, behind: int, resume_after: int) -> None:
        super().__init__(
            f"reader too slow: {behind} reports behind; resume with after_sequence={resume_after} "
            "(or the last sequence you received, if later)"
        )
        self.behind = behind
        self.resume_after = resume_after


class ReportSubscriber:
    """A StreamExecutions/OrderStream listener: a cursor over the retained reports, never a copy.

    The reports stay in the state's retained ring (bounded by ``retained_reports``); the stream
    reads them a page at a time (:meth:`ExecutionCore.reports_page`) as its client takes them, so
    a reader that does not read holds nothing but its cursor. ``wake`` is set when reports of the
    account are published (or, for an OrderStream, acks arrive in ``acks``: at most the stream's
    window of unsent inputs, see server.py). A reader more than the core's ``max_behind_reports``
    behind is cut off: ``too_slow`` is set and ``on_too_slow`` called (the server cancels the
    stream and answers RESOURCE_EXHAUSTED), before anything it has not read can be overwritten.
    """

    __slots__ = ("account_id", "acks", "cursor", "idle", "on_too_slow", "symbol_id", "too_slow", "wake")

    def __init__(self, account_id: int, symbol_id: int | None, cursor: int) -> None:
        self.account_id = account_id
        self.symbol_id = symbol_id
        #: Report sequence up to which this stream has read (taken or skipped) the ring.
        self.cursor = cursor
        self.wake = asyncio.Event()
        #: (published_report_seq when it came, acks or the journal's error), oldest first.
        self.acks: deque[tuple[int, Acks | BaseException]] = deque()
        #: True while the stream waits with nothing of its own published after ``cursor``.
        self.idle = False
        self.too_slow: ReaderTooSlow | None = None
        self.on_too_slow: Callable[[ReaderTooSlow], object] | None = None

    def notify(self) -> None:
        self.idle = False
        self.wake.set()

    def put_acks(self, published: int, acks: Acks | BaseException) -> None:
        self.acks.append((published, acks))
        self.notify()


#: Ring rows looked at per step of a page read (one numpy pass over their account ids).
_SCAN_ROWS = 4096


class ExecutionCore:
    """State, journal, ledger and reference data behind the execution API (one event loop owns it)."""

    def __init__(
        self,
        state: ExecutionState,
        journal: Journal,
        ledger: Ledger | None,
        reference: ReferenceData,
        *,
        max_batch_orders: int,
        on_batch_applied: Callable[[], None] | None = None,
        trade_sink: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        self.state = state
        self.journal = journal
        self.ledger = ledger
        self.reference = reference
        self.max_batch_orders = max_batch_orders
        self.stages = StageHistograms()
        self.counters = Counters()
        self.started_ns = time.time_ns()
        self._buckets: dict[int, TokenBucket] = {}
        self.risk = NewOrderRisk()
        self._subscribers: dict[int, list[ReportSubscriber]] = {}
        #: See max_behind_reports (set by the server from its config).
        self.stream_max_behind_reports = 100_000
        self._next_lag_check = 0
        #: Streams cut off for reading too slowly since start.
        self.streams_cut_off = 0
        self._on_batch_applied = on_batch_applied
        #: Called off the order path with the fills of each durable batch (the market data feed).
        self.trade_sink = trade_sink
        #: This shard's id (hftgate/shardmap.py): the ledger's rows carry its public ids.
        self.shard_id = 0
        self.accepting = True
        self.ledger_backlog_drops = 0
        self._pending_fills: list[np.ndarray] = []
        # Per sink (one OrderStream each): its batches applied but not yet durable, oldest first,
        # each with the acks of that same sink's fully refused batches that arrived after it (they
        # must not overtake it on the stream). Keyed by sink so that an ack only ever goes out
        # through the stream that sent its input; a sink's entry goes once nothing of it is in flight.
        self._inflight: dict[Callable[[Acks | BaseException], None], list[_InFlight]] = {}
        #: Sequence of the last execution report handed to subscribers (all earlier ones are durable).
        self.published_report_seq = state.next_report_seq - 1
        self._ledger_task: asyncio.Task[None] | None = None
        # Acks say durable only when the journal fsyncs before acknowledging (not in the relaxed mode).
        self._acks_durable = journal.durability.value == "fsync"
        #: SubmitOrder busy-polls the journal this long for its fsync when it is the only order in
        #: flight (Journal.poll_durable); 0 = sleep until the writer wakes the loop. Set by __main__,
        #: only when the journal writer has a CPU of its own (see hftgate/placement.py).
        self.ack_poll_ns = 0
        self._orders_in_flight = 0
        #: Set when a journaled batch failed to apply (a bug): what failed. The service then takes
        #: no more inputs; ``on_apply_failed`` (set by the server) hears it once, to turn health
        #: NOT_SERVING. A restart recovers, quarantining that record (recovery.py).
        self.apply_failed: str | None = None
        self.on_apply_failed: Callable[[str], None] | None = None
        #: The shard map as this shard follows it (set by the server). The servicer checks it when
        #: a call arrives, but the order path awaits (instrument look-ups) before it journals, and
        #: the map may move meanwhile: :meth:`_refence` checks again after the last await, with no
        #: await between that check and the journal append (issue #14).
        self.fence: ShardFence | None = None
        #: Orders taken over from another shard (services/execution/handover.py): local id -> the
        #: original public id, used wherever an id leaves (acks, reports, ledger rows).
        self.original_ids: dict[int, int] = {}

    # --- accounts and instruments --------------------------------------------------------------

    async def authenticate(self, api_key: str) -> AccountSpec | None:
        return await self.reference.account_for_key(api_key)

    def bucket(self, account: AccountSpec) -> TokenBucket:
        bucket = self._buckets.get(account.account_id)
        if (
            bucket is None
            or bucket.rate_per_s != account.rate_limit_orders_per_s
            or bucket.burst != max(1, account.rate_limit_burst)
        ):
            bucket = self._buckets[account.account_id] = TokenBucket(
                account.rate_limit_orders_per_s, account.rate_limit_burst
            )
            # A new bucket is full whenever it is first read: its clock must not start after the
            # arrival it is compared with (an arrival read before the bucket was made would count
            # as negative time and take tokens away: "retry in 0.000 s" with a burst of 1).
            bucket.updated_ns = 0
        return bucket

    def check_rate(self, account: AccountSpec, now: int) -> None:
        """Raise RateLimited when the account has no token left at arrival."""
        bucket = self.bucket(account)
        # ``now`` was read when the call arrived, before any await; another call may have
        # refilled the bucket since. Time never runs backwards for the bucket.
        if bucket.refill(max(now, bucket.updated_ns)) < 1.0:
            raise RateLimited(bucket.seconds_until_one())

    def _ensure_account(self, account: AccountSpec) -> None:
        if account.account_id not in self.state.account_names:
            self.journal.append(encode_account(account.account_id, account.name), RECORD_ACCOUNT)
            self.state.add_account(account.account_id, account.name)

    def _open_books(self, provisional: list[str], symbol_ids: np.ndarray, reason: np.ndarray) -> None:
        """Open (and journal) a book for each provisional symbol that has an accepted order."""
        state = self.state
        base = len(state.symbol_names)
        used = set(symbol_ids[reason == 0].tolist())
        for offset, symbol in enumerate(provisional):
            temporary = base + offset
            if temporary not in used:
                continue
            symbol_id = len(state.symbol_names)
            self.journal.append(encode_symbol(symbol_id, symbol), RECORD_SYMBOL)
            state.add_symbol(symbol_id, symbol)
            symbol_ids[symbol_ids == temporary] = symbol_id

    async def instruments_for(self, symbols: list[str]) -> tuple[list[str], list[InstrumentSpec | None]]:
        """The distinct symbols and their instruments (None for an unknown or empty symbol)."""
        unique = list(dict.fromkeys(symbols))
        return unique, [await self.reference.instrument(symbol) if symbol else None for symbol in unique]

    async def symbol_id_of(self, symbol: str) -> int | None:
        """The engine symbol id of a known instrument (None when the symbol is unknown)."""
        if await self.reference.instrument(symbol) is None:
            return None
        return self.state.symbol_ids.get(symbol, -1)

    # --- the order path --------------------------------------------------------------------------

    async def submit(
        self, account: AccountSpec, inputs: Inputs, sink: Callable[[Acks | BaseException], None] | None = None
    ) -> Acks:
        """Run one batch of inputs; returns once the accepted ones are durable (or refused).

        With ``sink`` it returns as soon as the batch is applied, and ``sink`` gets the acks once
        they are durable (before any report of the batch is published), or the journal's error.
        Sinks are called in submission order, so a stream can pipeline its messages.
        """
        if not self.accepting:
            raise ServiceUnavailable("the service is stopping")
        if account.kill_switch and inputs.cancel_reason != common.REJECT_REASON_KILL_SWITCH:
            await self._cancel_for_kill_switch(account)
        # (Cancels and replaces carry "", whose instrument is None: they never look it up.)
        unique, specs = await self.instruments_for(inputs.symbols) if inputs.symbols else ([], [])
        payload: bytes | None
        single_new = len(inputs) == 1 and inputs.preset_reasons is None and inputs.kind[0] == KIND_NEW
        if single_new and specs:
            self._refence(account, inputs, streaming=sink is not None)  # no await from here to the append
        if single_new and specs and inputs.preset_reasons is None:
            acks, payload = self._prepare_one_new(account, inputs, specs[0])
            batch, positions = None, _FIRST_POSITION
        else:
            replace_specs = await self._replace_instruments(account, inputs)
            self._refence(account, inputs, streaming=sink is not None)  # no await from here to the append
            acks, batch, positions = self._prepare(account, inputs, unique, specs, replace_specs)
            payload = None if batch is None else encode_batch(batch)
        if payload is None:
            if sink is not None:
                pending = self._inflight.get(sink)
                if pending:
                    pending[-1][1].append(acks)  # keep this stream's order behind its batch in flight
                else:
                    sink(acks)
            return acks
        t_risk = now_ns()
        future, outcome = self._journal_and_apply(payload, batch)
        t_match = now_ns()
        self._merge(acks, outcome, positions)
        accepted = len(outcome.status)
        stages = self.stages
        stages.risk.record_n(max(0, t_risk - inputs.arrival_ns), accepted)
        stages.match.record_n(t_match - t_risk, accepted)
        acks.accepted = accepted
        if self._on_batch_applied is not None:
            self._on_batch_applied()
        if sink is None:
            try:
                await future
            except Exception as exc:
                raise ServiceUnavailable(f"journal failed: {exc}") from exc
            self._durable(acks, outcome, t_match)
            return acks
        entry: _InFlight = (future, [acks])
        pending = self._inflight.get(sink)
        if pending is None:
            pending = self._inflight[sink] = []
        pending.append(entry)
        future.add_done_callback(lambda done: self._durable_to_sink(done, entry, outcome, t_match, sink))
        return acks

    async def submit_order(self, account: AccountSpec, entry: NewOrderEntry) -> SingleAck:
        """:meth:`submit` for the one new order of a SubmitOrder call; returns once it is durable.

        The same rules, journal record and state change as a batch of one, with plain values
        wherever an array would hold one element: for a single order numpy's per-call set-up costs
        more than the work, and this is the path whose latency a client waits on.
        """
        self._orders_in_flight += 1
        try:
            return await self._submit_order(account, entry)
        finally:
            self._orders_in_flight -= 1

    async def _submit_order(self, account: AccountSpec, entry: NewOrderEntry) -> SingleAck:
        if not self.accepting:
            raise ServiceUnavailable("the service is stopping")
        if account.kill_switch:
            await self._cancel_for_kill_switch(account)
        symbol = entry.symbol
        held = self.reference.instrument_held(symbol) if symbol else None
        spec = await self.reference.instrument(symbol) if held is NOT_HELD else held
        fence = self.fence
        if fence is not None and symbol:  # again after the await: no await from here to the append
            refusal = fence.refusal(symbol)
            if refusal is not None:
                raise InputRefused(refusal, self.shard_id)
        ack = SingleAck(entry.client_id, entry.received_ns, entry.arrival_ns)
        reason, payload = self._admit_one_new(
            account, symbol, entry.client_id, entry.fields, spec, entry.received_ns
        )
        if payload is None:
            ack.status, ack.reason = REJECTED, reason
            return ack
        t_risk = now_ns()
        future, outcome = self._journal_and_apply(payload, None)
        t_match = now_ns()
        (ack.order_id, ack.sequence, ack.status, ack.reason, ack.price, ack.quantity, ack.leaves, ack.cum,
         _) = self._outcome_of_one(outcome, KIND_NEW)  # fmt: skip
        stages = self.stages
        stages.risk.record(max(0, t_risk - entry.arrival_ns))
        stages.match.record(t_match - t_risk)
        if self._on_batch_applied is not None:
            self._on_batch_applied()
        if self.ack_poll_ns and self._orders_in_flight == 1 and not future.done():
            self.journal.poll_durable(self.journal.next_seq - 1, self.ack_poll_ns)
        try:
            await future
        except Exception as exc:
            raise ServiceUnavailable(f"journal failed: {exc}") from exc
        ack.durable_at_ns = t_durable = now_ns()
        stages.journal.record(t_durable - t_match)
        ack.durable = self._acks_durable
        self._publish(outcome)
        return ack

    def record_single_ack_sent(self, ack: SingleAck) -> None:
        """:meth:`record_ack_sent` for a :class:`SingleAck`."""
        if ack.sequence:
            t_ack = now_ns()
            self.stages.ack.record(t_ack - ack.durable_at_ns)
            self.stages.total.record(t_ack - ack.arrival_ns)

    def _journal_and_apply(
        self, payload: bytes, batch: Batch | None
    ) -> tuple[asyncio.Future[int], BatchOutcome]:
        """Journal one batch record, then run it through the state; the future resolves once it is durable.

        Journaled first, then matched: the writer thread's write and fdatasync run while the engine
        and the bookkeeping do (they need no disk), so the ack waits for the longer of the two, not
        their sum. Same loop step, so journal order is still engine order. ``batch`` is the record's
        decoded form when the caller has it.
        """
        if self.apply_failed is not None:
            raise ServiceUnavailable("the service hit an internal error and must be restarted")
        try:
            self.journal.check_writable()
        except Exception as exc:
            raise ServiceUnavailable(f"journal cannot take the input: {exc}") from exc
        future = self.journal.append(payload, RECORD_BATCH)
        try:
            outcome = self.state.apply_batch(decode_batch(payload) if batch is None else batch)
        except Exception as exc:
            # apply_batch refuses a batch that does not fit before changing anything and never
            # raises for a batch's values (state.py); getting here is a bug, part-way through the
            # state change. Serving on would diverge from what a recovery rebuilds: stop taking
            # inputs and report it (on_apply_failed turns health NOT_SERVING). The restart's
            # recovery quarantines this record (recovery.py), so it cannot crash-loop.
            self.accepting = False
            self.apply_failed = f"journal record {self.journal.next_seq - 1} failed to apply: {exc!r}"
            log.critical("%s; refusing inputs until restart", self.apply_failed, exc_info=True)
            if self.on_apply_failed is not None:
                with contextlib.suppress(Exception):
                    self.on_apply_failed(self.apply_failed)
            raise ServiceUnavailable("the service hit an internal error and must be restarted") from exc
        if self._subscribers and self.state.next_report_seq > self._next_lag_check:
            self._check_lag()  # the ring moves on apply, before the reports are published
        return future, outcome

    def _durable(self, acks: Acks, outcome: BatchOutcome, t_match: int) -> None:
        t_durable = now_ns()
        self.stages.journal.record_n(t_durable - t_match, acks.accepted)
        acks.durable = self._acks_durable
        acks.durable_at_ns = t_durable
        self._publish(outcome)

    def _durable_to_sink(
        self,
        done: asyncio.Future[int],
        entry: tuple[asyncio.Future[int], list[Acks]],
        outcome: BatchOutcome,
        t_match: int,
        sink: Callable[[Acks | BaseException], None],
    ) -> None:
        pending = self._inflight.get(sink)
        if pending is not None:
            # Journal futures resolve in append order, so this is the sink's oldest entry.
            with contextlib.suppress(ValueError):
                pending.remove(entry)
            if not pending:
                del self._inflight[sink]
        error = done.exception()
        if error is not None:
            sink(error)
            return
        acks = entry[1][0]
        acks.durable = self._acks_durable
        acks.durable_at_ns = now_ns()
        self.stages.journal.record_n(acks.durable_at_ns - t_match, acks.accepted)
        for follower in entry[1]:
            sink(follower)
        self._publish(outcome)

    def _refence(self, account: AccountSpec, inputs: Inputs, *, streaming: bool) -> None:
        """Check the call's inputs against the shard map as it is now (see :attr:`fence`).

        New orders: the symbol must be this shard's and not moving. Cancels and replaces: the
        named order's symbol must not be moving or handed over. A unary call is refused whole
        (:class:`InputRefused`); a stream's refused inputs get REJECT_REASON_NOT_SHARD_OWNER, or
        REJECT_REASON_UNAVAILABLE for a moving symbol, and the rest go on."""
        fence = self.fence
        if fence is None:
            return
        refused: list[tuple[int, Refusal]] = []
        kinds = inputs.kind.tolist()
        if inputs.fenced_epoch != fence.epoch:
            for position, symbol in enumerate(inputs.symbols):
                if symbol and kinds[position] == KIND_NEW:
                    refusal = fence.refusal(symbol)
                    if refusal is not None:
                        refused.append((position, refusal))
        if fence.map.moving or fence.handed_over:
            state = self.state
            names = state.symbol_names
            table = state.table
            for position, kind in enumerate(kinds):
                if kind == KIND_NEW:
                    continue
                order_id = int(inputs.target_ids[position])
                if order_id <= 0 and inputs.client_ids[position]:
                    order_id = state.order_id_for(account.account_id, inputs.client_ids[position])
                slot = state.slot_of(order_id) if order_id > 0 else -1
                if slot < 0:
                    continue
                symbol_id = int(table["symbol_id"][slot])
                if symbol_id < len(names) and int(table["status"][slot]) in OPEN_STATUSES:
                    refusal = fence.resting_refusal(names[symbol_id])
                    if refusal is not None:
                        refused.append((position, refusal))
        if not refused:
            return
        if not streaming:
            raise InputRefused(refused[0][1], self.shard_id)
        preset = inputs.preset_reasons
        if preset is None:
            preset = inputs.preset_reasons = np.zeros(len(inputs.kind), np.int64)
        for position, refusal in refused:
            if not preset[position]:
                preset[position] = (
                    common.REJECT_REASON_UNAVAILABLE
                    if isinstance(refusal, SymbolMoving)
                    else common.REJECT_REASON_NOT_SHARD_OWNER
                )

    def without_handed_over(self, order_ids: np.ndarray) -> np.ndarray:
        """``order_ids`` (local) less the orders of symbols this shard handed over: those live on
        their new owner now (services/execution/handover.py)."""
        fence = self.fence
        if fence is None or not fence.handed_over or not len(order_ids):
            return order_ids
        state = self.state
        handed = [state.symbol_ids[s] for s in fence.handed_over if s in state.symbol_ids]
        if not handed:
            return order_ids
        slots = state.slots_of(order_ids)
        keep = (slots < 0) | ~np.isin(state.table["symbol_id"][np.maximum(slots, 0)], handed)
        return order_ids[keep]

    async def _cancel_for_kill_switch(self, account: AccountSpec) -> None:
        """The first call after an account's kill switch went on cancels its working orders."""
        order_ids = self.without_handed_over(self.state.open_order_ids(account.account_id, None, 0))
        if not len(order_ids):
            return
        count = len(order_ids)
        cancels = cancel_inputs(order_ids, time.time_ns(), now_ns(), common.REJECT_REASON_KILL_SWITCH)
        await self.submit(account, cancels)
        log.warning("kill switch of account %s: canceled %d working order(s)", account.name, count)

    def record_ack_sent(self, acks: Acks) -> None:
        """Latency accounting once the server has built the response (the ack handed to gRPC)."""
        if acks.accepted:
            t_ack = now_ns()
            self.stages.ack.record_n(t_ack - acks.durable_at_ns, acks.accepted)
            self.stages.total.record_n(t_ack - acks.arrival_ns, acks.accepted)

    async def _replace_instruments(
        self, account: AccountSpec, inputs: Inputs
    ) -> dict[int, InstrumentSpec | None]:
        """The instruments of the orders the batch's replaces name, by engine symbol id (the replace
        checks need their limits; awaited here so that the checks themselves stay synchronous)."""
        positions = np.nonzero(inputs.kind == KIND_REPLACE)[0].tolist()
        if not positions:
            return {}
        state = self.state
        symbol_ids: set[int] = set()
        for position in positions:
            order_id = int(inputs.target_ids[position]) or state.order_id_for(
                account.account_id, inputs.client_ids[position]
            )
            slot = state.slot_of(order_id) if order_id > 0 else -1
            if slot >= 0:
                symbol_ids.add(int(state.table["symbol_id"][slot]))
        names = state.symbol_names
        return {
            symbol_id: await self.reference.instrument(names[symbol_id])
            for symbol_id in symbol_ids
            if symbol_id < len(names)
        }

    def _prepare(
        self,
        account: AccountSpec,
        inputs: Inputs,
        symbols: list[str],
        specs: list[InstrumentSpec | None],
        replace_specs: dict[int, InstrumentSpec | None] | None = None,
    ) -> tuple[Acks, Batch | None, np.ndarray]:
        """Risk for every input; the accepted ones as a journal batch (None when nothing passed)."""
        state = self.state
        count = len(inputs)
        kind = inputs.kind
        reason = np.zeros(count, np.int64) if inputs.preset_reasons is None else inputs.preset_reasons.copy()
        targets = np.zeros(count, np.int64)
        client_ids = list(inputs.client_ids)
        orders = inputs.orders
        now = now_ns()
        bucket = self.bucket(account)
        bucket.refill(now)

        new_mask = kind == KIND_NEW
        new_positions = np.nonzero(new_mask & (reason == 0))[0]
        symbol_ids = np.full(count, -1, np.int64)
        joined_ids: tuple[bytes, np.ndarray] | None = None
        if len(new_positions):
            self.counters.orders_received += int(new_mask.sum())
            # Instruments without a book yet get provisional ids; a book opens (and is journaled) only
            # for those that end up with an accepted order, so refused orders change nothing.
            ids_by_symbol: dict[str, int] = {}
            provisional: list[str] = []
            for symbol, spec in zip(symbols, specs, strict=True):
                known = state.symbol_ids.get(symbol)
                if spec is None:
                    ids_by_symbol[symbol] = -1
                elif known is not None:
                    ids_by_symbol[symbol] = known
                elif len(state.symbol_names) + len(provisional) < state.engine_config.max_symbols:
                    ids_by_symbol[symbol] = len(state.symbol_names) + len(provisional)
                    provisional.append(symbol)
                else:
                    log.error("no engine book left for %s (max_symbols reached)", symbol)
                    ids_by_symbol[symbol] = -1
            every = len(new_positions) == count  # (the usual batch: new orders only, none preset)
            position_symbols = (
                inputs.symbols if every else [inputs.symbols[p] for p in new_positions.tolist()]
            )
            new_count = len(position_symbols)
            row_of = {symbol: row for row, symbol in enumerate(symbols)}
            if len(row_of) == 1:  # one symbol: no look-up per order
                instrument_rows = np.zeros(new_count, np.int64)
                symbol_ids[new_positions] = ids_by_symbol[symbols[0]]
            else:
                instrument_rows = np.fromiter(map(row_of.__getitem__, position_symbols), np.int64, new_count)
                symbol_ids[new_positions] = np.fromiter(
                    map(ids_by_symbol.__getitem__, position_symbols), np.int64, new_count
                )
            row = state.account_row(account.account_id)
            exposure = AccountExposure(
                state.position, state.open_buy, state.open_sell, int(state.open_orders[row]), row
            )
            new_ids = client_ids if every else [client_ids[p] for p in new_positions.tolist()]
            # (joined once: the id check takes them so, and so does the journal record when every
            # order passes)
            joined_ids = joined(new_ids)
            reason[new_positions] = self.risk.check_new_orders(
                orders if every else orders[new_positions],
                new_ids,
                instrument_rows,
                specs,
                symbol_ids[new_positions],
                account,
                state.client_id_index,
                exposure,
                bucket,
                joined_ids,
            )
            if provisional:
                self._open_books(provisional, symbol_ids, reason)
        elif new_mask.any():
            self.counters.orders_received += int(new_mask.sum())
        self._check_existing(account, inputs, reason, targets, client_ids, replace_specs or {})

        accepted = np.nonzero(reason == 0)[0]
        acks = Acks(
            kind=kind,
            client_ids=client_ids,
            order_ids=targets.copy(),
            sequences=np.zeros(count, np.int64),
            status=np.where(reason != 0, REJECTED, 0).astype(np.uint8),
            reason=reason.astype(np.uint16),
            price=np.zeros(count, np.int64),
            quantity=np.zeros(count, np.int64),
            leaves=np.zeros(count, np.int64),
            cum=np.zeros(count, np.int64),
            priority_kept=np.zeros(count, bool),
            received_ns=inputs.received_ns,
            arrival_ns=inputs.arrival_ns,
        )
        rejected = count - len(accepted)
        if rejected:
            self.counters.inputs_rejected += rejected
            by_reason = self.counters.rejects_by_reason
            for value, times in zip(*np.unique(reason[reason != 0], return_counts=True), strict=True):
                by_reason[int(value)] = by_reason.get(int(value), 0) + int(times)
            self._fill_rejected_acks(acks, reason != 0)
        if not len(accepted):
            return acks, None, accepted
        self._ensure_account(account)
        batch = self._build_batch(account, inputs, accepted, symbol_ids, targets, client_ids, joined_ids)
        acks_order = accepted
        priorities = orders["priority"][accepted]
        # (Equal priorities, the usual case, keep the list order: nothing to reorder.)
        if inputs.prioritize and len(accepted) > 1 and (priorities != priorities[0]).any():
            order = _client_priority_order(priorities)
            acks_order = accepted[order]
            batch = Batch(
                batch.first_input_seq,
                batch.received_ns,
                batch.transact_ns,
                batch.commands[order],
                batch.meta[order],
                _reorder_ids(batch, order),
            )
            # order ids follow the engine order
            batch.commands["order_id"][batch.commands["action"] == _ACTION_NEW] = np.arange(
                state.order_count + 1,
                state.order_count + 1 + int((batch.commands["action"] == _ACTION_NEW).sum()),
            )
        return acks, batch, acks_order

    def _prepare_one_new(
        self, account: AccountSpec, inputs: Inputs, spec: InstrumentSpec | None
    ) -> tuple[Acks, bytes | None]:
        """:meth:`_prepare` for a batch of one new order (a one-order stream message): its acks and
        its journal record (None when refused)."""
        reason, payload = self._admit_one_new(
            account,
            inputs.symbols[0],
            inputs.client_ids[0],
            inputs.orders[0].item(),
            spec,
            inputs.received_ns,
        )
        acks = Acks(
            kind=inputs.kind,
            client_ids=[inputs.client_ids[0]],
            order_ids=np.zeros(1, np.int64),
            sequences=np.zeros(1, np.int64),
            status=np.array([REJECTED if reason else 0], np.uint8),
            reason=np.array([reason], np.uint16),
            price=np.zeros(1, np.int64),
            quantity=np.zeros(1, np.int64),
            leaves=np.zeros(1, np.int64),
            cum=np.zeros(1, np.int64),
            priority_kept=np.zeros(1, bool),
            received_ns=inputs.received_ns,
            arrival_ns=inputs.arrival_ns,
        )
        return acks, payload

    def _admit_one_new(
        self,
        account: AccountSpec,
        symbol: str,
        client_id: str,
        fields: tuple[int, ...],
        spec: InstrumentSpec | None,
        received_ns: int,
    ) -> tuple[int, bytes | None]:
        """:meth:`_prepare` for one new order in plain Python: (reject reason, journal record or None).

        numpy's per-call set-up costs more than the work for one order, so this reads the order's
        NEW_ORDER_DTYPE ``fields`` once and builds the engine command and journal meta as tuples. The
        record is byte for byte what :meth:`_prepare` builds for a batch of one (a test holds them
        together). An accepted order's book is opened (and journaled) here when it is the first.
        """
        state = self.state
        bucket = self.bucket(account)
        bucket.refill(now_ns())
        self.counters.orders_received += 1
        known = state.symbol_ids.get(symbol)
        provisional = False
        if spec is None:
            symbol_id = -1
        elif known is not None:
            symbol_id = known
        elif len(state.symbol_names) < state.engine_config.max_symbols:
            symbol_id = len(state.symbol_names)
            provisional = True
        else:
            log.error("no engine book left for %s (max_symbols reached)", symbol)
            symbol_id = -1
        row = state.account_row(account.account_id)
        exposure = AccountExposure(
            state.position, state.open_buy, state.open_sell, int(state.open_orders[row]), row
        )
        reason = self.risk.check_one_new_order(
            fields,
            client_id,
            spec,
            symbol_id,
            account,
            state.client_id_index,
            exposure,
            bucket,
        )
        if reason:
            self.counters.inputs_rejected += 1
            by_reason = self.counters.rejects_by_reason
            by_reason[reason] = by_reason.get(reason, 0) + 1
            return reason, None
        if provisional:
            self.journal.append(encode_symbol(symbol_id, symbol), RECORD_SYMBOL)
            state.add_symbol(symbol_id, symbol)
        self._ensure_account(account)
        side, otype, tif, price, stop, qty, display, post_only, stp, protection, priority = fields
        if tif == 0:
            tif = _DEFAULT_TIF_BY_TYPE[otype]
        is_market = otype in (api.ORDER_TYPE_MARKET, api.ORDER_TYPE_STOP_MARKET)
        bound = protection
        if is_market and bound == 0:
            spec_band = self._band_of(symbol_id)
            if spec_band is not None:
                reference, band = spec_band
                bound = reference + band if side == 1 else max(1, reference - band)
        engine_type = otype
        if bound > 0 and otype == api.ORDER_TYPE_MARKET:
            engine_type = EngineType.LIMIT
        elif bound > 0 and otype == api.ORDER_TYPE_STOP_MARKET:
            engine_type = EngineType.STOP_LIMIT
        command = (
            state.order_count + 1, account.account_id, bound if is_market else price, qty, stop, display,
            symbol_id, priority, _ACTION_NEW, side, engine_type, tif, 1 if post_only else 0,
            _STP_TO_ENGINE_LIST[stp], 0,
        )  # fmt: skip
        meta = (
            price, protection, 0, priority, otype, tif,
            stp or api.SELF_TRADE_PREVENTION_CANCEL_RESTING, 1 if post_only else 0, len(client_id),
            0, 0, 0,
        )  # fmt: skip
        return 0, encode_one_batch(
            state.next_input_seq, received_ns, time.time_ns(), command, meta, client_id.encode("ascii")
        )

    def _check_existing(
        self,
        account: AccountSpec,
        inputs: Inputs,
        reason: np.ndarray,
        targets: np.ndarray,
        client_ids: list[str],
        replace_specs: dict[int, InstrumentSpec | None],
    ) -> None:
        """Cancels and replaces: the named order must exist, be the account's and still be working;
        a replace must also pass the instrument's and the account's limits (:meth:`_check_replace`)."""
        positions = np.nonzero((inputs.kind != KIND_NEW) & (reason == 0))[0]
        if not len(positions):
            return
        state = self.state
        orders = state.table
        # New orders earlier in this same batch get the next ids, in order: a stream may cancel them.
        accepted_new = np.nonzero((inputs.kind == KIND_NEW) & (reason == 0))[0].tolist()
        provisional = {
            client_ids[p]: (state.order_count + 1 + rank, p) for rank, p in enumerate(accepted_new)
        }
        replace_used: dict[tuple[int, int], int] = {}
        for position in positions.tolist():
            order_id = int(inputs.target_ids[position])
            client_id = client_ids[position]
            earlier = provisional.get(client_id) if client_id else None
            if earlier is not None and earlier[1] < position and order_id in (0, earlier[0]):
                targets[position] = earlier[0]
                if inputs.kind[position] == KIND_REPLACE:
                    reason[position] = common.REJECT_REASON_INVALID_ORDER  # replace it in a later message
                continue
            if client_id:
                by_client = state.order_id_for(account.account_id, client_id)
                if order_id and by_client and by_client != order_id:
                    reason[position] = common.REJECT_REASON_INVALID_ORDER
                    continue
                order_id = order_id or by_client
            index = state.slot_of(order_id) if order_id > 0 else -1  # -1: never existed, or retired
            if index < 0:
                reason[position] = common.REJECT_REASON_UNKNOWN_ORDER
                continue
            if int(orders["account_id"][index]) != account.account_id:
                # Exactly a missing id's answer, showing nothing of the order: which ids are other
                # accounts' must not leak (ids are sequential).
                reason[position] = common.REJECT_REASON_UNKNOWN_ORDER
                continue
            targets[position] = order_id
            client_ids[position] = state.client_id_at(index)
            if orders["status"][index] not in OPEN_STATUSES:
                reason[position] = common.REJECT_REASON_UNKNOWN_ORDER
                continue
            if inputs.kind[position] == KIND_REPLACE:
                reason[position] = self._check_replace(
                    index, inputs.orders[position], account, replace_specs, replace_used
                )

    def _check_replace(
        self,
        index: int,
        values: np.void,
        account: AccountSpec,
        specs: dict[int, InstrumentSpec | None],
        used: dict[tuple[int, int], int],
    ) -> int:
        """A replace's RejectReason (0 = accepted): its fields, then, for what it raises (price,
        trigger, quantity), the instrument's grid, band, ceiling, maximum quantity and notional and
        the account's position limit, as for a new order (risk.py), so that a replace cannot bring
        the book a price or quantity outside the bounds apply_batch's arithmetic relies on.
        ``used`` carries the lots earlier replaces of the batch added per (symbol id, side)."""
        row = self.state.table[index]
        new_price, new_qty, new_stop = (
            int(values["price"]),
            int(values["quantity"]),
            int(values["stop_price"]),
        )
        if new_price == 0 and new_qty == 0 and new_stop == 0:
            return common.REJECT_REASON_INVALID_ORDER
        if new_price < 0:
            return common.REJECT_REASON_INVALID_PRICE
        if new_qty < 0 or (new_qty and new_qty <= int(row["cum"])):
            return common.REJECT_REASON_INVALID_QUANTITY
        if new_stop < 0:
            return common.REJECT_REASON_INVALID_PRICE
        if new_stop and row["status"] != api.ORDER_STATUS_PENDING_TRIGGER:
            return common.REJECT_REASON_INVALID_ORDER  # only a stop not yet triggered has a trigger to move
        if new_price and row["order_type"] not in (api.ORDER_TYPE_LIMIT, api.ORDER_TYPE_STOP_LIMIT):
            return common.REJECT_REASON_INVALID_PRICE
        symbol_id = int(row["symbol_id"])
        spec = specs.get(symbol_id)
        if spec is None and symbol_id < len(self.state.symbol_names):
            held = self.reference.instrument_held(self.state.symbol_names[symbol_id])
            spec = None if held is NOT_HELD else held  # type: ignore[assignment]
        if spec is None:
            return common.REJECT_REASON_UNKNOWN_SYMBOL
        lim = instrument_limits(spec)
        for new in (new_price, new_stop):
            if not new:
                continue
            if new % lim.price_step:
                return common.REJECT_REASON_OFF_TICK
            if (lim.band and abs(new - lim.reference) > lim.band) or new > lim.price_ceiling:
                return common.REJECT_REASON_PRICE_BAND
        total = new_qty or int(row["quantity"])
        if new_qty > int(row["quantity"]):
            if new_qty % lim.lot_step:
                return common.REJECT_REASON_OFF_LOT
            if new_qty > lim.max_lots:
                return common.REJECT_REASON_MAX_QUANTITY
        price = new_price or int(row["price"])
        if price > 0 and total > lim.max_notional // price:
            return common.REJECT_REASON_MAX_NOTIONAL
        added = (total - int(row["cum"])) - int(row["leaves"])
        if added > 0:
            state = self.state
            side = int(row["side"])
            account_row = state.account_row(account.account_id)
            position = int(state.position[account_row, symbol_id])
            if side == 1:
                start = position + int(state.open_buy[account_row, symbol_id])
            else:
                start = int(state.open_sell[account_row, symbol_id]) - position
            key = (symbol_id, side)
            if start + used.get(key, 0) + added > position_limit(account):
                return common.REJECT_REASON_POSITION_LIMIT
            used[key] = used.get(key, 0) + added
        return 0

    def _build_batch(
        self,
        account: AccountSpec,
        inputs: Inputs,
        accepted: np.ndarray,
        symbol_ids: np.ndarray,
        targets: np.ndarray,
        client_ids: list[str],
        joined_ids: tuple[bytes, np.ndarray] | None = None,
    ) -> Batch:
        """The journal batch of the accepted inputs. ``joined_ids``: the new orders' client ids as
        :func:`~hftgate.native.client_ids.joined` gave them to the id check (reused when every
        input is new and accepted: then they are those ids, all ASCII)."""
        state = self.state
        count = len(accepted)
        commands = np.zeros(count, COMMAND_DTYPE)
        meta = np.zeros(count, META_DTYPE)
        kind = inputs.kind[accepted]
        orders = inputs.orders[accepted]
        commands["account_id"] = account.account_id
        meta["priority"] = orders["priority"]
        is_new = kind == KIND_NEW
        new_count = int(is_new.sum())
        if new_count:
            self._fill_new_commands(commands, meta, orders, is_new, symbol_ids[accepted], new_count)
            if new_count == len(client_ids) and joined_ids is not None:  # every input accepted and new
                ids = client_ids
                encoded, lengths = joined_ids
            else:
                ids = [client_ids[p] for p in accepted[is_new].tolist()]
                encoded, lengths = joined(ids)
            meta["client_id_length"][is_new] = lengths
        else:
            ids, encoded = [], b""
        others = ~is_new
        if others.any():
            target = targets[accepted][others]
            commands["order_id"][others] = target
            commands["action"][others] = np.where(kind[others] == KIND_CANCEL, Action.CANCEL, Action.REPLACE)
            meta["cancel_reason"][others] = inputs.cancel_reason
            for position in np.nonzero(others & (kind == KIND_REPLACE))[0].tolist():
                row = state.table[state.slot_of(int(commands["order_id"][position]))]
                values = orders[position]
                total = int(values["quantity"]) or int(row["quantity"])
                open_qty = total - int(row["cum"])
                new_stop = int(values["stop_price"])
                client_price = int(values["price"]) or int(row["price"])
                pending = row["status"] == api.ORDER_STATUS_PENDING_TRIGGER
                # A waiting stop's 0 keeps its engine price, which for a banded stop-market
                # order is the band's edge, not the client's price.
                commands["price"][position] = int(values["price"]) if pending else client_price
                commands["qty"][position] = open_qty
                commands["stop_price"][position] = new_stop
                meta["replace_quantity"][position] = total
                meta["client_price"][position] = client_price
                meta["priority_kept"][position] = (
                    client_price == int(row["price"])
                    and open_qty <= int(row["leaves"])
                    and new_stop in (0, int(row["stop_price"]))
                )
        return Batch(state.next_input_seq, inputs.received_ns, time.time_ns(), commands, meta, encoded, ids)

    def _fill_new_commands(
        self,
        commands: np.ndarray,
        meta: np.ndarray,
        orders: np.ndarray,
        is_new: np.ndarray,
        symbol_ids: np.ndarray,
        new_count: int,
    ) -> None:
        state = self.state
        # All new (SubmitOrder/SubmitOrders): a full slice instead of a mask saves a copy per field.
        sel: slice | np.ndarray = slice(None) if new_count == len(commands) else is_new
        new_orders = orders[sel]
        otype = new_orders["order_type"]
        tif = np.where(new_orders["tif"] == 0, _DEFAULT_TIF[otype], new_orders["tif"])
        side = new_orders["side"]
        protection = new_orders["protection"]
        is_market = (otype == api.ORDER_TYPE_MARKET) | (otype == api.ORDER_TYPE_STOP_MARKET)
        # A market order with a protective bound is the engine's IOC/FOK limit order at that bound.
        bound = protection.copy()
        symbols = symbol_ids[sel]
        for symbol_id in np.unique(symbols[is_market & (bound == 0)]).tolist():
            spec_band = self._band_of(symbol_id)
            if spec_band is not None:
                reference, band = spec_band
                banded = is_market & (bound == 0) & (symbols == symbol_id)
                bound[banded] = np.where(side[banded] == 1, reference + band, max(1, reference - band))
        engine_type = otype.copy()
        engine_type[(otype == api.ORDER_TYPE_MARKET) & (bound > 0)] = EngineType.LIMIT
        engine_type[(otype == api.ORDER_TYPE_STOP_MARKET) & (bound > 0)] = EngineType.STOP_LIMIT
        price = np.where(is_market, bound, new_orders["price"])
        first_id = state.order_count + 1
        commands["order_id"][sel] = np.arange(first_id, first_id + new_count)
        commands["action"][sel] = Action.NEW
        commands["symbol_id"][sel] = symbols
        commands["side"][sel] = side
        commands["order_type"][sel] = engine_type  # proto and engine numbering agree for the four types
        commands["tif"][sel] = tif
        commands["price"][sel] = price
        commands["qty"][sel] = new_orders["quantity"]
        commands["stop_price"][sel] = new_orders["stop_price"]
        commands["display_qty"][sel] = new_orders["display"]
        commands["flags"][sel] = (new_orders["post_only"] != 0).astype(np.uint8)
        stp = new_orders["stp"]
        commands["stp_mode"][sel] = _STP_TO_ENGINE[stp]
        commands["priority"][sel] = new_orders["priority"]
        meta["client_price"][sel] = new_orders["price"]
        meta["protection"][sel] = protection
        meta["client_type"][sel] = otype
        meta["client_tif"][sel] = tif
        meta["client_stp"][sel] = np.where(stp == 0, api.SELF_TRADE_PREVENTION_CANCEL_RESTING, stp)
        meta["post_only"][sel] = new_orders["post_only"] != 0

    def _band_of(self, symbol_id: int) -> tuple[int, int] | None:
        symbol = self.state.symbol_names[symbol_id]
        held = self.reference._decoded.get("instrument:" + symbol)
        if held is None:
            return None
        lim = instrument_limits(held[1])  # clamped: reference + band stays inside int64
        if lim.band <= 0 or lim.reference <= 0:
            return None
        return lim.reference, lim.band

    def _fill_rejected_acks(self, acks: Acks, rejected: np.ndarray) -> None:
        """Rejected cancels/replaces show their order unchanged."""
        orders = self.state.table
        for position in np.nonzero(rejected & (acks.kind != KIND_NEW) & (acks.order_ids > 0))[0].tolist():
            index = self.state.slot_of(int(acks.order_ids[position]))
            if index < 0:
                continue  # an order of this same batch (or retired)
            row = orders[index]
            acks.price[position] = row["price"]
            acks.quantity[position] = row["quantity"]
            acks.leaves[position] = row["leaves"]
            acks.cum[position] = row["cum"]

    def _merge(self, acks: Acks, outcome: BatchOutcome, positions: np.ndarray) -> None:
        if len(positions) == 1 and len(acks.kind) == 1:
            self._merge_one(acks, outcome)
            return
        acks.order_ids[positions] = outcome.order_ids
        refused = outcome.status == REJECTED
        acks.sequences[positions] = np.where(refused, 0, outcome.first_input_seq + np.arange(len(positions)))
        acks.status[positions] = outcome.status
        acks.reason[positions] = outcome.reason
        acks.price[positions] = outcome.price
        acks.quantity[positions] = outcome.quantity
        acks.leaves[positions] = outcome.leaves
        acks.cum[positions] = outcome.cum
        acks.priority_kept[positions] = outcome.priority_kept
        acks.reports = outcome.reports
        kinds = acks.kind[positions]
        accepted = ~refused
        self.counters.orders_accepted += int((accepted & (kinds == KIND_NEW)).sum())
        self.counters.cancels_accepted += int((accepted & (kinds == KIND_CANCEL)).sum())
        self.counters.replaces_accepted += int((accepted & (kinds == KIND_REPLACE)).sum())
        engine_refused = int(refused.sum())
        if engine_refused:
            self.counters.inputs_rejected += engine_refused
            by_reason = self.counters.rejects_by_reason
            for value in outcome.reason[refused].tolist():
                by_reason[value] = by_reason.get(value, 0) + 1

    def _merge_one(self, acks: Acks, outcome: BatchOutcome) -> None:
        """:meth:`_merge` for a batch of one input (element assignments instead of masks)."""
        (acks.order_ids[0], acks.sequences[0], acks.status[0], acks.reason[0], acks.price[0],
         acks.quantity[0], acks.leaves[0], acks.cum[0], acks.priority_kept[0]) = self._outcome_of_one(
            outcome, int(acks.kind[0]))  # fmt: skip
        acks.reports = outcome.reports

    def _outcome_of_one(
        self, outcome: BatchOutcome, kind: int
    ) -> tuple[int, int, int, int, int, int, int, int, bool]:
        """A batch of one's ack values (order id, sequence, status, reason, price, quantity, leaves,
        cum, priority kept), counted."""
        status = int(outcome.status[0])
        reason = int(outcome.reason[0])
        counters = self.counters
        if status == REJECTED:
            counters.inputs_rejected += 1
            counters.rejects_by_reason[reason] = counters.rejects_by_reason.get(reason, 0) + 1
        elif kind == KIND_NEW:
            counters.orders_accepted += 1
        elif kind == KIND_CANCEL:
            counters.cancels_accepted += 1
        elif kind == KIND_REPLACE:
            counters.replaces_accepted += 1
        return (
            int(outcome.order_ids[0]),
            0 if status == REJECTED else outcome.first_input_seq,
            status,
            reason,
            int(outcome.price[0]),
            int(outcome.quantity[0]),
            int(outcome.leaves[0]),
            int(outcome.cum[0]),
            bool(outcome.priority_kept[0]),
        )

    # --- after durability ------------------------------------------------------------------------

    def _publish(self, outcome: BatchOutcome) -> None:
        reports = outcome.reports
        if len(reports):
            self.published_report_seq = int(reports["sequence"][-1])
            if self._subscribers:
                subscribers = self._subscribers
                for account_id in set(reports["account_id"].tolist()):
                    for subscriber in subscribers.get(account_id, ()):
                        subscriber.notify()
                if self.state.next_report_seq > self._next_lag_check:
                    self._check_lag()
        if len(outcome.fills):
            self._pending_fills.append(outcome.fills)
            if self._ledger_task is None or self._ledger_task.done():
                self._ledger_task = asyncio.get_running_loop().create_task(self._hand_fills_on())

    async def _hand_fills_on(self) -> None:
        """Off the order path: give the fills of durable batches to the ledger and the market data feed."""
        await asyncio.sleep(0)
        while self._pending_fills:
            batches, self._pending_fills = self._pending_fills, []
            fills = np.concatenate(batches) if len(batches) > 1 else batches[0]
            if self.trade_sink is not None:
                self.trade_sink(fills)
            if self.ledger is None:
                continue
            for fill in self.fills_for_ledger(fills):
                try:
                    self.ledger.record(fill)
                except LedgerBacklogFull:
                    # The journal holds the fill: recovery's catch-up writes it after a restart.
                    self.ledger_backlog_drops += 1
            await asyncio.sleep(0)

    def fills_for_ledger(self, fills: np.ndarray) -> list[Fill]:
        return self.fills_for_ledger_of(self.state, fills, self.shard_id, self.original_ids)

    @staticmethod
    def fills_for_ledger_of(
        state: ExecutionState,
        fills: np.ndarray,
        shard_id: int = 0,
        original_ids: dict[int, int] | None = None,
    ) -> list[Fill]:
        """Ledger rows for FILL_DTYPE rows (names from ``state``; public order ids of ``shard_id``,
        or the original ids of orders taken over from another shard: ``original_ids``)."""
        names = state.symbol_names
        accounts = state.account_names
        base = shard_id << 48
        taken = original_ids or {}
        return [
            Fill(
                symbol=names[symbol_id],
                trade_id=trade_id,
                price_ticks=price,
                quantity_lots=qty,
                buyer_account=accounts.get(buyer, str(buyer)),
                buyer_order_id=taken.get(buy_order, buy_order | base) if taken else buy_order | base,
                seller_account=accounts.get(seller, str(seller)),
                seller_order_id=taken.get(sell_order, sell_order | base) if taken else sell_order | base,
                executed_at_ns=transact,
                shard_id=shard_id,
            )
            for (trade_id, price, qty, buy_order, buyer, sell_order, seller, transact, symbol_id, _) in (
                fills.tolist()
            )
        ]

    def subscribe(self, account_id: int, symbol_id: int | None, after: int | None = None) -> ReportSubscriber:
        """A cursor over the account's reports after sequence ``after`` (default: live only, from
        the last published report). The caller checks ``after`` is still retained."""
        cursor = self.published_report_seq if after is None else min(after, self.published_report_seq)
        subscriber = ReportSubscriber(account_id, symbol_id, cursor)
        self._subscribers.setdefault(account_id, []).append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: ReportSubscriber) -> None:
        subscribers = self._subscribers.get(subscriber.account_id, [])
        with contextlib.suppress(ValueError):
            subscribers.remove(subscriber)
        if not subscribers:
            self._subscribers.pop(subscriber.account_id, None)

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    @property
    def max_behind_reports(self) -> int:
        """How far (in report sequences) a stream may lag the published reports before it is cut
        off: at most half the retained window, so that what it has not read is still retained
        when it resumes."""
        return max(1, min(self.stream_max_behind_reports, len(self.state.reports) // 2))

    def _check_lag(self) -> None:
        """Every quarter of :attr:`max_behind_reports` reports made: move idle readers' cursors
        up (nothing of theirs was published since they went idle, else they were woken) and cut
        off those too far behind."""
        published = self.published_report_seq
        head = self.state.next_report_seq - 1  # the ring's newest row, published or not yet
        limit = self.max_behind_reports
        self._next_lag_check = head + max(1, limit // 4)
        for subscribers in list(self._subscribers.values()):
            for subscriber in list(subscribers):
                if subscriber.idle:
                    subscriber.cursor = max(subscriber.cursor, published)
                elif head - subscriber.cursor > limit and subscriber.too_slow is None:
                    subscriber.too_slow = ReaderTooSlow(head - subscriber.cursor, subscriber.cursor)
                    self.streams_cut_off += 1
                    if subscriber.on_too_slow is not None:
                        subscriber.on_too_slow(subscriber.too_slow)

    def reports_page(self, subscriber: ReportSubscriber, limit: int, until: int | None = None) -> np.ndarray:
        """Up to ``limit`` of the subscriber's published reports after its cursor (REPORT_DTYPE rows,
        copied out of the ring), oldest first; moves the cursor past them and past the rows of other
        accounts and symbols it looked at. Looks at no more than a bounded number of ring rows per
        call: an empty page with ``cursor < published_report_seq`` means "call again". ``until``:
        read no further than this sequence (an OrderStream whose next acks are not sent yet).

        Raises ReaderTooSlow when reports after the cursor are no longer retained."""
        state = self.state
        ring = state.reports
        capacity = len(ring)
        end = self.published_report_seq if until is None else min(until, self.published_report_seq)
        start = subscriber.cursor + 1
        if start > end:
            return ring[:0].copy()
        if start < state.oldest_retained_report:
            raise ReaderTooSlow(end - subscriber.cursor, subscriber.cursor)
        accounts = ring["account_id"]
        symbols = ring["symbol_id"]
        taken: list[np.ndarray] = []
        wanted = limit
        looked = 0
        while start <= end and wanted > 0 and looked < 16 * _SCAN_ROWS:
            stop = min(end, start + _SCAN_ROWS - 1)
            positions = (np.arange(start, stop + 1) - 1) % capacity
            mine = accounts[positions] == subscriber.account_id
            if subscriber.symbol_id is not None:
                mine &= symbols[positions] == subscriber.symbol_id
            hits = np.flatnonzero(mine)
            if len(hits) >= wanted:
                hits = hits[:wanted]
                stop = start + int(hits[-1])
            if len(hits):
                taken.append(ring[positions[hits]])
                wanted -= len(hits)
            looked += stop - start + 1
            subscriber.cursor = stop
            start = stop + 1
        if not taken:
            return ring[:0].copy()
        page = taken[0] if len(taken) == 1 else np.concatenate(taken)
        return page

    async def drain(self) -> None:
        """Stop taking inputs and wait for the ledger hand-off of what is durable."""
        self.accepting = False
        if self._ledger_task is not None:
            with contextlib.suppress(Exception):
                await self._ledger_task


def cancel_inputs(order_ids: np.ndarray, received_ns: int, arrival_ns: int, reason: int = 0) -> Inputs:
    """Cancels of the given orders as one batch (CancelAll, the kill switch)."""
    count = len(order_ids)
    return Inputs(
        kind=np.full(count, KIND_CANCEL, np.int64),
        symbols=[""] * count,
        client_ids=[""] * count,
        orders=np.zeros(count, NEW_ORDER_DTYPE),
        target_ids=order_ids.astype(np.int64),
        received_ns=received_ns,
        arrival_ns=arrival_ns,
        cancel_reason=reason,
    )


def _client_priority_order(priority: np.ndarray) -> np.ndarray:
    """Positions by priority, highest first, equal priorities in list order (one account per call)."""
    return np.lexsort((np.arange(len(priority)), -priority.astype(np.int64)))


def _reorder_ids(batch: Batch, order: np.ndarray) -> bytes:
    lengths = batch.meta["client_id_length"].astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    text = batch.client_ids
    return b"".join(
        text[s : s + n] for s, n in zip(starts[order].tolist(), lengths[order].tolist(), strict=True)
    )
