/* engine_query.c -- read-only views of the books: top of book, depth, orders. */
#include "hft_book_internal.h"

static const hft_book *find_book(const hft_engine *engine, uint32_t symbol_id)
{
    return symbol_id < engine->config.max_symbols ? engine->books[symbol_id] : NULL;
}

int hft_engine_top_of_book(const hft_engine *engine, uint32_t symbol_id, hft_top_of_book *out)
{
    if (engine == NULL || out == NULL) {
        return HFT_EINVAL;
    }
    const hft_book *book = find_book(engine, symbol_id);
    if (book == NULL) {
        return HFT_ENOENT;
    }
    const hft_level *bid = hft_book_side_best(&book->bids);
    const hft_level *ask = hft_book_side_best(&book->asks);
    *out = (hft_top_of_book){
        .bid_price = bid ? bid->price : 0,
        .bid_qty = bid ? bid->total_qty : 0,
        .ask_price = ask ? ask->price : 0,
        .ask_qty = ask ? ask->total_qty : 0,
        .last_trade_price = book->has_last_trade ? book->last_trade_price : 0,
        .has_bid = bid != NULL,
        .has_ask = ask != NULL,
        .has_last_trade = (uint8_t)book->has_last_trade,
    };
    return HFT_OK;
}

static const hft_book_side *side_of(const hft_book *book, uint8_t side, int pending_stops)
{
    if (side == HFT_SIDE_BUY) {
        return pending_stops ? &book->buy_stops : &book->bids;
    }
    if (side == HFT_SIDE_SELL) {
        return pending_stops ? &book->sell_stops : &book->asks;
    }
    return NULL;
}

int hft_engine_depth(const hft_engine *engine, uint32_t symbol_id, uint8_t side, hft_depth_level *out,
                     size_t max_levels, size_t *n_out)
{
    if (engine == NULL || n_out == NULL || (out == NULL && max_levels > 0)) {
        return HFT_EINVAL;
    }
    const hft_book *book = find_book(engine, symbol_id);
    if (book == NULL) {
        return HFT_ENOENT;
    }
    const hft_book_side *levels = side_of(book, side, 0);
    if (levels == NULL) {
        return HFT_EINVAL;
    }
    size_t n = 0;
    for (uint32_t i = levels->count; i-- > 0 && n < max_levels; n++) {
        const hft_level *level = levels->levels[i];
        out[n] = (hft_depth_level){.price = level->price, .qty = level->total_qty, .order_count = level->order_count};
    }
    *n_out = levels->count;
    return HFT_OK;
}

static void describe(const hft_order *order, hft_order_info *out)
{
    *out = (hft_order_info){
        .order_id = order->order_id,
        .account_id = order->account_id,
        .price = order->price,
        .stop_price = order->stop_price,
        .visible_qty = order->visible_qty,
        .hidden_qty = order->hidden_qty,
        .display_qty = order->display_qty,
        .symbol_id = order->symbol_id,
        .side = order->side,
        .order_type = order->order_type,
        .tif = order->tif,
        .flags = order->flags,
        .stp_mode = order->stp_mode,
        .is_pending_stop = order->is_pending_stop,
    };
}

int hft_engine_book_orders(const hft_engine *engine, uint32_t symbol_id, uint8_t side, int pending_stops,
                           hft_order_info *out, size_t max_orders, size_t *n_out)
{
    if (engine == NULL || n_out == NULL || (out == NULL && max_orders > 0)) {
        return HFT_EINVAL;
    }
    const hft_book *book = find_book(engine, symbol_id);
    if (book == NULL) {
        return HFT_ENOENT;
    }
    const hft_book_side *levels = side_of(book, side, pending_stops);
    if (levels == NULL) {
        return HFT_EINVAL;
    }
    size_t n = 0;
    for (uint32_t i = levels->count; i-- > 0;) {
        for (const hft_order *order = levels->levels[i]->head; order != NULL; order = order->next) {
            if (n < max_orders) {
                describe(order, &out[n]);
            }
            n++;
        }
    }
    *n_out = n;
    return HFT_OK;
}

int hft_engine_order_info(const hft_engine *engine, uint64_t order_id, hft_order_info *out)
{
    if (engine == NULL || out == NULL) {
        return HFT_EINVAL;
    }
    const hft_order *order = order_id != 0 ? hft_order_index_get(&engine->index, order_id) : NULL;
    if (order == NULL) {
        return HFT_ENOENT;
    }
    describe(order, out);
    return HFT_OK;
}

size_t hft_engine_live_orders(const hft_engine *engine)
{
    return hft_pool_in_use(engine->order_pool);
}
