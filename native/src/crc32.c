/* crc32.c -- zlib-compatible CRC-32: carry-less multiply folding where the CPU has it,
 * slicing-by-8 elsewhere and for the bytes the folding leaves (see hft_crc32.h). */
#include "hft_crc32.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#define HFT_CRC32_HAVE_CLMUL 1
#include <immintrin.h>
#else
#define HFT_CRC32_HAVE_CLMUL 0
#endif

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "hft_crc32 slicing-by-8 assumes a little-endian CPU"
#endif

#define CRC32_POLY_REFLECTED 0xEDB88320u

/* Process-wide, written once under pthread_once and read-only afterwards (the kernel choice
 * too: a forked child, which must not run pthread_once, finds both set). */
static uint32_t crc_tables[8][256];
static bool use_clmul;
static pthread_once_t crc_tables_once = PTHREAD_ONCE_INIT;

static bool clmul_supported(void) {
#if HFT_CRC32_HAVE_CLMUL
    const char *force_scalar = getenv("HFT_NATIVE_FORCE_SCALAR"); /* as the VWAP kernels */
    if (force_scalar != NULL && strcmp(force_scalar, "1") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#else
    return false;
#endif
}

static void build_crc_tables(void) {
    use_clmul = clmul_supported();
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

#if HFT_CRC32_HAVE_CLMUL
/*
 * Folding with carry-less multiplication (Gopal et al., "Fast CRC Computation for Generic
 * Polynomials Using PCLMULQDQ", Intel, 2009), in the bit-reflected form zlib's CRC uses. Four
 * 128-bit accumulators each take a block 64 bytes on: a block x becomes x.lo * K1 ^ x.hi * K2,
 * the same value modulo P 512 bits later, XORed with the data there. Then the four fold into
 * one (K3, K4, 128 bits on), that one takes the rest 16 bytes at a time, and 128 bits reduce to
 * the 32-bit remainder: 64 bits by K4, 32 by K5, then Barrett reduction by P and mu =
 * floor(x^64 / P). Each constant is x^d mod P for its distance d, bit-reflected and shifted
 * left by one (reflection puts a product one bit off).
 */
#define CRC32_K1 0x154442bd4ull /* x^(4*128+32) mod P: the 4-way fold's low half */
#define CRC32_K2 0x1c6e41596ull /* x^(4*128-32) mod P: its high half */
#define CRC32_K3 0x1751997d0ull /* x^(128+32) mod P: the 1-way fold's low half */
#define CRC32_K4 0x0ccaa009eull /* x^(128-32) mod P: its high half, and the 128-to-64 fold */
#define CRC32_K5 0x163cd6124ull /* x^64 mod P: the 64-to-32 fold */
#define CRC32_P 0x1db710641ull  /* P itself, reflected */
#define CRC32_MU 0x1f7011641ull /* floor(x^64 / P), reflected */

/* The running CRC `c` (already inverted) advanced over `length` bytes, length >= 64 and a
 * multiple of 16. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc32_clmul(uint32_t c, const unsigned char *p,
                                                                      size_t length) {
    __m128i x0 = _mm_loadu_si128((const __m128i *)p);
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
    x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128((int)c)); /* the CRC so far meets the first bytes */
    p += 64;
    length -= 64;
    const __m128i k1k2 = _mm_set_epi64x((long long)CRC32_K2, (long long)CRC32_K1);
    while (length >= 64) {
#define FOLD(x, k, next)                                                                                    \
    _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128((x), (k), 0x00), _mm_clmulepi64_si128((x), (k), 0x11)), \
                  (next))
        x0 = FOLD(x0, k1k2, _mm_loadu_si128((const __m128i *)p));
        x1 = FOLD(x1, k1k2, _mm_loadu_si128((const __m128i *)(p + 16)));
        x2 = FOLD(x2, k1k2, _mm_loadu_si128((const __m128i *)(p + 32)));
        x3 = FOLD(x3, k1k2, _mm_loadu_si128((const __m128i *)(p + 48)));
        p += 64;
        length -= 64;
    }
    const __m128i k3k4 = _mm_set_epi64x((long long)CRC32_K4, (long long)CRC32_K3);
    x0 = FOLD(x0, k3k4, x1);
    x0 = FOLD(x0, k3k4, x2);
    x0 = FOLD(x0, k3k4, x3);
    while (length >= 16) {
        x0 = FOLD(x0, k3k4, _mm_loadu_si128((const __m128i *)p));
        p += 16;
        length -= 16;
    }
#undef FOLD
    /* 128 -> 64 bits (and 32 zero bits appended): the low half times K4 onto the high half. */
    x0 = _mm_xor_si128(_mm_srli_si128(x0, 8), _mm_clmulepi64_si128(x0, k3k4, 0x10));
    /* 64 -> 32 bits: the low 32 times K5 onto the rest. */
    const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);
    const __m128i k5 = _mm_set_epi64x(0, (long long)CRC32_K5);
    x0 = _mm_xor_si128(_mm_srli_si128(x0, 4), _mm_clmulepi64_si128(_mm_and_si128(x0, mask32), k5, 0x00));
    /* Barrett: q = (low 32 * mu) mod x^32, remainder = x ^ q * P, read from bits 32..63. */
    const __m128i poly_mu = _mm_set_epi64x((long long)CRC32_MU, (long long)CRC32_P);
    __m128i q = _mm_clmulepi64_si128(_mm_and_si128(x0, mask32), poly_mu, 0x10);
    q = _mm_clmulepi64_si128(_mm_and_si128(q, mask32), poly_mu, 0x00);
    return (uint32_t)_mm_extract_epi32(_mm_xor_si128(x0, q), 1);
}
#endif

uint32_t hft_crc32(uint32_t crc, const void *data, size_t length) {
    pthread_once(&crc_tables_once, build_crc_tables);
    const unsigned char *p = data;
    uint32_t c = ~crc;
#if HFT_CRC32_HAVE_CLMUL
    if (use_clmul && length >= 64) {
        size_t folded = length & ~(size_t)15;
        c = crc32_clmul(c, p, folded);
        p += folded;
        length -= folded;
    }
#endif
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

const char *hft_crc32_kernel_name(void) {
    pthread_once(&crc_tables_once, build_crc_tables);
    return use_clmul ? "pclmul" : "slice8";
}
