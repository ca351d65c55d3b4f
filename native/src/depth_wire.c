/* DepthUpdate levels from protobuf wire bytes: see hft_depth_wire.h. */
#include "hft_depth_wire.h"

#include <string.h>

#include "hft_depth_book.h"

enum {
    WIRE_VARINT = 0,
    WIRE_FIXED64 = 1,
    WIRE_LEN = 2,
    WIRE_START_GROUP = 3,
    WIRE_END_GROUP = 4,
    WIRE_FIXED32 = 5,
};
enum { FIELD_DEPTH_UPDATES = 2, FIELD_BIDS = 7, FIELD_ASKS = 8, FIELD_PRICE = 1, FIELD_SIZE = 2 };
/* The keys and length of a bid or ask entry as protobuf writes one with both numbers set, price
 * then size: the shape of nearly every level, read without the general loop. */
enum {
    TAG_BIDS = FIELD_BIDS << 3 | WIRE_LEN,
    TAG_ASKS = FIELD_ASKS << 3 | WIRE_LEN,
    TAG_PRICE = FIELD_PRICE << 3 | WIRE_FIXED64,
    TAG_SIZE = FIELD_SIZE << 3 | WIRE_FIXED64,
    FULL_LEVEL_LEN = 18,
};
/* Deeper than protobuf's own limit on nesting (100 messages or groups), so that every group
 * it accepts is skipped here too, and the stack stays bounded on hostile input. */
#define MAX_GROUP_DEPTH 128

/* Reads a varint at *p (before end); 0 and advances *p, or -1 when truncated or too long. */
static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end) return -1;
        uint8_t byte = *(*p)++;
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *out = value;
            return 0;
        }
    }
    return -1;
}

/* Reads a field's key (its number and wire type); -1 when truncated, too long or of field 0. */
static int read_key(const uint8_t **p, const uint8_t *end, uint64_t *field, unsigned *wire) {
    uint64_t key;
    if (read_varint(p, end, &key)) return -1;
    *field = key >> 3;
    *wire = (unsigned)(key & 7);
    return *field == 0 ? -1 : 0;
}

/* Skips one field's value of wire type `wire` (for a group, everything up to the end-group key
 * of the same field number, nested groups included); 0, or -1 when malformed. An end-group key
 * with no group open is malformed, as protobuf has it. */
static int skip(const uint8_t **p, const uint8_t *end, uint64_t field, unsigned wire, int depth) {
    uint64_t n;
    switch (wire) {
    case WIRE_VARINT:
        return read_varint(p, end, &n);
    case WIRE_FIXED64:
        if ((size_t)(end - *p) < 8) return -1;
        *p += 8;
        return 0;
    case WIRE_LEN:
        if (read_varint(p, end, &n) || n > (uint64_t)(end - *p)) return -1;
        *p += n;
        return 0;
    case WIRE_START_GROUP:
        if (depth >= MAX_GROUP_DEPTH) return -1;
        for (;;) {
            uint64_t inner;
            unsigned inner_wire;
            if (read_key(p, end, &inner, &inner_wire)) return -1;
            if (inner_wire == WIRE_END_GROUP) return inner == field ? 0 : -1;
            if (skip(p, end, inner, inner_wire, depth + 1)) return -1;
        }
    case WIRE_FIXED32:
        if ((size_t)(end - *p) < 4) return -1;
        *p += 4;
        return 0;
    default:
        return -1;
    }
}

/* One PriceLevel message in [p, end) into level; 0 or -1. A price or size field of another
 * wire type is an unknown field to protobuf, skipped like any other. */
static int read_level(const uint8_t *p, const uint8_t *end, double level[2]) {
    level[0] = 0.0;
    level[1] = 0.0;
    while (p < end) {
        uint64_t field;
        unsigned wire;
        if (read_key(&p, end, &field, &wire)) return -1;
        if ((field == FIELD_PRICE || field == FIELD_SIZE) && wire == WIRE_FIXED64) {
            if ((size_t)(end - p) < 8) return -1;
            memcpy(&level[field - 1], p, 8); /* little-endian on every target this builds for */
            p += 8;
        } else if (skip(&p, end, field, wire, 0)) {
            return -1;
        }
    }
    return 0;
}

/* The levels of one DepthUpdate in [p, end), as hft_depth_wire_levels. */
static int read_update(const uint8_t *p, const uint8_t *end, double (*bids)[2], size_t bid_cap,
                       size_t *n_bids, double (*asks)[2], size_t ask_cap, size_t *n_asks) {
    size_t nb = 0, na = 0;
    int rc = HFT_OK;
    while (p < end) {
        /* The usual level first: a one-byte key of bids or asks, length 18, price then size. */
        if ((size_t)(end - p) >= 2 + FULL_LEVEL_LEN && p[1] == FULL_LEVEL_LEN && p[2] == TAG_PRICE &&
            p[11] == TAG_SIZE && (p[0] == TAG_BIDS || p[0] == TAG_ASKS)) {
            int bid = p[0] == TAG_BIDS;
            if (bid ? nb >= bid_cap : na >= ask_cap) {
                rc = HFT_ERANGE;
                break;
            }
            double *level = bid ? bids[nb++] : asks[na++];
            memcpy(&level[0], p + 3, 8);
            memcpy(&level[1], p + 12, 8);
            p += 2 + FULL_LEVEL_LEN;
            continue;
        }
        uint64_t field;
        unsigned wire;
        if (read_key(&p, end, &field, &wire)) {
            rc = HFT_EINVAL;
            break;
        }
        if ((field == FIELD_BIDS || field == FIELD_ASKS) && wire == WIRE_LEN) {
            uint64_t n;
            if (read_varint(&p, end, &n) || n > (uint64_t)(end - p)) {
                rc = HFT_EINVAL;
                break;
            }
            int bid = field == FIELD_BIDS;
            if (bid ? nb >= bid_cap : na >= ask_cap) {
                rc = HFT_ERANGE;
                break;
            }
            if (read_level(p, p + n, bid ? bids[nb] : asks[na])) {
                rc = HFT_EINVAL;
                break;
            }
            nb += bid;
            na += !bid;
            p += n;
        } else if (skip(&p, end, field, wire, 0)) {
            rc = HFT_EINVAL;
            break;
        }
    }
    *n_bids = nb;
    *n_asks = na;
    return rc;
}

int hft_depth_wire_levels(const uint8_t *buf, size_t len, double (*bids)[2], size_t bid_cap,
                          size_t *n_bids, double (*asks)[2], size_t ask_cap, size_t *n_asks) {
    if (!n_bids || !n_asks || (!buf && len) || (!bids && bid_cap) || (!asks && ask_cap))
        return HFT_EINVAL;
    return read_update(buf, buf + len, bids, bid_cap, n_bids, asks, ask_cap, n_asks);
}

int hft_depth_wire_next_update(const uint8_t *request, size_t len, size_t *cursor, size_t *offset,
                               size_t *length) {
    if (!cursor || !offset || !length || (!request && len) || *cursor > len) return HFT_EINVAL;
    const uint8_t *p = request + *cursor, *end = request + len;
    while (p < end) {
        uint64_t field;
        unsigned wire;
        if (read_key(&p, end, &field, &wire)) return HFT_EINVAL;
        if (field == FIELD_DEPTH_UPDATES && wire == WIRE_LEN) {
            uint64_t n;
            if (read_varint(&p, end, &n) || n > (uint64_t)(end - p)) return HFT_EINVAL;
            *offset = (size_t)(p - request);
            *length = (size_t)n;
            *cursor = *offset + *length;
            return HFT_OK;
        }
        if (skip(&p, end, field, wire, 0)) return HFT_EINVAL;
    }
    *cursor = len;
    return HFT_ENOENT;
}

int hft_depth_wire_next_levels(const uint8_t *request, size_t len, size_t *cursor, double (*bids)[2],
                               size_t bid_cap, size_t *n_bids, double (*asks)[2], size_t ask_cap,
                               size_t *n_asks, int *check) {
    if (!n_bids || !n_asks || !check || (!bids && bid_cap) || (!asks && ask_cap)) return HFT_EINVAL;
    size_t offset, length;
    int rc = hft_depth_wire_next_update(request, len, cursor, &offset, &length);
    if (rc != HFT_OK) return rc;
    const uint8_t *update = request + offset;
    rc = read_update(update, update + length, bids, bid_cap, n_bids, asks, ask_cap, n_asks);
    if (rc != HFT_OK) return rc;
    /* While the levels are still in the cache, and without another call from Python. */
    *check = hft_depth_levels_check(bids, *n_bids, asks, *n_asks);
    return HFT_OK;
}
