/*
 * hft_exec_wire.h -- the execution service's acks and execution reports as protobuf wire
 * bytes (protos/hftgate/v1/execution.proto: OrderAck, ExecutionReport), many in one call.
 *
 * SubmitOrders answers a batch of up to thousands of orders with one OrderAck each, and an
 * OrderStream message with its acks and reports; built one protobuf object at a time in
 * Python they cost ~2 us each, a quarter of an order's whole cost in the service. These write
 * the entries of a repeated message field (SubmitOrdersResponse.acks, OrderStreamResponse.acks
 * and .executions, ...) from the service's columns: each entry is the field's key, the
 * message's length and the message. The caller parses the bytes into the response
 * (protobuf's C parser makes no per-entry object) or sends them as they are.
 *
 * The bytes are the ones protobuf writes for the same messages (proto3, fields in
 * field-number order): a field equal to its default (0, false, "") is omitted; int64 and enum
 * values are varints of their two's complement (a negative value takes ten bytes). Strings
 * are copied as given: the caller passes UTF-8.
 *
 * Bounds: an ack never takes more than HFT_EXEC_WIRE_ACK_FIXED_MAX_BYTES plus its two
 * strings' lengths, a report HFT_EXEC_WIRE_REPORT_FIXED_MAX_BYTES plus its three; a caller
 * that sizes its buffer by that never sees HFT_ERANGE.
 *
 * Ownership: every pointer belongs to the caller and is used only during the call.
 * Concurrency: pure over its arguments; safe from any number of threads as long as no two
 * calls write into the same buffer.
 */
#ifndef HFT_EXEC_WIRE_H
#define HFT_EXEC_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "hft_common.h"
#include "hft_order_fold.h"

/* Most bytes an entry takes besides its strings' own bytes: the entry's key and length, every
 * varint at ten bytes, every key at two bytes, every string's length at ten. */
#define HFT_EXEC_WIRE_ACK_FIXED_MAX_BYTES 224
#define HFT_EXEC_WIRE_REPORT_FIXED_MAX_BYTES 320

/* Per ack, OrderAck's fields (entry i of each array answers input i). Texts are joined: ack
 * i's client order id is the next client_id_lengths[i] bytes of client_ids, and its
 * reason_text the next reason_text_lengths[i] bytes of reason_texts (0 for none). */
typedef struct hft_ack_columns {
    const int64_t *action;         /* OrderAck.action (ORDER_ACTION_*) */
    const int64_t *order_id;       /* public order ids */
    const int64_t *sequence;       /* 0 when rejected */
    const uint8_t *status;         /* OrderStatus */
    const uint16_t *reason;        /* RejectReason */
    const int64_t *price;          /* price_ticks */
    const int64_t *quantity;       /* quantity_lots */
    const int64_t *leaves;         /* leaves_quantity_lots */
    const int64_t *cum;            /* cum_quantity_lots */
    const uint8_t *priority_kept;  /* 0 or 1 */
    const char *client_ids;
    const int64_t *client_id_lengths;
    size_t client_ids_size; /* bytes in client_ids */
    const char *reason_texts;
    const int64_t *reason_text_lengths;
    size_t reason_texts_size; /* bytes in reason_texts */
    int64_t received_ns;      /* every ack's received_ns */
    int64_t ack_ns;           /* every ack's ack_ns */
    int32_t durable;          /* non-zero: an ack with sequence > 0 says durable */
} hft_ack_columns;

/* What an ExecutionReport carries besides its report row: per report its order's client order
 * id (joined, as in hft_ack_columns), the symbols' names by symbol id (name i is bytes
 * [symbol_offsets[i], symbol_offsets[i + 1]) of symbols; symbol_offsets has symbol_count + 1
 * entries) and the reasons' texts by RejectReason value (the same shape; a reason at or past
 * reason_count has no text). shard_base goes into order, trade and counterparty ids above 0
 * (the order id always: it is above 0 in every report). */
typedef struct hft_report_texts {
    const char *client_ids;
    const int64_t *client_id_lengths;
    size_t client_ids_size;
    const char *symbols;
    const int64_t *symbol_offsets;
    size_t symbol_count;
    size_t symbols_size; /* bytes in symbols */
    const char *reason_texts;
    const int64_t *reason_offsets;
    size_t reason_count;
    size_t reason_texts_size; /* bytes in reason_texts */
    int64_t shard_base;
} hft_report_texts;

/* count OrderAck entries of repeated field field_number (1..2^29-1) into out[0..capacity),
 * their length in *written.
 * HFT_OK; HFT_EINVAL when a pointer is NULL where count > 0 needs it, field_number is out of
 * range, or a length is negative or the lengths add up past their text; HFT_ERANGE when
 * capacity is short of the bound above (*written is then the bound). Nothing is written on
 * an error. */
int hft_exec_wire_acks(const hft_ack_columns *acks, size_t count, uint32_t field_number, uint8_t *out,
                       size_t capacity, size_t *written);

/* count ExecutionReport entries of repeated field field_number, one per row, into
 * out[0..capacity), their length in *written. HFT_OK; HFT_EINVAL as above, or when a row's
 * symbol id is at or past symbol_count or an offset table is not ascending inside its text;
 * HFT_ERANGE as above. Nothing is written on an error. */
int hft_exec_wire_reports(const hft_report_row *rows, size_t count, const hft_report_texts *texts,
                          uint32_t field_number, uint8_t *out, size_t capacity, size_t *written);

/* A packed repeated int64 (or enum) field of count values -- a column of SubmitOrderColumns'
 * AckColumns -- into out[0..capacity), its length in *written: the field's key, the values'
 * byte length, the values as varints. Nothing when count is 0 (protobuf writes an empty
 * packed field so; out may then be NULL). HFT_OK; HFT_EINVAL for a NULL pointer that
 * count > 0 needs or a field number out of range; HFT_ERANGE when capacity is short of
 * HFT_EXEC_WIRE_PACKED_FIXED_MAX_BYTES + 10 * count (*written is then that bound). */
#define HFT_EXEC_WIRE_PACKED_FIXED_MAX_BYTES 16
int hft_exec_wire_packed(const int64_t *values, size_t count, uint32_t field_number, uint8_t *out, size_t capacity,
                         size_t *written);

#endif /* HFT_EXEC_WIRE_H */
