"""Pre-trade risk and validation of new orders, one numpy pass per batch.

:func:`check_new_orders` gives every order of a batch its first failing rule as a
common.proto RejectReason (0 = passes), in this order: client order id, kill switch, symbol,
trading halted, field values and combinations, tick/lot grid, price band, max quantity, max
notional, duplicate client order id, then the account's limits that depend on the orders before
it in the batch: rate limit (token bucket), open-order limit and position limit.

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
from dataclasses import dataclass

import numpy as np

from hftgate.matching.types import MAX_PRICE, MAX_QTY
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
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

_LIMIT_TYPES = (api.ORDER_TYPE_LIMIT, api.ORDER_TYPE_STOP_LIMIT)
_MARKET_TYPES = (api.ORDER_TYPE_MARKET, api.ORDER_TYPE_STOP_MARKET)
_STOP_TYPES = (api.ORDER_TYPE_STOP_LIMIT, api.ORDER_TYPE_STOP_MARKET)
MAX_CLIENT_ID_LENGTH = 64
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
    limits = InstrumentLimits(
        max_lots=max_lots,
        price_ceiling=max(1, ceiling),
        max_notional=configured if 0 < configured <= NOTIONAL_BOUND else NOTIONAL_BOUND,
        band=band,
        reference=reference,
        price_step=min(max(1, int(spec.price_increment_ticks)), MAX_PRICE),
        lot_step=min(max(1, int(spec.quantity_increment_lots)), MAX_QTY),
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
    """The account's current state the limits compare with (per symbol id)."""

    position: np.ndarray
    open_buy: np.ndarray
    open_sell: np.ndarray
    open_orders: int


def _valid_client_id(client_id: str) -> bool:
    return 0 < len(client_id) <= MAX_CLIENT_ID_LENGTH and client_id.isascii() and client_id.isprintable()


def _all_valid_and_new(client_ids: list[str], known_client_ids: dict[str, int]) -> bool:
    """Whether every client order id is valid and none is used twice or already known: the usual
    batch, checked with whole-list operations (the characters' rules hold per character, so they
    hold for the joined text) instead of a Python step per order."""
    if not client_ids:
        return True
    lengths = list(map(len, client_ids))
    text = "".join(client_ids)
    return (
        min(lengths) > 0
        and max(lengths) <= MAX_CLIENT_ID_LENGTH
        and text.isascii()
        and text.isprintable()
        and len(set(client_ids)) == len(client_ids)
        and known_client_ids.keys().isdisjoint(client_ids)
    )


#: Batches up to this size are checked order by order in plain Python (numpy's per-call overhead
#: dominates below it); larger ones in one numpy pass. Both apply the same rules in the same order
#: (a test runs both on random orders).
SCALAR_BATCH_MAX = 8


def check_new_orders(
    orders: np.ndarray,
    client_ids: list[str],
    instrument_rows: np.ndarray,
    instruments: list[InstrumentSpec | None],
    symbol_ids: np.ndarray,
    account: AccountSpec,
    known_client_ids: dict[str, int],
    exposure: AccountExposure,
    bucket: TokenBucket,
) -> np.ndarray:
    """RejectReason per order (0 = accepted). ``instrument_rows[i]`` indexes ``instruments`` for order i;
    ``symbol_ids[i]`` is its engine symbol id (-1 when unknown)."""
    if len(orders) <= SCALAR_BATCH_MAX:
        return check_orders_one_by_one(
            orders,
            client_ids,
            instrument_rows,
            instruments,
            symbol_ids,
            account,
            known_client_ids,
            exposure,
            bucket,
        )
    return check_orders_vectorized(
        orders,
        client_ids,
        instrument_rows,
        instruments,
        symbol_ids,
        account,
        known_client_ids,
        exposure,
        bucket,
    )


def check_orders_vectorized(
    orders: np.ndarray,
    client_ids: list[str],
    instrument_rows: np.ndarray,
    instruments: list[InstrumentSpec | None],
    symbol_ids: np.ndarray,
    account: AccountSpec,
    known_client_ids: dict[str, int],
    exposure: AccountExposure,
    bucket: TokenBucket,
) -> np.ndarray:
    """:func:`check_new_orders` in one numpy pass over the batch."""
    count = len(orders)
    reason = np.zeros(count, np.int64)

    def fail(mask: np.ndarray, why: int) -> None:
        reason[(reason == 0) & mask] = why

    bad_id = np.zeros(count, bool)
    duplicate = np.zeros(count, bool)
    if not _all_valid_and_new(client_ids, known_client_ids):  # else order by order, to say which
        seen: set[str] = set()
        for position, client_id in enumerate(client_ids):
            if not _valid_client_id(client_id):
                bad_id[position] = True
            elif client_id in seen or client_id in known_client_ids:
                duplicate[position] = True
            seen.add(client_id)
    fail(bad_id, common.REJECT_REASON_INVALID_ORDER)
    if account.kill_switch:
        fail(np.ones(count, bool), common.REJECT_REASON_KILL_SWITCH)

    # Per-instrument parameters, spread over the orders.
    specs = [spec or _UNKNOWN for spec in instruments]
    limits = [instrument_limits(s) for s in specs]
    known = np.array([spec is not None for spec in instruments], bool)[instrument_rows]
    enabled = np.array([s.trading_enabled for s in specs], bool)[instrument_rows]
    price_step = np.array([lim.price_step for lim in limits], np.int64)[instrument_rows]
    lot_step = np.array([lim.lot_step for lim in limits], np.int64)[instrument_rows]
    max_lots = np.array([lim.max_lots for lim in limits], np.int64)[instrument_rows]
    max_notional = np.array([lim.max_notional for lim in limits], np.int64)[instrument_rows]
    band = np.array([lim.band for lim in limits], np.int64)[instrument_rows]
    reference = np.array([lim.reference for lim in limits], np.int64)[instrument_rows]
    ceiling = np.array([lim.price_ceiling for lim in limits], np.int64)[instrument_rows]
    fail(~known | (symbol_ids < 0), common.REJECT_REASON_UNKNOWN_SYMBOL)
    fail(~enabled, common.REJECT_REASON_TRADING_HALTED)

    side, otype, tif = orders["side"], orders["order_type"], orders["tif"]
    price, stop, qty = orders["price"], orders["stop_price"], orders["quantity"]
    display, post_only, stp, protection = (
        orders["display"],
        orders["post_only"],
        orders["stp"],
        orders["protection"],
    )
    is_limit = np.isin(otype, _LIMIT_TYPES)
    is_market = np.isin(otype, _MARKET_TYPES)
    is_stop = np.isin(otype, _STOP_TYPES)
    fail((side != 1) & (side != 2), common.REJECT_REASON_INVALID_ORDER)
    fail(~(is_limit | is_market), common.REJECT_REASON_INVALID_ORDER)
    fail((tif < 0) | (tif > 3) | (stp < 0) | (stp > 5), common.REJECT_REASON_INVALID_ORDER)
    fail((qty <= 0) | (qty > MAX_QTY), common.REJECT_REASON_INVALID_QUANTITY)
    fail(is_limit & ((price <= 0) | (price > MAX_PRICE)), common.REJECT_REASON_INVALID_PRICE)
    fail(is_market & (price != 0), common.REJECT_REASON_INVALID_PRICE)
    fail(is_stop & ((stop <= 0) | (stop > MAX_PRICE)), common.REJECT_REASON_INVALID_PRICE)
    fail(~is_stop & (stop != 0), common.REJECT_REASON_INVALID_ORDER)
    fail((protection < 0) | (protection > MAX_PRICE), common.REJECT_REASON_INVALID_PRICE)
    fail(is_limit & (protection != 0), common.REJECT_REASON_INVALID_ORDER)
    # Unspecified time in force is the type's default: GTC for limit types, IOC for market types.
    gtc = (tif == api.TIME_IN_FORCE_GTC) | ((tif == 0) & is_limit)
    fail(is_market & gtc, common.REJECT_REASON_INVALID_ORDER)
    fail((display < 0) | ((display != 0) & (display >= qty)), common.REJECT_REASON_INVALID_ORDER)
    fail((display > 0) & ~(is_limit & gtc), common.REJECT_REASON_INVALID_ORDER)
    fail((post_only != 0) & ~((otype == api.ORDER_TYPE_LIMIT) & gtc), common.REJECT_REASON_INVALID_ORDER)

    fail(is_limit & (price % price_step != 0), common.REJECT_REASON_OFF_TICK)
    fail(is_stop & (stop % price_step != 0), common.REJECT_REASON_OFF_TICK)
    fail((protection % price_step) != 0, common.REJECT_REASON_OFF_TICK)
    fail((qty % lot_step != 0) | (display % lot_step != 0), common.REJECT_REASON_OFF_LOT)
    banded = band > 0
    fail(banded & is_limit & (np.abs(price - reference) > band), common.REJECT_REASON_PRICE_BAND)
    fail(banded & is_stop & (np.abs(stop - reference) > band), common.REJECT_REASON_PRICE_BAND)
    fail(banded & (protection > 0) & (np.abs(protection - reference) > band), common.REJECT_REASON_PRICE_BAND)
    above = (is_limit & (price > ceiling)) | (is_stop & (stop > ceiling)) | (protection > ceiling)
    fail(above, common.REJECT_REASON_PRICE_BAND)
    fail(qty > max_lots, common.REJECT_REASON_MAX_QUANTITY)
    # The price an order may trade at worst: its limit, else its protection, else the band edge.
    worst = np.where(is_limit, price, np.where(protection > 0, protection, reference + band))
    fail((worst > 0) & (qty > max_notional // np.maximum(worst, 1)), common.REJECT_REASON_MAX_NOTIONAL)
    fail(duplicate, common.REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID)

    # Rate limit: every order of the call spends a token, in order.
    granted = bucket.take(count)
    if granted < count:
        over = np.zeros(count, bool)
        over[granted:] = True
        fail(over, common.REJECT_REASON_RATE_LIMIT)

    # Open-order limit: orders that can rest count, in batch order, until the limit is reached.
    can_rest = gtc | is_stop
    counting = (reason == 0) & can_rest
    if counting.any():
        room = account.max_open_orders - exposure.open_orders
        fail(counting & (np.cumsum(counting) > room), common.REJECT_REASON_OPEN_ORDER_LIMIT)

    _check_positions(reason, side, qty, symbol_ids, position_limit(account), exposure)
    return reason


def _static_reason(
    side: int,
    otype: int,
    tif: int,
    price: int,
    stop: int,
    qty: int,
    display: int,
    post_only: int,
    stp: int,
    protection: int,
    spec: InstrumentSpec,
) -> int:
    """The order-and-instrument rules of :func:`check_orders_vectorized`, for one order, in the same order."""
    if not spec.trading_enabled:
        return common.REJECT_REASON_TRADING_HALTED
    invalid = common.REJECT_REASON_INVALID_ORDER
    is_limit = otype in _LIMIT_TYPES
    is_market = otype in _MARKET_TYPES
    is_stop = otype in _STOP_TYPES
    if side not in (1, 2) or not (is_limit or is_market):
        return invalid
    if tif < 0 or tif > 3 or stp < 0 or stp > 5:
        return invalid
    if qty <= 0 or qty > MAX_QTY:
        return common.REJECT_REASON_INVALID_QUANTITY
    if is_limit and (price <= 0 or price > MAX_PRICE):
        return common.REJECT_REASON_INVALID_PRICE
    if is_market and price != 0:
        return common.REJECT_REASON_INVALID_PRICE
    if is_stop and (stop <= 0 or stop > MAX_PRICE):
        return common.REJECT_REASON_INVALID_PRICE
    if not is_stop and stop != 0:
        return invalid
    if protection < 0 or protection > MAX_PRICE:
        return common.REJECT_REASON_INVALID_PRICE
    if is_limit and protection != 0:
        return invalid
    gtc = tif == api.TIME_IN_FORCE_GTC or (tif == 0 and is_limit)
    if is_market and gtc:
        return invalid
    if display < 0 or (display != 0 and display >= qty):
        return invalid
    if display > 0 and not (is_limit and gtc):
        return invalid
    if post_only and not (otype == api.ORDER_TYPE_LIMIT and gtc):
        return invalid
    lim = instrument_limits(spec)
    price_step = lim.price_step
    lot_step = lim.lot_step
    if (is_limit and price % price_step) or (is_stop and stop % price_step) or protection % price_step:
        return common.REJECT_REASON_OFF_TICK
    if qty % lot_step or display % lot_step:
        return common.REJECT_REASON_OFF_LOT
    band, reference, ceiling = lim.band, lim.reference, lim.price_ceiling
    if band > 0 and (
        (is_limit and abs(price - reference) > band)
        or (is_stop and abs(stop - reference) > band)
        or (protection > 0 and abs(protection - reference) > band)
    ):
        return common.REJECT_REASON_PRICE_BAND
    if (is_limit and price > ceiling) or (is_stop and stop > ceiling) or protection > ceiling:
        return common.REJECT_REASON_PRICE_BAND
    if qty > lim.max_lots:
        return common.REJECT_REASON_MAX_QUANTITY
    worst = price if is_limit else (protection if protection > 0 else reference + band)
    if worst > 0 and qty > lim.max_notional // worst:
        return common.REJECT_REASON_MAX_NOTIONAL
    return 0


def check_orders_one_by_one(
    orders: np.ndarray,
    client_ids: list[str],
    instrument_rows: np.ndarray,
    instruments: list[InstrumentSpec | None],
    symbol_ids: np.ndarray,
    account: AccountSpec,
    known_client_ids: dict[str, int],
    exposure: AccountExposure,
    bucket: TokenBucket,
) -> np.ndarray:
    """:func:`check_new_orders` order by order (the same rules as :func:`check_orders_vectorized`)."""
    count = len(orders)
    reasons = [0] * count
    seen: set[str] = set()
    granted = bucket.take(count)
    open_room = account.max_open_orders - exposure.open_orders
    used: dict[tuple[int, int], int] = {}
    limit = position_limit(account)
    rows = instrument_rows.tolist()
    symbols = symbol_ids.tolist()
    for position, fields in enumerate(orders.tolist()):
        side, otype, tif, price, stop, qty, display, post_only, stp, protection, _ = fields
        client_id = client_ids[position]
        spec = instruments[rows[position]]
        duplicate = client_id in seen or client_id in known_client_ids
        seen.add(client_id)
        reason: int
        if not _valid_client_id(client_id):
            reason = common.REJECT_REASON_INVALID_ORDER
        elif account.kill_switch:
            reason = common.REJECT_REASON_KILL_SWITCH
        elif spec is None or symbols[position] < 0:
            reason = common.REJECT_REASON_UNKNOWN_SYMBOL
        else:
            reason = _static_reason(
                side, otype, tif, price, stop, qty, display, post_only, stp, protection, spec
            )
        if not reason and duplicate:
            reason = common.REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID
        if not reason and position >= granted:
            reason = common.REJECT_REASON_RATE_LIMIT
        if not reason and (tif == api.TIME_IN_FORCE_GTC or (tif == 0 and otype in _LIMIT_TYPES)
                           or otype in _STOP_TYPES):  # fmt: skip
            if open_room <= 0:
                reason = common.REJECT_REASON_OPEN_ORDER_LIMIT
            else:
                open_room -= 1
        if not reason:
            symbol = symbols[position]
            key = (symbol, side)
            if side == 1:
                start = int(exposure.position[symbol] + exposure.open_buy[symbol])
            else:
                start = int(exposure.open_sell[symbol] - exposure.position[symbol])
            if start + used.get(key, 0) + qty > limit:
                reason = common.REJECT_REASON_POSITION_LIMIT
            else:
                used[key] = used.get(key, 0) + qty
        reasons[position] = reason
    return np.array(reasons, np.int64)


def check_one_new_order(
    fields: tuple[int, ...],
    client_id: str,
    instrument: InstrumentSpec | None,
    symbol_id: int,
    account: AccountSpec,
    known_client_ids: dict[str, int],
    exposure: AccountExposure,
    bucket: TokenBucket,
) -> int:
    """:func:`check_new_orders` for a batch of one (SubmitOrder): the RejectReason of the order whose
    NEW_ORDER_DTYPE row is ``fields`` (0 = accepted), without building any array."""
    side, otype, tif, price, stop, qty, display, post_only, stp, protection, _ = fields
    granted = bucket.take(1)
    reason: int
    if not _valid_client_id(client_id):
        reason = common.REJECT_REASON_INVALID_ORDER
    elif account.kill_switch:
        reason = common.REJECT_REASON_KILL_SWITCH
    elif instrument is None or symbol_id < 0:
        reason = common.REJECT_REASON_UNKNOWN_SYMBOL
    else:
        reason = _static_reason(
            side, otype, tif, price, stop, qty, display, post_only, stp, protection, instrument
        )
    if reason:
        return reason
    if client_id in known_client_ids:
        return common.REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID
    if not granted:
        return common.REJECT_REASON_RATE_LIMIT
    can_rest = tif == api.TIME_IN_FORCE_GTC or (tif == 0 and otype in _LIMIT_TYPES) or otype in _STOP_TYPES
    if can_rest and account.max_open_orders - exposure.open_orders <= 0:
        return common.REJECT_REASON_OPEN_ORDER_LIMIT
    if side == 1:
        start = int(exposure.position[symbol_id] + exposure.open_buy[symbol_id])
    else:
        start = int(exposure.open_sell[symbol_id] - exposure.position[symbol_id])
    if start + qty > position_limit(account):
        return common.REJECT_REASON_POSITION_LIMIT
    return 0


def _check_positions(
    reason: np.ndarray,
    side: np.ndarray,
    qty: np.ndarray,
    symbol_ids: np.ndarray,
    limit: int,
    exposure: AccountExposure,
) -> None:
    live = reason == 0
    if not live.any():
        return
    symbols = np.where(live, symbol_ids, 0)
    buys = live & (side == 1)
    sells = live & (side == 2)
    long_start = exposure.position[symbols] + exposure.open_buy[symbols]
    short_start = exposure.open_sell[symbols] - exposure.position[symbols]
    # Fast path: even taking every order of the batch, no symbol goes past the limit.
    if (long_start[buys] + qty[buys].sum() <= limit).all() and (
        short_start[sells] + qty[sells].sum() <= limit
    ).all():
        return
    used: dict[tuple[int, int], int] = {}
    for position in np.nonzero(buys | sells)[0].tolist():
        key = (int(symbols[position]), int(side[position]))
        start = int(long_start[position] if key[1] == 1 else short_start[position])
        total = start + used.get(key, 0) + int(qty[position])
        if total > limit:
            reason[position] = common.REJECT_REASON_POSITION_LIMIT
        else:
            used[key] = used.get(key, 0) + int(qty[position])


_UNKNOWN = InstrumentSpec(symbol="", trading_enabled=True)
