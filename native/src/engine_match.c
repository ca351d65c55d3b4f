/* engine_match.c -- an incoming order against the book: FOK check, matching,
 * self-trade prevention, iceberg refills, and resting the remainder. */
#include "hft_book_internal.h"

static inline hft_book_side *own_side(hft_book *book, uint8_t side)
{
    return side == HFT_SIDE_BUY ? &book->bids : &book->asks;
}

static inline hft_book_side *opposite_side(hft_book *book, uint8_t side)
{
    return side == HFT_SIDE_BUY ? &book->asks : &book->bids;
}

/* Can a taker on `side` with limit `limit` trade at `level_price`? */
static inline int within_limit(uint8_t side, int64_t level_price, int64_t limit)
{
    return side == HFT_SIDE_BUY ? level_price <= limit : level_price >= limit;
}

static inline int is_self_trade(const hft_order *taker, const hft_order *maker)
{
    return taker->account_id != 0 && taker->account_id == maker->account_id && taker->stp_mode != HFT_STP_NONE;
}

int hft_book_crosses(const hft_book *book, uint8_t side, int64_t price)
{
    const hft_level *best = hft_book_side_best(side == HFT_SIDE_BUY ? &book->asks : &book->bids);
    return best != NULL && within_limit(side, best->price, price);
}

int hft_market_limit(const hft_book *book, uint8_t side, int64_t band_ticks, int64_t *limit)
{
    const hft_level *best = hft_book_side_best(side == HFT_SIDE_BUY ? &book->asks : &book->bids);
    if (best == NULL) {
        return 0;
    }
    /* |best| <= HFT_MAX_PRICE + 1 and band <= HFT_MAX_PRICE, so neither sum overflows. */
    if (side == HFT_SIDE_BUY) {
        *limit = best->price + band_ticks > HFT_MAX_PRICE ? HFT_MAX_PRICE : best->price + band_ticks;
    } else {
        *limit = best->price - band_ticks < -HFT_MAX_PRICE ? -HFT_MAX_PRICE : best->price - band_ticks;
    }
    return 1;
}

void hft_engine_remove_resting(hft_engine *engine, hft_book *book, hft_order *order)
{
    hft_level *level = order->level;
    hft_level_unlink(level, order);
    if (level->order_count == 0) {
        hft_book_side_remove(own_side(book, order->side), book->level_pool, level);
    }
    hft_order_index_remove(&engine->index, order->order_id);
    hft_pool_release(engine->order_pool, order);
}

/* Unlink a maker from a level the matching loop is working on; the loop
 * removes the level itself once it is empty. */
static void drop_maker(hft_engine *engine, hft_level *level, hft_order *maker)
{
    hft_level_unlink(level, maker);
    hft_order_index_remove(&engine->index, maker->order_id);
    hft_pool_release(engine->order_pool, maker);
}

/* All or nothing: walk the book as matching would. Within a level the taker
 * meets every shown quantity in queue order before any iceberg refill (refills
 * go to the back), so a self-trade that stops the taker is met before any
 * reserve; without one, the whole level, reserves included, is available. */
static int fok_fillable(hft_book *book, const hft_order *taker)
{
    const hft_book_side *opposite = opposite_side(book, taker->side);
    int64_t needed = taker->visible_qty;
    for (uint32_t i = opposite->count; i-- > 0;) {
        const hft_level *level = opposite->levels[i];
        if (!within_limit(taker->side, level->price, taker->price)) {
            return 0;
        }
        for (const hft_order *maker = level->head; maker != NULL; maker = maker->next) {
            if (is_self_trade(taker, maker)) {
                if (taker->stp_mode == HFT_STP_CANCEL_RESTING) {
                    continue;
                }
                return 0; /* the taker would be cancelled or decremented here */
            }
            needed -= maker->visible_qty;
            if (needed <= 0) {
                return 1;
            }
        }
        for (const hft_order *maker = level->head; maker != NULL; maker = maker->next) {
            if (!is_self_trade(taker, maker)) {
                needed -= maker->hidden_qty;
                if (needed <= 0) {
                    return 1;
                }
            }
        }
    }
    return 0;
}

static void emit_fill(hft_engine *engine, const hft_order *taker, const hft_order *maker, int64_t price,
                      int64_t qty)
{
    hft_match_event *ev = hft_engine_event_slot(engine);
    ev->order_id = taker->order_id;
    ev->account_id = taker->account_id;
    ev->maker_order_id = maker->order_id;
    ev->maker_account_id = maker->account_id;
    ev->price = price;
    ev->qty = qty;
    ev->leaves_qty = taker->visible_qty;
    ev->maker_leaves_qty = hft_order_open_qty(maker);
    ev->symbol_id = taker->symbol_id;
    ev->command_index = engine->command_index;
    ev->type = HFT_EVENT_FILL;
    ev->side = taker->side;
    ev->reason = HFT_REASON_NONE;
    ev->reserved = 0;
}

/* Apply the taker's self-trade prevention mode to `maker`; returns 1 when the
 * taker has nothing left to trade. */
static int prevent_self_trade(hft_engine *engine, hft_level *level, hft_order *taker, hft_order *maker)
{
    int64_t cut;
    switch (taker->stp_mode) {
    case HFT_STP_CANCEL_RESTING:
        hft_emit(engine, HFT_EVENT_CANCELED, HFT_REASON_SELF_TRADE, maker, maker->price,
                 hft_order_open_qty(maker), 0);
        drop_maker(engine, level, maker);
        return 0;
    case HFT_STP_CANCEL_BOTH:
        hft_emit(engine, HFT_EVENT_CANCELED, HFT_REASON_SELF_TRADE, maker, maker->price,
                 hft_order_open_qty(maker), 0);
        drop_maker(engine, level, maker);
        __attribute__((fallthrough)); /* and cancel the taker too */
    case HFT_STP_CANCEL_TAKER:
        hft_emit(engine, HFT_EVENT_CANCELED, HFT_REASON_SELF_TRADE, taker, taker->price, taker->visible_qty, 0);
        taker->visible_qty = 0;
        return 1;
    default: /* HFT_STP_DECREMENT */
        cut = taker->visible_qty < hft_order_open_qty(maker) ? taker->visible_qty : hft_order_open_qty(maker);
        if (cut <= maker->hidden_qty) {
            maker->hidden_qty -= cut;
        } else {
            int64_t shown_cut = cut - maker->hidden_qty;
            maker->hidden_qty = 0;
            maker->visible_qty -= shown_cut;
            level->total_qty -= shown_cut;
        }
        taker->visible_qty -= cut;
        hft_emit(engine, HFT_EVENT_CANCELED, HFT_REASON_SELF_TRADE, maker, maker->price, cut,
                 hft_order_open_qty(maker));
        hft_emit(engine, HFT_EVENT_CANCELED, HFT_REASON_SELF_TRADE, taker, taker->price, cut,
                 taker->visible_qty);
        if (hft_order_open_qty(maker) == 0) {
            drop_maker(engine, level, maker);
        }
        return taker->visible_qty == 0;
    }
}

static void rest(hft_engine *engine, hft_book *book, const hft_order *taker)
{
    hft_book_side *side = own_side(book, taker->side);
    hft_level *level = hft_book_side_get_or_add(side, book->level_pool, taker->price);
    /* The NEW path checked for a free record before matching and matching only
     * frees records, so the pool cannot be empty here; the check stays because
     * a silent NULL would corrupt the book. */
    hft_order *order = level != NULL ? hft_pool_acquire(engine->order_pool) : NULL;
    if (order == NULL) {
        if (level != NULL && level->order_count == 0) {
            hft_book_side_remove(side, book->level_pool, level);
        }
        hft_emit(engine, HFT_EVENT_CANCELED, HFT_REASON_BOOK_FULL, taker, taker->price, taker->visible_qty, 0);
        return;
    }
    *order = *taker;
    int64_t open = taker->visible_qty;
    if (order->display_qty > 0 && order->display_qty < open) {
        order->visible_qty = order->display_qty;
        order->hidden_qty = open - order->display_qty;
    } else {
        order->visible_qty = open;
        order->hidden_qty = 0;
    }
    hft_level_push_back(level, order);
    hft_order_index_put(&engine->index, order);
}

void hft_engine_execute(hft_engine *engine, hft_book *book, hft_order *taker)
{
    if (taker->tif == HFT_TIF_FOK && !fok_fillable(book, taker)) {
        hft_emit(engine, HFT_EVENT_EXPIRED, HFT_REASON_FOK_UNFILLABLE, taker, taker->price, taker->visible_qty, 0);
        return;
    }
    hft_book_side *opposite = opposite_side(book, taker->side);
    int taker_done = 0;
    while (!taker_done && taker->visible_qty > 0) {
        hft_level *level = hft_book_side_best(opposite);
        if (level == NULL || !within_limit(taker->side, level->price, taker->price)) {
            break;
        }
        while (taker->visible_qty > 0 && level->head != NULL) {
            hft_order *maker = level->head;
            if (is_self_trade(taker, maker)) {
                if (prevent_self_trade(engine, level, taker, maker)) {
                    taker_done = 1;
                    break;
                }
                continue;
            }
            int64_t qty = taker->visible_qty < maker->visible_qty ? taker->visible_qty : maker->visible_qty;
            taker->visible_qty -= qty;
            maker->visible_qty -= qty;
            level->total_qty -= qty;
            book->last_trade_price = level->price;
            book->has_last_trade = 1;
            emit_fill(engine, taker, maker, level->price, qty);
            if (maker->visible_qty == 0) {
                if (maker->hidden_qty > 0) {
                    /* Iceberg refill: a new shown slice, at the back of the queue. */
                    hft_level_unlink(level, maker);
                    maker->visible_qty = maker->hidden_qty < maker->display_qty ? maker->hidden_qty
                                                                                 : maker->display_qty;
                    maker->hidden_qty -= maker->visible_qty;
                    hft_level_push_back(level, maker);
                } else {
                    drop_maker(engine, level, maker);
                }
            }
        }
        if (level->order_count == 0) {
            hft_book_side_remove(opposite, book->level_pool, level);
        }
    }
    if (taker->visible_qty == 0) {
        return;
    }
    if (taker->tif != HFT_TIF_GTC) {
        hft_emit(engine, HFT_EVENT_EXPIRED, HFT_REASON_UNFILLED, taker, taker->price, taker->visible_qty, 0);
        return;
    }
    rest(engine, book, taker);
}
