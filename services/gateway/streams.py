"""Streams across shards, the rules without gRPC: the per-shard resume cursor of StreamExecutions
and the merge of several shards' OrderStream answers back into the client's input order.

**Report sequences are per shard.** Each shard numbers its execution reports itself (strictly
increasing on that shard, as the proto promises "across the service"), so two shards' sequences
overlap and one ``after_sequence`` cannot say where a client stopped on each. A client streaming
through the gateway across shards resumes with a **per-shard cursor** in the request metadata
``x-hftgate-after-sequences: 0=120,1=98`` (shard id = the last report sequence processed from that
shard; a report's shard is its order id's shard bits, ``hftgate.shardmap.order_id_shard``). A
shard the cursor does not name starts from its oldest retained report; ``after_sequence`` > 0
without a cursor is refused when the map has several shards (it cannot mean the same on each). A
merged stream that ends with an error gives the cursor of what it sent in its trailing metadata
(same key) and in its message.

**OrderStream acks keep the input order.** The gateway splits each client message by shard and
sends each part on that shard's stream; each shard answers its own inputs in order. :class:`AckMerge`
gives the acks back in the client's input order across the whole stream (as the proto promises),
holding a faster shard's acks until the slower shard's earlier ones are in; a shard's execution
reports are given with or after the acks that came before them from that shard, so an order's ack
is never after its first report. Reports of different shards interleave as they arrive.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hftgate.v1 import execution_pb2 as api

#: Request metadata (and trailing metadata of a merged stream that failed): the per-shard cursor.
CURSOR_METADATA = "x-hftgate-after-sequences"
#: Most shards a cursor may name (the shard-id space is 15 bits; a map has far fewer).
MAX_CURSOR_SHARDS = 1_024


class CursorError(ValueError):
    """A cursor that does not parse; the message says what is wrong."""


def parse_cursor(text: str) -> dict[int, int]:
    """``"0=120,1=98"`` -> ``{0: 120, 1: 98}``; raises :class:`CursorError` saying what is wrong."""
    cursor: dict[int, int] = {}
    text = text.strip()
    if not text:
        return cursor
    parts = text.split(",")
    if len(parts) > MAX_CURSOR_SHARDS:
        raise CursorError(f"names {len(parts)} shards, at most {MAX_CURSOR_SHARDS}")
    for part in parts:
        shard_text, equals, sequence_text = part.strip().partition("=")
        try:
            if not equals:
                raise ValueError
            shard_id, sequence = int(shard_text), int(sequence_text)
        except ValueError:
            raise CursorError(f"{part.strip()[:40]!r} is not SHARD_ID=SEQUENCE") from None
        if shard_id < 0 or sequence < 0:
            raise CursorError(f"{part.strip()[:40]!r}: shard id and sequence must be >= 0")
        if shard_id in cursor:
            raise CursorError(f"shard {shard_id} is named twice")
        cursor[shard_id] = sequence
    return cursor


def format_cursor(cursor: Mapping[int, int]) -> str:
    """The metadata value of ``cursor``, shards in id order."""
    return ",".join(f"{shard_id}={cursor[shard_id]}" for shard_id in sorted(cursor))


def report_sequence(data: bytes) -> int:
    """The ``sequence`` of an encoded ExecutionReport (field 1, which the shards encode first)."""
    if len(data) > 1 and data[0] == 0x08:
        value = shift = 0
        for byte in data[1:11]:
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
    return api.ExecutionReport.FromString(data).sequence


@dataclass
class _Answer:
    """One shard response message, its acks given out up to ``next_ack``."""

    response: api.OrderStreamResponse
    next_ack: int = 0

    @property
    def acks_left(self) -> int:
        return len(self.response.acks) - self.next_ack


@dataclass
class _Shard:
    answers: deque[_Answer] = field(default_factory=deque)


class AckMerge:
    """The acks and reports of several shards' OrderStreams, given back in the client's input
    order (module docstring). Single-threaded; bounded by its caller, who sends no more inputs
    while :attr:`pending_inputs` is at its limit and reads no more of a shard while
    :meth:`queued` of it is at its limit."""

    def __init__(self) -> None:
        #: Runs of [shard id, inputs], in input order, of inputs whose acks are not given yet.
        self._runs: deque[list[int]] = deque()
        self._shards: dict[int, _Shard] = {}
        self.pending_inputs = 0

    def sent(self, shard_ids: Iterable[int]) -> None:
        """Inputs were sent, in this order, to these shards (one id per input)."""
        runs = self._runs
        count = 0
        for shard_id in shard_ids:
            count += 1
            if runs and runs[-1][0] == shard_id:
                runs[-1][1] += 1
            else:
                runs.append([shard_id, 1])
            if shard_id not in self._shards:
                self._shards[shard_id] = _Shard()
        self.pending_inputs += count

    def received(self, shard_id: int, response: api.OrderStreamResponse) -> None:
        """A shard's response message arrived."""
        shard = self._shards.get(shard_id)
        if shard is None:
            shard = self._shards[shard_id] = _Shard()
        shard.answers.append(_Answer(response))

    def queued(self, shard_id: int) -> int:
        """Response messages of ``shard_id`` held here (not wholly given out yet)."""
        shard = self._shards.get(shard_id)
        return 0 if shard is None else len(shard.answers)

    def waiting_for(self) -> int | None:
        """The shard whose ack is next in input order, if its ack is not here yet; else None."""
        if not self._runs:
            return None
        shard_id = self._runs[0][0]
        answers = self._shards[shard_id].answers
        return shard_id if not answers or not answers[0].acks_left else None

    @property
    def empty(self) -> bool:
        """Nothing pending or held."""
        return not self._runs and not any(s.answers for s in self._shards.values())

    def ready(self, max_items: int) -> api.OrderStreamResponse | None:
        """A response of what can be given now (at most about ``max_items`` acks and reports), or
        None when nothing can be."""
        out = api.OrderStreamResponse()
        items = 0
        runs = self._runs
        shards = self._shards
        while items < max_items:
            progressed = False
            for shard in shards.values():  # reports whose acks are all given
                answers = shard.answers
                while answers and not answers[0].acks_left and items < max_items:
                    executions = answers.popleft().response.executions
                    out.executions.extend(executions)
                    items += len(executions)
                    progressed = True
            if runs and items < max_items:
                run = runs[0]
                answers = shards[run[0]].answers
                if answers and answers[0].acks_left:
                    head = answers[0]
                    take = min(run[1], head.acks_left, max_items - items)
                    out.acks.extend(head.response.acks[head.next_ack : head.next_ack + take])
                    head.next_ack += take
                    run[1] -= take
                    if not run[1]:
                        runs.popleft()
                    self.pending_inputs -= take
                    items += take
                    progressed = True
            if not progressed:
                break
        if not out.acks and not out.executions:
            return None
        return out
