/*
 * hft_common.h -- conventions shared by every hftgate native module.
 *
 * Return codes: every fallible function returns int, 0 on success and a
 * negative errno-style code on failure; results travel through out-pointers.
 * The Python side (hftgate/native/errors.py) maps each code to one exception.
 */
#ifndef HFT_COMMON_H
#define HFT_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define HFT_OK 0
#define HFT_ENOENT (-2)     /* no such item (order id, key, ...) */
#define HFT_EAGAIN (-11)    /* would block: queue full on push, empty on pop */
#define HFT_ENOMEM (-12)    /* allocation failed or pool exhausted */
#define HFT_EEXIST (-17)    /* item already present (duplicate id) */
#define HFT_EINVAL (-22)    /* invalid argument */
#define HFT_ERANGE (-34)    /* value out of the representable range */
#define HFT_ETIMEDOUT (-110) /* a timed wait expired */

/* Size of a cache line on every x86-64 and most ARM64 parts; used to pad
 * fields written by different threads so they never share a line. */
#define HFT_CACHE_LINE 64

#endif /* HFT_COMMON_H */
