/*
 * hft_exposure.h -- the accounts' open lots per symbol and side, and open orders, after order
 * rows changed: for each changed row, its open lots now (its leaves while NEW, PENDING_TRIGGER or
 * PARTIALLY_FILLED, else 0) minus what it had open before, added to its account's and symbol's
 * side; its account's open orders count +1 when it became open, -1 when it stopped being open.
 * What the position and open-order limits (hft_risk.h) compare with.
 *
 * Why in C: after every batch, for every order the batch touched (a 10,000-order batch touches
 * ~15,000); numpy's scatter-add (np.add.at) and a row-by-row Python twin for small batches
 * cost ~0.3 us an order.
 *
 * Accounts are the service's account ids, mapped to rows of the arrays by a sorted table
 * (account_ids ascending, account_rows beside them). Every row, account and symbol is checked
 * before anything is written: HFT_EINVAL (a slot past the table, a symbol past the arrays, an
 * account row past them, an unsorted map) or HFT_ENOENT (an account the map does not have)
 * change nothing.
 *
 * Ownership: every pointer belongs to the caller and is used only during the call.
 * Concurrency: none; the caller owns the arrays.
 */
#ifndef HFT_EXPOSURE_H
#define HFT_EXPOSURE_H

#include <stddef.h>
#include <stdint.h>

#include "hft_common.h"
#include "hft_order_fold.h"

typedef struct hft_exposure {
    int64_t *open_buy;    /* rows x symbols, row-major */
    int64_t *open_sell;   /* rows x symbols */
    int64_t *open_orders; /* rows */
    int64_t rows;
    int64_t symbols;
    const uint64_t *account_ids; /* ascending */
    const int64_t *account_rows; /* the row of account_ids[i] */
    size_t account_count;
} hft_exposure;

/* Apply the change of table rows slots[0, n) whose open lots were before[i] (see above). */
int hft_exposure_apply(const hft_exposure *exposure, const hft_order_row *table, size_t table_len,
                       const int64_t *slots, const int64_t *before, size_t n);

#endif /* HFT_EXPOSURE_H */
