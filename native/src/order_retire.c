/* order_retire.c -- see hft_order_retire.h. */
#include "hft_order_retire.h"

#include <string.h>

/* Ids go to the index in chunks, so its batch remove can prefetch ahead within each. */
#define CHUNK 64

int hft_order_retire_rows(hft_client_ids *index, const hft_order_row *table, int64_t *slot_ids, char *id_rows,
                          size_t table_len, const int64_t *slots, size_t n, bool free_rows, size_t *removed) {
    if (removed) *removed = 0;
    if (n && (!index || !table || !slot_ids || !id_rows || !slots)) return HFT_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (slots[i] < 0 || (uint64_t)slots[i] >= table_len) return HFT_EINVAL;
    uint64_t accounts[CHUNK];
    int64_t lengths[CHUNK], order_ids[CHUNK];
    char text[CHUNK * HFT_CLIENT_ID_MAX];
    size_t total = 0;
    for (size_t start = 0; start < n; start += CHUNK) {
        const size_t end = n - start < CHUNK ? n : start + CHUNK;
        size_t count = 0, used = 0;
        for (size_t i = start; i < end; i++) {
            const size_t slot = (size_t)slots[i];
            const char *row = id_rows + slot * HFT_CLIENT_ID_MAX;
            const size_t length = strnlen(row, HFT_CLIENT_ID_MAX);
            if (!length) continue; /* no id (a free row, or one forgotten already) */
            memcpy(text + used, row, length);
            used += length;
            accounts[count] = table[slot].account_id;
            lengths[count] = (int64_t)length;
            order_ids[count] = slot_ids[slot];
            count++;
        }
        if (count) {
            size_t gone = 0;
            const int rc = hft_client_ids_remove(index, accounts, text, used, lengths, order_ids, count, &gone);
            if (rc != HFT_OK) return rc; /* (cannot happen: the lengths fit the text by construction) */
            total += gone;
        }
    }
    if (free_rows)
        for (size_t i = 0; i < n; i++) {
            const size_t slot = (size_t)slots[i];
            slot_ids[slot] = 0;
            memset(id_rows + slot * HFT_CLIENT_ID_MAX, 0, HFT_CLIENT_ID_MAX);
        }
    if (removed) *removed = total;
    return HFT_OK;
}
