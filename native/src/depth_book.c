/* Price-level depth book (native/include/hft_depth_book.h). */
#include "hft_depth_book.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Bids ascending and asks descending: on both sides the touch is the last level and
 * the farthest level the first. The levels sit at [lo, lo + n) of arrays of cap slots,
 * with room at both ends: a level is inserted or deleted by moving whichever part of the
 * side is shorter, so a snapshot listed best-first (every level inserted at the far end),
 * a diff near the touch and a trim of the far levels are all cheap.
 *
 * A long update listed in price order (as venues send them) is merged instead: one pass
 * over the side into the spare arrays, which then become the side's. Level by level, each
 * of its levels spread through the book would move a quarter of the side on average. */
typedef struct {
    double *prices;
    double *sizes;
    double *spare_prices; /* cap slots once a merge has needed them, else NULL */
    double *spare_sizes;
    size_t lo;
    size_t n;
    size_t cap;
} depth_side;

struct hft_depth_book {
    depth_side side[2];
    size_t max_levels_per_side;
    size_t max_update_levels;
};

#define DEPTH_INITIAL_CAP 16
#define DEPTH_MAX_BOUND ((uint32_t)1 << 26)
/* A side's update is merged when it is in price order and has at least this many levels
 * and at least one per DEPTH_MERGE_SIDE_RATIO levels of the side: below that, moving the
 * levels it touches costs less than copying the whole side. Measured on the recorded Binance
 * diffs (1,000-level sides, diffs spread over the whole side): at one per 16, a diff of 30 to
 * 62 levels a side went level by level, each level moving a quarter of the side on average,
 * and took ~1.5x as long as the merge does (median of the 50-150-level updates 4.4 -> 3.0 us). */
#define DEPTH_MERGE_MIN_LEVELS 8
#define DEPTH_MERGE_SIDE_RATIO 64
/* Levels a merge compares and copies at a time; at most DEPTH_MERGE_MIN_LEVELS, the least room
 * a merge has past the end of its side and of its output. */
#define MERGE_BLOCK 8
_Static_assert(MERGE_BLOCK <= DEPTH_MERGE_MIN_LEVELS, "a merge's room past its ends is one block");

int hft_depth_book_create(uint32_t max_levels_per_side, uint32_t max_update_levels, hft_depth_book **out) {
    if (out == NULL || max_levels_per_side == 0 || max_update_levels == 0 ||
        max_levels_per_side > DEPTH_MAX_BOUND || max_update_levels > DEPTH_MAX_BOUND) {
        return HFT_EINVAL;
    }
    hft_depth_book *book = calloc(1, sizeof *book);
    if (book == NULL) {
        return HFT_ENOMEM;
    }
    book->max_levels_per_side = max_levels_per_side;
    book->max_update_levels = max_update_levels;
    *out = book;
    return HFT_OK;
}

void hft_depth_book_destroy(hft_depth_book *book) {
    if (book == NULL) {
        return;
    }
    for (int s = 0; s < 2; s++) {
        free(book->side[s].prices);
        free(book->side[s].sizes);
        free(book->side[s].spare_prices);
        free(book->side[s].spare_sizes);
    }
    free(book);
}

void hft_depth_book_clear(hft_depth_book *book) {
    if (book != NULL) {
        for (int s = 0; s < 2; s++) {
            book->side[s].n = 0;
            book->side[s].lo = book->side[s].cap / 2;
        }
    }
}

int hft_depth_levels_check(const double (*bids)[2], size_t n_bids, const double (*asks)[2], size_t n_asks) {
    if ((bids == NULL && n_bids > 0) || (asks == NULL && n_asks > 0)) {
        return HFT_EINVAL;
    }
    /* The rules in the service's order (every number finite, prices positive, sizes not
     * negative, then the best bid and ask of positive size must not cross), each over the
     * whole update: so one pass notes every rule broken and the first in that order wins. */
    int not_finite = 0, bad_price = 0, bad_size = 0;
    double best_bid = 0.0;
    double best_ask = INFINITY;
    /* No branch on the numbers: sizes of 0 (deletions) come in any order, and a branch on
     * them mispredicted often enough to cost more than the rest of the loop. */
    for (size_t i = 0; i < n_bids; i++) {
        double price = bids[i][0], size = bids[i][1];
        not_finite |= !isfinite(price) | !isfinite(size);
        bad_price |= price <= 0.0;
        bad_size |= size < 0.0;
        int better = (size > 0.0) & (price > best_bid);
        best_bid = better ? price : best_bid;
    }
    for (size_t i = 0; i < n_asks; i++) {
        double price = asks[i][0], size = asks[i][1];
        not_finite |= !isfinite(price) | !isfinite(size);
        bad_price |= price <= 0.0;
        bad_size |= size < 0.0;
        int better = (size > 0.0) & (price < best_ask);
        best_ask = better ? price : best_ask;
    }
    if (not_finite) {
        return HFT_DEPTH_NOT_FINITE;
    }
    if (bad_price) {
        return HFT_DEPTH_INVALID_PRICE;
    }
    if (bad_size) {
        return HFT_DEPTH_INVALID_SIZE;
    }
    return best_bid >= best_ask ? HFT_DEPTH_CROSSED : HFT_DEPTH_OK;
}

/* Makes room for `inserts` more levels at either end (so any sequence of that many inserts
 * fits), growing the arrays to at most `limit` levels of room per end plus the levels. */
static int side_reserve(depth_side *side, size_t inserts, size_t limit) {
    if (side->lo >= inserts && side->cap - side->lo - side->n >= inserts) {
        return HFT_OK;
    }
    size_t need = side->n + 2 * inserts;
    if (need > side->cap) {
        size_t cap = side->cap ? side->cap : DEPTH_INITIAL_CAP;
        while (cap < need) {
            cap *= 2;
        }
        if (cap > 2 * limit) {
            cap = 2 * limit;
        }
        double *prices = malloc(cap * sizeof *prices);
        double *sizes = malloc(cap * sizeof *sizes);
        if (prices == NULL || sizes == NULL) {
            free(prices);
            free(sizes);
            return HFT_ENOMEM;
        }
        size_t lo = (cap - side->n) / 2;
        if (side->n > 0) {
            memcpy(prices + lo, side->prices + side->lo, side->n * sizeof(double));
            memcpy(sizes + lo, side->sizes + side->lo, side->n * sizeof(double));
        }
        free(side->prices);
        free(side->sizes);
        free(side->spare_prices); /* sized for the old cap */
        free(side->spare_sizes);
        side->spare_prices = NULL;
        side->spare_sizes = NULL;
        side->prices = prices;
        side->sizes = sizes;
        side->cap = cap;
        side->lo = lo;
        return HFT_OK;
    }
    size_t lo = (side->cap - side->n) / 2;
    memmove(side->prices + lo, side->prices + side->lo, side->n * sizeof(double));
    memmove(side->sizes + lo, side->sizes + side->lo, side->n * sizeof(double));
    side->lo = lo;
    return HFT_OK;
}

/* Where price is, or would be inserted, keeping the side's order (relative to lo): the
 * first index whose price is not farther from the touch than price. A search whose steps
 * choose by a conditional move rather than a branch: each step's way is as likely as not,
 * so a branch mispredicted on every other step. */
static size_t side_find(const depth_side *side, double price, int is_ask) {
    size_t n = side->n;
    if (n == 0) {
        return 0;
    }
    const double *base = side->prices + side->lo;
    const double *first = base;
    while (n > 1) {
        size_t half = n / 2;
        int before = is_ask ? base[half - 1] > price : base[half - 1] < price;
        base = before ? base + half : base;
        n -= half;
    }
    int before = is_ask ? base[0] > price : base[0] < price;
    return (size_t)(base - first) + (size_t)before;
}

/* Sets (size > 0) or deletes (size == 0) one level; 1 when the price was new. The caller
 * reserved room for the insert at either end. */
static int side_apply(depth_side *side, double price, double size, int is_ask) {
    size_t i = side_find(side, price, is_ask);
    double *prices = side->prices + side->lo;
    double *sizes = side->sizes + side->lo;
    int present = i < side->n && prices[i] == price;
    if (size == 0.0) {
        if (present) {
            if (i < side->n - 1 - i) { /* close the gap from the far end */
                memmove(prices + 1, prices, i * sizeof(double));
                memmove(sizes + 1, sizes, i * sizeof(double));
                side->lo++;
            } else {
                memmove(prices + i, prices + i + 1, (side->n - i - 1) * sizeof(double));
                memmove(sizes + i, sizes + i + 1, (side->n - i - 1) * sizeof(double));
            }
            side->n--;
        }
        return 0;
    }
    if (present) {
        sizes[i] = size;
        return 0;
    }
    if (i < side->n - i && side->lo > 0) { /* open the gap towards the far end */
        memmove(prices - 1, prices, i * sizeof(double));
        memmove(sizes - 1, sizes, i * sizeof(double));
        side->lo--;
        prices--;
        sizes--;
    } else {
        memmove(prices + i + 1, prices + i, (side->n - i) * sizeof(double));
        memmove(sizes + i + 1, sizes + i, (side->n - i) * sizeof(double));
    }
    prices[i] = price;
    sizes[i] = size;
    side->n++;
    return 1;
}

/* 1 when the update's prices strictly rise, -1 when they strictly fall, else 0. */
static int levels_order(const double (*levels)[2], size_t k) {
    if (k < 2) {
        return 0;
    }
    int order = levels[1][0] > levels[0][0] ? 1 : levels[1][0] < levels[0][0] ? -1 : 0;
    for (size_t i = 2; order != 0 && i < k; i++) {
        double prev = levels[i - 1][0], price = levels[i][0];
        if (order > 0 ? !(price > prev) : !(price < prev)) {
            order = 0;
        }
    }
    return order;
}

/* Whether an update of k levels in the given order (levels_order) is merged into a side
 * of n levels. */
static int side_merges(const depth_side *side, size_t k, int order) {
    return order != 0 && k >= DEPTH_MERGE_MIN_LEVELS && k * DEPTH_MERGE_SIDE_RATIO >= side->n;
}

/* The spare arrays a merge writes into, cap slots each. The caller reserved first. */
static int side_reserve_spare(depth_side *side) {
    if (side->spare_prices != NULL) {
        return HFT_OK;
    }
    side->spare_prices = malloc(side->cap * sizeof(double));
    side->spare_sizes = malloc(side->cap * sizeof(double));
    if (side->spare_prices == NULL || side->spare_sizes == NULL) {
        free(side->spare_prices);
        free(side->spare_sizes);
        side->spare_prices = NULL;
        side->spare_sizes = NULL;
        return HFT_ENOMEM;
    }
    return HFT_OK;
}

/* Applies an update of k levels with strictly monotonic prices (order 1 rising, -1
 * falling) in one pass, as side_apply level by level would: no price repeats, so a level
 * is new exactly when the side lacks its price. The touch-most new price goes into
 * *touch_new; returns whether any level was new. The caller reserved room for k inserts
 * and the spare arrays. */
static int side_merge(depth_side *side, const double (*levels)[2], size_t k, int order, int is_ask,
                      double *touch_new) {
    /* The side runs far to touch: rising prices for bids, falling for asks. */
    int forward = (order > 0) != is_ask;
    const double *prices = side->prices + side->lo;
    const double *sizes = side->sizes + side->lo;
    size_t n = side->n;
    /* Room for a block past the end of the output too (k >= MERGE_BLOCK, and the caller
     * reserved k slots past the touch and k before the far end). */
    size_t lo = (side->cap - n - k - MERGE_BLOCK) / 2;
    double *out_prices = side->spare_prices + lo;
    double *out_sizes = side->spare_sizes + lo;
    size_t i = 0, out = 0;
    int any_new = 0;
    /* Where the side has at least two levels per level of the update (a diff into a full
     * book), the side's levels before each of the update's are copied a block at a time: how
     * many of the block come first is counted with no branch (the side is sorted, so they are
     * a prefix), the whole block copied, and the copy's end moved by that count. An element
     * loop ended on a mispredicted branch at nearly every level of the update: on the recorded
     * diffs that cost more than the copying itself. Blocks read past the touch into the room
     * reserved for inserts, where a price that no level passes ends every run. */
    int blocks = n >= 2 * k && n <= 16 * k; /* measured: beyond 16, runs span blocks too often */
    if (blocks) {
        double *room_prices = side->prices + side->lo + n, *room_sizes = side->sizes + side->lo + n;
        for (size_t b = 0; b < MERGE_BLOCK; b++) {
            room_prices[b] = is_ask ? -INFINITY : INFINITY;
            room_sizes[b] = 0.0;
        }
    }
    for (size_t step = 0; step < k; step++) {
        size_t j = forward ? step : k - 1 - step;
        double price = levels[j][0], size = levels[j][1];
        if (blocks) {
            size_t run;
            do {
                run = 0;
                for (size_t b = 0; b < MERGE_BLOCK; b++) {
                    run += (size_t)(is_ask ? prices[i + b] > price : prices[i + b] < price);
                }
                memcpy(out_prices + out, prices + i, MERGE_BLOCK * sizeof(double));
                memcpy(out_sizes + out, sizes + i, MERGE_BLOCK * sizeof(double));
                i += run;
                out += run;
            } while (run == MERGE_BLOCK);
        } else {
            while (i < n && (is_ask ? prices[i] > price : prices[i] < price)) {
                out_prices[out] = prices[i];
                out_sizes[out++] = sizes[i++];
            }
        }
        int present = i < n && prices[i] == price;
        if (present) {
            i++;
        }
        if (size != 0.0) {
            out_prices[out] = price;
            out_sizes[out++] = size;
            if (!present) {
                *touch_new = price;
                any_new = 1;
            }
        }
    }
    memcpy(out_prices + out, prices + i, (n - i) * sizeof(double));
    memcpy(out_sizes + out, sizes + i, (n - i) * sizeof(double));
    out += n - i;
    double *old_prices = side->prices, *old_sizes = side->sizes;
    side->prices = side->spare_prices;
    side->sizes = side->spare_sizes;
    side->spare_prices = old_prices;
    side->spare_sizes = old_sizes;
    side->lo = lo;
    side->n = out;
    return any_new;
}

/* The touch, the last level of a side. */
static double side_touch(const depth_side *side) {
    return side->prices[side->lo + side->n - 1];
}

static void side_trim(depth_side *side, size_t max_levels) {
    if (side->n > max_levels) {
        side->lo += side->n - max_levels;
        side->n = max_levels;
    }
}

int hft_depth_book_apply(hft_depth_book *book, const double (*bids)[2], size_t n_bids, const double (*asks)[2],
                         size_t n_asks) {
    if (book == NULL || (bids == NULL && n_bids > 0) || (asks == NULL && n_asks > 0)) {
        return HFT_EINVAL;
    }
    if (n_bids > book->max_update_levels || n_asks > book->max_update_levels) {
        return HFT_ERANGE;
    }
    depth_side *bid = &book->side[HFT_DEPTH_BID];
    depth_side *ask = &book->side[HFT_DEPTH_ASK];
    size_t limit = book->max_levels_per_side + book->max_update_levels;
    /* Room for every insert (and the spare arrays of a merge) first, so that nothing
     * changes when memory runs out. The bids' crossing can only shrink the asks, so the
     * asks' choice made before it merges no more than it allows. */
    int bid_order = levels_order(bids, n_bids);
    int ask_order = levels_order(asks, n_asks);
    int rc = side_reserve(bid, n_bids, limit);
    if (rc == HFT_OK) {
        rc = side_reserve(ask, n_asks, limit);
    }
    int bid_merges = side_merges(bid, n_bids, bid_order);
    int ask_merges = side_merges(ask, n_asks, ask_order);
    if (rc == HFT_OK && bid_merges) {
        rc = side_reserve_spare(bid);
    }
    if (rc == HFT_OK && ask_merges) {
        rc = side_reserve_spare(ask);
    }
    if (rc != HFT_OK) {
        return rc;
    }
    /* A new bid at p deletes every ask at or below p: the highest new bid decides. */
    double touch_new = 0.0;
    if (bid_merges) {
        if (side_merge(bid, bids, n_bids, bid_order, 0, &touch_new)) {
            while (ask->n > 0 && side_touch(ask) <= touch_new) {
                ask->n--;
            }
        }
    } else {
        for (size_t i = 0; i < n_bids; i++) {
            double price = bids[i][0];
            if (side_apply(bid, price, bids[i][1], 0)) {
                while (ask->n > 0 && side_touch(ask) <= price) {
                    ask->n--;
                }
            }
        }
    }
    if (ask_merges) {
        if (side_merge(ask, asks, n_asks, ask_order, 1, &touch_new)) {
            while (bid->n > 0 && side_touch(bid) >= touch_new) {
                bid->n--;
            }
        }
    } else {
        for (size_t i = 0; i < n_asks; i++) {
            double price = asks[i][0];
            if (side_apply(ask, price, asks[i][1], 1)) {
                while (bid->n > 0 && side_touch(bid) >= price) {
                    bid->n--;
                }
            }
        }
    }
    side_trim(bid, book->max_levels_per_side);
    side_trim(ask, book->max_levels_per_side);
    return HFT_OK;
}

int hft_depth_book_best(const hft_depth_book *book, int side, double *price, double *size) {
    if (book == NULL || (side != HFT_DEPTH_BID && side != HFT_DEPTH_ASK) || price == NULL || size == NULL) {
        return HFT_EINVAL;
    }
    const depth_side *s = &book->side[side];
    if (s->n == 0) {
        return HFT_ENOENT;
    }
    *price = s->prices[s->lo + s->n - 1];
    *size = s->sizes[s->lo + s->n - 1];
    return HFT_OK;
}

int hft_depth_book_top(const hft_depth_book *book, double top[4]) {
    if (book == NULL || top == NULL) {
        return HFT_EINVAL;
    }
    const depth_side *bid = &book->side[HFT_DEPTH_BID];
    const depth_side *ask = &book->side[HFT_DEPTH_ASK];
    if (bid->n == 0 || ask->n == 0) {
        return HFT_ENOENT;
    }
    top[0] = bid->prices[bid->lo + bid->n - 1];
    top[1] = bid->sizes[bid->lo + bid->n - 1];
    top[2] = ask->prices[ask->lo + ask->n - 1];
    top[3] = ask->sizes[ask->lo + ask->n - 1];
    return HFT_OK;
}

int hft_depth_book_levels(const hft_depth_book *book, int side, size_t max_levels, double *prices,
                          double *sizes, size_t *written) {
    if (book == NULL || (side != HFT_DEPTH_BID && side != HFT_DEPTH_ASK) || written == NULL ||
        (max_levels > 0 && (prices == NULL || sizes == NULL))) {
        return HFT_EINVAL;
    }
    const depth_side *s = &book->side[side];
    size_t count = s->n < max_levels ? s->n : max_levels;
    for (size_t i = 0; i < count; i++) {
        prices[i] = s->prices[s->lo + s->n - 1 - i];
        sizes[i] = s->sizes[s->lo + s->n - 1 - i];
    }
    *written = count;
    return HFT_OK;
}

void hft_depth_book_counts(const hft_depth_book *book, size_t *bids, size_t *asks) {
    if (bids != NULL) {
        *bids = book->side[HFT_DEPTH_BID].n;
    }
    if (asks != NULL) {
        *asks = book->side[HFT_DEPTH_ASK].n;
    }
}
