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

Two writers make that archive. By default (``snapshot_in_child_process``, Linux) a forked child that
runs no Python writes it from its copy-on-write image of the service (:func:`start_writer`): the big
arrays go from memory as they lie, so ``orders`` / ``order_ids`` are the order table's rows as laid
out in state.py (the window's run(s), then every survivor row: a free one has id 0, survivors are
in row order) and the loader drops the free rows and sorts by id. The member's CRC-32 is in a data
descriptor after its data (only the child reads the data), which zipfile (and so ``np.load``)
checks on load like any other. Otherwise, or when no child can be made, the service copies the
state (:func:`capture`) and a thread streams it (:func:`write_pending`): retained orders by id.
:func:`load` reads both, and every archive written before either (``order_ids`` absent, or
sorted without free rows).

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
import functools
import io
import json
import logging
import os
import re
import signal
import struct
import sys
import time
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from hftgate import rows as order_rows
from hftgate.matching.engine import EngineConfig
from hftgate.matching.types import ORDER_INFO_DTYPE
from hftgate.native import memory, snapshot_writer
from hftgate.native.client_ids import ids_from_rows
from services.execution.config import ExecutionConfig
from services.execution.journal import Journal
from services.execution.ledger import Ledger, LedgerGap
from services.execution.state import ORDER_DTYPE, REPORT_DTYPE, ExecutionState

if TYPE_CHECKING:
    from services.execution.core import ExecutionCore

log = logging.getLogger(__name__)

_NAME = re.compile(r"^snapshot-(\d{20})\.npz$")
#: start_writer needs fork, a copy-on-write image of the process and prctl(PR_SET_PDEATHSIG): Linux.
_CAN_FORK = hasattr(os, "fork") and sys.platform.startswith("linux")


@dataclass(slots=True)
class SnapshotData:
    """A state captured on the event loop, to be written by a thread."""

    journal_seq: int
    arrays: dict[str, np.ndarray]
    #: The last trade id the state had assigned: the ledger must hold every fill up to it.
    last_trade_id: int = 0


def _info(state: ExecutionState, journal_seq: int) -> dict[str, object]:
    """The snapshot's ``info`` member: counters, symbol and account names (both writers)."""
    return {
        "journal_seq": journal_seq,
        "next_input_seq": state.next_input_seq,
        "next_report_seq": state.next_report_seq,
        "next_trade_id": state.next_trade_id,
        "trades": state.trades,
        "traded_lots": state.traded_lots,
        "order_count": state.order_count,
        "order_base": state.order_base,
        "symbols": state.symbol_names,
        "accounts": {str(k): v for k, v in state.account_names.items()},
        "max_symbols": state.engine_config.max_symbols,
    }


def capture(state: ExecutionState, journal_seq: int) -> SnapshotData:
    """Copy everything a snapshot needs (on the loop, between batches)."""
    books = state.engine_orders()
    last = state.last_trade_prices()
    order_ids, orders, ids = state.retained_orders()
    info = _info(state, journal_seq)
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
        "reports": state.retained_reports_after(0),  # (fancy indexing: already a copy)
        "info": np.frombuffer(json.dumps(info).encode("utf-8"), np.uint8).copy(),
    }
    return SnapshotData(journal_seq, arrays, state.next_trade_id - 1)


def path_for(directory: Path, journal_seq: int) -> Path:
    return directory / f"snapshot-{journal_seq:020d}.npz"


#: Bytes of an array handed to the file per write: the most a snapshot write holds besides the
#: captured arrays themselves (numpy's own ``savez`` copies each array whole, or in 16 MiB pieces).
WRITE_PIECE_BYTES = 1024 * 1024


def write_npz(file: BinaryIO, arrays: dict[str, np.ndarray], *, consume: bool = False) -> None:
    """Write ``arrays`` to ``file`` as an ``.npz`` archive (what ``np.savez`` writes and ``np.load``
    reads: one stored ``<name>.npy`` member per array), each array streamed from its own memory in
    :data:`WRITE_PIECE_BYTES` pieces: no copy of the archive or of an array is made.

    ``consume``: each array leaves ``arrays`` as soon as it is in the file, so a captured copy is
    freed while the rest are written, not after the whole archive and its fsync."""
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name in list(arrays):
            array = np.ascontiguousarray(arrays.pop(name) if consume else arrays[name])
            if array.dtype.hasobject:
                raise ValueError(f"snapshot array {name!r} holds Python objects")
            header = np.lib.format.header_data_from_array_1_0(array)
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                try:
                    np.lib.format.write_array_header_1_0(member, header)
                except ValueError:  # a header over 64 KiB (a very wide structured dtype)
                    np.lib.format.write_array_header_2_0(member, header)
                raw = (array.reshape(-1).view(np.uint8) if array.size else np.zeros(0, np.uint8)).data
                for start in range(0, len(raw), WRITE_PIECE_BYTES):
                    member.write(raw[start : start + WRITE_PIECE_BYTES])
            del array, raw  # (consume: the last reference to this copy)


def write_pending(directory: Path, data: SnapshotData) -> Path:
    """Write the snapshot durably as ``<name>.pending`` (blocking: call from a thread).

    Streamed straight into the file (:func:`write_npz`): the only large memory a snapshot holds is
    its captured arrays, never a second copy of them as one archive buffer, and each captured array
    is freed (``data.arrays`` emptied as it goes, the allocator's free pages handed back) once it
    is in the page cache, before the fsync: the copies live for the writes, not for the disk."""
    directory.mkdir(parents=True, exist_ok=True)
    final = path_for(directory, data.journal_seq)
    pending = final.with_name(final.name + ".pending")
    try:
        with open(pending, "wb") as file:
            write_npz(file, data.arrays, consume=True)
            file.flush()
            memory.release_free_memory()
            os.fsync(file.fileno())
    except BaseException:
        # A full disk: a half-written file must not keep the space the journal needs.
        pending.unlink(missing_ok=True)
        raise
    return pending


class WriterFailed(RuntimeError):
    """A snapshot writer child exited with an error, a signal, or was killed for taking too long."""


@dataclass(slots=True)
class _Member:
    """One ``<name>.npy`` member of the archive: an array of ``dtype`` and ``shape`` whose bytes are
    ``parts`` one after the other (C-contiguous views of the state's own arrays, or small copies)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    parts: list[np.ndarray]
    #: Whether ``parts`` are the state's own memory (else built for this snapshot).
    in_place: bool = True


def _ring_parts(ring: np.ndarray, first: int, count: int) -> list[np.ndarray]:
    """The ``count`` rows of ``ring`` from row ``first`` on, wrapping round: one or two views."""
    head = ring[first : min(first + count, len(ring))]
    return [head, ring[: count - len(head)]] if count > len(head) else [head]


def _members_in_memory(state: ExecutionState, journal_seq: int) -> list[_Member]:
    """The snapshot's arrays as they lie in ``state`` (on the loop, between batches).

    The big ones are views, not copies: the order table's window (its ring's one or two runs, in
    id order) then its survivor rows, with the row ids beside them, and the report ring's one or
    two runs in sequence order. The table is taken whole where that is simpler than picking: a
    free survivor row goes along with id 0, and survivors are in row order, not id order
    (:func:`load` drops the former and sorts). Only what is not an array in memory is built here:
    the books (the engine's queries), the client order ids (Python strings), the names (JSON).
    """
    window = state.order_count - state.order_base
    first = state.order_base & state._mask
    ring = state._ring

    def table_parts(array: np.ndarray) -> list[np.ndarray]:
        return [*_ring_parts(array[:ring], first, window), array[ring:]]

    order_parts = table_parts(state.table)
    id_parts = table_parts(state._slot_ids)
    # The client order ids in the rows' order (a free survivor row has none: length 0), as lengths
    # and one text, built without a Python string per order (state.py: CLIENT_ID_DTYPE) and read
    # from the rows in place: a joined copy of the id column would be 64 bytes an order.
    id_text, id_lengths = ids_from_rows(*table_parts(state._slot_client_ids))
    newest = state.next_report_seq - 1
    oldest = state.oldest_retained_report
    report_parts = _ring_parts(state.reports, (oldest - 1) % len(state.reports), max(0, newest - oldest + 1))
    books = state.engine_orders()
    last = state.last_trade_prices()
    rows = len(state._account_rows)
    info = _info(state, journal_seq)

    def whole(name: str, array: np.ndarray, *, in_place: bool = False) -> _Member:
        array = np.ascontiguousarray(array)  # (the view itself where it is contiguous)
        return _Member(name, array.dtype, array.shape, [array], in_place)

    def joined(name: str, parts: list[np.ndarray]) -> _Member:
        return _Member(name, parts[0].dtype, (sum(len(p) for p in parts),), parts)

    lengths = id_lengths
    return [
        whole("book_orders", np.concatenate(books) if books else np.zeros(0, ORDER_INFO_DTYPE)),
        whole("book_counts", np.array([len(b) for b in books], np.int64)),
        whole("last_trade", np.array([p if p is not None else 0 for p in last], np.int64)),
        whole("has_last_trade", np.array([p is not None for p in last], bool)),
        joined("orders", order_parts),
        joined("order_ids", id_parts),
        whole("client_id_lengths", lengths.astype(np.uint16) if lengths.max(initial=0) < 2**16 else lengths),
        whole("client_ids", np.frombuffer(id_text, np.uint8)),
        whole("position", state.position[:rows], in_place=True),
        whole("open_buy", state.open_buy[:rows], in_place=True),
        whole("open_sell", state.open_sell[:rows], in_place=True),
        whole("open_orders", state.open_orders[:rows], in_place=True),
        whole("account_ids", np.array(list(state._account_rows), np.uint64)),
        joined("reports", report_parts),
        whole("info", np.frombuffer(json.dumps(info).encode("utf-8"), np.uint8)),
    ]


# The zip archive (an ``.npz``) the child writes, built to PKWARE's APPNOTE: stored members, zip64
# sizes and offsets (so no size limit), and each member's CRC-32 in a data descriptor after its data
# (flag bit 3), where only the child, reading the data, can compute it.
_ZIP_VERSION = 45  # 4.5: zip64
_ZIP_MADE_BY = (3 << 8) | _ZIP_VERSION  # on Unix
_ZIP_FLAGS = 0x08  # CRC-32 and sizes follow the data (a data descriptor)
_ZIP_DATE = (1 << 5) | 1  # 1980-01-01 00:00, the earliest a zip can say (no clock in a snapshot)
_ZIP_ATTRIBUTES = 0o600 << 16
_ZIP64_MARK = 0xFFFFFFFF
_BYTES, _CRC = snapshot_writer.PIECE_BYTES, snapshot_writer.PIECE_CRC


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    out = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(out, header)
    except ValueError:  # a header over 64 KiB (a very wide structured dtype)
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, header)
    return out.getvalue()


_Piece = tuple[int, "bytes | np.ndarray | None", int]  # (kind, bytes, CRC slot or -1)


def _zip_pieces(members: list[_Member]) -> list[_Piece]:
    """What the child writes, in order: the archive's headers (made here) around the members' bytes
    (read in the child), with a CRC piece wherever the archive states a member's checksum."""
    pieces: list[_Piece] = []
    central: list[_Piece] = []
    offset = 0
    for slot, member in enumerate(members):
        if member.dtype.hasobject:
            raise ValueError(f"snapshot array {member.name!r} holds Python objects")
        name = (member.name + ".npy").encode("ascii")
        header = _npy_header(member.dtype, member.shape)
        size = len(header) + sum(part.nbytes for part in member.parts)
        # (Sizes 0xFFFFFFFF: see the zip64 field, whose sizes are 0 here: see the data descriptor.)
        local = (
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                _ZIP_VERSION,
                _ZIP_FLAGS,
                0,
                0,
                _ZIP_DATE,
                0,
                _ZIP64_MARK,
                _ZIP64_MARK,
                len(name),
                20,
            )
            + name
            + struct.pack("<HHQQ", 0x0001, 16, 0, 0)
        )
        pieces.append((_BYTES, local, -1))
        pieces.append((_BYTES, header, slot))
        pieces.extend((_BYTES, part, slot) for part in member.parts)
        pieces.append((_BYTES, struct.pack("<I", 0x08074B50), -1))
        pieces.append((_CRC, None, slot))
        pieces.append((_BYTES, struct.pack("<QQ", size, size), -1))
        central.append(
            (
                _BYTES,
                struct.pack("<IHHHHHH", 0x02014B50, _ZIP_MADE_BY, _ZIP_VERSION, _ZIP_FLAGS, 0, 0, _ZIP_DATE),
                -1,
            )
        )
        central.append((_CRC, None, slot))
        central.append(
            (
                _BYTES,
                struct.pack(
                    "<IIHHHHHII",
                    _ZIP64_MARK,
                    _ZIP64_MARK,
                    len(name),
                    28,
                    0,
                    0,
                    0,
                    _ZIP_ATTRIBUTES,
                    _ZIP64_MARK,
                )
                + name
                + struct.pack("<HHQQQ", 0x0001, 24, size, size, offset),
                -1,
            )
        )
        offset += len(local) + size + 4 + 4 + 16
    directory_size = sum(len(data) if isinstance(data, bytes) else 4 for _, data, _ in central)
    count = len(members)
    end = (
        struct.pack(
            "<IQHHIIQQQQ",
            0x06064B50,
            44,
            _ZIP_MADE_BY,
            _ZIP_VERSION,
            0,
            0,
            count,
            count,
            directory_size,
            offset,
        )
        + struct.pack("<IIQI", 0x07064B50, 0, offset + directory_size, 1)
        + struct.pack(
            "<IHHHHIIH", 0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF), _ZIP64_MARK, _ZIP64_MARK, 0
        )
    )
    return [*pieces, *central, (_BYTES, end, -1)]


@dataclass(slots=True)
class WriterChild:
    """A writer child started by :func:`start_writer`."""

    pid: int
    #: Bytes it writes from the state's memory as they lie (nothing copied for them).
    referenced_bytes: int
    #: Bytes built on the loop for it (books, client ids, names, the archive's headers).
    built_bytes: int
    #: How long the fork itself held the loop.
    fork_s: float

    def describe(self) -> str:
        return (
            f"by writer process {self.pid}: {self.referenced_bytes / 2**20:.1f} MB from memory as it lay, "
            f"{self.built_bytes / 2**20:.2f} MB built on the loop, fork {self.fork_s * 1e3:.1f} ms"
        )


def start_writer(state: ExecutionState, journal_seq: int, directory: Path) -> WriterChild:
    """Fork a child that writes the snapshot of ``state`` as ``<name>.pending`` (on the loop, between
    batches; reap it with :func:`wait_writer`).

    The child runs no Python (native/src/snapshot_writer.c): it writes the regions listed here
    (:func:`_members_in_memory`, :func:`_zip_pieces`) from its copy-on-write image of this process,
    fsyncs and exits. So the service copies none of the big arrays (the snapshot costs the loop the
    small parts and the fork, which copies the page tables: milliseconds for a few hundred MB) and
    holds no copy of them; what the snapshot adds to memory is the pages the order path changes
    while the child writes, held by the child (their old versions) and freed when it exits. A child of this
    multithreaded process (gRPC's threads, the journal writer's) cannot safely run Python; this one
    only makes system calls. OSError when no child could be made."""
    directory.mkdir(parents=True, exist_ok=True)
    pending = os.fsencode(path_for(directory, journal_seq)) + b".pending"
    members = _members_in_memory(state, journal_seq)
    plan = _zip_pieces(members)
    referenced = sum(part.nbytes for m in members if m.in_place for part in m.parts)
    built = sum(len(data) for _, data, _ in plan if isinstance(data, bytes))
    built += sum(part.nbytes for m in members if not m.in_place for part in m.parts)
    pid, fork_s = snapshot_writer.fork_writer(pending, plan)
    return WriterChild(pid, referenced, built, fork_s)


#: What a writer child's exit code means.
WRITER_EXIT_MEANINGS = snapshot_writer.EXIT_MEANINGS


def fork_writer(state: ExecutionState, journal_seq: int, directory: Path) -> int:
    """:func:`start_writer`; the child's pid."""
    return start_writer(state, journal_seq, directory).pid


#: How long a writer child may take before it is killed (its snapshot abandoned): a child stuck on
#: a disk that does not answer must not stop snapshots for good.
WRITER_TIMEOUT_S = 300.0
#: Writer children failing in a row before snapshots are captured in the service instead.
MAX_WRITER_FAILURES = 3


def wait_writer(pid: int, timeout_s: float = WRITER_TIMEOUT_S) -> int:
    """Reap the writer child ``pid`` (blocking); its exit code, negative for a signal. A child
    still running after ``timeout_s`` is killed (SIGKILL) and reaped."""
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: its outcome is unknown
            return -1
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                return -1
            return os.waitstatus_to_exitcode(status)
        time.sleep(delay)
        delay = min(0.05, delay * 2)


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
    # A snapshot a writer child wrote holds the table as it lay in memory: free rows (id 0) too,
    # and the survivors in row order. restore_orders wants the retained orders by ascending id.
    held = np.flatnonzero(order_ids)
    if len(held) < len(order_ids) or np.any(np.diff(order_ids) < 0):
        held = held[np.argsort(order_ids[held], kind="stable")]
        orders, order_ids = order_rows.take(orders, held), order_ids[held]  # (whole records: hftgate.rows)
        client_ids = [client_ids[i] for i in held.tolist()]
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
#: The inputs and journal-bytes triggers wait this long after the last snapshot (Snapshotter).
DEFAULT_SNAPSHOT_MIN_INTERVAL_S = 2.0
#: A recovery that replayed at least this many journal bytes takes a snapshot right away (a service
#: killed more often than any other trigger fires would otherwise replay more at every restart).
DEFAULT_SNAPSHOT_AFTER_RECOVERY_BYTES = 1024 * 1024


class Snapshotter:
    """Takes snapshots when enough inputs, journal bytes or time have passed, off the order path.

    Triggers, whichever comes first (and only when something changed): ``snapshot_every_inputs``
    inputs, ``every_journal_bytes`` journal bytes (the replayed tail counts), ``snapshot_every_s``;
    and at once after a recovery that replayed ``after_recovery_bytes`` or more. The inputs and
    journal-bytes triggers wait until ``min_interval_s`` has passed since the last snapshot
    started (or this object was made): under a sustained flood they would otherwise fire several
    times a second, each snapshot costing the loop its fork and a page fault per page written while
    the child lives (a quarter of SubmitOrderColumns' throughput at 16 MB of journal a snapshot).
    After each snapshot the journal starts a new segment, so the next snapshot's truncation drops
    the covered records whole: the journal a recovery opens (and CRC-checks) holds about two
    snapshot intervals at most.

    A snapshot starts on the event loop between batches. With ``in_child_process`` (the default
    on Linux: see ``snapshot_in_child_process`` in config.py) a forked child that runs no Python
    writes the state's arrays from its copy-on-write image of the process (:func:`start_writer`),
    so the service copies none of them; otherwise, where fork is unavailable or fails, or after
    MAX_WRITER_FAILURES failed children in a row, the state is copied here (books via the engine's
    queries, the order table as one array copy) and written by a thread.
    Writing, the fsync, the wait for the ledger's high-water mark and the journal truncation run in
    a background task.
    """

    def __init__(
        self,
        config: ExecutionConfig,
        journal: Journal,
        ledger: Ledger | None,
        *,
        every_journal_bytes: int | None = None,
        after_recovery_bytes: int | None = None,
        in_child_process: bool | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.ledger = ledger
        self.directory = config.snapshot_path()
        #: Whether snapshots are written by a forked child (start_writer) rather than captured here.
        self.in_child_process: bool = (
            in_child_process
            if in_child_process is not None
            else getattr(config, "snapshot_in_child_process", False)
        ) and _CAN_FORK
        #: Writer children that failed in a row (MAX_WRITER_FAILURES switches to capturing here).
        self.writer_failures = 0
        #: The writer child of the latest snapshot (None: captured in the service).
        self.last_writer: WriterChild | None = None
        # A capture here allocates and frees tens of MB: with glibc's dynamic threshold that memory
        # would move onto the heap and stay resident for good after the first snapshot.
        memory.pin_mmap_threshold()
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
        self.min_interval_s: float = getattr(
            config, "snapshot_min_interval_s", DEFAULT_SNAPSHOT_MIN_INTERVAL_S
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
        trigger = self.trigger_due(state, time.monotonic())
        if trigger:
            self._take(state, trigger)

    def trigger_due(self, state: ExecutionState, now: float) -> str:
        """The trigger that calls for a snapshot of ``state`` at ``now`` (time.monotonic()), or ""."""
        every_inputs, every_s = self.config.snapshot_every_inputs, self.config.snapshot_every_s
        since = state.next_input_seq - self._last_input_seq
        every_bytes = self.every_journal_bytes
        elapsed = now - self._last_time
        if elapsed >= self.min_interval_s:
            if every_inputs > 0 and since >= every_inputs:
                return "inputs"
            if every_bytes > 0 and self.journal.bytes_appended - self._last_journal_bytes >= every_bytes:
                return "journal_bytes"
        if every_s > 0 and since > 0 and elapsed >= every_s:
            return "time"
        return ""

    def _take(self, state: ExecutionState, trigger: str) -> None:
        seq = self.journal.next_seq - 1
        last_trade_id, orders = state.next_trade_id - 1, state.retained_order_count
        write: Callable[[], Awaitable[Path]]
        child: WriterChild | None = None
        if self.in_child_process:
            try:
                child = start_writer(state, seq, self.directory)
            except Exception as exc:  # no memory or no process left for a child: copy here instead
                log.warning("snapshot writer process not started (%s); capturing in the service", exc)
        self.last_writer = child
        if child is not None:
            write = functools.partial(self._reap_writer, child.pid, path_for(self.directory, seq))
        else:
            data = capture(state, seq)
            write = functools.partial(asyncio.to_thread, self._write, data)
        self._last_input_seq = state.next_input_seq
        self._last_journal_bytes = self.journal.bytes_appended
        self._last_time = time.monotonic()
        self.last_trigger = trigger
        # What follows goes to a new segment: the next snapshot's truncation can drop this one whole.
        self.journal.request_rotation()
        self._task = asyncio.get_running_loop().create_task(
            self._finish(seq, last_trade_id, orders, write), name="execution-snapshot"
        )

    async def _finish(
        self, journal_seq: int, last_trade_id: int, orders: int, write: Callable[[], Awaitable[Path]]
    ) -> None:
        try:
            pending = await write()
            # Confirmed only once the journal holds everything the snapshot covers.
            while self.journal.durable_seq < journal_seq:
                await asyncio.sleep(0.001)
            if self.ledger is not None:
                try:
                    await self.ledger.wait_written_through(last_trade_id)
                except LedgerGap as gap:
                    pending.unlink(missing_ok=True)
                    self.dropped += 1
                    log.warning(
                        "snapshot at journal seq %d dropped: the ledger lacks a fill until a restart (%s)",
                        journal_seq,
                        gap,
                    )
                    return
            final = await asyncio.to_thread(confirm, pending)
            self.taken += 1
            child = self.last_writer
            log.info(
                "snapshot %s written (%d orders; trigger: %s; %s)",
                final.name,
                orders,
                self.last_trigger,
                "captured in the service" if child is None else child.describe(),
            )
            if self.config.journal_truncate_after_snapshot:
                await self.journal.truncate_before(journal_seq + 1)
        except WriterFailed as failed:
            self.writer_failures += 1
            log.error(
                "snapshot at journal seq %d failed (%s); the journal still holds everything",
                journal_seq,
                failed,
            )
            if self.in_child_process and self.writer_failures >= MAX_WRITER_FAILURES:
                self.in_child_process = False
                log.error(
                    "%d snapshot writer processes failed in a row: capturing in the service from now on",
                    self.writer_failures,
                )
            return
        except Exception:
            log.exception(
                "snapshot at journal seq %d failed; the journal still holds everything", journal_seq
            )
            return
        self.writer_failures = 0

    def _write(self, data: SnapshotData) -> Path:
        """:func:`write_pending` in this process (in the writer thread: it frees the captured copies
        as it writes them, and ``malloc_trim`` walks the heap)."""
        return write_pending(self.directory, data)

    @staticmethod
    async def _reap_writer(pid: int, final: Path) -> Path:
        """Wait (in a thread) for the child of :func:`start_writer`; its pending file once it succeeded."""
        pending = final.with_name(final.name + ".pending")
        code = await asyncio.to_thread(wait_writer, pid)
        if code != 0:
            pending.unlink(missing_ok=True)
            meaning = WRITER_EXIT_MEANINGS.get(code, "killed by a signal" if code < 0 else "failed")
            raise WriterFailed(f"the snapshot writer process {pid} exited with {code} ({meaning})")
        return pending

    async def settled(self) -> None:
        """Wait until the snapshot in progress, if any, is written (or has failed)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    async def close(self) -> None:
        await self.settled()
