/* Tests of the accounts' exposure update (native/include/hft_exposure.h): open lots per side,
 * open orders, and the refusals that change nothing, under the sanitizers. The differential test
 * against the Python it replaced is tests/services/execution/test_order_fold.py. */
#include <stdint.h>
#include <string.h>

#include "../include/hft_exposure.h"
#include "check.h"

enum { ROWS = 2, SYMBOLS = 3, ORDERS = 4 };

typedef struct fixture {
    int64_t open_buy[ROWS * SYMBOLS], open_sell[ROWS * SYMBOLS], open_orders[ROWS];
    uint64_t account_ids[2];
    int64_t account_rows[2];
    hft_order_row table[ORDERS];
    hft_exposure x;
} fixture;

static void setup(fixture *f) {
    memset(f, 0, sizeof *f);
    f->account_ids[0] = 7, f->account_rows[0] = 1; /* account 7 is row 1, account 9 row 0 */
    f->account_ids[1] = 9, f->account_rows[1] = 0;
    f->x = (hft_exposure){.open_buy = f->open_buy, .open_sell = f->open_sell, .open_orders = f->open_orders,
                          .rows = ROWS, .symbols = SYMBOLS, .account_ids = f->account_ids,
                          .account_rows = f->account_rows, .account_count = 2};
    for (int i = 0; i < ORDERS; i++) {
        f->table[i].account_id = i % 2 ? 9 : 7;
        f->table[i].symbol_id = 2;
        f->table[i].side = i < 2 ? HFT_SIDE_BUY : HFT_SIDE_SELL;
    }
}

static void test_open_lots_and_orders_follow_the_rows(void) {
    fixture f;
    setup(&f);
    f.table[0].status = HFT_FOLD_STATUS_NEW, f.table[0].leaves = 10;     /* became open */
    f.table[1].status = HFT_FOLD_STATUS_PARTIAL, f.table[1].leaves = 4;  /* 6 of 10 filled */
    f.table[2].status = HFT_FOLD_STATUS_FILLED, f.table[2].leaves = 0;   /* closed */
    f.table[3].status = HFT_FOLD_STATUS_PENDING, f.table[3].leaves = 5;  /* unchanged */
    int64_t slots[ORDERS] = {0, 1, 2, 3}, before[ORDERS] = {0, 10, 8, 5};
    f.open_orders[0] = 2, f.open_orders[1] = 1;
    CHECK_EQ_INT(hft_exposure_apply(&f.x, f.table, ORDERS, slots, before, ORDERS), HFT_OK);
    CHECK_EQ_INT(f.open_buy[1 * SYMBOLS + 2], 10); /* account 7 */
    CHECK_EQ_INT(f.open_buy[0 * SYMBOLS + 2], -6); /* account 9 */
    CHECK_EQ_INT(f.open_sell[1 * SYMBOLS + 2], -8);
    CHECK_EQ_INT(f.open_sell[0 * SYMBOLS + 2], 0);
    CHECK_EQ_INT(f.open_orders[1], 1 + 1 - 1);
    CHECK_EQ_INT(f.open_orders[0], 2);
}

static void test_refusals_change_nothing(void) {
    fixture f;
    setup(&f);
    f.table[0].status = HFT_FOLD_STATUS_NEW, f.table[0].leaves = 10;
    int64_t slots[2] = {0, 1}, before[2] = {0, 0};
    fixture untouched;
    f.table[1].account_id = 8; /* no row for it */
    memcpy(&untouched, &f, sizeof f);
    CHECK_EQ_INT(hft_exposure_apply(&f.x, f.table, ORDERS, slots, before, 2), HFT_ENOENT);
    f.table[1].account_id = 9;
    f.table[1].symbol_id = SYMBOLS;
    CHECK_EQ_INT(hft_exposure_apply(&f.x, f.table, ORDERS, slots, before, 2), HFT_EINVAL);
    f.table[1].symbol_id = 0;
    slots[1] = ORDERS;
    CHECK_EQ_INT(hft_exposure_apply(&f.x, f.table, ORDERS, slots, before, 2), HFT_EINVAL);
    slots[1] = 1;
    f.account_rows[1] = ROWS; /* a row past the arrays */
    CHECK_EQ_INT(hft_exposure_apply(&f.x, f.table, ORDERS, slots, before, 2), HFT_EINVAL);
    f.account_rows[1] = 0;
    f.account_ids[1] = 7; /* not ascending */
    CHECK_EQ_INT(hft_exposure_apply(&f.x, f.table, ORDERS, slots, before, 2), HFT_EINVAL);
    CHECK(memcmp(f.open_buy, untouched.open_buy, sizeof f.open_buy) == 0);
    CHECK(memcmp(f.open_orders, untouched.open_orders, sizeof f.open_orders) == 0);
    CHECK_EQ_INT(hft_exposure_apply(NULL, f.table, ORDERS, slots, before, 2), HFT_EINVAL);
}

static void test_sums_saturate_instead_of_wrapping(void) {
    fixture f;
    setup(&f);
    f.open_buy[1 * SYMBOLS + 2] = INT64_MAX - 1;
    f.table[0].status = HFT_FOLD_STATUS_NEW, f.table[0].leaves = INT64_MAX;
    int64_t slots[1] = {0}, before[1] = {INT64_MIN};
    CHECK_EQ_INT(hft_exposure_apply(&f.x, f.table, ORDERS, slots, before, 1), HFT_OK);
    CHECK(f.open_buy[1 * SYMBOLS + 2] == INT64_MAX);
}

int main(void) {
    RUN(test_open_lots_and_orders_follow_the_rows);
    RUN(test_refusals_change_nothing);
    RUN(test_sums_saturate_instead_of_wrapping);
    return TEST_SUMMARY("exposure");
}
