"""Translation between execution.proto messages and the order path's numpy columns.

Decoding reads each order's fields once into one row tuple and builds the batch's columns with a
single ``np.array`` call; encoding builds one proto per ack or report from ``tolist()`` columns.
These are the only per-order Python objects on the order path, and the protocol forces them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from hftgate import shardmap
from hftgate.columns import column_problem
from hftgate.native.client_ids import joined
from hftgate.native.exec_wire import ExecWireEncoder, TextTable
from hftgate.native.order_wire import ROW_DTYPE, STREAM, SUBMIT_ORDERS, DecodedOrders, NewOrderWireDecoder
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.admission import (
    KIND_CANCEL,
    KIND_NEW,
    KIND_REPLACE,
    Acks,
    Inputs,
    NewOrderEntry,
    SingleAck,
)
from services.execution.risk import NEW_ORDER_DTYPE
from services.execution.state import REASON_TEXT, ExecutionState

_NO_SYMBOL: list[str] = []


def shard_base_of(shard_id: int) -> int:
    """What a shard ORs into its local order and trade ids to make the public ones (0 for shard 0:
    an unsharded service's ids are shard 0's). See :func:`hftgate.shardmap.make_order_id`."""
    return shardmap.make_order_id(shard_id, 1) - 1


def local_id(public_id: int, shard_id: int) -> int:
    """The local id of a public order id sent in, or 0 when it names another shard's order (the
    caller answers exactly as for a missing id)."""
    if public_id <= 0:
        return public_id
    if shardmap.order_id_shard(public_id) != shard_id or public_id >> 63:
        return 0
    return public_id & shardmap.ORDER_ID_LOCAL_MASK


def _order_fields(o: api.NewOrder) -> tuple[int, ...]:
    """A NewOrder's numeric fields in NEW_ORDER_DTYPE order, each read once."""
    return (
        o.side,
        o.order_type,
        o.time_in_force,
        o.price_ticks,
        o.stop_price_ticks,
        o.quantity_lots,
        o.display_quantity_lots,
        o.post_only,
        o.self_trade_prevention,
        o.protection_price_ticks,
        o.priority,
    )


def decode_new_order(o: api.NewOrder, received_ns: int, arrival_ns: int) -> NewOrderEntry:
    """SubmitOrder's one order as plain values."""
    return NewOrderEntry(o.symbol, o.client_order_id, _order_fields(o), received_ns, arrival_ns)


def read_submit_order(
    data: bytes, wire: NewOrderWireDecoder, received_ns: int, arrival_ns: int
) -> NewOrderEntry | None:
    """:func:`decode_new_order` of a SubmitOrderRequest read from the bytes it came in, in C, or
    None when the fast path does not take them (then protobuf reads them)."""
    decoded = wire.decode_one(data)
    if decoded is None:
        return None
    fields, client_id, symbol = decoded
    return NewOrderEntry(symbol, client_id, fields, received_ns, arrival_ns)


def decode_new_orders(orders: Sequence[api.NewOrder], received_ns: int, arrival_ns: int) -> Inputs:
    """A SubmitOrders batch (or one stream message's new orders) as columns."""
    rows = [_order_fields(o) for o in orders]
    count = len(rows)
    kind = np.empty(count, np.int64)
    kind.fill(KIND_NEW)  # np.full is a Python-level wrapper: slower for the common one-order call
    return Inputs(
        kind=kind,
        symbols=[o.symbol for o in orders],
        client_ids=[o.client_order_id for o in orders],
        orders=np.array(rows, NEW_ORDER_DTYPE),
        target_ids=np.zeros(count, np.int64),
        received_ns=received_ns,
        arrival_ns=arrival_ns,
    )


def read_submit_orders(
    data: bytes, wire: NewOrderWireDecoder, max_orders: int, received_ns: int, arrival_ns: int
) -> Inputs | None:
    """:func:`decode_new_orders` of a SubmitOrders request read from the bytes it came in, in C,
    or None when the fast path does not take them (then protobuf reads them: a malformed request
    is refused there) or they hold more than ``max_orders`` orders."""
    decoded = wire.decode(data, SUBMIT_ORDERS, max_orders)
    if decoded is None:
        return None
    return _new_order_inputs(decoded.rows, decoded, received_ns, arrival_ns)


def read_stream_message(
    data: bytes, wire: NewOrderWireDecoder, max_inputs: int, received_ns: int, arrival_ns: int
) -> Inputs | None:
    """:func:`read_submit_orders` for one OrderStream message: its inputs when every one is a new
    order the fast path takes, else None (protobuf reads it, :func:`decode_stream_inputs`)."""
    decoded = wire.decode(data, STREAM, max_inputs)
    if decoded is None:
        return None
    rows = decoded.rows
    rows["priority"] = 0  # a stream runs its inputs in order: NewOrder.priority is for batches only
    return _new_order_inputs(rows, decoded, received_ns, arrival_ns)


def read_order_columns(
    data: bytes, wire: NewOrderWireDecoder, max_orders: int, received_ns: int, arrival_ns: int
) -> Inputs | None:
    """:func:`decode_order_columns` of a SubmitOrderColumnsRequest read from the bytes it came in,
    in C, or None where the fast path does not take them (then protobuf reads them and
    :func:`decode_order_columns` says what is wrong with a batch whose columns do not fit)."""
    decoded = wire.decode_columns(data, max_orders)
    if decoded is None:
        return None
    return _new_order_inputs(decoded.rows, decoded, received_ns, arrival_ns)


def _new_order_inputs(rows: np.ndarray, decoded: DecodedOrders, received_ns: int, arrival_ns: int) -> Inputs:
    count = len(rows)
    kind = np.empty(count, np.int64)
    kind.fill(KIND_NEW)
    return Inputs(
        kind=kind,
        symbols=decoded.symbols,
        client_ids=decoded.client_ids,
        orders=rows.view(NEW_ORDER_DTYPE),
        target_ids=np.zeros(count, np.int64),
        received_ns=received_ns,
        arrival_ns=arrival_ns,
        client_text=(decoded.client_text, decoded.client_lengths),
    )


if ROW_DTYPE != NEW_ORDER_DTYPE:  # pragma: no cover - a change to one layout without the other
    raise ImportError("hft_new_order_row (native/include/hft_order_wire.h) no longer matches NEW_ORDER_DTYPE")


class BadColumns(ValueError):
    """An OrderColumns batch whose columns do not fit together (the message says how)."""


#: (OrderColumns column, NEW_ORDER_DTYPE field) of the numeric columns, copied as they are.
_ORDER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("side", "side"),
    ("order_type", "order_type"),
    ("time_in_force", "tif"),
    ("price_ticks", "price"),
    ("stop_price_ticks", "stop_price"),
    ("quantity_lots", "quantity"),
    ("display_quantity_lots", "display"),
    ("post_only", "post_only"),
    ("self_trade_prevention", "stp"),
    ("protection_price_ticks", "protection"),
    ("priority", "priority"),
)


def decode_order_columns(columns: api.OrderColumns, received_ns: int, arrival_ns: int) -> Inputs:
    """A SubmitOrderColumns batch as the order path's columns: each column copied in one call
    (protobuf's packed arrays read into numpy without a Python object per entry)."""
    problem = column_problem(columns)
    if problem:
        raise BadColumns(problem)
    count = len(columns.client_order_id)
    orders = np.zeros(count, NEW_ORDER_DTYPE)
    for column, field in _ORDER_COLUMNS:
        values = getattr(columns, column)
        if len(values):  # (an empty column: NewOrder's default, 0, for every order)
            orders[field] = np.array(values, np.int64)
    symbols = list(columns.symbols)
    kind = np.empty(count, np.int64)
    kind.fill(KIND_NEW)
    return Inputs(
        kind=kind,
        symbols=symbols * count if len(symbols) == 1 else [symbols[i] for i in columns.symbol_index],
        client_ids=list(columns.client_order_id),
        orders=orders,
        target_ids=np.zeros(count, np.int64),
        received_ns=received_ns,
        arrival_ns=arrival_ns,
    )


def decode_one_target(kind: int, order_id: int, client_order_id: str, received_ns: int, arrival_ns: int,
                      price: int = 0, quantity: int = 0, stop_price: int = 0) -> Inputs:  # fmt: skip
    """A cancel or replace as a batch of one."""
    orders = np.zeros(1, NEW_ORDER_DTYPE)
    orders["price"], orders["quantity"], orders["stop_price"] = price, quantity, stop_price
    return Inputs(
        kind=np.array([kind], np.int64),
        symbols=[""],
        client_ids=[client_order_id],
        orders=orders,
        target_ids=np.array([order_id], np.int64),
        received_ns=received_ns,
        arrival_ns=arrival_ns,
    )


def decode_stream_inputs(inputs: Sequence[api.OrderInput], received_ns: int, arrival_ns: int) -> Inputs:
    """One OrderStream message: new orders, cancels and replaces in arrival order."""
    count = len(inputs)
    kind = np.zeros(count, np.int64)
    symbols: list[str] = []
    client_ids: list[str] = []
    rows: list[tuple[int, ...]] = []
    targets = np.zeros(count, np.int64)
    refused: list[tuple[int, int]] = []  # (position, reason) of inputs refused while decoding
    for position, item in enumerate(inputs):
        which = item.WhichOneof("input")
        if which == "new_order":
            o = item.new_order
            kind[position] = KIND_NEW
            symbols.append(o.symbol)
            client_ids.append(o.client_order_id)
            rows.append(
                (o.side, o.order_type, o.time_in_force, o.price_ticks, o.stop_price_ticks, o.quantity_lots,
                 o.display_quantity_lots, o.post_only, o.self_trade_prevention, o.protection_price_ticks, 0)
            )  # fmt: skip
            continue
        symbols.append("")
        if which == "cancel":
            c = item.cancel
            kind[position] = KIND_CANCEL
            client_ids.append(c.client_order_id)
            targets[position] = c.order_id
            rows.append((0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
            if not c.order_id and not c.client_order_id:
                refused.append((position, common.REJECT_REASON_UNKNOWN_ORDER))
        elif which == "replace":
            r = item.replace
            kind[position] = KIND_REPLACE
            client_ids.append(r.client_order_id)
            targets[position] = r.order_id
            rows.append((0, 0, 0, r.price_ticks, r.stop_price_ticks, r.quantity_lots, 0, 0, 0, 0, 0))
            if not r.order_id and not r.client_order_id:
                refused.append((position, common.REJECT_REASON_UNKNOWN_ORDER))
        else:
            kind[position] = KIND_NEW
            client_ids.append("")
            rows.append((0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
            refused.append((position, common.REJECT_REASON_INVALID_ORDER))
    preset = None
    if refused:
        preset = np.zeros(count, np.int64)
        for position, reason in refused:
            preset[position] = reason
    return Inputs(
        kind=kind,
        symbols=symbols,
        client_ids=client_ids,
        orders=np.array(rows, NEW_ORDER_DTYPE),
        target_ids=targets,
        received_ns=received_ns,
        arrival_ns=arrival_ns,
        # None when no input was refused here: a one-order message then takes the single-order
        # path (Admission.prepare_one_new), not the batch path's numpy set-up.
        preset_reasons=preset,
    )


_VERB: dict[int, str] = {KIND_NEW: "submit", KIND_CANCEL: "cancel", KIND_REPLACE: "replace"}


def reason_text(kind: int, client_id: str, reason: int, symbol: str = "") -> str:
    if not reason:
        return ""
    text = REASON_TEXT.get(reason, common.RejectReason.Name(reason))
    if reason == common.REJECT_REASON_UNKNOWN_SYMBOL and symbol:
        text = f"unknown symbol {symbol!r}"
    elif reason == common.REJECT_REASON_NOT_SHARD_OWNER:
        text = (
            "this execution shard does not own the order's symbol at the shard map epoch it knows; "
            "refresh the shard map and send the order to the owning shard"
        )
    return f"Cannot {_VERB.get(kind, 'run')} order {client_id!r}: {text}"


def _public_ids(order_ids: np.ndarray, shard_base: int) -> np.ndarray:
    """Local order ids as clients know them: ``shard_base`` in every id above 0."""
    return np.where(order_ids > 0, order_ids | shard_base, order_ids) if shard_base else order_ids


def encode_acks(
    acks: Acks,
    ack_ns: int,
    symbols: list[str] | None = None,
    make: Callable[..., api.OrderAck] = api.OrderAck,
    shard_base: int = 0,
) -> list[api.OrderAck]:
    """OrderAck per input, each built by ``make(**fields)``; ``shard_base`` (the shard id << 48,
    see :func:`public_id`) goes into every order id.

    Pass a response's ``acks.add`` to build them in place: adding a finished message to a
    repeated field copies it, which costs a third of the encoding for a batch of 1,000.
    """
    out = []
    durable = acks.durable
    received = acks.received_ns
    order_ids = _public_ids(acks.order_ids, shard_base)
    for kind, client_id, order_id, seq, status, reason, price, qty, leaves, cum, kept, symbol in zip(
        acks.kind.tolist(),
        acks.client_ids,
        order_ids.tolist(),
        acks.sequences.tolist(),
        acks.status.tolist(),
        acks.reason.tolist(),
        acks.price.tolist(),
        acks.quantity.tolist(),
        acks.leaves.tolist(),
        acks.cum.tolist(),
        acks.priority_kept.tolist(),
        symbols or [""] * len(acks.client_ids),
        strict=True,
    ):
        out.append(
            make(
                action=kind,
                client_order_id=client_id,
                order_id=order_id,
                sequence=seq,
                durable=durable and seq > 0,
                status=status,
                reason=reason,
                reason_text=reason_text(kind, client_id, reason, symbol) if reason else "",
                price_ticks=price,
                quantity_lots=qty,
                leaves_quantity_lots=leaves,
                cum_quantity_lots=cum,
                priority_kept=kept,
                received_ns=received,
                ack_ns=ack_ns,
            )
        )
    return out


#: Field numbers of the repeated fields the wire encoder writes entries of.
ACKS_FIELD = 1  # SubmitOrdersResponse.acks, OrderStreamResponse.acks
EXECUTIONS_FIELD = 2  # OrderStreamResponse.executions
_REASON_TABLE = TextTable([REASON_TEXT.get(value, "") for value in range(max(REASON_TEXT) + 1)])


def _refused_reason_texts(
    acks: Acks, symbols: list[str] | None, kind: int | None = None
) -> tuple[list[int], list[str]]:
    """(positions, reason texts) of the acks whose ``reason`` is set, in order; each worded for its
    input's kind, or for ``kind`` when given (SubmitOrderColumns: new orders only)."""
    if not acks.reason.any():  # (the usual batch: cheaper than flatnonzero's empty list)
        return [], []
    refused = np.flatnonzero(acks.reason).tolist()
    kinds = acks.kind.tolist() if kind is None else [kind] * len(acks.kind)
    reasons, client_ids = acks.reason.tolist(), acks.client_ids
    return refused, [
        reason_text(kinds[i], client_ids[i], reasons[i], symbols[i] if symbols else "") for i in refused
    ]


def ack_entries(
    acks: Acks, ack_ns: int, symbols: list[str] | None, encoder: ExecWireEncoder, shard_base: int = 0
) -> bytes:
    """:func:`encode_acks` as the wire bytes of ``acks`` entries (field :data:`ACKS_FIELD`): the
    same messages, written in one C call (hftgate/native/exec_wire.py) instead of one protobuf
    object each. Reason texts are built here, for the refused acks only."""
    client_text, client_lengths = joined(acks.client_ids) if acks.client_text is None else acks.client_text
    refused, texts = _refused_reason_texts(acks, symbols)
    encoded = [text.encode("utf-8") for text in texts]
    reason_lengths = np.zeros(len(acks.kind), np.int64)
    if refused:
        reason_lengths[refused] = [len(text) for text in encoded]
    return encoder.acks(
        ACKS_FIELD,
        action=acks.kind,
        order_id=_public_ids(acks.order_ids, shard_base),
        sequence=acks.sequences,
        status=acks.status,
        reason=acks.reason,
        price=acks.price,
        quantity=acks.quantity,
        leaves=acks.leaves,
        cum=acks.cum,
        priority_kept=acks.priority_kept,
        client_ids=client_text,
        client_id_lengths=client_lengths,
        reason_texts=b"".join(encoded),
        reason_text_lengths=reason_lengths,
        received_ns=acks.received_ns,
        ack_ns=ack_ns,
        durable=acks.durable,
    )


class SymbolTexts:
    """The state's symbol names as the wire encoder's table, rebuilt when a symbol is added."""

    def __init__(self) -> None:
        self._table = TextTable([])

    def of(self, state: ExecutionState) -> TextTable:
        names = state.symbol_names
        if self._table.texts != names:
            self._table = TextTable(names)
        return self._table


def report_entries(
    reports: np.ndarray,
    state: ExecutionState,
    symbols: SymbolTexts,
    encoder: ExecWireEncoder,
    shard_base: int = 0,
) -> bytes:
    """:func:`encode_reports` as the wire bytes of ``executions`` entries (field
    :data:`EXECUTIONS_FIELD`), written in one C call."""
    if len(reports):
        client_text, client_lengths = state.client_id_text_of(reports["order_id"])
    else:
        client_text, client_lengths = b"", np.zeros(0, np.int64)
    return encoder.reports(
        EXECUTIONS_FIELD, reports, client_text, client_lengths, symbols.of(state), _REASON_TABLE, shard_base
    )


def encode_ack_columns(
    acks: Acks, ack_ns: int, symbols: list[str], encoder: ExecWireEncoder, shard_base: int = 0
) -> bytes:
    """:func:`encode_acks` as an AckColumns message's wire bytes: each packed column written in
    one C call (hftgate/native/exec_wire.py), the rest (reason texts of the refused orders, the
    batch's scalars) by protobuf; fields in field-number order, as protobuf writes them."""
    rest = api.AckColumns(
        reason_text=_refused_reason_texts(acks, symbols, KIND_NEW)[1],
        durable=bool(acks.durable and (acks.sequences > 0).any()),
        received_ns=acks.received_ns,
        ack_ns=ack_ns,
    )
    columns = (
        _public_ids(acks.order_ids, shard_base),
        acks.sequences,
        acks.status,
        acks.reason,
        acks.price,
        acks.quantity,
        acks.leaves,
        acks.cum,
    )
    return b"".join([*(encoder.packed(f, c) for f, c in enumerate(columns, 1)), rest.SerializeToString()])


def encode_single_ack(ack: SingleAck, symbol: str, ack_ns: int, shard_base: int = 0) -> api.OrderAck:
    """:func:`encode_acks` for SubmitOrder's :class:`SingleAck`."""
    reason = ack.reason
    order_id = ack.order_id
    return api.OrderAck(
        action=KIND_NEW,
        client_order_id=ack.client_id,
        order_id=order_id | shard_base if order_id > 0 else order_id,
        sequence=ack.sequence,
        durable=ack.durable and ack.sequence > 0,
        status=ack.status,  # type: ignore[arg-type]  # an OrderStatus value
        reason=reason,  # type: ignore[arg-type]  # a RejectReason value
        reason_text=reason_text(KIND_NEW, ack.client_id, reason, symbol) if reason else "",
        price_ticks=ack.price,
        quantity_lots=ack.quantity,
        leaves_quantity_lots=ack.leaves,
        cum_quantity_lots=ack.cum,
        received_ns=ack.received_ns,
        ack_ns=ack_ns,
    )


def encode_reports(
    reports: np.ndarray,
    state: ExecutionState,
    shard_base: int = 0,
    make: Callable[..., api.ExecutionReport] = api.ExecutionReport,
) -> list[api.ExecutionReport]:
    """ExecutionReport per row, each built by ``make(**fields)``; ``shard_base`` goes into the
    order, counterparty and trade ids. Pass a response's ``executions.add`` to build them in place
    (see :func:`encode_acks`)."""
    names = state.symbol_names
    client_ids = state.client_ids_of(reports["order_id"]) if len(reports) else []
    out = []
    for row, client_id in zip(reports.tolist(), client_ids, strict=True):
        (seq, input_seq, order_id, _, price, qty, last_price, last_qty, leaves, cum, trade_id,
         counterparty, received, transact, symbol_id, reason, exec_type, side, status, liq) = row  # fmt: skip
        report = make(
            sequence=seq,
            input_sequence=input_seq,
            exec_type=exec_type,
            order_id=order_id | shard_base,
            client_order_id=client_id,
            symbol=names[symbol_id],
            side=side,
            status=status,
            price_ticks=price,
            quantity_lots=qty,
            leaves_quantity_lots=leaves,
            cum_quantity_lots=cum,
            received_ns=received,
            transact_ns=transact,
        )
        # The fill fields only where there was a trade: left at their defaults otherwise (fewer
        # keywords for most reports, the same message).
        if trade_id or last_price or last_qty or counterparty or liq:
            report.last_price_ticks = last_price
            report.last_quantity_lots = last_qty
            report.trade_id = trade_id | shard_base if trade_id > 0 else trade_id
            report.liquidity = liq  # type: ignore[assignment]  # a Liquidity value
            report.counterparty_order_id = counterparty | shard_base if counterparty > 0 else counterparty
        if reason:
            report.reason = reason  # type: ignore[assignment]  # a RejectReason value
            report.reason_text = REASON_TEXT.get(reason, "")
        out.append(report)
    return out


def encode_order(state: ExecutionState, order_id: int, shard_base: int = 0) -> api.Order:
    """The order of local id ``order_id``; its public id carries ``shard_base``."""
    row = state.orders[order_id - 1]
    request: dict[str, Any] = {
        "client_order_id": state.client_ids[order_id - 1],
        "symbol": state.symbol_names[int(row["symbol_id"])],
        "side": int(row["side"]),
        "order_type": int(row["order_type"]),
        "time_in_force": int(row["tif"]),
        "price_ticks": int(row["price"]),
        "stop_price_ticks": int(row["stop_price"]),
        "quantity_lots": int(row["quantity"]),
        "display_quantity_lots": int(row["display"]),
        "post_only": bool(row["post_only"]),
        "self_trade_prevention": int(row["stp"]),
        "protection_price_ticks": int(row["protection"]),
        "priority": int(row["priority"]),
    }
    fields: dict[str, Any] = {
        "order_id": order_id | shard_base,
        "request": api.NewOrder(**request),
        "status": int(row["status"]),
        "leaves_quantity_lots": int(row["leaves"]),
        "cum_quantity_lots": int(row["cum"]),
        "cum_notional": int(row["notional"]),
        "displayed_quantity_lots": _displayed(state, order_id, row),
        "reason": int(row["reason"]),
        "created_ns": int(row["created_ns"]),
        "updated_ns": int(row["updated_ns"]),
        "last_exec_sequence": int(row["last_exec_seq"]),
    }
    return api.Order(**fields)


def _displayed(state: ExecutionState, order_id: int, row: np.void) -> int:
    if not row["display"]:
        return 0
    info = state.engine.order(order_id)
    return 0 if info is None else int(info["visible_qty"])


def localize_targets(inputs: Inputs, shard_id: int) -> None:
    """Turn a stream message's cancel and replace targets (public order ids) into local ids in
    place; a target of another shard gets REJECT_REASON_UNKNOWN_ORDER, exactly as a missing id."""
    targets = inputs.target_ids
    if not targets.any():  # new orders only (a stream's usual message): no target to localize
        return
    high = targets >> shardmap.ORDER_ID_SHARD_SHIFT
    if not shard_id and not high.any():
        return  # shard 0 and ids without shard bits: already local
    foreign = (targets > 0) & (high != shard_id)
    inputs.target_ids = np.where(
        foreign, 0, np.where(targets > 0, targets & shardmap.ORDER_ID_LOCAL_MASK, targets)
    )
    if foreign.any():
        preset = inputs.preset_reasons
        if preset is None:
            preset = inputs.preset_reasons = np.zeros(len(targets), np.int64)
        preset[foreign & (preset == 0)] = common.REJECT_REASON_UNKNOWN_ORDER


def refuse_symbols(inputs: Inputs, refused: list[int], moving: Collection[str] = ()) -> None:
    """Reject the inputs at positions ``refused`` (fencing): REJECT_REASON_UNAVAILABLE for a
    symbol in ``moving`` (being moved between shards: the client retries once the move is done),
    REJECT_REASON_NOT_SHARD_OWNER for any other (another shard's)."""
    preset = inputs.preset_reasons
    if preset is None:
        preset = inputs.preset_reasons = np.zeros(len(inputs.kind), np.int64)
    symbols = inputs.symbols
    for position in refused:
        if not preset[position]:
            preset[position] = (
                common.REJECT_REASON_UNAVAILABLE
                if moving and symbols[position] in moving
                else common.REJECT_REASON_NOT_SHARD_OWNER
            )
