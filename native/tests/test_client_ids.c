/* Tests of the client order id index (native/include/hft_client_ids.h) under the sanitizers:
 * growth, deletion inside probe runs, batch checks and refusals. The model-based test is
 * tests/native/test_client_ids.py. */
#include <stdio.h>
#include <string.h>

#include "../include/hft_client_ids.h"
#include "check.h"

enum { MANY = 3000 };

static void test_many_ids_survive_growth_and_removals(void) {
    hft_client_ids *index = NULL;
    CHECK_EQ_INT(hft_client_ids_new(1, &index), HFT_OK);
    static char text[MANY * 8];
    static int64_t lengths[MANY], order_ids[MANY];
    static uint64_t accounts[MANY];
    size_t offset = 0;
    for (int i = 0; i < MANY; i++) {
        int n = snprintf(text + offset, 8, "o%d", i);
        lengths[i] = n;
        order_ids[i] = i + 1;
        accounts[i] = (uint64_t)(i % 3);
        offset += (size_t)n;
    }
    CHECK_EQ_INT(hft_client_ids_add(index, accounts, text, offset, lengths, order_ids, MANY), HFT_OK);
    CHECK_EQ_INT(hft_client_ids_count(index), MANY);
    CHECK_EQ_INT(hft_client_ids_get(index, 1, "o1", 2), 2);
    CHECK_EQ_INT(hft_client_ids_get(index, 0, "o1", 2), 0); /* another account's */
    /* Remove every other id (half of them with a stale order id: those stay). */
    size_t removed = 0;
    for (int i = 0; i < MANY; i += 2) order_ids[i] = i % 4 ? i + 1 : i + 2;
    CHECK_EQ_INT(hft_client_ids_remove(index, accounts, text, offset, lengths, order_ids, MANY, &removed), HFT_OK);
    CHECK_EQ_INT(removed, MANY - MANY / 4);
    offset = 0;
    for (int i = 0; i < MANY; i++) {
        int64_t expected = (i % 2 == 0 && i % 4 == 0) ? i + 1 : 0;
        CHECK_EQ_INT(hft_client_ids_get(index, accounts[i], text + offset, (size_t)lengths[i]), expected);
        offset += (size_t)lengths[i];
    }
    /* Add them all again (freed key records are reused, the arena grows for the rest), then clear. */
    for (int i = 0; i < MANY; i++) order_ids[i] = MANY + i + 1;
    CHECK_EQ_INT(hft_client_ids_add(index, accounts, text, offset, lengths, order_ids, MANY), HFT_OK);
    CHECK_EQ_INT(hft_client_ids_count(index), MANY);
    CHECK_EQ_INT(hft_client_ids_get(index, 1, "o1", 2), MANY + 2);
    CHECK_EQ_INT(hft_client_ids_get(index, 0, "o0", 2), MANY + 1);
    hft_client_ids_clear(index);
    CHECK_EQ_INT(hft_client_ids_count(index), 0);
    CHECK_EQ_INT(hft_client_ids_get(index, 1, "o1", 2), 0);
    CHECK_EQ_INT(hft_client_ids_add(index, accounts, text, offset, lengths, order_ids, MANY), HFT_OK);
    CHECK_EQ_INT(hft_client_ids_get(index, 2, "o2", 2), MANY + 3);
    hft_client_ids_free(index);
}

static void test_a_batch_check_says_which_ids_fail(void) {
    hft_client_ids *index = NULL;
    CHECK_EQ_INT(hft_client_ids_new(4, &index), HFT_OK);
    const uint64_t account = 7;
    const int64_t one = 1, two = 2;
    CHECK_EQ_INT(hft_client_ids_add(index, &account, "ab", 2, &two, &one, 1), HFT_OK);
    /* "x", "ab" (known), "x" (repeated), "" (empty), "\t" (not printable), "ok" */
    const char *text = "xabx\tok";
    const int64_t lengths[6] = {1, 2, 1, 0, 1, 2};
    uint8_t states[6];
    int all_ok = 1;
    CHECK_EQ_INT(hft_client_ids_check(index, account, text, strlen(text), lengths, 6, states, &all_ok), HFT_OK);
    CHECK_EQ_INT(all_ok, 0);
    const uint8_t expected[6] = {HFT_RISK_ID_OK, HFT_RISK_ID_USED, HFT_RISK_ID_USED,
                                 HFT_RISK_ID_INVALID, HFT_RISK_ID_INVALID, HFT_RISK_ID_OK};
    for (int i = 0; i < 6; i++) CHECK_EQ_INT(states[i], expected[i]);
    CHECK_EQ_INT(hft_client_ids_check(index, 8, text, strlen(text), lengths, 1, states, &all_ok), HFT_OK);
    CHECK_EQ_INT(all_ok, 1);
    /* Refusals: lengths past the text, a negative length, an invalid id to add. */
    const int64_t long_length = 9, negative = -1;
    CHECK_EQ_INT(hft_client_ids_check(index, account, "ab", 2, &long_length, 1, states, &all_ok), HFT_EINVAL);
    CHECK_EQ_INT(hft_client_ids_check(index, account, "ab", 2, &negative, 1, states, &all_ok), HFT_EINVAL);
    const int64_t zero = 0;
    CHECK_EQ_INT(hft_client_ids_add(index, &account, "", 0, &zero, &one, 1), HFT_EINVAL);
    CHECK_EQ_INT(hft_client_ids_count(index), 1);
    hft_client_ids_free(index);
}

/* Ids into zero-padded fixed-width rows and back: a full 64-byte row, an empty row, refusals. */
static void test_ids_into_rows_and_back(void) {
    char text[2 + HFT_CLIENT_ID_MAX];
    memcpy(text, "ab", 2);
    memset(text + 2, 'z', HFT_CLIENT_ID_MAX);
    const int64_t lengths[3] = {2, 0, HFT_CLIENT_ID_MAX};
    char rows[3 * HFT_CLIENT_ID_MAX];
    memset(rows, 'x', sizeof rows);
    CHECK_EQ_INT(hft_client_ids_to_rows(text, sizeof text, lengths, 3, rows), HFT_OK);
    CHECK(memcmp(rows, "ab", 2) == 0);
    for (int i = 2; i < 2 * HFT_CLIENT_ID_MAX; i++) CHECK_EQ_INT(rows[i], 0); /* padding, then the empty row */
    CHECK(memcmp(rows + 2 * HFT_CLIENT_ID_MAX, text + 2, HFT_CLIENT_ID_MAX) == 0);
    char back[2 + HFT_CLIENT_ID_MAX];
    int64_t back_lengths[3];
    size_t written = 0;
    CHECK_EQ_INT(hft_client_ids_from_rows(rows, 3, back, sizeof back, back_lengths, &written), HFT_OK);
    CHECK_EQ_INT(written, sizeof text);
    CHECK(memcmp(back, text, sizeof text) == 0);
    CHECK_EQ_INT(back_lengths[0], 2);
    CHECK_EQ_INT(back_lengths[1], 0);
    CHECK_EQ_INT(back_lengths[2], HFT_CLIENT_ID_MAX);
    CHECK_EQ_INT(hft_client_ids_from_rows(rows, 3, back, sizeof back - 1, back_lengths, &written), HFT_ERANGE);
    const int64_t too_long[1] = {HFT_CLIENT_ID_MAX + 1};
    CHECK_EQ_INT(hft_client_ids_to_rows(text, HFT_CLIENT_ID_MAX + 1, too_long, 1, rows), HFT_EINVAL);
    const int64_t short_of_text[1] = {1};
    CHECK_EQ_INT(hft_client_ids_to_rows(text, 2, short_of_text, 1, rows), HFT_EINVAL);
    const int64_t negative[2] = {3, -1};
    CHECK_EQ_INT(hft_client_ids_to_rows(text, 2, negative, 2, rows), HFT_EINVAL);
}

int main(void) {
    RUN(test_many_ids_survive_growth_and_removals);
    RUN(test_a_batch_check_says_which_ids_fail);
    RUN(test_ids_into_rows_and_back);
    return TEST_SUMMARY("client_ids");
}
