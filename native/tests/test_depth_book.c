/* Tests of the price-level depth book (native/include/hft_depth_book.h). */
#include <math.h>
#include <stdlib.h>

#include "../include/hft_depth_book.h"
#include "check.h"

static hft_depth_book *new_book(uint32_t max_levels, uint32_t max_update) {
    hft_depth_book *book = NULL;
    int rc = hft_depth_book_create(max_levels, max_update, &book);
    CHECK_EQ_INT(rc, HFT_OK);
    return book;
}

static size_t levels(const hft_depth_book *book, int side, double *prices, double *sizes, size_t max) {
    size_t written = 0;
    CHECK_EQ_INT(hft_depth_book_levels(book, side, max, prices, sizes, &written), HFT_OK);
    return written;
}

static void test_set_delete_and_best_first(void) {
    hft_depth_book *book = new_book(10, 100);
    double bids[] = {99.0, 1.0, 100.0, 2.0, 98.0, 3.0};
    double asks[] = {101.0, 1.0, 103.0, 2.0, 102.0, 5.0};
    CHECK_EQ_INT(hft_depth_book_apply(book, bids, 3, asks, 3), HFT_OK);
    double p[8], s[8];
    CHECK_EQ_INT(levels(book, HFT_DEPTH_BID, p, s, 2), 2);
    CHECK(p[0] == 100.0 && s[0] == 2.0 && p[1] == 99.0 && s[1] == 1.0);
    CHECK_EQ_INT(levels(book, HFT_DEPTH_ASK, p, s, 8), 3);
    CHECK(p[0] == 101.0 && p[1] == 102.0 && s[1] == 5.0 && p[2] == 103.0);
    double del_bids[] = {100.0, 0.0, 99.0, 4.0};
    double del_asks[] = {101.0, 0.0, 250.0, 0.0}; /* deleting an absent level is fine */
    CHECK_EQ_INT(hft_depth_book_apply(book, del_bids, 2, del_asks, 2), HFT_OK);
    double price = 0, size = 0;
    CHECK_EQ_INT(hft_depth_book_best(book, HFT_DEPTH_BID, &price, &size), HFT_OK);
    CHECK(price == 99.0 && size == 4.0);
    CHECK_EQ_INT(hft_depth_book_best(book, HFT_DEPTH_ASK, &price, &size), HFT_OK);
    CHECK(price == 102.0 && size == 5.0);
    size_t nb = 0, na = 0;
    hft_depth_book_counts(book, &nb, &na);
    CHECK_EQ_INT(nb, 2);
    CHECK_EQ_INT(na, 2);
    hft_depth_book_clear(book);
    CHECK_EQ_INT(hft_depth_book_best(book, HFT_DEPTH_BID, &price, &size), HFT_ENOENT);
    hft_depth_book_destroy(book);
}

static void test_a_new_level_through_the_other_side_removes_stale_levels(void) {
    hft_depth_book *book = new_book(10, 100);
    double bids[] = {99.0, 1.0};
    double asks[] = {100.0, 1.0, 101.0, 1.0, 102.0, 1.0};
    CHECK_EQ_INT(hft_depth_book_apply(book, bids, 1, asks, 3), HFT_OK);
    double cross[] = {101.0, 7.0};
    CHECK_EQ_INT(hft_depth_book_apply(book, cross, 1, NULL, 0), HFT_OK);
    double p[4], s[4];
    CHECK_EQ_INT(levels(book, HFT_DEPTH_ASK, p, s, 4), 1);
    CHECK(p[0] == 102.0);
    double low_ask[] = {98.5, 2.0};
    CHECK_EQ_INT(hft_depth_book_apply(book, NULL, 0, low_ask, 1), HFT_OK);
    CHECK_EQ_INT(levels(book, HFT_DEPTH_BID, p, s, 4), 0);
    /* An existing level changing size removes nothing on the other side. */
    double again[] = {98.5, 3.0};
    CHECK_EQ_INT(hft_depth_book_apply(book, NULL, 0, again, 1), HFT_OK);
    CHECK_EQ_INT(levels(book, HFT_DEPTH_ASK, p, s, 4), 2);
    hft_depth_book_destroy(book);
}

static void test_levels_beyond_the_limit_are_dropped_far_from_the_touch(void) {
    hft_depth_book *book = new_book(3, 100);
    double bids[20], asks[20];
    for (int i = 0; i < 10; i++) {
        bids[2 * i] = 90.0 + i, bids[2 * i + 1] = 1.0;
        asks[2 * i] = 101.0 + i, asks[2 * i + 1] = 1.0;
    }
    CHECK_EQ_INT(hft_depth_book_apply(book, bids, 10, asks, 10), HFT_OK);
    double p[10], s[10];
    CHECK_EQ_INT(levels(book, HFT_DEPTH_BID, p, s, 10), 3);
    CHECK(p[0] == 99.0 && p[1] == 98.0 && p[2] == 97.0);
    CHECK_EQ_INT(levels(book, HFT_DEPTH_ASK, p, s, 10), 3);
    CHECK(p[0] == 101.0 && p[1] == 102.0 && p[2] == 103.0);
    hft_depth_book_destroy(book);
}

static void test_checks_follow_the_service_rules_in_order(void) {
    double ok_bids[] = {99.0, 1.0, 100.0, 0.0};
    double ok_asks[] = {100.0, 1.0};
    CHECK_EQ_INT(hft_depth_levels_check(ok_bids, 2, ok_asks, 1), HFT_DEPTH_OK); /* 100 bid has size 0 */
    double nan_size[] = {99.0, NAN};
    double bad_price[] = {-1.0, 1.0};
    CHECK_EQ_INT(hft_depth_levels_check(bad_price, 1, nan_size, 1), HFT_DEPTH_NOT_FINITE);
    double neg_size[] = {99.0, -1.0};
    CHECK_EQ_INT(hft_depth_levels_check(neg_size, 1, bad_price, 1), HFT_DEPTH_INVALID_PRICE);
    CHECK_EQ_INT(hft_depth_levels_check(neg_size, 1, NULL, 0), HFT_DEPTH_INVALID_SIZE);
    double inf_price[] = {INFINITY, 1.0};
    CHECK_EQ_INT(hft_depth_levels_check(NULL, 0, inf_price, 1), HFT_DEPTH_NOT_FINITE);
    double crossed_bid[] = {100.0, 1.0};
    CHECK_EQ_INT(hft_depth_levels_check(crossed_bid, 1, ok_asks, 1), HFT_DEPTH_CROSSED);
    CHECK_EQ_INT(hft_depth_levels_check(NULL, 1, NULL, 0), HFT_EINVAL);
}

static void test_bad_arguments_and_oversized_updates_change_nothing(void) {
    hft_depth_book *book = NULL;
    CHECK_EQ_INT(hft_depth_book_create(0, 10, &book), HFT_EINVAL);
    CHECK_EQ_INT(hft_depth_book_create(10, 10, NULL), HFT_EINVAL);
    book = new_book(4, 2);
    double three[] = {1.0, 1.0, 2.0, 1.0, 3.0, 1.0};
    CHECK_EQ_INT(hft_depth_book_apply(book, three, 3, NULL, 0), HFT_ERANGE);
    CHECK_EQ_INT(hft_depth_book_apply(book, NULL, 1, NULL, 0), HFT_EINVAL);
    size_t nb = 9, na = 9;
    hft_depth_book_counts(book, &nb, &na);
    CHECK_EQ_INT(nb, 0);
    CHECK_EQ_INT(na, 0);
    double price, size;
    CHECK_EQ_INT(hft_depth_book_best(book, 2, &price, &size), HFT_EINVAL);
    hft_depth_book_destroy(book);
    hft_depth_book_destroy(NULL);
}

/* A naive model (unsorted arrays, linear scans) against the book on random updates. */
#define MODEL_MAX 64
typedef struct {
    double p[2][MODEL_MAX * 2];
    double s[2][MODEL_MAX * 2];
    size_t n[2];
} model;

static int model_find(const model *m, int side, double price) {
    for (size_t i = 0; i < m->n[side]; i++) {
        if (m->p[side][i] == price) {
            return (int)i;
        }
    }
    return -1;
}

static void model_remove(model *m, int side, size_t i) {
    m->n[side]--;
    m->p[side][i] = m->p[side][m->n[side]];
    m->s[side][i] = m->s[side][m->n[side]];
}

static void model_apply(model *m, int side, double price, double size) {
    int i = model_find(m, side, price);
    if (size == 0.0) {
        if (i >= 0) {
            model_remove(m, side, (size_t)i);
        }
        return;
    }
    if (i >= 0) {
        m->s[side][i] = size;
        return;
    }
    m->p[side][m->n[side]] = price;
    m->s[side][m->n[side]] = size;
    m->n[side]++;
    int other = 1 - side;
    for (size_t j = 0; j < m->n[other];) {
        double q = m->p[other][j];
        if (side == HFT_DEPTH_BID ? q <= price : q >= price) {
            model_remove(m, other, j);
        } else {
            j++;
        }
    }
}

static void model_trim(model *m, size_t max) {
    for (int side = 0; side < 2; side++) {
        while (m->n[side] > max) {
            size_t far = 0;
            for (size_t i = 1; i < m->n[side]; i++) {
                if (side == HFT_DEPTH_BID ? m->p[side][i] < m->p[side][far] : m->p[side][i] > m->p[side][far]) {
                    far = i;
                }
            }
            model_remove(m, side, far);
        }
    }
}

static void test_random_updates_agree_with_a_naive_model(void) {
    const size_t max_levels = 12;
    hft_depth_book *book = new_book((uint32_t)max_levels, 8);
    model m = {0};
    srand(7);
    for (int round = 0; round < 3000; round++) {
        double bids[16], asks[16];
        size_t nb = (size_t)(rand() % 9), na = (size_t)(rand() % 9);
        for (size_t i = 0; i < nb; i++) {
            bids[2 * i] = 90.0 + rand() % 30 * 0.5;
            bids[2 * i + 1] = rand() % 3 == 0 ? 0.0 : 1.0 + rand() % 5;
        }
        for (size_t i = 0; i < na; i++) {
            asks[2 * i] = 90.0 + rand() % 30 * 0.5;
            asks[2 * i + 1] = rand() % 3 == 0 ? 0.0 : 1.0 + rand() % 5;
        }
        if (rand() % 50 == 0) {
            hft_depth_book_clear(book);
            m.n[0] = m.n[1] = 0;
        }
        CHECK_EQ_INT(hft_depth_book_apply(book, bids, nb, asks, na), HFT_OK);
        for (size_t i = 0; i < nb; i++) {
            model_apply(&m, HFT_DEPTH_BID, bids[2 * i], bids[2 * i + 1]);
        }
        for (size_t i = 0; i < na; i++) {
            model_apply(&m, HFT_DEPTH_ASK, asks[2 * i], asks[2 * i + 1]);
        }
        model_trim(&m, max_levels);
        for (int side = 0; side < 2; side++) {
            double p[MODEL_MAX], s[MODEL_MAX];
            size_t n = levels(book, side, p, s, MODEL_MAX);
            CHECK_EQ_INT(n, m.n[side]);
            for (size_t i = 0; i < n; i++) {
                int at = model_find(&m, side, p[i]);
                CHECK(at >= 0 && m.s[side][at] == s[i]);
                if (i > 0) {
                    CHECK(side == HFT_DEPTH_BID ? p[i] < p[i - 1] : p[i] > p[i - 1]);
                }
            }
        }
    }
    hft_depth_book_destroy(book);
}

int main(void) {
    RUN(test_set_delete_and_best_first);
    RUN(test_a_new_level_through_the_other_side_removes_stale_levels);
    RUN(test_levels_beyond_the_limit_are_dropped_far_from_the_touch);
    RUN(test_checks_follow_the_service_rules_in_order);
    RUN(test_bad_arguments_and_oversized_updates_change_nothing);
    RUN(test_random_updates_agree_with_a_naive_model);
    return TEST_SUMMARY("depth_book");
}
