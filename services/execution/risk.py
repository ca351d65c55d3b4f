"""Pre-trade risk and validation of new orders: the limits the C checks read, and their Python face.

:class:`NewOrderRisk` gives every order of a batch its first failing rule as a common.proto
RejectReason (0 = passes). The rules and their order are in one place, ``native/src/risk.c``
(``native/include/hft_risk.h`` lists them): client order id, kill switch, symbol, trading halted,
field values and combinations, tick/lot grid, price band, max quantity, max notional, duplicate
client order id, then the account's limits that depend on the orders before it in the batch: rate
limit (token bucket), open-order limit and position limit. Every entry point uses it, a batch of
one included; client order ids are checked by the state's index, in C too (hft_client_ids.h).
Python keeps the token bucket's clock and the instruments' limits derived from their specs (below).

Position limit is checked worst case: a buy passes when net position + lots already working
on the buy side + this batch's earlier buys + its quantity stay within the limit (sells
mirrored), so no combination of fills can take the account past it.

Bounds that keep apply_batch's arithmetic inside int64 (issue #13: nothing journaled may fail to
apply), enforced here, at admission, before the journal append:

* every price an order brings (limit, trigger, protection) is at most the instrument's
  :func:`instrument_limits` ceiling, ``min(MAX_PRICE, NOTIONAL_BOUND // max lots, reference + band)``,
  the instrument's default band where it configures none (a price above it is PRICE_BAND);
  every quantity is at most the instrument's ``max_order_lots`` (itself at most MAX_QTY);
* trades happen at resting prices, which were admitted under such a ceiling, and an order's fills
  add up to at most its quantity, so an order's cum notional (sum of price x lots over its fills) is
  at most ceiling x max lots <= NOTIONAL_BOUND = 2^62 while the instrument's limits stand. An
  instrument whose limits are raised later can break that product for orders still resting from
  before; apply_batch therefore saturates the notional at int64's maximum instead of failing;
* an instrument's ``max_notional`` of 0 (or above NOTIONAL_BOUND) means NOTIONAL_BOUND;
* an account's position limit counts as at most MAX_POSITION_LIMIT_LOTS = 2^60, so net positions
  and the lots working per side (each at most twice the limit) and the sums the checks form (plus
  at most a batch of MAX_QTY orders) stay below 2^62.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hftgate.matching.types import COMMAND_DTYPE, MAX_PRICE, MAX_QTY
from hftgate.native.admission import NewOrderCommands
from hftgate.native.client_ids import ClientIdIndex
from hftgate.native.risk import (
    REASON_NAMES,
    RULES_DTYPE,
    InstrumentRules,
    RiskCheck,
)
from hftgate.v1 import common_pb2 as common
from services.execution.records import META_DTYPE
from services.execution.reference import AccountSpec, InstrumentSpec

NEW_ORDER_DTYPE = np.dtype(
    [
        ("side", "<i8"),
        ("order_type", "<i8"),
        ("tif", "<i8"),
        ("price", "<i8"),
        ("stop_price", "<i8"),
        ("quantity", "<i8"),
        ("display", "<i8"),
        ("post_only", "<i8"),
        ("stp", "<i8"),
        ("protection", "<i8"),
        ("priority", "<i8"),
    ]
)

#: Largest cum notional (ticks x lots) of one order and largest ceiling x max lots of an instrument.
NOTIONAL_BOUND = 1 << 62
#: An account's position limit counts as at most this many lots (see the module docstring).
MAX_POSITION_LIMIT_LOTS = 1 << 60


@dataclass(frozen=True, slots=True)
class InstrumentLimits:
    """An instrument's limits as the checks use them, clamped to the bounds of the module docstring."""

    max_lots: int  # largest quantity of one order, 0..MAX_QTY
    price_ceiling: int  # largest price, trigger or protection, 1..MAX_PRICE
    max_notional: int  # largest price x quantity of one order, 1..NOTIONAL_BOUND
    band: int  # half-width of the band around ``reference``; 0 = none
    reference: int  # 0..MAX_PRICE
    price_step: int
    lot_step: int
    #: The same limits as the C checks read them (with the instrument's trading switch).
    rules: InstrumentRules = field(compare=False, repr=False)


_limits_cache: dict[int, tuple[InstrumentSpec, InstrumentLimits]] = {}
_LIMITS_CACHE_MAX = 4096


def instrument_limits(spec: InstrumentSpec) -> InstrumentLimits:
    """The effective limits of ``spec`` (cached per spec object: a held spec is decoded once)."""
    held = _limits_cache.get(id(spec))
    if held is not None and held[0] is spec:
        return held[1]
    max_lots = min(max(0, int(spec.max_order_lots)), MAX_QTY)
    reference = min(max(0, int(spec.reference_price_ticks)), MAX_PRICE)
    band = min(max(0, int(spec.price_band_ticks)), MAX_PRICE)
    ceiling = min(MAX_PRICE, NOTIONAL_BOUND // max(1, max_lots))
    if band:
        ceiling = min(ceiling, reference + band)
    configured = int(spec.max_notional)
    price_ceiling = max(1, ceiling)
    max_notional = configured if 0 < configured <= NOTIONAL_BOUND else NOTIONAL_BOUND
    price_step = min(max(1, int(spec.price_increment_ticks)), MAX_PRICE)
    lot_step = min(max(1, int(spec.quantity_increment_lots)), MAX_QTY)
    limits = InstrumentLimits(
        max_lots=max_lots,
        price_ceiling=price_ceiling,
        max_notional=max_notional,
        band=band,
        reference=reference,
        price_step=price_step,
        lot_step=lot_step,
        rules=InstrumentRules(
            (
                1 if spec.trading_enabled else 0,
                max_lots,
                price_ceiling,
                max_notional,
                band,
                reference,
                price_step,
                lot_step,
            )
        ),
    )
    if len(_limits_cache) >= _LIMITS_CACHE_MAX:
        _limits_cache.clear()
    _limits_cache[id(spec)] = (spec, limits)
    return limits


def position_limit(account: AccountSpec) -> int:
    """The account's position limit as the checks count it (0..MAX_POSITION_LIMIT_LOTS)."""
    return min(max(0, int(account.position_limit_lots)), MAX_POSITION_LIMIT_LOTS)


class TokenBucket:
    """An order-rate limit: ``rate_per_s`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("burst", "rate_per_s", "tokens", "updated_ns")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(max(1, burst))
        self.tokens = self.burst
        self.updated_ns = time.monotonic_ns()

    def refill(self, now_ns: int) -> float:
        elapsed_s = (now_ns - self.updated_ns) / 1e9
        self.updated_ns = now_ns
        self.tokens = min(self.burst, self.tokens + elapsed_s * self.rate_per_s)
        return self.tokens

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` whole tokens; returns how many were granted."""
        granted = min(wanted, int(self.tokens))
        self.tokens -= granted
        return granted

    def seconds_until_one(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate_per_s) if self.rate_per_s > 0 else 1.0


@dataclass(slots=True)
class AccountExposure:
    """The account's current state the limits compare with: int64 arrays by engine symbol id, of
    this account (1-D) or of every account (2-D, this one's at ``row``: the state's own arrays,
    whose addresses the C checks take once)."""

    position: np.ndarray
    open_buy: np.ndarray
    open_sell: np.ndarray
    open_orders: int
    row: int = 0


def _check_reason_values() -> None:
    """The C checks' reasons are common.proto's RejectReason values (a renumbered proto fails here,
    at import, not as a wrong reason on the wire)."""
    for name, value in REASON_NAMES.items():
        if common.RejectReason.Value(f"REJECT_REASON_{name}") != value:
            raise RuntimeError(f"hft_risk.h's {name} is {value}, not common.proto's value")


_check_reason_values()


class NewOrderRisk:
    """The pre-trade checks of new orders, for every entry point: one C pass over a batch of any
    size (native/include/hft_risk.h has the rules and their order). The client order ids' text and
    uniqueness are checked by the state's client id index, in C too (hft_client_ids.h), which gives
    the risk checks one state per order.
    One per execution core (the C call's structs are reused)."""

    def __init__(self) -> None:
        self._check = RiskCheck(NEW_ORDER_DTYPE)
        # What the C structs were last bound to (see _bind): rebinding costs ~1 us, a call ~0.2.
        self._bound: tuple[Any, ...] = (None, None, None, None, -1)
        #: check_one_new_order's C call when it is given no builder: the checks only (no band
        #: read, no row written).
        self._checks_only = NewOrderCommands(1, NEW_ORDER_DTYPE, COMMAND_DTYPE, META_DTYPE)

    def _bind(self, account: AccountSpec, exposure: AccountExposure) -> None:
        """Bind the checks to ``account`` unless they are already (specs are frozen: a changed
        account is a new object; the state's exposure arrays are replaced when they grow)."""
        bound = self._bound
        if (
            account is bound[0]
            and exposure.position is bound[1]
            and exposure.open_buy is bound[2]
            and exposure.open_sell is bound[3]
            and exposure.row == bound[4]
        ):
            return
        self._check.bind_account(
            account.kill_switch,
            position_limit(account),
            exposure.position,
            exposure.open_buy,
            exposure.open_sell,
            exposure.row,
        )
        self._bound = (account, exposure.position, exposure.open_buy, exposure.open_sell, exposure.row)

    def check_new_orders(
        self,
        orders: np.ndarray,
        client_ids: list[str],
        instrument_rows: np.ndarray,
        instruments: list[InstrumentSpec | None],
        symbol_ids: np.ndarray,
        account: AccountSpec,
        known_client_ids: ClientIdIndex,
        exposure: AccountExposure,
        bucket: TokenBucket,
        joined_ids: tuple[bytes, np.ndarray] | None = None,
    ) -> np.ndarray:
        """RejectReason per order (int64, 0 = accepted). ``instrument_rows[i]`` indexes
        ``instruments`` for order i; ``symbol_ids[i]`` is its engine symbol id (-1 when unknown).
        Takes a rate token per order from ``bucket``. ``joined_ids``: the client ids as
        ``hftgate.native.client_ids.joined`` gives them, when the caller has them already."""
        count = len(orders)
        rules = np.array(
            [
                (instrument_limits(spec).rules if spec is not None else _NO_RULES).values
                for spec in instruments
            ]
            or [_NO_RULES.values],
            RULES_DTYPE,
        )
        known = np.array([spec is not None for spec in instruments] or [False], bool)
        rule_rows = np.where(known[instrument_rows], instrument_rows, -1) if count else instrument_rows
        self._bind(account, exposure)
        return self._check.check(
            orders,
            rules,
            rule_rows,
            symbol_ids,
            known_client_ids.check(account.account_id, client_ids, joined_ids),
            _open_room(account, exposure),
            bucket.take(count),
        )

    def check_one_new_order(
        self,
        fields: tuple[int, ...],
        client_id: str,
        instrument: InstrumentSpec | None,
        symbol_id: int,
        account: AccountSpec,
        known_client_ids: ClientIdIndex,
        exposure: AccountExposure,
        bucket: TokenBucket,
        commands: NewOrderCommands | None = None,
        order_id: int = 0,
    ) -> int:
        """:meth:`check_new_orders` for a batch of one (SubmitOrder, a one-order stream message): the
        RejectReason of the order whose NEW_ORDER_DTYPE row is ``fields``, without building any
        array. One C call (``hft_admission_admit_one``) checks the client id, runs the rules and,
        given ``commands`` (and ``order_id``, the id the order gets), builds an accepted order's
        command and meta row there (``commands.one_bytes()``)."""
        self._bind(account, exposure)
        build = commands is not None
        if commands is None:
            commands = self._checks_only
        return commands.admit_one(
            fields,
            client_id.encode("utf-8", "surrogatepass"),  # (not ASCII: refused by the C check)
            known_client_ids,
            self._check.one_account(_open_room(account, exposure), bucket.take(1)),
            instrument_limits(instrument).rules if instrument is not None else None,
            symbol_id,
            account.account_id,
            order_id,
            build=build,
        )


def _open_room(account: AccountSpec, exposure: AccountExposure) -> int:
    """Open orders the account may still add, clamped into int64 (any batch is far smaller)."""
    room = account.max_open_orders - exposure.open_orders
    return room if -(1 << 62) <= room <= 1 << 62 else (1 << 62 if room > 0 else -(1 << 62))


#: The rules row of an unknown instrument: never read (its orders fail UNKNOWN_SYMBOL first), but
#: in range, as every row handed to C must be.
_NO_RULES = InstrumentRules((0, 0, 1, 1, 0, 0, 1, 1))
