"""Admission: one batch of decoded inputs in, its acks and journal record out, before anything is journaled.

:class:`Admission` runs the pre-trade steps of the order path (core.py) for one account's batch,
synchronously, with no await between them:

* new orders go through the C rules (:class:`~services.execution.risk.NewOrderRisk`: client id,
  kill switch, instrument, grid, band, limits, rate, position), in one call for a batch of any size;
* cancels and replaces must name a working order of the account; a replace must also pass, for what
  it raises, the rules a new order would (:meth:`Admission._check_replace`);
* the accepted inputs become one :class:`~services.execution.records.Batch` (engine commands, the
  journal's meta rows and client ids), or, for one new order, its record bytes straight away
  (:meth:`Admission.admit_one_new`); the new orders' commands are built in C
  (:class:`~hftgate.native.admission.NewOrderCommands`), one call for a batch or a single order.

Refused inputs get their reason here and are never journaled. Books are opened (and journaled) only
for instruments that end up with an accepted order. The types an entry point hands in
(:class:`Inputs`, :class:`NewOrderEntry`) and gets back (:class:`Acks`, :class:`SingleAck`) live
here too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from hftgate import rows
from hftgate.matching.types import COMMAND_DTYPE, Action
from hftgate.native.admission import NewOrderCommands
from hftgate.native.client_ids import joined
from hftgate.native.clock import now_ns
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.journal import Journal
from services.execution.records import (
    META_DTYPE,
    RECORD_ACCOUNT,
    RECORD_SYMBOL,
    Batch,
    encode_account,
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
from services.execution.state import OPEN_STATUSES, REJECTED, ExecutionState

log = logging.getLogger(__name__)

_ACTION_NEW = int(Action.NEW)  # an int, not the IntEnum, for numpy comparisons (see state.py)

KIND_NEW, KIND_CANCEL, KIND_REPLACE = api.ORDER_ACTION_NEW, api.ORDER_ACTION_CANCEL, api.ORDER_ACTION_REPLACE

_MARKET_TYPES = (api.ORDER_TYPE_MARKET, api.ORDER_TYPE_STOP_MARKET)
_NO_POSITIONS = np.zeros(0, np.int64)
_FIRST_POSITION = np.zeros(1, np.int64)
_NO_POSITIONS.setflags(write=False)
_FIRST_POSITION.setflags(write=False)


class RateLimited(Exception):
    """The account had no order-rate tokens left when the call arrived."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"order rate limit reached; retry in {retry_after_s:.3f} s")
        self.retry_after_s = retry_after_s


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
    #: ``client_ids`` as joined() gives them, when the wire decoder had them so (never changed after).
    client_text: tuple[bytes, np.ndarray] | None = None

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
    #: ``client_ids`` as joined() gives them, when admission had them (every input a new order).
    client_text: tuple[bytes, np.ndarray] | None = None


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
class Counters:
    orders_received: int = 0
    orders_accepted: int = 0
    inputs_rejected: int = 0
    cancels_accepted: int = 0
    replaces_accepted: int = 0
    rejects_by_reason: dict[int, int] = field(default_factory=dict)


class Admission:
    """The pre-trade half of the order path for one execution core (one event loop owns it)."""

    def __init__(
        self, state: ExecutionState, journal: Journal, reference: ReferenceData, counters: Counters
    ) -> None:
        self.state = state
        self.journal = journal
        self.reference = reference
        self.counters = counters
        self.risk = NewOrderRisk()
        #: How an accepted NewOrder becomes its engine command and journal meta row (in C).
        self._new_commands = NewOrderCommands(
            state.engine_config.max_symbols, NEW_ORDER_DTYPE, COMMAND_DTYPE, META_DTYPE
        )
        #: account id -> (the spec last seen, its bucket); as many as the reference data's accounts.
        self._buckets: dict[int, tuple[AccountSpec, TokenBucket]] = {}

    def bucket(self, account: AccountSpec) -> TokenBucket:
        """The account's order-rate bucket (one per account id, kept while its rate and burst
        stay the same: an account's spec is frozen, so the spec it was checked against last is
        compared by identity first, on every order)."""
        held = self._buckets.get(account.account_id)
        if held is not None and held[0] is account:
            return held[1]
        bucket = held[1] if held is not None else None
        if (
            bucket is None
            or bucket.rate_per_s != account.rate_limit_orders_per_s
            or bucket.burst != max(1, account.rate_limit_burst)
        ):
            bucket = TokenBucket(account.rate_limit_orders_per_s, account.rate_limit_burst)
            # A new bucket is full whenever it is first read: its clock must not start after the
            # arrival it is compared with (an arrival read before the bucket was made would count
            # as negative time and take tokens away: "retry in 0.000 s" with a burst of 1).
            bucket.updated_ns = 0
        self._buckets[account.account_id] = (account, bucket)
        return bucket

    def check_rate(self, account: AccountSpec, now: int) -> None:
        """Raise RateLimited when the account has no token left at arrival."""
        bucket = self.bucket(account)
        # ``now`` was read when the call arrived, before any await; another call may have
        # refilled the bucket since. Time never runs backwards for the bucket.
        if bucket.refill(max(now, bucket.updated_ns)) < 1.0:
            raise RateLimited(bucket.seconds_until_one())

    def ensure_account(self, account: AccountSpec) -> None:
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

    async def replace_instruments(
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

    def prepare(
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
                self._set_band(ids_by_symbol[symbol], spec)
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
            joined_ids = inputs.client_text if every and inputs.client_text is not None else joined(new_ids)
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
            client_text=joined_ids if joined_ids is not None and len(joined_ids[1]) == count else None,
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
        self.ensure_account(account)
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
                rows.take(batch.commands, order),
                rows.take(batch.meta, order),
                _reorder_ids(batch, order),
            )
            # order ids follow the engine order
            batch.commands["order_id"][batch.commands["action"] == _ACTION_NEW] = np.arange(
                state.order_count + 1,
                state.order_count + 1 + int((batch.commands["action"] == _ACTION_NEW).sum()),
            )
        return acks, batch, acks_order

    def prepare_one_new(
        self, account: AccountSpec, inputs: Inputs, spec: InstrumentSpec | None
    ) -> tuple[Acks, bytes | None, Batch | None]:
        """:meth:`prepare` for a batch of one new order (a one-order stream message): its acks,
        its journal record and the batch it holds (see :meth:`admit_one_new`)."""
        reason, payload, batch = self.admit_one_new(
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
        return acks, payload, batch

    def admit_one_new(
        self,
        account: AccountSpec,
        symbol: str,
        client_id: str,
        fields: tuple[int, ...],
        spec: InstrumentSpec | None,
        received_ns: int,
    ) -> tuple[int, bytes | None, Batch | None]:
        """:meth:`prepare` for one new order: (reject reason, journal record, the batch it holds),
        the record and batch None when refused. The batch's arrays are reused by the next call:
        apply it before admitting another order.

        numpy's per-call set-up costs more than the work for one order, so this takes the order's
        NEW_ORDER_DTYPE ``fields`` as a tuple: the C risk check and the C command builder (the same
        ones a batch goes through) see them with no array on the way. The record is byte for byte
        what :meth:`prepare` builds for a batch of one (a test holds them together). An accepted
        order's book is opened (and journaled) here when it is the first.
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
        if spec is not None and fields[1] in _MARKET_TYPES and fields[9] == 0:
            # (order_type, protection): bounded by the band, which the command is built with.
            self._set_band(symbol_id, spec)
        new_commands = self._new_commands
        reason = self.risk.check_one_new_order(
            fields,
            client_id,
            spec,
            symbol_id,
            account,
            state.client_id_index,
            exposure,
            bucket,
            new_commands,
            state.order_count + 1,
        )
        if reason:
            self.counters.inputs_rejected += 1
            by_reason = self.counters.rejects_by_reason
            by_reason[reason] = by_reason.get(reason, 0) + 1
            return reason, None, None
        if provisional:
            self.journal.append(encode_symbol(symbol_id, symbol), RECORD_SYMBOL)
            state.add_symbol(symbol_id, symbol)
        self.ensure_account(account)
        command, meta = new_commands.one_bytes()
        text = client_id.encode("ascii")
        transact_ns = time.time_ns()
        first = state.next_input_seq
        # The record, and the batch it decodes to (the builder's one-row arrays, read by the
        # state's apply in this same step: no decode of the record on the way).
        batch = Batch(first, received_ns, transact_ns, new_commands.one_command, new_commands.one_meta, text)
        return 0, encode_one_batch(first, received_ns, transact_ns, command, meta, text), batch

    def _set_band(self, symbol_id: int, spec: InstrumentSpec | None) -> None:
        """Give the C command builder the band of the instrument ``spec`` (engine id ``symbol_id``,
        which may be provisional: its book not open yet), from the spec the risk check used."""
        if symbol_id < 0 or spec is None:
            return
        limits = instrument_limits(spec)  # clamped: reference + band stays inside int64
        self._new_commands.set_band(symbol_id, limits.reference, limits.band)

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
        kind = inputs.kind[accepted]
        orders = inputs.orders if count == len(inputs.kind) else rows.take(inputs.orders, accepted)
        is_new = kind == KIND_NEW
        new_count = int(np.count_nonzero(is_new))
        if new_count == count:  # new orders only: C writes every row whole
            commands = np.empty(count, COMMAND_DTYPE)
            meta = np.empty(count, META_DTYPE)
            positions = None
        else:
            commands = np.zeros(count, COMMAND_DTYPE)
            meta = np.zeros(count, META_DTYPE)
            commands["account_id"] = account.account_id
            meta["priority"] = orders["priority"]
            positions = np.flatnonzero(is_new)
        if new_count:
            if new_count == len(client_ids) and joined_ids is not None:  # every input accepted and new
                encoded, lengths = joined_ids
            else:
                encoded, lengths = joined([client_ids[p] for p in accepted[is_new].tolist()])
            self._new_commands.fill(
                orders,
                symbol_ids if count == len(symbol_ids) else symbol_ids[accepted],
                positions,
                account.account_id,
                state.order_count + 1,
                lengths,
                commands,
                meta,
            )
        else:
            encoded = b""
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
        return Batch(state.next_input_seq, inputs.received_ns, time.time_ns(), commands, meta, encoded)

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
