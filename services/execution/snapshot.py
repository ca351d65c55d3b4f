"""Snapshots of the whole execution state, so recovery replays only the journal tail.

A snapshot is one ``.npz`` file (numpy arrays, no pickle) named ``snapshot-<journal seq, 20
digits>.npz``: the state after every journal record up to that sequence number. Its arrays:

* ``book_orders`` / ``book_counts`` / ``last_trade`` -- every book as the engine's own order
  records (ORDER_INFO_DTYPE): per symbol its bids and asks in priority order, then its buy and
  sell stops in trigger order, and the last trade price that stops compare with;
* ``orders``, ``order_ids``, ``client_id_lengths``, ``client_ids`` -- the retained orders (state.py:
  finished orders are retired, so this stays bounded), their ids and client order ids, by id;
  ``info`` has ``order_count`` (the last id handed out) and ``order_base`` (the window's base).
  A snapshot without ``order_ids`` (written before retirement) holds every order, row i = id i + 1;
* ``position``, ``open_buy``, ``open_sell``, ``open_orders``, ``account_ids`` -- risk state;
* ``reports`` -- the retained execution reports (StreamExecutions resumes across restarts);
* ``info`` -- JSON: counters, symbol and account names.

Books are restored into an empty engine in that order: one anonymous trade sets the last price,
every resting order is put back exactly as it was (``hft_engine_restore_resting``: its shown
slice and iceberg reserve too, so a partly filled iceberg slice survives), and the pending stops
are re-entered in trigger order. That rebuilds every level's queue exactly, so a snapshot can be
taken at any moment the order flow allows.

A snapshot becomes the recovery base only once the fills before it are in the ledger. Capture
notes the snapshot's last trade id (the state's ``next_trade_id - 1``: every fill of a journal
record up to the snapshot's sequence has a trade id up to it, every later fill a higher one). The
file is written as ``*.pending`` and renamed (confirmed) only once the ledger's high-water mark
(:attr:`Ledger.written_through_trade_id`: every fill up to it is committed in the table) has
reached that trade id. The wait is bounded by the ledger's lag, not by the flow: waiting for an
empty ledger queue instead never ends while fills keep arriving, and no later snapshot starts.

Why "every fill exactly once, chain unbroken" holds after a crash at any moment:

* the confirmed base snapshot covers journal sequence S, and the ledger holds every fill of the
  records up to S (their trade ids are at most the snapshot's mark, which the ledger had reached);
* the journal is truncated only after the confirmation, so it still holds every record after S,
  whose replay regenerates every other fill the ledger may lack (rows written past the mark
  before the crash included);
* :meth:`Ledger.catch_up` writes each of those whose transaction id is missing, appending to the
  chain head in one serialised writer, so nothing is written twice and the chain stays unbroken;
  afterwards every fill the recovered state knows is written, and the service marks the ledger
  level at the recovered state's last trade id, from which new snapshots wait again.

A crash before the confirmation leaves the previous snapshot as the base (a ``*.pending`` file is
ignored by recovery and removed by the next confirmation). When the ledger had to turn a fill away
(its queue full), its mark stops below that fill until a restart's catch-up writes it; a snapshot
past it is dropped (:class:`LedgerGap`) rather than confirmed, as the journal must keep that fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hftgate.matching.engine import EngineConfig
from hftgate.matching.types import ORDER_INFO_DTYPE
from services.execution.config import ExecutionConfig
from services.execution.journal import Journal
from services.execution.ledger import Ledger, LedgerGap
from services.execution.state import ORDER_DTYPE, REPORT_DTYPE, ExecutionState

if TYPE_CHECKING:
    from services.execution.core import ExecutionCore

log = logging.getLogger(__name__)

_NAME = re.compile(r"^snapshot-(\d{20})\.npz$")


@dataclass(slots=True)
class SnapshotData:
    """A state captured on the event loop, to be written by a thread."""

    journal_seq: int
    arrays: dict[str, np.ndarray]
    #: The last trade id the state had assigned: the ledger must hold every fill up to it.
    last_trade_id: int = 0


def capture(state: ExecutionState, journal_seq: int) -> SnapshotData:
    """Copy everything a snapshot needs (on the loop, between batches)."""
    books = state.engine_orders()
    last = state.last_trade_prices()
    count = state.order_count
    order_ids, orders, ids = state.retained_orders()
    info = {
        "journal_seq": journal_seq,
        "next_input_seq": state.next_input_seq,
        "next_report_seq": state.next_report_seq,
        "next_trade_id": state.next_trade_id,
        "trades": state.trades,
        "traded_lots": state.traded_lots,
        "order_count": count,
        "order_base": state.order_base,
        "symbols": state.symbol_names,
        "accounts": {str(k): v for k, v in state.account_names.items()},
        "max_symbols": state.engine_config.max_symbols,
    }
    rows = len(state._account_rows)
    arrays = {
        "book_orders": np.concatenate(books) if books else np.zeros(0, ORDER_INFO_DTYPE),
        "book_counts": np.array([len(b) for b in books], np.int64),
        "last_trade": np.array([p if p is not None else 0 for p in last], np.int64),
        "has_last_trade": np.array([p is not None for p in last], bool),
        "orders": orders,
        "order_ids": order_ids,
        "client_id_lengths": np.array([len(i) for i in ids], np.int64),
        "client_ids": np.frombuffer("".join(ids).encode("ascii"), np.uint8).copy(),
        "position": state.position[:rows].copy(),
        "open_buy": state.open_buy[:rows].copy(),
        "open_sell": state.open_sell[:rows].copy(),
        "open_orders": state.open_orders[:rows].copy(),
        "account_ids": np.array(list(state._account_rows), np.uint64),
        "reports": state.retained_reports_after(0).copy(),
        "info": np.frombuffer(json.dumps(info).encode("utf-8"), np.uint8).copy(),
    }
    return SnapshotData(journal_seq, arrays, state.next_trade_id - 1)


def path_for(directory: Path, journal_seq: int) -> Path:
    return directory / f"snapshot-{journal_seq:020d}.npz"


def write_pending(directory: Path, data: SnapshotData) -> Path:
    """Write the snapshot durably as ``<name>.pending`` (blocking: call from a thread)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = path_for(directory, data.journal_seq)
    pending = final.with_name(final.name + ".pending")
    buffer = io.BytesIO()
    np.savez(buffer, **data.arrays)  # type: ignore[arg-type]
    try:
        with open(pending, "wb") as file:
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        # A full disk: a half-written file must not keep the space the journal needs.
        pending.unlink(missing_ok=True)
        raise
    return pending


def confirm(pending: Path) -> Path:
    """Make a pending snapshot the recovery base and remove older snapshots (blocking)."""
    final = pending.with_name(pending.name.removesuffix(".pending"))
    os.replace(pending, final)
    directory = final.parent
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for other in directory.iterdir():
        older = _NAME.match(other.name) is not None and other.name < final.name
        if other != final and (older or other.name.endswith(".pending")):
            other.unlink(missing_ok=True)
    return final


def newest(directory: Path) -> Path | None:
    if not directory.is_dir():
        return None
    names = sorted(name for name in os.listdir(directory) if _NAME.match(name))
    return directory / names[-1] if names else None


def snapshot_seq(path: Path) -> int:
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not a snapshot file")
    return int(match.group(1))


def load(
    path: Path, engine_config: EngineConfig, retained_reports: int, *, retire: bool = True
) -> tuple[ExecutionState, int]:
    """The state a snapshot file holds, and the journal sequence number it covers (``retire``:
    see :class:`ExecutionState`)."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    info = json.loads(arrays["info"].tobytes().decode("utf-8"))
    if info["max_symbols"] > engine_config.max_symbols:
        raise ValueError(f"{path} needs max_symbols >= {info['max_symbols']}")
    state = ExecutionState(engine_config, retained_reports, retire=retire)
    for symbol_id, name in enumerate(info["symbols"]):
        state.add_symbol(symbol_id, name)
    for account_id in arrays["account_ids"].tolist():
        state.account_row(int(account_id))
    for key, name in info["accounts"].items():
        state.account_names[int(key)] = name
    rows = len(arrays["account_ids"])
    state.position[:rows] = arrays["position"]
    state.open_buy[:rows] = arrays["open_buy"]
    state.open_sell[:rows] = arrays["open_sell"]
    state.open_orders[:rows] = arrays["open_orders"]
    orders = arrays["orders"].astype(ORDER_DTYPE)
    # Snapshots from before retirement hold every order, row i = order id i + 1.
    order_ids = arrays["order_ids"] if "order_ids" in arrays else np.arange(1, len(orders) + 1)
    text = arrays["client_ids"].tobytes().decode("ascii")
    offset = 0
    client_ids = []
    for length in arrays["client_id_lengths"].tolist():
        client_ids.append(text[offset : offset + length])
        offset += length
    state.restore_orders(
        order_ids, orders, client_ids, info.get("order_count", len(orders)), info.get("order_base", 0)
    )
    state.next_input_seq = info["next_input_seq"]
    state.next_report_seq = info["next_report_seq"]
    state.next_trade_id = info["next_trade_id"]
    state.trades = info["trades"]
    state.traded_lots = info["traded_lots"]
    reports = arrays["reports"].astype(REPORT_DTYPE)
    state._retain(reports)
    state.retire_finished()  # a no-op but for a snapshot from before retirement
    books = np.split(arrays["book_orders"].astype(ORDER_INFO_DTYPE), np.cumsum(arrays["book_counts"])[:-1])
    last = [
        int(p) if has else None for p, has in zip(arrays["last_trade"], arrays["has_last_trade"], strict=True)
    ]
    if len(info["symbols"]):
        state.restore_books(books, last)
    return state, int(info["journal_seq"])


#: Take a snapshot once this many journal bytes were appended (or replayed) since the last one.
#: Bounds what a recovery replays (and the journal it opens) whatever the input rate and however
#: often the service is killed, where the input and time triggers may never fire.
DEFAULT_SNAPSHOT_EVERY_JOURNAL_BYTES = 16 * 1024 * 1024
#: A recovery that replayed at least this many journal bytes takes a snapshot right away (a service
#: killed more often than any other trigger fires would otherwise replay more at every restart).
DEFAULT_SNAPSHOT_AFTER_RECOVERY_BYTES = 1024 * 1024


class Snapshotter:
    """Takes snapshots when enough inputs, journal bytes or time have passed, off the order path.

    Triggers, whichever comes first (and only when something changed): ``snapshot_every_inputs``
    inputs, ``every_journal_bytes`` journal bytes (the replayed tail counts), ``snapshot_every_s``;
    and at once after a recovery that replayed ``after_recovery_bytes`` or more. After each snapshot
    the journal starts a new segment, so the next snapshot's truncation drops the covered records
    whole: the journal a recovery opens (and CRC-checks) holds about two snapshot intervals at most.

    Capturing copies the state on the event loop between batches (books via the engine's queries,
    the order table as one array copy); writing, the fsync, the wait for the ledger's high-water
    mark and the journal truncation run in a background task.
    """

    def __init__(
        self,
        config: ExecutionConfig,
        journal: Journal,
        ledger: Ledger | None,
        *,
        every_journal_bytes: int | None = None,
        after_recovery_bytes: int | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.ledger = ledger
        self.directory = config.snapshot_path()
        # Config fields when the config has them (HFTGATE_EXECUTION_SNAPSHOT_EVERY_JOURNAL_BYTES,
        # ..._SNAPSHOT_AFTER_RECOVERY_BYTES), else the module defaults; 0 disables either.
        self.every_journal_bytes: int = (
            every_journal_bytes
            if every_journal_bytes is not None
            else getattr(config, "snapshot_every_journal_bytes", DEFAULT_SNAPSHOT_EVERY_JOURNAL_BYTES)
        )
        self.after_recovery_bytes: int = (
            after_recovery_bytes
            if after_recovery_bytes is not None
            else getattr(config, "snapshot_after_recovery_bytes", DEFAULT_SNAPSHOT_AFTER_RECOVERY_BYTES)
        )
        self._state: ExecutionState | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_input_seq = 0
        self._last_journal_bytes = 0
        self._last_time = time.monotonic()
        self.taken = 0
        self.dropped = 0
        #: Why the last snapshot was started ("inputs", "journal_bytes", "time", "recovery").
        self.last_trigger = ""

    def attach(self, core: ExecutionCore) -> None:
        """Follow ``core``'s batches; on the loop, after recovery (the journal's replay is the tail)."""
        self._state = core.state
        self._last_input_seq = core.state.next_input_seq
        # The replayed tail is journal the next recovery replays too, until a snapshot covers it.
        self._last_journal_bytes = self.journal.bytes_appended - self.journal.replayed_bytes
        core._on_batch_applied = self.after_batch
        replayed = self.journal.replayed_bytes
        if self.after_recovery_bytes > 0 and replayed >= self.after_recovery_bytes:
            log.info(
                "recovery replayed %d journal record(s) (%d bytes): taking a snapshot now",
                self.journal.replayed_records,
                replayed,
            )
            self._take(core.state, "recovery")

    def after_batch(self) -> None:
        state = self._state
        if state is None or (self._task is not None and not self._task.done()):
            return
        every_inputs, every_s = self.config.snapshot_every_inputs, self.config.snapshot_every_s
        since = state.next_input_seq - self._last_input_seq
        every_bytes = self.every_journal_bytes
        if every_inputs > 0 and since >= every_inputs:
            trigger = "inputs"
        elif every_bytes > 0 and self.journal.bytes_appended - self._last_journal_bytes >= every_bytes:
            trigger = "journal_bytes"
        elif every_s > 0 and since > 0 and time.monotonic() - self._last_time >= every_s:
            trigger = "time"
        else:
            return
        self._take(state, trigger)

    def _take(self, state: ExecutionState, trigger: str) -> None:
        seq = self.journal.next_seq - 1
        data = capture(state, seq)
        self._last_input_seq = state.next_input_seq
        self._last_journal_bytes = self.journal.bytes_appended
        self._last_time = time.monotonic()
        self.last_trigger = trigger
        # What follows goes to a new segment: the next snapshot's truncation can drop this one whole.
        self.journal.request_rotation()
        self._task = asyncio.get_running_loop().create_task(self._finish(data), name="execution-snapshot")

    async def _finish(self, data: SnapshotData) -> None:
        try:
            while self.journal.durable_seq < data.journal_seq:
                await asyncio.sleep(0.001)
            pending = await asyncio.to_thread(write_pending, self.directory, data)
            if self.ledger is not None:
                try:
                    await self.ledger.wait_written_through(data.last_trade_id)
                except LedgerGap as gap:
                    pending.unlink(missing_ok=True)
                    self.dropped += 1
                    log.warning(
                        "snapshot at journal seq %d dropped: the ledger lacks a fill until a restart (%s)",
                        data.journal_seq,
                        gap,
                    )
                    return
            final = await asyncio.to_thread(confirm, pending)
            self.taken += 1
            log.info(
                "snapshot %s written (%d orders; trigger: %s)",
                final.name,
                len(data.arrays["orders"]),
                self.last_trigger,
            )
            if self.config.journal_truncate_after_snapshot:
                await self.journal.truncate_before(data.journal_seq + 1)
        except Exception:
            log.exception(
                "snapshot at journal seq %d failed; the journal still holds everything", data.journal_seq
            )

    async def settled(self) -> None:
        """Wait until the snapshot in progress, if any, is written (or has failed)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    async def close(self) -> None:
        await self.settled()
