/*
 * hft_crc32.h -- CRC-32 as zlib computes it (IEEE 802.3 polynomial, reflected,
 * initial and final XOR 0xFFFFFFFF), so a record framed in C verifies with
 * Python's zlib.crc32 and the other way round.
 *
 * Two kernels, chosen once per process: on x86-64 CPUs with PCLMULQDQ and
 * SSE4.1, carry-less multiply folding for the multiples of 16 bytes of any
 * call of 64 bytes or more; slicing-by-8 (eight 256-entry tables, 8 bytes per
 * step) for the rest and everywhere else. HFT_NATIVE_FORCE_SCALAR=1 in the
 * environment before the first call keeps slicing-by-8 (as for the VWAP
 * kernels). The tables and the choice are made once per process on first use
 * (pthread_once); after that they are read-only, so any number of threads may
 * call hft_crc32 at once, and a child forked after a first call may too.
 */
#ifndef HFT_CRC32_H
#define HFT_CRC32_H

#include "hft_common.h"

/* Continue a CRC: hft_crc32(hft_crc32(0, a, na), b, nb) == hft_crc32(0, a+b, na+nb),
 * the same chaining contract as zlib's crc32(). `data` may be NULL when length is 0. */
uint32_t hft_crc32(uint32_t crc, const void *data, size_t length);

/* The kernel hft_crc32 uses in this process: "pclmul" or "slice8". */
const char *hft_crc32_kernel_name(void);

#endif /* HFT_CRC32_H */
