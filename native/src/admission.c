/* admission.c -- see hft_admission.h. */
#include "hft_admission.h"

#include <stdbool.h>
#include <string.h>

/* execution.proto's numbering (the engine's agrees for side and the four order types). */
enum {
    PROTO_LIMIT = 1,
    PROTO_MARKET = 2,
    PROTO_STOP_LIMIT = 3,
    PROTO_STOP_MARKET = 4,
    PROTO_TIF_MAX = 3,        /* GTC, IOC, FOK */
    PROTO_STP_MAX = 5,        /* ALLOW */
    PROTO_STP_CANCEL_RESTING = 1,
};

/* execution.proto SelfTradePrevention -> engine mode (UNSPECIFIED is CANCEL_RESTING). */
static const uint8_t STP_TO_ENGINE[PROTO_STP_MAX + 1] = {
    HFT_STP_CANCEL_RESTING, HFT_STP_CANCEL_RESTING, HFT_STP_CANCEL_TAKER,
    HFT_STP_CANCEL_BOTH,    HFT_STP_DECREMENT,      HFT_STP_NONE,
};

/* The time in force an order type gets when the client leaves it unspecified. */
static const uint8_t DEFAULT_TIF[PROTO_STOP_MARKET + 1] = {0, HFT_TIF_GTC, HFT_TIF_IOC, HFT_TIF_GTC, HFT_TIF_IOC};

/* A market type's protective bound: the client's protection price, else the symbol's band around
 * its reference price, else 0 (none). False when the band's bound would overflow. */
static bool market_bound(const hft_new_order_row *o, int64_t symbol_id, const hft_symbol_band *bands,
                         int64_t *bound) {
    *bound = o->protection;
    const bool is_market = o->order_type == PROTO_MARKET || o->order_type == PROTO_STOP_MARKET;
    if (!is_market || *bound != 0) return true;
    const hft_symbol_band *b = &bands[symbol_id];
    if (b->reference > 0 && b->band > 0) {
        if (o->side == HFT_SIDE_BUY) return !__builtin_add_overflow(b->reference, b->band, bound);
        *bound = b->reference - b->band; /* (both positive: cannot overflow) */
        if (*bound < 1) *bound = 1;
    }
    return true;
}

/* Whether write_one can write the order's rows: every field it indexes or narrows in range. */
static bool fits(const hft_new_order_row *o, int64_t symbol_id, int64_t client_id_length,
                 const hft_symbol_band *bands, size_t band_count) {
    if (o->side != HFT_SIDE_BUY && o->side != HFT_SIDE_SELL) return false;
    if (o->order_type < PROTO_LIMIT || o->order_type > PROTO_STOP_MARKET) return false;
    if (o->tif < 0 || o->tif > PROTO_TIF_MAX) return false;
    if (o->stp < 0 || o->stp > PROTO_STP_MAX) return false;
    if (symbol_id < 0 || (uint64_t)symbol_id >= band_count || (uint64_t)symbol_id > UINT32_MAX) return false;
    if (o->priority < INT32_MIN || o->priority > INT32_MAX) return false;
    if (client_id_length < 0 || client_id_length > HFT_ORDER_WIRE_TEXT_MAX) return false;
    int64_t bound;
    return market_bound(o, symbol_id, bands, &bound);
}

/* One order's command and meta row, for an order that fits(). */
static void write_one(const hft_new_order_row *o, int64_t symbol_id, uint64_t account_id, uint64_t order_id,
                      int64_t client_id_length, const hft_symbol_band *bands, hft_order_command *command,
                      hft_order_meta *meta) {
    const bool is_market = o->order_type == PROTO_MARKET || o->order_type == PROTO_STOP_MARKET;
    const uint8_t tif = o->tif ? (uint8_t)o->tif : DEFAULT_TIF[o->order_type];
    int64_t bound;
    market_bound(o, symbol_id, bands, &bound);
    uint8_t engine_type = (uint8_t)o->order_type;
    if (bound > 0 && o->order_type == PROTO_MARKET) engine_type = HFT_TYPE_LIMIT;
    if (bound > 0 && o->order_type == PROTO_STOP_MARKET) engine_type = HFT_TYPE_STOP_LIMIT;

    memset(command, 0, sizeof *command);
    command->order_id = order_id;
    command->account_id = account_id;
    command->price = is_market ? bound : o->price;
    command->qty = o->quantity;
    command->stop_price = o->stop_price;
    command->display_qty = o->display;
    command->symbol_id = (uint32_t)symbol_id;
    command->priority = (int32_t)o->priority;
    command->action = HFT_ACTION_NEW;
    command->side = (uint8_t)o->side;
    command->order_type = engine_type;
    command->tif = tif;
    command->flags = o->post_only ? HFT_FLAG_POST_ONLY : 0;
    command->stp_mode = STP_TO_ENGINE[o->stp];

    memset(meta, 0, sizeof *meta);
    meta->client_price = o->price;
    meta->protection = o->protection;
    meta->priority = (int32_t)o->priority;
    meta->client_type = (uint8_t)o->order_type;
    meta->client_tif = tif;
    meta->client_stp = o->stp ? (uint8_t)o->stp : PROTO_STP_CANCEL_RESTING;
    meta->post_only = o->post_only ? 1 : 0;
    meta->client_id_length = (uint8_t)client_id_length;
}

int hft_admission_new_commands(const hft_new_order_row *orders, const int64_t *symbol_ids, size_t rows,
                               const int64_t *positions, size_t count, uint64_t account_id,
                               uint64_t first_order_id, const int64_t *client_id_lengths,
                               const hft_symbol_band *bands, size_t band_count, hft_order_command *commands,
                               hft_order_meta *meta, size_t *bad) {
    if (count && (!orders || !symbol_ids || !bands || !commands || !meta)) return HFT_EINVAL;
    if (!positions && count > rows) return HFT_EINVAL;
    if (first_order_id == 0 || first_order_id > UINT64_MAX - count) return HFT_EINVAL;
    /* Checked whole before anything is written: a refusal leaves every row as it was. */
    for (size_t i = 0; i < count; i++) {
        const bool in_range = !positions || (positions[i] >= 0 && (uint64_t)positions[i] < rows);
        const size_t p = positions ? (size_t)positions[i] : i;
        if (!in_range ||
            !fits(&orders[p], symbol_ids[p], client_id_lengths ? client_id_lengths[i] : 0, bands, band_count)) {
            if (bad) *bad = i;
            return HFT_EINVAL;
        }
    }
    for (size_t i = 0; i < count; i++) {
        const size_t p = positions ? (size_t)positions[i] : i;
        write_one(&orders[p], symbol_ids[p], account_id, first_order_id + i,
                  client_id_lengths ? client_id_lengths[i] : 0, bands, &commands[p], &meta[p]);
    }
    return HFT_OK;
}

int hft_admission_new_command(const hft_new_order_row *order, int64_t symbol_id, uint64_t account_id,
                              uint64_t order_id, int64_t client_id_length, const hft_symbol_band *bands,
                              size_t band_count, hft_order_command *command, hft_order_meta *meta) {
    if (!order || !bands || !command || !meta || order_id == 0) return HFT_EINVAL;
    if (!fits(order, symbol_id, client_id_length, bands, band_count)) return HFT_EINVAL;
    write_one(order, symbol_id, account_id, order_id, client_id_length, bands, command, meta);
    return HFT_OK;
}

int64_t hft_admission_admit_one(const hft_client_ids *ids, const char *client_id, size_t client_id_length,
                                const hft_account_limits *account, const hft_instrument_rules *rules,
                                int64_t symbol_id, const hft_new_order_row *order, uint64_t account_id,
                                uint64_t order_id, const hft_symbol_band *bands, size_t band_count,
                                hft_order_command *command, hft_order_meta *meta) {
    const bool build = command || meta;
    if (!ids || !account || !order || (build && (!bands || !command || !meta)) || (client_id_length && !client_id))
        return HFT_EINVAL;
    const int64_t id_state = hft_client_ids_state(ids, account_id, client_id, client_id_length);
    const int64_t reason =
        hft_risk_check_one(account, rules, symbol_id, id_state, order->side, order->order_type, order->tif,
                           order->price, order->stop_price, order->quantity, order->display, order->post_only,
                           order->stp, order->protection);
    if (reason != 0 || !build) return reason; /* refused (> 0), HFT_EINVAL, or only checked */
    /* Accepted: the id is valid, so its length is at most HFT_CLIENT_ID_MAX. */
    const int rc = hft_admission_new_command(order, symbol_id, account_id, order_id, (int64_t)client_id_length,
                                             bands, band_count, command, meta);
    return rc == HFT_OK ? 0 : rc;
}
