/*
 * hft_book_internal.h -- the engine's data structures, shared by the files of
 * native/src/book_*.c and engine_*.c. Not part of the Python-visible API
 * (native/cdef/30_matching.cdef shows only hft_book.h and hft_engine.h).
 *
 * Shape of a book: each side is an array of price levels sorted so the best
 * level is last (most activity is near the top, so inserts and removals there
 * move little memory); a level is a FIFO doubly-linked list of orders taken
 * from the engine's hft_pool; an open-addressing hash index maps order ids to
 * their records. Pending stop orders live in two more sides of the same shape,
 * keyed by stop price in trigger order.
 *
 * Concurrency: single-threaded like the engine that owns all of this.
 */
#ifndef HFT_BOOK_INTERNAL_H
#define HFT_BOOK_INTERNAL_H

#include "hft_engine.h"
#include "hft_pool.h"

typedef struct hft_level hft_level;
typedef struct hft_order hft_order;

/* A live order. Also used, on the stack, for an incoming order while it trades. */
struct hft_order {
    hft_order *prev; /* towards the head (older) of its level or stop level */
    hft_order *next;
    hft_level *level;
    uint64_t order_id;
    uint64_t account_id;
    int64_t price;        /* limit price (the band edge for a market order) */
    int64_t stop_price;
    int64_t visible_qty;  /* shown at the level; for an incoming order, what is left to trade */
    int64_t hidden_qty;   /* iceberg reserve; a pending stop keeps its whole quantity here */
    int64_t display_qty;  /* iceberg refill size; 0 when not an iceberg */
    uint32_t symbol_id;
    uint8_t side;
    uint8_t order_type;
    uint8_t tif;
    uint8_t flags;
    uint8_t stp_mode; /* resolved: never HFT_STP_DEFAULT */
    uint8_t is_pending_stop;
};

struct hft_level {
    int64_t price;
    int64_t total_qty; /* sum of visible_qty of its orders */
    uint32_t order_count;
    hft_order *head; /* oldest: matched first */
    hft_order *tail;
};

/* Levels sorted by key ascending, best last. key = price on the bid side and for
 * sell stops (highest is best), key = -price on the ask side and for buy stops
 * (lowest is best); |price| <= HFT_MAX_PRICE + 1 keeps the negation exact. */
typedef struct hft_book_side {
    int64_t *keys;
    hft_level **levels;
    uint32_t count;
    uint32_t capacity;
    int64_t key_sign; /* +1 or -1 */
} hft_book_side;

typedef struct hft_book {
    uint32_t symbol_id;
    hft_book_side bids;
    hft_book_side asks;
    hft_book_side buy_stops;  /* trigger when last >= stop: lowest stop first */
    hft_book_side sell_stops; /* trigger when last <= stop: highest stop first */
    hft_pool *level_pool;
    int64_t last_trade_price;
    int has_last_trade;
} hft_book;

typedef struct hft_order_index_slot {
    uint64_t order_id; /* 0 = empty */
    hft_order *order;
} hft_order_index_slot;

/* Open addressing with linear probing and backward-shift deletion (no
 * tombstones, so probe lengths never degrade). At most half full by sizing. */
typedef struct hft_order_index {
    hft_order_index_slot *slots;
    uint64_t mask;
    uint32_t bits; /* log2(slot count) */
} hft_order_index;

struct hft_engine {
    hft_engine_config config;
    hft_pool *order_pool;
    hft_order_index index;
    hft_book **books; /* [config.max_symbols], NULL where no book is open */

    /* Where events go during one hft_engine_process_batch call. */
    hft_match_event *out;
    size_t out_capacity;
    size_t out_count;
    uint32_t command_index;

    /* Events that did not fit the caller's buffer, handed out by the next call. */
    hft_match_event *spill;
    size_t spill_capacity;
    size_t spill_count;
    size_t spill_read;
    int spill_failed;
    hft_match_event spill_discard; /* written to when the spill cannot grow */
};

/* --- book_side.c: sorted level arrays and the FIFO queue inside a level ---- */

int hft_book_side_init(hft_book_side *side, uint32_t capacity, int64_t key_sign);
void hft_book_side_free(hft_book_side *side);
/* The level at `price`, or NULL. */
hft_level *hft_book_side_find(const hft_book_side *side, int64_t price);
/* The level at `price`, created empty if missing; NULL when the side is full. */
hft_level *hft_book_side_get_or_add(hft_book_side *side, hft_pool *level_pool, int64_t price);
/* Remove an (empty) level from the side and return it to the pool. */
void hft_book_side_remove(hft_book_side *side, hft_pool *level_pool, hft_level *level);

static inline hft_level *hft_book_side_best(const hft_book_side *side)
{
    return side->count ? side->levels[side->count - 1] : NULL;
}

/* Append at the back of the level's queue (newest, lowest priority). */
void hft_level_push_back(hft_level *level, hft_order *order);
/* Take an order out of its level's queue (the level may become empty). */
void hft_level_unlink(hft_level *level, hft_order *order);

/* --- book_order_index.c ----------------------------------------------------- */

int hft_order_index_init(hft_order_index *index, uint64_t max_orders);
void hft_order_index_free(hft_order_index *index);
hft_order *hft_order_index_get(const hft_order_index *index, uint64_t order_id);
/* The id must not be present (callers check first). */
void hft_order_index_put(hft_order_index *index, hft_order *order);
void hft_order_index_remove(hft_order_index *index, uint64_t order_id);

/* --- engine.c: event output ------------------------------------------------- */

hft_match_event *hft_engine_spill_slot(hft_engine *engine);

static inline hft_match_event *hft_engine_event_slot(hft_engine *engine)
{
    if (engine->out_count < engine->out_capacity) {
        return &engine->out[engine->out_count++];
    }
    return hft_engine_spill_slot(engine);
}

/* An event about one order (every kind but FILL). */
static inline void hft_emit(hft_engine *engine, uint8_t type, uint16_t reason, const hft_order *order,
                            int64_t price, int64_t qty, int64_t leaves_qty)
{
    hft_match_event *ev = hft_engine_event_slot(engine);
    ev->order_id = order->order_id;
    ev->account_id = order->account_id;
    ev->maker_order_id = 0;
    ev->maker_account_id = 0;
    ev->price = price;
    ev->qty = qty;
    ev->leaves_qty = leaves_qty;
    ev->maker_leaves_qty = 0;
    ev->symbol_id = order->symbol_id;
    ev->command_index = engine->command_index;
    ev->type = type;
    ev->side = order->side;
    ev->reason = reason;
    ev->reserved = 0;
}

static inline int64_t hft_order_open_qty(const hft_order *order)
{
    return order->visible_qty + order->hidden_qty;
}

/* --- engine_commands.c ---------------------------------------------------- */

/* Apply one command (NEW, CANCEL, REPLACE, CANCEL_ALL), emitting its events. */
void hft_engine_process_command(hft_engine *engine, const hft_order_command *command);

/* --- engine_match.c ------------------------------------------------------- */

/* Handle an incoming (already validated, already ACKed) order: FOK check,
 * matching, then rest or expire. `taker` is a stack copy; it rests in a pool
 * record if it has to. */
void hft_engine_execute(hft_engine *engine, hft_book *book, hft_order *taker);
/* Take a resting order out of its book and free its record (no event). */
void hft_engine_remove_resting(hft_engine *engine, hft_book *book, hft_order *order);
/* Would a `side` order at `price` cross the best opposite price? */
int hft_book_crosses(const hft_book *book, uint8_t side, int64_t price);
/* The limit of a market order: the best opposite price moved `band_ticks` against
 * the taker. Returns 0 (and leaves *limit) when the opposite side is empty. */
int hft_market_limit(const hft_book *book, uint8_t side, int64_t band_ticks, int64_t *limit);

/* --- engine_stops.c ------------------------------------------------------- */

/* Park an ACK-pending stop order; returns HFT_REASON_NONE or BOOK_FULL. */
uint16_t hft_engine_park_stop(hft_engine *engine, hft_book *book, const hft_order *stop);
/* Take a pending stop out of its stop level and free its record (no event). */
void hft_engine_remove_stop(hft_engine *engine, hft_book *book, hft_order *order);
/* Is a stop order with this side and stop price elected by the book's last trade? */
int hft_stop_is_elected(const hft_book *book, uint8_t side, int64_t stop_price);
/* Emit TRIGGERED for the stop in `stop` and handle it as its limit or market order. */
void hft_engine_fire_stop(hft_engine *engine, hft_book *book, hft_order *stop);
/* Fire every elected stop, cascades included, in trigger order. */
void hft_engine_run_stops(hft_engine *engine, hft_book *book);

#endif /* HFT_BOOK_INTERNAL_H */
