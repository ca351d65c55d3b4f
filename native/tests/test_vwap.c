/*
 * test_vwap.c -- both VWAP kernels against a long-double reference, at every
 * length that exercises the 16-wide loop, the 4-wide loop and the scalar tail,
 * at unaligned addresses, plus the error contract and a racing first call.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#include "check.h"
#include "hft_vwap.h"

#define MAX_N 1000
#define MAX_OFFSET 3

static double prices64[MAX_N + MAX_OFFSET], volumes64[MAX_N + MAX_OFFSET];
static float prices32[MAX_N + MAX_OFFSET], volumes32[MAX_N + MAX_OFFSET];

static void fill_inputs(void)
{
    srand(12345);
    for (size_t i = 0; i < MAX_N + MAX_OFFSET; i++) {
        prices64[i] = 100.0 + (double)rand() / RAND_MAX;   /* a price near 100 */
        volumes64[i] = 1.0 + (double)(rand() % 1000);      /* 1..1000 shares */
        prices32[i] = (float)prices64[i];
        volumes32[i] = (float)volumes64[i];
    }
}

static double reference_f64(const double *p, const double *v, size_t n)
{
    long double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (long double)p[i] * v[i];
        den += v[i];
    }
    return (double)(num / den);
}

static double reference_f32(const float *p, const float *v, size_t n)
{
    long double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (long double)p[i] * v[i];
        den += v[i];
    }
    return (double)(num / den);
}

static int close_enough(double got, double want)
{
    return fabs(got - want) <= 1e-12 * fabs(want);
}

/* Before any other test so the one-time kernel choice really races (TSan). */
static void *first_call_worker(void *arg)
{
    double *out = arg;
    if (hft_vwap_f64(prices64, volumes64, MAX_N, out) != HFT_OK)
        *out = NAN;
    return NULL;
}

static void test_racing_first_calls_agree(void)
{
    pthread_t threads[4];
    double results[4];
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(pthread_create(&threads[i], NULL, first_call_worker, &results[i]), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(threads[i], NULL);
    for (int i = 0; i < 4; i++)
        CHECK(results[i] == results[0]);
    CHECK(close_enough(results[0], reference_f64(prices64, volumes64, MAX_N)));
}

static void test_known_value(void)
{
    const double p[] = {1.0, 2.0, 3.0};
    const double v[] = {1.0, 1.0, 2.0};
    double out = 0;
    CHECK_EQ_INT(hft_vwap_f64(p, v, 3, &out), HFT_OK);
    CHECK(out == 2.25); /* (1 + 2 + 6) / 4, exact in binary */
}

typedef int (*vwap_f64_fn)(const double *, const double *, size_t, double *);
typedef int (*vwap_f32_fn)(const float *, const float *, size_t, double *);

static void check_kernel_f64(vwap_f64_fn kernel)
{
    for (size_t offset = 0; offset <= MAX_OFFSET; offset++) {
        for (size_t n = 1; n <= 70; n++) {
            double out = 0;
            CHECK_EQ_INT(kernel(prices64 + offset, volumes64 + offset, n, &out), HFT_OK);
            CHECK(close_enough(out, reference_f64(prices64 + offset, volumes64 + offset, n)));
        }
        double out = 0;
        CHECK_EQ_INT(kernel(prices64 + offset, volumes64 + offset, MAX_N, &out), HFT_OK);
        CHECK(close_enough(out, reference_f64(prices64 + offset, volumes64 + offset, MAX_N)));
    }
}

static void check_kernel_f32(vwap_f32_fn kernel)
{
    for (size_t offset = 0; offset <= MAX_OFFSET; offset++) {
        for (size_t n = 1; n <= 70; n++) {
            double out = 0;
            CHECK_EQ_INT(kernel(prices32 + offset, volumes32 + offset, n, &out), HFT_OK);
            CHECK(close_enough(out, reference_f32(prices32 + offset, volumes32 + offset, n)));
        }
        double out = 0;
        CHECK_EQ_INT(kernel(prices32 + offset, volumes32 + offset, MAX_N, &out), HFT_OK);
        CHECK(close_enough(out, reference_f32(prices32 + offset, volumes32 + offset, MAX_N)));
    }
}

static void test_scalar_kernels(void)
{
    check_kernel_f64(hft_vwap_f64_scalar);
    check_kernel_f32(hft_vwap_f32_scalar);
}

static void test_avx2_kernels(void)
{
    if (!hft_vwap_avx2_supported()) {
        double out = 0;
        CHECK_EQ_INT(hft_vwap_f64_avx2(prices64, volumes64, 4, &out), HFT_VWAP_ENOTSUP);
        CHECK_EQ_INT(hft_vwap_f32_avx2(prices32, volumes32, 4, &out), HFT_VWAP_ENOTSUP);
        return;
    }
    check_kernel_f64(hft_vwap_f64_avx2);
    check_kernel_f32(hft_vwap_f32_avx2);
}

static void test_dispatched_kernels(void)
{
    check_kernel_f64(hft_vwap_f64);
    check_kernel_f32(hft_vwap_f32);
}

static void test_kernel_choice(void)
{
    int kernel = hft_vwap_kernel();
    CHECK(kernel == HFT_VWAP_KERNEL_SCALAR || kernel == HFT_VWAP_KERNEL_AVX2);
    if (kernel == HFT_VWAP_KERNEL_AVX2)
        CHECK(hft_vwap_avx2_supported());
    const char *name = hft_vwap_kernel_name();
    CHECK(name[0] == (kernel == HFT_VWAP_KERNEL_AVX2 ? 'a' : 's'));
}

static void test_errors_leave_out_untouched(void)
{
    const double p[] = {1.0, 2.0};
    const double zero_volume[] = {0.0, 0.0};
    const float p32[] = {1.0f, 2.0f};
    const float zero_volume32[] = {0.0f, 0.0f};
    vwap_f64_fn f64_kernels[] = {hft_vwap_f64, hft_vwap_f64_scalar, hft_vwap_f64_avx2};
    vwap_f32_fn f32_kernels[] = {hft_vwap_f32, hft_vwap_f32_scalar, hft_vwap_f32_avx2};
    for (int k = 0; k < 3; k++) {
        double out = -1.0;
        CHECK_EQ_INT(f64_kernels[k](p, p, 0, &out), HFT_EINVAL);
        CHECK_EQ_INT(f64_kernels[k](NULL, p, 2, &out), HFT_EINVAL);
        CHECK_EQ_INT(f64_kernels[k](p, NULL, 2, &out), HFT_EINVAL);
        CHECK_EQ_INT(f64_kernels[k](p, p, 2, NULL), HFT_EINVAL);
        CHECK_EQ_INT(f32_kernels[k](p32, p32, 0, &out), HFT_EINVAL);
        CHECK_EQ_INT(f32_kernels[k](p32, NULL, 2, &out), HFT_EINVAL);
        if (k < 2 || hft_vwap_avx2_supported()) {
            CHECK_EQ_INT(f64_kernels[k](p, zero_volume, 2, &out), HFT_EINVAL);
            CHECK_EQ_INT(f32_kernels[k](p32, zero_volume32, 2, &out), HFT_EINVAL);
        }
        CHECK(out == -1.0);
    }
}

int main(void)
{
    fill_inputs();
    RUN(test_racing_first_calls_agree);
    RUN(test_known_value);
    RUN(test_scalar_kernels);
    RUN(test_avx2_kernels);
    RUN(test_dispatched_kernels);
    RUN(test_kernel_choice);
    RUN(test_errors_leave_out_untouched);
    return TEST_SUMMARY("vwap");
}
