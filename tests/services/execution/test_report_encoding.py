"""codec.encode_reports writes each ExecutionReport with the fields a report has (a report with no
trade leaves the fill fields at their defaults) and reads the client order ids of a page at once:
the messages must be those of one message per row with every field given, byte for byte."""

from __future__ import annotations

import numpy as np

from hftgate.v1 import execution_pb2 as api
from services.execution import codec
from services.execution.state import REASON_TEXT, REPORT_DTYPE

from .test_order_fold import _batch, _flow, _state


def _every_field(reports: np.ndarray, state: object, shard_base: int) -> list[bytes]:
    out = []
    for row in reports.tolist():
        (seq, input_seq, order_id, _, price, qty, last_price, last_qty, leaves, cum, trade_id,
         counterparty, received, transact, symbol_id, reason, exec_type, side, status, liq) = row  # fmt: skip
        out.append(
            api.ExecutionReport(
                sequence=seq, input_sequence=input_seq, exec_type=exec_type, order_id=order_id | shard_base,
                client_order_id=state.client_ids[order_id - 1], symbol=state.symbol_names[symbol_id],  # type: ignore[attr-defined]
                side=side, status=status, price_ticks=price, quantity_lots=qty, last_price_ticks=last_price,
                last_quantity_lots=last_qty, leaves_quantity_lots=leaves, cum_quantity_lots=cum,
                trade_id=trade_id | shard_base if trade_id > 0 else trade_id, liquidity=liq,
                counterparty_order_id=counterparty | shard_base if counterparty > 0 else counterparty,
                reason=reason, reason_text=REASON_TEXT.get(reason, "") if reason else "",
                received_ns=received, transact_ns=transact,
            ).SerializeToString()
        )  # fmt: skip
    return out


def test_reports_encode_as_one_message_per_row_with_every_field_would() -> None:
    state = _state(256)  # with retirement: some reports outlive their orders' rows
    pages = []
    for inputs in _flow(5, 60):
        pages.append(state.apply_batch(_batch(state, inputs)).reports)
    reports = np.concatenate(pages)
    kinds = set(reports["exec_type"].tolist())
    assert {api.EXEC_TYPE_FILL, api.EXEC_TYPE_NEW, api.EXEC_TYPE_CANCELED, api.EXEC_TYPE_EXPIRED} <= kinds
    assert (reports["reason"] != 0).any()
    shard_base = 3 << 48
    encoded = [m.SerializeToString() for m in codec.encode_reports(reports, state, shard_base)]
    assert encoded == _every_field(reports, state, shard_base)
    assert codec.encode_reports(np.zeros(0, REPORT_DTYPE), state) == []
