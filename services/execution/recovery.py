"""Rebuilding the execution state from disk: the last snapshot plus the journal tail.

Two entry points:

* :func:`recover` -- what the service does on start (``__main__`` through server.start):
  open the journal (which cuts a torn tail and refuses mid-journal corruption unless told to),
  load the newest confirmed snapshot, replay every journal record after it through the same
  :meth:`ExecutionState.apply_batch` as the live path, and return the state with the open
  journal and the fills the replay regenerated (for the ledger's catch-up).
* :func:`load_state` -- the same, offline, for tools and the crash harness, on a state
  directory whose service has stopped (or been killed). It returns a :class:`RecoveredState`:
  the books as plain comparable data, every journaled input in journal order (the engine
  commands, which a reference book can replay as they are), and the fills.

How the crash harness uses it: kill the service, call ``load_state(state_dir)``, check that
every acknowledged (order id, input sequence) is among ``inputs``/``orders``, replay
``inputs`` through :class:`hftgate.matching.reference.ReferenceEngine` (one book per
``symbols`` id) and compare :func:`comparable_books` of that engine with ``books``. The
journal keeps every input since the first start only with
``HFTGATE_EXECUTION_JOURNAL_TRUNCATE_AFTER_SNAPSHOT=false``; ``load_state(..., use_snapshot=False)``
then replays all of them. With the default ``use_snapshot=True`` it recovers like the service
(newest snapshot + tail): ``inputs`` starts after the snapshot (``first_input_seq`` > 1) and
``base_books`` holds the books of the snapshot it starts from. Both ways must give the same books.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hftgate.matching.engine import EngineConfig
from hftgate.matching.types import COMMAND_DTYPE, Side
from services.execution import snapshot
from services.execution.config import ExecutionConfig, load_config
from services.execution.journal import Durability, Journal, JournalCorruption
from services.execution.records import (
    RECORD_ACCOUNT,
    RECORD_BATCH,
    RECORD_PURGE,
    RECORD_SYMBOL,
    decode_account,
    decode_batch,
    decode_purge,
    decode_symbol,
)
from services.execution.state import FILL_DTYPE, ORDER_DTYPE, ExecutionState

log = logging.getLogger(__name__)

#: One resting order as books compare: (order_id, account_id, price, visible_qty, hidden_qty, display_qty).
RestingOrder = tuple[int, int, int, int, int, int]
#: One waiting stop: (order_id, account_id, stop_price, limit_price, quantity).
PendingStop = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class BookView:
    """One symbol's book as plain data: equal books compare equal with ``==``."""

    bids: tuple[RestingOrder, ...]  # best price first, oldest first within a price
    asks: tuple[RestingOrder, ...]
    buy_stops: tuple[PendingStop, ...]  # in trigger order
    sell_stops: tuple[PendingStop, ...]
    last_trade_price: int | None


@dataclass
class RecoveredState:
    """The execution state rebuilt from a state directory (see the module docstring)."""

    #: symbol name -> engine symbol id (the ``symbol_id`` of commands and fills).
    symbols: dict[str, int]
    #: account id -> account name.
    accounts: dict[int, str]
    #: Per symbol name, the book after every journaled input.
    books: dict[str, BookView]
    #: Every input in the journal, in journal order, as the engine ran it (COMMAND_DTYPE).
    inputs: np.ndarray
    #: The input sequence number (OrderAck.sequence) of each row of ``inputs``.
    input_sequences: np.ndarray
    #: Input sequence of the first row of ``inputs``; 1 when the journal holds every input ever.
    first_input_seq: int
    #: Journal sequence the recovery base snapshot covers (0 = none: everything replayed).
    snapshot_seq: int
    #: Books of that snapshot (empty without one): what ``inputs`` apply to.
    base_books: dict[str, BookView]
    #: Every order the service knows (ORDER_DTYPE, row i = order id i + 1) and its client order id.
    #: The replay retires nothing, so with ``use_snapshot=False`` that is every order ever; an order
    #: the base snapshot had already retired (state.py) is an all-zero row and ``""``.
    orders: np.ndarray
    client_order_ids: list[str]
    #: The fills regenerated from ``inputs`` (FILL_DTYPE), in trade id order.
    fills: np.ndarray
    #: How long recovery took (ms) and how many journal records it replayed.
    recovery_ms: float = 0.0
    replayed_records: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def comparable_books(engine: Any, symbols: dict[str, int]) -> dict[str, BookView]:
    """:class:`BookView` per symbol of a :class:`~hftgate.matching.MatchingEngine` or of a
    :class:`~hftgate.matching.reference.ReferenceEngine` (same shape for both)."""
    views = {}
    for name, symbol_id in symbols.items():
        sides: list[tuple[Any, ...]] = []
        for stops in (False, True):
            for side in (Side.BUY, Side.SELL):
                if hasattr(engine, "orders_on"):
                    rows = engine.orders_on(side, symbol=symbol_id, pending_stops=stops)
                else:
                    rows = engine.orders(side, symbol=symbol_id, pending_stops=stops).tolist()
                if stops:
                    sides.append(tuple((r[0], r[1], r[3], r[2], r[4] + r[5]) for r in rows))
                else:
                    sides.append(tuple((r[0], r[1], r[2], r[4], r[5], r[6]) for r in rows))
        views[name] = BookView(sides[0], sides[1], sides[2], sides[3], engine.last_trade_price(symbol_id))
    return views


def engine_config_of(config: ExecutionConfig) -> EngineConfig:
    return EngineConfig(
        max_symbols=config.max_symbols,
        max_levels_per_side=config.max_levels_per_side,
        max_orders=config.max_live_orders,
    )


@dataclass
class Recovery:
    """What :func:`recover` hands the service."""

    state: ExecutionState
    journal: Journal
    snapshot_seq: int
    tail_fills: np.ndarray
    replayed_records: int
    recovery_ms: float
    tail_inputs: list[np.ndarray]
    base_books: dict[str, BookView]
    #: Journal records that failed to apply and were passed over: journal seq -> what failed.
    quarantined: dict[int, str] = field(default_factory=dict)


def recover(
    config: ExecutionConfig, *, keep_inputs: bool = False, use_snapshot: bool = True, retire: bool = True
) -> Recovery:
    """Open the journal, load the newest snapshot and replay the tail (blocking).

    ``keep_inputs`` keeps the replayed inputs (for :func:`load_state`); ``use_snapshot=False``
    ignores snapshots and replays the whole journal (which must then start at its first record);
    ``retire=False`` keeps every order the replay sees (state.py retires finished ones otherwise).
    """
    started = time.perf_counter()
    engine_config = engine_config_of(config)
    base = snapshot.newest(config.snapshot_path())
    journal = Journal.open(
        config.journal_path(),
        durability=Durability(config.journal_durability),
        allow_mid_corruption=config.journal_allow_mid_corruption,
        segment_max_bytes=config.journal_segment_max_bytes,
        space_retry_max_ms=config.journal_space_retry_max_ms,
        close_blocked_timeout_s=config.journal_close_blocked_timeout_s,
        # Segments the newest snapshot covers whole are not even read (recovery stays short).
        covered_seq=snapshot.snapshot_seq(base) if (base is not None and use_snapshot) else 0,
    )
    if not use_snapshot:
        if journal.recovery.records and journal.recovery.first_seq > 1:
            raise RuntimeError(
                f"the journal starts at seq {journal.recovery.first_seq}: earlier inputs were truncated "
                "after a snapshot, so it cannot be replayed from the start"
            )
        base = None

    def base_state() -> tuple[ExecutionState, int]:
        if base is None:
            return ExecutionState(engine_config, config.retained_reports, retire=retire), 0
        loaded, seq = snapshot.load(base, engine_config, config.retained_reports, retire=retire)
        log.info(
            "snapshot %s loaded (journal seq %d, %d orders held)", base.name, seq, loaded.retained_order_count
        )
        return loaded, seq

    state, covered = base_state()
    if base is not None and journal.next_seq <= covered:
        # In the durable mode a snapshot is only built from fsynced records, so a journal that
        # ends before it lost data it had made durable: the disk, not a crash. Refuse, as for
        # any corruption in the middle, unless told to start from the snapshot.
        problem = (
            f"the journal ends at seq {journal.next_seq - 1} but snapshot {base.name} covers up to seq "
            f"{covered}: records the snapshot was built from are missing from the journal"
        )
        if not config.journal_allow_mid_corruption:
            raise JournalCorruption(
                problem + "; refusing to start (HFTGATE_EXECUTION_JOURNAL_ALLOW_MID_CORRUPTION=true "
                "starts from the snapshot and moves the old segments aside)"
            )
        log.error("%s; starting from the snapshot", problem)
        journal.restart_after(covered)
    base_books = comparable_books(state.engine, state.symbol_ids) if keep_inputs else {}
    first_kept = journal.recovery.first_seq
    if journal.recovery.records and first_kept > covered + 1:
        raise RuntimeError(
            f"journal starts at seq {first_kept} but the snapshot covers only up to {covered}: "
            "records in between are missing"
        )
    quarantined: dict[int, str] = {}
    while True:
        try:
            fills, inputs, replayed = _replay(state, journal, covered, keep_inputs, quarantined)
            break
        except _ApplyFailed as failed:
            # A journaled record that fails part-way through the state change (a bug: apply_batch
            # refuses what does not fit and never raises for values) left the state half-changed.
            # Start over from the same base and pass the record over, as if its inputs had been
            # refused: deterministic, so every restart rebuilds the same state, and never a
            # crash loop. Bounded: a journal that keeps failing is not a poison record but a bug
            # in everything, and refuses to start.
            if failed.seq in quarantined:  # passing over it cannot fail: a bug in recovery itself
                raise RuntimeError(f"journal record {failed.seq} failed again: {failed.problem}") from failed
            quarantined[failed.seq] = failed.problem
            log.critical(
                "journal record %d failed to apply (%s); quarantined: its inputs count as refused. "
                "Recovery starts over from the snapshot without it",
                failed.seq,
                failed.problem,
            )
            if len(quarantined) > MAX_QUARANTINED_RECORDS:
                raise RuntimeError(
                    f"{len(quarantined)} journal records failed to apply (first: {min(quarantined)}): "
                    "refusing to start"
                ) from failed
            state, covered = base_state()
    elapsed_ms = (time.perf_counter() - started) * 1000
    log.info(
        "recovered in %.1f ms: snapshot seq %d + %d journal record(s); %d orders, %d live, next input %d",
        elapsed_ms,
        covered,
        replayed,
        state.order_count,
        state.engine.live_orders,
        state.next_input_seq,
    )
    tail_fills = np.concatenate(fills) if fills else np.zeros(0, FILL_DTYPE)
    return Recovery(
        state, journal, covered, tail_fills, replayed, elapsed_ms, inputs, base_books, quarantined
    )


#: Journal records a recovery passes over (see :func:`recover`) before it refuses to start.
MAX_QUARANTINED_RECORDS = 16


def _pass_over(state: ExecutionState, record_type: int, payload: bytes) -> None:
    """A quarantined record: a batch's inputs use up their sequence numbers, nothing else happens."""
    if record_type != RECORD_BATCH:
        return
    try:
        batch = decode_batch(payload)
    except Exception:
        return  # a batch that does not decode: no input of it was ever acknowledged
    if batch.first_input_seq == state.next_input_seq:
        state.next_input_seq += len(batch)


class _ApplyFailed(Exception):
    def __init__(self, seq: int, problem: str) -> None:
        super().__init__(seq, problem)
        self.seq = seq
        self.problem = problem


def _replay(
    state: ExecutionState, journal: Journal, covered: int, keep_inputs: bool, quarantined: dict[int, str]
) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Apply every journal record after ``covered`` to ``state``: (fills, inputs, records replayed).

    A batch record in ``quarantined`` only uses up its input sequence numbers (its inputs count as
    refused, as apply_batch refuses a batch that does not fit); any other such record is skipped.
    Raises :class:`_ApplyFailed` for a record whose apply raises."""
    fills: list[np.ndarray] = []
    inputs: list[np.ndarray] = []
    replayed = 0
    for record in journal.replay(after_seq=covered):
        replayed += 1
        if record.seq in quarantined:
            _pass_over(state, record.record_type, record.payload)
            continue
        try:
            if record.record_type == RECORD_BATCH:
                batch = decode_batch(record.payload)
                outcome = state.apply_batch(batch)
                if len(outcome.fills):
                    fills.append(outcome.fills)
                if keep_inputs:
                    inputs.append(batch.commands)
                    inputs.append(np.arange(batch.first_input_seq, batch.first_input_seq + len(batch)))
            elif record.record_type == RECORD_SYMBOL:
                symbol_id, name = decode_symbol(record.payload)
                state.add_symbol(symbol_id, name)
            elif record.record_type == RECORD_ACCOUNT:
                account_id, name = decode_account(record.payload)
                state.add_account(account_id, name)
            elif record.record_type == RECORD_PURGE:
                state.purge_symbol(*decode_purge(record.payload))
            else:
                raise RuntimeError(f"journal record {record.seq} has unknown type {record.record_type}")
        except Exception as exc:
            raise _ApplyFailed(record.seq, repr(exc)) from exc
    return fills, inputs, replayed


def load_state(
    state_dir: Path, config: ExecutionConfig | None = None, *, use_snapshot: bool = True
) -> RecoveredState:
    """The state a stopped service left in ``state_dir``, rebuilt offline (see the module docstring).

    ``config`` supplies the engine sizes (default: the environment's, as the service read them);
    its ``state_dir`` is replaced by the argument. Like a start, it repairs a torn journal tail.
    ``use_snapshot=True`` recovers exactly as the service does (newest snapshot + journal tail;
    ``inputs`` then holds the tail only); ``False`` replays the whole journal, so ``inputs`` holds
    every input since the first start (needs ``HFTGATE_EXECUTION_JOURNAL_TRUNCATE_AFTER_SNAPSHOT``
    off, else it raises).
    """
    base = config or load_config()
    config = replace(base, state_dir=str(state_dir))
    recovery = recover(config, keep_inputs=True, use_snapshot=use_snapshot, retire=False)
    try:
        state = recovery.state
        commands = recovery.tail_inputs[0::2]
        sequences = recovery.tail_inputs[1::2]
        inputs = np.concatenate(commands) if commands else np.zeros(0, COMMAND_DTYPE)
        input_sequences = np.concatenate(sequences) if sequences else np.zeros(0, np.int64)
        return RecoveredState(
            symbols=dict(state.symbol_ids),
            accounts=dict(state.account_names),
            books=comparable_books(state.engine, state.symbol_ids),
            inputs=inputs,
            input_sequences=input_sequences,
            first_input_seq=int(input_sequences[0]) if len(input_sequences) else state.next_input_seq,
            snapshot_seq=recovery.snapshot_seq,
            base_books=recovery.base_books,
            orders=state.orders[: state.order_count].astype(ORDER_DTYPE),
            client_order_ids=list(state.client_ids),
            fills=recovery.tail_fills,
            recovery_ms=recovery.recovery_ms,
            replayed_records=recovery.replayed_records,
        )
    finally:
        _close_unstarted(recovery.journal)


def _close_unstarted(journal: Journal) -> None:
    """Release an opened journal that was never started (no writer thread to stop)."""
    journal._queue.close()
