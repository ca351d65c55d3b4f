/* New orders read from their protobuf wire bytes (see hft_order_wire.h). */
#include "hft_order_wire.h"

#include <string.h>

#include "hft_wire_internal.h"

/* The NewOrder field numbers (execution.proto) and protobuf's wire types. */
enum { F_CLIENT_ORDER_ID = 1, F_SYMBOL = 2, F_PRIORITY = 13 };
/* Field 1, length-delimited: SubmitOrdersRequest.orders, OrderStreamRequest.inputs and
 * OrderInput.new_order all have this one-byte tag. */
#define TAG_FIELD1_LEN 0x0a

/* One NewOrder message [p, end) into row, its texts into (id, id_length), (symbol, symbol_length). */
static int read_new_order(const uint8_t *p, const uint8_t *end, hft_new_order_row *row, const uint8_t **id,
                          size_t *id_length, const uint8_t **symbol, size_t *symbol_length) {
    memset(row, 0, sizeof *row);
    *id = *symbol = p;
    *id_length = *symbol_length = 0;
    while (p < end) {
        uint8_t tag = *p++;
        if (tag & 0x80) return 0; /* a field number past 15: none of NewOrder's */
        int field = tag >> 3, wire = tag & 7;
        if (field == F_CLIENT_ORDER_ID || field == F_SYMBOL) {
            size_t length;
            if (wire != HFT_WIRE_LEN || !hft_wire_read_length(&p, end, &length) ||
                !hft_wire_printable(p, length, HFT_ORDER_WIRE_TEXT_MAX))
                return 0;
            if (field == F_CLIENT_ORDER_ID) {
                *id = p;
                *id_length = length;
            } else {
                *symbol = p;
                *symbol_length = length;
            }
            p += length;
            continue;
        }
        uint64_t v;
        if (field < 3 || field > F_PRIORITY || wire != HFT_WIRE_VARINT || !hft_wire_read_varint(&p, end, &v))
            return 0;
        switch (field) {
        case 3: row->side = hft_wire_as_int32(v); break;
        case 4: row->order_type = hft_wire_as_int32(v); break;
        case 5: row->tif = hft_wire_as_int32(v); break;
        case 6: row->price = (int64_t)v; break;
        case 7: row->stop_price = (int64_t)v; break;
        case 8: row->quantity = (int64_t)v; break;
        case 9: row->display = (int64_t)v; break;
        case 10: row->post_only = v != 0; break;
        case 11: row->stp = hft_wire_as_int32(v); break;
        case 12: row->protection = (int64_t)v; break;
        default: row->priority = hft_wire_as_int32(v); break; /* 13 */
        }
    }
    return 1;
}

/* The index of symbol among out's distinct symbols, added when new; -1 when there is no room. */
static int symbol_index(hft_order_wire_out *out, size_t *starts, size_t *lengths, const uint8_t *symbol,
                        size_t length, int last) {
    if (last >= 0 && lengths[last] == length && memcmp(out->symbols + starts[last], symbol, length) == 0)
        return last;
    for (size_t i = 0; i < out->symbol_count; i++)
        if (lengths[i] == length && memcmp(out->symbols + starts[i], symbol, length) == 0) return (int)i;
    if (out->symbol_count == HFT_ORDER_WIRE_SYMBOLS_MAX ||
        !hft_wire_append_line(out->symbols, &out->symbols_size, HFT_ORDER_WIRE_SYMBOLS_BYTES, out->symbol_count,
                              symbol, length))
        return -1;
    starts[out->symbol_count] = out->symbols_size - length;
    lengths[out->symbol_count] = length;
    return (int)out->symbol_count++;
}

int hft_order_wire_decode_new_orders(const uint8_t *data, size_t size, int message, hft_order_wire_out *out) {
    if (out == NULL || (data == NULL && size) || out->rows == NULL || out->symbol_index == NULL ||
        out->client_ids == NULL || out->symbols == NULL ||
        (message != HFT_ORDER_WIRE_SUBMIT_ORDERS && message != HFT_ORDER_WIRE_STREAM))
        return HFT_EINVAL;
    out->count = out->client_ids_size = out->symbol_count = out->symbols_size = 0;
    size_t starts[HFT_ORDER_WIRE_SYMBOLS_MAX], lengths[HFT_ORDER_WIRE_SYMBOLS_MAX];
    int last = -1;
    const uint8_t *p = data, *end = data + size;
    while (p < end) {
        size_t length;
        if (*p++ != TAG_FIELD1_LEN || !hft_wire_read_length(&p, end, &length)) return HFT_ORDER_WIRE_GENERAL;
        const uint8_t *body = p, *body_end = p + length;
        p = body_end;
        if (message == HFT_ORDER_WIRE_STREAM) { /* OrderInput: exactly one new_order, nothing else */
            size_t inner;
            if (body == body_end || *body++ != TAG_FIELD1_LEN ||
                !hft_wire_read_length(&body, body_end, &inner) ||
                inner != (size_t)(body_end - body))
                return HFT_ORDER_WIRE_GENERAL;
        }
        if (out->count == out->capacity) return HFT_ORDER_WIRE_GENERAL;
        const uint8_t *id, *symbol;
        size_t id_length, symbol_length;
        if (!read_new_order(body, body_end, &out->rows[out->count], &id, &id_length, &symbol, &symbol_length))
            return HFT_ORDER_WIRE_GENERAL;
        int index = symbol_index(out, starts, lengths, symbol, symbol_length, last);
        if (index < 0) return HFT_ORDER_WIRE_GENERAL;
        out->symbol_index[out->count] = (uint8_t)index;
        last = index;
        if (!hft_wire_append_line(out->client_ids, &out->client_ids_size, out->client_ids_capacity, out->count, id,
                                  id_length))
            return HFT_ORDER_WIRE_GENERAL;
        out->count++;
    }
    return HFT_OK;
}
