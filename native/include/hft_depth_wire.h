/*
 * hft_depth_wire.h -- the price levels of a market data DepthUpdate
 * (protos/hftgate/v1/marketdata.proto) read straight from protobuf wire bytes: from the
 * DepthUpdate's own bytes, or in turn from the bytes of the PublishQuotesRequest that carries
 * it, as the server received them.
 *
 * Why: a Python (price, size) tuple per level cost ~0.2 us a level (77 us for a 350-level
 * update), and serializing the decoded message again to read it here ~6 us (29 us for a
 * 2,000-level snapshot). The server keeps the request's bytes (protobuf decodes them once, for
 * every other field) and reads each update's levels from them into the depth book's arrays in
 * one pass.
 *
 * What is read: PublishQuotesRequest.depth_updates (field 2) in order; in each, DepthUpdate.bids
 * (field 7) and .asks (field 8), each a repeated PriceLevel, whose price (1) and size (2) are
 * doubles; a level without one of them has 0.0 there, and the last of a repeated one wins, as
 * protobuf decodes it. Every other field, at every level, is skipped by its wire type, groups
 * included; a known field number with another wire type is skipped too (protobuf keeps it as an
 * unknown field). Levels keep their order.
 *
 * Errors: HFT_EINVAL for bytes that are not a well-formed message (a truncated varint or field,
 * a length past the end, a field number 0, a wire type protobuf does not have, an unmatched
 * end-group key, groups nested deeper than 128) or a NULL pointer with a non-zero length;
 * HFT_ERANGE when a side has more levels than its capacity (the caller sizes the arrays by the
 * counts the decoded message already gives). On an error the counts and arrays hold whatever
 * was read so far. Bytes protobuf decodes are never refused here.
 *
 * Ownership: every pointer belongs to the caller and is used only during the call.
 * Concurrency: pure over its arguments.
 */
#ifndef HFT_DEPTH_WIRE_H
#define HFT_DEPTH_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "hft_common.h"

/* The levels of the DepthUpdate encoded in buf[0, len). */
int hft_depth_wire_levels(const uint8_t *buf, size_t len, double (*bids)[2], size_t bid_cap,
                          size_t *n_bids, double (*asks)[2], size_t ask_cap, size_t *n_asks);

/* The next DepthUpdate of the PublishQuotesRequest encoded in request[0, len), from byte
 * *cursor on (0 for the first; *cursor must be where a field starts): its bytes are
 * request[*offset, *offset + *length), and *cursor moves past them. HFT_OK; HFT_ENOENT when
 * there is none (*cursor = len); HFT_EINVAL as above, or for a cursor past len. */
int hft_depth_wire_next_update(const uint8_t *request, size_t len, size_t *cursor, size_t *offset,
                               size_t *length);

/* hft_depth_wire_next_update, then the levels of that update as hft_depth_wire_levels, then
 * hft_depth_levels_check of them into *check (hft_depth_book.h's HFT_DEPTH_* codes): one call
 * per update for the server, the check made while the levels are still in the cache. *check is
 * set only when HFT_OK is returned; HFT_EINVAL also for a NULL check. */
int hft_depth_wire_next_levels(const uint8_t *request, size_t len, size_t *cursor, double (*bids)[2],
                               size_t bid_cap, size_t *n_bids, double (*asks)[2], size_t ask_cap,
                               size_t *n_asks, int *check);

#endif
