"""The order path: admission, one journal record and one engine call per batch, acks after durability.

:class:`ExecutionCore` is the execution service without gRPC, and composes its two halves. Every
input reaches it as a batch of :class:`~services.execution.admission.Inputs` (one SubmitOrders or
SubmitOrderColumns call, one OrderStream message, one cancel...) from one account, or, for
SubmitOrder, as one :class:`~services.execution.admission.NewOrderEntry` (:meth:`ExecutionCore.submit_order`:
the same steps and journal record with plain values instead of arrays), and goes through,
synchronously on the event loop:

1. **admission** (admission.py) -- the C rules for new orders (one pass, the same for a batch of
   one), ownership and existence for cancels and replaces; refused inputs get their reason and are
   not journaled; the accepted ones become one journal record;
2. **match** (here) -- the record is appended to the journal (the writer thread starts making it
   durable) and then applied to :class:`~services.execution.state.ExecutionState` (one engine call
   and one C fold) while the fsync runs;
3. **journal durable** (here) -- the call awaits the record's future; group commit shares the fsync
   (a lone SubmitOrder may busy-poll for it instead: :attr:`ExecutionCore.ack_poll_ns`);
4. **publishing** (publishing.py) -- the outcome merged into the acks, which the caller (server.py)
   encodes and sends; reports to StreamExecutions/OrderStream readers, fills to the ledger and the
   market data feed.

Nothing is published before its record is durable, so nothing leaves the service that a crash
could take back. The ledger write happens after the acks, off the order path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hftgate.native.clock import now_ns
from hftgate.native.histogram import LatencyHistogram
from hftgate.v1 import common_pb2 as common
from services.execution.admission import (
    KIND_NEW,
    Acks,
    Admission,
    Counters,
    Inputs,
    NewOrderEntry,
    SingleAck,
    cancel_inputs,
)
from services.execution.fencing import Refusal, ShardFence, SymbolMoving
from services.execution.journal import Journal
from services.execution.ledger import Ledger
from services.execution.publishing import Publisher
from services.execution.records import RECORD_BATCH, Batch, decode_batch, encode_batch
from services.execution.reference import NOT_HELD, AccountSpec, ReferenceData
from services.execution.state import OPEN_STATUSES, REJECTED, BatchOutcome, ExecutionState

log = logging.getLogger(__name__)

_NO_POSITIONS = np.zeros(0, np.int64)
_FIRST_POSITION = np.zeros(1, np.int64)
_NO_POSITIONS.setflags(write=False)
_FIRST_POSITION.setflags(write=False)


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


#: A batch in flight on a stream: its journal future and the acks its sink gets once it is durable
#: (its own first, then those of the same sink's fully refused batches that arrived after it).
_InFlight = tuple[asyncio.Future[int], list[Acks]]


@dataclass(slots=True)
class StageHistograms:
    """Latency per order-path stage (native clock, ns), one sample per accepted input."""

    risk: LatencyHistogram = field(default_factory=LatencyHistogram)
    match: LatencyHistogram = field(default_factory=LatencyHistogram)
    journal: LatencyHistogram = field(default_factory=LatencyHistogram)
    ack: LatencyHistogram = field(default_factory=LatencyHistogram)
    total: LatencyHistogram = field(default_factory=LatencyHistogram)


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
        #: Before the journal: rules, refusals, the batch's record (admission.py).
        self.admission = Admission(state, journal, reference, self.counters)
        #: After it: acks, reports, trade feed and ledger (publishing.py).
        self.publisher = Publisher(state, self.counters, ledger, trade_sink)
        self._on_batch_applied = on_batch_applied
        self.accepting = True
        # Per sink (one OrderStream each): its batches applied but not yet durable, oldest first,
        # each with the acks of that same sink's fully refused batches that arrived after it (they
        # must not overtake it on the stream). Keyed by sink so that an ack only ever goes out
        # through the stream that sent its input; a sink's entry goes once nothing of it is in flight.
        self._inflight: dict[Callable[[Acks | BaseException], None], list[_InFlight]] = {}
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

    # --- accounts and instruments --------------------------------------------------------------

    async def authenticate(self, api_key: str) -> AccountSpec | None:
        return await self.reference.account_for_key(api_key)

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
        unique, specs = await self.admission.instruments_for(inputs.symbols) if inputs.symbols else ([], [])
        payload: bytes | None
        single_new = len(inputs) == 1 and inputs.preset_reasons is None and inputs.kind[0] == KIND_NEW
        if single_new and specs:
            self._refence(account, inputs, streaming=sink is not None)  # no await from here to the append
        if single_new and specs and inputs.preset_reasons is None:
            acks, payload, batch = self.admission.prepare_one_new(account, inputs, specs[0])
            positions = _FIRST_POSITION
        else:
            replace_specs = await self.admission.replace_instruments(account, inputs)
            self._refence(account, inputs, streaming=sink is not None)  # no await from here to the append
            acks, batch, positions = self.admission.prepare(account, inputs, unique, specs, replace_specs)
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
        self.publisher.merge(acks, outcome, positions)
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

    async def submit_order(
        self,
        account: AccountSpec,
        entry: NewOrderEntry,
        matched: Callable[[SingleAck], None] | None = None,
    ) -> SingleAck:
        """:meth:`submit` for the one new order of a SubmitOrder call; returns once it is durable.

        The same rules, journal record and state change as a batch of one, with plain values
        wherever an array would hold one element: for a single order numpy's per-call set-up costs
        more than the work, and this is the path whose latency a client waits on.

        ``matched(ack)`` is called once an accepted order is matched, before the wait for its
        fsync, with every field of the ack but ``durable`` final: the caller can build its
        response while the disk works (a lone order's fsync outlasts its matching) instead of
        after. Not called for a rejected order.
        """
        self._orders_in_flight += 1
        try:
            return await self._submit_order(account, entry, matched)
        finally:
            self._orders_in_flight -= 1

    async def _submit_order(
        self, account: AccountSpec, entry: NewOrderEntry, matched: Callable[[SingleAck], None] | None
    ) -> SingleAck:
        if not self.accepting:
            raise ServiceUnavailable("the service is stopping")
        # Its client waits on this one order's fsync: have the writer's CPU awake by the append
        # (a parked keeper wakes while admission runs).
        self.journal.keep_writer_cpu_awake()
        if account.kill_switch:
            await self._cancel_for_kill_switch(account)
        symbol = entry.symbol
        held = self.reference.instrument_held(symbol) if symbol else None
        spec = await self.reference.instrument(symbol) if held is NOT_HELD else held
        fence = self.fence
        if fence is not None and symbol:  # again after the await: no await from here to the append
            refusal = fence.refusal(symbol)
            if refusal is not None:
                raise InputRefused(refusal, self.publisher.shard_id)
        reason, payload, batch = self.admission.admit_one_new(
            account, symbol, entry.client_id, entry.fields, spec, entry.received_ns
        )
        if payload is None:
            ack = SingleAck(entry.client_id, entry.received_ns, entry.arrival_ns)
            ack.status, ack.reason = REJECTED, reason
            return ack
        t_risk = now_ns()
        future, outcome = self._journal_and_apply(payload, batch)
        t_match = now_ns()
        ack = SingleAck(entry.client_id, entry.received_ns, entry.arrival_ns)  # (the fsync runs meanwhile)
        (ack.order_id, ack.sequence, ack.status, ack.reason, ack.price, ack.quantity, ack.leaves, ack.cum,
         _) = self.publisher.outcome_of_one(outcome, KIND_NEW)  # fmt: skip
        stages = self.stages
        stages.risk.record(max(0, t_risk - entry.arrival_ns))
        stages.match.record(t_match - t_risk)
        if self._on_batch_applied is not None:
            self._on_batch_applied()
        if matched is not None:
            matched(ack)
        if self.ack_poll_ns and self._orders_in_flight == 1 and not future.done():
            self.journal.poll_durable(self.journal.next_seq - 1, self.ack_poll_ns)
        try:
            await future
        except Exception as exc:
            raise ServiceUnavailable(f"journal failed: {exc}") from exc
        ack.durable_at_ns = t_durable = now_ns()
        stages.journal.record(t_durable - t_match)
        ack.durable = self._acks_durable
        self.publisher.publish_soon(outcome)  # after the reply has left: nothing the client waits for
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
        self.publisher.after_apply()
        return future, outcome

    def _durable(self, acks: Acks, outcome: BatchOutcome, t_match: int) -> None:
        t_durable = now_ns()
        self.stages.journal.record_n(t_durable - t_match, acks.accepted)
        acks.durable = self._acks_durable
        acks.durable_at_ns = t_durable
        self.publisher.publish(outcome)

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
        self.publisher.publish(outcome)

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
            raise InputRefused(refused[0][1], self.publisher.shard_id)
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

    async def drain(self) -> None:
        """Stop taking inputs and wait for the ledger hand-off of what is durable."""
        self.accepting = False
        await self.publisher.drain()
