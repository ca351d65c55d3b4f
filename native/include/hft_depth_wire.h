/*
 * hft_depth_wire.h -- the price levels of a market data DepthUpdate
 * (protos/hftgate/v1/marketdata.proto) read straight from its protobuf wire bytes.
 *
 * Why: the service used to build a Python (price, size) tuple per level from the decoded
 * message before the depth book saw it, ~0.2 us a level (77 us for a 350-level update),
 * several times what applying the update in C costs. Serializing the decoded message again
 * takes ~6 us for such an update; this reads its levels into the depth book's arrays in one
 * pass.
 *
 * What is read: DepthUpdate.bids (field 7) and .asks (field 8), each a repeated PriceLevel,
 * whose price (1) and size (2) are doubles; a level without one of them has 0.0 there, as
 * protobuf decodes it. Every other field, at either level, is skipped by its wire type.
 * Levels keep their order.
 *
 * Errors: HFT_EINVAL for bytes that are not a well-formed message (a truncated varint or
 * field, a length past the end, a wire type protobuf does not have, a PriceLevel field of
 * number 1 or 2 with another wire type) or a NULL pointer with a non-zero length; HFT_ERANGE
 * when a side has more levels than its capacity (the caller sizes the arrays by the count
 * it already knows). On an error the counts and arrays hold whatever was read so far.
 *
 * Ownership: every pointer belongs to the caller and is used only during the call.
 * Concurrency: pure over its arguments.
 */
#ifndef HFT_DEPTH_WIRE_H
#define HFT_DEPTH_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "hft_common.h"

int hft_depth_wire_levels(const uint8_t *buf, size_t len, double (*bids)[2], size_t bid_cap,
                          size_t *n_bids, double (*asks)[2], size_t ask_cap, size_t *n_asks);

#endif
