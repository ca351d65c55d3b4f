/* crc32.c -- zlib-compatible CRC-32, slicing-by-8 (see hft_crc32.h). */
#include "hft_crc32.h"

#include <pthread.h>
#include <string.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "hft_crc32 slicing-by-8 assumes a little-endian CPU"
#endif

#define CRC32_POLY_REFLECTED 0xEDB88320u

/* Process-wide, written once under pthread_once and read-only afterwards. */
static uint32_t crc_tables[8][256];
static pthread_once_t crc_tables_once = PTHREAD_ONCE_INIT;

static void build_crc_tables(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ CRC32_POLY_REFLECTED : c >> 1;
        crc_tables[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc_tables[0][n];
        for (int t = 1; t < 8; t++) {
            c = crc_tables[0][c & 0xFF] ^ (c >> 8);
            crc_tables[t][n] = c;
        }
    }
}

uint32_t hft_crc32(uint32_t crc, const void *data, size_t length) {
    pthread_once(&crc_tables_once, build_crc_tables);
    const unsigned char *p = data;
    uint32_t c = ~crc;
    while (length && ((uintptr_t)p & 7)) {
        c = crc_tables[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
        length--;
    }
    while (length >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= c; /* little-endian: the low word meets the running CRC */
        c = crc_tables[7][lo & 0xFF] ^ crc_tables[6][(lo >> 8) & 0xFF] ^ crc_tables[5][(lo >> 16) & 0xFF] ^
            crc_tables[4][lo >> 24] ^ crc_tables[3][hi & 0xFF] ^ crc_tables[2][(hi >> 8) & 0xFF] ^
            crc_tables[1][(hi >> 16) & 0xFF] ^ crc_tables[0][hi >> 24];
        p += 8;
        length -= 8;
    }
    while (length--) c = crc_tables[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}
