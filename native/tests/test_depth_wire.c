/* Tests of reading DepthUpdate levels from wire bytes (native/include/hft_depth_wire.h). The
 * bytes are written out by hand from the protobuf encoding rules and marketdata.proto's field
 * numbers; tests/native/test_depth_wire.py compares against protobuf itself. */
#include <stdint.h>
#include <string.h>

#include "../include/hft_depth_wire.h"
#include "check.h"

/* A PriceLevel {price, size} as field `field` of a DepthUpdate: tag, length 18, two doubles. */
static size_t put_level(uint8_t *out, unsigned field, double price, double size) {
    size_t n = 0;
    out[n++] = (uint8_t)(field << 3 | 2);
    out[n++] = 18;
    out[n++] = 0x09; /* price: field 1, fixed64 */
    memcpy(out + n, &price, 8);
    n += 8;
    out[n++] = 0x11; /* size: field 2, fixed64 */
    memcpy(out + n, &size, 8);
    n += 8;
    return n;
}

static void test_levels_of_both_sides_in_order_other_fields_skipped(void) {
    uint8_t buf[256];
    size_t n = 0;
    const char venue[] = "\x0a\x07" "binance"; /* venue: field 1, "binance" */
    memcpy(buf + n, venue, 9);
    n += 9;
    buf[n++] = 0x18; /* exchange_ts_ns: field 3, varint 300 */
    buf[n++] = 0xac;
    buf[n++] = 0x02;
    n += put_level(buf + n, 7, 100.5, 2.0);
    n += put_level(buf + n, 8, 101.0, 0.0);
    n += put_level(buf + n, 7, 100.0, 3.25);
    buf[n++] = 0x30; /* is_snapshot: field 6, varint 1 */
    buf[n++] = 0x01;
    double bids[4][2], asks[4][2];
    size_t nb = 99, na = 99;
    CHECK_EQ_INT(hft_depth_wire_levels(buf, n, bids, 4, &nb, asks, 4, &na), HFT_OK);
    CHECK_EQ_INT(nb, 2);
    CHECK_EQ_INT(na, 1);
    CHECK(bids[0][0] == 100.5 && bids[0][1] == 2.0 && bids[1][0] == 100.0 && bids[1][1] == 3.25);
    CHECK(asks[0][0] == 101.0 && asks[0][1] == 0.0);
}

static void test_a_level_without_a_field_has_zero_there(void) {
    double price = 42.0;
    uint8_t buf[16] = {0x3a, 9, 0x09}; /* bids entry with only a price */
    memcpy(buf + 3, &price, 8);
    uint8_t empty[2] = {0x42, 0}; /* an empty asks entry */
    uint8_t all[32];
    memcpy(all, buf, 11);
    memcpy(all + 11, empty, 2);
    double bids[2][2], asks[2][2];
    size_t nb, na;
    CHECK_EQ_INT(hft_depth_wire_levels(all, 13, bids, 2, &nb, asks, 2, &na), HFT_OK);
    CHECK(nb == 1 && bids[0][0] == 42.0 && bids[0][1] == 0.0);
    CHECK(na == 1 && asks[0][0] == 0.0 && asks[0][1] == 0.0);
}

static void test_more_levels_than_capacity_is_erange(void) {
    uint8_t buf[128];
    size_t n = 0;
    for (int i = 0; i < 3; i++) n += put_level(buf + n, 7, 1.0 + i, 1.0);
    double bids[2][2];
    size_t nb, na;
    CHECK_EQ_INT(hft_depth_wire_levels(buf, n, bids, 2, &nb, NULL, 0, &na), HFT_ERANGE);
    CHECK_EQ_INT(nb, 2);
}

static void test_malformed_bytes_are_einval(void) {
    double bids[4][2], asks[4][2];
    size_t nb, na;
    uint8_t level[32];
    size_t n = put_level(level, 7, 1.0, 2.0);
    /* truncated inside the level */
    CHECK_EQ_INT(hft_depth_wire_levels(level, n - 3, bids, 4, &nb, asks, 4, &na), HFT_EINVAL);
    /* a length past the end */
    uint8_t past[3] = {0x3a, 50, 0x09};
    CHECK_EQ_INT(hft_depth_wire_levels(past, 3, bids, 4, &nb, asks, 4, &na), HFT_EINVAL);
    /* wire types 3, 4, 6 and 7 do not exist here */
    uint8_t group[2] = {0x0b, 0x00};
    CHECK_EQ_INT(hft_depth_wire_levels(group, 2, bids, 4, &nb, asks, 4, &na), HFT_EINVAL);
    /* a price sent as a varint */
    uint8_t varint_price[4] = {0x3a, 2, 0x08, 0x01};
    CHECK_EQ_INT(hft_depth_wire_levels(varint_price, 4, bids, 4, &nb, asks, 4, &na), HFT_EINVAL);
    /* a varint that never ends */
    uint8_t endless[11];
    memset(endless, 0xff, sizeof endless);
    CHECK_EQ_INT(hft_depth_wire_levels(endless, sizeof endless, bids, 4, &nb, asks, 4, &na), HFT_EINVAL);
    /* field number 0 */
    uint8_t zero[2] = {0x00, 0x00};
    CHECK_EQ_INT(hft_depth_wire_levels(zero, 2, bids, 4, &nb, asks, 4, &na), HFT_EINVAL);
}

static void test_null_pointers_and_empty_input(void) {
    double bids[1][2];
    size_t nb, na;
    CHECK_EQ_INT(hft_depth_wire_levels(NULL, 0, bids, 1, &nb, NULL, 0, &na), HFT_OK);
    CHECK(nb == 0 && na == 0);
    CHECK_EQ_INT(hft_depth_wire_levels(NULL, 3, bids, 1, &nb, NULL, 0, &na), HFT_EINVAL);
    CHECK_EQ_INT(hft_depth_wire_levels(NULL, 0, bids, 1, NULL, NULL, 0, &na), HFT_EINVAL);
    CHECK_EQ_INT(hft_depth_wire_levels(NULL, 0, NULL, 1, &nb, NULL, 0, &na), HFT_EINVAL);
}

int main(void) {
    RUN(test_levels_of_both_sides_in_order_other_fields_skipped);
    RUN(test_a_level_without_a_field_has_zero_there);
    RUN(test_more_levels_than_capacity_is_erange);
    RUN(test_malformed_bytes_are_einval);
    RUN(test_null_pointers_and_empty_input);
    return TEST_SUMMARY("depth_wire");
}
