"""What an OrderStream leaves out of its execution reports: those that only restate an ack it sent.

A stream acks each input itself; the NEW, CANCELED or REPLACED report (with no reason) of an
input it acked says nothing the ack did not, so the stream drops it (execution.proto, OrderStream).
Reports of the same account's other calls, fills, and cancels for a reason still go out.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from hftgate import rows
from hftgate.v1 import execution_pb2 as api

_RESTATING_EXEC_TYPES = np.zeros(256, bool)
_RESTATING_EXEC_TYPES[[api.EXEC_TYPE_NEW, api.EXEC_TYPE_CANCELED, api.EXEC_TYPE_REPLACED]] = True


class RestatedReports:
    """The accepted inputs of an OrderStream whose acks were sent, kept until the subscriber's
    cursor has passed their batch's reports: a NEW, CANCELED or REPLACED report of one of them
    only restates its ack, so the stream drops it. Held as arrays (input sequences ascending:
    a stream's batches are journaled in order), looked up with one search per page."""

    def __init__(self) -> None:
        #: (published report sequence when the acks went out, their input sequences, order ids)
        self._marks: deque[tuple[int, np.ndarray, np.ndarray]] = deque()

    def add(self, published: int, sequences: np.ndarray, order_ids: np.ndarray) -> None:
        if not len(sequences):
            return
        marks = self._marks
        if (marks and sequences[0] <= marks[-1][1][-1]) or (sequences[1:] <= sequences[:-1]).any():
            # Not after what is held (never seen; the lookup needs them in order): keep them all sorted.
            if marks:
                sequences = np.concatenate([mark[1] for mark in marks] + [sequences])
                order_ids = np.concatenate([mark[2] for mark in marks] + [order_ids])
            order = np.argsort(sequences, kind="stable")
            sequences, order_ids = sequences[order], order_ids[order]
            marks.clear()
        marks.append((published, sequences, order_ids))

    def forget_read(self, cursor: int) -> None:
        """Forget the acks whose reports the subscriber has all read."""
        marks = self._marks
        while marks and marks[0][0] <= cursor:
            marks.popleft()

    def drop_from(self, reports: np.ndarray) -> np.ndarray:
        """``reports`` without those that restate an ack sent."""
        marks = self._marks
        if not marks:
            return reports
        restate = _RESTATING_EXEC_TYPES.take(reports["exec_type"])  # np.isin costs ~12 us a call
        restate &= reports["reason"] == 0
        if not restate.any():
            return reports
        if len(marks) == 1:
            sequences, order_ids = marks[0][1], marks[0][2]
        else:
            sequences = np.concatenate([mark[1] for mark in marks])
            order_ids = np.concatenate([mark[2] for mark in marks])
        wanted = reports["input_sequence"]
        at = np.searchsorted(sequences, wanted)
        at[at == len(sequences)] = 0  # (past the last: compared with the first, never equal)
        restate &= sequences[at] == wanted
        restate &= order_ids[at] == reports["order_id"]
        return rows.select(reports, ~restate) if restate.any() else reports
