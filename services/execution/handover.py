"""Handing one symbol's book from one execution shard to another (issue #15), without gRPC.

The old owner **exports** (:func:`export_book`): the symbol's working orders as the engine holds
them - resting bids then asks, each in time priority, then pending stops in trigger order - with
what the order table knows of each (account, client order id, the client's type, price,
protection, time in force, self-trade prevention, priority) and its public id.

The new owner **imports** (:meth:`Handover.import_book`): the orders become one ordinary journal
batch of new orders, in that same order, so that

* a restart rebuilds them from the journal (or a snapshot) like any other input, with no new
  record type for recovery to learn;
* each price level keeps its time priority (the orders are entered oldest first and nothing
  else is in the symbol's book: the symbol was moving, no shard took input for it);
* the orders keep their **original ids**: the shard gives them local ids, and a table of
  (local id -> original public id) translates every id that comes in (cancel, replace, get)
  or goes out (acks, reports, ledger rows). The table is written (fsync, rename) once the
  batch is durable; a crash in between is repaired when the import is sent again (the orders
  are found by account and client order id, which a shard keeps unique per account).

Fills before the move: the new shard's copy of an order is entered with its open quantity; the
lots and notional it had filled are kept in the id table and added back wherever the order is
shown (GetOrder, acks, reports: quantity and cumulative quantity as the client knew them) and
taken off a replace's total quantity (which counts fills, as the API says). The fills themselves
stay in the old shard's history and the ledger.

What a move does not carry over, by design of this one-record import (documented in the
README's move section): an iceberg shows a full slice again (its reserve is kept); the symbol's
last trade price, which stops compare with, starts unset on the new shard; report sequence
numbers are per shard (each moved order gets one NEW report on the new shard, with its original
id).

The old owner then records the symbol **handed over** (:meth:`Handover.release`): its copies of
the orders stay in its book and history (GetOrder of a finished order still answers there), but
the fence (fencing.py) answers a cancel, replace or get of a working one with NOT_SHARD_OWNER
naming the new owner.

**The way back** (a shard retired, execution scaled back down): a symbol may move back to a shard
that handed it over. Its frozen copies are stale (the orders traded, were cancelled or replaced
since on the shards that held them), so the import first journals a ``RECORD_PURGE`` of the
symbol (:meth:`~services.execution.state.ExecutionState.purge_symbol`: the copies leave the book
and the exposure, their client order ids are free, no report is made) and then the book it is
sent, in the same loop step; the orders born here come back under their original ids like any
other (the id table maps them to their new local ids). Once that is durable the symbol is no
longer recorded handed over. A restart replays the purge, then the batch.

Bounds: a move carries at most :data:`MAX_MOVED_ORDERS` orders; a shard keeps at most
:data:`MAX_TAKEN_OVER_ORDERS` translated ids (an import past that is refused).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hftgate.matching.types import COMMAND_DTYPE, Action
from hftgate.matching.types import OrderType as EngineType
from hftgate.v1 import shard_admin_pb2 as admin
from services.execution.admission import KIND_REPLACE, Inputs
from services.execution.core import ExecutionCore
from services.execution.records import (
    META_DTYPE,
    RECORD_ACCOUNT,
    RECORD_BATCH,
    RECORD_PURGE,
    RECORD_SYMBOL,
    Batch,
    encode_account,
    encode_batch,
    encode_purge,
    encode_symbol,
)
from services.execution.state import OPEN_STATUSES, REJECTED, ExecutionState

log = logging.getLogger(__name__)

#: Orders one move may carry (one journal record; the engine's live-order pool bounds it too).
MAX_MOVED_ORDERS = 100_000
#: Translated ids a shard keeps (orders taken over by moves), across all moves.
MAX_TAKEN_OVER_ORDERS = 1_000_000
#: How long an export waits for the journal to make what it took durable.
DURABLE_WAIT_S = 10.0
MOVES_DIR = "moves"
HANDED_OVER_FILE = "handed-over.json"
_MOVE_ID = re.compile(r"[!-~]{1,64}")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class HandoverRefused(Exception):
    """A step that cannot be done now (the message says why); nothing was changed."""


def check_move_id(move_id: str) -> None:
    if not _MOVE_ID.fullmatch(move_id or ""):
        raise HandoverRefused(f"move id {move_id[:64]!r} must be 1..64 printable ASCII characters")


def export_book(
    state: ExecutionState,
    symbol: str,
    public_of: dict[int, int],
    shard_base: int,
    carried: dict[int, tuple[int, int]] | None = None,
) -> admin.MovedBook:
    """The working orders of ``symbol`` as columns, in the order they must be re-entered (see
    the module docstring); ``public_of`` maps local ids of orders this shard took over to their
    original ids, ``carried`` their fills before they came here (lots, notional)."""
    book = admin.MovedBook()
    symbol_id = state.symbol_ids.get(symbol)
    if symbol_id is None:
        return book
    infos = state.handed_over_orders(symbol_id)
    if len(infos) > MAX_MOVED_ORDERS:
        raise HandoverRefused(
            f"{symbol} has {len(infos)} working orders: a move carries at most {MAX_MOVED_ORDERS}"
        )
    # Column by column from numpy into the message's packed columns: one move carries up to
    # MAX_MOVED_ORDERS orders while its symbol refuses input, and a message per order cost
    # ~6 us per order to build (measured), besides its encoding and decoding on the way.
    locals_ = infos["order_id"].astype(np.int64)
    slots = state.slots_of(locals_)
    if (slots < 0).any():  # every working order is retained (state.py)
        missing = int(locals_[np.argmax(slots < 0)])
        raise HandoverRefused(f"working order {missing} of {symbol} has no order row: cannot export it")
    rows = state.table[slots]
    pending = infos["is_pending_stop"].astype(bool)
    engine_types = infos["order_type"].astype(np.int64)
    # A triggered stop-limit rests as the limit order it became.
    engine_types[~pending & (engine_types == int(EngineType.STOP_LIMIT))] = int(EngineType.LIMIT)
    stops = np.where(pending, infos["stop_price"], 0)
    carried = carried or {}
    names = state.account_names
    account_ids = rows["account_id"].tolist()
    before = [carried.get(local, (0, 0)) for local in locals_.tolist()] if carried else None
    quantity, cum, notional = rows["quantity"].tolist(), rows["cum"].tolist(), rows["notional"].tolist()
    if before is not None:
        quantity = [q + b[0] for q, b in zip(quantity, before, strict=True)]
        cum = [c + b[0] for c, b in zip(cum, before, strict=True)]
        notional = [n + b[1] for n, b in zip(notional, before, strict=True)]
    columns: dict[str, list[Any]] = {
        "original_order_id": [public_of.get(local, local | shard_base) for local in locals_.tolist()],
        "account_id": account_ids,
        "account_name": [names.get(account_id, str(account_id)) for account_id in account_ids],
        "client_order_id": [state.client_id_at(slot) for slot in slots.tolist()],
        "side": infos["side"].tolist(),
        "order_type": rows["order_type"].tolist(),
        "engine_order_type": engine_types.tolist(),
        "time_in_force": rows["tif"].tolist(),
        "engine_price_ticks": infos["price"].tolist(),
        "price_ticks": rows["price"].tolist(),
        "stop_price_ticks": stops.tolist(),
        "leaves_quantity_lots": rows["leaves"].tolist(),
        "display_quantity_lots": infos["display_qty"].tolist(),
        "protection_price_ticks": rows["protection"].tolist(),
        "post_only": rows["post_only"].astype(bool).tolist(),
        "self_trade_prevention": rows["stp"].tolist(),
        "priority": rows["priority"].tolist(),
        "pending_stop": pending.tolist(),
        "engine_stp_mode": infos["stp_mode"].tolist(),
        "engine_flags": infos["flags"].tolist(),
        "quantity_lots": quantity,
        "cum_quantity_lots": cum,
        "cum_notional": notional,
    }
    for name, values in columns.items():
        getattr(book, name).extend(values)
    return book


#: The columns of a MovedBook: MovedOrder's fields under the same names (a test checks it).
BOOK_COLUMNS: tuple[str, ...] = tuple(f.name for f in admin.MovedBook.DESCRIPTOR.fields)


def book_length(book: admin.MovedBook) -> int:
    """The number of orders in ``book``; HandoverRefused when its columns differ in length."""
    lengths = {name: len(getattr(book, name)) for name in BOOK_COLUMNS}
    count = lengths[BOOK_COLUMNS[0]]
    odd = [name for name, length in lengths.items() if length != count]
    if odd:
        raise HandoverRefused(
            f"the book's columns differ in length: {BOOK_COLUMNS[0]} has {count} entries, "
            f"{odd[0]} has {lengths[odd[0]]}"
        )
    return count


def rows_of_book(book: admin.MovedBook) -> list[admin.MovedOrder]:
    """The book as MovedOrder rows (the form callers from before MovedBook send and expect)."""
    columns = [getattr(book, name) for name in BOOK_COLUMNS]
    return [
        admin.MovedOrder(**dict(zip(BOOK_COLUMNS, values, strict=True)))
        for values in zip(*columns, strict=True)
    ]


def book_of_rows(orders: list[admin.MovedOrder]) -> admin.MovedBook:
    """MovedOrder rows as a book of columns."""
    book = admin.MovedBook()
    for name in BOOK_COLUMNS:
        getattr(book, name).extend([getattr(order, name) for order in orders])
    return book


def _write_durably(path: Path, body: dict[str, object]) -> None:
    """Write ``body`` as JSON to ``path`` so that a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    # json.dumps, not json.dump: dump streams through the pure-Python encoder (~10 ms for a
    # 1,000-order id table, measured), dumps uses the C one.
    text = json.dumps(body, separators=(",", ":"))
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_taken_over(state_dir: Path) -> dict[int, int]:
    """local id -> original public id of every order moves gave the shard of ``state_dir``."""
    return {local: original for local, (original, _, _) in _read_tables(state_dir).items()}


def _read_tables(state_dir: Path) -> dict[int, tuple[int, int, int]]:
    """local id -> (original id, lots and notional filled before the move) from the id tables."""
    taken: dict[int, tuple[int, int, int]] = {}
    for path in sorted((state_dir / MOVES_DIR).glob("import-*.json")):
        body = json.loads(path.read_text(encoding="utf-8"))
        for entry in body.get("ids", []):
            original, local, *before = (int(v) for v in entry)
            lots, notional = [*before, 0, 0][:2]
            taken[local] = (original, lots, notional)
    # Oldest import first (local ids grow with time; move ids do not sort by it): an order that came
    # back more than once is named by its latest local id.
    return dict(sorted(taken.items()))


@dataclass(frozen=True, slots=True)
class ImportResult:
    orders: int
    already_imported: bool
    journal_seq: int


class Handover:
    """One shard's side of moves: the ids it took over and the symbols it handed over, both
    durable under ``<state dir>/moves/``. One per shard, on the shard's event loop."""

    def __init__(self, core: ExecutionCore, state_dir: Path, shard_id: int, shard_base: int) -> None:
        self.core = core
        self.directory = state_dir / MOVES_DIR
        self.shard_id = shard_id
        self.shard_base = shard_base
        #: local id -> original public id (shared with the core: it translates ledger rows).
        self.original_of: dict[int, int] = core.publisher.original_ids
        #: original public id -> local id (what cancels and gets name).
        self.local_of: dict[int, int] = {}
        #: the id this shard would show (local | shard base) -> original public id.
        self.shown_to_original: dict[int, int] = {}
        #: symbol -> the shard its book went to.
        self.handed_over: dict[str, int] = {}
        #: symbol handed over -> the highest order id this shard had handed out when it released it:
        #: its frozen copies have ids up to that one, a book taken back gets higher ones.
        self.released_after: dict[str, int] = {}
        #: local id -> (lots, notional) a taken-over order had filled before it came here: added
        #: to what GetOrder, acks and reports show, and taken off a replace's total quantity.
        self.carried: dict[int, tuple[int, int]] = {}
        #: the id this shard would show -> lots filled before the move (for the reply paths).
        self.carried_by_shown: dict[int, int] = {}

    # --- start-up ----------------------------------------------------------------------------
    def load(self) -> None:
        """Read what earlier moves left (after recovery, before serving)."""
        handed = self.directory / HANDED_OVER_FILE
        if handed.exists():
            body = json.loads(handed.read_text(encoding="utf-8"))
            self.handed_over.update({str(k): int(v) for k, v in body.get("symbols", {}).items()})
            released = body.get("released_after", {})
            # (A file of an older version has no bounds: no book was ever taken back then, so every
            # working order of a handed-over symbol here is a frozen copy.)
            count = self.core.state.order_count
            self.released_after.update({s: int(released.get(s, count)) for s in self.handed_over})
        for local, (original, lots, notional) in _read_tables(self.directory.parent).items():
            self._take(original, local, lots, notional)
        if self.local_of or self.handed_over:
            log.info(
                "moves: %d order id(s) taken over, %d symbol(s) handed over (%s)",
                len(self.local_of),
                len(self.handed_over),
                ", ".join(sorted(self.handed_over)[:5]),
            )

    def _take(self, original: int, local: int, lots: int = 0, notional: int = 0) -> None:
        self.original_of[local] = original
        self.local_of[original] = local
        self.shown_to_original[local | self.shard_base] = original
        if lots:
            self.carried[local] = (lots, notional)
            self.carried_by_shown[local | self.shard_base] = lots

    # --- ids ---------------------------------------------------------------------------------
    def local_id(self, public_id: int) -> int | None:
        """The local id of a taken-over order named by its original id, or None."""
        return self.local_of.get(public_id) if self.local_of else None

    def shown(self, shown_id: int) -> int:
        """The id a client must see for an id this shard would show (its original, when taken over)."""
        return self.shown_to_original.get(shown_id, shown_id)

    def local_total(self, order_id: int, quantity: int) -> int:
        """A replace's total quantity (fills included) for the order's copy here: less what a
        taken-over order had filled before its move (-1, refused as INVALID_QUANTITY, when that
        leaves nothing)."""
        if not quantity or not self.carried:
            return quantity
        lots = self.carried.get(order_id, (0, 0))[0]
        if not lots:
            return quantity
        return quantity - lots if quantity > lots else -1

    def localize_inputs(self, inputs: Inputs, account_id: int) -> None:
        """Stream targets naming orders a move brought here by their original ids: to local ids
        (which codec.localize_targets then leaves alone: they carry no shard bits of another);
        a replace of such an order gets its total quantity as the copy here counts it."""
        if not self.local_of:
            return
        targets = inputs.target_ids
        kinds = inputs.kind.tolist()
        state = self.core.state
        for position, target in enumerate(targets.tolist()):
            local = self.local_id(target) if target > 0 else None
            if local is not None:
                targets[position] = local | self.shard_base
            elif target == 0 and kinds[position] == KIND_REPLACE and inputs.client_ids[position]:
                local = state.order_id_for(account_id, inputs.client_ids[position]) or None
            if local is not None and kinds[position] == KIND_REPLACE:
                quantity = inputs.orders["quantity"]
                quantity[position] = self.local_total(local, int(quantity[position]))

    # --- the old owner -----------------------------------------------------------------------
    async def export(self, symbol: str) -> admin.MovedBook:
        """The book of ``symbol`` once everything journaled is durable. The caller has checked
        that the map marks the symbol moving: no input for it is journaled after this point."""
        journal = self.core.journal
        target = journal.next_seq - 1
        deadline = time.monotonic() + DURABLE_WAIT_S
        while journal.durable_seq < target:
            if time.monotonic() > deadline:
                raise HandoverRefused(
                    f"the journal made seq {journal.durable_seq} of {target} durable in {DURABLE_WAIT_S:g} s"
                )
            await asyncio.sleep(0.001)
        return export_book(self.core.state, symbol, self.original_of, self.shard_base, self.carried)

    def release(self, symbol: str, to_shard_id: int) -> bool:
        """Record ``symbol`` handed over to ``to_shard_id``; False when it already was."""
        if self.handed_over.get(symbol) == to_shard_id:
            return False
        released = {**self.released_after, symbol: self.core.state.order_count}
        self._record({**self.handed_over, symbol: to_shard_id}, released)
        log.info("moves: %s handed over to shard %d", symbol, to_shard_id)
        return True

    def _taken_back(self, symbol: str) -> None:
        """Record that ``symbol``'s book is this shard's again (its import is durable)."""
        if symbol not in self.handed_over:
            return
        symbols = {s: t for s, t in self.handed_over.items() if s != symbol}
        self._record(symbols, {s: n for s, n in self.released_after.items() if s != symbol})
        log.info("moves: %s taken back", symbol)

    def _record(self, symbols: dict[str, int], released_after: dict[str, int]) -> None:
        _write_durably(
            self.directory / HANDED_OVER_FILE, {"symbols": symbols, "released_after": released_after}
        )
        # In place: the fence holds this same dict.
        for gone in set(self.handed_over) - set(symbols):
            del self.handed_over[gone]
        self.handed_over.update(symbols)
        self.released_after.clear()
        self.released_after.update(released_after)

    def _frozen_up_to(self, symbol: str) -> int:
        """The highest id of this shard's frozen copies of ``symbol`` (0: it holds none)."""
        return self.released_after.get(symbol, 0) if symbol in self.handed_over else 0

    # --- the new owner -----------------------------------------------------------------------
    def _already_imported(self, symbol: str, book: admin.MovedBook) -> list[int] | None:
        """The local ids of a move's orders when they are already in this shard's book, else None."""
        state = self.core.state
        symbol_id = state.symbol_ids.get(symbol)
        if symbol_id is None or not book.original_order_id:
            return None
        frozen_up_to = self._frozen_up_to(symbol)
        found = [
            state.order_id_for(account_id, client_id)
            for account_id, client_id in zip(book.account_id, book.client_order_id, strict=True)
        ]
        if min(found) <= frozen_up_to:  # not held, or only as a frozen copy (which is not it)
            return None
        slots = state.slots_of(np.array(found, np.int64))
        if (slots < 0).any():
            return None
        rows = state.table[slots]
        if (rows["symbol_id"] != symbol_id).any() or (rows["status"] == REJECTED).any():
            return None
        return found

    def _check_importable(self, symbol: str, book: admin.MovedBook, count: int) -> None:
        state = self.core.state
        if count > MAX_MOVED_ORDERS:
            raise HandoverRefused(f"{count} orders: a move carries at most {MAX_MOVED_ORDERS}")
        if len(self.local_of) + count > MAX_TAKEN_OVER_ORDERS:
            raise HandoverRefused(
                f"shard {self.shard_id} holds {len(self.local_of)} taken-over ids; {count} more "
                f"exceed the limit of {MAX_TAKEN_OVER_ORDERS}"
            )
        symbol_id = state.symbol_ids.get(symbol)
        frozen_up_to = self._frozen_up_to(symbol)
        if symbol_id is not None:
            # Working orders of the symbol other than frozen copies (which the import purges): a
            # book this shard did not hand over (the map gave it the symbol some other way).
            held = int((state.handed_over_orders(symbol_id)["order_id"] > frozen_up_to).sum())
            if held:
                raise HandoverRefused(
                    f"shard {self.shard_id} already holds {held} working order(s) of {symbol} that it "
                    "did not hand over: it cannot take another book of that symbol"
                )
        elif len(state.symbol_names) >= state.engine_config.max_symbols:
            raise HandoverRefused(f"shard {self.shard_id} has no engine book left for {symbol} (max_symbols)")
        client_ids = list(book.client_order_id)
        if not all(client_ids) or not "".join(client_ids).isascii():
            bad = next(i for i, c in enumerate(client_ids) if not c or not c.isascii())
            raise HandoverRefused(f"order {book.original_order_id[bad]}: client order id must be ASCII")
        locals_ = [
            state.order_id_for(account_id, client_id)
            for account_id, client_id in zip(book.account_id, client_ids, strict=True)
        ]
        if not any(locals_):
            return
        # A client order id may be in use here only by a working frozen copy of this symbol (the
        # import purges those first).
        held_ids = np.array(locals_, np.int64)
        slots = state.slots_of(held_ids)
        rows = state.table[slots]  # (row -1 where not retained: masked below)
        copy = (held_ids <= frozen_up_to) & (slots >= 0) & np.isin(rows["status"], OPEN_STATUSES)
        copy &= rows["symbol_id"] == (symbol_id if symbol_id is not None else -1)
        clash = (held_ids != 0) & ~copy
        if clash.any():
            i = int(np.argmax(clash))
            raise HandoverRefused(
                f"client order id {client_ids[i]!r} of account {book.account_name[i]} is in use on "
                f"shard {self.shard_id}: the order {book.original_order_id[i]} cannot keep it here"
            )

    async def import_book(self, move_id: str, symbol: str, book: admin.MovedBook) -> ImportResult:
        """Journal ``book`` as this shard's book of ``symbol`` (once per move; see the module
        docstring). Returns once the record is durable and the id table written."""
        check_move_id(move_id)
        count = book_length(book)
        table_path = self.directory / f"import-{_SAFE_NAME.sub('_', move_id)}.json"
        known = self._already_imported(symbol, book)
        if known is not None:
            if not table_path.exists():  # durable, but the crash came before the id table
                self._write_ids(table_path, move_id, symbol, book, known)
            self._taken_back(symbol)
            return ImportResult(count, True, 0)
        self._check_importable(symbol, book, count)
        core = self.core
        state = core.state
        journal = core.journal
        journal.check_writable()
        # One loop step from here to the appends: nothing else can take the ids or sequence numbers.
        symbol_id = state.symbol_ids.get(symbol)
        frozen_up_to = self._frozen_up_to(symbol)
        purged: asyncio.Future[int] | None = None
        if symbol_id is not None and frozen_up_to:
            frozen = state.handed_over_orders(symbol_id)["order_id"]
            if (frozen <= frozen_up_to).any():  # (none left when a crash came after the purge)
                purged = journal.append(encode_purge(symbol_id, frozen_up_to), RECORD_PURGE)
                dropped = state.purge_symbol(symbol_id, frozen_up_to)
                log.info("moves: %s: %d frozen order(s) dropped to take the book back", symbol, dropped)
        if not count:
            if purged is not None:
                await purged
            self._write_ids(table_path, move_id, symbol, book, [])
            self._taken_back(symbol)
            return ImportResult(0, False, 0)
        if symbol_id is None:
            symbol_id = len(state.symbol_names)
            journal.append(encode_symbol(symbol_id, symbol), RECORD_SYMBOL)
            state.add_symbol(symbol_id, symbol)
        for account_id, name in dict(zip(book.account_id, book.account_name, strict=True)).items():
            if account_id not in state.account_names:
                journal.append(encode_account(account_id, name), RECORD_ACCOUNT)
                state.add_account(account_id, name)
        batch = _import_batch(state, symbol_id, book, count)
        first_local = state.order_count + 1
        future = journal.append(encode_batch(batch), RECORD_BATCH)
        journal_seq = journal.next_seq - 1
        outcome = state.apply_batch(batch)
        refused = int((outcome.status == REJECTED).sum())
        if refused:
            log.error(
                "moves: %d of %d imported order(s) of %s were refused by the engine",
                refused,
                count,
                symbol,
            )
        await future  # (the purge before it is durable too: the journal keeps its order)
        core.publisher.publish(outcome)
        locals_ = list(range(first_local, first_local + count))
        self._write_ids(table_path, move_id, symbol, book, locals_)
        self._taken_back(symbol)
        log.info(
            "moves: %s: %d order(s) imported (move %s, journal seq %d)",
            symbol,
            count,
            move_id,
            journal_seq,
        )
        return ImportResult(count, False, journal_seq)

    def _write_ids(
        self, path: Path, move_id: str, symbol: str, book: admin.MovedBook, locals_: list[int]
    ) -> None:
        entries = [
            list(entry)
            for entry in zip(
                book.original_order_id, locals_, book.cum_quantity_lots, book.cum_notional, strict=True
            )
        ]
        _write_durably(path, {"move_id": move_id, "symbol": symbol, "ids": entries})
        for original, local, lots, notional in entries:
            self._take(original, local, lots, notional)


#: (array, column, MovedBook column) of an imported order's batch row, copied as they are.
_IMPORT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("commands", "account_id", "account_id"),
    ("commands", "price", "engine_price_ticks"),
    ("commands", "qty", "leaves_quantity_lots"),
    ("commands", "stop_price", "stop_price_ticks"),
    ("commands", "display_qty", "display_quantity_lots"),
    ("commands", "priority", "priority"),
    ("commands", "side", "side"),
    ("commands", "order_type", "engine_order_type"),
    ("commands", "tif", "time_in_force"),
    ("commands", "flags", "engine_flags"),
    ("commands", "stp_mode", "engine_stp_mode"),
    ("meta", "client_price", "price_ticks"),
    ("meta", "protection", "protection_price_ticks"),
    ("meta", "client_type", "order_type"),
    ("meta", "client_stp", "self_trade_prevention"),
    ("meta", "post_only", "post_only"),
)


def _import_batch(state: ExecutionState, symbol_id: int, book: admin.MovedBook, count: int) -> Batch:
    """The moved orders as one batch of new orders, in their priority order."""
    commands = np.zeros(count, COMMAND_DTYPE)
    meta = np.zeros(count, META_DTYPE)
    first = state.order_count + 1
    commands["order_id"] = np.arange(first, first + count)
    commands["action"] = int(Action.NEW)
    commands["symbol_id"] = symbol_id
    for table, column, name in _IMPORT_COLUMNS:
        (commands if table == "commands" else meta)[column] = list(getattr(book, name))
    meta["priority"] = commands["priority"]
    meta["client_tif"] = commands["tif"]
    client_ids = list(book.client_order_id)
    meta["client_id_length"] = [len(c) for c in client_ids]
    now = time.time_ns()
    return Batch(state.next_input_seq, now, now, commands, meta, "".join(client_ids).encode("ascii"))
