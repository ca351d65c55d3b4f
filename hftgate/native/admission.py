"""Accepted new orders turned into engine commands and journal meta rows, in C
(``native/include/hft_admission.h``): the one statement of how a NewOrder becomes what the engine
runs (default time in force, a market order's protective bound, self-trade prevention's default).

:class:`NewOrderCommands` keeps each symbol's price band (what a market order without a
protection price is bounded by) and the C buffers of one call. Orders cross as the caller's
NEW_ORDER_DTYPE rows; commands and meta rows as the caller's COMMAND and META dtypes, each checked
once against its C struct. A lone order (SubmitOrder) has :meth:`NewOrderCommands.admit_one`: its
client id, risk checks and rows in one C call, no array on the way. Not thread-safe: one per service.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from hftgate.matching.types import check_layout
from hftgate.native import check, ffi, lib
from hftgate.native.client_ids import ClientIdIndex

#: hft_symbol_band: a symbol's reference price and band, in ticks (none unless both are > 0).
BAND_DTYPE = np.dtype([("reference", "<i8"), ("band", "<i8")])


#: admit_one's outputs when it only checks.
_NO_OUTPUT = (ffi.NULL, ffi.NULL)


class NewOrderCommands:
    """Calls ``hft_admission_new_commands`` (see the module docstring)."""

    def __init__(
        self, max_symbols: int, order_dtype: np.dtype, command_dtype: np.dtype, meta_dtype: np.dtype
    ) -> None:
        for c_name, dtype in (
            ("hft_new_order_row", order_dtype),
            ("hft_order_command", command_dtype),
            ("hft_order_meta", meta_dtype),
            ("hft_symbol_band", BAND_DTYPE),
        ):
            check_layout(c_name, dtype)
        self.order_dtype, self.command_dtype, self.meta_dtype = order_dtype, command_dtype, meta_dtype
        self._bands = np.zeros(max_symbols, BAND_DTYPE)
        self._bands_c = ffi.from_buffer("hft_symbol_band[]", self._bands, require_writable=True)
        self._bad = ffi.new("size_t *")
        # One order's buffers, for admit_one(): C structs written with struct.pack_into (a third of a
        # numpy row assignment's cost), no array per call.
        self._one_order = ffi.new("hft_new_order_row *")
        self._one_order_bytes = ffi.buffer(self._one_order)
        names = order_dtype.names or ()
        if any(order_dtype[name] != np.dtype("<i8") for name in names):
            raise TypeError("new order commands: hft_new_order_row's fields are all int64")
        self._one_fields = struct.Struct(f"<{len(names)}q")
        self._one_c = (ffi.new("hft_order_command[1]"), ffi.new("hft_order_meta[1]"))
        self._one_command_bytes = ffi.buffer(self._one_c[0])
        self._one_meta_bytes = ffi.buffer(self._one_c[1])
        #: The rows admit_one() wrote, as one-row arrays over its C structs (valid until its next call).
        self.one_command = np.frombuffer(self._one_command_bytes, command_dtype)
        self.one_meta = np.frombuffer(self._one_meta_bytes, meta_dtype)

    def set_band(self, symbol_id: int, reference: int, band: int) -> None:
        """The band market orders of ``symbol_id`` without a protection price get from now on."""
        self._bands[symbol_id] = (reference, band)

    def fill(
        self,
        orders: np.ndarray,
        symbol_ids: np.ndarray,
        positions: np.ndarray | None,
        account_id: int,
        first_order_id: int,
        client_id_lengths: np.ndarray,
        commands: np.ndarray,
        meta: np.ndarray,
    ) -> None:
        """Write the command and meta row of each new order at ``positions`` (None: every row) of
        ``orders`` / ``symbol_ids`` (int64) / ``commands`` / ``meta``, with ids from
        ``first_order_id`` on; ``client_id_lengths`` (int64) per new order. ValueError (nothing
        written) when an order has a field out of range: its risk check should have refused it."""
        orders = np.ascontiguousarray(orders)  # (a no-op for the order path's own arrays)
        symbol_ids = np.ascontiguousarray(symbol_ids)
        rows = len(orders)
        if (
            orders.dtype != self.order_dtype
            or commands.dtype != self.command_dtype
            or meta.dtype != self.meta_dtype
            or symbol_ids.dtype != np.int64
            or client_id_lengths.dtype != np.int64
            or (positions is not None and positions.dtype != np.int64)
            or len(symbol_ids) != rows
            or len(commands) != rows
            or len(meta) != rows
        ):
            raise TypeError("new order commands: arrays of the wrong dtype or length")
        count = rows if positions is None else len(positions)
        if len(client_id_lengths) != count:
            raise TypeError("new order commands: one client id length per new order")
        rc = lib.hft_admission_new_commands(
            ffi.from_buffer("hft_new_order_row[]", orders),
            ffi.from_buffer("int64_t[]", symbol_ids),
            rows,
            ffi.NULL if positions is None else ffi.from_buffer("int64_t[]", positions),
            count,
            account_id,
            first_order_id,
            ffi.from_buffer("int64_t[]", client_id_lengths),
            self._bands_c,
            len(self._bands),
            ffi.from_buffer("hft_order_command[]", commands, require_writable=True),
            ffi.from_buffer("hft_order_meta[]", meta, require_writable=True),
            self._bad,
        )
        if rc == lib.HFT_EINVAL:
            raise ValueError(f"new order commands: order {self._bad[0]} of {count} has a field out of range")
        check(rc, "hft_admission_new_commands")

    def admit_one(
        self,
        fields: tuple[int, ...],
        client_id: bytes,
        ids: ClientIdIndex,
        account_limits: Any,
        rules: Any,
        symbol_id: int,
        account_id: int,
        order_id: int,
        *,
        build: bool = True,
    ) -> int:
        """A lone new order admitted in one C call (``hft_admission_admit_one``): its client id's
        state in ``ids``, the risk check against ``account_limits`` (a bound
        ``hftgate.native.risk.RiskCheck``'s :meth:`~RiskCheck.one_account`) and ``rules`` (an
        ``InstrumentRules``, None: no such instrument), and, when it passes and ``build``, its
        command and meta row (:attr:`one_command`, :attr:`one_meta`, :meth:`one_bytes`; the rows
        :meth:`fill` gives a batch of one). Returns its RejectReason (0 = accepted); a refused
        order writes nothing."""
        self._one_fields.pack_into(self._one_order_bytes, 0, *fields)
        command_c, meta_c = self._one_c if build else _NO_OUTPUT
        reason = int(
            lib.hft_admission_admit_one(
                ids.pointer, client_id, len(client_id), account_limits,
                ffi.NULL if rules is None else rules.pointer, symbol_id, self._one_order,
                account_id, order_id, self._bands_c, len(self._bands), command_c, meta_c,
            )
        )  # fmt: skip
        if reason < 0:
            if reason == lib.HFT_EINVAL:
                raise ValueError("admission: an argument out of range (rules, symbol id or a field)")
            check(reason, "hft_admission_admit_one")
        return reason

    def one_bytes(self) -> tuple[Any, Any]:
        """The command's and meta row's bytes the last accepted :meth:`admit_one` wrote, as
        buffers over the builder's structs (no copy: valid until the next call)."""
        return self._one_command_bytes, self._one_meta_bytes
