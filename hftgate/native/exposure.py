"""The accounts' exposure after order rows changed, in C (``native/include/hft_exposure.h``).

:class:`ExposureUpdate` holds the C struct that points at the caller's exposure arrays and at a
sorted copy of its account-to-row map; it takes their addresses again only when the arrays are
replaced or the map has grown (accounts are only ever added). Not thread-safe: one per state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hftgate.native import ffi, lib
from hftgate.native.errors import check


class UnknownAccount(LookupError):
    """A changed row's account has no row in the exposure arrays (nothing was changed)."""


class ExposureUpdate:
    """Calls ``hft_exposure_apply`` (see the module docstring)."""

    def __init__(self) -> None:
        self._struct = ffi.new("hft_exposure *")
        self._arrays: tuple[Any, ...] = (None, None, None)
        self._keep: tuple[Any, ...] = ()
        self._map: tuple[Any, int] = (None, -1)
        self._table: Any = None
        self._table_ptr: Any = ffi.NULL

    def _bind(self, open_buy: np.ndarray, open_sell: np.ndarray, open_orders: np.ndarray) -> None:
        for array in (open_buy, open_sell, open_orders):
            if array.dtype != np.int64 or not array.flags.c_contiguous:
                raise TypeError("exposure: the arrays must be C-contiguous int64")
        if open_buy.ndim != 2 or open_sell.shape != open_buy.shape or open_orders.shape != open_buy.shape[:1]:
            raise TypeError("exposure: open_buy and open_sell are rows x symbols, open_orders one per row")
        views = tuple(
            ffi.from_buffer("int64_t[]", a, require_writable=True) for a in (open_buy, open_sell, open_orders)
        )
        x = self._struct
        x.open_buy, x.open_sell, x.open_orders = views
        x.rows, x.symbols = open_buy.shape
        self._arrays = (open_buy, open_sell, open_orders)
        self._keep = views

    def _bind_map(self, account_rows: dict[int, int]) -> None:
        ids = np.array(sorted(account_rows), np.uint64)
        rows = np.array([account_rows[int(i)] for i in ids.tolist()], np.int64)
        ids_c, rows_c = ffi.from_buffer("uint64_t[]", ids), ffi.from_buffer("int64_t[]", rows)
        x = self._struct
        x.account_ids, x.account_rows, x.account_count = ids_c, rows_c, len(ids)
        self._map = (account_rows, len(account_rows))
        self._map_keep = (ids, rows, ids_c, rows_c)

    def apply(
        self,
        table: np.ndarray,
        open_buy: np.ndarray,
        open_sell: np.ndarray,
        open_orders: np.ndarray,
        account_rows: dict[int, int],
        slots: np.ndarray,
        before: np.ndarray,
    ) -> None:
        """Apply the change of ``table`` rows ``slots`` whose open lots were ``before`` (int64
        each). UnknownAccount when a row's account is not in ``account_rows``."""
        if len(slots) != len(before):
            raise ValueError("exposure: one open-lots-before per slot")
        arrays = self._arrays
        if open_buy is not arrays[0] or open_sell is not arrays[1] or open_orders is not arrays[2]:
            self._bind(open_buy, open_sell, open_orders)
        if account_rows is not self._map[0] or len(account_rows) != self._map[1]:
            self._bind_map(account_rows)
        if table is not self._table:
            self._table, self._table_ptr = table, ffi.from_buffer("hft_order_row[]", table)
        slots_c = ffi.from_buffer("int64_t[]", np.ascontiguousarray(slots, np.int64))
        before_c = ffi.from_buffer("int64_t[]", np.ascontiguousarray(before, np.int64))
        rc = lib.hft_exposure_apply(self._struct, self._table_ptr, len(table), slots_c, before_c, len(slots))
        if rc == lib.HFT_ENOENT:
            raise UnknownAccount("exposure: a changed order's account has no exposure row")
        check(rc, "hft_exposure_apply")
