"""gRPC wiring of this shard's side of a symbol move (shard_admin.proto's ShardAdminService): who
may call it, the shard map epoch a step needs, and the statuses; the move itself is handover.py's.
app.py builds it beside the ExecutionService servicer (server.py), whose fence and secret it shares.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from hftgate import security, shardmap
from hftgate.v1 import shard_admin_pb2, shard_admin_pb2_grpc
from services.execution.handover import (
    Handover,
    HandoverRefused,
    book_length,
    book_of_rows,
    check_move_id,
    rows_of_book,
)
from services.execution.server import ExecutionServicer, abort_bad_request

log = logging.getLogger(__name__)

ADMIN_SERVICE_NAME = "hftgate.v1.ShardAdminService"
#: The service principals that may move symbols (an operator command, the scaler's mover).
MOVE_PRINCIPALS = frozenset({security.ADMIN, "scaler"})


class ShardAdminServicer(shard_admin_pb2_grpc.ShardAdminServiceServicer):
    """shard_admin.proto: this shard's side of a symbol move (the logic is in handover.py)."""

    def __init__(self, servicer: ExecutionServicer, handover: Handover) -> None:
        self.servicer = servicer
        self.handover = handover
        self.fence = servicer.fence
        self.shard_id = servicer.shard_id

    async def _authorize(self, context: grpc.aio.ServicerContext, move_id: str, symbol: str) -> None:
        secret = self.servicer.secret
        principal = None if secret is None else security.principal_of(context, secret)
        if principal not in MOVE_PRINCIPALS:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"moving symbols needs the service token of one of: {', '.join(sorted(MOVE_PRINCIPALS))}",
            )
        try:
            check_move_id(move_id)
            shardmap.check_symbol(symbol)
        except (HandoverRefused, shardmap.ShardMapError) as exc:
            await abort_bad_request(
                context, "move_id" if isinstance(exc, HandoverRefused) else "symbol", str(exc)
            )

    async def _map_at_least(self, context: grpc.aio.ServicerContext, epoch: int) -> shardmap.ShardMap:
        fence = self.fence
        if fence.epoch < epoch:
            try:
                await fence.refresh()
            except shardmap.ShardMapUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if fence.epoch < epoch:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"shard {self.shard_id} holds shard map epoch {fence.epoch}, below the move's {epoch}",
            )
        return fence.map

    async def _map_where(
        self,
        context: grpc.aio.ServicerContext,
        epoch: int,
        holds: Callable[[shardmap.ShardMap], bool],
        refusal: Callable[[], str],
    ) -> shardmap.ShardMap:
        """:meth:`_map_at_least`, read once more when it does not show what the move's step needs
        (``holds``: the mark may be newer than the fence's last poll); when it still does not, the
        call ends FAILED_PRECONDITION saying ``refusal()``."""
        current = await self._map_at_least(context, epoch)
        if not holds(current):
            current = await self.fence.refresh()
            if not holds(current):
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal())
        return current

    async def ExportSymbol(
        self, request: shard_admin_pb2.ExportSymbolRequest, context: grpc.aio.ServicerContext
    ) -> shard_admin_pb2.ExportSymbolResponse:
        await self._authorize(context, request.move_id, request.symbol)
        symbol = request.symbol
        current = await self._map_where(
            context,
            request.min_epoch,
            lambda m: symbol in m.moving,
            lambda: (
                f"shard map epoch {self.fence.epoch} does not mark {symbol} moving: publish the move first"
            ),
        )
        if current.owner(symbol).shard_id != self.shard_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"shard {self.shard_id} does not own {symbol} at epoch {self.fence.epoch}: "
                f"shard {current.owner(symbol).shard_id} does",
            )
        try:
            book = await self.handover.export(symbol)
        except HandoverRefused as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log.info("move %s: exported %d order(s) of %s", request.move_id, len(book.original_order_id), symbol)
        reply = shard_admin_pb2.ExportSymbolResponse(epoch=self.fence.epoch, shard_id=self.shard_id)
        if request.columns:
            reply.book.CopyFrom(book)
        else:  # a caller from before MovedBook
            reply.orders.extend(rows_of_book(book))
        return reply

    async def ImportSymbol(
        self, request: shard_admin_pb2.ImportSymbolRequest, context: grpc.aio.ServicerContext
    ) -> shard_admin_pb2.ImportSymbolResponse:
        await self._authorize(context, request.move_id, request.symbol)
        symbol = request.symbol
        await self._map_where(
            context,
            request.min_epoch,
            lambda m: m.moving.get(symbol) == self.shard_id,
            lambda: (
                f"shard map epoch {self.fence.epoch} does not mark {symbol} moving to shard {self.shard_id}"
            ),
        )
        book = request.book
        if request.orders:  # rows, from a caller that does not know MovedBook
            if request.book.original_order_id:
                await abort_bad_request(context, "book", "a book comes as orders or as book, not both")
            book = book_of_rows(list(request.orders))
        try:
            book_length(book)
        except HandoverRefused as exc:
            await abort_bad_request(context, "book", str(exc))
        try:
            result = await self.handover.import_book(request.move_id, symbol, book)
        except HandoverRefused as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Exception as exc:  # the journal: nothing acknowledged, the mover sends it again
            log.exception("move %s: import of %s failed", request.move_id, symbol)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"import of {symbol} failed: {exc}")
        return shard_admin_pb2.ImportSymbolResponse(
            orders=result.orders, already_imported=result.already_imported, journal_seq=result.journal_seq
        )

    async def ReleaseSymbol(
        self, request: shard_admin_pb2.ReleaseSymbolRequest, context: grpc.aio.ServicerContext
    ) -> shard_admin_pb2.ReleaseSymbolResponse:
        await self._authorize(context, request.move_id, request.symbol)
        symbol, target = request.symbol, request.to_shard_id
        if self.handover.handed_over.get(symbol) == target:
            return shard_admin_pb2.ReleaseSymbolResponse(already_released=True)

        await self._map_where(
            context,
            0,
            lambda m: m.moving.get(symbol) == target or m.owner(symbol).shard_id == target,
            lambda: (
                f"shard map epoch {self.fence.epoch} neither moves {symbol} to shard {target} nor gives it "
                "to that shard"
            ),
        )
        try:
            released = await asyncio.to_thread(self.handover.release, symbol, target)
        except OSError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot record the release: {exc}")
        return shard_admin_pb2.ReleaseSymbolResponse(already_released=not released)

    async def SyncShardMap(
        self, request: shard_admin_pb2.SyncShardMapRequest, context: grpc.aio.ServicerContext
    ) -> shard_admin_pb2.SyncShardMapResponse:
        secret = self.servicer.secret
        if (None if secret is None else security.principal_of(context, secret)) not in MOVE_PRINCIPALS:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "SyncShardMap needs the admin or scaler token"
            )
        if self.fence.epoch < request.min_epoch:
            try:
                await self.fence.refresh()
            except shardmap.ShardMapUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return shard_admin_pb2.SyncShardMapResponse(epoch=self.fence.epoch)
