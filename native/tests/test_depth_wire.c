/* Tests of reading DepthUpdate levels from wire bytes (native/include/hft_depth_wire.h). The
 * bytes are written out by hand from the protobuf encoding rules and marketdata.proto's field
 * numbers; tests/native/test_depth_wire.py compares against protobuf itself. */
#include <stdint.h>
#include <string.h>

#include "../include/hft_depth_book.h"
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
    /* an end-group key with no group open, and a group ended by another field's key */
    uint8_t lone_end[2] = {0x3a, 0x00};
    lone_end[0] = 0x0c;
    CHECK_EQ_INT(hft_depth_wire_levels(lone_end, 1, bids, 4, &nb, asks, 4, &na), HFT_EINVAL);
    uint8_t mismatched[2] = {0x0b, 0x14};
    CHECK_EQ_INT(hft_depth_wire_levels(mismatched, 2, bids, 4, &nb, asks, 4, &na), HFT_EINVAL);
    uint8_t unterminated[1] = {0x0b};
    CHECK_EQ_INT(hft_depth_wire_levels(unterminated, 1, bids, 4, &nb, asks, 4, &na), HFT_EINVAL);
    /* a varint that never ends */
    uint8_t endless[11];
    memset(endless, 0xff, sizeof endless);
    CHECK_EQ_INT(hft_depth_wire_levels(endless, sizeof endless, bids, 4, &nb, asks, 4, &na), HFT_EINVAL);
    /* field number 0 */
    uint8_t zero[2] = {0x00, 0x00};
    CHECK_EQ_INT(hft_depth_wire_levels(zero, 2, bids, 4, &nb, asks, 4, &na), HFT_EINVAL);
}

/* What protobuf decodes as unknown fields is skipped, not refused: a price sent as a varint, a
 * group (nested too) inside a level and beside the levels, a size of fixed32 wire type. */
static void test_unknown_fields_of_any_wire_type_are_skipped(void) {
    uint8_t buf[128];
    size_t n = 0;
    buf[n++] = 0x4b; /* field 9, start group */
    buf[n++] = 0x0b; /* field 1, start group, nested */
    buf[n++] = 0x08; /* field 1, varint 5 */
    buf[n++] = 0x05;
    buf[n++] = 0x0c; /* end of field 1's group */
    buf[n++] = 0x4c; /* end of field 9's group */
    double price = 7.5, size = 1.5;
    buf[n++] = 0x3a; /* bids entry of 18 + 2 + 5 + 2 bytes */
    buf[n++] = 27;
    buf[n++] = 0x08; /* price as a varint: unknown */
    buf[n++] = 0x01;
    buf[n++] = 0x09;
    memcpy(buf + n, &price, 8);
    n += 8;
    buf[n++] = 0x15; /* size as fixed32: unknown */
    memset(buf + n, 0, 4);
    n += 4;
    buf[n++] = 0x1b; /* field 3 group, empty */
    buf[n++] = 0x1c;
    buf[n++] = 0x11;
    memcpy(buf + n, &size, 8);
    n += 8;
    double bids[2][2], asks[2][2];
    size_t nb, na;
    CHECK_EQ_INT(hft_depth_wire_levels(buf, n, bids, 2, &nb, asks, 2, &na), HFT_OK);
    CHECK(nb == 1 && na == 0 && bids[0][0] == 7.5 && bids[0][1] == 1.5);
}

/* The usual 18-byte level and every other shape of a level give the same pair. */
static void test_levels_in_every_shape_read_alike(void) {
    uint8_t buf[128];
    size_t n = put_level(buf, 8, 3.0, 4.0);
    double size = 4.0, price = 3.0;
    buf[n++] = 0x42; /* size before price */
    buf[n++] = 18;
    buf[n++] = 0x11;
    memcpy(buf + n, &size, 8);
    n += 8;
    buf[n++] = 0x09;
    memcpy(buf + n, &price, 8);
    n += 8;
    buf[n++] = 0x42; /* the price twice: the last wins */
    buf[n++] = 27;
    buf[n++] = 0x09;
    memset(buf + n, 0, 8);
    n += 8;
    buf[n++] = 0x09;
    memcpy(buf + n, &price, 8);
    n += 8;
    buf[n++] = 0x11;
    memcpy(buf + n, &size, 8);
    n += 8;
    buf[n++] = 0xc2; /* asks with a two-byte key (field 8, wire 2, a padded varint) */
    buf[n++] = 0x00;
    buf[n++] = 18;
    buf[n++] = 0x09;
    memcpy(buf + n, &price, 8);
    n += 8;
    buf[n++] = 0x11;
    memcpy(buf + n, &size, 8);
    n += 8;
    double asks[8][2];
    size_t nb, na;
    CHECK_EQ_INT(hft_depth_wire_levels(buf, n, NULL, 0, &nb, asks, 8, &na), HFT_OK);
    CHECK_EQ_INT(na, 4);
    for (size_t i = 0; i < na; i++) CHECK(asks[i][0] == 3.0 && asks[i][1] == 4.0);
}

/* A PublishQuotesRequest of a quote, two updates and an unknown field: each update found in
 * turn, its levels read, then HFT_ENOENT. */
static void test_updates_of_a_request_in_order(void) {
    uint8_t request[256];
    size_t n = 0;
    request[n++] = 0x0a; /* quotes: field 1, a 3-byte Quote */
    request[n++] = 3;
    request[n++] = 0x0a;
    request[n++] = 1;
    request[n++] = 'x';
    request[n++] = 0x12; /* depth_updates: one bid */
    request[n++] = 20;
    n += put_level(request + n, 7, 10.0, 1.0);
    request[n++] = 0x10; /* field 2 as a varint: unknown, skipped */
    request[n++] = 0x07;
    request[n++] = 0x1b; /* an empty group */
    request[n++] = 0x1c;
    request[n++] = 0x12; /* depth_updates: two asks and a bid */
    request[n++] = 60;
    n += put_level(request + n, 8, 11.0, 2.0);
    n += put_level(request + n, 7, 9.0, 3.0);
    n += put_level(request + n, 8, 12.0, 0.5);
    size_t cursor = 0, offset, length;
    CHECK_EQ_INT(hft_depth_wire_next_update(request, n, &cursor, &offset, &length), HFT_OK);
    CHECK(offset == 7 && length == 20 && cursor == 27);
    double bids[4][2], asks[4][2];
    size_t nb, na;
    int check = -1;
    CHECK_EQ_INT(hft_depth_wire_next_levels(request, n, &cursor, bids, 4, &nb, asks, 4, &na, &check), HFT_OK);
    CHECK(nb == 1 && na == 2 && bids[0][0] == 9.0 && asks[0][0] == 11.0 && asks[1][1] == 0.5);
    CHECK_EQ_INT(check, HFT_DEPTH_OK);
    CHECK_EQ_INT(cursor, n);
    CHECK_EQ_INT(hft_depth_wire_next_levels(request, n, &cursor, bids, 4, &nb, asks, 4, &na, &check),
                 HFT_ENOENT);
    cursor = 0;
    CHECK_EQ_INT(hft_depth_wire_next_levels(request, n, &cursor, bids, 4, &nb, asks, 4, &na, &check), HFT_OK);
    CHECK(nb == 1 && na == 0 && bids[0][0] == 10.0 && bids[0][1] == 1.0);
    /* a capacity too small for the update's bids */
    cursor = 27;
    CHECK_EQ_INT(hft_depth_wire_next_levels(request, n, &cursor, bids, 0, &nb, asks, 4, &na, &check),
                 HFT_ERANGE);
    /* truncated inside the second update's length, a cursor past the end, NULL pointers */
    cursor = 27;
    CHECK_EQ_INT(hft_depth_wire_next_update(request, 32, &cursor, &offset, &length), HFT_EINVAL);
    cursor = n + 1;
    CHECK_EQ_INT(hft_depth_wire_next_update(request, n, &cursor, &offset, &length), HFT_EINVAL);
    cursor = 0;
    CHECK_EQ_INT(hft_depth_wire_next_update(request, n, &cursor, NULL, &length), HFT_EINVAL);
    CHECK_EQ_INT(hft_depth_wire_next_update(NULL, 0, &cursor, &offset, &length), HFT_ENOENT);
    CHECK_EQ_INT(hft_depth_wire_next_levels(request, n, &cursor, NULL, 1, &nb, asks, 4, &na, &check),
                 HFT_EINVAL);
    CHECK_EQ_INT(hft_depth_wire_next_levels(request, n, &cursor, bids, 4, &nb, asks, 4, &na, NULL),
                 HFT_EINVAL);
}

/* The check of the levels read is hft_depth_levels_check's: a crossed update and a bad price. */
static void test_the_levels_read_are_checked_as_the_book_checks_them(void) {
    uint8_t request[128];
    size_t n = 0;
    request[n++] = 0x12;
    request[n++] = 40;
    n += put_level(request + n, 7, 11.0, 1.0); /* bid 11 >= ask 10: crossed */
    n += put_level(request + n, 8, 10.0, 1.0);
    request[n++] = 0x12;
    request[n++] = 40;
    n += put_level(request + n, 7, -1.0, 1.0); /* a price <= 0 comes before crossing */
    n += put_level(request + n, 8, 10.0, 1.0);
    double bids[2][2], asks[2][2];
    size_t nb, na, cursor = 0;
    int check = -1;
    CHECK_EQ_INT(hft_depth_wire_next_levels(request, n, &cursor, bids, 2, &nb, asks, 2, &na, &check), HFT_OK);
    CHECK_EQ_INT(check, HFT_DEPTH_CROSSED);
    CHECK_EQ_INT(check, hft_depth_levels_check(bids, nb, asks, na));
    CHECK_EQ_INT(hft_depth_wire_next_levels(request, n, &cursor, bids, 2, &nb, asks, 2, &na, &check), HFT_OK);
    CHECK_EQ_INT(check, HFT_DEPTH_INVALID_PRICE);
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
    RUN(test_unknown_fields_of_any_wire_type_are_skipped);
    RUN(test_levels_in_every_shape_read_alike);
    RUN(test_updates_of_a_request_in_order);
    RUN(test_the_levels_read_are_checked_as_the_book_checks_them);
    RUN(test_null_pointers_and_empty_input);
    return TEST_SUMMARY("depth_wire");
}
