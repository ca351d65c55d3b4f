/* The accounts' exposure after order rows changed (see hft_exposure.h). */
#include "hft_exposure.h"

/* The row of account_id, or -1. */
static int64_t row_of(const hft_exposure *x, uint64_t account_id) {
    size_t low = 0, high = x->account_count;
    while (low < high) {
        size_t mid = low + (high - low) / 2;
        if (x->account_ids[mid] < account_id)
            low = mid + 1;
        else
            high = mid;
    }
    return low < x->account_count && x->account_ids[low] == account_id ? x->account_rows[low] : -1;
}

/* Sums of lots bounded at admission (hft_risk.h) cannot overflow; saturate rather than wrap
 * should that ever break. */
static int64_t add(int64_t a, int64_t b) {
    int64_t sum;
    if (!__builtin_add_overflow(a, b, &sum)) return sum;
    return b > 0 ? INT64_MAX : INT64_MIN;
}

static int64_t difference(int64_t a, int64_t b) {
    int64_t d;
    if (!__builtin_sub_overflow(a, b, &d)) return d;
    return b < 0 ? INT64_MAX : INT64_MIN;
}

int hft_exposure_apply(const hft_exposure *x, const hft_order_row *table, size_t table_len,
                       const int64_t *slots, const int64_t *before, size_t n) {
    if (x == NULL || (n && (table == NULL || slots == NULL || before == NULL))) return HFT_EINVAL;
    if (n && (x->open_buy == NULL || x->open_sell == NULL || x->open_orders == NULL ||
              (x->account_count && (x->account_ids == NULL || x->account_rows == NULL))))
        return HFT_EINVAL;
    for (size_t i = 1; i < x->account_count; i++)
        if (x->account_ids[i - 1] >= x->account_ids[i]) return HFT_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (slots[i] < 0 || (uint64_t)slots[i] >= table_len) return HFT_EINVAL;
        const hft_order_row *row = &table[slots[i]];
        if ((int64_t)row->symbol_id >= x->symbols) return HFT_EINVAL;
        const int64_t account_row = row_of(x, row->account_id);
        if (account_row < 0) return HFT_ENOENT;
        if (account_row >= x->rows) return HFT_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        const hft_order_row *row = &table[slots[i]];
        const int64_t now = hft_fold_is_open(row->status) ? row->leaves : 0, was = before[i];
        if (now == was) continue;
        const int64_t account_row = row_of(x, row->account_id);
        const int64_t cell = account_row * x->symbols + (int64_t)row->symbol_id;
        int64_t *side = row->side == HFT_SIDE_BUY ? x->open_buy : x->open_sell;
        side[cell] = add(side[cell], difference(now, was));
        x->open_orders[account_row] += (now > 0) - (was > 0);
    }
    return HFT_OK;
}
