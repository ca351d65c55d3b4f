/* Tests of order rows leaving the table (native/include/hft_order_retire.h) under the
 * sanitizers: ids forgotten only while they name the row's order, empty rows skipped, rows freed
 * on request, more rows than one chunk, and a bad slot that changes nothing. */
#include <stdio.h>
#include <string.h>

#include "../include/hft_order_retire.h"
#include "check.h"

enum { ROWS = 200 };

typedef struct fixture {
    hft_client_ids *index;
    hft_order_row table[ROWS];
    int64_t slot_ids[ROWS];
    char id_rows[ROWS * HFT_CLIENT_ID_MAX];
} fixture;

/* Row i holds order i + 1 of account i % 3, id "c<i>" indexed as that order. */
static void setup(fixture *f) {
    memset(f, 0, sizeof *f);
    CHECK_EQ_INT(hft_client_ids_new(16, &f->index), HFT_OK);
    for (int i = 0; i < ROWS; i++) {
        char *row = f->id_rows + (size_t)i * HFT_CLIENT_ID_MAX;
        int n = snprintf(row, HFT_CLIENT_ID_MAX, "c%d", i);
        uint64_t account = (uint64_t)(i % 3);
        int64_t length = n, order_id = i + 1;
        f->table[i].account_id = account;
        f->slot_ids[i] = order_id;
        CHECK_EQ_INT(hft_client_ids_add(f->index, &account, row, (size_t)n, &length, &order_id, 1), HFT_OK);
    }
}

static int64_t lookup(const fixture *f, int i) {
    char id[16];
    int n = snprintf(id, sizeof id, "c%d", i);
    return hft_client_ids_get(f->index, (uint64_t)(i % 3), id, (size_t)n);
}

static void test_ids_are_forgotten_and_rows_kept_unless_freed(void) {
    fixture f;
    setup(&f);
    const int64_t slots[3] = {4, 7, 4}; /* (a slot twice: the second finds its id gone) */
    size_t removed = 99;
    CHECK_EQ_INT(hft_order_retire_rows(f.index, f.table, f.slot_ids, f.id_rows, ROWS, slots, 3, false, &removed),
                 HFT_OK);
    CHECK_EQ_INT(removed, 2);
    CHECK_EQ_INT(lookup(&f, 4), 0);
    CHECK_EQ_INT(lookup(&f, 7), 0);
    CHECK_EQ_INT(lookup(&f, 5), 6);
    CHECK_EQ_INT(f.slot_ids[4], 5); /* not freed */
    CHECK(strcmp(f.id_rows + 4 * HFT_CLIENT_ID_MAX, "c4") == 0);
    hft_client_ids_free(f.index);
}

static void test_an_id_that_names_another_order_now_stays(void) {
    fixture f;
    setup(&f);
    f.slot_ids[9] = 500; /* the row's order is not the one its id names any more */
    const int64_t slot = 9;
    size_t removed = 99;
    CHECK_EQ_INT(hft_order_retire_rows(f.index, f.table, f.slot_ids, f.id_rows, ROWS, &slot, 1, true, &removed),
                 HFT_OK);
    CHECK_EQ_INT(removed, 0);
    CHECK_EQ_INT(lookup(&f, 9), 10);
    CHECK_EQ_INT(f.slot_ids[9], 0); /* freed all the same */
    CHECK(f.id_rows[9 * HFT_CLIENT_ID_MAX] == 0);
    hft_client_ids_free(f.index);
}

static void test_many_rows_in_chunks_are_all_forgotten_and_freed(void) {
    fixture f;
    setup(&f);
    int64_t slots[ROWS];
    for (int i = 0; i < ROWS; i++) slots[i] = ROWS - 1 - i;
    memset(f.id_rows + 50 * HFT_CLIENT_ID_MAX, 0, HFT_CLIENT_ID_MAX); /* a row with no id: skipped */
    size_t removed = 0;
    CHECK_EQ_INT(hft_order_retire_rows(f.index, f.table, f.slot_ids, f.id_rows, ROWS, slots, ROWS, true, &removed),
                 HFT_OK);
    CHECK_EQ_INT(removed, ROWS - 1);
    CHECK_EQ_INT(hft_client_ids_count(f.index), 1); /* c50's id, whose row had lost its text */
    for (int i = 0; i < ROWS; i++) CHECK(f.slot_ids[i] == 0 && f.id_rows[i * HFT_CLIENT_ID_MAX] == 0);
    hft_client_ids_free(f.index);
}

static void test_a_full_width_id_and_a_bad_slot(void) {
    fixture f;
    setup(&f);
    char *row = f.id_rows + 3 * HFT_CLIENT_ID_MAX; /* 64 bytes, no padding left */
    memset(row, 'z', HFT_CLIENT_ID_MAX);
    uint64_t account = 0;
    int64_t length = HFT_CLIENT_ID_MAX, order_id = 4;
    CHECK_EQ_INT(hft_client_ids_add(f.index, &account, row, HFT_CLIENT_ID_MAX, &length, &order_id, 1), HFT_OK);
    const int64_t bad[2] = {3, ROWS}, negative = -1, three = 3;
    size_t removed = 99;
    CHECK_EQ_INT(hft_order_retire_rows(f.index, f.table, f.slot_ids, f.id_rows, ROWS, bad, 2, true, &removed),
                 HFT_EINVAL);
    CHECK_EQ_INT(removed, 0);
    CHECK_EQ_INT(hft_order_retire_rows(f.index, f.table, f.slot_ids, f.id_rows, ROWS, &negative, 1, true, NULL),
                 HFT_EINVAL);
    CHECK_EQ_INT(f.slot_ids[3], 4); /* nothing changed */
    CHECK_EQ_INT(hft_client_ids_get(f.index, 0, row, HFT_CLIENT_ID_MAX), 4);
    CHECK_EQ_INT(hft_order_retire_rows(f.index, f.table, f.slot_ids, f.id_rows, ROWS, &three, 1, true, &removed),
                 HFT_OK);
    CHECK_EQ_INT(removed, 1);
    CHECK_EQ_INT(hft_client_ids_get(f.index, 0, "zzzz", 4), 0);
    CHECK_EQ_INT(hft_order_retire_rows(NULL, NULL, NULL, NULL, 0, NULL, 0, true, NULL), HFT_OK); /* nothing */
    hft_client_ids_free(f.index);
}

int main(void) {
    RUN(test_ids_are_forgotten_and_rows_kept_unless_freed);
    RUN(test_an_id_that_names_another_order_now_stays);
    RUN(test_many_rows_in_chunks_are_all_forgotten_and_freed);
    RUN(test_a_full_width_id_and_a_bad_slot);
    return TEST_SUMMARY("order_retire");
}
