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
    double bids[][2] = {{99.0, 1.0}, {100.0, 2.0}, {98.0, 3.0}};
    double asks[][2] = {{101.0, 1.0}, {103.0, 2.0}, {102.0, 5.0}};
    CHECK_EQ_INT(hft_depth_book_apply(book, bids, 3, asks, 3), HFT_OK);
    double p[8], s[8];
    CHECK_EQ_INT(levels(book, HFT_DEPTH_BID, p, s, 2), 2);
    CHECK(p[0] == 100.0 && s[0] == 2.0 && p[1] == 99.0 && s[1] == 1.0);
    CHECK_EQ_INT(levels(book, HFT_DEPTH_ASK, p, s, 8), 3);
    CHECK(p[0] == 101.0 && p[1] == 102.0 && s[1] == 5.0 && p[2] == 103.0);
    double del_bids[][2] = {{100.0, 0.0}, {99.0, 4.0}};
    double del_asks[][2] = {{101.0, 0.0}, {250.0, 0.0}}; /* deleting an absent level is fine */
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
    double bids[][2] = {{99.0, 1.0}};
    double asks[][2] = {{100.0, 1.0}, {101.0, 1.0}, {102.0, 1.0}};
    CHECK_EQ_INT(hft_depth_book_apply(book, bids, 1, asks, 3), HFT_OK);
    double cross[][2] = {{101.0, 7.0}};
    CHECK_EQ_INT(hft_depth_book_apply(book, cross, 1, NULL, 0), HFT_OK);
    double p[4], s[4];
    CHECK_EQ_INT(levels(book, HFT_DEPTH_ASK, p, s, 4), 1);
    CHECK(p[0] == 102.0);
    double low_ask[][2] = {{98.5, 2.0}};
    CHECK_EQ_INT(hft_depth_book_apply(book, NULL, 0, low_ask, 1), HFT_OK);
    CHECK_EQ_INT(levels(book, HFT_DEPTH_BID, p, s, 4), 0);
    /* An existing level changing size removes nothing on the other side. */
    double again[][2] = {{98.5, 3.0}};
    CHECK_EQ_INT(hft_depth_book_apply(book, NULL, 0, again, 1), HFT_OK);
    CHECK_EQ_INT(levels(book, HFT_DEPTH_ASK, p, s, 4), 2);
    hft_depth_book_destroy(book);
}

static void test_levels_beyond_the_limit_are_dropped_far_from_the_touch(void) {
    hft_depth_book *book = new_book(3, 100);
    double bids[10][2], asks[10][2];
    for (int i = 0; i < 10; i++) {
        bids[i][0] = 90.0 + i, bids[i][1] = 1.0;
        asks[i][0] = 101.0 + i, asks[i][1] = 1.0;
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
    double ok_bids[][2] = {{99.0, 1.0}, {100.0, 0.0}};
    double ok_asks[][2] = {{100.0, 1.0}};
    CHECK_EQ_INT(hft_depth_levels_check(ok_bids, 2, ok_asks, 1), HFT_DEPTH_OK); /* 100 bid has size 0 */
    double nan_size[][2] = {{99.0, NAN}};
    double bad_price[][2] = {{-1.0, 1.0}};
    CHECK_EQ_INT(hft_depth_levels_check(bad_price, 1, nan_size, 1), HFT_DEPTH_NOT_FINITE);
    double neg_size[][2] = {{99.0, -1.0}};
    CHECK_EQ_INT(hft_depth_levels_check(neg_size, 1, bad_price, 1), HFT_DEPTH_INVALID_PRICE);
    CHECK_EQ_INT(hft_depth_levels_check(neg_size, 1, NULL, 0), HFT_DEPTH_INVALID_SIZE);
    double inf_price[][2] = {{INFINITY, 1.0}};
    CHECK_EQ_INT(hft_depth_levels_check(NULL, 0, inf_price, 1), HFT_DEPTH_NOT_FINITE);
    double crossed_bid[][2] = {{100.0, 1.0}};
    CHECK_EQ_INT(hft_depth_levels_check(crossed_bid, 1, ok_asks, 1), HFT_DEPTH_CROSSED);
    CHECK_EQ_INT(hft_depth_levels_check(NULL, 1, NULL, 0), HFT_EINVAL);
}

static void test_bad_arguments_and_oversized_updates_change_nothing(void) {
    hft_depth_book *book = NULL;
    CHECK_EQ_INT(hft_depth_book_create(0, 10, &book), HFT_EINVAL);
    CHECK_EQ_INT(hft_depth_book_create(10, 10, NULL), HFT_EINVAL);
    book = new_book(4, 2);
    double three[][2] = {{1.0, 1.0}, {2.0, 1.0}, {3.0, 1.0}};
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

/* The book's levels on each side are the model's: the same sizes at the same prices, in
 * price order from the touch. */
static void check_book_is_model(hft_depth_book *book, const model *m) {
    for (int side = 0; side < 2; side++) {
        double p[MODEL_MAX], s[MODEL_MAX];
        size_t n = levels(book, side, p, s, MODEL_MAX);
        CHECK_EQ_INT(n, m->n[side]);
        for (size_t i = 0; i < n; i++) {
            int at = model_find(m, side, p[i]);
            CHECK(at >= 0 && m->s[side][at] == s[i]);
            if (i > 0) {
                CHECK(side == HFT_DEPTH_BID ? p[i] < p[i - 1] : p[i] > p[i - 1]);
            }
        }
    }
}

static void test_random_updates_agree_with_a_naive_model(void) {
    const size_t max_levels = 12;
    hft_depth_book *book = new_book((uint32_t)max_levels, 8);
    model m = {0};
    srand(7);
    for (int round = 0; round < 3000; round++) {
        double bids[8][2], asks[8][2];
        size_t nb = (size_t)(rand() % 9), na = (size_t)(rand() % 9);
        for (size_t i = 0; i < nb; i++) {
            bids[i][0] = 90.0 + rand() % 30 * 0.5;
            bids[i][1] = rand() % 3 == 0 ? 0.0 : 1.0 + rand() % 5;
        }
        for (size_t i = 0; i < na; i++) {
            asks[i][0] = 90.0 + rand() % 30 * 0.5;
            asks[i][1] = rand() % 3 == 0 ? 0.0 : 1.0 + rand() % 5;
        }
        if (rand() % 50 == 0) {
            hft_depth_book_clear(book);
            m.n[0] = m.n[1] = 0;
        }
        CHECK_EQ_INT(hft_depth_book_apply(book, bids, nb, asks, na), HFT_OK);
        for (size_t i = 0; i < nb; i++) {
            model_apply(&m, HFT_DEPTH_BID, bids[i][0], bids[i][1]);
        }
        for (size_t i = 0; i < na; i++) {
            model_apply(&m, HFT_DEPTH_ASK, asks[i][0], asks[i][1]);
        }
        model_trim(&m, max_levels);
        check_book_is_model(book, &m);
    }
    hft_depth_book_destroy(book);
}

/* Updates in price order, rising or falling, long enough to be merged into the side in one
 * pass, and short or unordered ones applied level by level, against the naive model. */
static void test_ordered_updates_merged_in_one_pass_agree_with_a_naive_model(void) {
    const size_t max_levels = 24;
    hft_depth_book *book = new_book((uint32_t)max_levels, 40);
    model m = {0};
    srand(18);
    for (int round = 0; round < 3000; round++) {
        double levels_of[2][40][2];
        size_t count[2];
        for (int side = 0; side < 2; side++) {
            /* Distinct prices on a 0.5 grid, then listed rising or falling (or, now and
             * then, as drawn); a third of the sizes delete. */
            size_t n = (size_t)(rand() % 41);
            double price = 80.0 + rand() % 20 * 0.5;
            for (size_t i = 0; i < n; i++) {
                levels_of[side][i][0] = price;
                levels_of[side][i][1] = rand() % 3 == 0 ? 0.0 : 1.0 + rand() % 5;
                price += 0.5 * (1 + rand() % 2);
            }
            int how = rand() % 5;
            for (size_t i = 0; how == 0 && i < n / 2; i++) { /* falling */
                for (int f = 0; f < 2; f++) {
                    double t = levels_of[side][i][f];
                    levels_of[side][i][f] = levels_of[side][n - 1 - i][f];
                    levels_of[side][n - 1 - i][f] = t;
                }
            }
            if (how == 1 && n > 2) { /* out of order: applied level by level */
                double t = levels_of[side][0][0];
                levels_of[side][0][0] = levels_of[side][1][0];
                levels_of[side][1][0] = t;
            }
            count[side] = n;
        }
        if (rand() % 40 == 0) {
            hft_depth_book_clear(book);
            m.n[0] = m.n[1] = 0;
        }
        CHECK_EQ_INT(hft_depth_book_apply(book, levels_of[0], count[0], levels_of[1], count[1]), HFT_OK);
        for (int side = 0; side < 2; side++) {
            for (size_t i = 0; i < count[side]; i++) {
                model_apply(&m, side, levels_of[side][i][0], levels_of[side][i][1]);
            }
        }
        model_trim(&m, max_levels);
        check_book_is_model(book, &m);
    }
    hft_depth_book_destroy(book);
}

/* Ordered updates with 2 to 16 levels of the side per level of the update, as a diff into a
 * full book has: merged a block of the side at a time (runs shorter and longer than a block,
 * the blocks reading past the touch), against the naive model. */
static void test_block_merges_agree_with_a_naive_model(void) {
    const size_t max_levels = 60;
    hft_depth_book *book = new_book((uint32_t)max_levels, 40);
    model m = {0};
    srand(1818);
    for (int round = 0; round < 3000; round++) {
        double levels_of[2][40][2];
        size_t count[2];
        for (int side = 0; side < 2; side++) {
            size_t n = 8 + (size_t)(rand() % 18);
            /* Bids below asks, so that the sides fill up rather than cross each other out. */
            double price = (side == HFT_DEPTH_BID ? 50.0 : 200.0) + rand() % 40 * 0.5;
            for (size_t i = 0; i < n; i++) {
                levels_of[side][i][0] = price;
                levels_of[side][i][1] = rand() % 4 == 0 ? 0.0 : 1.0 + rand() % 5;
                price += 0.5 * (1 + rand() % 12);
            }
            for (size_t i = 0; rand() % 2 == 0 && i < n / 2; i++) { /* falling, now and then */
                for (int f = 0; f < 2; f++) {
                    double t = levels_of[side][i][f];
                    levels_of[side][i][f] = levels_of[side][n - 1 - i][f];
                    levels_of[side][n - 1 - i][f] = t;
                }
            }
            count[side] = n;
        }
        if (rand() % 100 == 0) {
            hft_depth_book_clear(book);
            m.n[0] = m.n[1] = 0;
        }
        CHECK_EQ_INT(hft_depth_book_apply(book, levels_of[0], count[0], levels_of[1], count[1]), HFT_OK);
        for (int side = 0; side < 2; side++) {
            for (size_t i = 0; i < count[side]; i++) {
                model_apply(&m, side, levels_of[side][i][0], levels_of[side][i][1]);
            }
        }
        model_trim(&m, max_levels);
        check_book_is_model(book, &m);
    }
    hft_depth_book_destroy(book);
}

/* A merged update: new levels set, present ones resized or deleted, absent deletes ignored,
 * and its best new bid removes the asks it crosses. */
static void test_a_merged_update_sets_deletes_and_uncrosses(void) {
    hft_depth_book *book = new_book(100, 100);
    double asks[10][2];
    for (int i = 0; i < 10; i++) {
        asks[i][0] = 101.0 + i, asks[i][1] = 1.0;
    }
    CHECK_EQ_INT(hft_depth_book_apply(book, NULL, 0, asks, 10), HFT_OK);
    /* Falling bids, as venues list them: 102 is new and crosses the asks at 101 and 102. */
    double bids[][2] = {{102.0, 5.0}, {99.0, 1.0}, {98.0, 0.0}, {97.0, 2.0},
                        {96.0, 2.0},  {95.0, 2.0}, {94.0, 2.0}, {93.0, 2.0}};
    CHECK_EQ_INT(hft_depth_book_apply(book, bids, 8, NULL, 0), HFT_OK);
    double p[16], s[16];
    CHECK_EQ_INT(levels(book, HFT_DEPTH_BID, p, s, 16), 7);
    CHECK(p[0] == 102.0 && s[0] == 5.0 && p[1] == 99.0 && p[2] == 97.0 && p[6] == 93.0);
    CHECK_EQ_INT(levels(book, HFT_DEPTH_ASK, p, s, 16), 8);
    CHECK(p[0] == 103.0);
    /* Rising asks: 103 resized, 104 deleted, 150 absent and deleted, 120 new. */
    double more_asks[][2] = {{103.0, 9.0}, {104.0, 0.0}, {105.0, 1.0}, {106.0, 1.0},
                             {107.0, 1.0}, {108.0, 1.0}, {120.0, 4.0}, {150.0, 0.0}};
    CHECK_EQ_INT(hft_depth_book_apply(book, NULL, 0, more_asks, 8), HFT_OK);
    CHECK_EQ_INT(levels(book, HFT_DEPTH_ASK, p, s, 16), 8);
    CHECK(p[0] == 103.0 && s[0] == 9.0 && p[1] == 105.0 && p[6] == 110.0 && p[7] == 120.0 && s[7] == 4.0);
    CHECK_EQ_INT(levels(book, HFT_DEPTH_BID, p, s, 16), 7); /* no new ask crossed a bid */
    hft_depth_book_destroy(book);
}

static void test_top_gives_both_touches_or_nothing_while_a_side_is_empty(void) {
    hft_depth_book *book = new_book(10, 10);
    double top[4] = {-1.0, -1.0, -1.0, -1.0};
    CHECK_EQ_INT(hft_depth_book_top(book, top), HFT_ENOENT);
    double bids[][2] = {{99.0, 1.0}, {100.0, 2.0}};
    CHECK_EQ_INT(hft_depth_book_apply(book, bids, 2, NULL, 0), HFT_OK);
    CHECK_EQ_INT(hft_depth_book_top(book, top), HFT_ENOENT);
    CHECK(top[0] == -1.0 && top[3] == -1.0);
    double asks[][2] = {{102.0, 4.0}, {101.0, 3.0}};
    CHECK_EQ_INT(hft_depth_book_apply(book, NULL, 0, asks, 2), HFT_OK);
    CHECK_EQ_INT(hft_depth_book_top(book, top), HFT_OK);
    CHECK(top[0] == 100.0 && top[1] == 2.0 && top[2] == 101.0 && top[3] == 3.0);
    CHECK_EQ_INT(hft_depth_book_top(NULL, top), HFT_EINVAL);
    CHECK_EQ_INT(hft_depth_book_top(book, NULL), HFT_EINVAL);
    hft_depth_book_destroy(book);
}

int main(void) {
    RUN(test_set_delete_and_best_first);
    RUN(test_a_new_level_through_the_other_side_removes_stale_levels);
    RUN(test_levels_beyond_the_limit_are_dropped_far_from_the_touch);
    RUN(test_checks_follow_the_service_rules_in_order);
    RUN(test_bad_arguments_and_oversized_updates_change_nothing);
    RUN(test_random_updates_agree_with_a_naive_model);
    RUN(test_ordered_updates_merged_in_one_pass_agree_with_a_naive_model);
    RUN(test_block_merges_agree_with_a_naive_model);
    RUN(test_a_merged_update_sets_deletes_and_uncrosses);
    RUN(test_top_gives_both_touches_or_nothing_while_a_side_is_empty);
    return TEST_SUMMARY("depth_book");
}
