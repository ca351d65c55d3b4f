/* engine.c -- engine lifetime, books, and the batch entry point. See hft_engine.h. */
#include <stdlib.h>
#include <string.h>

#include "hft_book_internal.h"

void hft_engine_config_default(hft_engine_config *config)
{
    memset(config, 0, sizeof(*config));
    config->max_symbols = 16;
    config->max_levels_per_side = 4096;
    config->max_orders = 1u << 20;
    config->market_protection_ticks = 1000;
    config->default_stp_mode = HFT_STP_CANCEL_RESTING;
}

int hft_engine_create(const hft_engine_config *config, hft_engine **out)
{
    if (config == NULL || out == NULL || config->max_symbols == 0 || config->max_symbols == HFT_ALL_SYMBOLS ||
        config->max_levels_per_side == 0 || config->max_orders == 0 || config->max_orders > HFT_MAX_ORDERS ||
        config->market_protection_ticks < 0 || config->market_protection_ticks > HFT_MAX_PRICE ||
        config->default_stp_mode < HFT_STP_CANCEL_RESTING || config->default_stp_mode > HFT_STP_NONE) {
        return HFT_EINVAL;
    }
    hft_engine *engine = calloc(1, sizeof(*engine));
    if (engine == NULL) {
        return HFT_ENOMEM;
    }
    engine->config = *config;
    engine->books = calloc(config->max_symbols, sizeof(*engine->books));
    int rc = engine->books == NULL ? HFT_ENOMEM : HFT_OK;
    if (rc == HFT_OK) {
        rc = hft_pool_create(sizeof(hft_order), config->max_orders, &engine->order_pool);
    }
    if (rc == HFT_OK) {
        rc = hft_order_index_init(&engine->index, config->max_orders);
    }
    if (rc != HFT_OK) {
        hft_engine_destroy(engine);
        return rc;
    }
    *out = engine;
    return HFT_OK;
}

static void book_destroy(hft_book *book)
{
    hft_book_side_free(&book->bids);
    hft_book_side_free(&book->asks);
    hft_book_side_free(&book->buy_stops);
    hft_book_side_free(&book->sell_stops);
    hft_pool_destroy(book->level_pool);
    free(book);
}

void hft_engine_destroy(hft_engine *engine)
{
    if (engine == NULL) {
        return;
    }
    if (engine->books != NULL) {
        for (uint32_t i = 0; i < engine->config.max_symbols; i++) {
            if (engine->books[i] != NULL) {
                book_destroy(engine->books[i]);
            }
        }
        free(engine->books);
    }
    /* Orders live in the pool's slab, so destroying the pool frees them all. */
    hft_pool_destroy(engine->order_pool);
    hft_order_index_free(&engine->index);
    free(engine->spill);
    free(engine);
}

int hft_engine_add_book(hft_engine *engine, uint32_t symbol_id)
{
    if (engine == NULL || symbol_id >= engine->config.max_symbols) {
        return HFT_EINVAL;
    }
    if (engine->books[symbol_id] != NULL) {
        return HFT_EEXIST;
    }
    hft_book *book = calloc(1, sizeof(*book));
    if (book == NULL) {
        return HFT_ENOMEM;
    }
    book->symbol_id = symbol_id;
    uint32_t levels = engine->config.max_levels_per_side;
    int rc = hft_book_side_init(&book->bids, levels, +1);
    if (rc == HFT_OK) {
        rc = hft_book_side_init(&book->asks, levels, -1);
    }
    if (rc == HFT_OK) {
        rc = hft_book_side_init(&book->buy_stops, levels, -1);
    }
    if (rc == HFT_OK) {
        rc = hft_book_side_init(&book->sell_stops, levels, +1);
    }
    if (rc == HFT_OK) {
        /* Every side can be full at once. */
        rc = hft_pool_create(sizeof(hft_level), 4 * (size_t)levels, &book->level_pool);
    }
    if (rc != HFT_OK) {
        book_destroy(book);
        return rc;
    }
    engine->books[symbol_id] = book;
    return HFT_OK;
}

hft_match_event *hft_engine_spill_slot(hft_engine *engine)
{
    if (engine->spill_count == engine->spill_capacity) {
        size_t capacity = engine->spill_capacity ? 2 * engine->spill_capacity : 256;
        hft_match_event *grown = realloc(engine->spill, capacity * sizeof(*grown));
        if (grown == NULL) {
            engine->spill_failed = 1;
            return &engine->spill_discard;
        }
        engine->spill = grown;
        engine->spill_capacity = capacity;
    }
    return &engine->spill[engine->spill_count++];
}

size_t hft_engine_pending_events(const hft_engine *engine)
{
    return engine->spill_count - engine->spill_read;
}

/* Hand out events kept from the previous call; true when none are left. */
static int drain_spill(hft_engine *engine)
{
    size_t pending = engine->spill_count - engine->spill_read;
    size_t n = pending < engine->out_capacity ? pending : engine->out_capacity;
    if (n > 0) {
        memcpy(engine->out, engine->spill + engine->spill_read, n * sizeof(*engine->out));
    }
    engine->out_count = n;
    engine->spill_read += n;
    if (engine->spill_read < engine->spill_count) {
        return 0;
    }
    engine->spill_read = 0;
    engine->spill_count = 0;
    return 1;
}

int hft_engine_process_batch(hft_engine *engine, const hft_order_command *commands, size_t count,
                             hft_match_event *events, size_t capacity, size_t *consumed, size_t *written)
{
    if (engine == NULL || events == NULL || capacity == 0 || consumed == NULL || written == NULL ||
        (commands == NULL && count > 0)) {
        return HFT_EINVAL;
    }
    engine->out = events;
    engine->out_capacity = capacity;
    engine->out_count = 0;
    engine->spill_failed = 0;
    size_t i = 0;
    if (drain_spill(engine)) {
        /* Stop after the command that fills the buffer: its overflow goes to the
         * spill, and no later command runs until the spill is drained. */
        while (i < count && engine->out_count < engine->out_capacity) {
            engine->command_index = (uint32_t)i;
            hft_engine_process_command(engine, &commands[i]);
            i++;
        }
    }
    *consumed = i;
    *written = engine->out_count;
    engine->out = NULL;
    engine->out_capacity = 0;
    engine->out_count = 0;
    return engine->spill_failed ? HFT_ENOMEM : HFT_OK;
}
