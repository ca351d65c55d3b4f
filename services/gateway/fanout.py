"""Streams the gateway serves across several shards: one client stream, one upstream stream per
shard, merged back (the rules, without gRPC, are in :mod:`services.gateway.streams`).

**OrderStream** (:class:`OrderStreamFanout`): each client message is split by shard (a new order
by its symbol's owner; a cancel or replace by its order id's shard bits, else by the route the
gateway remembers for its client order id, else by asking every shard, as the unary calls do); each
shard's part goes on that shard's upstream stream, opened on the first input for it. The client
gets **its acks in its input order across the whole stream**, as from one service (a faster
shard's acks wait for the slower shard's earlier ones), and each shard's execution reports in that
shard's sequence order, never before the acks that shard sent before them (so an order's ack comes
no later than its first report); reports of different shards interleave as they arrive. A
stream's reports are those of the shards it has sent inputs to (StreamExecutions gives every
shard's).

Bounds: while ``order_stream_max_pending_inputs`` inputs have acks the client has not been given,
the gateway reads no more client messages (gRPC flow control then holds the client); at most
``stream_max_queued_messages`` response messages are held per shard, after which that shard is not
read (its flow control holds it, and a shard whose client falls far behind cuts the stream off
itself). A client that does not read its acks so stops being read; nothing grows without bound.

Endings: when the client half-closes, every upstream is half-closed and the stream ends once each
shard has answered. A shard's stream failing ends the client's stream with that shard's status
(its rich details kept) and a message naming the shard and saying how many inputs got no ack
here (look their orders up with GetOrder; resending is safe, a shard answers an order it already
has with REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID). Nothing is retried.

**StreamExecutions without a symbol** (:func:`merge_reports`): one upstream stream per shard of
the map when the call started, each from the client's per-shard cursor; reports interleave as
they arrive, each shard's in its sequence order; at most ``stream_merge_buffer_reports`` read and
not yet sent. A shard's stream failing (or ending) ends the merged stream with the shard named and
the per-shard cursor of what was sent, in the message and in trailing metadata; so does a new
shard map with other shards (UNAVAILABLE: resume, and the stream covers the new map's shards).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2

from hftgate.grpcserver import STREAM_ADMITTED_METADATA
from hftgate.shardmap import Shard
from hftgate.telemetry import ClientSpan, describe_malformed
from hftgate.v1 import execution_pb2 as api
from services.gateway.streams import CURSOR_METADATA, AckMerge, format_cursor, report_sequence
from services.gateway.upstream import ShardChannel, ShardFailed, named_status


class StreamEnded(Exception):
    """A merged stream must end with ``status`` (and ``trailing`` metadata besides its details)."""

    def __init__(self, status: status_pb2.Status, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(status.message)
        self.status = status
        self.trailing = trailing


def bad_request(field_name: str, description: str) -> StreamEnded:
    violation = error_details_pb2.BadRequest.FieldViolation(field=field_name, description=description)
    detail = error_details_pb2.BadRequest(field_violations=[violation])
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=description)
    status.details.add().Pack(detail)
    return StreamEnded(status)


def read_stream_message(data: bytes, max_inputs: int) -> api.OrderStreamRequest:
    """One client OrderStream message, checked as a shard checks it before anything of it is
    forwarded: :class:`StreamEnded` (INVALID_ARGUMENT with a BadRequest) when its bytes are not a
    valid message or it carries no input or more than ``max_inputs``."""
    try:
        message = api.OrderStreamRequest.FromString(data)
    except DecodeError:
        detail = describe_malformed(data, api.OrderStreamRequest.DESCRIPTOR)
        raise bad_request(
            "inputs", f"request is not a valid hftgate.v1.OrderStreamRequest: {detail}"
        ) from None
    count = len(message.inputs)
    if count == 0 or count > max_inputs:
        raise bad_request("inputs", f"a stream message must carry 1..{max_inputs} inputs, got {count}")
    return message


@dataclass
class Upstream:
    """One shard's stream opened for a client's stream, and the CLIENT span around it (if traced)."""

    channel: ShardChannel
    call: Any
    span: ClientSpan | None = None
    ended: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    _admitted: asyncio.Future[bool] | None = field(default=None, repr=False)

    def finish(self, error: BaseException | None) -> None:
        """End the span with the stream's outcome (once)."""
        span, self.span = self.span, None
        if span is not None:
            span.__exit__(None if error is None else type(error), error, None)

    async def admitted(self) -> bool:
        """Whether the shard admitted this bidirectional stream (:func:`stream_admitted`; asked of
        the shard once, the answer kept): write nothing into it before."""
        if self._admitted is None:
            self._admitted = asyncio.ensure_future(stream_admitted(self.call))
        return await asyncio.shield(self._admitted)


#: How long to wait for a shard's admission before writing anyway: a shard of an earlier version
#: sends no admission, and its stream must still work (its first write then waits this once).
ADMISSION_WAIT_S = 0.5


async def stream_admitted(call: Any, wait_s: float = ADMISSION_WAIT_S) -> bool:
    """True once ``call``'s initial metadata says the service admitted the stream
    (:data:`~hftgate.grpcserver.STREAM_ADMITTED_METADATA`), or none came within ``wait_s``; False
    when the stream ended first (refused, or failed). Writing only after True keeps a refusal's
    status as the service sent it: a write racing it would make grpcio's asyncio client report
    INTERNAL instead (grpc issue #36066)."""
    try:
        # (shielded: the wait may time out, the call's own wait for its metadata must go on)
        metadata = await asyncio.wait_for(asyncio.shield(call.initial_metadata()), wait_s)
    except TimeoutError:
        return True
    except Exception:  # the stream failed: its reader reports how
        return False
    return any(key == STREAM_ADMITTED_METADATA for key, _ in metadata or ())


async def after_admission(
    upstream: Awaitable[Upstream], requests: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """``requests``, once the shard admitted the stream (``upstream``, awaited: the call this
    iterator feeds is made after it); nothing when it was refused, and not before its status is
    in: an iterator that ended earlier would half-close a stream whose end grpcio has not seen."""
    opened = await upstream
    if not await opened.admitted():
        with contextlib.suppress(Exception):
            await opened.call.code()
        return
    async for data in requests:
        yield data


#: Opens ``method`` on ``shard`` (request bytes for a server stream, None for a bidirectional one).
OpenUpstream = Callable[[Shard, str, None], Upstream]
#: Which shard an OrderStream input goes to (may ask the shards; raises ShardFailed).
RouteInput = Callable[[api.OrderInput], Awaitable[Shard]]
#: Waits until the account may send ``cost`` more orders (the rate limit's pacing).
Pace = Callable[[int], Awaitable[None]]


def order_cost(message: api.OrderStreamRequest) -> int:
    """Orders and replaces in a stream message (cancels are free, see ratelimit.py)."""
    return sum(1 for one in message.inputs if one.WhichOneof("input") in ("new_order", "replace"))


class OrderStreamFanout:
    """One client OrderStream across shards (module docstring)."""

    def __init__(
        self,
        open_upstream: OpenUpstream,
        route: RouteInput,
        pace: Pace | None,
        *,
        max_pending_inputs: int,
        max_message_inputs: int,
        max_queued_messages: int,
        page_items: int,
    ) -> None:
        self._open = open_upstream
        self._route = route
        self._pace = pace
        self._max_pending = max_pending_inputs
        self._max_inputs = max_message_inputs
        self._max_queued = max_queued_messages
        self._page = page_items
        self.merge = AckMerge()
        #: Upstream streams by shard id (opened lazily).
        self.upstreams: dict[int, Upstream] = {}
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._failure: StreamEnded | None = None
        self._client_done = False

    # --- failures ------------------------------------------------------------------------------
    def _fail(self, ended: StreamEnded) -> None:
        if self._failure is None:
            self._failure = ended
        self._changed.set()
        self._room.set()

    def _shard_failed(self, failure: ShardFailed) -> StreamEnded:
        pending = self.merge.pending_inputs
        suffix = (
            f" (the gateway's order stream across shards ended; {pending} input(s) sent got no ack "
            "here: look their orders up with GetOrder, or send them again, which is safe: a shard "
            "answers an order it already has with REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID)"
            if pending
            else ""
        )
        return StreamEnded(named_status(failure, suffix))

    # --- the shards' side ---------------------------------------------------------------------
    def _upstream(self, shard: Shard) -> Upstream:
        known = self.upstreams.get(shard.shard_id)
        if known is None:
            known = self.upstreams[shard.shard_id] = self._open(shard, "OrderStream", None)
            known.task = asyncio.get_running_loop().create_task(
                self._read_shard(shard.shard_id, known), name=f"order-stream-shard-{shard.shard_id}"
            )
        return known

    async def _read_shard(self, shard_id: int, upstream: Upstream) -> None:
        merge = self.merge
        error: BaseException | None = None
        try:
            async for data in upstream.call:
                merge.received(shard_id, api.OrderStreamResponse.FromString(data))
                self._changed.set()
                while merge.queued(shard_id) >= self._max_queued and self._failure is None:
                    self._room.clear()
                    await self._room.wait()
            if not self._client_done:
                self._fail(
                    StreamEnded(
                        status_pb2.Status(
                            code=code_pb2.UNAVAILABLE,
                            message=f"{upstream.channel.name} ended its order stream before the client "
                            "did: open a new stream",
                        )
                    )
                )
        except grpc.aio.AioRpcError as err:
            error = err
            self._fail(self._shard_failed(ShardFailed(upstream.channel, err)))
        except DecodeError as err:
            error = err
            self._fail(
                StreamEnded(
                    status_pb2.Status(
                        code=code_pb2.INTERNAL,
                        message=f"{upstream.channel.name} sent an OrderStreamResponse that does not decode",
                    )
                )
            )
        finally:
            upstream.ended = True
            upstream.finish(error)
            self._changed.set()

    # --- the client's side ----------------------------------------------------------------------
    async def _read_client(self, requests: AsyncIterator[bytes]) -> None:
        merge = self.merge
        try:
            async for data in requests:
                if self._failure is not None:
                    return
                try:
                    message = read_stream_message(data, self._max_inputs)
                except StreamEnded as refused:
                    self._fail(refused)
                    return
                while merge.pending_inputs >= self._max_pending and self._failure is None:
                    self._room.clear()  # the client is not taking its acks: stop reading it
                    await self._room.wait()
                if self._pace is not None:
                    await self._pace(order_cost(message))
                await self._send(message)
            self._client_done = True
            for upstream in list(self.upstreams.values()):
                if not upstream.ended:
                    with contextlib.suppress(Exception):  # it failed meanwhile: its reader says why
                        await upstream.call.done_writing()
        except ShardFailed as failure:
            self._fail(self._shard_failed(failure))
        except StreamEnded as ended:
            self._fail(ended)
        except grpc.aio.AioRpcError:  # the client's own stream broke (reset): nothing to answer
            gone = status_pb2.Status(code=code_pb2.CANCELLED, message="the client went away")
            self._fail(StreamEnded(gone))
        except Exception as exc:  # anything else ends the stream saying what, never a hang
            said = f"order stream request failed: {exc!r}"
            broken = status_pb2.Status(code=code_pb2.INTERNAL, message=said)
            self._fail(StreamEnded(broken))
        finally:
            self._changed.set()

    async def _send(self, message: api.OrderStreamRequest) -> None:
        inputs = message.inputs
        shards: list[Shard] = [await self._route(one) for one in inputs]
        if len({s.shard_id for s in shards}) == 1:
            parts = {shards[0]: message}
        else:
            parts = {}
            for shard, one in zip(shards, inputs, strict=True):
                part = parts.get(shard)
                if part is None:
                    part = parts[shard] = api.OrderStreamRequest()
                part.inputs.append(one)
        self.merge.sent(s.shard_id for s in shards)  # before any ack can come back
        self._changed.set()
        for shard, part in parts.items():
            upstream = self._upstream(shard)
            if upstream.ended:
                if self._failure is None:
                    self._fail(
                        StreamEnded(
                            status_pb2.Status(
                                code=code_pb2.UNAVAILABLE,
                                message=f"{upstream.channel.name} ended its order stream: open a new stream",
                            )
                        )
                    )
                return
            if not await upstream.admitted():  # refused: its reader reports the shard's status
                return
            try:
                await upstream.call.write(part.SerializeToString())
            except Exception:  # the upstream ended meanwhile: its reader reports why
                return

    # --- the merged stream -------------------------------------------------------------------------
    async def run(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The client's responses; raises :class:`StreamEnded` when the stream must end with a status."""
        merge = self.merge
        loop = asyncio.get_running_loop()
        client = loop.create_task(self._read_client(requests), name="order-stream-client")
        try:
            while True:
                self._changed.clear()
                if self._failure is not None:
                    raise self._failure
                out = merge.ready(self._page)
                if out is not None:
                    self._room.set()
                    yield out.SerializeToString()
                    continue
                if self._client_done and all(u.ended for u in self.upstreams.values()):
                    if merge.pending_inputs or not merge.empty:
                        raise StreamEnded(
                            status_pb2.Status(
                                code=code_pb2.INTERNAL,
                                message=f"the shards ended their streams with {merge.pending_inputs} "
                                "input(s) unanswered or acks left over: look the orders up with GetOrder",
                            )
                        )
                    return
                await self._changed.wait()
        finally:
            client.cancel()
            for upstream in self.upstreams.values():
                upstream.finish(asyncio.CancelledError())  # still open: the gateway cancels it
                upstream.call.cancel()
                if upstream.task is not None:
                    upstream.task.cancel()
            tasks = [client, *(u.task for u in self.upstreams.values() if u.task is not None)]
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task


# --- StreamExecutions across shards --------------------------------------------------------------
async def merge_reports(
    upstreams: Sequence[Upstream],
    cursor: dict[int, int],
    buffer_reports: int,
    shards_changed: Callable[[], Awaitable[str]] | None = None,
) -> AsyncIterator[bytes]:
    """Every upstream's reports as they come (module docstring). ``cursor`` (shard id -> last
    sequence sent) is kept up to date; raises :class:`StreamEnded` when a shard's stream ends, or
    (UNAVAILABLE, saying what it returns) when ``shards_changed`` completes: a map with other shards
    would leave a new shard's reports out, so the client resumes on the new map."""
    queue: asyncio.Queue[tuple[int, bytes] | _Ended] = asyncio.Queue(maxsize=buffer_reports)

    def ended(upstream: Upstream | None, error: BaseException | str | None) -> StreamEnded:
        resume = (
            f"; resume through the gateway with {CURSOR_METADATA}: {format_cursor(cursor)} "
            "(the reports sent before this status are in it)"
        )
        if upstream is None:
            status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=f"{error}{resume}")
        elif isinstance(error, grpc.aio.AioRpcError):
            status = named_status(ShardFailed(upstream.channel, error), resume)
        elif error is None:
            status = status_pb2.Status(
                code=code_pb2.UNAVAILABLE, message=f"{upstream.channel.name} ended its report stream{resume}"
            )
        else:
            status = status_pb2.Status(
                code=code_pb2.INTERNAL,
                message=f"reading {upstream.channel.name}'s report stream failed: {error!r}{resume}",
            )
        return StreamEnded(status, ((CURSOR_METADATA, format_cursor(cursor)),))

    async def read(upstream: Upstream) -> None:
        shard_id = upstream.channel.shard.shard_id
        error: BaseException | None = None
        try:
            async for data in upstream.call:
                await queue.put((shard_id, data))
        except Exception as err:  # AioRpcError: the shard's status; anything else: said as INTERNAL
            error = err
        finally:
            upstream.ended = True
            upstream.finish(error)
        await queue.put(_Ended(upstream, error))

    async def watch(changed: Callable[[], Awaitable[str]]) -> None:
        await queue.put(_Ended(None, await changed()))

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(read(u), name="report-stream-shard") for u in upstreams]
    if shards_changed is not None:
        tasks.append(loop.create_task(watch(shards_changed), name="report-stream-map"))
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _Ended):
                # The cursor covers what was yielded; reports still queued were not sent.
                raise ended(item.upstream, item.error)
            shard_id, data = item
            cursor[shard_id] = report_sequence(data)
            yield data
    finally:
        for upstream in upstreams:
            upstream.finish(asyncio.CancelledError())  # still open: the gateway cancels it
            upstream.call.cancel()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


@dataclass
class _Ended:
    """Queued by a shard's reader when its stream ended (the status is made when it is taken)."""

    upstream: Upstream | None  # None: the shard map changed (``error`` says how)
    error: BaseException | str | None
