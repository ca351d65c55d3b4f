"""The market data service as an attacker meets it (issue #12 part 3, and its share of 1 and 5).

Each attack runs against a real server on a free port: callers without credentials, with a
forged token, with an account key trying to publish, services that may not publish, a feed
publishing the suite's own venue, each repro of the issue (trade id 2**64-1 on venue hftgate,
a tick stamped "now" on a feed replayed from the past, 4,200 junk symbols, a 10 MiB symbol),
quotas, length limits and malformed bytes. Each is refused and changes nothing: a normal tick
is still accepted afterwards and an unfiltered snapshot stays small.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.security import SERVICE_TOKEN_METADATA, SuiteSecret, load_suite_secret
from hftgate.v1 import common_pb2, marketdata_pb2, marketdata_pb2_grpc
from services.marketdata.access import ApiKeyVerifier
from services.marketdata.config import MarketDataConfig
from services.marketdata.engine import MarketDataEngine
from services.marketdata.server import start
from tests.services.marketdata.helpers import api_key_metadata, channel, token_metadata

pb = marketdata_pb2
Stub = marketdata_pb2_grpc.MarketDataServiceStub
Metadata = Sequence[tuple[str, str]]

SECOND = 1_000_000_000
# The recorded window the suite replays (2024-08-08 23:54 UTC): a feed "replayed from the past".
PAST = 1_723_161_240 * SECOND
U64_MAX = 2**64 - 1
INTERNALS = ("Traceback", "<class", "DecodeError", "Unexpected", 'File "', "google.protobuf")


def now_ns() -> int:
    import time

    return time.time_ns()


@dataclass
class Suite:
    engine: MarketDataEngine
    target: str
    stubs: dict[str, Stub]

    def __getitem__(self, who: str) -> Stub:
        return self.stubs[who]


@asynccontextmanager
async def suite(api_keys: ApiKeyVerifier | None = None, **config: Any) -> AsyncIterator[Suite]:
    """The service, and a stub per kind of caller: "none" (no credentials), "forged", each service
    principal by name, "alice" (an account key, valid when ``api_keys`` knows it)."""
    cfg = MarketDataConfig(port=0, **config)
    engine = MarketDataEngine(cfg)
    running = await start(cfg, engine, api_keys=api_keys)
    target = f"127.0.0.1:{running.port}"
    forged = SuiteSecret(b"not-the-suite-secret-" + b"x" * 32).token_for("feed")
    callers: dict[str, Metadata] = {
        "none": (),
        "forged": ((SERVICE_TOKEN_METADATA, forged),),
        "alice": api_key_metadata("alice-key"),
        **{p: token_metadata(p) for p in ("admin", "execution", "feed", "cache", "gateway", "scaler")},
    }
    channels = {who: channel(target, metadata) for who, metadata in callers.items()}
    try:
        yield Suite(engine, target, {who: Stub(ch) for who, ch in channels.items()})
    finally:
        for ch in channels.values():
            await ch.close()
        await running.stop(0)


def trade(venue: str, symbol: str, ts: int, trade_id: int = 0, price: float = 100.0) -> marketdata_pb2.Trade:
    return pb.Trade(venue=venue, symbol=symbol, exchange_ts_ns=ts, trade_id=trade_id, price=price, size=1.0)


def quote(venue: str, symbol: str, ts: int, sequence: int = 0) -> marketdata_pb2.Quote:
    return pb.Quote(
        venue=venue,
        symbol=symbol,
        exchange_ts_ns=ts,
        sequence=sequence,
        bid_price=99.0,
        bid_size=1.0,
        ask_price=101.0,
        ask_size=1.0,
    )


async def publish_trades(stub: Stub, *trades: marketdata_pb2.Trade) -> marketdata_pb2.PublishSummary:
    async def requests() -> AsyncIterator[marketdata_pb2.PublishTradesRequest]:
        for t in trades:  # one message per trade: the order of arrival is the order given
            yield pb.PublishTradesRequest(trades=[t])

    return await stub.PublishTrades(requests())


async def publish_quotes(stub: Stub, *quotes: marketdata_pb2.Quote) -> marketdata_pb2.PublishSummary:
    async def requests() -> AsyncIterator[marketdata_pb2.PublishQuotesRequest]:
        yield pb.PublishQuotesRequest(quotes=list(quotes))

    return await stub.PublishQuotes(requests())


def reasons(summary: marketdata_pb2.PublishSummary) -> dict[str, int]:
    return {
        pb.TickRejectReason.Name(r.reason).removeprefix("TICK_REJECT_REASON_"): r.count
        for r in summary.rejected_by_reason
    }


async def snapshot(s: Suite, venue: str = "", name: str = "") -> marketdata_pb2.GetSnapshotResponse:
    symbols = [common_pb2.Symbol(venue=venue, name=name)] if venue or name else []
    return await s["admin"].GetSnapshot(pb.GetSnapshotRequest(filter=pb.SymbolFilter(symbols=symbols)))


async def assert_still_serves_normal_ticks(s: Suite) -> None:
    """What every refusal must leave: a normal tick accepted, and a small unfiltered snapshot."""
    ts = now_ns()
    summary = await publish_trades(s["feed"], trade("binance-spot", "ETHUSDT", ts, price=2500.0))
    assert (summary.accepted, summary.rejected) == (1, 0), reasons(summary)
    whole = await snapshot(s)
    assert whole.ByteSize() < 64 * 1024
    assert all(len(x.symbol.name) <= 64 and len(x.symbol.venue) <= 64 for x in whole.symbols)


async def rpc_code(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value.code(), refused.value.details() or ""


async def stream_code(stream: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stream:
            pass
    return refused.value.code(), refused.value.details() or ""


def every_rpc(stub: Stub) -> dict[str, Callable[[], Awaitable[tuple[grpc.StatusCode, str]]]]:
    """Each RPC of the service with a harmless, valid request; each returns the refusal."""
    btc = common_pb2.Symbol(venue="binance-spot", name="BTCUSDT")
    return {
        "PublishTrades": lambda: rpc_code(publish_trades(stub, trade("binance-spot", "BTCUSDT", now_ns()))),
        "PublishQuotes": lambda: rpc_code(publish_quotes(stub, quote("binance-spot", "BTCUSDT", now_ns()))),
        "GetSnapshot": lambda: rpc_code(stub.GetSnapshot(pb.GetSnapshotRequest())),
        "GetBars": lambda: rpc_code(stub.GetBars(pb.GetBarsRequest(symbol=btc, interval_ms=1000))),
        "GetVwap": lambda: rpc_code(stub.GetVwap(pb.GetVwapRequest(symbol=btc))),
        "Subscribe": lambda: stream_code(stub.Subscribe(pb.SubscribeRequest())),
        "StreamArbitrage": lambda: stream_code(stub.StreamArbitrage(pb.StreamArbitrageRequest())),
    }


# --- who may call -----------------------------------------------------------------------------
@pytest.mark.parametrize("caller", ["none", "forged"])
async def test_without_a_valid_credential_every_rpc_is_unauthenticated_and_nothing_changes(
    caller: str,
) -> None:
    async with suite() as s:
        for method, call in every_rpc(s[caller]).items():
            code, message = await call()
            assert code == grpc.StatusCode.UNAUTHENTICATED, method
            assert "token" in message, (method, message)
        assert (await snapshot(s)).symbols == []
        assert s.engine.stats().accepted == 0
        await assert_still_serves_normal_ticks(s)


async def test_a_forged_token_is_refused_even_beside_a_valid_api_key() -> None:
    keys = ApiKeyVerifier(load_suite_secret(), _lookup({"alice-key": b"alice"}))
    async with suite(api_keys=keys) as s:
        forged = SuiteSecret(b"y" * 40).token_for("admin")
        metadata = ((SERVICE_TOKEN_METADATA, forged), *api_key_metadata("alice-key"))
        async with channel(s.target, metadata) as ch:
            code, _ = await rpc_code(Stub(ch).GetSnapshot(pb.GetSnapshotRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert keys.lookups == 0


@pytest.mark.parametrize("principal", ["admin", "cache", "gateway", "scaler"])
async def test_a_service_that_is_no_publisher_is_permission_denied_and_nothing_changes(
    principal: str,
) -> None:
    async with suite() as s:
        for method in ("PublishTrades", "PublishQuotes"):
            code, message = await every_rpc(s[principal])[method]()
            assert code == grpc.StatusCode.PERMISSION_DENIED, method
            assert f"principal {principal!r} may not publish" in message
            assert "execution, feed" in message
        # ... and may read.
        assert (await s[principal].GetSnapshot(pb.GetSnapshotRequest())).symbols == []
        await assert_still_serves_normal_ticks(s)


async def test_an_account_key_may_not_publish_even_when_valid() -> None:
    keys = ApiKeyVerifier(load_suite_secret(), _lookup({"alice-key": b"alice"}))
    async with suite(api_keys=keys) as s:
        for method in ("PublishTrades", "PublishQuotes"):
            code, message = await every_rpc(s["alice"])[method]()
            assert code == grpc.StatusCode.UNAUTHENTICATED, method
            assert "service token" in message
        assert (await snapshot(s)).symbols == []
        # The same key reads.
        assert (await s["alice"].GetSnapshot(pb.GetSnapshotRequest())).symbols == []
        await assert_still_serves_normal_ticks(s)


def _lookup(
    keys: dict[str, bytes], asked: list[str] | None = None
) -> Callable[[str], Awaitable[bytes | None]]:
    """A cache lookup holding the apikey rows of ``keys`` (key -> account), as the cache does;
    ``asked`` collects every row asked for."""
    secret = load_suite_secret()
    rows = {"apikey:" + secret.api_key_hash(key): account for key, account in keys.items()}

    async def lookup(row: str) -> bytes | None:
        if asked is not None:
            asked.append(row)
        return rows.get(row)

    return lookup


async def test_api_keys_read_when_they_resolve_and_are_refused_otherwise() -> None:
    secret = load_suite_secret()
    asked: list[str] = []
    keys = ApiKeyVerifier(secret, _lookup({"alice-key": b"alice"}, asked), max_key_chars=64)
    async with suite(api_keys=keys) as s:
        alice = s["alice"]
        assert (await alice.GetSnapshot(pb.GetSnapshotRequest())).symbols == []
        code, _ = await rpc_code(alice.GetBars(pb.GetBarsRequest(symbol=BTC, interval_ms=1000)))
        assert code == grpc.StatusCode.NOT_FOUND  # admitted: there is no such symbol yet
        for stream in (
            alice.Subscribe(pb.SubscribeRequest()),
            alice.StreamArbitrage(pb.StreamArbitrageRequest()),
        ):
            with pytest.raises(asyncio.TimeoutError):  # admitted: waits for updates
                await asyncio.wait_for(stream.read(), 0.3)
            stream.cancel()
        for bad in ("bob-key", "", "k" * 65, "alice-kez"):
            async with channel(s.target, api_key_metadata(bad)) as ch:
                for method, call in every_rpc(Stub(ch)).items():
                    code, _ = await call()
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (bad, method)
        # Only hashes were asked for; the empty and the over-long keys never were.
        assert "apikey:" + secret.api_key_hash("bob-key") in asked
        assert not {"apikey:" + secret.api_key_hash(k) for k in ("", "k" * 65)} & set(asked)
        assert all(len(row) == len("apikey:") + 64 for row in asked)


async def test_without_a_cache_api_keys_are_refused_saying_why() -> None:
    async with suite() as s:
        code, message = await rpc_code(s["alice"].GetSnapshot(pb.GetSnapshotRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "cannot verify API keys" in message and "HFTGATE_MARKETDATA_CACHE_ADDRESS" in message


async def test_an_unreachable_cache_is_unavailable_not_an_invalid_key() -> None:
    async def broken(row: str) -> bytes | None:
        raise ConnectionError("cache down")

    async with suite(api_keys=ApiKeyVerifier(load_suite_secret(), broken)) as s:
        code, message = await rpc_code(s["alice"].GetSnapshot(pb.GetSnapshotRequest()))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "cache down" not in message and "retry" in message


async def test_api_keys_resolve_through_the_real_cache_service_and_revocation_reaches_it(
    tmp_path: Path,
) -> None:
    from services.cache.client import CacheClient
    from services.cache.config import CacheConfig
    from services.cache.server import start as start_cache

    secret = load_suite_secret()
    cache = await start_cache(
        CacheConfig(
            port=0,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'cache.sqlite3'}",
            state_dir=str(tmp_path / "state"),
        )
    )
    try:
        admin = CacheClient(f"127.0.0.1:{cache.port}", credentials=secret.service_credentials("admin"))
        mine = CacheClient(
            f"127.0.0.1:{cache.port}",
            watcher_name="marketdata",
            credentials=secret.service_credentials("marketdata"),
        )
        async with admin, mine:
            row = "apikey:" + secret.api_key_hash("carol-key")
            await admin.set(row, b"carol")
            async with (
                suite(api_keys=ApiKeyVerifier(secret, mine.get)) as s,
                channel(s.target, api_key_metadata("carol-key")) as ch,
            ):
                assert (await Stub(ch).GetSnapshot(pb.GetSnapshotRequest())).symbols == []
                await admin.delete(row)  # the key is revoked: the near cache hears of it
                for _ in range(100):
                    try:
                        await Stub(ch).GetSnapshot(pb.GetSnapshotRequest())
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("a revoked key kept reading")
    finally:
        await cache.stop(0)


# --- who may publish what -----------------------------------------------------------------------
async def test_a_feed_cannot_publish_the_suites_own_venue_and_execution_only_that() -> None:
    async with suite() as s:
        ts = now_ns()
        summary = await publish_trades(s["feed"], trade("hftgate", "BTCUSDT", ts, trade_id=U64_MAX))
        assert (summary.accepted, reasons(summary)) == (0, {"VENUE_NOT_ALLOWED": 1})
        summary = await publish_quotes(s["feed"], quote("hftgate", "BTCUSDT", ts))
        assert reasons(summary) == {"VENUE_NOT_ALLOWED": 1}
        summary = await publish_trades(s["execution"], trade("binance-spot", "BTCUSDT", ts))
        assert reasons(summary) == {"VENUE_NOT_ALLOWED": 1}
        assert (await snapshot(s)).symbols == []
        # Once execution has created the symbol, a feed still may not write to it.
        assert (await publish_trades(s["execution"], trade("hftgate", "BTCUSDT", ts, 7))).accepted == 1
        summary = await publish_trades(s["feed"], trade("hftgate", "BTCUSDT", ts + 1, 8, price=1.0))
        assert reasons(summary) == {"VENUE_NOT_ALLOWED": 1}
        (own,) = (await snapshot(s, "hftgate")).symbols
        assert (own.last_trade.trade_id, own.last_trade.price, own.trades) == (7, 100.0, 1)
        await assert_still_serves_normal_ticks(s)


# --- the repros of issue #12 part 3 ---------------------------------------------------------------
async def test_trade_id_2_64_minus_1_on_venue_hftgate_does_not_lock_real_fills() -> None:
    async with suite() as s:
        ts = now_ns() - 10 * SECOND
        first = await publish_trades(s["execution"], trade("hftgate", "BTCUSDT", ts, 1))
        assert first.accepted == 1
        bad = await publish_trades(s["execution"], trade("hftgate", "BTCUSDT", ts + 1, U64_MAX, price=1.0))
        assert reasons(bad) == {"JUMP": 1}
        fills = await publish_trades(
            s["execution"], *(trade("hftgate", "BTCUSDT", ts + 2 + i, 2 + i) for i in range(5))
        )
        assert (fills.accepted, fills.rejected) == (5, 0)
        (own,) = (await snapshot(s, "hftgate")).symbols
        assert (own.last_trade.trade_id, own.trades, own.last_trade.price) == (6, 6, 100.0)


async def test_trade_id_2_64_minus_1_as_a_symbols_first_trade_costs_two_real_fills_at_most() -> None:
    async with suite() as s:
        ts = now_ns() - 10 * SECOND
        bad = await publish_trades(s["execution"], trade("hftgate", "ETHUSDT", ts, U64_MAX, price=1.0))
        assert bad.accepted == 1  # nothing to compare a first trade with
        fills = await publish_trades(
            s["execution"], *(trade("hftgate", "ETHUSDT", ts + 1 + i, 1 + i) for i in range(6))
        )
        assert (fills.accepted, reasons(fills)) == (4, {"JUMP": 2})
        (own,) = (await snapshot(s, "hftgate", "ETHUSDT")).symbols
        assert own.last_trade.trade_id == 6
        more = await publish_trades(s["execution"], trade("hftgate", "ETHUSDT", ts + 10, 7))
        assert more.accepted == 1


async def test_a_tick_stamped_now_on_a_feed_replayed_from_the_past_is_a_jump() -> None:
    async with suite() as s:
        replayed = [trade("binance-spot", "BTCUSDT", PAST + i * SECOND, 1_000 + i) for i in range(3)]
        assert (await publish_trades(s["feed"], *replayed)).accepted == 3
        quotes = [quote("binance-spot", "BTCUSDT", PAST + i * SECOND, 50 + i) for i in range(3)]
        assert (await publish_quotes(s["feed"], *quotes)).accepted == 3
        # The bad ticks: "now", with no id (and, for the trade, an id that fits too).
        bad_trade = trade("binance-spot", "BTCUSDT", now_ns(), 1_003, price=1.0)
        assert reasons(await publish_trades(s["feed"], bad_trade)) == {"JUMP": 1}
        assert reasons(await publish_quotes(s["feed"], quote("binance-spot", "BTCUSDT", now_ns()))) == {
            "JUMP": 1
        }
        more = [trade("binance-spot", "BTCUSDT", PAST + (3 + i) * SECOND, 1_003 + i) for i in range(5)]
        assert (await publish_trades(s["feed"], *more)).accepted == 5
        later_quotes = [quote("binance-spot", "BTCUSDT", PAST + (3 + i) * SECOND, 53 + i) for i in range(5)]
        assert (await publish_quotes(s["feed"], *later_quotes)).accepted == 5
        (btc,) = (await snapshot(s, "binance-spot", "BTCUSDT")).symbols
        assert (btc.trades, btc.last_trade.price, btc.last_trade.trade_id) == (8, 100.0, 1_007)
        assert all(bar.start_ns < PAST + 60 * SECOND for bar in btc.current_bars)
        bars = await s["feed"].GetBars(
            pb.GetBarsRequest(symbol=btc.symbol, interval_ms=1000, include_open=True)
        )
        assert [b.start_ns for b in bars.bars] == [PAST + i * SECOND for i in range(8)]


async def test_a_now_tick_that_came_first_gives_way_to_the_replayed_feed_with_a_clean_history() -> None:
    async with suite() as s:
        assert (
            await publish_trades(s["feed"], trade("binance-spot", "SOLUSDT", now_ns(), price=1.0))
        ).accepted == 1
        replayed = [trade("binance-spot", "SOLUSDT", PAST + i * SECOND, 10 + i) for i in range(6)]
        summary = await publish_trades(s["feed"], *replayed)
        assert (summary.accepted, reasons(summary)) == (4, {"JUMP": 2})
        (sol,) = (await snapshot(s, "binance-spot", "SOLUSDT")).symbols
        # The trade history restarted at the resync: no trace of the bad tick in bars or VWAP.
        assert sol.vwap_by_count.trades == 4 and sol.vwap_by_count.vwap == 100.0
        bars = await s["feed"].GetBars(
            pb.GetBarsRequest(symbol=sol.symbol, interval_ms=60_000, include_open=True)
        )
        assert [(b.trades, b.low) for b in bars.bars] == [(4, 100.0)]


async def test_4200_junk_symbols_from_one_feed_leave_room_for_the_others() -> None:
    async with suite() as s:
        ts = now_ns()
        junk = [trade("binance-spot", f"JUNK{i}", ts) for i in range(4_200)]

        async def requests() -> AsyncIterator[marketdata_pb2.PublishTradesRequest]:
            for start_at in range(0, len(junk), 1_000):
                yield pb.PublishTradesRequest(trades=junk[start_at : start_at + 1_000])

        summary = await s["feed"].PublishTrades(requests())
        quota = s.engine.publishers["feed"].symbol_quota
        assert quota == 2_048  # half of max_symbols: two publishers by default
        assert (summary.accepted, reasons(summary)) == (quota, {"SYMBOL_QUOTA_EXCEEDED": 4_200 - quota})
        # The execution service still has all its room, and the feed's own symbols still update.
        fills = await publish_trades(s["execution"], *(trade("hftgate", f"SYM{i}", ts, 1) for i in range(20)))
        assert fills.accepted == 20
        assert (await publish_trades(s["feed"], trade("binance-spot", "JUNK0", ts + 1))).accepted == 1
        assert reasons(await publish_trades(s["feed"], trade("binance-spot", "ETHUSDT", ts))) == {
            "SYMBOL_QUOTA_EXCEEDED": 1
        }


async def test_configured_quotas_partition_the_symbol_table() -> None:
    async with suite(max_symbols=10, publisher_symbol_quotas=("execution=3",)) as s:
        ts = now_ns()
        feed = await publish_trades(s["feed"], *(trade("bybit", f"S{i}", ts) for i in range(9)))
        assert (feed.accepted, reasons(feed)) == (7, {"SYMBOL_QUOTA_EXCEEDED": 2})
        own = await publish_trades(s["execution"], *(trade("hftgate", f"S{i}", ts, 1) for i in range(4)))
        assert (own.accepted, reasons(own)) == (3, {"SYMBOL_QUOTA_EXCEEDED": 1})
        assert len((await snapshot(s)).symbols) == 10


# --- length limits --------------------------------------------------------------------------------
async def test_a_10_mib_symbol_or_venue_is_never_stored() -> None:
    async with suite() as s:
        ts = now_ns()
        huge = "X" * (10 * 1024 * 1024)
        summary = await publish_trades(
            s["feed"],
            trade("binance-spot", huge, ts),
            trade(huge, "BTCUSDT", ts),
            trade("binance-spot", "Y" * 65, ts),
        )
        assert reasons(summary) == {"SYMBOL_TOO_LONG": 2, "VENUE_TOO_LONG": 1}
        depth = pb.DepthUpdate(venue="bybit", symbol=huge, exchange_ts_ns=ts, is_snapshot=True)
        quotes_summary = await s["feed"].PublishQuotes(
            _one(pb.PublishQuotesRequest(quotes=[quote("bybit", huge, ts)], depth_updates=[depth]))
        )
        assert reasons(quotes_summary) == {"SYMBOL_TOO_LONG": 2}
        assert (await snapshot(s)).symbols == []
        assert (await publish_trades(s["feed"], trade("binance-spot", "Z" * 64, ts))).accepted == 1
        await assert_still_serves_normal_ticks(s)


async def _one(message: Any) -> AsyncIterator[Any]:
    yield message


def _field(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    return detail.field_violations[0].field


async def test_queries_and_filters_have_length_limits() -> None:
    async with suite() as s:
        stub = s["gateway"]
        long_name = common_pb2.Symbol(venue="binance-spot", name="N" * (1024 * 1024))
        long_venue = common_pb2.Symbol(venue="v" * 65, name="BTCUSDT")
        many = pb.SymbolFilter(symbols=[common_pb2.Symbol(name=f"S{i}") for i in range(1_025)])
        cases: list[tuple[Awaitable[Any], str]] = [
            (
                stub.GetSnapshot(pb.GetSnapshotRequest(filter=pb.SymbolFilter(symbols=[long_name]))),
                "filter.symbols[0].name",
            ),
            (
                stub.GetSnapshot(pb.GetSnapshotRequest(filter=pb.SymbolFilter(symbols=[BTC, long_venue]))),
                "filter.symbols[1].venue",
            ),
            (stub.GetSnapshot(pb.GetSnapshotRequest(filter=many)), "filter.symbols"),
            (stub.GetBars(pb.GetBarsRequest(symbol=long_name, interval_ms=1000)), "symbol.name"),
            (stub.GetVwap(pb.GetVwapRequest(symbol=long_venue)), "symbol.venue"),
        ]
        for call, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert _field(refused.value) == field
            assert len(refused.value.details() or "") < 200
        for request in (
            pb.SubscribeRequest(filter=many),
            pb.SubscribeRequest(filter=pb.SymbolFilter(symbols=[long_name])),
        ):
            code, message = await stream_code(stub.Subscribe(request))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and len(message) < 200
        kinds = pb.StreamArbitrageRequest(kinds=[pb.ARBITRAGE_KIND_CROSS_VENUE] * 100_000)
        code, message = await stream_code(stub.StreamArbitrage(kinds))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and len(message) < 200
        unknown = pb.StreamArbitrageRequest(kinds=[pb.ARBITRAGE_KIND_CROSS_VENUE, 7])  # type: ignore[list-item]
        code, message = await stream_code(stub.StreamArbitrage(unknown))
        assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "unknown arbitrage kind 7")
        assert (await snapshot(s)).stats.subscribers == 0
        await assert_still_serves_normal_ticks(s)


BTC = common_pb2.Symbol(venue="binance-spot", name="BTCUSDT")


# --- malformed bytes ------------------------------------------------------------------------------
METHODS = {
    "PublishQuotes": "stream_unary",
    "PublishTrades": "stream_unary",
    "GetSnapshot": "unary_unary",
    "Subscribe": "unary_stream",
    "GetBars": "unary_unary",
    "GetVwap": "unary_unary",
    "StreamArbitrage": "unary_stream",
}


@pytest.mark.parametrize("payload", [b"\xff\xff", b"\x0a\x09ab", b"\x0a\x02\xff\xfe"])
async def test_malformed_request_bytes_are_invalid_argument_on_every_rpc(payload: bytes) -> None:
    async with suite() as s:
        async with grpc.aio.insecure_channel(s.target, options=CHANNEL_OPTIONS) as ch:
            for method, shape in METHODS.items():
                path = f"/hftgate.v1.MarketDataService/{method}"
                metadata = token_metadata("feed")
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    if shape == "unary_unary":
                        await ch.unary_unary(path)(payload, metadata=metadata)
                    elif shape == "unary_stream":
                        async for _ in ch.unary_stream(path)(payload, metadata=metadata):
                            pass
                    else:
                        await ch.stream_unary(path)(_one(payload), metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
                details = refused.value.details() or ""
                assert "request is not a valid" in details, (method, details)
                assert not any(word in details for word in INTERNALS), details
                # Without credentials the bytes are never read: UNAUTHENTICATED first.
                with pytest.raises(grpc.aio.AioRpcError) as unread:
                    await ch.unary_unary(path)(payload) if shape == "unary_unary" else await _drain(
                        ch, path, shape, payload
                    )
                assert unread.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
        await assert_still_serves_normal_ticks(s)


async def _drain(ch: grpc.aio.Channel, path: str, shape: str, payload: bytes) -> None:
    if shape == "unary_stream":
        async for _ in ch.unary_stream(path)(payload):
            pass
    else:
        await ch.stream_unary(path)(_one(payload))


# --- TLS ------------------------------------------------------------------------------------------
async def test_the_service_serves_tls_from_the_suite_ca_and_the_feed_publishes_over_it(
    tmp_path: Path,
) -> None:
    from hftgate.replay.publisher import channel_to, feed_credentials
    from hftgate.security import certs_init, load_suite_security

    certs_init(tmp_path / "tls", names=("marketdata", "feed"))
    env = {
        "HFTGATE_SUITE_SECRET": os.environ["HFTGATE_SUITE_SECRET"],
        "HFTGATE_TLS_DIR": str(tmp_path / "tls"),
    }
    security = load_suite_security("marketdata", env)
    assert security.server_tls is not None
    cfg = MarketDataConfig(port=0)
    running = await start(cfg, security=security)
    target = f"127.0.0.1:{running.port}"
    try:
        credentials = feed_credentials(env)
        assert credentials.tls is not None
        async with channel_to(target, credentials) as ch:
            summary = await publish_trades_with(
                Stub(ch), credentials.metadata, trade("bybit", "XRPUSDT", now_ns())
            )
            assert summary.accepted == 1
        async with channel(target, token_metadata("feed")) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await Stub(plain).GetSnapshot(pb.GetSnapshotRequest(), timeout=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(0)


async def publish_trades_with(
    stub: Stub, metadata: Metadata, *trades: marketdata_pb2.Trade
) -> marketdata_pb2.PublishSummary:
    async def requests() -> AsyncIterator[marketdata_pb2.PublishTradesRequest]:
        yield pb.PublishTradesRequest(trades=list(trades))

    return await stub.PublishTrades(requests(), metadata=tuple(metadata))


async def test_the_service_process_resolves_api_keys_through_its_configured_cache(tmp_path: Path) -> None:
    """``python -m services.marketdata`` with HFTGATE_MARKETDATA_CACHE_ADDRESS, as deployed."""
    import socket
    import subprocess
    import sys
    import time

    from hftgate.config import repo_root
    from services.cache.client import CacheClient
    from services.cache.config import CacheConfig
    from services.cache.server import start as start_cache

    secret = load_suite_secret()
    cache = await start_cache(
        CacheConfig(
            port=0,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'cache.sqlite3'}",
            state_dir=str(tmp_path / "state"),
        )
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log_path = tmp_path / "marketdata.log"
    env = {
        **os.environ,
        "HFTGATE_MARKETDATA_PORT": str(port),
        "HFTGATE_MARKETDATA_CACHE_ADDRESS": f"127.0.0.1:{cache.port}",
    }
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.marketdata"], cwd=repo_root(), env=env, stderr=log, text=True
        )
    try:
        async with CacheClient(
            f"127.0.0.1:{cache.port}", credentials=secret.service_credentials("admin")
        ) as admin:
            await admin.set("apikey:" + secret.api_key_hash("dave-key"), b"dave")
        deadline = time.monotonic() + 30
        while "listening on" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the service did not start"
            await asyncio.sleep(0.05)
        assert "API keys resolved through the cache service" in log_path.read_text()
        target = f"127.0.0.1:{port}"
        async with channel(target, api_key_metadata("dave-key")) as dave:
            assert (await Stub(dave).GetSnapshot(pb.GetSnapshotRequest())).symbols == []
        async with channel(target, api_key_metadata("eve-key")) as eve:
            code, _ = await rpc_code(Stub(eve).GetSnapshot(pb.GetSnapshotRequest()))
            assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        process.terminate()
        process.wait(timeout=30)
        await cache.stop(0)
