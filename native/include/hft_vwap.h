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
 * call from any number of threads at once. The _parallel functions start
 * threads of their own but only for the length of the call (see below).
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

/* ---- multi-threaded ----------------------------------------------------------
 * One core cannot read memory as fast as two: at 1M float64 pairs (16 MB) the
 * single-thread kernel is bound by one core's memory bandwidth, so splitting
 * the array across cores is the only way left to go faster.
 *
 * hft_vwap_f64_parallel / _f32_parallel split [0, n) into contiguous chunks,
 * one per thread; each chunk is summed by the dispatched kernel (the same
 * one-time choice as hft_vwap_f64), and the partial sums are added in chunk
 * order. The chunking depends only on (n, element size, threads), so for given
 * inputs and threads the result is the same bits on every call, whatever the
 * scheduling. It may differ from hft_vwap_f64 in the last bits (another
 * summation order), except when one thread is used: then it is exactly
 * hft_vwap_f64.
 *
 * Threads are spawned per call and joined before the call returns; the calling
 * thread sums the first chunk itself, so threads - 1 are created. Nothing
 * outlives the call: no pool, no global state beyond the kernel choice. So the
 * functions are safe from any number of threads at once and across fork().
 * The workers run with every signal blocked, so a signal meant for the
 * process never lands on them. If a thread cannot be created (EAGAIN: a
 * process limit) the caller sums that chunk itself: the call is slower, never
 * wrong and never different.
 *
 * Why spawn per call, not a pool: on the 2-core development VM, getting a
 * second thread running on the other (idle) core costs 55-75 us: ~37 us in
 * pthread_create, then ~30 us before the new thread runs. A parked pool worker
 * woken by a futex costs ~50 us (15 us in FUTEX_WAKE, then ~35 us), because
 * either way the cost is mostly the hypervisor waking an idle virtual CPU. So
 * a pool saved only ~10% at 1M float64 (measured back to back: ~370 vs
 * ~410 us, one thread ~500 us) while it would keep threads alive in every
 * process that ever called this, with fork and shutdown hazards. Only workers
 * that spin between calls avoid the wake-up (OpenBLAS's workers spin for a while
 * after each call, which is why numpy's np.dot gets its 2x back to back), and a
 * trading service does not want a core burnt by a library behind its back.
 *
 * Threshold: with wake-ups that dear, threading only pays on arrays well past
 * the caches. Each thread gets at least HFT_VWAP_PARALLEL_MIN_CHUNK_BYTES of
 * input (prices and volumes together), so the call uses
 * min(threads, n * 2 * element size / HFT_VWAP_PARALLEL_MIN_CHUNK_BYTES)
 * threads, at least 1 (see hft_vwap_parallel_threads_used); below two chunks'
 * worth it runs single-threaded and creates no thread. Measured on that VM,
 * two threads against one, cache-warm, back to back (range of the medians of
 * 3 quiet runs, float64 and float32 alike): 0.7-0.85x at 6 MB of input,
 * 0.8-1.0x at 8 MB, 1.0-1.2x at 12 MB (the break-even, hence 2 x 6 MiB),
 * 1.1-1.3x at 16 MB (1M float64), 1.4-1.5x at 32 MB and above. In bytes, not
 * elements, because the work is bound by memory, not by arithmetic: float32
 * breaks even at twice as many elements. */
#define HFT_VWAP_PARALLEL_MIN_CHUNK_BYTES (6 << 20)

/* The most threads one call may ask for; the per-chunk state lives on the
 * caller's stack. */
#define HFT_VWAP_MAX_THREADS 64

/* VWAP of n float64 pairs using up to `threads` threads (1..HFT_VWAP_MAX_THREADS),
 * as described above. Returns HFT_OK, or HFT_EINVAL when a pointer is NULL,
 * n == 0, threads is 0 or above HFT_VWAP_MAX_THREADS, or the volumes sum to
 * exactly 0 (*out is then untouched). Blocks until every worker is joined. */
int hft_vwap_f64_parallel(const double *prices, const double *volumes, size_t n, unsigned threads,
                          double *out);

/* The same for float32 inputs, accumulating in double like hft_vwap_f32. */
int hft_vwap_f32_parallel(const float *prices, const float *volumes, size_t n, unsigned threads,
                          double *out);

/* How many threads (the caller included) a _parallel call over n elements of
 * element_size bytes (8 for float64, 4 for float32) with this `threads` uses:
 * min(threads, n * 2 * element_size / HFT_VWAP_PARALLEL_MIN_CHUNK_BYTES), at
 * least 1, after clamping threads to 1..HFT_VWAP_MAX_THREADS. Pure. */
unsigned hft_vwap_parallel_threads_used(size_t n, size_t element_size, unsigned threads);

/* 1 when this CPU runs the AVX2 + FMA kernels, else 0. Ignores the
 * HFT_NATIVE_FORCE_SCALAR switch. */
int hft_vwap_avx2_supported(void);

/* The kernel hft_vwap_f64/f32 use: HFT_VWAP_KERNEL_SCALAR or _AVX2 (makes the
 * one-time choice if no call has made it yet). */
int hft_vwap_kernel(void);

/* The same as a static string, "scalar" or "avx2". */
const char *hft_vwap_kernel_name(void);

#endif /* HFT_VWAP_H */
