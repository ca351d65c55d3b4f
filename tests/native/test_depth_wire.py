"""DepthUpdate levels read in C from the message's bytes (hft_depth_wire.h) against protobuf's own
decoding: the same pairs, in the same order, whatever the numbers and the other fields."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hftgate.native.depth_book import levels_from_wire
from hftgate.v1 import marketdata_pb2 as pb

numbers = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-300, 5e-324])
pairs = st.lists(st.tuples(numbers, numbers), max_size=40)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


@settings(max_examples=300, deadline=None)
@given(
    bids=pairs,
    asks=pairs,
    venue=st.text(max_size=20),
    sequence=st.integers(0, 2**64 - 1),
    ts=st.integers(-(2**63), 2**63 - 1),
    snapshot=st.booleans(),
)
def test_the_levels_are_protobufs_own(
    bids: list[tuple[float, float]],
    asks: list[tuple[float, float]],
    venue: str,
    sequence: int,
    ts: int,
    snapshot: bool,
) -> None:
    update = pb.DepthUpdate(
        venue=venue,
        symbol="BTCUSDT",
        exchange_ts_ns=ts,
        receive_ts_ns=ts,
        sequence=sequence,
        is_snapshot=snapshot,
    )
    for price, size in bids:
        update.bids.add(price=price, size=size)
    for price, size in asks:
        update.asks.add(price=price, size=size)
    data = update.SerializeToString()
    got_bids, got_asks = levels_from_wire(data, len(update.bids), len(update.asks))
    for got, want in ((got_bids, update.bids), (got_asks, update.asks)):
        assert len(got) == len(want)
        for pair, level in zip(got, want, strict=True):
            assert _same(pair[0], level.price) and _same(pair[1], level.size)


def test_bytes_that_are_not_such_an_update_are_refused() -> None:
    update = pb.DepthUpdate(venue="binance", symbol="BTCUSDT")
    update.bids.add(price=1.0, size=2.0)
    data = update.SerializeToString()
    with pytest.raises(ValueError, match="not a DepthUpdate"):
        levels_from_wire(data[:-3], 1, 0)  # cut inside the level
    with pytest.raises(ValueError, match="not a DepthUpdate"):
        levels_from_wire(data, 0, 0)  # more bid levels than the caller said
    with pytest.raises(ValueError, match="not a DepthUpdate"):
        levels_from_wire(data, 2, 0)  # fewer
    empty_bids, empty_asks = levels_from_wire(b"", 0, 0)
    assert len(empty_bids) == len(empty_asks) == 0


def test_unknown_fields_inside_a_level_are_skipped() -> None:
    level = pb.PriceLevel(price=3.5, size=1.25).SerializeToString() + b"\x18\x07"  # field 3, varint 7
    data = b"\x3a" + bytes([len(level)]) + level
    update = pb.DepthUpdate.FromString(data)
    got_bids, _ = levels_from_wire(data, len(update.bids), 0)
    assert tuple(got_bids[0]) == (3.5, 1.25) == (update.bids[0].price, update.bids[0].size)
