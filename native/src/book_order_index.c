/* book_order_index.c -- order id -> live order record. See hft_book_internal.h. */
#include <stdlib.h>

#include "hft_book_internal.h"

/* Bytes between two writes that fault the table in: the smallest page size. */
#define HFT_ORDER_INDEX_TOUCH_STRIDE 4096u

/* Clients count their order ids up, and the orders a book is busy with (just
 * added, about to be cancelled) have ids close to each other. Keeping
 * consecutive ids in consecutive slots makes those lookups hit cache lines
 * already in cache, where a scattering hash costs a cache miss per lookup (half
 * of all matching time in the benchmark). The bits above the table size are
 * mixed in (times 2^64/phi, a bijection on the slot bits), so ids that differ
 * only there -- per-session id ranges, exchange ids -- do not pile up. */
static inline uint64_t slot_of(const hft_order_index *index, uint64_t order_id)
{
    return (order_id + (order_id >> index->bits) * 0x9E3779B97F4A7C15ull) & index->mask;
}

int hft_order_index_init(hft_order_index *index, uint64_t max_orders)
{
    /* At least twice the live orders, so the table is at most half full. */
    uint32_t bits = 4;
    while ((1ull << bits) < 2 * max_orders) {
        bits++;
    }
    /* Zeroed, then every page written through a volatile pointer: consecutive
     * order ids walk consecutive slots, so a lazily zeroed table would fault its
     * pages in one by one over the first 2 x max_orders ids -- resident memory
     * creeping up ~16 bytes an order for millions of orders, and a page fault on
     * the order path every 256 ids. Touching it all now makes the table's memory
     * resident, and bounded, from the start. (A plain malloc + memset is not
     * enough: compilers fold it back into a calloc, which maps zero pages lazily.) */
    size_t bytes = ((size_t)1 << bits) * sizeof(*index->slots);
    index->slots = calloc((size_t)1 << bits, sizeof(*index->slots));
    if (index->slots == NULL) {
        return HFT_ENOMEM;
    }
    volatile unsigned char *touch = (volatile unsigned char *)index->slots;
    for (size_t offset = 0; offset < bytes; offset += HFT_ORDER_INDEX_TOUCH_STRIDE) {
        touch[offset] = 0;
    }
    index->mask = (1ull << bits) - 1;
    index->bits = bits;
    return HFT_OK;
}

void hft_order_index_free(hft_order_index *index)
{
    free(index->slots);
    index->slots = NULL;
}

hft_order *hft_order_index_get(const hft_order_index *index, uint64_t order_id)
{
    uint64_t i = slot_of(index, order_id);
    for (;;) {
        const hft_order_index_slot *slot = &index->slots[i];
        if (slot->order_id == order_id) {
            return slot->order;
        }
        if (slot->order_id == 0) {
            return NULL;
        }
        i = (i + 1) & index->mask;
    }
}

void hft_order_index_put(hft_order_index *index, hft_order *order)
{
    uint64_t i = slot_of(index, order->order_id);
    while (index->slots[i].order_id != 0) {
        i = (i + 1) & index->mask;
    }
    index->slots[i].order_id = order->order_id;
    index->slots[i].order = order;
}

void hft_order_index_remove(hft_order_index *index, uint64_t order_id)
{
    uint64_t i = slot_of(index, order_id);
    while (index->slots[i].order_id != order_id) {
        if (index->slots[i].order_id == 0) {
            return;
        }
        i = (i + 1) & index->mask;
    }
    /* Backward shift: pull later entries of the probe run into the hole when
     * the hole lies between their home slot and where they sit. */
    uint64_t hole = i;
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & index->mask;
        if (index->slots[j].order_id == 0) {
            break;
        }
        uint64_t home = slot_of(index, index->slots[j].order_id);
        if (((j - home) & index->mask) >= ((j - hole) & index->mask)) {
            index->slots[hole] = index->slots[j];
            hole = j;
        }
    }
    index->slots[hole].order_id = 0;
    index->slots[hole].order = NULL;
}
