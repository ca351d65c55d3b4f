/* DepthUpdate levels from protobuf wire bytes: see hft_depth_wire.h. */
#include "hft_depth_wire.h"

#include <string.h>

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_LEN = 2, WIRE_FIXED32 = 5 };
enum { FIELD_BIDS = 7, FIELD_ASKS = 8, FIELD_PRICE = 1, FIELD_SIZE = 2 };

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

/* Skips one field's value of wire type `wire`; 0, or -1 when malformed. */
static int skip(const uint8_t **p, const uint8_t *end, unsigned wire) {
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
    case WIRE_FIXED32:
        if ((size_t)(end - *p) < 4) return -1;
        *p += 4;
        return 0;
    default:
        return -1;
    }
}

/* One PriceLevel message in [p, end) into level; 0 or -1. */
static int read_level(const uint8_t *p, const uint8_t *end, double level[2]) {
    level[0] = 0.0;
    level[1] = 0.0;
    while (p < end) {
        uint64_t key;
        if (read_varint(&p, end, &key)) return -1;
        uint64_t field = key >> 3;
        unsigned wire = (unsigned)(key & 7);
        if (field == FIELD_PRICE || field == FIELD_SIZE) {
            if (wire != WIRE_FIXED64 || (size_t)(end - p) < 8) return -1;
            memcpy(&level[field - 1], p, 8); /* little-endian on every target this builds for */
            p += 8;
        } else if (field == 0 || skip(&p, end, wire)) {
            return -1;
        }
    }
    return 0;
}

int hft_depth_wire_levels(const uint8_t *buf, size_t len, double (*bids)[2], size_t bid_cap,
                          size_t *n_bids, double (*asks)[2], size_t ask_cap, size_t *n_asks) {
    if (!n_bids || !n_asks || (!buf && len) || (!bids && bid_cap) || (!asks && ask_cap))
        return HFT_EINVAL;
    *n_bids = 0;
    *n_asks = 0;
    const uint8_t *p = buf, *end = buf + len;
    while (p < end) {
        uint64_t key;
        if (read_varint(&p, end, &key)) return HFT_EINVAL;
        uint64_t field = key >> 3;
        unsigned wire = (unsigned)(key & 7);
        if ((field == FIELD_BIDS || field == FIELD_ASKS) && wire == WIRE_LEN) {
            uint64_t n;
            if (read_varint(&p, end, &n) || n > (uint64_t)(end - p)) return HFT_EINVAL;
            int bid = field == FIELD_BIDS;
            size_t *count = bid ? n_bids : n_asks;
            if (*count >= (bid ? bid_cap : ask_cap)) return HFT_ERANGE;
            double *level = bid ? bids[*count] : asks[*count];
            if (read_level(p, p + n, level)) return HFT_EINVAL;
            ++*count;
            p += n;
        } else if (field == 0 || skip(&p, end, wire)) {
            return HFT_EINVAL;
        }
    }
    return HFT_OK;
}
