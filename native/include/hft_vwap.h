/*
 * hft_vwap.h -- volume-weighted average price, sum(p*v) / sum(v), in one pass.
 *
 * One pass over both arrays (the numerator and the denominator accumulate
 * together) halves the memory traffic of "dot product, then sum", which is
 * what bounds this on arrays larger than the caches.
 *
 * Two kernels compute it:
 *   - scalar: portable C, one element at a time; the reference and fallback.
 *   - avx2:   AVX2 + FMA, 4 doubles per register and several independent
 *             accumulators so consecutive FMAs do not wait on each other.
 *             Only that function is compiled for AVX2 (a target attribute), so
 *             the library still loads and runs on any x86-64 or non-x86 CPU.
 * The two sum in different orders, so their results may differ in the last
 * few bits; both accumulate in double.
 *
 * Kernel choice (process-global, one-time): the first call to hft_vwap_f64,
 * hft_vwap_f32 or hft_vwap_kernel picks the kernel and caches it for the life
 * of the process: avx2 when the CPU supports AVX2 and FMA, scalar otherwise,
 * or scalar whenever the environment variable HFT_NATIVE_FORCE_SCALAR is "1"
 * at that moment. Changing the variable later has no effect. The cache is an
 * atomic, so concurrent first calls are safe (they compute the same answer).
 *
 * Inputs: any length >= 1, any alignment (unaligned loads), no padding needed.
 * NaN or infinity in the inputs propagates into the result; negative volumes
 * are not rejected (they simply weigh negatively).
 *
 * Concurrency: every function here is pure over its arguments and safe to
 * call from any number of threads at once.
 */
#ifndef HFT_VWAP_H
#define HFT_VWAP_H

#include "hft_common.h"

/* Returned by the explicit AVX2 entry points when this CPU (or this build,
 * on non-x86) cannot run them. Errno-style like the codes in hft_common.h
 * (EOPNOTSUPP); the Python side reports it as a plain NativeError. */
#define HFT_VWAP_ENOTSUP (-95)

/* Kernel identifiers returned by hft_vwap_kernel(). */
#define HFT_VWAP_KERNEL_SCALAR 0
#define HFT_VWAP_KERNEL_AVX2 1

/* VWAP of n float64 (price, volume) pairs into *out, with the kernel chosen
 * once per process (see above). Returns HFT_OK, or HFT_EINVAL when a pointer
 * is NULL, n == 0, or the volumes sum to exactly 0 (*out is then untouched). */
int hft_vwap_f64(const double *prices, const double *volumes, size_t n, double *out);

/* The same for float32 inputs. Products and sums are accumulated in double,
 * so the result is as accurate as the f64 version fed the same values. */
int hft_vwap_f32(const float *prices, const float *volumes, size_t n, double *out);

/* The kernels themselves, bypassing the one-time choice: for tests and
 * benchmarks that need a particular path. Same contract as above; the avx2
 * ones return HFT_VWAP_ENOTSUP when hft_vwap_avx2_supported() is 0. */
int hft_vwap_f64_scalar(const double *prices, const double *volumes, size_t n, double *out);
int hft_vwap_f64_avx2(const double *prices, const double *volumes, size_t n, double *out);
int hft_vwap_f32_scalar(const float *prices, const float *volumes, size_t n, double *out);
int hft_vwap_f32_avx2(const float *prices, const float *volumes, size_t n, double *out);

/* 1 when this CPU runs the AVX2 + FMA kernels, else 0. Ignores the
 * HFT_NATIVE_FORCE_SCALAR switch. */
int hft_vwap_avx2_supported(void);

/* The kernel hft_vwap_f64/f32 use: HFT_VWAP_KERNEL_SCALAR or _AVX2 (makes the
 * one-time choice if no call has made it yet). */
int hft_vwap_kernel(void);

/* The same as a static string, "scalar" or "avx2". */
const char *hft_vwap_kernel_name(void);

#endif /* HFT_VWAP_H */
