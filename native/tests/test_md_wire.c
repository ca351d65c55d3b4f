/* Tests of the MarketUpdate wire encoder (native/include/hft_md_wire.h). The expected bytes
 * are written out by hand from the protobuf encoding rules and marketdata.proto's field
 * numbers; tests/native/test_md_wire.py compares against protobuf itself. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../include/hft_md_wire.h"
#include "check.h"

/* Every argument of one call, so each test names only what it changes. */
typedef struct {
    uint64_t stream_sequence, symbol_sequence, conflated;
    int32_t kind;
    const char *venue, *name;
    size_t venue_len, name_len;
    double bid_price, bid_size, ask_price, ask_size;
    int64_t top_ts_ns;
    int has_last_trade;
    double trade_price, trade_size;
    int32_t trade_side;
    int64_t trade_ts_ns;
    uint64_t trade_id;
    double vwap;
    int64_t receive_ts_ns;
    int framed;
} update_args;

static int encode(const update_args *a, uint8_t *out, size_t capacity, size_t *written) {
    return hft_md_wire_market_update(a->stream_sequence, a->symbol_sequence, a->conflated, a->kind, a->venue,
                                     a->venue_len, a->name, a->name_len, a->bid_price, a->bid_size,
                                     a->ask_price, a->ask_size, a->top_ts_ns, a->has_last_trade,
                                     a->trade_price, a->trade_size, a->trade_side, a->trade_ts_ns, a->trade_id,
                                     a->vwap, a->receive_ts_ns, a->framed, out, capacity, written);
}

static int bytes_equal(const uint8_t *got, size_t got_len, const uint8_t *want, size_t want_len) {
    if (got_len != want_len) {
        fprintf(stderr, "  length %zu, expected %zu\n", got_len, want_len);
        return 0;
    }
    for (size_t i = 0; i < got_len; i++) {
        if (got[i] != want[i]) {
            fprintf(stderr, "  byte %zu is %02x, expected %02x\n", i, got[i], want[i]);
            return 0;
        }
    }
    return 1;
}

static void test_all_defaults_leave_only_the_always_present_symbol_and_top(void) {
    update_args a = {0};
    uint8_t out[64];
    size_t written = 0;
    CHECK_EQ_INT(encode(&a, out, sizeof out, &written), HFT_OK);
    static const uint8_t want[] = {0x2a, 0x00, 0x32, 0x00};
    CHECK(bytes_equal(out, written, want, sizeof want));
}

static void test_every_field_in_field_number_order(void) {
    update_args a = {
        .stream_sequence = 1,
        .symbol_sequence = 300,
        .conflated = 2,
        .kind = 2,
        .venue = "ab",
        .venue_len = 2,
        .name = "X",
        .name_len = 1,
        .bid_price = 1.0,
        .bid_size = 2.0,
        .ask_price = -2.0,
        .ask_size = 0.5,
        .top_ts_ns = 5,
        .has_last_trade = 1,
        .trade_price = 1.0,
        .trade_size = 2.0,
        .trade_side = 1,
        .trade_ts_ns = 7,
        .trade_id = 128,
        .vwap = 1.0,
        .receive_ts_ns = 9,
    };
    uint8_t out[256];
    size_t written = 0;
    CHECK_EQ_INT(encode(&a, out, sizeof out, &written), HFT_OK);
    static const uint8_t want[] = {
        0x08, 0x01,                                                 /* stream_sequence 1 */
        0x10, 0xac, 0x02,                                           /* symbol_sequence 300 */
        0x18, 0x02,                                                 /* conflated 2 */
        0x20, 0x02,                                                 /* kind TRADE */
        0x2a, 0x07, 0x0a, 0x02, 'a', 'b', 0x12, 0x01, 'X',          /* symbol */
        0x32, 0x26,                                                 /* top, 38 bytes */
        0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f,                         /* bid_price 1.0 */
        0x11, 0, 0, 0, 0, 0, 0, 0x00, 0x40,                         /* bid_size 2.0 */
        0x19, 0, 0, 0, 0, 0, 0, 0x00, 0xc0,                         /* ask_price -2.0 */
        0x21, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f,                         /* ask_size 0.5 */
        0x28, 0x05,                                                 /* exchange_ts_ns 5 */
        0x3a, 0x19,                                                 /* last_trade, 25 bytes */
        0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f,                         /* price 1.0 */
        0x11, 0, 0, 0, 0, 0, 0, 0x00, 0x40,                         /* size 2.0 */
        0x18, 0x01,                                                 /* aggressor_side BUY */
        0x20, 0x07,                                                 /* exchange_ts_ns 7 */
        0x28, 0x80, 0x01,                                           /* trade_id 128 */
        0x41, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f,                         /* vwap 1.0 */
        0x48, 0x09,                                                 /* receive_ts_ns 9 */
    };
    CHECK(bytes_equal(out, written, want, sizeof want));
}

static void test_negative_zero_and_nan_are_written_as_protobuf_writes_them(void) {
    update_args a = {.bid_price = -0.0, .vwap = NAN};
    uint8_t out[64];
    size_t written = 0;
    CHECK_EQ_INT(encode(&a, out, sizeof out, &written), HFT_OK);
    uint64_t nan_bits;
    double nan = NAN;
    memcpy(&nan_bits, &nan, sizeof nan_bits);
    uint8_t want[] = {0x2a, 0x00, 0x32, 0x09, 0x09, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x41, 0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < 8; i++) {
        want[14 + i] = (uint8_t)(nan_bits >> (8 * i));
    }
    CHECK(bytes_equal(out, written, want, sizeof want));
}

static void test_negative_int64_and_enum_take_ten_bytes(void) {
    update_args a = {.kind = -1, .receive_ts_ns = INT64_MIN};
    uint8_t out[64];
    size_t written = 0;
    CHECK_EQ_INT(encode(&a, out, sizeof out, &written), HFT_OK);
    static const uint8_t want[] = {
        0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, /* kind -1 */
        0x2a, 0x00, 0x32, 0x00,
        0x48, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, /* -2^63 */
    };
    CHECK(bytes_equal(out, written, want, sizeof want));
}

static void test_a_last_trade_of_defaults_is_present_and_empty(void) {
    update_args a = {.has_last_trade = 1};
    uint8_t out[64];
    size_t written = 0;
    CHECK_EQ_INT(encode(&a, out, sizeof out, &written), HFT_OK);
    static const uint8_t want[] = {0x2a, 0x00, 0x32, 0x00, 0x3a, 0x00};
    CHECK(bytes_equal(out, written, want, sizeof want));
}

static void test_framed_puts_the_updates_entry_tag_and_length_in_front(void) {
    update_args a = {.symbol_sequence = 3, .framed = 1};
    uint8_t out[64];
    size_t written = 0;
    CHECK_EQ_INT(encode(&a, out, sizeof out, &written), HFT_OK);
    static const uint8_t want[] = {0x0a, 0x06, 0x10, 0x03, 0x2a, 0x00, 0x32, 0x00};
    CHECK(bytes_equal(out, written, want, sizeof want));
}

static void test_long_strings_get_multibyte_lengths(void) {
    char venue[200];
    memset(venue, 'v', sizeof venue);
    update_args a = {.venue = venue, .venue_len = sizeof venue, .framed = 1};
    uint8_t out[512];
    size_t written = 0;
    CHECK_EQ_INT(encode(&a, out, sizeof out, &written), HFT_OK);
    /* entry: 0x0a, varint(208) = d0 01; symbol: 0x2a, varint(203) = cb 01; venue: 0x0a, c8 01 */
    static const uint8_t head[] = {0x0a, 0xd0, 0x01, 0x2a, 0xcb, 0x01, 0x0a, 0xc8, 0x01};
    CHECK_EQ_INT(written, 3 + 208);
    CHECK(memcmp(out, head, sizeof head) == 0);
    CHECK(memcmp(out + sizeof head, venue, sizeof venue) == 0);
    static const uint8_t tail[] = {0x32, 0x00};
    CHECK(memcmp(out + sizeof head + sizeof venue, tail, sizeof tail) == 0);
}

static void test_largest_values_fit_the_documented_bound(void) {
    char venue[64], name[64];
    memset(venue, 'v', sizeof venue);
    memset(name, 'n', sizeof name);
    update_args a = {
        .stream_sequence = UINT64_MAX,
        .symbol_sequence = UINT64_MAX,
        .conflated = UINT64_MAX,
        .kind = INT32_MIN,
        .venue = venue,
        .venue_len = sizeof venue,
        .name = name,
        .name_len = sizeof name,
        .bid_price = 1,
        .bid_size = 1,
        .ask_price = 1,
        .ask_size = 1,
        .top_ts_ns = -1,
        .has_last_trade = 1,
        .trade_price = 1,
        .trade_size = 1,
        .trade_side = -1,
        .trade_ts_ns = -1,
        .trade_id = UINT64_MAX,
        .vwap = 1,
        .receive_ts_ns = -1,
        .framed = 1,
    };
    uint8_t out[HFT_MD_WIRE_FIXED_MAX_BYTES + 128];
    size_t written = 0;
    CHECK_EQ_INT(encode(&a, out, sizeof out, &written), HFT_OK);
    CHECK(written <= HFT_MD_WIRE_FIXED_MAX_BYTES + sizeof venue + sizeof name);
    /* Exactly enough room is enough. */
    size_t again = 0;
    CHECK_EQ_INT(encode(&a, out, written, &again), HFT_OK);
    CHECK_EQ_INT(again, written);
}

static void test_too_small_a_buffer_says_how_much_is_needed_and_writes_nothing(void) {
    update_args a = {.symbol_sequence = 1, .venue = "binance-spot", .venue_len = 12};
    uint8_t out[64];
    size_t needed = 0;
    CHECK_EQ_INT(encode(&a, out, sizeof out, &needed), HFT_OK);
    memset(out, 0xee, sizeof out);
    size_t written = 0;
    CHECK_EQ_INT(encode(&a, out, needed - 1, &written), HFT_ERANGE);
    CHECK_EQ_INT(written, needed);
    for (size_t i = 0; i < sizeof out; i++) {
        CHECK(out[i] == 0xee);
    }
}

static void test_null_pointers_are_refused(void) {
    update_args a = {0};
    uint8_t out[64];
    size_t written = 0;
    CHECK_EQ_INT(encode(&a, NULL, sizeof out, &written), HFT_EINVAL);
    CHECK_EQ_INT(encode(&a, out, sizeof out, NULL), HFT_EINVAL);
    a.venue_len = 1;
    CHECK_EQ_INT(encode(&a, out, sizeof out, &written), HFT_EINVAL);
    a.venue_len = 0;
    a.name_len = 1;
    CHECK_EQ_INT(encode(&a, out, sizeof out, &written), HFT_EINVAL);
}

int main(void) {
    RUN(test_all_defaults_leave_only_the_always_present_symbol_and_top);
    RUN(test_every_field_in_field_number_order);
    RUN(test_negative_zero_and_nan_are_written_as_protobuf_writes_them);
    RUN(test_negative_int64_and_enum_take_ten_bytes);
    RUN(test_a_last_trade_of_defaults_is_present_and_empty);
    RUN(test_framed_puts_the_updates_entry_tag_and_length_in_front);
    RUN(test_long_strings_get_multibyte_lengths);
    RUN(test_largest_values_fit_the_documented_bound);
    RUN(test_too_small_a_buffer_says_how_much_is_needed_and_writes_nothing);
    RUN(test_null_pointers_are_refused);
    return TEST_SUMMARY("md_wire");
}
