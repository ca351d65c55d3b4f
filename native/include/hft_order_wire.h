/*
 * hft_order_wire.h -- the execution service's new orders read from their protobuf wire bytes
 * (protos/hftgate/v1/execution.proto: SubmitOrdersRequest, OrderStreamRequest, and
 * SubmitOrderColumnsRequest's packed columns), many in one call.
 *
 * Why in C: reading a batch's NewOrder messages field by field in Python (13 attribute reads
 * and a tuple per order, then a structured array built from the tuples) cost ~1.5 us an order,
 * a fifth of SubmitOrders' whole cost in the service. This reads the same bytes into the order
 * path's columns in one pass.
 *
 * A fast path, not a parser: it decodes the messages a protobuf library writes for ordinary
 * orders and answers HFT_ORDER_WIRE_GENERAL for anything else, and the caller then decodes the
 * message with protobuf itself. So this never accepts bytes protobuf would refuse, and never
 * reads a message differently: what it takes, it takes exactly as protobuf does (proto3: a
 * field that is absent is 0 or ""; a scalar field that appears twice keeps its last value;
 * int32 and enum fields keep their varint's low 32 bits, sign-extended; a bool is whether its
 * varint is non-zero). It hands to the general path:
 *   - a field number it does not know, or a known one with another wire type;
 *   - a tag or a length that takes more bytes than needed, or a varint over ten bytes or whose
 *     tenth byte carries more than the 64th bit;
 *   - a string that is not 0..HFT_ORDER_WIRE_TEXT_MAX bytes of printable ASCII (0x20..0x7e),
 *     so every text it passes on is valid UTF-8 and holds no '\n';
 *   - more than HFT_ORDER_WIRE_SYMBOLS_MAX distinct symbols, or more orders or text than
 *     the caller's buffers hold;
 *   - in an OrderStreamRequest, an OrderInput that is not exactly one new_order;
 *   - bytes that end inside a field, or a length that runs past its message.
 *
 * Texts come back joined by '\n' (one text of the client order ids, one of the distinct
 * symbols), so the caller splits each with a single call; a row's symbol is an index into the
 * distinct symbols, numbered by first appearance.
 *
 * Ownership: every pointer belongs to the caller and is used only during the call.
 * Concurrency: pure over its arguments.
 */
#ifndef HFT_ORDER_WIRE_H
#define HFT_ORDER_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "hft_common.h"

/* Longest client order id or symbol the fast path takes (longer ones go to protobuf, and the
 * service refuses them there: hft_client_ids.h's HFT_CLIENT_ID_MAX is the same 64). */
#define HFT_ORDER_WIRE_TEXT_MAX 64
/* Most distinct symbols in one message on the fast path. */
#define HFT_ORDER_WIRE_SYMBOLS_MAX 16
/* Bytes the distinct symbols' text may need: every symbol at its longest, and its '\n'. */
#define HFT_ORDER_WIRE_SYMBOLS_BYTES (HFT_ORDER_WIRE_SYMBOLS_MAX * (HFT_ORDER_WIRE_TEXT_MAX + 1))
/* Returned when the bytes are not for the fast path (see above). */
#define HFT_ORDER_WIRE_GENERAL 1

/* What messages hold the orders. */
#define HFT_ORDER_WIRE_SUBMIT_ORDERS 0 /* SubmitOrdersRequest: orders = 1 (NewOrder) */
#define HFT_ORDER_WIRE_STREAM 1        /* OrderStreamRequest: inputs = 1 (OrderInput: new_order = 1) */

/* One NewOrder's numeric fields, in the order (and with the layout) of the service's
 * NEW_ORDER_DTYPE (services/execution/risk.py): eleven int64. */
typedef struct hft_new_order_row {
    int64_t side;          /* NewOrder.side (3) */
    int64_t order_type;    /* .order_type (4) */
    int64_t tif;           /* .time_in_force (5) */
    int64_t price;         /* .price_ticks (6) */
    int64_t stop_price;    /* .stop_price_ticks (7) */
    int64_t quantity;      /* .quantity_lots (8) */
    int64_t display;       /* .display_quantity_lots (9) */
    int64_t post_only;     /* .post_only (10): 0 or 1 */
    int64_t stp;           /* .self_trade_prevention (11) */
    int64_t protection;    /* .protection_price_ticks (12) */
    int64_t priority;      /* .priority (13) */
} hft_new_order_row;

/* The caller's buffers (in) and what was decoded into them (out). */
typedef struct hft_order_wire_out {
    hft_new_order_row *rows;  /* in: room for capacity rows */
    uint8_t *symbol_index;    /* in: room for capacity entries */
    size_t capacity;
    char *client_ids;         /* in: room for client_ids_capacity bytes */
    size_t client_ids_capacity;
    char *symbols;            /* in: room for HFT_ORDER_WIRE_SYMBOLS_BYTES */
    size_t count;             /* out: orders decoded */
    size_t client_ids_size;   /* out: bytes of client_ids used (count - 1 of them are '\n') */
    size_t symbol_count;      /* out: distinct symbols */
    size_t symbols_size;      /* out: bytes of symbols used (symbol_count - 1 of them '\n') */
} hft_order_wire_out;

/* Decode the new orders of the message data[0, size) of kind `message` (HFT_ORDER_WIRE_*).
 * HFT_OK: out holds them all. HFT_ORDER_WIRE_GENERAL: not for the fast path (out's outputs
 * mean nothing). HFT_EINVAL: a NULL pointer or an unknown kind. */
int hft_order_wire_decode_new_orders(const uint8_t *data, size_t size, int message, hft_order_wire_out *out);

/* The orders of a SubmitOrderColumnsRequest (execution.proto: orders = 1, an OrderColumns),
 * data[0, size), into the same buffers: the rows, the client order ids joined by '\n', the
 * message's `symbols` entries joined by '\n' (as they are, duplicates included: symbol_count
 * is the number of entries) and each order's symbol_index into them.
 *
 * The same fast-path rules as above, and the columns' own. It hands to the general path, where
 * protobuf reads the message and the service says what is wrong with it:
 *   - a request that is not exactly one `orders` field, or holds no order;
 *   - a per-order numeric column (symbol_index, side .. priority) not in one packed field,
 *     or that appears twice (protobuf would join the two);
 *   - a column whose entries are neither one per order nor none (symbol_index: one per order),
 *     or a symbol_index entry past the symbols' entries;
 *   - more than HFT_ORDER_WIRE_SYMBOLS_MAX `symbols` entries, or a text the rules above refuse.
 * A column with no entries is 0 for every order, as protobuf's NewOrder default. */
int hft_order_wire_decode_columns(const uint8_t *data, size_t size, hft_order_wire_out *out);

#endif /* HFT_ORDER_WIRE_H */
