/*
 * vwap.c -- see hft_vwap.h. Each kernel only produces the two sums; the
 * shared entry code validates arguments and does the one division.
 */
#include "hft_vwap.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define HFT_VWAP_HAVE_X86 1
#include <immintrin.h>
#else
#define HFT_VWAP_HAVE_X86 0
#endif

/* ---- scalar kernels --------------------------------------------------------
 * Deliberately the plain loop: it is the reference the AVX2 kernels are tested
 * against, and the compiler may not reorder it (no -ffast-math), so its
 * summation order is the textbook one. */

static void vwap_sums_f64_scalar(const double *prices, const double *volumes, size_t n,
                                 double *numerator, double *denominator)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        num += prices[i] * volumes[i];
        den += volumes[i];
    }
    *numerator = num;
    *denominator = den;
}

static void vwap_sums_f32_scalar(const float *prices, const float *volumes, size_t n,
                                 double *numerator, double *denominator)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        num += (double)prices[i] * (double)volumes[i];
        den += (double)volumes[i];
    }
    *numerator = num;
    *denominator = den;
}

/* ---- AVX2 + FMA kernels ----------------------------------------------------
 * 16 elements per iteration in four independent accumulator pairs: an FMA has
 * a latency of about 4 cycles and two can issue per cycle, so a single
 * accumulator would leave the unit idle most of the time. Loads are unaligned
 * (loadu costs nothing extra on aligned data on AVX2 parts), so callers may
 * pass any slice. Leftovers go 4 at a time, then one at a time. */

#if HFT_VWAP_HAVE_X86

__attribute__((target("avx2,fma"))) static double horizontal_sum_avx2(__m256d x)
{
    __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
    return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
}

__attribute__((target("avx2,fma"))) static void vwap_sums_f64_avx2(const double *prices,
                                                                   const double *volumes, size_t n,
                                                                   double *numerator,
                                                                   double *denominator)
{
    __m256d num0 = _mm256_setzero_pd(), num1 = num0, num2 = num0, num3 = num0;
    __m256d den0 = num0, den1 = num0, den2 = num0, den3 = num0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256d v0 = _mm256_loadu_pd(volumes + i);
        __m256d v1 = _mm256_loadu_pd(volumes + i + 4);
        __m256d v2 = _mm256_loadu_pd(volumes + i + 8);
        __m256d v3 = _mm256_loadu_pd(volumes + i + 12);
        num0 = _mm256_fmadd_pd(_mm256_loadu_pd(prices + i), v0, num0);
        num1 = _mm256_fmadd_pd(_mm256_loadu_pd(prices + i + 4), v1, num1);
        num2 = _mm256_fmadd_pd(_mm256_loadu_pd(prices + i + 8), v2, num2);
        num3 = _mm256_fmadd_pd(_mm256_loadu_pd(prices + i + 12), v3, num3);
        den0 = _mm256_add_pd(den0, v0);
        den1 = _mm256_add_pd(den1, v1);
        den2 = _mm256_add_pd(den2, v2);
        den3 = _mm256_add_pd(den3, v3);
    }
    for (; i + 4 <= n; i += 4) {
        __m256d v = _mm256_loadu_pd(volumes + i);
        num0 = _mm256_fmadd_pd(_mm256_loadu_pd(prices + i), v, num0);
        den0 = _mm256_add_pd(den0, v);
    }
    double num = horizontal_sum_avx2(_mm256_add_pd(_mm256_add_pd(num0, num1), _mm256_add_pd(num2, num3)));
    double den = horizontal_sum_avx2(_mm256_add_pd(_mm256_add_pd(den0, den1), _mm256_add_pd(den2, den3)));
    for (; i < n; i++) {
        num += prices[i] * volumes[i];
        den += volumes[i];
    }
    *numerator = num;
    *denominator = den;
}

/* float32 in, double accumulation: 4 floats are loaded at a time and widened
 * to one register of 4 doubles (_mm256_cvtps_pd), so the products and sums
 * carry double precision rather than float precision. */
__attribute__((target("avx2,fma"))) static void vwap_sums_f32_avx2(const float *prices,
                                                                   const float *volumes, size_t n,
                                                                   double *numerator,
                                                                   double *denominator)
{
    __m256d num0 = _mm256_setzero_pd(), num1 = num0, num2 = num0, num3 = num0;
    __m256d den0 = num0, den1 = num0, den2 = num0, den3 = num0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256d v0 = _mm256_cvtps_pd(_mm_loadu_ps(volumes + i));
        __m256d v1 = _mm256_cvtps_pd(_mm_loadu_ps(volumes + i + 4));
        __m256d v2 = _mm256_cvtps_pd(_mm_loadu_ps(volumes + i + 8));
        __m256d v3 = _mm256_cvtps_pd(_mm_loadu_ps(volumes + i + 12));
        num0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(prices + i)), v0, num0);
        num1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(prices + i + 4)), v1, num1);
        num2 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(prices + i + 8)), v2, num2);
        num3 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(prices + i + 12)), v3, num3);
        den0 = _mm256_add_pd(den0, v0);
        den1 = _mm256_add_pd(den1, v1);
        den2 = _mm256_add_pd(den2, v2);
        den3 = _mm256_add_pd(den3, v3);
    }
    for (; i + 4 <= n; i += 4) {
        __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(volumes + i));
        num0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(prices + i)), v, num0);
        den0 = _mm256_add_pd(den0, v);
    }
    double num = horizontal_sum_avx2(_mm256_add_pd(_mm256_add_pd(num0, num1), _mm256_add_pd(num2, num3)));
    double den = horizontal_sum_avx2(_mm256_add_pd(_mm256_add_pd(den0, den1), _mm256_add_pd(den2, den3)));
    for (; i < n; i++) {
        num += (double)prices[i] * (double)volumes[i];
        den += (double)volumes[i];
    }
    *numerator = num;
    *denominator = den;
}

#endif /* HFT_VWAP_HAVE_X86 */

/* ---- kernel choice ---------------------------------------------------------- */

int hft_vwap_avx2_supported(void)
{
#if HFT_VWAP_HAVE_X86
    /* libgcc fills its CPU model table from a constructor; calling init here
     * makes the answer right even if we run before that constructor. */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* -1 until the first call decides; then a HFT_VWAP_KERNEL_* value forever.
 * Racing first calls each compute the same value, so a plain atomic store is
 * enough (no lock, no once-guard on the hot path). */
static atomic_int selected_kernel = -1;

static int choose_kernel(void)
{
    const char *force_scalar = getenv("HFT_NATIVE_FORCE_SCALAR");
    if (force_scalar != NULL && strcmp(force_scalar, "1") == 0)
        return HFT_VWAP_KERNEL_SCALAR;
    return hft_vwap_avx2_supported() ? HFT_VWAP_KERNEL_AVX2 : HFT_VWAP_KERNEL_SCALAR;
}

int hft_vwap_kernel(void)
{
    int kernel = atomic_load_explicit(&selected_kernel, memory_order_relaxed);
    if (kernel < 0) {
        kernel = choose_kernel();
        atomic_store_explicit(&selected_kernel, kernel, memory_order_relaxed);
    }
    return kernel;
}

const char *hft_vwap_kernel_name(void)
{
    return hft_vwap_kernel() == HFT_VWAP_KERNEL_AVX2 ? "avx2" : "scalar";
}

/* ---- entry points ------------------------------------------------------------ */

static int valid_arguments(const void *prices, const void *volumes, size_t n, const double *out)
{
    return prices != NULL && volumes != NULL && out != NULL && n > 0;
}

static int finish(double numerator, double denominator, double *out)
{
    if (denominator == 0.0)
        return HFT_EINVAL;
    *out = numerator / denominator;
    return HFT_OK;
}

int hft_vwap_f64_scalar(const double *prices, const double *volumes, size_t n, double *out)
{
    if (!valid_arguments(prices, volumes, n, out))
        return HFT_EINVAL;
    double num, den;
    vwap_sums_f64_scalar(prices, volumes, n, &num, &den);
    return finish(num, den, out);
}

int hft_vwap_f32_scalar(const float *prices, const float *volumes, size_t n, double *out)
{
    if (!valid_arguments(prices, volumes, n, out))
        return HFT_EINVAL;
    double num, den;
    vwap_sums_f32_scalar(prices, volumes, n, &num, &den);
    return finish(num, den, out);
}

int hft_vwap_f64_avx2(const double *prices, const double *volumes, size_t n, double *out)
{
    if (!valid_arguments(prices, volumes, n, out))
        return HFT_EINVAL;
#if HFT_VWAP_HAVE_X86
    if (!hft_vwap_avx2_supported())
        return HFT_VWAP_ENOTSUP;
    double num, den;
    vwap_sums_f64_avx2(prices, volumes, n, &num, &den);
    return finish(num, den, out);
#else
    return HFT_VWAP_ENOTSUP;
#endif
}

int hft_vwap_f32_avx2(const float *prices, const float *volumes, size_t n, double *out)
{
    if (!valid_arguments(prices, volumes, n, out))
        return HFT_EINVAL;
#if HFT_VWAP_HAVE_X86
    if (!hft_vwap_avx2_supported())
        return HFT_VWAP_ENOTSUP;
    double num, den;
    vwap_sums_f32_avx2(prices, volumes, n, &num, &den);
    return finish(num, den, out);
#else
    return HFT_VWAP_ENOTSUP;
#endif
}

/* The dispatched entry points skip the explicit kernels' CPU check: the
 * one-time choice only picks avx2 on a CPU that has it. */

int hft_vwap_f64(const double *prices, const double *volumes, size_t n, double *out)
{
    if (!valid_arguments(prices, volumes, n, out))
        return HFT_EINVAL;
    double num, den;
#if HFT_VWAP_HAVE_X86
    if (hft_vwap_kernel() == HFT_VWAP_KERNEL_AVX2)
        vwap_sums_f64_avx2(prices, volumes, n, &num, &den);
    else
#endif
        vwap_sums_f64_scalar(prices, volumes, n, &num, &den);
    return finish(num, den, out);
}

int hft_vwap_f32(const float *prices, const float *volumes, size_t n, double *out)
{
    if (!valid_arguments(prices, volumes, n, out))
        return HFT_EINVAL;
    double num, den;
#if HFT_VWAP_HAVE_X86
    if (hft_vwap_kernel() == HFT_VWAP_KERNEL_AVX2)
        vwap_sums_f32_avx2(prices, volumes, n, &num, &den);
    else
#endif
        vwap_sums_f32_scalar(prices, volumes, n, &num, &den);
    return finish(num, den, out);
}

/* ---- multi-threaded ------------------------------------------------------------
 * One chunk per thread. Each chunk's partial sums are written by exactly one
 * thread and read by the caller only after pthread_join (which orders the
 * memory), so no atomics are needed; the chunks are cache-line aligned so the
 * workers' final stores do not bounce a shared line. */

enum element_type { ELEMENT_F64, ELEMENT_F32 };

struct vwap_chunk {
    _Alignas(HFT_CACHE_LINE) const void *prices;
    const void *volumes;
    size_t n;
    enum element_type type;
    int kernel;
    int spawned; /* 1 when a worker thread owns this chunk, 0 when the caller sums it */
    pthread_t thread;
    double numerator, denominator;
};

static void sum_chunk(struct vwap_chunk *chunk)
{
#if HFT_VWAP_HAVE_X86
    if (chunk->kernel == HFT_VWAP_KERNEL_AVX2) {
        if (chunk->type == ELEMENT_F64)
            vwap_sums_f64_avx2(chunk->prices, chunk->volumes, chunk->n, &chunk->numerator,
                               &chunk->denominator);
        else
            vwap_sums_f32_avx2(chunk->prices, chunk->volumes, chunk->n, &chunk->numerator,
                               &chunk->denominator);
        return;
    }
#endif
    if (chunk->type == ELEMENT_F64)
        vwap_sums_f64_scalar(chunk->prices, chunk->volumes, chunk->n, &chunk->numerator,
                             &chunk->denominator);
    else
        vwap_sums_f32_scalar(chunk->prices, chunk->volumes, chunk->n, &chunk->numerator,
                             &chunk->denominator);
}

static void *sum_chunk_thread(void *arg)
{
    sum_chunk(arg);
    return NULL;
}

unsigned hft_vwap_parallel_threads_used(size_t n, size_t element_size, unsigned threads)
{
    if (threads < 1)
        threads = 1;
    if (threads > HFT_VWAP_MAX_THREADS)
        threads = HFT_VWAP_MAX_THREADS;
    /* Count chunks in elements, not n in bytes, so a huge n cannot overflow. */
    size_t bytes_per_element = 2 * (element_size ? element_size : 1); /* a price and a volume */
    size_t elements_per_chunk = HFT_VWAP_PARALLEL_MIN_CHUNK_BYTES / bytes_per_element;
    size_t whole_chunks = n / (elements_per_chunk ? elements_per_chunk : 1);
    if (whole_chunks < threads)
        threads = whole_chunks < 1 ? 1 : (unsigned)whole_chunks;
    return threads;
}

/* Chunk boundaries are multiples of 16 elements (the AVX2 kernels' stride), so
 * only the last chunk has a scalar tail. With at least a minimum chunk (far
 * more than 16 * HFT_VWAP_MAX_THREADS elements) per thread, rounding the first
 * chunks up still leaves the last one non-empty. */
static int vwap_parallel(const void *prices, const void *volumes, size_t n, unsigned threads,
                         enum element_type type, double *out)
{
    size_t element_size = type == ELEMENT_F64 ? sizeof(double) : sizeof(float);
    unsigned used = hft_vwap_parallel_threads_used(n, element_size, threads);
    int kernel = hft_vwap_kernel();
    struct vwap_chunk chunks[HFT_VWAP_MAX_THREADS];
    size_t chunk_n = (n / used + 15) & ~(size_t)15;
    size_t start = 0;
    for (unsigned k = 0; k < used; k++) {
        size_t this_n = k + 1 == used ? n - start : chunk_n;
        chunks[k] = (struct vwap_chunk){
            .prices = (const char *)prices + start * element_size,
            .volumes = (const char *)volumes + start * element_size,
            .n = this_n,
            .type = type,
            .kernel = kernel,
        };
        start += this_n;
    }

    if (used > 1) {
        /* Workers inherit the creator's signal mask: block everything while
         * creating them, then restore the caller's own mask. */
        sigset_t all_signals, caller_mask;
        sigfillset(&all_signals);
        pthread_sigmask(SIG_SETMASK, &all_signals, &caller_mask);
        for (unsigned k = 1; k < used; k++)
            chunks[k].spawned = pthread_create(&chunks[k].thread, NULL, sum_chunk_thread, &chunks[k]) == 0;
        pthread_sigmask(SIG_SETMASK, &caller_mask, NULL);
    }
    sum_chunk(&chunks[0]);
    for (unsigned k = 1; k < used; k++) {
        if (chunks[k].spawned)
            pthread_join(chunks[k].thread, NULL);
        else
            sum_chunk(&chunks[k]);
    }

    /* Starting from chunk 0's sums (not from 0.0) keeps the one-thread result
     * bit-identical to hft_vwap_f64, down to the sign of a zero. */
    double num = chunks[0].numerator, den = chunks[0].denominator;
    for (unsigned k = 1; k < used; k++) {
        num += chunks[k].numerator;
        den += chunks[k].denominator;
    }
    return finish(num, den, out);
}

int hft_vwap_f64_parallel(const double *prices, const double *volumes, size_t n, unsigned threads,
                          double *out)
{
    if (!valid_arguments(prices, volumes, n, out) || threads < 1 || threads > HFT_VWAP_MAX_THREADS)
        return HFT_EINVAL;
    return vwap_parallel(prices, volumes, n, threads, ELEMENT_F64, out);
}

int hft_vwap_f32_parallel(const float *prices, const float *volumes, size_t n, unsigned threads,
                          double *out)
{
    if (!valid_arguments(prices, volumes, n, out) || threads < 1 || threads > HFT_VWAP_MAX_THREADS)
        return HFT_EINVAL;
    return vwap_parallel(prices, volumes, n, threads, ELEMENT_F32, out);
}
