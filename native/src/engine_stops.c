/* engine_stops.c -- stop-limit and stop-market orders: waiting, election by the
 * last trade price, and cascades. */
#include "hft_book_internal.h"

static inline hft_book_side *stop_side(hft_book *book, uint8_t side)
{
    return side == HFT_SIDE_BUY ? &book->buy_stops : &book->sell_stops;
}

int hft_stop_is_elected(const hft_book *book, uint8_t side, int64_t stop_price)
{
    if (!book->has_last_trade) {
        return 0;
    }
    return side == HFT_SIDE_BUY ? book->last_trade_price >= stop_price : book->last_trade_price <= stop_price;
}

uint16_t hft_engine_park_stop(hft_engine *engine, hft_book *book, const hft_order *stop)
{
    hft_book_side *side = stop_side(book, stop->side);
    hft_level *level = hft_book_side_get_or_add(side, book->level_pool, stop->stop_price);
    if (level == NULL) {
        return HFT_REASON_BOOK_FULL;
    }
    hft_order *order = hft_pool_acquire(engine->order_pool);
    if (order == NULL) {
        if (level->order_count == 0) {
            hft_book_side_remove(side, book->level_pool, level);
        }
        return HFT_REASON_BOOK_FULL;
    }
    *order = *stop;
    /* Nothing of a waiting stop is shown: its whole quantity is held back. */
    order->hidden_qty = stop->visible_qty;
    order->visible_qty = 0;
    order->is_pending_stop = 1;
    hft_level_push_back(level, order);
    hft_order_index_put(&engine->index, order);
    return HFT_REASON_NONE;
}

void hft_engine_remove_stop(hft_engine *engine, hft_book *book, hft_order *order)
{
    hft_level *level = order->level;
    hft_level_unlink(level, order);
    if (level->order_count == 0) {
        hft_book_side_remove(stop_side(book, order->side), book->level_pool, level);
    }
    hft_order_index_remove(&engine->index, order->order_id);
    hft_pool_release(engine->order_pool, order);
}

void hft_engine_fire_stop(hft_engine *engine, hft_book *book, hft_order *stop)
{
    int64_t qty = stop->visible_qty;
    hft_emit(engine, HFT_EVENT_TRIGGERED, HFT_REASON_NONE, stop, book->last_trade_price, qty, qty);
    hft_order taker = *stop;
    taker.prev = NULL;
    taker.next = NULL;
    taker.level = NULL;
    taker.is_pending_stop = 0;
    if (stop->order_type == HFT_TYPE_STOP_MARKET) {
        taker.order_type = HFT_TYPE_MARKET;
        if (!hft_market_limit(book, taker.side, engine->config.market_protection_ticks, &taker.price)) {
            hft_emit(engine, HFT_EVENT_EXPIRED, HFT_REASON_NO_LIQUIDITY, &taker, taker.price, qty, 0);
            return;
        }
    } else {
        taker.order_type = HFT_TYPE_LIMIT;
    }
    hft_engine_execute(engine, book, &taker);
}

void hft_engine_run_stops(hft_engine *engine, hft_book *book)
{
    /* Every fired stop leaves the stop sides for good, so this ends. */
    while (book->has_last_trade) {
        hft_order *elected = NULL;
        const hft_level *buy = hft_book_side_best(&book->buy_stops);
        const hft_level *sell = hft_book_side_best(&book->sell_stops);
        if (buy != NULL && book->last_trade_price >= buy->price) {
            elected = buy->head;
        } else if (sell != NULL && book->last_trade_price <= sell->price) {
            elected = sell->head;
        } else {
            return;
        }
        hft_order stop = *elected;
        stop.visible_qty = hft_order_open_qty(elected);
        stop.hidden_qty = 0;
        hft_engine_remove_stop(engine, book, elected);
        hft_engine_fire_stop(engine, book, &stop);
    }
}
