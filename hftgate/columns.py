"""Order batches as columns (execution.proto OrderColumns / AckColumns): a batch's parts by
shard and their acks merged back, for the routing client and the gateway, which split a column
batch by owning shard without making a message per order."""

from __future__ import annotations

import numpy as np

from hftgate.v1 import execution_pb2 as ex

#: OrderColumns' per-order columns (all but ``symbols``), and AckColumns' (all but ``reason_text``).
_ORDER_COLUMN_NAMES = tuple(f.name for f in ex.OrderColumns.DESCRIPTOR.fields if f.name != "symbols")
_ACK_COLUMN_NAMES = tuple(
    f.name for f in ex.AckColumns.DESCRIPTOR.fields if f.is_repeated and f.name != "reason_text"
)


def columns_at(orders: ex.OrderColumns, indices: list[int]) -> ex.OrderColumns:
    """The orders at ``indices`` as a batch of their own (the symbols list kept whole)."""
    part = ex.OrderColumns(symbols=orders.symbols)
    for name in _ORDER_COLUMN_NAMES:
        values = getattr(orders, name)
        if len(values):  # (an empty column stays empty: the default for every order)
            getattr(part, name).extend([values[i] for i in indices])
    return part


def column_problem(orders: ex.OrderColumns) -> str:
    """Why ``orders`` is not a batch ("" when it is), as the gateway and the shard both say it."""
    count = len(orders.client_order_id)
    if len(orders.symbol_index) != count:
        return (
            f"symbol_index has {len(orders.symbol_index)} entries and client_order_id {count}: "
            "both need one per order"
        )
    for name in _ORDER_COLUMN_NAMES:
        length = len(getattr(orders, name))
        if length not in (0, count):
            return f"{name} has {length} entries for {count} orders: one per order, or none"
    highest = int(np.array(orders.symbol_index, np.int64).max()) if count else 0
    if count and highest >= len(orders.symbols):
        return f"symbol_index {highest} is past the {len(orders.symbols)} entries of symbols"
    return ""


def merged_ack_columns(count: int, parts: list[tuple[list[int], ex.AckColumns]]) -> ex.AckColumns:
    """The acks of a batch's parts in the batch's order (``parts``: each part's batch positions);
    a position no part answers gets zeros (status UNSPECIFIED: no answer)."""
    merged = {name: [0] * count for name in _ACK_COLUMN_NAMES}
    texts: list[str | None] = [None] * count
    for indices, acks in parts:
        part_texts = iter(acks.reason_text)
        for name in _ACK_COLUMN_NAMES:
            values = getattr(acks, name)
            if len(values):  # (a column left empty is zeros, protobuf's default)
                column = merged[name]
                for index, value in zip(indices, values, strict=True):
                    column[index] = value
        for index, reason in zip(indices, acks.reason or [0] * len(indices), strict=True):
            if reason:
                texts[index] = next(part_texts, "")
    out = ex.AckColumns()
    for name in _ACK_COLUMN_NAMES:
        getattr(out, name).extend(merged[name])
    out.reason_text.extend(t for t in texts if t is not None)
    accepted = [acks for _, acks in parts if any(s > 0 for s in acks.sequence)]
    out.durable = bool(accepted) and all(acks.durable for acks in accepted)
    if parts:
        out.received_ns = min(acks.received_ns for _, acks in parts)
        out.ack_ns = max(acks.ack_ns for _, acks in parts)
    return out
