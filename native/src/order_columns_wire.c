/* A SubmitOrderColumnsRequest read from its wire bytes (see hft_order_wire.h).
 *
 * Two passes over the OrderColumns message: the first copies the texts (symbols, client order
 * ids: repeated strings, one field per entry) and notes where each packed column lies; the
 * second reads the columns, once the number of orders (one client order id each) is known. So
 * the fields may come in any order, as protobuf allows. */
#include <stddef.h>
#include <string.h>

#include "hft_order_wire.h"
#include "hft_wire_internal.h"

/* OrderColumns' field numbers (execution.proto). */
enum { F_SYMBOLS = 1, F_SYMBOL_INDEX = 2, F_CLIENT_ORDER_ID = 3, F_LAST = 14 };
/* SubmitOrderColumnsRequest.orders: field 1, length-delimited. */
#define TAG_ORDERS 0x0a

/* How a column's varints read: protobuf's rule for the field's type. */
enum reading { AS_INT32, AS_INT64, AS_BOOL };

/* Each numeric column (fields 4..14): the row field it fills and how it reads. */
static const struct {
    size_t offset;
    enum reading reading;
} COLUMNS[F_LAST + 1] = {
    [4] = {offsetof(hft_new_order_row, side), AS_INT32},
    [5] = {offsetof(hft_new_order_row, order_type), AS_INT32},
    [6] = {offsetof(hft_new_order_row, tif), AS_INT32},
    [7] = {offsetof(hft_new_order_row, price), AS_INT64},
    [8] = {offsetof(hft_new_order_row, stop_price), AS_INT64},
    [9] = {offsetof(hft_new_order_row, quantity), AS_INT64},
    [10] = {offsetof(hft_new_order_row, display), AS_INT64},
    [11] = {offsetof(hft_new_order_row, post_only), AS_BOOL},
    [12] = {offsetof(hft_new_order_row, stp), AS_INT32},
    [13] = {offsetof(hft_new_order_row, protection), AS_INT64},
    [14] = {offsetof(hft_new_order_row, priority), AS_INT32},
};

/* Where a packed column lies in the message. */
typedef struct column_span {
    const uint8_t *start;
    size_t length;
    int seen;
} column_span;

/* One varint of a packed column; most are one byte (sides, types, small quantities). */
static inline int next_varint(const uint8_t **p, const uint8_t *end, uint64_t *value) {
    if (*p < end && **p < 0x80) {
        *value = *(*p)++;
        return 1;
    }
    return hft_wire_read_varint(p, end, value);
}

/* The column [p, end) into each of the count rows' field at offset: 1 when it holds exactly
 * count entries. */
static int read_column(const uint8_t *p, const uint8_t *end, hft_new_order_row *rows, size_t count,
                       size_t offset, enum reading reading) {
    char *field = (char *)rows + offset;
    for (size_t i = 0; i < count; i++, field += sizeof *rows) {
        uint64_t v;
        if (!next_varint(&p, end, &v)) return 0;
        int64_t value = reading == AS_INT64 ? (int64_t)v : reading == AS_INT32 ? hft_wire_as_int32(v) : v != 0;
        memcpy(field, &value, sizeof value);
    }
    return p == end;
}

static void zero_column(hft_new_order_row *rows, size_t count, size_t offset) {
    char *field = (char *)rows + offset;
    const int64_t zero = 0;
    for (size_t i = 0; i < count; i++, field += sizeof *rows) memcpy(field, &zero, sizeof zero);
}

/* symbol_index [p, end): exactly one entry per order, each naming one of the symbols. */
static int read_symbol_index(const uint8_t *p, const uint8_t *end, hft_order_wire_out *out) {
    for (size_t i = 0; i < out->count; i++) {
        uint64_t v;
        if (!next_varint(&p, end, &v) || v >= out->symbol_count) return 0;
        out->symbol_index[i] = (uint8_t)v; /* < HFT_ORDER_WIRE_SYMBOLS_MAX */
    }
    return p == end;
}

/* A printable text (see hft_order_wire.h) appended to '\n'-joined texts (hft_wire_append_line). */
static int append_text(char *buffer, size_t *size, size_t capacity, size_t entries, const uint8_t *text,
                       size_t length) {
    return hft_wire_printable(text, length, HFT_ORDER_WIRE_TEXT_MAX) &&
           hft_wire_append_line(buffer, size, capacity, entries, text, length);
}

int hft_order_wire_decode_columns(const uint8_t *data, size_t size, hft_order_wire_out *out) {
    if (out == NULL || (data == NULL && size) || out->rows == NULL || out->symbol_index == NULL ||
        out->client_ids == NULL || out->symbols == NULL)
        return HFT_EINVAL;
    out->count = out->client_ids_size = out->symbol_count = out->symbols_size = 0;
    const uint8_t *p = data, *end = data + size;
    size_t length;
    if (size == 0 || *p++ != TAG_ORDERS || !hft_wire_read_length(&p, end, &length) ||
        length != (size_t)(end - p))
        return HFT_ORDER_WIRE_GENERAL;
    column_span spans[F_LAST + 1];
    memset(spans, 0, sizeof spans);
    while (p < end) {
        uint8_t tag = *p++;
        int field = tag >> 3; /* a tag past one byte (field 16 on) is > F_LAST */
        if ((tag & 7) != HFT_WIRE_LEN || field < F_SYMBOLS || field > F_LAST ||
            !hft_wire_read_length(&p, end, &length))
            return HFT_ORDER_WIRE_GENERAL;
        const uint8_t *value = p;
        p += length;
        if (field == F_SYMBOLS) {
            if (out->symbol_count == HFT_ORDER_WIRE_SYMBOLS_MAX ||
                !append_text(out->symbols, &out->symbols_size, HFT_ORDER_WIRE_SYMBOLS_BYTES, out->symbol_count,
                             value, length))
                return HFT_ORDER_WIRE_GENERAL;
            out->symbol_count++;
        } else if (field == F_CLIENT_ORDER_ID) {
            if (out->count == out->capacity ||
                !append_text(out->client_ids, &out->client_ids_size, out->client_ids_capacity, out->count, value,
                             length))
                return HFT_ORDER_WIRE_GENERAL;
            out->count++;
        } else {
            if (spans[field].seen) return HFT_ORDER_WIRE_GENERAL;
            spans[field] = (column_span){value, length, 1};
        }
    }
    size_t count = out->count;
    const column_span *index = &spans[F_SYMBOL_INDEX];
    if (count == 0 || index->length == 0 || !read_symbol_index(index->start, index->start + index->length, out))
        return HFT_ORDER_WIRE_GENERAL;
    for (int field = F_CLIENT_ORDER_ID + 1; field <= F_LAST; field++) {
        const column_span *span = &spans[field];
        if (span->length == 0)
            zero_column(out->rows, count, COLUMNS[field].offset);
        else if (!read_column(span->start, span->start + span->length, out->rows, count, COLUMNS[field].offset,
                              COLUMNS[field].reading))
            return HFT_ORDER_WIRE_GENERAL;
    }
    return HFT_OK;
}
