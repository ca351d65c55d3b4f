/*
 * hft_md_wire.h -- a market data MarketUpdate (protos/hftgate/v1/marketdata.proto) as
 * protobuf wire bytes, for the Subscribe streams of the market data service.
 *
 * The service encodes every update it publishes once and shares the bytes between its
 * streams; building and serializing a protobuf message in Python cost ~2.5 us per update,
 * the largest part of a tick's cost once anyone subscribes. This writes the same bytes from
 * the update's scalars and its two strings in one call.
 *
 * The bytes are the ones protobuf itself writes (proto3, fields in field-number order):
 *   - a scalar field equal to its default is omitted: an integer or enum of 0, a double
 *     whose bits are all zero (so -0.0 and NaN are written, as protobuf writes them);
 *   - integers are varints; int64 and enum values below zero take ten bytes (two's
 *     complement, as protobuf sign-extends them); doubles are 8 bytes little-endian;
 *   - MarketUpdate.symbol and .top are always written (the service always sets them, so
 *     they are present even when every field inside is default), .last_trade only when
 *     has_last_trade is non-zero; each nested message is its tag, its length, its fields.
 * Strings are copied as given: the caller passes UTF-8 (protobuf requires it; nothing
 * here checks it).
 *
 * framed != 0 writes the message as one entry of MarketUpdates.updates instead: the tag of
 * that field (1, length-delimited) and the message's length in front of the message.
 *
 * Bounds: an encoding never exceeds HFT_MD_WIRE_FIXED_MAX_BYTES plus the two strings'
 * lengths, so a caller that sizes its buffer by that never sees HFT_ERANGE.
 *
 * Ownership: every pointer belongs to the caller and is used only during the call.
 *
 * Concurrency: pure over its arguments, safe from any number of threads at once as long
 * as no two calls write into the same buffer.
 */
#ifndef HFT_MD_WIRE_H
#define HFT_MD_WIRE_H

#include "hft_common.h"

/* Most bytes an encoding takes besides the venue's and the name's own bytes: every
 * varint at ten bytes, both nested messages and the framing included (~210 bytes). */
#define HFT_MD_WIRE_FIXED_MAX_BYTES 256

/* The MarketUpdate of these fields (see above) into out[0..capacity), its length in
 * *written. stream_sequence 0 leaves the field out, as inside a MarketUpdates message.
 * The last trade's fields are ignored when has_last_trade is 0.
 * HFT_OK; HFT_EINVAL when out or written is NULL, or venue or name is NULL with a
 * non-zero length; HFT_ERANGE when the encoding needs more than capacity bytes: *written
 * is then the length it needs and out is untouched. */
int hft_md_wire_market_update(uint64_t stream_sequence, uint64_t symbol_sequence, uint64_t conflated, int32_t kind,
                              const char *venue, size_t venue_len, const char *name, size_t name_len,
                              double bid_price, double bid_size, double ask_price, double ask_size,
                              int64_t top_exchange_ts_ns, int has_last_trade, double trade_price,
                              double trade_size, int32_t trade_aggressor_side, int64_t trade_exchange_ts_ns,
                              uint64_t trade_id, double vwap, int64_t receive_ts_ns, int framed, uint8_t *out,
                              size_t capacity, size_t *written);

#endif /* HFT_MD_WIRE_H */
