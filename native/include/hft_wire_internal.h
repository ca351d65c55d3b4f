/*
 * hft_wire_internal.h -- protobuf wire-format primitives shared by the encoders of the C core
 * (md_wire.c, exec_wire.c). Internal: not part of the cffi API.
 *
 * Varints are 7 bits a byte, least significant group first, the high bit set on every byte
 * but the last. int64 and enum values are written as their two's complement (a negative value
 * takes ten bytes), which is what protobuf itself does.
 */
#ifndef HFT_WIRE_INTERNAL_H
#define HFT_WIRE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

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

#endif /* HFT_WIRE_INTERNAL_H */
