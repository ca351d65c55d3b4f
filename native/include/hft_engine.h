/*
 * hft_engine.h -- a price-time priority matching engine holding one order book
 * per symbol, driven by batches of commands.
 *
 * Concurrency: single-threaded, single writer. An engine belongs to one thread
 * (the LMAX discipline: one owner matches, others ask it by message); no call
 * here is safe concurrently with any other call on the same engine. Different
 * engines share nothing and may run on different threads.
 *
 * Memory: hft_engine_create allocates everything the order path needs -- the
 * order records (an hft_pool of config.max_orders), each book's price-level
 * arrays (config.max_levels_per_side) and the order-id index -- so matching
 * never mallocs. The one exception is the event spill (below), which grows
 * only when the caller's event buffer is too small for one command's events.
 * The caller owns the command and event arrays; the engine keeps no pointer to
 * them after the call returns.
 *
 * Determinism: the same sequence of commands always produces the same events
 * and the same books. Nothing reads a clock or a random source.
 *
 * The rules, in the order the engine applies them to each command:
 *
 * NEW  1. Validation, each failure a REJECT with its reason and nothing else:
 *         order id non-zero, known symbol, side, type, tif, 0 < qty <= HFT_MAX_QTY,
 *         |price| <= HFT_MAX_PRICE for limit types, |stop_price| <= HFT_MAX_PRICE for
 *         stop types, 0 <= display_qty <= qty, flags and stp mode known, and the
 *         combinations: market and stop-market need IOC or FOK; an iceberg
 *         (0 < display_qty < qty) needs a GTC limit or stop-limit; post-only needs
 *         a GTC limit and not both post-only flags. Then: the id must not be live
 *         (DUPLICATE_ORDER_ID) and, for anything that could rest, a free order
 *         record must exist (BOOK_FULL). A market order with an empty opposite
 *         side is rejected with NO_LIQUIDITY.
 *      2. Stop orders: when a last trade exists and already satisfies the stop
 *         (buy: last >= stop_price, sell: last <= stop_price) the order is ACKed,
 *         TRIGGERED and then handled as its limit or market order at once;
 *         otherwise it is ACKed and waits (BOOK_FULL if the stop level array is full).
 *      3. Post-only: if the order would cross the best opposite price, POST_ONLY
 *         rejects it (POST_ONLY_WOULD_TAKE) and POST_ONLY_SLIDE moves it to one tick
 *         behind that price (ACK carries reason REPRICED). Rejecting is the default
 *         flag because a maker quoting at a price it chose should learn it was
 *         late, not rest silently at a price it did not choose; slide is offered
 *         for market makers who prefer to stay in the book.
 *      4. ACK: qty = order quantity; price = limit price (market: its band edge;
 *         stop-market: the stop price).
 *      5. Market orders become limit orders at the edge of the protection band:
 *         best opposite price +/- config.market_protection_ticks, taken at arrival
 *         (or at trigger). This is CME's "market with protection": a thin book
 *         cannot sweep a market order arbitrarily far. (An IOC limit order is a
 *         market order with a bound the client chose.)
 *      6. FOK: if the book cannot fill the whole quantity within the limit --
 *         counting self-trade prevention as it would act -- EXPIRED with reason
 *         FOK_UNFILLABLE, and nothing trades.
 *      7. Matching, best opposite level first, oldest order first within a level,
 *         at the resting order's price. Each trade is one FILL. A resting iceberg
 *         whose shown part is exhausted refills from its reserve and goes to the
 *         back of its level. Self-trade prevention applies per resting order.
 *      8. The remainder: IOC, FOK and market remainders EXPIRE (reason UNFILLED);
 *         GTC remainders rest at the back of their level (shown part
 *         min(display_qty, remainder) for an iceberg). If no level slot is free the
 *         remainder is CANCELED with reason BOOK_FULL.
 * CANCEL  the live order (resting or pending stop) is removed: CANCELED with
 *         reason USER_CANCEL and qty = its open quantity. Unknown id:
 *         REJECT UNKNOWN_ORDER; another account: REJECT ACCOUNT_MISMATCH.
 * REPLACE price and qty (the new open quantity) of a resting order. Same price
 *         and qty not above the open quantity: reduced in place, time priority
 *         kept (an iceberg loses reserve first). Otherwise the order leaves its
 *         level and re-enters as a GTC order at the new price: it may trade, then
 *         rests at the back. Either way one REPLACED event comes first. A
 *         post-only order replaced to a crossing price follows its post-only flag.
 *         A pending stop: qty and, when non-zero, price (stop-limit; ignored for
 *         stop-market) and stop_price (the trigger); 0 keeps either. Same prices and qty not above its
 *         quantity: reduced in place, trigger priority kept; otherwise it goes to
 *         the back of its new stop level, or, when the last trade already
 *         satisfies the new trigger, it is TRIGGERED at once. REPLACED comes first.
 * CANCEL_ALL every live order of cmd.account_id in cmd.symbol_id's book (or in all
 *         books): bids best first, then asks, then buy stops and sell stops in
 *         trigger order, oldest first; one CANCELED (reason CANCEL_ALL) each.
 * Stops   after every NEW or REPLACE, while a pending stop is satisfied by the
 *         last trade price, the first one in trigger order (buy stops: lowest stop
 *         price first, then sell stops: highest first; oldest first at a price) is
 *         TRIGGERED and handled as a new order. Its trades may elect more stops:
 *         cascades run to the end inside the same command.
 * Self-trade prevention: when the taker's account is non-zero and equals the
 *         resting order's, the taker's mode (or the engine default) decides:
 *         cancel the resting order (CANCELED, reason SELF_TRADE), cancel the taker's
 *         remainder, both, or decrement both by the smaller open quantity (a
 *         CANCELED of that quantity for each; the resting order's reserve goes
 *         first). Self-trades allowed with HFT_STP_NONE.
 */
#ifndef HFT_ENGINE_H
#define HFT_ENGINE_H

#include "hft_book.h"

typedef struct hft_engine_config {
    uint32_t max_symbols;           /* books are symbol ids 0 .. max_symbols-1 */
    uint32_t max_levels_per_side;   /* price levels per side per book (and stop levels per side) */
    uint64_t max_orders;            /* live orders (resting + pending stops) across all books */
    int64_t market_protection_ticks; /* market orders trade at most this many ticks from the best price */
    uint8_t default_stp_mode;       /* HFT_STP_CANCEL_RESTING .. HFT_STP_NONE */
    uint8_t reserved[7];
} hft_engine_config;

typedef struct hft_engine hft_engine;

/* Sensible defaults: 16 symbols, 4096 levels per side, 1M orders, a 1000-tick
 * market band, cancel-resting self-trade prevention. */
void hft_engine_config_default(hft_engine_config *config);

/* Build an engine with no books. HFT_EINVAL for zero or out-of-range sizes
 * (max_orders above HFT_MAX_ORDERS, band outside 0..HFT_MAX_PRICE, unknown
 * stp mode), HFT_ENOMEM. Owner: the caller, who frees it with hft_engine_destroy. */
int hft_engine_create(const hft_engine_config *config, hft_engine **out);

/* Free the engine, its books and all its orders. NULL is a no-op. */
void hft_engine_destroy(hft_engine *engine);

/* Open the book for symbol_id (allocates its level arrays). HFT_EINVAL when
 * symbol_id >= max_symbols, HFT_EEXIST when it is open already, HFT_ENOMEM. */
int hft_engine_add_book(hft_engine *engine, uint32_t symbol_id);

/* Apply commands[0 ..] in order, writing events into events[0 .. capacity).
 * Events left over from the previous call (see below) are written first.
 * Processing stops after the command that fills the buffer; *consumed says how
 * many commands were applied and *written how many events were written. The
 * events of that last command that did not fit are kept by the engine and come
 * out first on the next call (call again with count 0 to collect them only);
 * hft_engine_pending_events tells how many are waiting. So a caller loops
 * until every command is consumed and nothing is pending.
 * Returns HFT_OK; HFT_EINVAL for NULL arrays or capacity 0; HFT_ENOMEM if the
 * engine could not keep the overflow (events were lost: the engine is still
 * consistent but the caller's view of it is not). */
int hft_engine_process_batch(hft_engine *engine, const hft_order_command *commands, size_t count,
                             hft_match_event *events, size_t capacity, size_t *consumed,
                             size_t *written);

/* Events produced by an earlier call and not yet handed out. */
size_t hft_engine_pending_events(const hft_engine *engine);

/* Best bid/ask and last trade. HFT_ENOENT for a symbol without a book. */
int hft_engine_top_of_book(const hft_engine *engine, uint32_t symbol_id, hft_top_of_book *out);

/* The best `max_levels` levels of one side (HFT_SIDE_*), best first. *n_out is
 * the number of levels the side has (only min(*n_out, max_levels) are written).
 * HFT_ENOENT unknown symbol, HFT_EINVAL bad side or NULL. */
int hft_engine_depth(const hft_engine *engine, uint32_t symbol_id, uint8_t side, hft_depth_level *out,
                     size_t max_levels, size_t *n_out);

/* Resting orders of one side in priority order (best level first, oldest
 * first), or with pending_stops != 0 the waiting stop orders of that side in
 * trigger order. *n_out is how many there are; min(*n_out, max_orders) are written. */
int hft_engine_book_orders(const hft_engine *engine, uint32_t symbol_id, uint8_t side, int pending_stops,
                           hft_order_info *out, size_t max_orders, size_t *n_out);

/* One live order by id. HFT_ENOENT when no live order has that id. */
int hft_engine_order_info(const hft_engine *engine, uint64_t order_id, hft_order_info *out);

/* Live orders in the engine (resting + pending stops). */
size_t hft_engine_live_orders(const hft_engine *engine);

/* Snapshot restore: put one resting limit order back exactly as it was, at the
 * back of its price level, without matching and without events. `c` gives
 * order_id, account_id, price, display_qty, symbol_id, side, flags and
 * stp_mode (the rest is ignored: a resting order is a GTC limit); visible_qty
 * and hidden_qty are its current shown slice and iceberg reserve, which
 * re-entering it as a NEW order could not reproduce once a slice was partly
 * filled. Restore a book's orders in the order hft_engine_book_orders lists
 * them and time priority is kept. HFT_EINVAL for a bad field, an unknown
 * symbol or a price that crosses the opposite side (a restored book never
 * crosses), HFT_EEXIST for a live order id, HFT_ENOMEM when the order pool or
 * the side's levels are full. */
int hft_engine_restore_resting(hft_engine *engine, const hft_order_command *c, int64_t visible_qty,
                               int64_t hidden_qty);

#endif /* HFT_ENGINE_H */
