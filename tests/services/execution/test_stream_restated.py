"""OrderStream drops the reports that only restate an ack it sent (restated.RestatedReports):
NEW, CANCELED and REPLACED reports with no reason, of an input whose ack went out, until the
subscriber's cursor has passed that ack's reports."""

from __future__ import annotations

import numpy as np

from hftgate.v1 import execution_pb2 as api
from services.execution.restated import RestatedReports
from services.execution.state import REPORT_DTYPE


def reports(*rows: tuple[int, int, int, int]) -> np.ndarray:
    """(input sequence, order id, exec type, reason) per report."""
    out = np.zeros(len(rows), REPORT_DTYPE)
    for i, (input_sequence, order_id, exec_type, reason) in enumerate(rows):
        out[i]["sequence"] = i + 1
        out[i]["input_sequence"] = input_sequence
        out[i]["order_id"] = order_id
        out[i]["exec_type"] = exec_type
        out[i]["reason"] = reason
    return out


def kept(restated: RestatedReports, page: np.ndarray) -> list[tuple[int, int, int]]:
    left = restated.drop_from(page)
    columns = (left["input_sequence"].tolist(), left["order_id"].tolist(), left["exec_type"].tolist())
    return list(zip(*columns, strict=True))


def test_only_restating_reports_of_acked_inputs_are_dropped() -> None:
    restated = RestatedReports()
    restated.add(10, np.array([5, 6, 7], np.int64), np.array([50, 60, 70], np.int64))
    page = reports(
        (5, 50, api.EXEC_TYPE_NEW, 0),  # restates the ack of input 5: dropped
        (6, 60, api.EXEC_TYPE_FILL, 0),  # a fill: kept
        (7, 70, api.EXEC_TYPE_CANCELED, 3),  # canceled for a reason the ack did not say: kept
        (7, 71, api.EXEC_TYPE_NEW, 0),  # another order's report with the same input: kept
        (8, 80, api.EXEC_TYPE_NEW, 0),  # an input whose ack this stream did not send: kept
        (4, 40, api.EXEC_TYPE_REPLACED, 0),  # before the first acked input: kept
        (6, 60, api.EXEC_TYPE_REPLACED, 0),  # restates: dropped
    )
    assert kept(restated, page) == [
        (6, 60, api.EXEC_TYPE_FILL),
        (7, 70, api.EXEC_TYPE_CANCELED),
        (7, 71, api.EXEC_TYPE_NEW),
        (8, 80, api.EXEC_TYPE_NEW),
        (4, 40, api.EXEC_TYPE_REPLACED),
    ]


def test_acks_are_forgotten_once_the_cursor_passed_their_reports() -> None:
    restated = RestatedReports()
    restated.add(10, np.array([1, 2], np.int64), np.array([1, 2], np.int64))
    restated.add(20, np.array([3], np.int64), np.array([3], np.int64))
    page = reports((1, 1, api.EXEC_TYPE_NEW, 0), (3, 3, api.EXEC_TYPE_NEW, 0))
    assert kept(restated, page) == []  # two marks held: both looked up
    restated.forget_read(15)
    assert kept(restated, page) == [(1, 1, api.EXEC_TYPE_NEW)]
    restated.forget_read(20)
    assert kept(restated, page) == [(1, 1, api.EXEC_TYPE_NEW), (3, 3, api.EXEC_TYPE_NEW)]


def test_sequences_out_of_order_are_still_found() -> None:
    restated = RestatedReports()
    restated.add(10, np.array([8, 9], np.int64), np.array([80, 90], np.int64))
    restated.add(11, np.array([4, 2], np.int64), np.array([40, 20], np.int64))
    page = reports(
        (2, 20, api.EXEC_TYPE_NEW, 0),
        (4, 40, api.EXEC_TYPE_NEW, 0),
        (8, 80, api.EXEC_TYPE_NEW, 0),
        (9, 91, api.EXEC_TYPE_NEW, 0),
    )
    assert kept(restated, page) == [(9, 91, api.EXEC_TYPE_NEW)]


def test_nothing_held_or_nothing_restating_returns_the_page_itself() -> None:
    restated = RestatedReports()
    page = reports((1, 1, api.EXEC_TYPE_NEW, 0))
    assert restated.drop_from(page) is page
    restated.add(5, np.array([1], np.int64), np.array([1], np.int64))
    fills = reports((1, 1, api.EXEC_TYPE_FILL, 0))
    assert restated.drop_from(fills) is fills
    restated.add(6, np.zeros(0, np.int64), np.zeros(0, np.int64))  # a batch with nothing accepted
    assert kept(restated, page) == []
