/* book_side.c -- sorted price-level arrays and the FIFO queue of a level. See hft_book_internal.h. */
#include <stdlib.h>
#include <string.h>

#include "hft_book_internal.h"

int hft_book_side_init(hft_book_side *side, uint32_t capacity, int64_t key_sign)
{
    side->keys = malloc(sizeof(*side->keys) * capacity);
    side->levels = malloc(sizeof(*side->levels) * capacity);
    side->count = 0;
    side->capacity = capacity;
    side->key_sign = key_sign;
    if (side->keys == NULL || side->levels == NULL) {
        hft_book_side_free(side);
        return HFT_ENOMEM;
    }
    return HFT_OK;
}

void hft_book_side_free(hft_book_side *side)
{
    free(side->keys);
    free(side->levels);
    side->keys = NULL;
    side->levels = NULL;
    side->count = 0;
}

/* First position whose key is >= key (the insertion point). */
static uint32_t lower_bound(const hft_book_side *side, int64_t key)
{
    uint32_t lo = 0;
    uint32_t hi = side->count;
    /* Activity clusters at the top of the book, which is the end of the array:
     * check there before searching the whole range. */
    if (hi > 0 && side->keys[hi - 1] < key) {
        return hi;
    }
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (side->keys[mid] < key) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

hft_level *hft_book_side_find(const hft_book_side *side, int64_t price)
{
    int64_t key = price * side->key_sign;
    uint32_t pos = lower_bound(side, key);
    if (pos < side->count && side->keys[pos] == key) {
        return side->levels[pos];
    }
    return NULL;
}

hft_level *hft_book_side_get_or_add(hft_book_side *side, hft_pool *level_pool, int64_t price)
{
    int64_t key = price * side->key_sign;
    uint32_t pos = lower_bound(side, key);
    if (pos < side->count && side->keys[pos] == key) {
        return side->levels[pos];
    }
    if (side->count == side->capacity) {
        return NULL;
    }
    hft_level *level = hft_pool_acquire(level_pool);
    if (level == NULL) {
        return NULL;
    }
    level->price = price;
    level->total_qty = 0;
    level->order_count = 0;
    level->head = NULL;
    level->tail = NULL;
    uint32_t tail_len = side->count - pos;
    memmove(&side->keys[pos + 1], &side->keys[pos], sizeof(*side->keys) * tail_len);
    memmove(&side->levels[pos + 1], &side->levels[pos], sizeof(*side->levels) * tail_len);
    side->keys[pos] = key;
    side->levels[pos] = level;
    side->count++;
    return level;
}

void hft_book_side_remove(hft_book_side *side, hft_pool *level_pool, hft_level *level)
{
    uint32_t pos = lower_bound(side, level->price * side->key_sign);
    uint32_t tail_len = side->count - pos - 1;
    memmove(&side->keys[pos], &side->keys[pos + 1], sizeof(*side->keys) * tail_len);
    memmove(&side->levels[pos], &side->levels[pos + 1], sizeof(*side->levels) * tail_len);
    side->count--;
    hft_pool_release(level_pool, level);
}

void hft_level_push_back(hft_level *level, hft_order *order)
{
    order->level = level;
    order->next = NULL;
    order->prev = level->tail;
    if (level->tail != NULL) {
        level->tail->next = order;
    } else {
        level->head = order;
    }
    level->tail = order;
    level->order_count++;
    level->total_qty += order->visible_qty;
}

void hft_level_unlink(hft_level *level, hft_order *order)
{
    if (order->prev != NULL) {
        order->prev->next = order->next;
    } else {
        level->head = order->next;
    }
    if (order->next != NULL) {
        order->next->prev = order->prev;
    } else {
        level->tail = order->prev;
    }
    order->prev = NULL;
    order->next = NULL;
    order->level = NULL;
    level->order_count--;
    level->total_qty -= order->visible_qty;
}
