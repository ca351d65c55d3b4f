/* engine_restore.c -- putting a resting order back as a snapshot saw it (see hft_engine.h). */
#include "hft_book_internal.h"

int hft_engine_restore_resting(hft_engine *engine, const hft_order_command *c, int64_t visible_qty,
                               int64_t hidden_qty)
{
    if (engine == NULL || c == NULL || c->order_id == 0 || c->symbol_id >= engine->config.max_symbols ||
        engine->books[c->symbol_id] == NULL || (c->side != HFT_SIDE_BUY && c->side != HFT_SIDE_SELL) ||
        c->price < -HFT_MAX_PRICE || c->price > HFT_MAX_PRICE || visible_qty <= 0 || hidden_qty < 0 ||
        c->display_qty < 0 || c->stp_mode > HFT_STP_NONE ||
        (hidden_qty > 0 && (c->display_qty == 0 || visible_qty > c->display_qty))) {
        return HFT_EINVAL;
    }
    if (hft_order_index_get(&engine->index, c->order_id) != NULL) {
        return HFT_EEXIST;
    }
    hft_book *book = engine->books[c->symbol_id];
    if (hft_book_crosses(book, c->side, c->price)) {
        return HFT_EINVAL;
    }
    hft_book_side *side = c->side == HFT_SIDE_BUY ? &book->bids : &book->asks;
    hft_level *level = hft_book_side_get_or_add(side, book->level_pool, c->price);
    hft_order *order = level != NULL ? hft_pool_acquire(engine->order_pool) : NULL;
    if (order == NULL) {
        if (level != NULL && level->order_count == 0) {
            hft_book_side_remove(side, book->level_pool, level);
        }
        return HFT_ENOMEM;
    }
    *order = (hft_order){
        .order_id = c->order_id,
        .account_id = c->account_id,
        .price = c->price,
        .visible_qty = visible_qty,
        .hidden_qty = hidden_qty,
        .display_qty = c->display_qty,
        .symbol_id = c->symbol_id,
        .side = c->side,
        .order_type = HFT_TYPE_LIMIT,
        .tif = HFT_TIF_GTC,
        .flags = c->flags,
        .stp_mode = c->stp_mode != HFT_STP_DEFAULT ? c->stp_mode : engine->config.default_stp_mode,
    };
    hft_level_push_back(level, order);
    hft_order_index_put(&engine->index, order);
    return HFT_OK;
}
