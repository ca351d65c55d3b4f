/* Acks and execution reports as protobuf wire bytes (native/include/hft_exec_wire.h). */
#include "hft_exec_wire.h"

#include <string.h>

#include "hft_wire_internal.h"

/* OrderAck and ExecutionReport field numbers (protos/hftgate/v1/execution.proto). */
enum {
    ACK_ACTION = 1,
    ACK_CLIENT_ORDER_ID = 2,
    ACK_ORDER_ID = 3,
    ACK_SEQUENCE = 4,
    ACK_DURABLE = 5,
    ACK_STATUS = 6,
    ACK_REASON = 7,
    ACK_REASON_TEXT = 8,
    ACK_PRICE = 9,
    ACK_QUANTITY = 10,
    ACK_LEAVES = 11,
    ACK_CUM = 12,
    ACK_PRIORITY_KEPT = 13,
    ACK_RECEIVED_NS = 14,
    ACK_ACK_NS = 15,
};

enum {
    REPORT_SEQUENCE = 1,
    REPORT_INPUT_SEQUENCE = 2,
    REPORT_EXEC_TYPE = 3,
    REPORT_ORDER_ID = 4,
    REPORT_CLIENT_ORDER_ID = 5,
    REPORT_SYMBOL = 6,
    REPORT_SIDE = 7,
    REPORT_STATUS = 8,
    REPORT_PRICE = 9,
    REPORT_QUANTITY = 10,
    REPORT_LAST_PRICE = 11,
    REPORT_LAST_QUANTITY = 12,
    REPORT_LEAVES = 13,
    REPORT_CUM = 14,
    REPORT_TRADE_ID = 15,
    REPORT_LIQUIDITY = 16,
    REPORT_COUNTERPARTY = 17,
    REPORT_REASON = 18,
    REPORT_REASON_TEXT = 19,
    REPORT_RECEIVED_NS = 20,
    REPORT_TRANSACT_NS = 21,
};

/* Field numbers fit in 29 bits (protobuf's limit). */
#define FIELD_NUMBER_MAX ((1u << 29) - 1)

static inline uint8_t *put_key(uint8_t *p, uint32_t field, uint32_t wire_type) {
    return hft_wire_put_varint(p, (uint64_t)field << 3 | wire_type);
}

/* A varint field, omitted at its default (0). int64 and enums go as their two's complement. */
static inline uint8_t *put_int(uint8_t *p, uint32_t field, int64_t value) {
    if (!value) return p;
    p = put_key(p, field, HFT_WIRE_VARINT);
    return hft_wire_put_varint(p, (uint64_t)value);
}

static inline uint8_t *put_text(uint8_t *p, uint32_t field, const char *text, size_t length) {
    if (!length) return p;
    p = put_key(p, field, HFT_WIRE_LEN);
    p = hft_wire_put_varint(p, length);
    memcpy(p, text, length);
    return p + length;
}

/* An entry of the repeated field: key, length, message. The message is written past room for
 * the longest length varint first (its length is known only then) and moved up behind the
 * length: tens of bytes, cheaper than sizing every message twice. */
static inline uint8_t *entry_start(uint8_t *p, uint32_t field, uint8_t **head) {
    *head = put_key(p, field, HFT_WIRE_LEN);
    return *head + HFT_WIRE_VARINT_MAX_BYTES;
}

static inline uint8_t *entry_end(uint8_t *head, uint8_t *body, uint8_t *end) {
    size_t length = (size_t)(end - body);
    uint8_t *at = hft_wire_put_varint(head, length);
    memmove(at, body, length);
    return at + length;
}

/* Whether lengths[0, n) are non-negative and add up to at most size. */
static int lengths_fit(const int64_t *lengths, size_t n, size_t size) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lengths[i] < 0 || __builtin_add_overflow(total, (uint64_t)lengths[i], &total)) return 0;
    }
    return total <= size;
}

/* Whether offsets[0, n] ascend from 0 within size. */
static int offsets_fit(const int64_t *offsets, size_t n, size_t size) {
    if (offsets[0] < 0) return 0;
    for (size_t i = 0; i < n; i++) {
        if (offsets[i + 1] < offsets[i]) return 0;
    }
    return (uint64_t)offsets[n] <= size;
}

/* count * fixed + texts, or SIZE_MAX when that overflows. */
static size_t bound_of(size_t count, size_t fixed, size_t texts) {
    size_t bound;
    if (__builtin_mul_overflow(count, fixed, &bound) || __builtin_add_overflow(bound, texts, &bound))
        return SIZE_MAX;
    return bound;
}

int hft_exec_wire_acks(const hft_ack_columns *acks, size_t count, uint32_t field_number, uint8_t *out,
                       size_t capacity, size_t *written) {
    if (!acks || !written || field_number == 0 || field_number > FIELD_NUMBER_MAX) return HFT_EINVAL;
    if (count) {
        if (!out || !acks->action || !acks->order_id || !acks->sequence || !acks->status || !acks->reason ||
            !acks->price || !acks->quantity || !acks->leaves || !acks->cum || !acks->priority_kept ||
            !acks->client_id_lengths || !acks->reason_text_lengths ||
            (acks->client_ids_size && !acks->client_ids) || (acks->reason_texts_size && !acks->reason_texts))
            return HFT_EINVAL;
        if (!lengths_fit(acks->client_id_lengths, count, acks->client_ids_size) ||
            !lengths_fit(acks->reason_text_lengths, count, acks->reason_texts_size))
            return HFT_EINVAL;
    }
    /* (the texts' sizes bound what their lengths add up to, checked above) */
    size_t bound = bound_of(count, HFT_EXEC_WIRE_ACK_FIXED_MAX_BYTES, acks->client_ids_size);
    bound = bound_of(1, bound, acks->reason_texts_size);
    if (bound > capacity) {
        *written = bound;
        return HFT_ERANGE;
    }
    uint8_t *p = out;
    const char *client_id = acks->client_ids;
    const char *reason_text = acks->reason_texts;
    for (size_t i = 0; i < count; i++) {
        uint8_t *head;
        uint8_t *body = entry_start(p, field_number, &head);
        uint8_t *q = body;
        const size_t client_len = (size_t)acks->client_id_lengths[i];
        const size_t reason_len = (size_t)acks->reason_text_lengths[i];
        const int64_t sequence = acks->sequence[i];
        q = put_int(q, ACK_ACTION, acks->action[i]);
        q = put_text(q, ACK_CLIENT_ORDER_ID, client_id, client_len);
        q = put_int(q, ACK_ORDER_ID, acks->order_id[i]);
        q = put_int(q, ACK_SEQUENCE, sequence);
        q = put_int(q, ACK_DURABLE, acks->durable && sequence > 0);
        q = put_int(q, ACK_STATUS, acks->status[i]);
        q = put_int(q, ACK_REASON, acks->reason[i]);
        q = put_text(q, ACK_REASON_TEXT, reason_text, reason_len);
        q = put_int(q, ACK_PRICE, acks->price[i]);
        q = put_int(q, ACK_QUANTITY, acks->quantity[i]);
        q = put_int(q, ACK_LEAVES, acks->leaves[i]);
        q = put_int(q, ACK_CUM, acks->cum[i]);
        q = put_int(q, ACK_PRIORITY_KEPT, acks->priority_kept[i] != 0);
        q = put_int(q, ACK_RECEIVED_NS, acks->received_ns);
        q = put_int(q, ACK_ACK_NS, acks->ack_ns);
        p = entry_end(head, body, q);
        client_id += client_len;
        reason_text += reason_len;
    }
    *written = (size_t)(p - out);
    return HFT_OK;
}

/* A public id: the shard's base in an id above 0, any other id as it is. */
static inline int64_t public_id(int64_t id, int64_t shard_base) { return id > 0 ? id | shard_base : id; }

int hft_exec_wire_reports(const hft_report_row *rows, size_t count, const hft_report_texts *texts,
                          uint32_t field_number, uint8_t *out, size_t capacity, size_t *written) {
    if (!texts || !written || field_number == 0 || field_number > FIELD_NUMBER_MAX) return HFT_EINVAL;
    if (!texts->symbol_offsets || !texts->reason_offsets) return HFT_EINVAL;
    if ((texts->client_ids_size && !texts->client_ids) || (texts->symbols_size && !texts->symbols) ||
        (texts->reason_texts_size && !texts->reason_texts) ||
        !offsets_fit(texts->symbol_offsets, texts->symbol_count, texts->symbols_size) ||
        !offsets_fit(texts->reason_offsets, texts->reason_count, texts->reason_texts_size))
        return HFT_EINVAL;
    size_t longest_symbol = 0, longest_reason = 0;
    for (size_t s = 0; s < texts->symbol_count; s++) {
        size_t length = (size_t)(texts->symbol_offsets[s + 1] - texts->symbol_offsets[s]);
        if (length > longest_symbol) longest_symbol = length;
    }
    for (size_t r = 0; r < texts->reason_count; r++) {
        size_t length = (size_t)(texts->reason_offsets[r + 1] - texts->reason_offsets[r]);
        if (length > longest_reason) longest_reason = length;
    }
    if (count) {
        if (!out || !rows || !texts->client_id_lengths) return HFT_EINVAL;
        if (!lengths_fit(texts->client_id_lengths, count, texts->client_ids_size)) return HFT_EINVAL;
        for (size_t i = 0; i < count; i++) {
            if (rows[i].symbol_id >= texts->symbol_count) return HFT_EINVAL;
        }
    }
    size_t bound = bound_of(count, HFT_EXEC_WIRE_REPORT_FIXED_MAX_BYTES, texts->client_ids_size);
    size_t names = bound_of(count, longest_symbol, 0);
    size_t reasons = bound_of(count, longest_reason, 0);
    bound = bound_of(1, bound, names);
    bound = bound_of(1, bound, reasons);
    if (bound > capacity) {
        *written = bound;
        return HFT_ERANGE;
    }
    const int64_t base = texts->shard_base;
    uint8_t *p = out;
    const char *client_id = texts->client_ids;
    for (size_t i = 0; i < count; i++) {
        const hft_report_row *r = &rows[i];
        const size_t client_len = (size_t)texts->client_id_lengths[i];
        const int64_t *symbol_at = &texts->symbol_offsets[r->symbol_id];
        uint8_t *head;
        uint8_t *body = entry_start(p, field_number, &head);
        uint8_t *q = body;
        q = put_int(q, REPORT_SEQUENCE, r->sequence);
        q = put_int(q, REPORT_INPUT_SEQUENCE, r->input_sequence);
        q = put_int(q, REPORT_EXEC_TYPE, r->exec_type);
        q = put_int(q, REPORT_ORDER_ID, r->order_id | base);
        q = put_text(q, REPORT_CLIENT_ORDER_ID, client_id, client_len);
        q = put_text(q, REPORT_SYMBOL, texts->symbols + symbol_at[0], (size_t)(symbol_at[1] - symbol_at[0]));
        q = put_int(q, REPORT_SIDE, r->side);
        q = put_int(q, REPORT_STATUS, r->status);
        q = put_int(q, REPORT_PRICE, r->price);
        q = put_int(q, REPORT_QUANTITY, r->quantity);
        q = put_int(q, REPORT_LAST_PRICE, r->last_price);
        q = put_int(q, REPORT_LAST_QUANTITY, r->last_quantity);
        q = put_int(q, REPORT_LEAVES, r->leaves);
        q = put_int(q, REPORT_CUM, r->cum);
        q = put_int(q, REPORT_TRADE_ID, public_id(r->trade_id, base));
        q = put_int(q, REPORT_LIQUIDITY, r->liquidity);
        q = put_int(q, REPORT_COUNTERPARTY, public_id(r->counterparty_order_id, base));
        q = put_int(q, REPORT_REASON, r->reason);
        if (r->reason < texts->reason_count) {
            const int64_t *reason_at = &texts->reason_offsets[r->reason];
            q = put_text(q, REPORT_REASON_TEXT, texts->reason_texts + reason_at[0],
                         (size_t)(reason_at[1] - reason_at[0]));
        }
        q = put_int(q, REPORT_RECEIVED_NS, r->received_ns);
        q = put_int(q, REPORT_TRANSACT_NS, r->transact_ns);
        p = entry_end(head, body, q);
        client_id += client_len;
    }
    *written = (size_t)(p - out);
    return HFT_OK;
}

int hft_exec_wire_packed(const int64_t *values, size_t count, uint32_t field_number, uint8_t *out, size_t capacity,
                         size_t *written) {
    if (!written || field_number == 0 || field_number > FIELD_NUMBER_MAX || (count && (!values || !out)))
        return HFT_EINVAL;
    if (!count) {
        *written = 0;
        return HFT_OK;
    }
    size_t bound = bound_of(count, HFT_WIRE_VARINT_MAX_BYTES, HFT_EXEC_WIRE_PACKED_FIXED_MAX_BYTES);
    if (bound > capacity) {
        *written = bound;
        return HFT_ERANGE;
    }
    size_t length = 0;
    for (size_t i = 0; i < count; i++) length += hft_wire_varint_bytes((uint64_t)values[i]);
    uint8_t *p = put_key(out, field_number, HFT_WIRE_LEN);
    p = hft_wire_put_varint(p, length);
    for (size_t i = 0; i < count; i++) p = hft_wire_put_varint(p, (uint64_t)values[i]);
    *written = (size_t)(p - out);
    return HFT_OK;
}
