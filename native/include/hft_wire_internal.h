/*
 * hft_wire_internal.h -- protobuf wire-format primitives shared by the encoders of the C core
 * (md_wire.c, exec_wire.c) and its fast-path readers (order_wire.c, order_columns_wire.c).
 * Internal: not part of the cffi API.
 *
 * Varints are 7 bits a byte, least significant group first, the high bit set on every byte
 * but the last. int64 and enum values are written as their two's complement (a negative value
 * takes ten bytes), which is what protobuf itself does.
 */
#ifndef HFT_WIRE_INTERNAL_H
#define HFT_WIRE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Most bytes a varint takes (a 64-bit value). */
#define HFT_WIRE_VARINT_MAX_BYTES 10

/* Wire types of a field's key. */
#define HFT_WIRE_VARINT 0
#define HFT_WIRE_LEN 2

static inline size_t hft_wire_varint_bytes(uint64_t value) {
    /* 7 bits per byte: bits needed (at least 1), rounded up to whole bytes. */
    return (size_t)(64 - __builtin_clzll(value | 1) + 6) / 7;
}

static inline uint8_t *hft_wire_put_varint(uint8_t *p, uint64_t value) {
    while (value >= 0x80) {
        *p++ = (uint8_t)(value | 0x80);
        value >>= 7;
    }
    *p++ = (uint8_t)value;
    return p;
}

/* Reading. The fast-path readers take only the shortest encoding protobuf writes, so that what
 * they accept they read exactly as protobuf does; anything else is handed to protobuf. */

/* A varint at *p (before end) in its shortest form; 0 when it is not (too long, overlong, a
 * tenth byte beyond the 64th bit, or cut off by end). */
static inline int hft_wire_read_varint(const uint8_t **p, const uint8_t *end, uint64_t *value) {
    const uint8_t *q = *p;
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (q == end) return 0;
        uint8_t byte = *q++;
        if (shift == 63 && byte > 1) return 0; /* bits past the 64th */
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            if (byte == 0 && shift > 0) return 0; /* overlong: a trailing zero byte */
            *p = q;
            *value = v;
            return 1;
        }
    }
    return 0;
}

/* A length-delimited field's length at *p, which must fit before end. */
static inline int hft_wire_read_length(const uint8_t **p, const uint8_t *end, size_t *length) {
    uint64_t v;
    if (!hft_wire_read_varint(p, end, &v) || v > (uint64_t)(end - *p)) return 0;
    *length = (size_t)v;
    return 1;
}

/* Whether text is at most max bytes of printable ASCII (0x20..0x7e): valid UTF-8, no '\n'. */
static inline int hft_wire_printable(const uint8_t *text, size_t length, size_t max) {
    if (length > max) return 0;
    for (size_t i = 0; i < length; i++)
        if (text[i] < 0x20 || text[i] > 0x7e) return 0;
    return 1;
}

/* text[0, length) appended to the '\n'-joined texts at buffer[*size], of `entries` entries so far,
 * within capacity bytes (the '\n' before it included); 0, with nothing written, when it does not fit. */
static inline int hft_wire_append_line(char *buffer, size_t *size, size_t capacity, size_t entries,
                                       const uint8_t *text, size_t length) {
    size_t at = *size + (entries ? 1 : 0);
    if (length > capacity || at > capacity - length) return 0;
    if (entries) buffer[*size] = '\n';
    memcpy(buffer + at, text, length);
    *size = at + length;
    return 1;
}

/* The int32 (and enum) reading of a varint: its low 32 bits, sign-extended. */
static inline int64_t hft_wire_as_int32(uint64_t v) { return (int64_t)(int32_t)(uint32_t)v; }

#endif /* HFT_WIRE_INTERNAL_H */
