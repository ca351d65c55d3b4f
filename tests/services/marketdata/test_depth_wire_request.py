"""Depth levels read in C from the bytes of the PublishQuotesRequest that carries them
(services.marketdata.depth_book.RequestDepthLevels, native/include/hft_depth_wire.h) against
protobuf's own decoding of the same bytes.

The bytes are written field by field, so that they hold what a protobuf encoder never writes but
any decoder must take: unknown fields of every wire type (groups, nested ones too) at every level
of the message, known field numbers with another wire type (protobuf keeps them as unknown
fields), a price or size given twice (the last wins), levels missing a number (0.0), quotes and
depth updates interleaved. Whenever protobuf decodes the bytes, the reader must give each update
the levels protobuf gives it. (The levels are messages and their numbers singular doubles: no
field read here can be packed.)
"""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hftgate.v1 import marketdata_pb2 as pb
from services.marketdata.depth_book import RequestDepthLevels, check_levels
from tests.protowire import (
    END_GROUP,
    FIXED32,
    FIXED64,
    START_GROUP,
    VARINT,
    key,
    length_delimited,
    varint,
)


def double(field: int, value: float) -> bytes:
    return key(field, FIXED64) + struct.pack("<d", value)


numbers = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 5e-324, 1.0])


def unknown_field(numbers_taken: frozenset[int]) -> st.SearchStrategy[bytes]:
    """One field protobuf keeps as unknown: a number the message does not have, any wire type."""
    field = st.integers(1, 2**29 - 1).filter(lambda n: n not in numbers_taken)

    def group(depth: int) -> st.SearchStrategy[bytes]:
        inner = st.just(b"") if depth == 0 else st.lists(scalar_or_group(depth - 1), max_size=3).map(b"".join)
        return st.tuples(field, inner).map(lambda f: key(f[0], START_GROUP) + f[1] + key(f[0], END_GROUP))

    def scalar_or_group(depth: int) -> st.SearchStrategy[bytes]:
        any_field = st.integers(1, 2**29 - 1)  # inside a group every number is unknown
        return st.one_of(
            st.tuples(any_field, st.integers(0, 2**64 - 1)).map(lambda f: key(f[0], VARINT) + varint(f[1])),
            st.tuples(any_field, st.binary(min_size=8, max_size=8)).map(lambda f: key(f[0], FIXED64) + f[1]),
            st.tuples(any_field, st.binary(max_size=12)).map(lambda f: length_delimited(f[0], f[1])),
            st.tuples(any_field, st.binary(min_size=4, max_size=4)).map(lambda f: key(f[0], FIXED32) + f[1]),
            group(depth),
        )

    return st.one_of(
        st.tuples(field, st.integers(0, 2**64 - 1)).map(lambda f: key(f[0], VARINT) + varint(f[1])),
        st.tuples(field, st.binary(min_size=8, max_size=8)).map(lambda f: key(f[0], FIXED64) + f[1]),
        st.tuples(field, st.binary(max_size=12)).map(lambda f: length_delimited(f[0], f[1])),
        st.tuples(field, st.binary(min_size=4, max_size=4)).map(lambda f: key(f[0], FIXED32) + f[1]),
        group(2),
    )


def wrong_wire_type(field: int) -> st.SearchStrategy[bytes]:
    """Field ``field`` with a wire type other than its own: an unknown field to protobuf."""
    return st.one_of(
        st.integers(0, 2**64 - 1).map(lambda v: key(field, VARINT) + varint(v)),
        st.binary(min_size=4, max_size=4).map(lambda b: key(field, FIXED32) + b),
        st.just(key(field, START_GROUP) + key(field, END_GROUP)),
    )


def shuffled_parts(parts: st.SearchStrategy[list[bytes]]) -> st.SearchStrategy[bytes]:
    return parts.flatmap(lambda items: st.permutations(items)).map(b"".join)


# A PriceLevel: usually protobuf's own 18 bytes, else any mix of its numbers and other fields.
price_level = st.one_of(
    st.tuples(numbers, numbers).map(lambda pair: double(1, pair[0]) + double(2, pair[1])),
    shuffled_parts(
        st.lists(
            st.one_of(
                numbers.map(lambda v: double(1, v)),
                numbers.map(lambda v: double(2, v)),
                wrong_wire_type(1),
                wrong_wire_type(2),
                unknown_field(frozenset({1, 2})),
            ),
            max_size=6,
        )
    ),
)

depth_update_fields = frozenset(range(1, 9))
depth_update = shuffled_parts(
    st.tuples(
        st.lists(price_level.map(lambda level: length_delimited(7, level)), max_size=12),
        st.lists(price_level.map(lambda level: length_delimited(8, level)), max_size=12),
        st.lists(
            st.one_of(
                st.text("abcXYZ-", max_size=8).map(lambda s: length_delimited(1, s.encode())),
                st.integers(0, 2**63 - 1).map(lambda v: key(3, VARINT) + varint(v)),
                st.booleans().map(lambda v: key(6, VARINT) + varint(int(v))),
                wrong_wire_type(7),
                wrong_wire_type(8),
                unknown_field(depth_update_fields),
            ),
            max_size=4,
        ),
    ).map(lambda parts: [*parts[0], *parts[1], *parts[2]])
)

quote = st.builds(
    lambda venue, bid: length_delimited(1, length_delimited(1, venue.encode()) + double(6, bid)),
    st.text("abc", max_size=4),
    numbers,
)

request_bytes = st.lists(
    st.one_of(
        depth_update.map(lambda update: length_delimited(2, update)),
        quote,
        wrong_wire_type(2),
        unknown_field(frozenset({1, 2})),
    ),
    max_size=8,
).map(b"".join)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


def _assert_reads_as_protobuf(data: bytes, reader: RequestDepthLevels) -> None:
    request = pb.PublishQuotesRequest.FromString(data)
    reader.start(data)
    for update in request.depth_updates:
        bids, asks, checked = reader.next_levels(len(update.bids), len(update.asks))
        assert checked == check_levels(bids, asks)
        for got, want in ((bids, update.bids), (asks, update.asks)):
            assert len(got) == len(want)
            for pair, level in zip(got, want, strict=True):
                assert _same(pair[0], level.price) and _same(pair[1], level.size)
    with pytest.raises(ValueError, match="no DepthUpdate"):
        reader.next_levels(0, 0)  # every update was read


@settings(max_examples=400, deadline=None)
@given(data=request_bytes)
def test_each_update_has_protobufs_levels_whatever_else_the_bytes_hold(data: bytes) -> None:
    _assert_reads_as_protobuf(data, RequestDepthLevels())


@settings(max_examples=300, deadline=None)
@given(data=request_bytes, cut=st.integers(0, 2**16))
def test_truncated_requests_read_as_protobuf_or_are_refused_before_the_reader(data: bytes, cut: int) -> None:
    # Cut anywhere: bytes protobuf refuses never reach the reader (the server answers
    # INVALID_ARGUMENT first); bytes it still decodes must read as it decodes them.
    truncated = data[: cut % (len(data) + 1)]
    try:
        pb.PublishQuotesRequest.FromString(truncated)
    except Exception:
        reader = RequestDepthLevels()  # and the reader still never reads past the end
        reader.start(truncated)
        try:
            while True:
                reader.skip()
        except ValueError:
            pass
        return
    _assert_reads_as_protobuf(truncated, RequestDepthLevels())


def _update(
    sequence: int, bids: list[tuple[float, float]], asks: list[tuple[float, float]]
) -> pb.DepthUpdate:
    return pb.DepthUpdate(
        venue="bybit",
        symbol="XRPUSDT",
        sequence=sequence,
        bids=[pb.PriceLevel(price=p, size=s) for p, s in bids],
        asks=[pb.PriceLevel(price=p, size=s) for p, s in asks],
    )


def test_a_skipped_update_is_gone_past_and_one_reader_serves_request_after_request() -> None:
    first = pb.PublishQuotesRequest(
        depth_updates=[_update(1, [(1.0, 2.0)], []), _update(2, [(0.5, 1.0)], [(2.0, 3.0), (2.5, 0.0)])]
    ).SerializeToString()
    second = pb.PublishQuotesRequest(depth_updates=[_update(3, [], [(9.0, 9.5)])]).SerializeToString()
    reader = RequestDepthLevels()
    reader.start(first)
    reader.skip()
    bids, asks, checked = reader.next_levels(1, 2)
    assert checked == 0
    assert [tuple(b) for b in bids] == [(0.5, 1.0)] and [tuple(a) for a in asks] == [(2.0, 3.0), (2.5, 0.0)]
    with pytest.raises(ValueError, match="no DepthUpdate next"):
        reader.skip()
    reader.start(second)
    bids, asks, _ = reader.next_levels(0, 1)
    assert len(bids) == 0 and [tuple(a) for a in asks] == [(9.0, 9.5)]


@pytest.mark.parametrize(
    "counts",
    [(0, 0), (2, 0), (1, 1)],
    ids=["fewer bids than the update has", "more bids", "an ask it does not have"],
)
def test_counts_other_than_the_updates_own_are_refused(counts: tuple[int, int]) -> None:
    reader = RequestDepthLevels()
    reader.start(pb.PublishQuotesRequest(depth_updates=[_update(1, [(1.0, 2.0)], [])]).SerializeToString())
    with pytest.raises(ValueError, match="no DepthUpdate of"):
        reader.next_levels(*counts)


def test_the_engine_takes_the_readers_check_as_the_verdict_on_those_levels() -> None:
    import time

    from services.marketdata.config import MarketDataConfig
    from services.marketdata.depth_book import REJECT_REASON_OF_CHECK
    from services.marketdata.engine import MarketDataEngine

    reader = RequestDepthLevels()
    reader.start(
        pb.PublishQuotesRequest(
            depth_updates=[
                _update(1, [(101.0, 1.0)], [(100.0, 1.0)]),
                _update(2, [(99.0, 1.0)], [(100.0, 1.0)]),
            ]
        ).SerializeToString()
    )
    engine = MarketDataEngine(MarketDataConfig())
    now = time.time_ns()
    crossed_bids, crossed_asks, crossed = reader.next_levels(1, 1)
    assert crossed == check_levels(crossed_bids, crossed_asks) != 0
    assert (
        engine.on_depth("bybit", "XRPUSDT", now, now, 1, True, crossed_bids, crossed_asks, None, crossed)
        == (REJECT_REASON_OF_CHECK[crossed])
    )
    bids, asks, fine = reader.next_levels(1, 1)
    assert fine == 0
    assert engine.on_depth("bybit", "XRPUSDT", now, now, 2, True, bids, asks, None, fine) == 0
    book = engine.get("bybit", "XRPUSDT").depth
    assert (book.bids(5), book.asks(5)) == ([(99.0, 1.0)], [(100.0, 1.0)])
