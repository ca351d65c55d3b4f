/*
 * vwap.c -- see hft_vwap.h. Each kernel only produces the two sums; the
 * shared entry code validates arguments and does the one division.
 */
#include "hft_vwap.h"

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
