"""Publishing: what leaves the service once a batch is applied and durable.

:class:`Publisher` is the after-the-journal half of the order path (core.py):

* **acks** -- the engine's outcome of a batch merged into the :class:`~services.execution.admission.Acks`
  that admission made (:meth:`Publisher.merge`), counted;
* **reports** -- StreamExecutions/OrderStream readers are cursors over the state's retained
  report ring (:class:`ReportSubscriber`), woken when a durable batch made reports of their
  account, read a page at a time (:meth:`Publisher.reports_page`) and cut off before what they
  have not read can leave the ring (:class:`ReaderTooSlow`);
* **fills** -- handed, off the order path, to the trade feed (the market data service) and to the
  ledger (:meth:`Publisher.fills_for_ledger`: public order ids, names).

Nothing is published before its journal record is durable, so nothing leaves the service that a
crash could take back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

import numpy as np

from hftgate import rows
from services.execution.admission import KIND_CANCEL, KIND_NEW, KIND_REPLACE, Acks, Counters
from services.execution.ledger import Fill, Ledger, LedgerBacklogFull
from services.execution.state import REJECTED, BatchOutcome, ExecutionState

_KIND_COUNT = max(KIND_NEW, KIND_CANCEL, KIND_REPLACE) + 1


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
    reads them a page at a time (:meth:`Publisher.reports_page`) as its client takes them, so
    a reader that does not read holds nothing but its cursor. ``wake`` is set when reports of the
    account are published (or, for an OrderStream, acks arrive in ``acks``: at most the stream's
    window of unsent inputs, see server.py). A reader more than the publisher's ``max_behind_reports``
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


class Publisher:
    """Acks, reports, trade feed and ledger hand-off for one execution core (one event loop owns it)."""

    def __init__(
        self,
        state: ExecutionState,
        counters: Counters,
        ledger: Ledger | None,
        trade_sink: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        self.state = state
        self.counters = counters
        self.ledger = ledger
        #: Called off the order path with the fills of each durable batch (the market data feed).
        self.trade_sink = trade_sink
        #: This shard's id (hftgate/shardmap.py): the ledger's rows carry its public ids.
        self.shard_id = 0
        #: Orders taken over from another shard (services/execution/handover.py): local id -> the
        #: original public id, used wherever an id leaves (acks, reports, ledger rows).
        self.original_ids: dict[int, int] = {}
        self.ledger_backlog_drops = 0
        self._pending_fills: list[np.ndarray] = []
        #: Outcomes given to :meth:`publish_soon` and not yet published (in journal order).
        self._deferred: list[BatchOutcome] = []
        self._ledger_task: asyncio.Task[None] | None = None
        self._subscribers: dict[int, list[ReportSubscriber]] = {}
        #: See max_behind_reports (set by the server from its config).
        self.stream_max_behind_reports = 100_000
        self._next_lag_check = 0
        #: Streams cut off for reading too slowly since start.
        self.streams_cut_off = 0
        #: Sequence of the last execution report handed to subscribers (all earlier ones are durable).
        self.published_report_seq = state.next_report_seq - 1

    # --- acks ------------------------------------------------------------------------------------

    def merge(self, acks: Acks, outcome: BatchOutcome, positions: np.ndarray) -> None:
        if len(positions) == 1 and len(acks.kind) == 1:
            self._merge_one(acks, outcome)
            return
        acks.order_ids[positions] = outcome.order_ids
        refused = outcome.status == REJECTED
        engine_refused = int(np.count_nonzero(refused))
        sequences = np.arange(outcome.first_input_seq, outcome.first_input_seq + len(positions))
        if engine_refused:
            sequences[refused] = 0
        acks.sequences[positions] = sequences
        acks.status[positions] = outcome.status
        acks.reason[positions] = outcome.reason
        acks.price[positions] = outcome.price
        acks.quantity[positions] = outcome.quantity
        acks.leaves[positions] = outcome.leaves
        acks.cum[positions] = outcome.cum
        acks.priority_kept[positions] = outcome.priority_kept
        acks.reports = outcome.reports
        kinds = acks.kind[positions]
        if engine_refused:
            kinds = kinds[~refused]
        # Accepted inputs by kind in one pass (KIND_* are small non-negative numbers).
        by_kind = np.bincount(kinds, minlength=_KIND_COUNT).tolist()
        self.counters.orders_accepted += by_kind[KIND_NEW]
        self.counters.cancels_accepted += by_kind[KIND_CANCEL]
        self.counters.replaces_accepted += by_kind[KIND_REPLACE]
        if engine_refused:
            self.counters.inputs_rejected += engine_refused
            by_reason = self.counters.rejects_by_reason
            for value in outcome.reason[refused].tolist():
                by_reason[value] = by_reason.get(value, 0) + 1

    def _merge_one(self, acks: Acks, outcome: BatchOutcome) -> None:
        """:meth:`_merge` for a batch of one input (element assignments instead of masks)."""
        (acks.order_ids[0], acks.sequences[0], acks.status[0], acks.reason[0], acks.price[0],
         acks.quantity[0], acks.leaves[0], acks.cum[0], acks.priority_kept[0]) = self.outcome_of_one(
            outcome, int(acks.kind[0]))  # fmt: skip
        acks.reports = outcome.reports

    def outcome_of_one(
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

    def publish(self, outcome: BatchOutcome) -> None:
        """Hand a durable batch's reports to their subscribers and its fills on (ledger, trade
        feed), after any that :meth:`publish_soon` still holds: always in journal order."""
        if self._deferred:
            self._publish_deferred()
        self._publish(outcome)

    def publish_soon(self, outcome: BatchOutcome) -> None:
        """:meth:`publish` on the loop's next turn: for a SubmitOrder, whose reply then leaves
        first (publishing is nothing its client waits for). Still in journal order: a
        :meth:`publish` meanwhile publishes the held ones first."""
        self._deferred.append(outcome)
        if len(self._deferred) == 1:
            asyncio.get_running_loop().call_soon(self._publish_deferred)

    def _publish_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for outcome in deferred:
            self._publish(outcome)

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
                    self.check_lag()
        if len(outcome.fills):
            self._pending_fills.append(outcome.fills)
            if self._ledger_task is None or self._ledger_task.done():
                self._ledger_task = asyncio.get_running_loop().create_task(self._hand_fills_on())

    async def _hand_fills_on(self) -> None:
        """Off the order path: give the fills of durable batches to the ledger and the market data feed."""
        await asyncio.sleep(0)
        while self._pending_fills:
            batches, self._pending_fills = self._pending_fills, []
            fills = rows.concat(batches) if len(batches) > 1 else batches[0]
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

    def after_apply(self) -> None:
        """A batch was applied: its reports are in the ring, not yet published. Readers are
        checked now if any listen and a lag check is due (the ring moved on apply)."""
        if self._subscribers and self.state.next_report_seq > self._next_lag_check:
            self.check_lag()

    def check_lag(self) -> None:
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
            return rows.empty_like(ring)
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
                taken.append(rows.take(ring, positions[hits]))
                wanted -= len(hits)
            looked += stop - start + 1
            subscriber.cursor = stop
            start = stop + 1
        if not taken:
            return rows.empty_like(ring)
        page = taken[0] if len(taken) == 1 else rows.concat(taken)
        return page

    async def drain(self) -> None:
        """Wait for the ledger hand-off of what is durable."""
        if self._deferred:
            self._publish_deferred()
        if self._ledger_task is not None:
            with contextlib.suppress(Exception):
                await self._ledger_task
