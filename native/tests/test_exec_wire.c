/* Tests of the ack and report wire encoder (native/include/hft_exec_wire.h). The expected bytes
 * are written out by hand from the protobuf encoding rules and execution.proto's field numbers;
 * tests/native/test_exec_wire.py compares against protobuf itself on random columns. */
#include <stdint.h>
#include <string.h>

#include "../include/hft_exec_wire.h"
#include "check.h"

static int bytes_equal(const uint8_t *got, size_t got_len, const uint8_t *want, size_t want_len) {
    if (got_len != want_len) {
        fprintf(stderr, "  length %zu, expected %zu\n", got_len, want_len);
        return 0;
    }
    for (size_t i = 0; i < got_len; i++) {
        if (got[i] != want[i]) {
            fprintf(stderr, "  byte %zu: 0x%02x, expected 0x%02x\n", i, got[i], want[i]);
            return 0;
        }
    }
    return 1;
}

/* Two acks: an accepted one with a few fields, a rejected one with a negative price (ten-byte
 * varint), its reason text and priority kept; every other field at its default. */
static int64_t action[2] = {1, 2};
static int64_t order_id[2] = {5, 0};
static int64_t sequence[2] = {300, 0};
static uint8_t status[2] = {2, 7};
static uint16_t reason[2] = {0, 130};
static int64_t price[2] = {0, -1};
static int64_t quantity[2] = {0, 0};
static int64_t leaves[2] = {0, 0};
static int64_t cum[2] = {0, 0};
static uint8_t kept[2] = {0, 1};
static int64_t client_lengths[2] = {2, 1};
static int64_t reason_lengths[2] = {0, 3};

static hft_ack_columns two_acks(void) {
    hft_ack_columns a = {
        .action = action,
        .order_id = order_id,
        .sequence = sequence,
        .status = status,
        .reason = reason,
        .price = price,
        .quantity = quantity,
        .leaves = leaves,
        .cum = cum,
        .priority_kept = kept,
        .client_ids = "abc",
        .client_id_lengths = client_lengths,
        .client_ids_size = 3,
        .reason_texts = "bad",
        .reason_text_lengths = reason_lengths,
        .reason_texts_size = 3,
        .received_ns = 0,
        .ack_ns = 1,
        .durable = 1,
    };
    return a;
}

static void test_acks_are_protobufs_bytes(void) {
    hft_ack_columns a = two_acks();
    uint8_t out[1024];
    size_t written = 0;
    CHECK_EQ_INT(hft_exec_wire_acks(&a, 2, 1, out, sizeof out, &written), HFT_OK);
    const uint8_t want[] = {
        /* acks[0]: key (1, LEN), length 17 */
        0x0a, 17,
        0x08, 1,              /* action 1 */
        0x12, 2, 'a', 'b',    /* client_order_id "ab" */
        0x18, 5,              /* order_id 5 */
        0x20, 0xac, 0x02,     /* sequence 300 */
        0x28, 1,              /* durable: sequence > 0 */
        0x30, 2,              /* status 2 */
        0x78, 1,              /* ack_ns 1 (field 15) */
        /* acks[1]: length 30 */
        0x0a, 30,
        0x08, 2,              /* action 2 */
        0x12, 1, 'c',         /* client_order_id "c" */
        0x30, 7,              /* status 7; no durable: sequence 0 */
        0x38, 0x82, 0x01,     /* reason 130 */
        0x42, 3, 'b', 'a', 'd', /* reason_text */
        0x48, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, /* price -1 */
        0x68, 1,              /* priority_kept */
        0x78, 1,              /* ack_ns */
    };
    CHECK(bytes_equal(out, written, want, sizeof want));
}

static void test_a_field_number_past_15_takes_a_two_byte_key(void) {
    hft_ack_columns a = two_acks();
    uint8_t out[1024];
    size_t written = 0;
    CHECK_EQ_INT(hft_exec_wire_acks(&a, 1, 16, out, sizeof out, &written), HFT_OK);
    CHECK_EQ_INT(out[0], 0x82); /* (16 << 3 | 2) = 130 as a varint */
    CHECK_EQ_INT(out[1], 0x01);
    CHECK_EQ_INT(out[2], 17);
    CHECK_EQ_INT(written, 3 + 17);
}

static void test_acks_refuse_what_does_not_fit(void) {
    hft_ack_columns a = two_acks();
    uint8_t out[1024];
    size_t written = 0;
    memset(out, 0xee, sizeof out);
    CHECK_EQ_INT(hft_exec_wire_acks(&a, 2, 1, out, 100, &written), HFT_ERANGE);
    CHECK_EQ_INT(written, 2 * HFT_EXEC_WIRE_ACK_FIXED_MAX_BYTES + 3 + 3);
    CHECK_EQ_INT(out[0], 0xee); /* nothing written */
    CHECK_EQ_INT(hft_exec_wire_acks(&a, 2, 0, out, sizeof out, &written), HFT_EINVAL);
    CHECK_EQ_INT(hft_exec_wire_acks(&a, 2, 1u << 29, out, sizeof out, &written), HFT_EINVAL);
    int64_t too_long[2] = {2, 2}; /* 4 bytes of a 3-byte text */
    a.client_id_lengths = too_long;
    CHECK_EQ_INT(hft_exec_wire_acks(&a, 2, 1, out, sizeof out, &written), HFT_EINVAL);
    int64_t negative[2] = {4, -1};
    a.client_id_lengths = negative;
    CHECK_EQ_INT(hft_exec_wire_acks(&a, 2, 1, out, sizeof out, &written), HFT_EINVAL);
    a = two_acks();
    a.status = NULL;
    CHECK_EQ_INT(hft_exec_wire_acks(&a, 2, 1, out, sizeof out, &written), HFT_EINVAL);
    CHECK_EQ_INT(out[0], 0xee);
    /* no acks: nothing to read, nothing written */
    hft_ack_columns none = {0};
    CHECK_EQ_INT(hft_exec_wire_acks(&none, 0, 1, NULL, 0, &written), HFT_OK);
    CHECK_EQ_INT(written, 0);
}

static const int64_t symbol_offsets[3] = {0, 3, 5}; /* "BTC", "EU" */
static const int64_t reason_offsets[3] = {0, 0, 2}; /* reason 0 "", reason 1 "no" */

static hft_report_texts texts_of(const int64_t *client_lengths_of_rows, size_t client_size) {
    hft_report_texts t = {
        .client_ids = "xyz",
        .client_id_lengths = client_lengths_of_rows,
        .client_ids_size = client_size,
        .symbols = "BTCEU",
        .symbol_offsets = symbol_offsets,
        .symbol_count = 2,
        .symbols_size = 5,
        .reason_texts = "no",
        .reason_offsets = reason_offsets,
        .reason_count = 2,
        .reason_texts_size = 2,
        .shard_base = 1ll << 48,
    };
    return t;
}

static void test_reports_are_protobufs_bytes(void) {
    hft_report_row rows[2];
    memset(rows, 0, sizeof rows);
    rows[0].sequence = 1;
    rows[0].order_id = 2;
    rows[0].symbol_id = 1;
    rows[0].trade_id = 3;
    rows[0].counterparty_order_id = -4; /* not above 0: no shard base */
    rows[0].liquidity = 1;
    rows[0].transact_ns = 9;
    rows[1].order_id = 1;
    rows[1].reason = 1;
    rows[1].status = 7;
    int64_t lengths[2] = {3, 0};
    hft_report_texts t = texts_of(lengths, 3);
    uint8_t out[1024];
    size_t written = 0;
    CHECK_EQ_INT(hft_exec_wire_reports(rows, 2, &t, 2, out, sizeof out, &written), HFT_OK);
    const uint8_t want[] = {
        /* executions[0]: key (2, LEN), length 45 */
        0x12, 45,
        0x08, 1,                                          /* sequence */
        0x20, 0x82, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40,   /* order_id 2 | 1 << 48 */
        0x2a, 3, 'x', 'y', 'z',                           /* client_order_id */
        0x32, 2, 'E', 'U',                                /* symbol 1 */
        0x78, 0x83, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40,   /* trade_id 3 | 1 << 48 (field 15) */
        0x80, 0x01, 1,                                    /* liquidity (field 16: two-byte key) */
        0x88, 0x01, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, /* counterparty -4 */
        0xa8, 0x01, 9,                                    /* transact_ns (field 21) */
        /* executions[1]: length 23 */
        0x12, 23,
        0x20, 0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40,   /* order_id 1 | 1 << 48 */
        0x32, 3, 'B', 'T', 'C',                           /* symbol 0 */
        0x40, 7,                                          /* status */
        0x90, 0x01, 1,                                    /* reason 1 (field 18) */
        0x9a, 0x01, 2, 'n', 'o',                          /* its text (field 19) */
    };
    CHECK(bytes_equal(out, written, want, sizeof want));
}

static void test_reports_refuse_bad_tables_and_unknown_symbols(void) {
    hft_report_row row;
    memset(&row, 0, sizeof row);
    row.order_id = 1;
    int64_t lengths[1] = {0};
    hft_report_texts t = texts_of(lengths, 0);
    uint8_t out[1024];
    size_t written = 0;
    memset(out, 0xee, sizeof out);
    row.symbol_id = 2; /* past the table */
    CHECK_EQ_INT(hft_exec_wire_reports(&row, 1, &t, 2, out, sizeof out, &written), HFT_EINVAL);
    row.symbol_id = 0;
    int64_t descending[3] = {0, 3, 1};
    t.symbol_offsets = descending;
    CHECK_EQ_INT(hft_exec_wire_reports(&row, 1, &t, 2, out, sizeof out, &written), HFT_EINVAL);
    int64_t past_text[3] = {0, 3, 6};
    t.symbol_offsets = past_text;
    CHECK_EQ_INT(hft_exec_wire_reports(&row, 1, &t, 2, out, sizeof out, &written), HFT_EINVAL);
    t = texts_of(lengths, 0);
    CHECK_EQ_INT(hft_exec_wire_reports(&row, 1, &t, 2, out, 10, &written), HFT_ERANGE);
    CHECK_EQ_INT(out[0], 0xee);
    /* a reason past the table: no text, the rest as usual */
    row.reason = 40;
    CHECK_EQ_INT(hft_exec_wire_reports(&row, 1, &t, 2, out, sizeof out, &written), HFT_OK);
    const uint8_t want[] = {0x12, 16, 0x20, 0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, /* order_id 1 | 1 << 48 */
                            0x32, 3, 'B', 'T', 'C', 0x90, 0x01, 40};
    CHECK(bytes_equal(out, written, want, sizeof want));
}

static void test_a_packed_column_is_protobufs_bytes(void) {
    const int64_t values[4] = {0, 1, 300, -1};
    uint8_t out[128];
    size_t written = 0;
    CHECK_EQ_INT(hft_exec_wire_packed(values, 4, 3, out, sizeof out, &written), HFT_OK);
    const uint8_t want[] = {
        0x1a, 14, /* key (3, LEN), 14 bytes of varints */
        0x00, 0x01, 0xac, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    };
    CHECK(bytes_equal(out, written, want, sizeof want));
    CHECK_EQ_INT(hft_exec_wire_packed(values, 0, 3, NULL, 0, &written), HFT_OK); /* empty: nothing */
    CHECK_EQ_INT(written, 0);
    memset(out, 0xee, sizeof out);
    CHECK_EQ_INT(hft_exec_wire_packed(values, 4, 3, out, 40, &written), HFT_ERANGE);
    CHECK_EQ_INT(written, HFT_EXEC_WIRE_PACKED_FIXED_MAX_BYTES + 40);
    CHECK_EQ_INT(out[0], 0xee);
    CHECK_EQ_INT(hft_exec_wire_packed(NULL, 4, 3, out, sizeof out, &written), HFT_EINVAL);
    CHECK_EQ_INT(hft_exec_wire_packed(values, 4, 0, out, sizeof out, &written), HFT_EINVAL);
}

int main(void) {
    RUN(test_acks_are_protobufs_bytes);
    RUN(test_a_field_number_past_15_takes_a_two_byte_key);
    RUN(test_acks_refuse_what_does_not_fit);
    RUN(test_reports_are_protobufs_bytes);
    RUN(test_reports_refuse_bad_tables_and_unknown_symbols);
    RUN(test_a_packed_column_is_protobufs_bytes);
    return TEST_SUMMARY("exec_wire");
}
