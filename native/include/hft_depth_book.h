/*
 * hft_depth_book.h -- price-level depth book of one (venue, symbol): total size per
 * price on each side, the market data service's book behind every depth feed.
 *
 * Layout: each side is one sorted array of prices and one of sizes, with the touch at
 * the END (bids ascending, asks descending) and free room at both ends: a level is found
 * by binary search and inserted or deleted by moving the shorter part of the side, so
 * levels near the touch (most diffs), levels beyond the far end (a snapshot listed
 * best-first) and trimming the far levels are all cheap. A side's part of an update
 * listed in price order (rising or falling, as venues send them) with at least 8 levels,
 * and at least one per 64 levels of the side, is merged in one pass instead (same result).
 * Prices compare as doubles (exactly, as the Python book's dict keys did).
 *
 * Levels arrive as arrays of (price, size) pairs: levels[i][0] is a price, levels[i][1]
 * its size. hft_depth_levels_check validates an update (the service's rules, in their
 * order); hft_depth_book_apply applies one already checked:
 *   - each bid level in order, then each ask level in order: size 0 deletes the level
 *     (absent is fine), any other size sets it;
 *   - newer information wins: a bid at a price the book did not have deletes every ask at
 *     or below it, a new ask every bid at or above it, so the book is never crossed;
 *   - then the farthest levels beyond max_levels_per_side are dropped on each side.
 *
 * Bounds: a side holds at most max_levels_per_side levels between updates, and at most
 * max_levels_per_side + max_update_levels while one is applied (both fixed at create).
 * Its arrays start empty and grow by doubling to at most 2 * (max_levels_per_side +
 * max_update_levels) slots (16 bytes each, 32 once a merge has needed the spare arrays
 * it writes into), so a book that sees no depth costs ~100 bytes. An update with more
 * than max_update_levels levels on a side is refused whole (HFT_ERANGE) before anything
 * changes.
 *
 * Ownership: hft_depth_book_create allocates, hft_depth_book_destroy frees. Out-arrays
 * belong to the caller.
 *
 * Concurrency: a book has one writer; no function here locks. Readers (best, top, levels,
 * counts) may run concurrently with each other, never with apply/clear on the same book.
 * Different books are independent. hft_depth_levels_check is pure.
 */
#ifndef HFT_DEPTH_BOOK_H
#define HFT_DEPTH_BOOK_H

#include "hft_common.h"

/* Sides. */
#define HFT_DEPTH_BID 0
#define HFT_DEPTH_ASK 1

/* What hft_depth_levels_check finds first (0 = acceptable), in the order checked. */
#define HFT_DEPTH_OK 0
#define HFT_DEPTH_NOT_FINITE 1    /* a price or size is NaN or infinite */
#define HFT_DEPTH_INVALID_PRICE 2 /* a price is <= 0 */
#define HFT_DEPTH_INVALID_SIZE 3  /* a size is < 0 (0 deletes a level) */
#define HFT_DEPTH_CROSSED 4       /* best bid of size > 0 >= best ask of size > 0 */

typedef struct hft_depth_book hft_depth_book;

/* A new empty book into *out. HFT_EINVAL when out is NULL or either bound is 0 or above
 * 2^26; HFT_ENOMEM when allocation fails. */
int hft_depth_book_create(uint32_t max_levels_per_side, uint32_t max_update_levels, hft_depth_book **out);

/* Frees the book; NULL is fine. */
void hft_depth_book_destroy(hft_depth_book *book);

/* Removes every level (a snapshot follows); keeps the arrays. */
void hft_depth_book_clear(hft_depth_book *book);

/* Which rule an update of n_bids bid and n_asks ask (price, size) pairs breaks first:
 * every number finite, then every price > 0, then every size >= 0, then not crossed
 * (HFT_DEPTH_* above). A NULL array is only valid with a count of 0. Pure. */
int hft_depth_levels_check(const double (*bids)[2], size_t n_bids, const double (*asks)[2], size_t n_asks);

/* Applies a checked update (see above). HFT_OK; HFT_EINVAL for a NULL book or a NULL
 * array with a non-zero count; HFT_ERANGE when a side has more than max_update_levels
 * levels; HFT_ENOMEM when an array could not grow. Nothing changes on an error. */
int hft_depth_book_apply(hft_depth_book *book, const double (*bids)[2], size_t n_bids, const double (*asks)[2],
                         size_t n_asks);

/* The best level of a side into *price and *size: HFT_OK, HFT_ENOENT when the side is
 * empty, HFT_EINVAL for a bad side or NULL pointer. */
int hft_depth_book_best(const hft_depth_book *book, int side, double *price, double *size);

/* Both touches at once, into top[0..3]: best bid price and size, best ask price and size.
 * HFT_OK; HFT_ENOENT when either side is empty (top unchanged); HFT_EINVAL for a NULL
 * pointer. */
int hft_depth_book_top(const hft_depth_book *book, double top[4]);

/* Up to max_levels levels of a side, best first, into prices[] and sizes[] (each room
 * for max_levels); the number written into *written. HFT_EINVAL for a bad side or a NULL
 * pointer (the arrays may be NULL when max_levels is 0). */
int hft_depth_book_levels(const hft_depth_book *book, int side, size_t max_levels, double *prices,
                          double *sizes, size_t *written);

/* Levels on each side. */
void hft_depth_book_counts(const hft_depth_book *book, size_t *bids, size_t *asks);

#endif /* HFT_DEPTH_BOOK_H */
