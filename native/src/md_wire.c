/* A MarketUpdate as protobuf wire bytes (native/include/hft_md_wire.h). */
#include "hft_md_wire.h"
#include "hft_wire_internal.h"

#include <stdint.h>
#include <string.h>

/* Tags: field number << 3 | wire type (0 varint, 1 fixed64, 2 length-delimited). */
enum {
    TAG_UPDATES_ENTRY = 1 << 3 | 2, /* MarketUpdates.updates */

    TAG_STREAM_SEQUENCE = 1 << 3 | 0,
    TAG_SYMBOL_SEQUENCE = 2 << 3 | 0,
    TAG_CONFLATED = 3 << 3 | 0,
    TAG_KIND = 4 << 3 | 0,
    TAG_SYMBOL = 5 << 3 | 2,
    TAG_TOP = 6 << 3 | 2,
    TAG_LAST_TRADE = 7 << 3 | 2,
    TAG_VWAP = 8 << 3 | 1,
    TAG_RECEIVE_TS_NS = 9 << 3 | 0,

    TAG_SYMBOL_VENUE = 1 << 3 | 2,
    TAG_SYMBOL_NAME = 2 << 3 | 2,

    TAG_TOP_BID_PRICE = 1 << 3 | 1,
    TAG_TOP_BID_SIZE = 2 << 3 | 1,
    TAG_TOP_ASK_PRICE = 3 << 3 | 1,
    TAG_TOP_ASK_SIZE = 4 << 3 | 1,
    TAG_TOP_EXCHANGE_TS_NS = 5 << 3 | 0,

    TAG_TRADE_PRICE = 1 << 3 | 1,
    TAG_TRADE_SIZE = 2 << 3 | 1,
    TAG_TRADE_AGGRESSOR_SIDE = 3 << 3 | 0,
    TAG_TRADE_EXCHANGE_TS_NS = 4 << 3 | 0,
    TAG_TRADE_ID = 5 << 3 | 0,
};

/* Every tag above is below 128, so each takes one byte. */
#define TAG_BYTES 1
#define FIXED64_BYTES 8

static inline size_t varint_bytes(uint64_t value) { return hft_wire_varint_bytes(value); }

/* proto3 omits a field at its default; these are the bytes a present field takes. */
static inline size_t varint_field_bytes(uint64_t value) {
    return value ? TAG_BYTES + varint_bytes(value) : 0;
}

static inline uint64_t double_bits(double value) {
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

/* By bits, as protobuf decides: -0.0 is not the default and is written. */
static inline size_t double_field_bytes(double value) {
    return double_bits(value) ? TAG_BYTES + FIXED64_BYTES : 0;
}

static inline size_t string_field_bytes(size_t len) {
    return len ? TAG_BYTES + varint_bytes(len) + len : 0;
}

static inline size_t message_field_bytes(size_t len) {
    return TAG_BYTES + varint_bytes(len) + len;
}

static inline uint8_t *put_varint(uint8_t *p, uint64_t value) { return hft_wire_put_varint(p, value); }

static inline uint8_t *put_varint_field(uint8_t *p, uint8_t tag, uint64_t value) {
    if (!value) {
        return p;
    }
    *p++ = tag;
    return put_varint(p, value);
}

static inline uint8_t *put_double_field(uint8_t *p, uint8_t tag, double value) {
    uint64_t bits = double_bits(value);
    if (!bits) {
        return p;
    }
    *p++ = tag;
    /* Little-endian whatever the host's byte order. */
    for (int i = 0; i < FIXED64_BYTES; i++) {
        *p++ = (uint8_t)(bits >> (8 * i));
    }
    return p;
}

static inline uint8_t *put_string_field(uint8_t *p, uint8_t tag, const char *s, size_t len) {
    if (!len) {
        return p;
    }
    *p++ = tag;
    p = put_varint(p, len);
    memcpy(p, s, len);
    return p + len;
}

static inline uint8_t *put_message_header(uint8_t *p, uint8_t tag, size_t len) {
    *p++ = tag;
    return put_varint(p, len);
}

/* int64 and enum (int32) fields are varints of their two's complement, sign-extended to
 * 64 bits: a negative value takes ten bytes. */
static inline uint64_t as_varint_int64(int64_t value) {
    return (uint64_t)value;
}

int hft_md_wire_market_update(uint64_t stream_sequence, uint64_t symbol_sequence, uint64_t conflated, int32_t kind,
                              const char *venue, size_t venue_len, const char *name, size_t name_len,
                              double bid_price, double bid_size, double ask_price, double ask_size,
                              int64_t top_exchange_ts_ns, int has_last_trade, double trade_price,
                              double trade_size, int32_t trade_aggressor_side, int64_t trade_exchange_ts_ns,
                              uint64_t trade_id, double vwap, int64_t receive_ts_ns, int framed, uint8_t *out,
                              size_t capacity, size_t *written) {
    if (!out || !written || (!venue && venue_len) || (!name && name_len)) {
        return HFT_EINVAL;
    }
    /* Strings that long could not be held in memory anyway; refusing them keeps every
     * sum below from wrapping. */
    if (venue_len > SIZE_MAX / 4 || name_len > SIZE_MAX / 4) {
        return HFT_ERANGE;
    }
    const uint64_t kind_varint = as_varint_int64(kind);
    const uint64_t top_ts_varint = as_varint_int64(top_exchange_ts_ns);
    const uint64_t side_varint = as_varint_int64(trade_aggressor_side);
    const uint64_t trade_ts_varint = as_varint_int64(trade_exchange_ts_ns);
    const uint64_t receive_ts_varint = as_varint_int64(receive_ts_ns);

    const size_t symbol_len = string_field_bytes(venue_len) + string_field_bytes(name_len);
    const size_t top_len = double_field_bytes(bid_price) + double_field_bytes(bid_size) +
                           double_field_bytes(ask_price) + double_field_bytes(ask_size) +
                           varint_field_bytes(top_ts_varint);
    size_t trade_len = 0;
    if (has_last_trade) {
        trade_len = double_field_bytes(trade_price) + double_field_bytes(trade_size) +
                    varint_field_bytes(side_varint) + varint_field_bytes(trade_ts_varint) +
                    varint_field_bytes(trade_id);
    }
    const size_t body_len = varint_field_bytes(stream_sequence) + varint_field_bytes(symbol_sequence) +
                            varint_field_bytes(conflated) + varint_field_bytes(kind_varint) +
                            message_field_bytes(symbol_len) + message_field_bytes(top_len) +
                            (has_last_trade ? message_field_bytes(trade_len) : 0) + double_field_bytes(vwap) +
                            varint_field_bytes(receive_ts_varint);
    const size_t total_len = framed ? message_field_bytes(body_len) : body_len;
    if (total_len > capacity) {
        *written = total_len;
        return HFT_ERANGE;
    }

    uint8_t *p = out;
    if (framed) {
        p = put_message_header(p, TAG_UPDATES_ENTRY, body_len);
    }
    p = put_varint_field(p, TAG_STREAM_SEQUENCE, stream_sequence);
    p = put_varint_field(p, TAG_SYMBOL_SEQUENCE, symbol_sequence);
    p = put_varint_field(p, TAG_CONFLATED, conflated);
    p = put_varint_field(p, TAG_KIND, kind_varint);

    p = put_message_header(p, TAG_SYMBOL, symbol_len);
    p = put_string_field(p, TAG_SYMBOL_VENUE, venue, venue_len);
    p = put_string_field(p, TAG_SYMBOL_NAME, name, name_len);

    p = put_message_header(p, TAG_TOP, top_len);
    p = put_double_field(p, TAG_TOP_BID_PRICE, bid_price);
    p = put_double_field(p, TAG_TOP_BID_SIZE, bid_size);
    p = put_double_field(p, TAG_TOP_ASK_PRICE, ask_price);
    p = put_double_field(p, TAG_TOP_ASK_SIZE, ask_size);
    p = put_varint_field(p, TAG_TOP_EXCHANGE_TS_NS, top_ts_varint);

    if (has_last_trade) {
        p = put_message_header(p, TAG_LAST_TRADE, trade_len);
        p = put_double_field(p, TAG_TRADE_PRICE, trade_price);
        p = put_double_field(p, TAG_TRADE_SIZE, trade_size);
        p = put_varint_field(p, TAG_TRADE_AGGRESSOR_SIDE, side_varint);
        p = put_varint_field(p, TAG_TRADE_EXCHANGE_TS_NS, trade_ts_varint);
        p = put_varint_field(p, TAG_TRADE_ID, trade_id);
    }

    p = put_double_field(p, TAG_VWAP, vwap);
    p = put_varint_field(p, TAG_RECEIVE_TS_NS, receive_ts_varint);

    *written = (size_t)(p - out);
    return HFT_OK;
}
