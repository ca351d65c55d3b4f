"""Reference data for the order path: instruments, accounts and API keys, read through one interface.

The rows live in the cache service's store (the ``cache_entries`` table, SQL the source of
truth) under these keys, each value UTF-8 JSON:

=========================  ==========================================================
``instrument:<SYMBOL>``    :class:`InstrumentSpec` (the fields of common.proto's Instrument
                           plus the price/quantity grid)
``account:<name>``         :class:`AccountSpec` (numeric id, limits, kill switch)
``apikey:<hmac hex>``      the account name owning the key; the key is stored only as its keyed
                           hash, ``SuiteSecret.api_key_hash`` (HMAC-SHA256 under the suite secret),
                           so a leaked row says nothing without the secret
=========================  ==========================================================

Rows whose key is the plain SHA-256 of an API key (the format before the keyed hash) are
never found: such a key must be issued again.

:class:`ReferenceData` is what the order path calls. It reads through a *source*:
:class:`CacheSource` (the embedded :class:`~services.cache.client.CacheClient` with its
near cache, invalidated by the cache service) when a cache address is configured, else
:class:`SqlSource` (the same table read directly, each row kept locally for a short TTL).
Either way it counts how many lookups had to go to SQL, for ``order_path_hit_ratio``.
Decoded values are kept per raw value, so a hit costs a dict lookup, not a JSON parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from hftgate.security import SuiteSecret
from services.cache.client import CacheClient
from services.cache.l3_sql import SqlStore
from services.cache.model import StoredEntry, VersionClock

log = logging.getLogger(__name__)

INSTRUMENT_PREFIX = "instrument:"
ACCOUNT_PREFIX = "account:"
API_KEY_PREFIX = "apikey:"
CACHE_LEVEL_SQL = 3  # cache_pb2.CACHE_LEVEL_L3
#: The longest API key looked up; a longer one is unknown without hashing it or asking the store.
MAX_API_KEY_CHARS = 256
#: The longest instrument symbol (the admin API refuses longer ones); a longer symbol in an order is
#: an unknown symbol, answered without a store lookup.
MAX_SYMBOL_CHARS = 64


def api_key_row(secret: SuiteSecret, api_key: str) -> str:
    """The reference row key of ``api_key``: ``apikey:<keyed hash>`` (see the module docstring)."""
    return API_KEY_PREFIX + secret.api_key_hash(api_key)


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """One tradable instrument and its per-instrument pre-trade limits."""

    symbol: str
    tick_size: str = "0.01"
    lot_size: str = "0.0001"
    base_asset: str = ""
    quote_asset: str = ""
    # Prices must be multiples of this many ticks; quantities multiples of this many lots.
    price_increment_ticks: int = 1
    quantity_increment_lots: int = 1
    max_order_lots: int = 1_000_000
    # Largest price x quantity of one order, in ticks x lots; 0 = the suite's bound, 2^62
    # (services/execution/risk.py: every product and sum stays within int64).
    max_notional: int = 0
    # Half-width of the band around reference_price_ticks; 0 = no band, though prices stay under
    # the instrument's ceiling (min(2^61, 2^62 / max_order_lots); risk.py).
    price_band_ticks: int = 0
    reference_price_ticks: int = 0
    trading_enabled: bool = True


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """One trading account: its engine id and per-account limits."""

    name: str
    #: Stable numeric id used by the engine and the journal (1 .. 2^63); never reused.
    account_id: int
    # |net position + open orders on one side| may not exceed this, per instrument, in lots.
    position_limit_lots: int = 10_000_000
    max_open_orders: int = 100_000
    # Token bucket: sustained orders per second and the burst on top.
    rate_limit_orders_per_s: float = 200_000.0
    rate_limit_burst: int = 400_000
    kill_switch: bool = False


def encode_spec(spec: InstrumentSpec | AccountSpec) -> bytes:
    return json.dumps(asdict(spec), sort_keys=True).encode("utf-8")


class NotHeld(enum.Enum):
    """The answer of a ``*_held`` lookup whose row is not held locally: await the async lookup."""

    NOT_HELD = "not held"


NOT_HELD = NotHeld.NOT_HELD


def _decode(cls: type[Any], raw: bytes) -> Any:
    data = json.loads(raw)
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


class ReferenceSource(Protocol):
    """Where reference rows come from. ``get`` returns (value or None, whether SQL was read)."""

    def peek(self, key: str) -> bytes | bool | None:
        """The locally held value (bytes), a locally held miss (None), or False when nothing is held."""
        ...

    async def get(self, key: str) -> tuple[bytes | None, bool]: ...

    async def preload(self, prefixes: Sequence[str], keys: Sequence[str]) -> int:
        """Hold the rows under ``prefixes`` (where the source can list them) and the ``keys``, so
        that the first lookups after a start wait for nothing; returns how many rows it read."""
        ...

    async def put_if_absent(self, items: list[tuple[str, bytes]]) -> int: ...

    async def close(self) -> None: ...


class CacheSource:
    """Reference rows through the cache service's client: near cache first, then the service."""

    PRELOAD_ATTEMPTS = 10

    def __init__(self, client: CacheClient) -> None:
        self.client = client

    def peek(self, key: str) -> bytes | bool | None:
        entry = self.client.near_cache.get(key)
        if entry is None:
            return False
        return None if entry.negative else entry.value

    async def get(self, key: str) -> tuple[bytes | None, bool]:
        found = await self.client.get_entry(key)
        if found is None:
            return None, True  # a miss may have been answered by SQL: count it as such
        return found.value, found.level == CACHE_LEVEL_SQL

    async def preload(self, prefixes: Sequence[str], keys: Sequence[str]) -> int:
        # The cache service cannot list keys: only the named ones go into the near cache. A read
        # that an invalidation overtakes is not kept (just after seeding, the seed's own are still
        # on their way): read again, a bounded number of times, until the near cache holds them.
        if not keys:
            return 0
        for _ in range(self.PRELOAD_ATTEMPTS):
            found = await self.client.get_many(keys)
            if all(key in self.client.near_cache for key in found):
                break
            await asyncio.sleep(0.02)
        return len(found)

    async def put_if_absent(self, items: list[tuple[str, bytes]]) -> int:
        present = await self.client.get_many([key for key, _ in items])
        missing = [(key, value) for key, value in items if key not in present]
        if missing:
            await self.client.set_many(missing)
        return len(missing)

    async def close(self) -> None:
        await self.client.close()


class SqlSource:
    """Reference rows read straight from the cache's SQL table, none older than ``local_ttl_ms``.

    Refreshed ahead, off the order path: a background task re-reads every row in use each
    half TTL, in one query per 500 keys, so a lookup finds a fresh row and never waits for
    SQL, except for a key it has never read or when the refresher fell behind (a row past
    its TTL is read by the caller, as before). Before, every key's first lookup after each
    TTL waited for an SQL read (1-2 ms here, once a second per key: it showed in the unary
    p99). Rows not looked up for ``idle_drop_ms`` are dropped from the refresh.
    """

    _REFRESH_CHUNK = 500
    #: At start, :meth:`preload` holds at most this many rows per key prefix.
    PRELOAD_ROWS_PER_PREFIX = 20_000
    #: Misses are held (and refreshed) only while fewer rows than this are held: a caller sending
    #: made-up API keys cannot grow the held rows or the refresh without bound.
    MAX_HELD_ROWS = 100_000

    def __init__(self, store: SqlStore, local_ttl_ms: int, idle_drop_ms: int = 60_000) -> None:
        self.store = store
        self._ttl_ns = max(local_ttl_ms, 1) * 1_000_000
        self._idle_drop_ns = max(idle_drop_ms, local_ttl_ms) * 1_000_000
        # key -> [value, read at, last looked up at] (monotonic ns); lists, updated in place.
        self._held: dict[str, list[Any]] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._reading: dict[str, asyncio.Future[bytes | None]] = {}
        self.refreshes = 0
        self.refresh_failures = 0

    def peek(self, key: str) -> bytes | bool | None:
        held = self._held.get(key)
        if held is None:
            return False
        now = time.monotonic_ns()
        if now - held[1] > self._ttl_ns:
            return False  # the refresher fell behind: the caller reads SQL
        held[2] = now
        value: bytes | None = held[0]
        return value

    async def get(self, key: str) -> tuple[bytes | None, bool]:
        # Single flight: callers that miss the same key while it is read share the one read (at a
        # start under load, every order would otherwise queue its own read of the same row).
        reading = self._reading.get(key)
        if reading is None:
            reading = self._reading[key] = asyncio.ensure_future(self._read(key))
            reading.add_done_callback(lambda _: self._reading.pop(key, None))
        return await asyncio.shield(reading), True

    async def _read(self, key: str) -> bytes | None:
        rows = await self.store.get_many([key], time.time_ns() // 1_000_000)
        entry = rows.get(key)
        value = None if entry is None else entry.value
        if value is not None or len(self._held) < self.MAX_HELD_ROWS:
            self._hold({key: value})  # misses (unknown keys a caller made up) only up to the bound
        return value

    def _hold(self, values: Mapping[str, bytes | None]) -> None:
        now = time.monotonic_ns()
        for key, value in values.items():
            self._held[key] = [value, now, now]
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_forever(), name="reference-refresh"
            )

    async def preload(self, prefixes: Sequence[str], keys: Sequence[str]) -> int:
        now_ms = time.time_ns() // 1_000_000
        values: dict[str, bytes | None] = {}
        for prefix in prefixes:
            rows = await self.store.get_prefixed(prefix, now_ms, self.PRELOAD_ROWS_PER_PREFIX)
            if len(rows) == self.PRELOAD_ROWS_PER_PREFIX:
                log.warning("reference rows: preloaded only the first %d under %r", len(rows), prefix)
            values.update((key, entry.value) for key, entry in rows.items())
        missing = [key for key in keys if key not in values]
        if missing:
            rows = await self.store.get_many(missing, now_ms)
            values.update((key, rows[key].value if key in rows else None) for key in missing)
        if values:
            self._hold(values)
        return len(values)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_ns / 2e9)
            try:
                await self.refresh_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # rows age past their TTL and callers read SQL themselves
                self.refresh_failures += 1
                log.warning("reference rows: background refresh failed: %r", exc)

    async def refresh_once(self) -> None:
        """Re-read every row looked up within ``idle_drop_ms``; forget the others."""
        now = time.monotonic_ns()
        for key in [k for k, held in self._held.items() if now - held[2] > self._idle_drop_ns]:
            del self._held[key]
        keys = list(self._held)
        for start in range(0, len(keys), self._REFRESH_CHUNK):
            chunk = keys[start : start + self._REFRESH_CHUNK]
            rows = await self.store.get_many(chunk, time.time_ns() // 1_000_000)
            read_at = time.monotonic_ns()
            for key in chunk:
                held = self._held.get(key)
                if held is not None:
                    entry = rows.get(key)
                    held[0] = None if entry is None else entry.value
                    held[1] = read_at
        self.refreshes += 1

    async def put_if_absent(self, items: list[tuple[str, bytes]]) -> int:
        now_ms = time.time_ns() // 1_000_000
        present = await self.store.get_many([key for key, _ in items], now_ms)
        clock = VersionClock()
        missing = [
            (key, StoredEntry(value, clock.next())) for key, value in items if present.get(key) is None
        ]
        if missing:
            await self.store.put_many(missing)
        for key, _ in items:
            self._held.pop(key, None)
        return len(missing)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.store.close()


@dataclass(slots=True)
class LookupCounters:
    lookups: int = 0
    sql_lookups: int = 0

    @property
    def hit_ratio(self) -> float:
        """Share of lookups answered without reading SQL."""
        return 1.0 - self.sql_lookups / self.lookups if self.lookups else 1.0


class ReferenceData:
    """Instruments, accounts and API keys for the order path, decoded once per stored value.

    API keys are looked up by their keyed hash under ``secret`` (:func:`api_key_row`); the row
    key of each key seen is kept (up to ``MAX_KEY_ROWS``, then forgotten all at once), so an
    account's calls after its first pay one dict lookup for it, not an HMAC.
    """

    MAX_KEY_ROWS = 4_096

    def __init__(self, source: ReferenceSource, secret: SuiteSecret) -> None:
        self.source = source
        self.secret = secret
        self.counters = LookupCounters()
        self._decoded: dict[str, tuple[bytes, Any]] = {}
        self._key_rows: dict[str, str] = {}

    def key_row(self, api_key: str) -> str | None:
        """The row key of ``api_key`` (cached), or None for a key too long to be one of ours."""
        row = self._key_rows.get(api_key)
        if row is None:
            if len(api_key) > MAX_API_KEY_CHARS:
                return None
            if len(self._key_rows) >= self.MAX_KEY_ROWS:
                self._key_rows.clear()
            row = self._key_rows[api_key] = api_key_row(self.secret, api_key)
        return row

    def _held_spec(self, key: str, cls: type[Any]) -> Any:
        """The spec of ``key`` when the source holds its row now (no await), else :data:`NOT_HELD`."""
        raw = self.source.peek(key)
        if raw is False:
            return NOT_HELD
        self.counters.lookups += 1
        return self._spec_of(key, cls, raw)  # type: ignore[arg-type]

    async def _spec(self, key: str, cls: type[Any]) -> Any:
        spec = self._held_spec(key, cls)
        if spec is not NOT_HELD:
            return spec
        self.counters.lookups += 1
        raw, from_sql = await self.source.get(key)
        if from_sql:
            self.counters.sql_lookups += 1
        return self._spec_of(key, cls, raw)

    def _spec_of(self, key: str, cls: type[Any], raw: bytes | None) -> Any:
        if raw is None or cls is bytes:
            return raw
        known = self._decoded.get(key)
        if known is not None and known[0] == raw:
            return known[1]
        try:
            spec = _decode(cls, raw)
        except (ValueError, TypeError) as exc:
            log.error("reference row %s cannot be decoded as %s: %s", key, cls.__name__, exc)
            return None
        self._decoded[key] = (raw, spec)
        return spec

    async def instrument(self, symbol: str) -> InstrumentSpec | None:
        if len(symbol) > MAX_SYMBOL_CHARS:
            return None  # no such instrument can exist: never ask the store (its key limit would answer)
        spec: InstrumentSpec | None = await self._spec(INSTRUMENT_PREFIX + symbol, InstrumentSpec)
        return spec

    def instrument_held(self, symbol: str) -> InstrumentSpec | NotHeld | None:
        """:meth:`instrument` without an await when its row is held locally, else :data:`NOT_HELD`.

        The order path's lookups almost always hit (rows are refreshed ahead); a coroutine chain per
        lookup costs more than the lookup.
        """
        if len(symbol) > MAX_SYMBOL_CHARS:
            return None
        spec: InstrumentSpec | NotHeld | None = self._held_spec(INSTRUMENT_PREFIX + symbol, InstrumentSpec)
        return spec

    async def account(self, name: str) -> AccountSpec | None:
        spec: AccountSpec | None = await self._spec(ACCOUNT_PREFIX + name, AccountSpec)
        return spec

    def account_held(self, name: str) -> AccountSpec | NotHeld | None:
        """:meth:`account` without an await when its row is held locally, else :data:`NOT_HELD`."""
        spec: AccountSpec | NotHeld | None = self._held_spec(ACCOUNT_PREFIX + name, AccountSpec)
        return spec

    async def account_for_key(self, api_key: str) -> AccountSpec | None:
        """The account owning ``api_key``, or None for an unknown key."""
        row = self.key_row(api_key)
        name = None if row is None else await self._spec(row, bytes)
        if name is None:
            return None
        return await self.account(name.decode("utf-8"))

    def account_for_key_held(self, api_key: str) -> AccountSpec | NotHeld | None:
        """:meth:`account_for_key` without an await when both rows are held locally, else :data:`NOT_HELD`."""
        row = self.key_row(api_key)
        if row is None:
            return None
        name = self._held_spec(row, bytes)
        if name is None or name is NOT_HELD:
            return name  # type: ignore[no-any-return]
        spec: AccountSpec | NotHeld | None = self._held_spec(
            ACCOUNT_PREFIX + name.decode("utf-8"), AccountSpec
        )
        return spec

    async def preload(
        self, symbols: Iterable[str], account_names: Iterable[str], keys: Iterable[str] = ()
    ) -> int:
        """Hold the reference rows the order path will ask for, before the service reports SERVING:
        every instrument, account and API key row where the source can list them, else those of the
        named symbols and accounts and the other ``keys``. Returns how many rows were read."""
        named = [INSTRUMENT_PREFIX + s for s in symbols] + [ACCOUNT_PREFIX + a for a in account_names]
        return await self.source.preload(
            (INSTRUMENT_PREFIX, ACCOUNT_PREFIX, API_KEY_PREFIX), list(dict.fromkeys([*named, *keys]))
        )

    async def close(self) -> None:
        await self.source.close()


DEMO_INSTRUMENTS: tuple[InstrumentSpec, ...] = (
    InstrumentSpec(
        symbol="BTCUSDT",
        tick_size="0.01",
        lot_size="0.00001",
        base_asset="BTC",
        quote_asset="USDT",
        max_order_lots=100_000_000,
        max_notional=0,
        price_band_ticks=0,
        reference_price_ticks=6_000_000,
    ),
    InstrumentSpec(
        symbol="ETHUSDT",
        tick_size="0.01",
        lot_size="0.0001",
        base_asset="ETH",
        quote_asset="USDT",
        max_order_lots=100_000_000,
    ),
    InstrumentSpec(
        symbol="ESZ4",
        tick_size="0.25",
        lot_size="1",
        max_order_lots=10_000,
        # E-mini prices are quoted in quarter points: the grid is every tick here.
        price_increment_ticks=1,
    ),
)


def demo_api_key(secret: str, account: str) -> str:
    """The API key of demo account ``account`` (see ExecutionConfig.demo_key_secret)."""
    return f"{secret}-{account}"


def demo_rows(
    accounts: tuple[str, ...], key_secret: str, suite_secret: SuiteSecret
) -> list[tuple[str, bytes]]:
    """Rows for the demo instruments and accounts (account ids 1, 2, ... in the given order); each
    demo key (``<key_secret>-<name>``) is stored by its keyed hash under ``suite_secret``."""
    rows = [(INSTRUMENT_PREFIX + spec.symbol, encode_spec(spec)) for spec in DEMO_INSTRUMENTS]
    for number, name in enumerate(accounts, start=1):
        rows.append((ACCOUNT_PREFIX + name, encode_spec(AccountSpec(name=name, account_id=number))))
        rows.append((api_key_row(suite_secret, demo_api_key(key_secret, name)), name.encode("utf-8")))
    return rows
