/* Tests of the new order wire decoder (native/include/hft_order_wire.h). The messages are
 * written out by hand from the protobuf encoding rules and execution.proto's field numbers;
 * tests/native/test_order_wire.py compares against protobuf itself on random and corrupted
 * messages. */
#include <stdint.h>
#include <string.h>

#include "../include/hft_order_wire.h"
#include "check.h"

static hft_new_order_row rows[8];
static uint8_t symbol_index[8];
static char client_ids[256];
static char symbols[HFT_ORDER_WIRE_SYMBOLS_BYTES];

static hft_order_wire_out fresh_out(size_t capacity) {
    hft_order_wire_out out = {
        .rows = rows,
        .symbol_index = symbol_index,
        .capacity = capacity,
        .client_ids = client_ids,
        .client_ids_capacity = sizeof client_ids,
        .symbols = symbols,
    };
    return out;
}

static int decode(const uint8_t *data, size_t size, int message, hft_order_wire_out *out) {
    return hft_order_wire_decode_new_orders(data, size, message, out);
}

/* Two orders: {id "ab", symbol "BTC", side 1, price -1 (ten bytes), quantity 300 (two bytes),
 * post_only 1} and {id "c", symbol "ETH", symbol "BTC" again (the last counts), priority -2}. */
static const uint8_t two_orders[] = {
    0x0a, 27,                                                       /* orders, 27 bytes */
    0x0a, 2, 'a', 'b',                                              /* client_order_id */
    0x12, 3, 'B', 'T', 'C',                                         /* symbol */
    0x18, 1,                                                        /* side */
    0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, /* price_ticks -1 */
    0x40, 0xac, 0x02,                                               /* quantity_lots 300 */
    0x50, 1,                                                        /* post_only */
    0x0a, 24,                                                       /* orders, 24 bytes */
    0x0a, 1, 'c',
    0x12, 3, 'E', 'T', 'H',
    0x12, 3, 'B', 'T', 'C',
    0x68, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, /* priority -2 */
};

static void test_two_orders_decode_with_their_texts_joined(void) {
    hft_order_wire_out out = fresh_out(8);
    CHECK_EQ_INT(decode(two_orders, sizeof two_orders, HFT_ORDER_WIRE_SUBMIT_ORDERS, &out), HFT_OK);
    CHECK_EQ_INT(out.count, 2);
    CHECK_EQ_INT(rows[0].side, 1);
    CHECK_EQ_INT(rows[0].price, -1);
    CHECK_EQ_INT(rows[0].quantity, 300);
    CHECK_EQ_INT(rows[0].post_only, 1);
    CHECK_EQ_INT(rows[0].priority, 0);
    CHECK_EQ_INT(rows[1].priority, -2);
    CHECK_EQ_INT(rows[1].price, 0);
    CHECK_EQ_INT(out.client_ids_size, 4);
    CHECK(memcmp(client_ids, "ab\nc", 4) == 0);
    CHECK_EQ_INT(out.symbol_count, 1); /* the second order's last symbol is BTC again */
    CHECK_EQ_INT(out.symbols_size, 3);
    CHECK(memcmp(symbols, "BTC", 3) == 0);
    CHECK_EQ_INT(symbol_index[0], 0);
    CHECK_EQ_INT(symbol_index[1], 0);
}

static void test_int32_fields_keep_their_low_32_bits_and_bools_any_non_zero(void) {
    /* side = 2^40 + 2 (protobuf keeps 2), stp = 0xffffffff (-1), post_only = 300 (true) */
    static const uint8_t message[] = {0x0a, 16,
                                      0x18, 0x82, 0x80, 0x80, 0x80, 0x80, 0x20,
                                      0x58, 0xff, 0xff, 0xff, 0xff, 0x0f,
                                      0x50, 0xac, 0x02};
    hft_order_wire_out out = fresh_out(8);
    CHECK_EQ_INT(decode(message, sizeof message, HFT_ORDER_WIRE_SUBMIT_ORDERS, &out), HFT_OK);
    CHECK_EQ_INT(out.count, 1);
    CHECK_EQ_INT(rows[0].side, 2);
    CHECK_EQ_INT(rows[0].stp, -1);
    CHECK_EQ_INT(rows[0].post_only, 1);
}

static void test_a_stream_of_new_orders_decodes_and_anything_else_is_general(void) {
    /* inputs { new_order { client_order_id "x" quantity_lots 1 } } */
    static const uint8_t one[] = {0x0a, 7, 0x0a, 5, 0x0a, 1, 'x', 0x40, 1};
    hft_order_wire_out out = fresh_out(8);
    CHECK_EQ_INT(decode(one, sizeof one, HFT_ORDER_WIRE_STREAM, &out), HFT_OK);
    CHECK_EQ_INT(out.count, 1);
    CHECK_EQ_INT(rows[0].quantity, 1);
    CHECK_EQ_INT(out.client_ids_size, 1);
    /* inputs { cancel { order_id 5 } } */
    static const uint8_t cancel[] = {0x0a, 4, 0x12, 2, 0x08, 5};
    CHECK_EQ_INT(decode(cancel, sizeof cancel, HFT_ORDER_WIRE_STREAM, &out), HFT_ORDER_WIRE_GENERAL);
    /* inputs { } : an input that says nothing */
    static const uint8_t empty[] = {0x0a, 0};
    CHECK_EQ_INT(decode(empty, sizeof empty, HFT_ORDER_WIRE_STREAM, &out), HFT_ORDER_WIRE_GENERAL);
    /* the new_order's length short of its input: something follows it in the input */
    static const uint8_t trailing[] = {0x0a, 4, 0x0a, 0, 0x0a, 0};
    CHECK_EQ_INT(decode(trailing, sizeof trailing, HFT_ORDER_WIRE_STREAM, &out), HFT_ORDER_WIRE_GENERAL);
}

static void test_what_the_fast_path_does_not_take_is_general(void) {
    static const uint8_t unknown_field[] = {0x0a, 2, 0x70, 1};             /* field 14 */
    static const uint8_t wrong_wire_type[] = {0x0a, 3, 0x1a, 1, 0};        /* side as bytes */
    static const uint8_t overlong_varint[] = {0x0a, 3, 0x18, 0x81, 0x00};
    static const uint8_t past_64_bits[] = {0x0a, 11, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff,
                                           0xff, 0xff, 0xff, 0xff, 0x02};
    static const uint8_t control_char[] = {0x0a, 3, 0x0a, 1, '\n'};
    static const uint8_t past_the_end[] = {0x0a, 5, 0x18, 1};
    static const uint8_t cut_in_field[] = {0x0a, 1, 0x18};
    static const uint8_t other_field[] = {0x12, 0};
    static const uint8_t overlong_length[] = {0x0a, 0x80, 0x00};
    const struct {
        const uint8_t *data;
        size_t size;
    } cases[] = {
        {unknown_field, sizeof unknown_field},   {wrong_wire_type, sizeof wrong_wire_type},
        {overlong_varint, sizeof overlong_varint}, {past_64_bits, sizeof past_64_bits},
        {control_char, sizeof control_char},     {past_the_end, sizeof past_the_end},
        {cut_in_field, sizeof cut_in_field},     {other_field, sizeof other_field},
        {overlong_length, sizeof overlong_length},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hft_order_wire_out out = fresh_out(8);
        int rc = decode(cases[i].data, cases[i].size, HFT_ORDER_WIRE_SUBMIT_ORDERS, &out);
        if (rc != HFT_ORDER_WIRE_GENERAL) fprintf(stderr, "  case %zu: %d\n", i, rc);
        CHECK_EQ_INT(rc, HFT_ORDER_WIRE_GENERAL);
    }
    /* a 65-byte symbol */
    uint8_t long_symbol[2 + 2 + 65];
    long_symbol[0] = 0x0a;
    long_symbol[1] = 67;
    long_symbol[2] = 0x12;
    long_symbol[3] = 65;
    memset(long_symbol + 4, 'S', 65);
    hft_order_wire_out out = fresh_out(8);
    CHECK_EQ_INT(decode(long_symbol, sizeof long_symbol, HFT_ORDER_WIRE_SUBMIT_ORDERS, &out),
                 HFT_ORDER_WIRE_GENERAL);
    long_symbol[1] = 66;
    long_symbol[3] = 64; /* 64 bytes fit */
    CHECK_EQ_INT(decode(long_symbol, sizeof long_symbol - 1, HFT_ORDER_WIRE_SUBMIT_ORDERS, &out), HFT_OK);
    CHECK_EQ_INT(out.symbols_size, 64);
}

static void test_bounds_make_it_general_never_overflow(void) {
    hft_order_wire_out out = fresh_out(1); /* room for one order: the message has two */
    CHECK_EQ_INT(decode(two_orders, sizeof two_orders, HFT_ORDER_WIRE_SUBMIT_ORDERS, &out),
                 HFT_ORDER_WIRE_GENERAL);
    out = fresh_out(8);
    out.client_ids_capacity = 3; /* "ab\nc" needs 4 */
    CHECK_EQ_INT(decode(two_orders, sizeof two_orders, HFT_ORDER_WIRE_SUBMIT_ORDERS, &out),
                 HFT_ORDER_WIRE_GENERAL);
    out.client_ids_capacity = 4;
    CHECK_EQ_INT(decode(two_orders, sizeof two_orders, HFT_ORDER_WIRE_SUBMIT_ORDERS, &out), HFT_OK);
    /* 17 distinct one-letter symbols: one more than the fast path keeps */
    uint8_t many[17 * 5];
    for (int i = 0; i < 17; i++) {
        uint8_t *m = many + 5 * i;
        m[0] = 0x0a, m[1] = 3, m[2] = 0x12, m[3] = 1, m[4] = (uint8_t)('A' + i);
    }
    hft_new_order_row big_rows[17];
    uint8_t big_index[17];
    out = fresh_out(8);
    out.rows = big_rows, out.symbol_index = big_index, out.capacity = 17;
    CHECK_EQ_INT(decode(many, sizeof many, HFT_ORDER_WIRE_SUBMIT_ORDERS, &out), HFT_ORDER_WIRE_GENERAL);
    CHECK_EQ_INT(decode(many, 16 * 5, HFT_ORDER_WIRE_SUBMIT_ORDERS, &out), HFT_OK);
    CHECK_EQ_INT(out.symbol_count, 16);
    CHECK_EQ_INT(big_index[15], 15);
    CHECK_EQ_INT(out.symbols_size, 31);
}

static void test_empty_and_bad_arguments(void) {
    hft_order_wire_out out = fresh_out(8);
    CHECK_EQ_INT(decode(NULL, 0, HFT_ORDER_WIRE_SUBMIT_ORDERS, &out), HFT_OK);
    CHECK_EQ_INT(out.count, 0);
    CHECK_EQ_INT(decode(two_orders, sizeof two_orders, 7, &out), HFT_EINVAL);
    CHECK_EQ_INT(decode(two_orders, sizeof two_orders, HFT_ORDER_WIRE_SUBMIT_ORDERS, NULL), HFT_EINVAL);
    out.rows = NULL;
    CHECK_EQ_INT(decode(two_orders, sizeof two_orders, HFT_ORDER_WIRE_SUBMIT_ORDERS, &out), HFT_EINVAL);
}

/* SubmitOrderColumnsRequest { orders { symbols "BTC" symbols "ETH" symbol_index [1, 0]
 * client_order_id "ab" client_order_id "c" quantity_lots [300, -1] priority [-2, 5] } }, with
 * the columns before the texts: the fields may come in any order. */
static const uint8_t two_columns[] = {
    0x0a, 48,                                                       /* orders, 48 bytes */
    0x4a, 12, 0xac, 0x02,                                           /* quantity_lots: 300, */
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,     /*   -1 */
    0x72, 11, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 5, /* priority */
    0x0a, 3, 'B', 'T', 'C',                                         /* symbols */
    0x12, 2, 1, 0,                                                  /* symbol_index */
    0x1a, 2, 'a', 'b',                                              /* client_order_id */
    0x1a, 1, 'c',
    0x0a, 3, 'E', 'T', 'H',
};

static int decode_columns(const uint8_t *data, size_t size, hft_order_wire_out *out) {
    return hft_order_wire_decode_columns(data, size, out);
}

static void test_columns_decode_into_rows_with_absent_columns_zero(void) {
    hft_order_wire_out out = fresh_out(8);
    memset(rows, 0x5a, sizeof rows); /* what a column left out must not leave behind */
    CHECK_EQ_INT(decode_columns(two_columns, sizeof two_columns, &out), HFT_OK);
    CHECK_EQ_INT(out.count, 2);
    CHECK_EQ_INT(rows[0].quantity, 300);
    CHECK_EQ_INT(rows[1].quantity, -1);
    CHECK_EQ_INT(rows[0].priority, -2);
    CHECK_EQ_INT(rows[1].priority, 5);
    CHECK_EQ_INT(rows[0].price, 0);
    CHECK_EQ_INT(rows[1].side, 0);
    CHECK_EQ_INT(rows[1].post_only, 0);
    CHECK_EQ_INT(out.client_ids_size, 4);
    CHECK(memcmp(client_ids, "ab\nc", 4) == 0);
    CHECK_EQ_INT(out.symbol_count, 2);
    CHECK_EQ_INT(out.symbols_size, 7);
    CHECK(memcmp(symbols, "BTC\nETH", 7) == 0);
    CHECK_EQ_INT(symbol_index[0], 1);
    CHECK_EQ_INT(symbol_index[1], 0);
}

static void test_columns_that_do_not_fit_are_general(void) {
    uint8_t message[sizeof two_columns];
    hft_order_wire_out out = fresh_out(8);
    /* a symbol_index entry past the two symbols */
    memcpy(message, two_columns, sizeof message);
    message[2 + 14 + 13 + 5 + 2] = 2; /* after quantity_lots, priority, "BTC" and the index's tag */
    CHECK_EQ_INT(decode_columns(message, sizeof message, &out), HFT_ORDER_WIRE_GENERAL);
    /* quantity_lots with one entry: its length cut to the first varint, the rest skipped by a
     * request one field shorter */
    static const uint8_t short_column[] = {0x0a, 14, 0x0a, 1, 'X', 0x12, 2, 0, 0, 0x1a, 0, 0x1a, 0, 0x4a, 1, 7};
    CHECK_EQ_INT(decode_columns(short_column, sizeof short_column, &out), HFT_ORDER_WIRE_GENERAL);
    /* the same with two entries fits */
    static const uint8_t fits[] = {0x0a, 15, 0x0a, 1, 'X', 0x12, 2, 0, 0, 0x1a, 0, 0x1a, 0, 0x4a, 2, 7, 8};
    CHECK_EQ_INT(decode_columns(fits, sizeof fits, &out), HFT_OK);
    CHECK_EQ_INT(rows[1].quantity, 8);
    /* a column twice, a column unpacked, no symbol_index, no order, something after orders */
    static const uint8_t twice[] = {0x0a, 13, 0x0a, 0, 0x12, 1, 0, 0x1a, 0, 0x22, 1, 1, 0x22, 1, 2};
    static const uint8_t unpacked[] = {0x0a, 9, 0x0a, 0, 0x12, 1, 0, 0x1a, 0, 0x20, 1};
    static const uint8_t no_index[] = {0x0a, 4, 0x0a, 0, 0x1a, 0};
    static const uint8_t no_order[] = {0x0a, 2, 0x0a, 0};
    static const uint8_t trailing[] = {0x0a, 7, 0x0a, 0, 0x12, 1, 0, 0x1a, 0, 0x10, 1};
    CHECK_EQ_INT(decode_columns(twice, sizeof twice, &out), HFT_ORDER_WIRE_GENERAL);
    CHECK_EQ_INT(decode_columns(unpacked, sizeof unpacked, &out), HFT_ORDER_WIRE_GENERAL);
    CHECK_EQ_INT(decode_columns(no_index, sizeof no_index, &out), HFT_ORDER_WIRE_GENERAL);
    CHECK_EQ_INT(decode_columns(no_order, sizeof no_order, &out), HFT_ORDER_WIRE_GENERAL);
    CHECK_EQ_INT(decode_columns(trailing, sizeof trailing, &out), HFT_ORDER_WIRE_GENERAL);
    CHECK_EQ_INT(decode_columns(trailing, sizeof trailing - 2, &out), HFT_OK);
    /* more orders than the caller's room, an id past the text room */
    out = fresh_out(1);
    CHECK_EQ_INT(decode_columns(two_columns, sizeof two_columns, &out), HFT_ORDER_WIRE_GENERAL);
    out = fresh_out(8);
    out.client_ids_capacity = 3;
    CHECK_EQ_INT(decode_columns(two_columns, sizeof two_columns, &out), HFT_ORDER_WIRE_GENERAL);
    CHECK_EQ_INT(decode_columns(NULL, 0, &out), HFT_ORDER_WIRE_GENERAL);
    CHECK_EQ_INT(decode_columns(two_columns, sizeof two_columns, NULL), HFT_EINVAL);
}

int main(void) {
    RUN(test_two_orders_decode_with_their_texts_joined);
    RUN(test_int32_fields_keep_their_low_32_bits_and_bools_any_non_zero);
    RUN(test_a_stream_of_new_orders_decodes_and_anything_else_is_general);
    RUN(test_what_the_fast_path_does_not_take_is_general);
    RUN(test_bounds_make_it_general_never_overflow);
    RUN(test_empty_and_bad_arguments);
    RUN(test_columns_decode_into_rows_with_absent_columns_zero);
    RUN(test_columns_that_do_not_fit_are_general);
    return TEST_SUMMARY("order_wire");
}
