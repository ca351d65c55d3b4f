"""hftgate.native.md_wire and services.marketdata.wire: the C encoding of a MarketUpdate is the
bytes protobuf writes for the same message, on random extreme updates and on recorded data."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hftgate.config import default_data_dir
from hftgate.native.md_wire import FIXED_MAX_BYTES, MarketUpdateEncoder
from hftgate.replay.source import load
from hftgate.replay.ticks import Aggressor, QuoteTick, TradeTick
from hftgate.v1 import marketdata_pb2 as pb
from services.marketdata import wire
from services.marketdata.config import MarketDataConfig
from services.marketdata.engine import MarketDataEngine
from services.marketdata.fanout import SymbolFilter, SymbolUpdate, UpdateKind
from services.marketdata.symbol_state import SymbolState

UINT64_MAX = 2**64 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_CHARS = MarketDataConfig().max_venue_chars


def protobuf_bytes(update: SymbolUpdate, conflated: int = 0, stream_sequence: int = 0) -> bytes:
    """The reference: the message built field by field with protobuf and serialized by it."""
    m = pb.MarketUpdate(
        stream_sequence=stream_sequence,
        symbol_sequence=update.symbol_sequence,
        conflated=conflated,
        kind=int(update.kind),  # type: ignore[arg-type]
        vwap=update.vwap,
        receive_ts_ns=update.receive_ts_ns,
    )
    # The service always sets symbol and top, so they are present even when all default.
    m.symbol.SetInParent()
    m.symbol.venue = update.venue
    m.symbol.name = update.symbol
    m.top.SetInParent()
    m.top.bid_price = update.bid_price
    m.top.bid_size = update.bid_size
    m.top.ask_price = update.ask_price
    m.top.ask_size = update.ask_size
    m.top.exchange_ts_ns = update.top_ts_ns
    if update.last_trade is not None:
        price, size, side, exchange_ts_ns, trade_id = update.last_trade
        m.last_trade.SetInParent()
        m.last_trade.price = price
        m.last_trade.size = size
        m.last_trade.aggressor_side = int(side)  # type: ignore[assignment]
        m.last_trade.exchange_ts_ns = exchange_ts_ns
        m.last_trade.trade_id = trade_id
    return m.SerializeToString()


def assert_same_message(encoded: bytes, reference: bytes) -> None:
    # Protobuf's encoding of MarketUpdate is deterministic (no maps, no unknown fields), so the
    # bytes must be the same; and they decode to a message protobuf writes back unchanged
    # (compared as bytes, since a NaN field makes two equal messages compare unequal).
    assert encoded == reference
    assert pb.MarketUpdate.FromString(encoded).SerializeToString() == reference


def entry_of(message: bytes) -> bytes:
    return b"\x0a" + wire.varint(len(message)) + message


def double_bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


uint64s = st.one_of(st.sampled_from([0, 1, 127, 128, 2**63 - 1, UINT64_MAX]), st.integers(0, UINT64_MAX))
int64s = st.one_of(st.sampled_from([0, -1, INT64_MIN, INT64_MAX]), st.integers(INT64_MIN, INT64_MAX))
int32s = st.integers(-(2**31), 2**31 - 1)
doubles = st.one_of(
    st.sampled_from([0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308]),
    st.floats(allow_nan=True, allow_infinity=True),
)
# Up to the service's character limit; text() draws from all of Unicode but lone surrogates,
# which protobuf cannot encode either.
names = st.text(max_size=MAX_CHARS)
trades = st.none() | st.tuples(doubles, doubles, st.sampled_from(list(Aggressor)) | int32s, int64s, uint64s)
updates = st.builds(
    SymbolUpdate,
    kind=st.sampled_from(list(UpdateKind)) | int32s,
    symbol_sequence=uint64s,
    venue=names,
    symbol=names,
    bid_price=doubles,
    bid_size=doubles,
    ask_price=doubles,
    ask_size=doubles,
    top_ts_ns=int64s,
    last_trade=trades,
    vwap=doubles,
    receive_ts_ns=int64s,
)
EMPTY = SymbolUpdate(UpdateKind.QUOTE, 0, "", "", 0.0, 0.0, 0.0, 0.0, 0, None, 0.0, 0)
EXTREME = SymbolUpdate(
    UpdateKind.TRADE,
    UINT64_MAX,
    "v" * MAX_CHARS,
    "\U0010ffff" * MAX_CHARS,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    INT64_MIN,
    (-0.0, math.nan, Aggressor.SELL, INT64_MAX, UINT64_MAX),
    math.nan,
    INT64_MAX,
)


@settings(max_examples=1500, deadline=None)
@given(update=updates, conflated=st.one_of(st.just(0), uint64s), stream_sequence=uint64s)
@example(update=EMPTY, conflated=0, stream_sequence=0)
@example(update=EMPTY._replace(last_trade=(0.0, 0.0, 0, 0, 0)), conflated=0, stream_sequence=0)
@example(update=EXTREME, conflated=UINT64_MAX, stream_sequence=UINT64_MAX)
def test_every_encoding_is_the_bytes_protobuf_writes(
    update: SymbolUpdate, conflated: int, stream_sequence: int
) -> None:
    reference = protobuf_bytes(update, conflated)
    assert_same_message(wire.update_bytes(update, conflated), reference)
    assert wire.framed_conflated_update(update, conflated) == entry_of(reference)
    shared = protobuf_bytes(update)
    assert_same_message(wire.update_bytes(update), shared)
    assert wire.framed_update(update) == entry_of(shared)
    assert_same_message(
        wire.single_message(update, conflated, stream_sequence),
        protobuf_bytes(update, conflated, stream_sequence),
    )


def state_of(update: SymbolUpdate) -> SymbolState:
    """A symbol state holding ``update``'s fields, as the engine leaves it after logging it."""
    state = SymbolState(update.venue, update.symbol, 0.0, 8)
    state.symbol_sequence = update.symbol_sequence
    state.bid_price, state.bid_size = update.bid_price, update.bid_size
    state.ask_price, state.ask_size = update.ask_price, update.ask_size
    state.top_ts_ns, state.vwap = update.top_ts_ns, update.vwap
    if update.last_trade is not None:
        state.trade_count = 1
        (
            state.last_trade_price,
            state.last_trade_size,
            state.last_trade_side,
            state.last_trade_ts_ns,
            state.last_trade_id,
        ) = update.last_trade
    return state


@settings(max_examples=1000, deadline=None)
@given(update=updates, stream_sequence=uint64s)
@example(update=EMPTY, stream_sequence=0)
@example(update=EXTREME, stream_sequence=UINT64_MAX)
@example(update=EXTREME._replace(venue="v" * 5000), stream_sequence=1)  # beyond the buffer's room
@example(update=EMPTY._replace(top_ts_ns=2**63), stream_sequence=1)  # out of int64
@example(update=EMPTY._replace(symbol="\ud800"), stream_sequence=1)  # not valid Unicode
def test_an_update_encoded_from_the_state_is_the_entry_protobuf_writes_or_none(
    update: SymbolUpdate, stream_sequence: int
) -> None:
    """MarketUpdateEncoder.encode_state (the engine's path) gives the general encoder's entry, or None where
    the general encoder raises or the names exceed its buffer; Subscribe's message made of the
    entry is protobuf's."""
    frame = MarketUpdateEncoder().encode_state(state_of(update), update.kind, update.receive_ts_ns)
    try:
        expected = MarketUpdateEncoder().encode(update, framed=True)
    except (ValueError, TypeError, UnicodeEncodeError):
        assert frame is None
        return
    if len(update.venue.encode()) + len(update.symbol.encode()) > 4096 - FIXED_MAX_BYTES:
        assert frame is None
        return
    assert frame == expected
    assert_same_message(
        wire.single_message_of_frame(frame, stream_sequence), protobuf_bytes(update, 0, stream_sequence)
    )


def test_special_doubles_keep_their_bits() -> None:
    # -0.0 is not protobuf's default (its bits are not zero) and a NaN keeps its payload.
    payload_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_DEAD_BEEF))[0]
    update = EMPTY._replace(bid_price=-0.0, vwap=payload_nan)
    decoded = pb.MarketUpdate.FromString(wire.update_bytes(update))
    assert double_bits(decoded.top.bid_price) == double_bits(-0.0)
    assert double_bits(decoded.vwap) == 0x7FF8_0000_DEAD_BEEF


def test_a_batch_of_c_entries_decodes_to_its_updates_in_order() -> None:
    first = EMPTY._replace(venue="binance-spot", symbol="BTCUSDT", symbol_sequence=7, bid_price=1.5)
    second = first._replace(symbol_sequence=9, last_trade=(2.0, 0.1, Aggressor.BUY, 5, 11))
    batch = pb.MarketUpdates.FromString(
        wire.batch_message([wire.framed_update(first), wire.framed_conflated_update(second, 1)], 42)
    )
    assert batch.first_stream_sequence == 42
    assert [u.SerializeToString() for u in batch.updates] == [
        protobuf_bytes(first),
        protobuf_bytes(second, 1),
    ]


@given(venue=st.text(min_size=MAX_CHARS, max_size=4 * MAX_CHARS), symbol=st.text(max_size=4 * MAX_CHARS))
@settings(max_examples=200, deadline=None)
def test_strings_longer_than_the_encoder_buffer_get_a_buffer_of_their_own(venue: str, symbol: str) -> None:
    encoder = MarketUpdateEncoder(capacity_bytes=FIXED_MAX_BYTES + MAX_CHARS)
    update = EMPTY._replace(venue=venue, symbol=symbol, last_trade=(1.0, 2.0, 1, 3, 4))
    assert_same_message(encoder.encode(update), protobuf_bytes(update))
    # The reused buffer still serves the updates that fit it.
    short = update._replace(venue="v", symbol="s")
    assert_same_message(encoder.encode(short), protobuf_bytes(short))


def test_an_encoder_buffer_smaller_than_the_bound_is_refused() -> None:
    with pytest.raises(ValueError, match=f"capacity_bytes must be at least {FIXED_MAX_BYTES}"):
        MarketUpdateEncoder(capacity_bytes=FIXED_MAX_BYTES - 1)


@pytest.mark.parametrize(
    ("update", "conflated", "message"),
    [
        (EMPTY._replace(symbol_sequence=2**64), 0, "MarketUpdate symbol_sequence must be between 0 and"),
        (EMPTY._replace(symbol_sequence=-1), 0, "MarketUpdate symbol_sequence must be between 0 and"),
        (EMPTY, -1, "MarketUpdate conflated must be between 0 and"),
        (EMPTY._replace(kind=2**31), 0, "MarketUpdate kind must be between"),  # type: ignore[arg-type]
        (EMPTY._replace(receive_ts_ns=2**63), 0, "MarketUpdate receive_ts_ns must be between"),
        (
            EMPTY._replace(last_trade=(1.0, 1.0, 1, 1, 2**64)),
            0,
            "MarketUpdate last_trade.trade_id must be between 0 and",
        ),
    ],
)
def test_an_integer_out_of_its_proto_range_is_named(
    update: SymbolUpdate, conflated: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        wire.update_bytes(update, conflated)


def test_a_value_of_the_wrong_type_is_named() -> None:
    with pytest.raises(TypeError, match=r"MarketUpdate top\.exchange_ts_ns must be an int, got float"):
        wire.update_bytes(EMPTY._replace(top_ts_ns=1.5))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="MarketUpdate vwap must be a float, got str"):
        wire.update_bytes(EMPTY._replace(vwap="1.0"))  # type: ignore[arg-type]


# --- recorded data ---------------------------------------------------------------------------
RECORDED = [
    "quotes/binance-spot_BTCUSDT_bookTicker_20240808.csv.gz",
    "trades/binance-spot_BTCUSDT_trades_20240808.csv.gz",
    "quotes/binance-usdm_ETHUSDT_bookTicker_20240808.csv.gz",
    "trades/binance-usdm_ETHUSDT_trades_20240808.csv.gz",
]


@pytest.fixture(scope="module")
def recorded_log() -> list[tuple[SymbolUpdate, bytes | None]]:
    """Every update the engine logs for a subscriber replaying RECORDED: the update (the
    state it stands for, read right after its tick) and the bytes it was logged with (None for
    an update logged as a tuple)."""
    root = default_data_dir()
    if not (root / "quotes").is_dir():
        message = f"recorded market data not found at {root} (set HFTGATE_DATA_DIR)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    engine = MarketDataEngine(MarketDataConfig(), wall_clock_ns=lambda: 1_900_000_000_000_000_000)
    subscriber = engine.subscribe(SymbolFilter(), notify=lambda: None)
    log = engine.updates
    logged: list[tuple[SymbolUpdate, bytes | None]] = []
    read_every = log.capacity // 2  # a reader that keeps up: the engine logs encoded bytes
    for i, tick in enumerate(load([Path(root) / name for name in RECORDED])):
        if i % read_every == 0:
            while subscriber.take_encoded(read_every, wire.framed_update, wire.framed_conflated_update):
                pass
        head = log.head
        if type(tick) is QuoteTick:
            engine.on_quote(*tick)
        elif type(tick) is TradeTick:
            engine.on_trade(*tick)
        if log.head != head:  # each tick logs at most one update
            assert log.head == head + 1
            key = log.pairs(head, head + 1)[0][0]
            entry = log.logged(head)
            logged.append((log.latest_update(log.latest[key]), entry.frame))
    engine.unsubscribe(subscriber)
    return logged


@pytest.fixture(scope="module")
def recorded_updates(recorded_log: list[tuple[SymbolUpdate, bytes | None]]) -> list[SymbolUpdate]:
    return [update for update, _ in recorded_log]


def test_the_engine_logs_each_recorded_update_as_the_bytes_protobuf_writes(
    recorded_log: list[tuple[SymbolUpdate, bytes | None]],
) -> None:
    """Encoded from the symbol's state as it is logged (MarketUpdateEncoder.encode_state), each update is the
    entry protobuf writes for it, and Subscribe's message made of that entry is protobuf's too."""
    assert len(recorded_log) > 10_000
    assert all(frame is not None for _, frame in recorded_log)
    for i, (update, frame) in enumerate(recorded_log):
        assert frame == entry_of(protobuf_bytes(update))
        assert wire.single_message_of_frame(frame, i + 1) == protobuf_bytes(update, 0, i + 1)


def test_recorded_updates_encode_to_the_bytes_protobuf_writes(recorded_updates: list[SymbolUpdate]) -> None:
    assert len(recorded_updates) > 10_000
    assert any(u.last_trade is None for u in recorded_updates)
    assert any(u.last_trade is not None for u in recorded_updates)
    for i, update in enumerate(recorded_updates):
        conflated = i % 3 * (i + 1)  # 0 for a third of them, else growing counts
        assert wire.update_bytes(update, conflated) == protobuf_bytes(update, conflated)
        assert wire.framed_update(update) == entry_of(protobuf_bytes(update))
        assert wire.single_message(update, conflated, i + 1) == protobuf_bytes(update, conflated, i + 1)
