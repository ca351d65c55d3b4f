/* Pre-trade checks of new orders (see hft_risk.h for the rules and their order). */
#include "hft_risk.h"

/* execution.proto values. */
enum {
    SIDE_BUY = 1,
    SIDE_SELL = 2,
    TYPE_LIMIT = 1,
    TYPE_MARKET = 2,
    TYPE_STOP_LIMIT = 3,
    TYPE_STOP_MARKET = 4,
    TIF_UNSPECIFIED = 0,
    TIF_GTC = 1,
    TIF_FOK = 3,
    STP_ALLOW = 5,
};

static int64_t distance(int64_t a, int64_t b) { return a > b ? a - b : b - a; }

/* Whether a price the order brings is outside the band or above the ceiling (the price is in
 * 1..HFT_MAX_PRICE and the reference in 0..HFT_MAX_PRICE, so the distance cannot overflow). */
static int outside(int64_t price, const hft_instrument_rules *rules) {
    return (rules->band > 0 && distance(price, rules->reference) > rules->band) || price > rules->price_ceiling;
}

/* Rules 4 to 8 of hft_risk.h: the order's own fields against its instrument. */
static int64_t static_reason(const hft_new_order *order, const hft_instrument_rules *rules) {
    if (!rules->trading_enabled) return HFT_RISK_TRADING_HALTED;
    const int64_t type = order->order_type, tif = order->tif, qty = order->quantity;
    const int64_t price = order->price, stop = order->stop_price, protection = order->protection;
    const int64_t display = order->display;
    const int is_limit = type == TYPE_LIMIT || type == TYPE_STOP_LIMIT;
    const int is_market = type == TYPE_MARKET || type == TYPE_STOP_MARKET;
    const int is_stop = type == TYPE_STOP_LIMIT || type == TYPE_STOP_MARKET;
    if ((order->side != SIDE_BUY && order->side != SIDE_SELL) || !(is_limit || is_market))
        return HFT_RISK_INVALID_ORDER;
    if (tif < TIF_UNSPECIFIED || tif > TIF_FOK || order->stp < 0 || order->stp > STP_ALLOW)
        return HFT_RISK_INVALID_ORDER;
    if (qty <= 0 || qty > HFT_MAX_QTY) return HFT_RISK_INVALID_QUANTITY;
    if (is_limit && (price <= 0 || price > HFT_MAX_PRICE)) return HFT_RISK_INVALID_PRICE;
    if (is_market && price != 0) return HFT_RISK_INVALID_PRICE;
    if (is_stop && (stop <= 0 || stop > HFT_MAX_PRICE)) return HFT_RISK_INVALID_PRICE;
    if (!is_stop && stop != 0) return HFT_RISK_INVALID_ORDER;
    if (protection < 0 || protection > HFT_MAX_PRICE) return HFT_RISK_INVALID_PRICE;
    if (is_limit && protection != 0) return HFT_RISK_INVALID_ORDER;
    /* Unspecified time in force is the type's default: GTC for limit types, IOC for market types. */
    const int gtc = tif == TIF_GTC || (tif == TIF_UNSPECIFIED && is_limit);
    if (is_market && gtc) return HFT_RISK_INVALID_ORDER;
    if (display < 0 || (display != 0 && display >= qty)) return HFT_RISK_INVALID_ORDER;
    if (display > 0 && !(is_limit && gtc)) return HFT_RISK_INVALID_ORDER;
    if (order->post_only != 0 && !(type == TYPE_LIMIT && gtc)) return HFT_RISK_INVALID_ORDER;

    if ((is_limit && price % rules->price_step) || (is_stop && stop % rules->price_step) ||
        protection % rules->price_step)
        return HFT_RISK_OFF_TICK;
    if (qty % rules->lot_step || display % rules->lot_step) return HFT_RISK_OFF_LOT;
    if ((is_limit && outside(price, rules)) || (is_stop && outside(stop, rules)) ||
        (protection > 0 && outside(protection, rules)))
        return HFT_RISK_PRICE_BAND;
    if (qty > rules->max_lots) return HFT_RISK_MAX_QUANTITY;
    /* The price it may trade at worst: its limit, else its protection, else the band's edge
     * (reference and band are each at most HFT_MAX_PRICE: the sum fits). */
    const int64_t worst = is_limit ? price : protection > 0 ? protection : rules->reference + rules->band;
    if (worst > 0 && qty > rules->max_notional / worst) return HFT_RISK_MAX_NOTIONAL;
    return 0;
}

static int can_rest(const hft_new_order *order) {
    const int64_t type = order->order_type;
    const int is_limit = type == TYPE_LIMIT || type == TYPE_STOP_LIMIT;
    const int is_stop = type == TYPE_STOP_LIMIT || type == TYPE_STOP_MARKET;
    return order->tif == TIF_GTC || (order->tif == TIF_UNSPECIFIED && is_limit) || is_stop;
}

/* The lots the order's side already has at risk in its symbol: long position plus working buys
 * for a buy, working sells minus the position for a sell; *start, or 0 when that overflows. */
static int side_start(const hft_account_limits *account, int64_t symbol, int64_t side, int64_t *start) {
    const int64_t position = account->position[symbol];
    if (side == SIDE_BUY) return !__builtin_add_overflow(position, account->open_buy[symbol], start);
    return !__builtin_sub_overflow(account->open_sell[symbol], position, start);
}

static int rules_in_range(const hft_instrument_rules *rules) {
    return rules->price_step >= 1 && rules->lot_step >= 1 && rules->price_ceiling >= 1 &&
           rules->max_notional >= 1 && rules->max_lots >= 0 && rules->band >= 0 &&
           rules->band <= HFT_MAX_PRICE && rules->reference >= 0 && rules->reference <= HFT_MAX_PRICE;
}

/* Every rule of hft_risk.h for one order at index `index` of its batch; *open_room and the
 * scratch count what it takes. The caller has checked rules, symbol and the scratch's range. */
static int64_t check_order(const hft_new_order *order, const hft_instrument_rules *rules, int64_t symbol,
                           uint8_t id_state, size_t index, const hft_account_limits *account,
                           int64_t *open_room) {
    int64_t reason;
    if (id_state == HFT_RISK_ID_INVALID)
        reason = HFT_RISK_INVALID_ORDER;
    else if (account->kill_switch)
        reason = HFT_RISK_KILL_SWITCH;
    else if (rules == NULL || symbol < 0)
        reason = HFT_RISK_UNKNOWN_SYMBOL;
    else
        reason = static_reason(order, rules);
    if (!reason && id_state == HFT_RISK_ID_USED) reason = HFT_RISK_DUPLICATE_CLIENT_ORDER_ID;
    if (!reason && account->granted <= (int64_t)index) reason = HFT_RISK_RATE_LIMIT;
    if (!reason && can_rest(order)) {
        if (*open_room <= 0)
            reason = HFT_RISK_OPEN_ORDER_LIMIT;
        else
            (*open_room)--;
    }
    if (!reason) {
        int64_t *used = &account->used[2 * symbol + (order->side == SIDE_SELL)];
        int64_t start, total;
        if (!side_start(account, symbol, order->side, &start) || __builtin_add_overflow(start, *used, &total) ||
            __builtin_add_overflow(total, order->quantity, &total) || total > account->position_limit)
            reason = HFT_RISK_POSITION_LIMIT;
        else
            *used += order->quantity;
    }
    return reason;
}

int hft_risk_check(const hft_risk_batch *batch, const hft_account_limits *account, int64_t *reasons,
                   size_t *accepted) {
    if (batch == NULL || account == NULL || reasons == NULL || accepted == NULL) return HFT_EINVAL;
    for (size_t r = 0; r < batch->rule_count; r++)
        if (!rules_in_range(&batch->rules[r])) return HFT_EINVAL;
    for (size_t i = 0; i < batch->count; i++) {
        const int64_t row = batch->rule_rows[i], symbol = batch->symbol_ids[i];
        if (row >= (int64_t)batch->rule_count || symbol >= account->symbol_count) return HFT_EINVAL;
    }

    int64_t open_room = account->open_room;
    size_t passed = 0;
    for (size_t i = 0; i < batch->count; i++) {
        const int64_t row = batch->rule_rows[i];
        const uint8_t id_state = batch->client_id_state ? batch->client_id_state[i] : HFT_RISK_ID_OK;
        reasons[i] = check_order(&batch->orders[i], row < 0 ? NULL : &batch->rules[row], batch->symbol_ids[i],
                                 id_state, i, account, &open_room);
        passed += reasons[i] == 0;
    }
    /* Leave the scratch as it came: zero wherever a passing order added to it. */
    for (size_t i = 0; i < batch->count; i++)
        if (reasons[i] == 0)
            account->used[2 * batch->symbol_ids[i] + (batch->orders[i].side == SIDE_SELL)] = 0;
    *accepted = passed;
    return HFT_OK;
}

int64_t hft_risk_check_one(const hft_account_limits *account, const hft_instrument_rules *rules,
                           int64_t symbol_id, int64_t client_id_state, int64_t side, int64_t order_type,
                           int64_t tif, int64_t price, int64_t stop_price, int64_t quantity, int64_t display,
                           int64_t post_only, int64_t stp, int64_t protection) {
    if (account == NULL || symbol_id >= account->symbol_count || (rules != NULL && !rules_in_range(rules)) ||
        client_id_state < HFT_RISK_ID_OK || client_id_state > HFT_RISK_ID_USED)
        return HFT_EINVAL;
    const hft_new_order order = {.side = side, .order_type = order_type, .tif = tif, .price = price,
                                 .stop_price = stop_price, .quantity = quantity, .display = display,
                                 .post_only = post_only, .stp = stp, .protection = protection};
    int64_t open_room = account->open_room;
    const int64_t reason =
        check_order(&order, rules, symbol_id, (uint8_t)client_id_state, 0, account, &open_room);
    if (reason == 0) account->used[2 * symbol_id + (side == SIDE_SELL)] = 0;
    return reason;
}
