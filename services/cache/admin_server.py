"""gRPC wiring of the AdminService (hosted by the cache service, on its port): proto <-> admin.py.

Every method first checks that the caller proved the ``admin`` principal: the server's
auth interceptor has already refused calls without a valid service token
(UNAUTHENTICATED); here another principal's token is PERMISSION_DENIED.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc

from hftgate.security import ADMIN, SuiteSecret, principal_of
from hftgate.v1 import admin_pb2, admin_pb2_grpc
from services.cache.admin import (
    ACCOUNT_LIMITS,
    MAX_AUDIT_ROWS,
    Admin,
    AlreadyExists,
    Conflict,
    KeyRecord,
    NotFound,
)
from services.cache.model import InvalidArgument, StoreUnavailable
from services.execution.reference import AccountSpec, InstrumentSpec

log = logging.getLogger(__name__)

SERVICE_NAME = "hftgate.v1.AdminService"
T = TypeVar("T")


def account_to_proto(spec: AccountSpec) -> admin_pb2.Account:
    return admin_pb2.Account(
        name=spec.name,
        account_id=spec.account_id,
        position_limit_lots=spec.position_limit_lots,
        max_open_orders=spec.max_open_orders,
        rate_limit_orders_per_s=spec.rate_limit_orders_per_s,
        rate_limit_burst=spec.rate_limit_burst,
        kill_switch=spec.kill_switch,
    )


def key_to_proto(record: KeyRecord | None) -> admin_pb2.KeyInfo | None:
    if record is None:
        return None
    return admin_pb2.KeyInfo(
        key_id=record.key_id,
        account=record.account,
        created_ns=record.created_ns,
        expires_ns=record.expires_ns,
        replaced_by=record.replaced_by,
    )


def instrument_to_proto(spec: InstrumentSpec) -> admin_pb2.InstrumentDefinition:
    return admin_pb2.InstrumentDefinition(
        symbol=spec.symbol,
        tick_size=spec.tick_size,
        lot_size=spec.lot_size,
        base_asset=spec.base_asset,
        quote_asset=spec.quote_asset,
        price_increment_ticks=spec.price_increment_ticks,
        quantity_increment_lots=spec.quantity_increment_lots,
        max_order_lots=spec.max_order_lots,
        max_notional=spec.max_notional,
        price_band_ticks=spec.price_band_ticks,
        reference_price_ticks=spec.reference_price_ticks,
        trading_enabled=spec.trading_enabled,
    )


def _limits(request: Any) -> dict[str, Any]:
    """The optional limit fields the request sets."""
    return {name: getattr(request, name) for name in ACCOUNT_LIMITS if request.HasField(name)}


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Translates AdminService calls to :class:`~services.cache.admin.Admin` calls."""

    def __init__(self, admin: Admin, secret: SuiteSecret) -> None:
        self._admin = admin
        self._secret = secret

    async def _actor(self, context: grpc.aio.ServicerContext) -> str:
        principal = principal_of(context, self._secret)
        if principal != ADMIN:
            who = "an API-key caller" if principal is None else f"principal {principal!r}"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"the admin API is for the admin principal only, not {who}"
            )
        return ADMIN

    async def AddAccount(
        self, request: admin_pb2.AddAccountRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        actor = await self._actor(context)
        spec = await _guard(
            context, self._admin.add_account(actor, request.name, _limits(request), request.kill_switch)
        )
        return admin_pb2.AccountReply(account=account_to_proto(spec))

    async def ListAccounts(
        self, request: admin_pb2.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        await self._actor(context)
        specs = await _guard(context, self._admin.list_accounts())
        return admin_pb2.ListAccountsReply(accounts=[account_to_proto(s) for s in specs])

    async def SetKillSwitch(
        self, request: admin_pb2.SetKillSwitchRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        actor = await self._actor(context)
        spec = await _guard(context, self._admin.set_kill_switch(actor, request.name, request.kill_switch))
        return admin_pb2.AccountReply(account=account_to_proto(spec))

    async def SetAccountLimits(
        self, request: admin_pb2.SetAccountLimitsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        actor = await self._actor(context)
        spec = await _guard(context, self._admin.set_limits(actor, request.name, _limits(request)))
        return admin_pb2.AccountReply(account=account_to_proto(spec))

    async def IssueKey(self, request: admin_pb2.IssueKeyRequest, context: grpc.aio.ServicerContext) -> Any:
        actor = await self._actor(context)
        issued = await _guard(context, self._admin.issue_key(actor, request.account, request.ttl_ms))
        return admin_pb2.IssueKeyReply(api_key=issued.api_key, info=key_to_proto(issued.info))

    async def ListKeys(self, request: admin_pb2.ListKeysRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._actor(context)
        records = await _guard(context, self._admin.list_keys(request.account))
        return admin_pb2.ListKeysReply(keys=[k for k in map(key_to_proto, records) if k is not None])

    async def RevokeKey(self, request: admin_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext) -> Any:
        actor = await self._actor(context)
        record = await _guard(context, self._admin.revoke_key(actor, request.key_id))
        return admin_pb2.RevokeKeyReply(info=key_to_proto(record))

    async def RotateKey(self, request: admin_pb2.RotateKeyRequest, context: grpc.aio.ServicerContext) -> Any:
        actor = await self._actor(context)
        issued = await _guard(context, self._admin.rotate_key(actor, request.key_id, request.overlap_ms))
        return admin_pb2.IssueKeyReply(
            api_key=issued.api_key, info=key_to_proto(issued.info), previous=key_to_proto(issued.previous)
        )

    async def AddInstrument(
        self, request: admin_pb2.AddInstrumentRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        actor = await self._actor(context)
        i = request.instrument
        spec = InstrumentSpec(
            symbol=i.symbol,
            tick_size=i.tick_size,
            lot_size=i.lot_size,
            base_asset=i.base_asset,
            quote_asset=i.quote_asset,
            price_increment_ticks=i.price_increment_ticks,
            quantity_increment_lots=i.quantity_increment_lots,
            max_order_lots=i.max_order_lots,
            max_notional=i.max_notional,
            price_band_ticks=i.price_band_ticks,
            reference_price_ticks=i.reference_price_ticks,
        )
        added = await _guard(context, self._admin.add_instrument(actor, spec))
        return admin_pb2.InstrumentReply(instrument=instrument_to_proto(added))

    async def SetTradingEnabled(
        self, request: admin_pb2.SetTradingEnabledRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        actor = await self._actor(context)
        spec = await _guard(
            context, self._admin.set_trading_enabled(actor, request.symbol, request.trading_enabled)
        )
        return admin_pb2.InstrumentReply(instrument=instrument_to_proto(spec))

    async def ListAudit(self, request: admin_pb2.ListAuditRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._actor(context)
        limit = request.limit or 50
        if not 1 <= limit <= MAX_AUDIT_ROWS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"limit: must be 1 to {MAX_AUDIT_ROWS} (got {limit})"
            )
        rows = await _guard(context, self._admin.audit.recent(limit, request.target))
        return admin_pb2.ListAuditReply(
            rows=[
                admin_pb2.AuditRow(
                    id=r.id,
                    at_ns=r.at_ns,
                    actor=r.actor,
                    action=r.action,
                    target=r.target,
                    detail_json=_json(r.detail),
                )
                for r in rows
            ]
        )


def _json(detail: dict[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True)


async def _guard(context: grpc.aio.ServicerContext, call: Awaitable[T]) -> T:
    """Await an admin call, turning its errors into precise statuses."""
    try:
        return await call
    except InvalidArgument as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.description}")
    except NotFound as exc:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    except AlreadyExists as exc:
        await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
    except Conflict as exc:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except StoreUnavailable as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"the SQL store is unavailable: {exc}")
    raise AssertionError("unreachable: abort raises")
