/* engine_commands.c -- validation and the four command actions. The rules are in hft_engine.h. */
#include "hft_book_internal.h"

static void reject(hft_engine *engine, const hft_order_command *command, uint16_t reason)
{
    hft_match_event *ev = hft_engine_event_slot(engine);
    ev->order_id = command->order_id;
    ev->account_id = command->account_id;
    ev->maker_order_id = 0;
    ev->maker_account_id = 0;
    ev->price = command->price;
    ev->qty = command->qty;
    ev->leaves_qty = 0;
    ev->maker_leaves_qty = 0;
    ev->symbol_id = command->symbol_id;
    ev->command_index = engine->command_index;
    ev->type = HFT_EVENT_REJECT;
    ev->side = command->side;
    ev->reason = reason;
    ev->reserved = 0;
}

static int price_in_range(int64_t price)
{
    return price >= -HFT_MAX_PRICE && price <= HFT_MAX_PRICE;
}

static hft_book *book_of(const hft_engine *engine, uint32_t symbol_id)
{
    return symbol_id < engine->config.max_symbols ? engine->books[symbol_id] : NULL;
}

static uint16_t validate_new(const hft_engine *engine, const hft_order_command *c)
{
    if (c->order_id == 0) {
        return HFT_REASON_INVALID_ORDER_ID;
    }
    if (book_of(engine, c->symbol_id) == NULL) {
        return HFT_REASON_UNKNOWN_SYMBOL;
    }
    if (c->side != HFT_SIDE_BUY && c->side != HFT_SIDE_SELL) {
        return HFT_REASON_INVALID_SIDE;
    }
    if (c->order_type < HFT_TYPE_LIMIT || c->order_type > HFT_TYPE_STOP_MARKET) {
        return HFT_REASON_INVALID_TYPE;
    }
    if (c->tif < HFT_TIF_GTC || c->tif > HFT_TIF_FOK) {
        return HFT_REASON_INVALID_TIF;
    }
    if (c->qty <= 0 || c->qty > HFT_MAX_QTY || c->display_qty < 0 || c->display_qty > c->qty) {
        return HFT_REASON_INVALID_QTY;
    }
    int has_limit = c->order_type == HFT_TYPE_LIMIT || c->order_type == HFT_TYPE_STOP_LIMIT;
    int is_stop = c->order_type == HFT_TYPE_STOP_LIMIT || c->order_type == HFT_TYPE_STOP_MARKET;
    int is_market = c->order_type == HFT_TYPE_MARKET || c->order_type == HFT_TYPE_STOP_MARKET;
    if ((has_limit && !price_in_range(c->price)) || (is_stop && !price_in_range(c->stop_price))) {
        return HFT_REASON_INVALID_PRICE;
    }
    if (c->stp_mode > HFT_STP_NONE) {
        return HFT_REASON_INVALID_STP_MODE;
    }
    int is_iceberg = c->display_qty > 0 && c->display_qty < c->qty;
    if ((c->flags & ~(HFT_FLAG_POST_ONLY | HFT_FLAG_POST_ONLY_SLIDE)) != 0 ||
        (is_market && c->tif == HFT_TIF_GTC) || (is_iceberg && (!has_limit || c->tif != HFT_TIF_GTC))) {
        return HFT_REASON_INVALID_COMBINATION;
    }
    if (c->flags != 0 && (c->flags == (HFT_FLAG_POST_ONLY | HFT_FLAG_POST_ONLY_SLIDE) ||
                          c->order_type != HFT_TYPE_LIMIT || c->tif != HFT_TIF_GTC)) {
        return HFT_REASON_INVALID_COMBINATION;
    }
    return HFT_REASON_NONE;
}

/* The price one tick behind the best opposite price, where a sliding post-only order rests. */
static int64_t slide_price(const hft_book *book, uint8_t side)
{
    return side == HFT_SIDE_BUY ? hft_book_side_best(&book->asks)->price - 1
                                : hft_book_side_best(&book->bids)->price + 1;
}

static void handle_new(hft_engine *engine, const hft_order_command *c)
{
    uint16_t reason = validate_new(engine, c);
    if (reason != HFT_REASON_NONE) {
        reject(engine, c, reason);
        return;
    }
    if (hft_order_index_get(&engine->index, c->order_id) != NULL) {
        reject(engine, c, HFT_REASON_DUPLICATE_ORDER_ID);
        return;
    }
    hft_book *book = engine->books[c->symbol_id];
    int is_stop = c->order_type == HFT_TYPE_STOP_LIMIT || c->order_type == HFT_TYPE_STOP_MARKET;
    if ((c->tif == HFT_TIF_GTC || is_stop) &&
        hft_pool_in_use(engine->order_pool) == hft_pool_capacity(engine->order_pool)) {
        reject(engine, c, HFT_REASON_BOOK_FULL);
        return;
    }
    hft_order taker = {
        .order_id = c->order_id,
        .account_id = c->account_id,
        .price = c->order_type == HFT_TYPE_STOP_MARKET ? 0 : c->price,
        .stop_price = is_stop ? c->stop_price : 0,
        .visible_qty = c->qty,
        /* A display as large as the order is no iceberg; normalising here keeps a
         * later quantity increase from turning it into one. */
        .display_qty = c->display_qty < c->qty ? c->display_qty : 0,
        .symbol_id = c->symbol_id,
        .side = c->side,
        .order_type = c->order_type,
        .tif = c->tif,
        .flags = c->flags,
        .stp_mode = c->stp_mode != HFT_STP_DEFAULT ? c->stp_mode : engine->config.default_stp_mode,
    };
    if (is_stop) {
        int64_t ack_price = c->order_type == HFT_TYPE_STOP_MARKET ? c->stop_price : c->price;
        if (hft_stop_is_elected(book, c->side, c->stop_price)) {
            hft_emit(engine, HFT_EVENT_ACK, HFT_REASON_NONE, &taker, ack_price, c->qty, c->qty);
            hft_engine_fire_stop(engine, book, &taker);
            hft_engine_run_stops(engine, book);
            return;
        }
        reason = hft_engine_park_stop(engine, book, &taker);
        if (reason != HFT_REASON_NONE) {
            reject(engine, c, reason);
            return;
        }
        hft_emit(engine, HFT_EVENT_ACK, HFT_REASON_NONE, &taker, ack_price, c->qty, c->qty);
        return;
    }
    if (c->order_type == HFT_TYPE_MARKET &&
        !hft_market_limit(book, c->side, engine->config.market_protection_ticks, &taker.price)) {
        reject(engine, c, HFT_REASON_NO_LIQUIDITY);
        return;
    }
    uint16_t ack_reason = HFT_REASON_NONE;
    if (c->flags != 0 && hft_book_crosses(book, c->side, c->price)) {
        if (c->flags == HFT_FLAG_POST_ONLY) {
            reject(engine, c, HFT_REASON_POST_ONLY_WOULD_TAKE);
            return;
        }
        taker.price = slide_price(book, c->side);
        ack_reason = HFT_REASON_REPRICED;
    }
    hft_emit(engine, HFT_EVENT_ACK, ack_reason, &taker, taker.price, c->qty, c->qty);
    hft_engine_execute(engine, book, &taker);
    hft_engine_run_stops(engine, book);
}

/* The live order a cancel or replace names, or NULL after rejecting the command. */
static hft_order *owned_order(hft_engine *engine, const hft_order_command *c)
{
    hft_order *order = c->order_id != 0 ? hft_order_index_get(&engine->index, c->order_id) : NULL;
    if (order == NULL) {
        reject(engine, c, HFT_REASON_UNKNOWN_ORDER);
        return NULL;
    }
    if (order->account_id != c->account_id) {
        reject(engine, c, HFT_REASON_ACCOUNT_MISMATCH);
        return NULL;
    }
    return order;
}

static void cancel_order(hft_engine *engine, hft_book *book, hft_order *order, uint16_t reason)
{
    hft_emit(engine, HFT_EVENT_CANCELED, reason, order, order->price, hft_order_open_qty(order), 0);
    if (order->is_pending_stop) {
        hft_engine_remove_stop(engine, book, order);
    } else {
        hft_engine_remove_resting(engine, book, order);
    }
}

static void handle_cancel(hft_engine *engine, const hft_order_command *c)
{
    hft_order *order = owned_order(engine, c);
    if (order != NULL) {
        cancel_order(engine, engine->books[order->symbol_id], order, HFT_REASON_USER_CANCEL);
    }
}

/* REPLACE of a stop still waiting for its trigger: new quantity and, when
 * non-zero, a new limit price (stop-limit) and trigger price. Quantity down
 * with both prices unchanged keeps its place in trigger order; anything else
 * re-parks it at the back of its (new) stop level, or fires it at once when the
 * last trade already satisfies the new trigger. */
static void replace_pending_stop(hft_engine *engine, const hft_order_command *c, hft_order *order)
{
    if (c->qty <= 0 || c->qty > HFT_MAX_QTY) {
        reject(engine, c, HFT_REASON_INVALID_QTY);
        return;
    }
    int is_market = order->order_type == HFT_TYPE_STOP_MARKET;
    int64_t new_stop = c->stop_price != 0 ? c->stop_price : order->stop_price;
    /* 0 keeps the limit, as it keeps the trigger: the caller need not know it (a
     * banded stop-market order rests here as a stop-limit at the band's edge). */
    int64_t new_price = is_market ? 0 : (c->price != 0 ? c->price : order->price);
    if (!price_in_range(new_stop) || !price_in_range(new_price)) {
        reject(engine, c, HFT_REASON_INVALID_PRICE);
        return;
    }
    if (new_stop == order->stop_price && new_price == order->price && c->qty <= order->hidden_qty) {
        order->hidden_qty = c->qty;
        hft_emit(engine, HFT_EVENT_REPLACED, HFT_REASON_NONE, order, new_price, c->qty, c->qty);
        return;
    }
    hft_book *book = engine->books[order->symbol_id];
    hft_order stop = *order;
    stop.prev = NULL;
    stop.next = NULL;
    stop.level = NULL;
    stop.is_pending_stop = 0;
    stop.stop_price = new_stop;
    stop.price = new_price;
    stop.visible_qty = c->qty; /* an incoming stop carries its quantity here until parked */
    stop.hidden_qty = 0;
    hft_engine_remove_stop(engine, book, order);
    hft_emit(engine, HFT_EVENT_REPLACED, HFT_REASON_NONE, &stop, new_price, c->qty, c->qty);
    if (hft_stop_is_elected(book, stop.side, new_stop)) {
        hft_engine_fire_stop(engine, book, &stop);
        hft_engine_run_stops(engine, book);
        return;
    }
    uint16_t reason = hft_engine_park_stop(engine, book, &stop);
    if (reason != HFT_REASON_NONE) {
        hft_emit(engine, HFT_EVENT_CANCELED, reason, &stop, new_price, c->qty, 0);
    }
}

static void handle_replace(hft_engine *engine, const hft_order_command *c)
{
    hft_order *order = owned_order(engine, c);
    if (order == NULL) {
        return;
    }
    if (order->is_pending_stop) {
        replace_pending_stop(engine, c, order);
        return;
    }
    if (c->qty <= 0 || c->qty > HFT_MAX_QTY) {
        reject(engine, c, HFT_REASON_INVALID_QTY);
        return;
    }
    if (!price_in_range(c->price)) {
        reject(engine, c, HFT_REASON_INVALID_PRICE);
        return;
    }
    hft_book *book = engine->books[order->symbol_id];
    if (c->price == order->price && c->qty <= hft_order_open_qty(order)) {
        /* Reduce in place, keeping time priority; an iceberg gives up reserve first. */
        int64_t cut = hft_order_open_qty(order) - c->qty;
        int64_t from_hidden = cut < order->hidden_qty ? cut : order->hidden_qty;
        order->hidden_qty -= from_hidden;
        order->visible_qty -= cut - from_hidden;
        order->level->total_qty -= cut - from_hidden;
        hft_emit(engine, HFT_EVENT_REPLACED, HFT_REASON_NONE, order, order->price, c->qty, c->qty);
        return;
    }
    int64_t new_price = c->price;
    uint16_t reason = HFT_REASON_NONE;
    if (order->flags != 0 && hft_book_crosses(book, order->side, new_price)) {
        if (order->flags == HFT_FLAG_POST_ONLY) {
            reject(engine, c, HFT_REASON_POST_ONLY_WOULD_TAKE);
            return;
        }
        new_price = slide_price(book, order->side);
        reason = HFT_REASON_REPRICED;
    }
    hft_order taker = *order;
    taker.prev = NULL;
    taker.next = NULL;
    taker.level = NULL;
    taker.price = new_price;
    taker.visible_qty = c->qty;
    taker.hidden_qty = 0;
    hft_engine_remove_resting(engine, book, order);
    hft_emit(engine, HFT_EVENT_REPLACED, reason, &taker, new_price, c->qty, c->qty);
    hft_engine_execute(engine, book, &taker);
    hft_engine_run_stops(engine, book);
}

static void cancel_all_on_side(hft_engine *engine, hft_book *book, hft_book_side *side, uint64_t account_id)
{
    /* Best level first. Removing level i only moves the levels above it, which
     * were already visited. */
    for (uint32_t i = side->count; i-- > 0;) {
        hft_order *order = side->levels[i]->head;
        while (order != NULL) {
            hft_order *next = order->next;
            if (order->account_id == account_id) {
                cancel_order(engine, book, order, HFT_REASON_CANCEL_ALL);
            }
            order = next;
        }
    }
}

static void cancel_all_in_book(hft_engine *engine, hft_book *book, uint64_t account_id)
{
    cancel_all_on_side(engine, book, &book->bids, account_id);
    cancel_all_on_side(engine, book, &book->asks, account_id);
    cancel_all_on_side(engine, book, &book->buy_stops, account_id);
    cancel_all_on_side(engine, book, &book->sell_stops, account_id);
}

static void handle_cancel_all(hft_engine *engine, const hft_order_command *c)
{
    if (c->symbol_id == HFT_ALL_SYMBOLS) {
        for (uint32_t s = 0; s < engine->config.max_symbols; s++) {
            if (engine->books[s] != NULL) {
                cancel_all_in_book(engine, engine->books[s], c->account_id);
            }
        }
        return;
    }
    hft_book *book = book_of(engine, c->symbol_id);
    if (book == NULL) {
        reject(engine, c, HFT_REASON_UNKNOWN_SYMBOL);
        return;
    }
    cancel_all_in_book(engine, book, c->account_id);
}

void hft_engine_process_command(hft_engine *engine, const hft_order_command *command)
{
    switch (command->action) {
    case HFT_ACTION_NEW:
        handle_new(engine, command);
        break;
    case HFT_ACTION_CANCEL:
        handle_cancel(engine, command);
        break;
    case HFT_ACTION_REPLACE:
        handle_replace(engine, command);
        break;
    case HFT_ACTION_CANCEL_ALL:
        handle_cancel_all(engine, command);
        break;
    default:
        reject(engine, command, HFT_REASON_INVALID_ACTION);
        break;
    }
}
