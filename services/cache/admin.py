"""The admin domain: accounts, API keys and instruments, every change audited in SQL (no gRPC).

Reference rows are written through the :class:`~services.cache.tiered.TieredCache`, so every
replica's L1 and every near cache (the execution service's) hear of the change at once; the
rows' formats are those of :mod:`services.execution.reference`:

=========================  ==========================================================
``account:<name>``         :class:`AccountSpec` JSON
``instrument:<SYMBOL>``    :class:`InstrumentSpec` JSON
``apikey:<keyed hash>``    the owning account's name (the key itself is never stored)
``keyinfo:<key_id>``       the key's registry entry: account, hash, created, expiry
=========================  ==========================================================

Key rotation: the successor is issued and the old key's rows are re-written with a TTL of
the overlap window, after which both levels forget them and the old key stops working.

The audit log is one append-only table (``admin_audit``: id, at_ns, actor, action, target,
detail JSON) in the cache's database. Account ids are the largest ever handed out (in the
rows or in the audit log, so a deleted row's id is not reused) plus one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import decimal
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, Text, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from hftgate.security import SuiteSecret
from hftgate.sqltables import create_tables
from services.cache.authz import (
    ACCOUNT_PREFIX,
    API_KEY_PREFIX,
    INSTRUMENT_PREFIX,
    KEY_INFO_PREFIX,
    NAME_PATTERN,
)
from services.cache.l3_sql import SqlStore
from services.cache.model import InvalidArgument, StoreUnavailable
from services.cache.tiered import SetItem, TieredCache
from services.execution.reference import AccountSpec, InstrumentSpec, encode_spec

SYMBOL_PATTERN = re.compile(r"[A-Z0-9._-]{1,32}")
ASSET_PATTERN = re.compile(r"[A-Z0-9]{0,16}")
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{16}")
API_KEY_PREFIX_TEXT = "hftgate-"
MAX_KEY_TTL_MS = 10 * 365 * 24 * 3600 * 1000
MAX_OVERLAP_MS = 30 * 24 * 3600 * 1000
MAX_AUDIT_ROWS = 1_000
#: Rows read when listing accounts or keys: far more than a suite has; the limit of the listing.
MAX_LISTED_ROWS = 100_000


class NotFound(LookupError):
    """The account, key or instrument does not exist."""


class AlreadyExists(ValueError):
    """What is being added exists already."""


class Conflict(ValueError):
    """The request cannot apply to the row as it stands (e.g. a key already rotated)."""


@dataclass(frozen=True)
class KeyRecord:
    """The registry entry of one API key (``keyinfo:<key_id>``): never the key itself."""

    key_id: str
    account: str
    key_hash: str
    created_ns: int
    #: ns since the epoch; 0 = never.
    expires_ns: int = 0
    replaced_by: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")


@dataclass(frozen=True)
class IssuedKey:
    """A newly issued key: ``api_key`` exists only here."""

    api_key: str
    info: KeyRecord
    previous: KeyRecord | None = None

    def __repr__(self) -> str:  # never the key in a log
        return f"IssuedKey(info={self.info!r}, previous={self.previous!r})"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at_ns: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


def _audit_table(metadata: MetaData, name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("at_ns", BigInteger, nullable=False),
        Column("actor", Text, nullable=False),
        Column("action", Text, nullable=False, index=True),
        Column("target", Text, nullable=False, index=True),
        Column("detail", Text, nullable=False),
    )


class AuditLog:
    """Append-only rows of who changed what, when (SQLAlchemy async, SQLite or PostgreSQL)."""

    def __init__(
        self, engine: AsyncEngine, table_name: str = "admin_audit", now_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self._engine = engine
        self._metadata = MetaData()
        self.table = _audit_table(self._metadata, table_name)
        self._now_ns = now_ns

    async def start(self) -> None:
        try:
            await create_tables(self._engine, self._metadata)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"cannot create the audit table {self.table.name}: {exc}") from exc

    async def drop(self) -> None:
        async with self._engine.begin() as conn:
            await conn.run_sync(self._metadata.drop_all, checkfirst=True)

    async def record(self, actor: str, action: str, target: str, detail: Mapping[str, Any]) -> None:
        row = {
            "at_ns": self._now_ns(),
            "actor": actor,
            "action": action,
            "target": target,
            "detail": json.dumps(dict(detail), sort_keys=True),
        }
        try:
            async with self._engine.begin() as conn:
                await conn.execute(self.table.insert().values(row))
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"audit write failed: {exc}") from exc

    async def recent(self, limit: int = 50, target: str = "") -> list[AuditEntry]:
        """The newest ``limit`` rows (about ``target`` when given), newest first."""
        t = self.table
        stmt = select(t.c.id, t.c.at_ns, t.c.actor, t.c.action, t.c.target, t.c.detail)
        if target:
            stmt = stmt.where(t.c.target == target)
        stmt = stmt.order_by(t.c.id.desc()).limit(limit)
        try:
            async with self._engine.connect() as conn:
                rows = list(await conn.execute(stmt))
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"audit read failed: {exc}") from exc
        return [
            AuditEntry(int(i), int(at), actor, action, tgt, json.loads(detail))
            for i, at, actor, action, tgt, detail in rows
        ]

    async def max_account_id(self) -> int:
        """The largest account id any ``accounts.add`` ever recorded (0 if none)."""
        t = self.table
        stmt = select(t.c.detail).where(t.c.action == "accounts.add")
        try:
            async with self._engine.connect() as conn:
                details = [json.loads(detail) for (detail,) in await conn.execute(stmt)]
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"audit read failed: {exc}") from exc
        return max((int(d.get("account_id", 0)) for d in details), default=0)


def _decode(cls: type[Any], raw: bytes) -> Any:
    data = json.loads(raw)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def check_name(name: str, field: str = "name") -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(field, f"{name[:80]!r} is not 1 to 64 of A-Z a-z 0-9 _ . @ -")
    return name


def check_symbol(symbol: str, field: str = "symbol") -> str:
    if not SYMBOL_PATTERN.fullmatch(symbol):
        raise InvalidArgument(field, f"{symbol[:80]!r} is not 1 to 32 of A-Z 0-9 . _ -")
    return symbol


def check_key_id(key_id: str, field: str = "key_id") -> str:
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise InvalidArgument(field, f"{key_id[:80]!r} is not a key id (16 hex digits)")
    return key_id


def _positive(value: int | float, field: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(field, f"must be a finite number (got {value})")
    if value <= 0:
        raise InvalidArgument(field, f"must be positive (got {value})")


def _decimal(text: str, field: str) -> str:
    try:
        value = decimal.Decimal(text)
    except decimal.InvalidOperation:
        value = decimal.Decimal("NaN")
    if len(text) > 32 or not value.is_finite() or value <= 0:
        raise InvalidArgument(field, f"{text[:40]!r} is not a positive decimal number")
    return text


ACCOUNT_LIMITS = ("position_limit_lots", "max_open_orders", "rate_limit_orders_per_s", "rate_limit_burst")


class Admin:
    """The admin operations; ``actor`` (the calling principal) goes into every audit row."""

    def __init__(
        self,
        cache: TieredCache,
        store: SqlStore,
        audit: AuditLog,
        secret: SuiteSecret,
        *,
        rotation_overlap_ms: int = 3_600_000,
        on_key_revoked: Callable[[str], None] = lambda key_hash: None,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._cache = cache
        self._store = store
        self.audit = audit
        self._secret = secret
        self._overlap_ms = rotation_overlap_ms
        self._on_key_revoked = on_key_revoked
        self._now_ns = now_ns
        # Read-modify-write of a row is one step at a time in this replica.
        self._lock = asyncio.Lock()

    # --- rows ----------------------------------------------------------------------------
    async def _read(self, key: str) -> bytes | None:
        lookup = await self._cache.get(key)
        return lookup.value if lookup.found else None

    async def _listed(self, prefix: str) -> list[bytes]:
        rows = await self._store.get_prefixed(prefix, self._now_ns() // 1_000_000, MAX_LISTED_ROWS)
        return [row.value for _, row in sorted(rows.items()) if row.value is not None]

    async def account(self, name: str) -> AccountSpec:
        raw = await self._read(ACCOUNT_PREFIX + check_name(name))
        if raw is None:
            raise NotFound(f"no account {name!r}")
        spec: AccountSpec = _decode(AccountSpec, raw)
        return spec

    async def instrument(self, symbol: str) -> InstrumentSpec:
        raw = await self._read(INSTRUMENT_PREFIX + check_symbol(symbol))
        if raw is None:
            raise NotFound(f"no instrument {symbol!r}")
        spec: InstrumentSpec = _decode(InstrumentSpec, raw)
        return spec

    async def key_info(self, key_id: str) -> KeyRecord:
        raw = await self._read(KEY_INFO_PREFIX + check_key_id(key_id))
        if raw is None:
            raise NotFound(f"no key with id {key_id!r} (unknown, revoked or expired)")
        record: KeyRecord = _decode(KeyRecord, raw)
        return record

    # --- accounts ------------------------------------------------------------------------
    async def add_account(
        self, actor: str, name: str, limits: Mapping[str, Any], kill_switch: bool = False
    ) -> AccountSpec:
        check_name(name)
        self._check_limits(limits)
        async with self._lock:
            if await self._read(ACCOUNT_PREFIX + name) is not None:
                raise AlreadyExists(f"account {name!r} exists")
            existing = [_decode(AccountSpec, raw).account_id for raw in await self._listed(ACCOUNT_PREFIX)]
            account_id = max([await self.audit.max_account_id(), *existing]) + 1
            spec = AccountSpec(name=name, account_id=account_id, kill_switch=kill_switch, **limits)
            await self._cache.set(ACCOUNT_PREFIX + name, encode_spec(spec))
            await self.audit.record(actor, "accounts.add", ACCOUNT_PREFIX + name, asdict(spec))
        return spec

    async def list_accounts(self) -> list[AccountSpec]:
        return [_decode(AccountSpec, raw) for raw in await self._listed(ACCOUNT_PREFIX)]

    async def set_kill_switch(self, actor: str, name: str, on: bool) -> AccountSpec:
        async with self._lock:
            spec = dataclasses.replace(await self.account(name), kill_switch=on)
            await self._cache.set(ACCOUNT_PREFIX + name, encode_spec(spec))
            action = "accounts.disable" if on else "accounts.enable"
            await self.audit.record(actor, action, ACCOUNT_PREFIX + name, {"kill_switch": on})
        return spec

    async def set_limits(self, actor: str, name: str, limits: Mapping[str, Any]) -> AccountSpec:
        self._check_limits(limits)
        if not limits:
            raise InvalidArgument("limits", "name at least one limit to change")
        async with self._lock:
            before = await self.account(name)
            spec = dataclasses.replace(before, **limits)
            await self._cache.set(ACCOUNT_PREFIX + name, encode_spec(spec))
            detail = {k: {"from": getattr(before, k), "to": v} for k, v in limits.items()}
            await self.audit.record(actor, "accounts.set-limits", ACCOUNT_PREFIX + name, detail)
        return spec

    @staticmethod
    def _check_limits(limits: Mapping[str, Any]) -> None:
        for field, value in limits.items():
            if field not in ACCOUNT_LIMITS:
                raise InvalidArgument(field, "is not an account limit")
            _positive(value, field)
            if field != "rate_limit_orders_per_s" and (int(value) != value or value >= 2**63):
                raise InvalidArgument(field, f"must be an integer below 2^63 (got {value})")

    # --- keys ----------------------------------------------------------------------------
    async def issue_key(self, actor: str, account: str, ttl_ms: int = 0) -> IssuedKey:
        if not 0 <= ttl_ms <= MAX_KEY_TTL_MS:
            raise InvalidArgument("ttl_ms", f"must be 0 (no expiry) to {MAX_KEY_TTL_MS} ms (got {ttl_ms})")
        async with self._lock:
            await self.account(account)
            issued = await self._issue(account, ttl_ms)
            await self.audit.record(
                actor,
                "keys.issue",
                KEY_INFO_PREFIX + issued.info.key_id,
                {"account": account, "expires_ns": issued.info.expires_ns},
            )
        return issued

    async def _issue(self, account: str, ttl_ms: int) -> IssuedKey:
        api_key = API_KEY_PREFIX_TEXT + secrets.token_urlsafe(32)
        now = self._now_ns()
        info = KeyRecord(
            key_id=secrets.token_hex(8),
            account=account,
            key_hash=self._secret.api_key_hash(api_key),
            created_ns=now,
            expires_ns=now + ttl_ms * 1_000_000 if ttl_ms else 0,
        )
        await self._cache.set_many(
            [
                SetItem(API_KEY_PREFIX + info.key_hash, account.encode("utf-8"), ttl_ms),
                SetItem(KEY_INFO_PREFIX + info.key_id, info.encode(), ttl_ms),
            ]
        )
        return IssuedKey(api_key, info)

    async def list_keys(self, account: str) -> list[KeyRecord]:
        check_name(account, "account")
        records: list[KeyRecord] = [_decode(KeyRecord, raw) for raw in await self._listed(KEY_INFO_PREFIX)]
        mine = [r for r in records if r.account == account]
        return sorted(mine, key=lambda r: (r.created_ns, r.key_id))

    async def revoke_key(self, actor: str, key_id: str) -> KeyRecord:
        async with self._lock:
            info = await self.key_info(key_id)
            await self._cache.delete(API_KEY_PREFIX + info.key_hash)
            await self._cache.delete(KEY_INFO_PREFIX + key_id)
            self._on_key_revoked(info.key_hash)
            await self.audit.record(actor, "keys.revoke", KEY_INFO_PREFIX + key_id, {"account": info.account})
        return info

    async def rotate_key(self, actor: str, key_id: str, overlap_ms: int = 0) -> IssuedKey:
        if not 0 <= overlap_ms <= MAX_OVERLAP_MS:
            raise InvalidArgument("overlap_ms", f"must be 0 (the default) to {MAX_OVERLAP_MS} ms")
        overlap_ms = overlap_ms or self._overlap_ms
        async with self._lock:
            old = await self.key_info(key_id)
            if old.replaced_by:
                raise Conflict(f"key {key_id} was already rotated (to {old.replaced_by})")
            lifetime_ms = (old.expires_ns - old.created_ns) // 1_000_000 if old.expires_ns else 0
            issued = await self._issue(old.account, max(0, lifetime_ms))
            now = self._now_ns()
            left_ms = (old.expires_ns - now) // 1_000_000 if old.expires_ns else overlap_ms
            keep_ms = max(1, min(overlap_ms, left_ms))
            previous = dataclasses.replace(
                old, expires_ns=now + keep_ms * 1_000_000, replaced_by=issued.info.key_id
            )
            await self._cache.set_many(
                [
                    SetItem(API_KEY_PREFIX + old.key_hash, old.account.encode("utf-8"), keep_ms),
                    SetItem(KEY_INFO_PREFIX + key_id, previous.encode(), keep_ms),
                ]
            )
            await self.audit.record(
                actor,
                "keys.rotate",
                KEY_INFO_PREFIX + key_id,
                {"account": old.account, "new_key_id": issued.info.key_id, "overlap_ms": keep_ms},
            )
        return dataclasses.replace(issued, previous=previous)

    # --- instruments ---------------------------------------------------------------------
    async def add_instrument(self, actor: str, spec: InstrumentSpec) -> InstrumentSpec:
        spec = self._checked_instrument(spec)
        async with self._lock:
            if await self._read(INSTRUMENT_PREFIX + spec.symbol) is not None:
                raise AlreadyExists(f"instrument {spec.symbol!r} exists")
            await self._cache.set(INSTRUMENT_PREFIX + spec.symbol, encode_spec(spec))
            await self.audit.record(actor, "instruments.add", INSTRUMENT_PREFIX + spec.symbol, asdict(spec))
        return spec

    async def set_trading_enabled(self, actor: str, symbol: str, enabled: bool) -> InstrumentSpec:
        async with self._lock:
            spec = dataclasses.replace(await self.instrument(symbol), trading_enabled=enabled)
            await self._cache.set(INSTRUMENT_PREFIX + symbol, encode_spec(spec))
            action = "instruments.resume" if enabled else "instruments.halt"
            await self.audit.record(actor, action, INSTRUMENT_PREFIX + symbol, {"trading_enabled": enabled})
        return spec

    @staticmethod
    def _checked_instrument(spec: InstrumentSpec) -> InstrumentSpec:
        defaults = InstrumentSpec(symbol=spec.symbol)
        check_symbol(spec.symbol, "instrument.symbol")
        tick = _decimal(spec.tick_size or defaults.tick_size, "instrument.tick_size")
        lot = _decimal(spec.lot_size or defaults.lot_size, "instrument.lot_size")
        for field in ("base_asset", "quote_asset"):
            if not ASSET_PATTERN.fullmatch(getattr(spec, field)):
                raise InvalidArgument(f"instrument.{field}", "must be 0 to 16 of A-Z 0-9")
        ints: dict[str, Any] = {}
        for field in (
            "price_increment_ticks",
            "quantity_increment_lots",
            "max_order_lots",
            "max_notional",
            "price_band_ticks",
            "reference_price_ticks",
        ):
            value = int(getattr(spec, field))
            if value < 0:
                raise InvalidArgument(f"instrument.{field}", f"must not be negative (got {value})")
            ints[field] = value or int(getattr(defaults, field))
        if ints["price_band_ticks"] and not ints["reference_price_ticks"]:
            raise InvalidArgument("instrument.reference_price_ticks", "a price band needs a reference price")
        return dataclasses.replace(spec, tick_size=tick, lot_size=lot, trading_enabled=True, **ints)
