"""Fixed-size object pool over the C core (``native/include/hft_pool.h``).

The matching engine uses the pool from C; this thin wrapper exists so Python tests
(and the curious) can exercise it. Objects are cffi ``void *`` pointers into the
pool's slab; ``ffi.buffer(obj, pool.object_size)`` gives their bytes. Single-threaded,
like the C pool.
"""

from __future__ import annotations

from typing import Any

from hftgate.native import check, ffi, lib


class ObjectPool:
    """``capacity`` objects of ``object_size`` bytes, allocated once, 16-byte aligned."""

    def __init__(self, object_size: int, capacity: int) -> None:
        if object_size <= 0 or capacity <= 0:
            # Checked here too because a negative int cannot even become a size_t.
            check(lib.HFT_EINVAL, f"pool_create(object_size={object_size}, capacity={capacity})")
        out = ffi.new("hft_pool **")
        check(
            lib.hft_pool_create(object_size, capacity, out),
            f"pool_create(object_size={object_size}, capacity={capacity})",
        )
        self.object_size = object_size
        self._handle: Any = ffi.gc(out[0], lib.hft_pool_destroy)

    def _live_handle(self) -> Any:
        if self._handle is None:
            raise ValueError("ObjectPool is closed")
        return self._handle

    def acquire(self) -> Any | None:
        """An object (a ``void *``, contents unspecified), or None when every object is in use."""
        obj = lib.hft_pool_acquire(self._live_handle())
        return None if obj == ffi.NULL else obj

    def release(self, obj: Any) -> None:
        """Give an acquired object back. Raises InvalidArgument for a pointer that is not the
        start of one of this pool's objects. Releasing the same object twice is undefined."""
        check(lib.hft_pool_release(self._live_handle(), obj), "pool_release")

    def index_of(self, obj: Any) -> int | None:
        """The object's index in the slab (a compact handle), or None if it is not one of ours."""
        index = int(lib.hft_pool_index_of(self._live_handle(), obj))
        return None if index < 0 else index

    def at(self, index: int) -> Any | None:
        """The object at ``index`` (acquired or not), or None when out of range."""
        if index < 0:
            return None
        obj = lib.hft_pool_at(self._live_handle(), index)
        return None if obj == ffi.NULL else obj

    @property
    def in_use(self) -> int:
        return int(lib.hft_pool_in_use(self._live_handle()))

    @property
    def capacity(self) -> int:
        return int(lib.hft_pool_capacity(self._live_handle()))

    def close(self) -> None:
        """Free the slab. Every object pointer from this pool is dangling afterwards. Idempotent."""
        if self._handle is not None:
            ffi.release(self._handle)
            self._handle = None

    def __enter__(self) -> ObjectPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
