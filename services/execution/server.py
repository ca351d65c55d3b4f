"""gRPC wiring of the execution service: the ExecutionService servicer (app.py builds it, and the
ShardAdminService one of shard_admin.py, and starts the server).

Every call passes :class:`~hftgate.security.ServiceAuthInterceptor` first (a call with neither a
valid service token nor an API key is refused UNAUTHENTICATED before it is decoded); the servicer
then authenticates the account (``x-api-key`` metadata, looked up by its keyed hash), turns
call-level problems into
statuses (see the service comment in execution.proto), decodes requests into
:class:`~services.execution.admission.Inputs` and encodes the core's acks and reports back. All the
order logic is below it: core.py (the order path) with admission.py and publishing.py, state.py
and the C core behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
import numpy as np
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from hftgate import security
from hftgate.grpcserver import STREAM_ADMITTED_METADATA, abort_invalid_argument, check_batch_size
from hftgate.native.clock import now_ns
from hftgate.native.exec_wire import ExecWireEncoder
from hftgate.native.histogram import LatencyHistogram
from hftgate.native.order_wire import NewOrderWireDecoder
from hftgate.protowire import length_delimited
from hftgate.shardmap import ShardMap
from hftgate.telemetry import RequestBytes, SerializedResponse, takes_request_bytes
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from services.execution import codec, fencing
from services.execution.admission import (
    KIND_CANCEL,
    KIND_REPLACE,
    Acks,
    Inputs,
    RateLimited,
    SingleAck,
    cancel_inputs,
)
from services.execution.config import ExecutionConfig
from services.execution.core import ExecutionCore, InputRefused, ServiceUnavailable
from services.execution.fairness import FairAdmission, StreamLimitExceeded, StreamSlot, StreamSlots
from services.execution.handover import Handover
from services.execution.publishing import ReaderTooSlow, ReportSubscriber
from services.execution.reference import (
    NOT_HELD,
    AccountSpec,
)
from services.execution.restated import RestatedReports
from services.execution.snapshot import Snapshotter
from services.execution.state import OPEN_STATUSES, REJECTED, is_purged

log = logging.getLogger(__name__)

#: From this many acks or reports in one message up, they are written as wire bytes in one C call
#: (codec.ack_entries, codec.report_entries); below it, as protobuf objects: the C call's fixed
#: cost (~20 us for its columns and buffers) is an ack's ~2 us times about ten.
_WIRE_MIN_ENTRIES = 8

SERVICE_NAME = "hftgate.v1.ExecutionService"
API_KEY_METADATA = security.API_KEY_METADATA
ACCOUNT_METADATA = security.ACCOUNT_METADATA
#: The only principal whose calls may name their account in ACCOUNT_METADATA.
GATEWAY_PRINCIPAL = "gateway"
#: The principal this service calls other services as (the cache, market data).
PRINCIPAL = "execution"


async def abort_bad_request(context: grpc.aio.ServicerContext, field_name: str, description: str) -> NoReturn:
    await abort_invalid_argument(context, field_name, description)


async def _abort_not_owner(
    context: grpc.aio.ServicerContext, refusal: fencing.Refusal, shard_id: int
) -> NoReturn:
    """FAILED_PRECONDITION with a google.rpc.ErrorInfo naming the owner: the caller refreshes its
    shard map and sends the call there (nothing of it was accepted here). A symbol being moved:
    UNAVAILABLE with a google.rpc.RetryInfo of a few ms (fencing.py says why)."""
    message = refusal.message(shard_id)
    if isinstance(refusal, fencing.SymbolMoving):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(fencing.MOVE_RETRY_DELAY_MS)
        moving = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message)
        moving.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        await context.abort_with_status(rpc_status.to_status(moving))  # type: ignore[attr-defined]
        raise AssertionError("abort raises")
    info = error_details_pb2.ErrorInfo(
        reason=fencing.NOT_SHARD_OWNER, domain=fencing.ERROR_DOMAIN, metadata=refusal.metadata()
    )
    status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=message)
    status.details.add().Pack(info)
    await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]
    raise AssertionError("abort raises")


async def _abort_rate_limited(
    context: grpc.aio.ServicerContext, account: AccountSpec, exc: RateLimited
) -> NoReturn:
    quota = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject=f"account:{account.name}",
                description=f"order rate limit of {account.rate_limit_orders_per_s:g}/s "
                f"(burst {account.rate_limit_burst}) reached",
            )
        ]
    )
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(1_000_000, int(exc.retry_after_s * 1e9)))
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=str(exc))
    status.details.add().Pack(quota)
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]
    raise AssertionError("abort raises")


class ExecutionServicer(api_grpc.ExecutionServiceServicer):
    """Translates execution.proto calls to :class:`ExecutionCore` calls."""

    def __init__(
        self,
        core: ExecutionCore,
        config: ExecutionConfig,
        secret: security.SuiteSecret | None = None,
        fence: fencing.ShardFence | None = None,
    ) -> None:
        self.core = core
        self.config = config
        #: Which symbols this shard takes new orders for (default: the single-shard map).
        self.fence = fence or fencing.ShardFence(config.shard_id, ShardMap.single(config.address))
        self.shard_id = config.shard_id
        #: ORed into every order and trade id that leaves (shard 0: nothing).
        self.shard_base = codec.shard_base_of(config.shard_id)
        core.publisher.shard_id = config.shard_id
        #: Verifies service tokens (GetStats gives suite-wide figures only to a service principal).
        self.secret = secret
        #: Set by app.start when snapshots are taken (GetStats' snapshots_taken).
        self.snapshotter: Snapshotter | None = None
        self.streams = StreamSlots(per_account=config.max_streams_per_account, total=config.max_streams)
        self.admission = FairAdmission(
            config.fair_slice_inputs,
            light_inputs=config.fair_light_inputs,
            max_defer_s=config.fair_max_defer_us / 1e6,
            light_grace_s=config.fair_light_grace_us / 1e6,
        )
        core.publisher.stream_max_behind_reports = config.stream_max_behind_reports
        core.fence = self.fence
        #: Orders moves brought here and symbols moved away (set by :func:`start`; None: no moves).
        self.handover: Handover | None = None
        #: Calls refused for a missing or unknown API key (the interceptor counts its own refusals).
        self.unauthenticated = 0
        # Batches of acks and reports are written as wire bytes in one C call (codec.ack_entries).
        self._wire = ExecWireEncoder()
        self._order_wire = NewOrderWireDecoder()
        self._symbol_texts = codec.SymbolTexts()

    # --- call-level checks -------------------------------------------------------------------------

    async def _account(self, context: grpc.aio.ServicerContext) -> AccountSpec:
        key = ""
        forwarded: str | bytes | None = None
        for name, value in context.invocation_metadata() or ():
            if name == API_KEY_METADATA:
                key = value if isinstance(value, str) else value.decode("utf-8", "replace")
            elif name == ACCOUNT_METADATA:
                forwarded = value
        if forwarded is not None:
            return await self._forwarded_account(context, forwarded)
        if not key:
            self.unauthenticated += 1
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"missing API key: send it in '{API_KEY_METADATA}'"
            )
        account = self.core.reference.account_for_key_held(key)
        if account is NOT_HELD:
            account = await self.core.authenticate(key)
        if account is None:
            self.unauthenticated += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        assert account is not None
        return account

    async def _forwarded_account(
        self, context: grpc.aio.ServicerContext, forwarded: str | bytes
    ) -> AccountSpec:
        """The account the gateway checked the API key of: trusted only with the "gateway"
        principal's valid token; any other caller naming an account is refused, nothing done."""
        principal = None if self.secret is None else security.principal_of(context, self.secret)
        if principal != GATEWAY_PRINCIPAL:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{ACCOUNT_METADATA} may be set only by the gateway"
            )
        try:
            text = forwarded if isinstance(forwarded, str) else forwarded.decode("ascii")
            name = urllib.parse.unquote(text, errors="strict")
        except UnicodeError:
            name = ""
        if not name or len(name) > 128:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{ACCOUNT_METADATA} must be a percent-encoded UTF-8 account name of 1..128 characters",
            )
        reference = self.core.reference
        account = reference.account_held(name)
        if account is NOT_HELD:
            account = await reference.account(name)
        if account is None:
            self.unauthenticated += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"unknown account {clipped(name)}")
        assert isinstance(account, AccountSpec)
        return account

    async def _rate(self, context: grpc.aio.ServicerContext, account: AccountSpec) -> None:
        try:
            self.core.admission.check_rate(account, now_ns())
        except RateLimited as exc:
            await _abort_rate_limited(context, account, exc)

    async def _submit(self, context: grpc.aio.ServicerContext, account: AccountSpec, inputs: Inputs) -> Acks:
        admission = self.admission
        light = len(inputs) <= admission.light_inputs
        if light:
            admission.light_enter()
        try:
            await self._admit(account, len(inputs))
            return await self.core.submit(account, inputs)
        except InputRefused as exc:
            await _abort_not_owner(context, exc.refusal, self.shard_id)
        except ServiceUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise AssertionError("abort raises") from exc
        finally:
            if light:
                admission.light_exit()

    def _ack_protos(
        self, acks: Acks, symbols: list[str] | None = None, make: Callable[..., api.OrderAck] = api.OrderAck
    ) -> list[api.OrderAck]:
        protos = codec.encode_acks(acks, time.time_ns(), symbols, make, self.shard_base)
        if self.handover is not None and self.handover.local_of:
            for proto in protos:
                self._as_client_knows(proto)
        self.core.record_ack_sent(acks)
        return protos

    def _as_protos(self, entries: int) -> bool:
        """Whether acks or reports are built as protobuf objects rather than wire bytes in C: below
        _WIRE_MIN_ENTRIES, and for orders taken over by a move (their ids are translated)."""
        return entries < _WIRE_MIN_ENTRIES or (self.handover is not None and bool(self.handover.local_of))

    def _ack_bytes(self, acks: Acks, symbols: list[str] | None = None) -> bytes:
        """``acks`` as the acks entries (field 1) of an OrderStreamResponse or a
        SubmitOrdersResponse, serialized: both are sent as their entries' bytes
        (hftgate.telemetry.bytes_or), so wire entries from C go out as they are, never parsed into
        a message and serialized again."""
        if self._as_protos(len(acks.kind)):
            message = api.OrderStreamResponse()
            self._ack_protos(acks, symbols, message.acks.add)
            return message.SerializeToString()
        data = codec.ack_entries(acks, time.time_ns(), symbols, self._wire, self.shard_base)
        self.core.record_ack_sent(acks)
        return data

    def _report_bytes(self, page: np.ndarray) -> bytes:
        """:meth:`_ack_bytes` for the executions (field 2) of ``page``'s reports."""
        if self._as_protos(len(page)):
            message = api.OrderStreamResponse()
            self._reports(page, message.executions.add)
            return message.SerializeToString()
        return codec.report_entries(page, self.core.state, self._symbol_texts, self._wire, self.shard_base)

    def _as_client_knows(self, message: api.OrderAck | api.ExecutionReport) -> None:
        """An ack or report of an order a move brought here, as its client knows the order: its
        original id, and the quantity and fills it had before the move added back."""
        assert self.handover is not None
        lots = self.handover.carried_by_shown.get(message.order_id, 0)
        if lots:
            message.cum_quantity_lots += lots
            if message.quantity_lots:
                message.quantity_lots += lots
            if message.status == api.ORDER_STATUS_NEW:
                message.status = api.ORDER_STATUS_PARTIALLY_FILLED
        message.order_id = self.handover.shown(message.order_id)

    def _reports(
        self, page: np.ndarray, make: Callable[..., api.ExecutionReport] = api.ExecutionReport
    ) -> list[api.ExecutionReport]:
        """ExecutionReports of ``page`` (built by ``make``), with the original ids of orders taken
        over by moves."""
        reports = codec.encode_reports(page, self.core.state, self.shard_base, make)
        if self.handover is not None and self.handover.local_of:
            shown = self.handover.shown
            for report in reports:
                self._as_client_knows(report)
                if report.counterparty_order_id:
                    report.counterparty_order_id = shown(report.counterparty_order_id)
        return reports

    async def _resolve(
        self, context: grpc.aio.ServicerContext, account: AccountSpec, order_id: int, client_order_id: str
    ) -> int:
        """The named order's id, or the call's status: INVALID_ARGUMENT, or NOT_FOUND.

        Another account's order is NOT_FOUND with exactly the message of an order id never used
        (and a rejected order's): answering otherwise would tell any account which of the
        sequential order ids exist, and so how much others trade."""
        state = self.core.state
        if not order_id and not client_order_id:
            await abort_bad_request(context, "order_id", "name the order by order_id or client_order_id")
        if order_id < 0:
            await abort_bad_request(context, "order_id", f"order_id must be positive, got {order_id}")
        public_id = order_id
        taken = None if self.handover is None or not order_id else self.handover.local_id(order_id)
        if taken is not None:  # an order a move brought here keeps the id it was given
            order_id = taken
        elif order_id:
            # Another shard's id answers exactly like an id never used here.
            order_id = codec.local_id(order_id, self.shard_id)
            if not order_id:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no order with order_id {public_id}")
        if client_order_id:
            by_client = state.order_id_for(account.account_id, client_order_id)
            if not by_client:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"no order with client_order_id {client_order_id!r}"
                )
            if order_id and order_id != by_client:
                await abort_bad_request(
                    context,
                    "client_order_id",
                    f"order_id {public_id} and client_order_id {client_order_id!r} disagree",
                )
            return by_client
        row = state.order(order_id)
        if (
            row is None
            or int(row["account_id"]) != account.account_id
            or int(row["status"]) == REJECTED
            or is_purged(row)  # a frozen copy dropped: this shard no longer knows how the order ended
        ):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no order with order_id {public_id}")
        return order_id

    async def _check_not_moved(
        self, context: grpc.aio.ServicerContext, order_id: int, *, reading: bool = False
    ) -> None:
        """A working order whose symbol is moving (a change: UNAVAILABLE, retry) or was handed
        over (NOT_SHARD_OWNER naming the new owner) is not this shard's to change or show."""
        fence = self.fence
        if not fence.handed_over and not fence.map.moving:
            return
        state = self.core.state
        row = state.order(order_id)
        if row is None or int(row["status"]) not in OPEN_STATUSES:
            return  # history stays here
        refusal = fence.resting_refusal(state.symbol_names[int(row["symbol_id"])])
        if refusal is None or (reading and isinstance(refusal, fencing.SymbolMoving)):
            return
        await _abort_not_owner(context, refusal, self.shard_id)

    # --- order entry ---------------------------------------------------------------------------------

    @takes_request_bytes
    async def SubmitOrder(
        self, request: RequestBytes, context: grpc.aio.ServicerContext
    ) -> api.SubmitOrderResponse:
        """Read from the bytes the request came in, in C (hft_order_wire.h, as SubmitOrders), or
        by protobuf where the fast path does not take them, before any other check: a malformed
        request is refused INVALID_ARGUMENT whoever sends it."""
        arrival = now_ns()
        entry = codec.read_submit_order(request.data, self._order_wire, time.time_ns(), arrival)
        if entry is None:
            message = await request.message()
            entry = codec.decode_new_order(message.order, time.time_ns(), arrival)
        account = await self._account(context)
        await self._rate(context, account)
        if entry.symbol:
            refusal = self.fence.refusal(entry.symbol)
            if refusal is not None:
                await _abort_not_owner(context, refusal, self.shard_id)
        admission = self.admission
        admission.light_enter()
        # The response of an accepted order is built while its fsync runs (see submit_order's
        # ``matched``), a rejected one's after; either way whether it is durable and the ack's time
        # are set last.
        built: list[api.SubmitOrderResponse] = []

        def build(ack: SingleAck) -> None:
            built.append(
                api.SubmitOrderResponse(ack=codec.encode_single_ack(ack, entry.symbol, 0, self.shard_base))
            )

        try:
            waiter = self.admission.admit(account.account_id, 1)  # a light call: no heavy step
            if waiter is not None:
                await waiter
            ack = await self.core.submit_order(account, entry, build)
        except InputRefused as exc:
            await _abort_not_owner(context, exc.refusal, self.shard_id)
        except ServiceUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise AssertionError("abort raises") from exc
        finally:
            admission.light_exit()
        if not built:
            build(ack)
        response = built[0]
        sent = response.ack
        sent.durable = ack.durable and ack.sequence > 0
        sent.ack_ns = time.time_ns()
        self.core.record_single_ack_sent(ack)
        return response

    async def _submit_new_orders(
        self, context: grpc.aio.ServicerContext, account: AccountSpec, inputs: Inputs
    ) -> Acks:
        """A decoded batch of new orders (SubmitOrders, SubmitOrderColumns): refused whole when a
        symbol is not this shard's now, else run in the order of the orders' priorities."""
        inputs.fenced_epoch = self.fence.epoch
        refusal = self.fence.first_refusal(inputs.symbols)
        if refusal is not None:  # the whole batch: the caller re-splits it by the owner's map
            await _abort_not_owner(context, refusal, self.shard_id)
        inputs.prioritize = True
        return await self._submit(context, account, inputs)

    async def _read_batch(
        self,
        request: RequestBytes,
        context: grpc.aio.ServicerContext,
        read: Callable[[bytes, NewOrderWireDecoder, int, int, int], Inputs | None],
        count_of: Callable[[Any], int],
        arrival: int,
    ) -> tuple[AccountSpec, Inputs | None, Any]:
        """A batch request read from its bytes in C by ``read``, or else by protobuf, before any
        other check (a malformed request is refused whoever sends it); then the caller's account
        and the batch's size (``count_of`` protobuf's message). Returns the account and the C
        reader's Inputs, or None and the message for the caller to decode."""
        limit = self.config.max_batch_orders
        inputs = read(request.data, self._order_wire, limit, time.time_ns(), arrival)
        message = None if inputs is not None else await request.message()
        account = await self._account(context)
        await check_batch_size(context, len(inputs.kind) if inputs is not None else count_of(message), limit)
        return account, inputs, message

    @takes_request_bytes
    async def SubmitOrders(
        self, request: RequestBytes, context: grpc.aio.ServicerContext
    ) -> SerializedResponse:
        """Read from the bytes the request came in (hft_order_wire.h), or by protobuf where the fast
        path does not take them, before any other check: a malformed request is refused
        INVALID_ARGUMENT whoever sends it, as every method's are."""
        arrival = now_ns()
        account, inputs, message = await self._read_batch(
            request, context, codec.read_submit_orders, lambda m: len(m.orders), arrival
        )
        await self._rate(context, account)
        if inputs is None:
            inputs = codec.decode_new_orders(message.orders, time.time_ns(), arrival)
        acks = await self._submit_new_orders(context, account, inputs)
        return SerializedResponse(self._ack_bytes(acks, inputs.symbols), api.SubmitOrdersResponse)

    @takes_request_bytes
    async def SubmitOrderColumns(
        self, request: RequestBytes, context: grpc.aio.ServicerContext
    ) -> SerializedResponse:
        """Read as SubmitOrders is: the columns from their bytes in C where the fast path takes
        them, else by protobuf, whose batch the codec checks column by column."""
        arrival = now_ns()
        account, inputs, message = await self._read_batch(
            request, context, codec.read_order_columns, lambda m: len(m.orders.client_order_id), arrival
        )
        if inputs is None:
            try:
                inputs = codec.decode_order_columns(message.orders, time.time_ns(), arrival)
            except codec.BadColumns as exc:
                await abort_bad_request(context, "orders", f"Cannot submit orders: {exc}")
        await self._rate(context, account)
        acks = await self._submit_new_orders(context, account, inputs)
        # (New orders only: none is an order taken over by a move, whose id _ack_protos translates.)
        columns = codec.encode_ack_columns(acks, time.time_ns(), inputs.symbols, self._wire, self.shard_base)
        self.core.record_ack_sent(acks)
        # SubmitOrderColumnsResponse.acks (field 1) around the columns' bytes, sent as they are.
        return SerializedResponse(length_delimited(1, columns), api.SubmitOrderColumnsResponse)

    async def CancelOrder(
        self, request: api.CancelOrderRequest, context: grpc.aio.ServicerContext
    ) -> api.CancelOrderResponse:
        arrival = now_ns()
        account = await self._account(context)
        order_id = await self._resolve(context, account, request.order_id, request.client_order_id)
        await self._check_not_moved(context, order_id)
        inputs = codec.decode_one_target(KIND_CANCEL, order_id, "", time.time_ns(), arrival)
        acks = await self._submit(context, account, inputs)
        return api.CancelOrderResponse(ack=self._ack_protos(acks)[0])

    async def ReplaceOrder(
        self, request: api.ReplaceOrderRequest, context: grpc.aio.ServicerContext
    ) -> api.ReplaceOrderResponse:
        arrival = now_ns()
        account = await self._account(context)
        order_id = await self._resolve(context, account, request.order_id, request.client_order_id)
        await self._check_not_moved(context, order_id)
        inputs = codec.decode_one_target(
            KIND_REPLACE,
            order_id,
            "",
            time.time_ns(),
            arrival,
            price=request.price_ticks,
            quantity=self._local_total(order_id, request.quantity_lots),
            stop_price=request.stop_price_ticks,
        )
        acks = await self._submit(context, account, inputs)
        return api.ReplaceOrderResponse(ack=self._ack_protos(acks)[0])

    async def CancelAll(
        self, request: api.CancelAllRequest, context: grpc.aio.ServicerContext
    ) -> api.CancelAllResponse:
        arrival = now_ns()
        account = await self._account(context)
        symbol_id: int | None = None
        if request.symbol:
            found = await self.core.symbol_id_of(request.symbol)
            if found is None:
                await abort_bad_request(
                    context, "symbol", f"Cannot cancel orders: unknown symbol {clipped(request.symbol)}"
                )
            symbol_id = found
        if request.side not in (common.SIDE_UNSPECIFIED, common.SIDE_BUY, common.SIDE_SELL):
            await abort_bad_request(context, "side", f"unknown side {request.side}")
        if symbol_id == -1:  # known instrument that never had an order here
            return api.CancelAllResponse()
        ids = self.core.without_handed_over(
            self.core.state.open_order_ids(account.account_id, symbol_id, int(request.side))
        )
        if not len(ids):
            return api.CancelAllResponse()
        inputs = cancel_inputs(ids, time.time_ns(), arrival)
        acks = await self._submit(context, account, inputs)
        self.core.record_ack_sent(acks)
        done = acks.status != REJECTED
        sequences = acks.sequences[done]
        canceled = (acks.order_ids[done] | self.shard_base).tolist()
        if self.handover is not None and self.handover.local_of:
            canceled = [self.handover.shown(i) for i in canceled]
        return api.CancelAllResponse(
            canceled_order_ids=canceled,
            sequence=int(sequences[-1]) if len(sequences) else 0,
            durable=acks.durable and bool(len(sequences)),
        )

    async def GetOrder(
        self, request: api.GetOrderRequest, context: grpc.aio.ServicerContext
    ) -> api.GetOrderResponse:
        account = await self._account(context)
        order_id = await self._resolve(context, account, request.order_id, request.client_order_id)
        await self._check_not_moved(context, order_id, reading=True)
        order = codec.encode_order(self.core.state, order_id, self.shard_base)
        if self.handover is not None and self.handover.local_of:
            lots, notional = self.handover.carried.get(order_id, (0, 0))
            if lots:  # as its client knows it: the fills before the move added back
                order.request.quantity_lots += lots
                order.cum_quantity_lots += lots
                order.cum_notional += notional
                if order.status == api.ORDER_STATUS_NEW:
                    order.status = api.ORDER_STATUS_PARTIALLY_FILLED
            order.order_id = self.handover.shown(order.order_id)
        return api.GetOrderResponse(order=order)

    # --- streams ---------------------------------------------------------------------------------------

    async def _stream_slot(self, context: grpc.aio.ServicerContext, account: AccountSpec) -> StreamSlot:
        """A slot for a new stream of the account, or RESOURCE_EXHAUSTED with a QuotaFailure detail."""
        try:
            return self.streams.acquire(account.name)
        except StreamLimitExceeded as exc:
            quota = error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=exc.subject, description=exc.message)
                ]
            )
            status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=exc.message)
            status.details.add().Pack(quota)
            await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]
            raise AssertionError("abort raises") from exc

    async def _admit(self, account: AccountSpec, inputs: int) -> None:
        """Wait for the account's turn when others want the loop too (fairness.FairAdmission)."""
        admission = self.admission
        if inputs > admission.light_inputs:
            step = admission.heavy_step()
            if step is not None:
                await step
        waiter = admission.admit(account.account_id, inputs)
        if waiter is not None:
            await waiter

    async def _heavy_step(self) -> None:
        step = self.admission.heavy_step()
        if step is not None:
            await step

    @staticmethod
    def _cut_off_on_too_slow(subscriber: ReportSubscriber) -> None:
        """Cancel the calling stream's task when the core finds its reader too slow (the stream
        then answers RESOURCE_EXHAUSTED, see _too_slow)."""
        task = asyncio.current_task()
        assert task is not None
        subscriber.on_too_slow = lambda _: task.cancel()

    @staticmethod
    async def _too_slow(
        context: grpc.aio.ServicerContext, exc: ReaderTooSlow, last_sent: int, what: str = ""
    ) -> NoReturn:
        task = asyncio.current_task()
        if task is not None:
            while task.cancelling():
                task.uncancel()
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject="stream:reader",
                    description="a stream may fall at most max_behind_reports reports behind the service",
                )
            ]
        )
        message = (
            f"reader too slow: {exc.behind} reports behind; resume with after_sequence={last_sent} "
            f"(or the last sequence you received, if later){what}"
        )
        status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
        status.details.add().Pack(quota)
        await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]
        raise AssertionError("abort raises")

    def _local_total(self, order_id: int, quantity: int) -> int:
        return quantity if self.handover is None else self.handover.local_total(order_id, quantity)

    @takes_request_bytes
    async def OrderStream(
        self, request_iterator: AsyncIterator[RequestBytes], context: grpc.aio.ServicerContext
    ) -> None:
        account = await self._account(context)
        slot = await self._stream_slot(context, account)
        try:
            # Admitted: say so at once (hftgate.grpcserver.STREAM_ADMITTED_METADATA), so that a
            # client, the gateway among them, can hold its first write until a refusal can no
            # longer come.
            await context.send_initial_metadata(((STREAM_ADMITTED_METADATA, "1"),))
            await self._order_stream(account, request_iterator, context)
        finally:
            slot.release()

    async def _order_stream(
        self,
        account: AccountSpec,
        request_iterator: AsyncIterator[RequestBytes],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """One OrderStream: a reader task submits the client's messages, this task writes acks and
        reports. Bounded: the reader stops reading (gRPC flow control then stops the client) while
        ``order_stream_max_unsent_inputs`` inputs have acks not yet written; reports are read from
        the retained ring a page at a time; a writer too far behind is cut off."""
        core = self.core
        config = self.config
        subscriber = core.publisher.subscribe(account.account_id, None)
        self._cut_off_on_too_slow(subscriber)
        ended: list[BaseException | None] = []
        submitted = [0]  # calls to core.submit; each gets exactly one sink call
        unsent = [0]  # inputs submitted whose acks are not written yet
        limit = config.order_stream_max_unsent_inputs
        room = asyncio.Event()
        reader_done = [False]
        fence = self.fence
        shard_id = self.shard_id
        order_wire = self._order_wire

        def sink(acks: Acks | BaseException) -> None:
            subscriber.put_acks(core.publisher.published_report_seq, acks)

        async def read() -> None:
            try:
                async for raw in request_iterator:
                    arrival = now_ns()
                    # From the bytes the message came in, in C, or else by protobuf; bytes that
                    # do not decode end the stream (refused by the writer's task, below).
                    inputs = codec.read_stream_message(
                        raw.data, order_wire, config.max_stream_message_inputs, time.time_ns(), arrival
                    )
                    message: api.OrderStreamRequest | None = None
                    if inputs is None:
                        message = raw.parsed()
                        if message is None:  # refused once the writer has stopped (see below)
                            ended.append(_MalformedStreamMessage(raw))
                            break
                        count = len(message.inputs)
                    else:
                        count = len(inputs.kind)
                    if count == 0 or count > config.max_stream_message_inputs:
                        ended.append(
                            _BadStreamMessage(
                                "a stream message must carry 1.."
                                f"{config.max_stream_message_inputs} inputs, got {count}"
                            )
                        )
                        break
                    while unsent[0] >= limit:  # the client is not reading its acks: stop reading
                        room.clear()
                        await room.wait()
                    if message is not None:
                        inputs = codec.decode_stream_inputs(message.inputs, time.time_ns(), arrival)
                    assert inputs is not None
                    if self.handover is not None:
                        self.handover.localize_inputs(inputs, account.account_id)
                    codec.localize_targets(inputs, shard_id)
                    inputs.fenced_epoch = fence.epoch
                    refused = fence.refused_positions(inputs.symbols)
                    if refused:  # per input (NOT_SHARD_OWNER or UNAVAILABLE): nothing accepted for it
                        codec.refuse_symbols(inputs, refused, fence.map.moving)
                    await self._admit(account, count)
                    submitted[0] += 1
                    unsent[0] += count
                    try:
                        await core.submit(account, inputs, sink=sink)
                    except ServiceUnavailable:
                        submitted[0] -= 1
                        unsent[0] -= count
                        raise
                else:
                    ended.append(None)
            except ServiceUnavailable as exc:
                ended.append(exc)
            except grpc.aio.AbortError as exc:  # a step that answered the call itself: not twice
                ended.append(exc)
            except Exception as exc:  # a broken client stream: end ours too
                ended.append(exc)
            reader_done[0] = True
            subscriber.notify()

        reader = asyncio.get_running_loop().create_task(read())
        restated = RestatedReports()
        answered = 0
        last_sent = subscriber.cursor
        page_size = config.stream_page_reports
        try:
            while True:
                await self._heavy_step()
                # The response as its entries' bytes: acks (field 1) then executions (field 2).
                parts: list[bytes] = []
                taken = 0
                pending = subscriber.acks
                while pending and taken < page_size:
                    _, entry = pending.popleft()
                    if isinstance(entry, BaseException):
                        answered += 1
                        ended.append(ServiceUnavailable(f"journal failed: {entry}"))
                        reader_done[0] = True
                        submitted[0] = answered
                        pending.clear()
                        break
                    answered += 1
                    taken += len(entry.kind)
                    parts.append(self._ack_bytes(entry))
                    accepted = entry.sequences > 0
                    restated.add(
                        core.publisher.published_report_seq,
                        entry.sequences[accepted],
                        entry.order_ids[accepted],
                    )
                # Never a report before its order's ack: stop where the next unsent acks came in.
                until = pending[0][0] if pending else None
                page = core.publisher.reports_page(subscriber, page_size, until)
                if len(page):
                    last_sent = int(page["sequence"][-1])
                    page = restated.drop_from(page)
                    if len(page):
                        parts.append(self._report_bytes(page))
                restated.forget_read(subscriber.cursor)
                response = b"".join(parts)
                if response:
                    await context.write(response)
                    unsent[0] -= taken
                    if unsent[0] < limit:
                        room.set()
                    continue
                published = core.publisher.published_report_seq
                if pending or subscriber.cursor < (published if until is None else until):
                    await asyncio.sleep(0)  # more to read: let the loop run others first
                    continue
                if reader_done[0] and answered >= submitted[0]:
                    break
                subscriber.wake.clear()
                subscriber.idle = True
                await subscriber.wake.wait()
        except ReaderTooSlow as exc:
            await self._too_slow(context, exc, last_sent, _UNSENT_ACKS.format(unsent[0]))
        except asyncio.CancelledError:
            if subscriber.too_slow is None:
                raise
            await self._too_slow(context, subscriber.too_slow, last_sent, _UNSENT_ACKS.format(unsent[0]))
        finally:
            core.publisher.unsubscribe(subscriber)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        problem = next((e for e in ended if e is not None), None)
        if isinstance(problem, grpc.aio.AbortError):
            raise problem  # the call's status is set
        if isinstance(problem, _MalformedStreamMessage):
            # Ended here, after the writer's last write, not from the reader: an abort while a
            # write was in flight failed in gRPC (too many operations on the call) and left the
            # client waiting for a status that never came.
            await problem.request.refuse()
        if isinstance(problem, _BadStreamMessage):
            await abort_bad_request(context, "inputs", str(problem))
        if isinstance(problem, ServiceUnavailable):
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(problem))
        if problem is not None:
            # The request stream itself broke (a message that does not decode, a reset).
            await context.abort(grpc.StatusCode.INTERNAL, f"order stream request failed: {problem!r}")

    async def StreamExecutions(
        self, request: api.StreamExecutionsRequest, context: grpc.aio.ServicerContext
    ) -> None:
        account = await self._account(context)
        core = self.core
        state = core.state
        symbol_id: int | None = None
        if request.symbol:
            found = await core.symbol_id_of(request.symbol)
            if found is None:
                await abort_bad_request(context, "symbol", f"unknown symbol {clipped(request.symbol)}")
            symbol_id = found
        if request.after_sequence < 0:
            await abort_bad_request(
                context,
                "after_sequence",
                f"must be 0 (from the oldest retained) or a report sequence, not {request.after_sequence}",
            )
        slot = await self._stream_slot(context, account)
        try:
            after: int | None = None
            if not request.live_only:
                after = request.after_sequence
                oldest = state.oldest_retained_report
                if after and after + 1 < oldest:
                    await context.abort(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"reports after {after} are no longer retained; the oldest retained is {oldest}",
                    )
                after = max(after, oldest - 1)
            subscriber = core.publisher.subscribe(account.account_id, symbol_id, after)
            try:
                await self._stream_reports(context, subscriber)
            finally:
                core.publisher.unsubscribe(subscriber)
        finally:
            slot.release()

    async def _stream_reports(self, context: grpc.aio.ServicerContext, subscriber: ReportSubscriber) -> None:
        """History, then live reports, from one cursor over the retained ring: a page of
        ``stream_page_reports`` is encoded only once the previous one is written, so a client that
        does not read holds no more than a page and gRPC's flow-control window; history and live
        reports are one sequence, so the switch between them has no gap and no repeat."""
        core = self.core
        page_size = self.config.stream_page_reports
        self._cut_off_on_too_slow(subscriber)
        last_sent = subscriber.cursor
        try:
            while True:
                await self._heavy_step()
                page = core.publisher.reports_page(subscriber, page_size)
                if len(page):
                    for report in self._reports(page):
                        await context.write(report)
                        last_sent = report.sequence
                    continue
                if subscriber.cursor < core.publisher.published_report_seq:
                    await asyncio.sleep(0)  # a long stretch of others' reports: let the loop run others
                    continue
                subscriber.wake.clear()
                subscriber.idle = True
                await subscriber.wake.wait()
        except ReaderTooSlow as exc:
            await self._too_slow(context, exc, last_sent)
        except asyncio.CancelledError:
            if subscriber.too_slow is None:
                raise  # the client cancelled or went away, or the server is stopping
            await self._too_slow(context, subscriber.too_slow, last_sent)

    # --- stats -------------------------------------------------------------------------------------------

    async def GetStats(
        self, request: api.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> api.GetStatsResponse:
        """Suite-wide figures for a service principal calling without an API key (an operator as
        "admin", the scaler, the benchmarks); an account (an API key, directly or forwarded by the
        gateway) gets only its own figures: how much others trade is not its business."""
        principal = None if self.secret is None else security.principal_of(context, self.secret)
        if (
            principal is None
            or security.api_key_of(context) is not None
            or security.metadata_value(context, ACCOUNT_METADATA) is not None
        ):
            account = await self._account(context)
            state = self.core.state
            row = state._account_rows.get(account.account_id)
            return api.GetStatsResponse(
                started_ns=self.core.started_ns,
                collected_ns=time.time_ns(),
                open_orders=0 if row is None else int(state.open_orders[row]),
            )
        core = self.core
        stages = core.stages
        counters = core.counters
        journal = core.journal
        lookups = core.reference.counters
        return api.GetStatsResponse(
            started_ns=core.started_ns,
            collected_ns=time.time_ns(),
            risk_latency=_summary(stages.risk),
            match_latency=_summary(stages.match),
            journal_latency=_summary(stages.journal),
            ack_latency=_summary(stages.ack),
            total_latency=_summary(stages.total),
            orders_received=counters.orders_received,
            orders_accepted=counters.orders_accepted,
            inputs_rejected=counters.inputs_rejected,
            cancels_accepted=counters.cancels_accepted,
            replaces_accepted=counters.replaces_accepted,
            trades=core.state.trades,
            traded_lots=core.state.traded_lots,
            open_orders=core.state.engine.live_orders,
            journal_records=journal.records_written,
            journal_fsyncs=journal.fsyncs,
            rejects_by_reason=[
                api.RejectCount(reason=reason, count=count)  # type: ignore[arg-type]  # enum values as ints
                for reason, count in sorted(counters.rejects_by_reason.items())
            ],
            reference_lookups=lookups.lookups,
            reference_sql_lookups=lookups.sql_lookups,
            order_path_hit_ratio=lookups.hit_ratio,
            snapshots_taken=self.snapshotter.taken if self.snapshotter is not None else 0,
            journal_fsync_latency=_summary(journal.sync_latency()),
        )


class _BadStreamMessage(Exception):
    pass


class _MalformedStreamMessage(Exception):
    """A stream message whose bytes do not decode (``request``: the message as received)."""

    def __init__(self, request: RequestBytes) -> None:
        super().__init__("a message that does not decode")
        self.request = request


_UNSENT_ACKS = "; acks of {} inputs were not sent: look them up with GetOrder or StreamExecutions"


def _summary(histogram: LatencyHistogram) -> common.LatencySummary:
    s = histogram.summary()
    return common.LatencySummary(
        count=int(s["count"]),
        mean_ns=float(s["mean"]),
        stdev_ns=float(s["stdev"]),
        p50_ns=int(s["p50"]),
        p90_ns=int(s["p90"]),
        p99_ns=int(s["p99"]),
        p99_9_ns=int(s["p99_9"]),
        p99_99_ns=int(s["p99_99"]),
        max_ns=int(s["max"]),
    )


def clipped(text: str, limit: int = 64) -> str:
    """``text`` quoted for a status message, cut to ``limit`` characters (a client may send megabytes)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"
