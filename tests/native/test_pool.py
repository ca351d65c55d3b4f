"""ObjectPool: the C pool seen from Python."""

from __future__ import annotations

import pytest

from hftgate.native import ffi
from hftgate.native.errors import InvalidArgument
from hftgate.native.pool import ObjectPool


def test_acquire_all_then_exhausted() -> None:
    pool = ObjectPool(object_size=24, capacity=8)
    objects = [pool.acquire() for _ in range(8)]
    assert all(obj is not None for obj in objects)
    assert pool.in_use == pool.capacity == 8
    assert pool.acquire() is None
    assert {pool.index_of(obj) for obj in objects} == set(range(8))
    assert all(int(ffi.cast("uintptr_t", obj)) % 16 == 0 for obj in objects)


def test_objects_hold_their_bytes_independently() -> None:
    pool = ObjectPool(object_size=32, capacity=4)
    objects = [pool.acquire() for _ in range(4)]
    for i, obj in enumerate(objects):
        ffi.buffer(obj, pool.object_size)[:] = bytes([i]) * pool.object_size
    for i, obj in enumerate(objects):
        assert ffi.buffer(obj, pool.object_size)[:] == bytes([i]) * pool.object_size


def test_release_then_reacquire_reuses_the_object() -> None:
    pool = ObjectPool(object_size=16, capacity=2)
    first, second = pool.acquire(), pool.acquire()
    pool.release(first)
    assert pool.in_use == 1
    assert pool.acquire() == first
    pool.release(first)
    pool.release(second)
    assert pool.in_use == 0


def test_index_and_at_round_trip() -> None:
    pool = ObjectPool(object_size=100, capacity=10)
    for index in range(10):
        assert pool.index_of(pool.at(index)) == index
    assert pool.at(10) is None
    assert pool.at(-1) is None


def test_foreign_and_misaligned_pointers_are_rejected() -> None:
    pool, other = ObjectPool(32, 4), ObjectPool(32, 4)
    mine, theirs = pool.acquire(), other.acquire()
    misaligned = ffi.cast("char *", mine) + 1
    python_owned = ffi.new("char[32]")
    for bad in (theirs, misaligned, python_owned, ffi.NULL):
        with pytest.raises(InvalidArgument):
            pool.release(bad)
        assert pool.index_of(bad) is None
    assert pool.in_use == 1
    pool.release(mine)
    assert pool.in_use == 0


@pytest.mark.parametrize(("object_size", "capacity"), [(0, 10), (16, 0), (-1, 10), (16, -5), (64, 2**58)])
def test_bad_create_arguments_are_rejected(object_size: int, capacity: int) -> None:
    with pytest.raises(InvalidArgument):
        ObjectPool(object_size, capacity)


def test_close_is_idempotent_and_blocks_further_use() -> None:
    with ObjectPool(16, 2) as pool:
        assert pool.acquire() is not None
    pool.close()
    with pytest.raises(ValueError):
        pool.acquire()
