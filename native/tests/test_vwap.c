/*
 * test_vwap.c -- both VWAP kernels against a long-double reference, at every
 * length that exercises the 16-wide loop, the 4-wide loop and the scalar tail,
 * at unaligned addresses, plus the error contract and a racing first call.
 * The multi-threaded variant: against the same reference at lengths around
 * its chunk boundaries and many thread counts, bit-for-bit determinism across
 * calls and across concurrent callers, and its own errors.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
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

/* ---- multi-threaded ---------------------------------------------------------- */

/* Elements per minimum chunk: a multiple of 16, so "2 chunks + 1" really puts
 * one element in a scalar tail. */
#define CHUNK64 ((size_t)HFT_VWAP_PARALLEL_MIN_CHUNK_BYTES / (2 * sizeof(double)))
#define CHUNK32 ((size_t)HFT_VWAP_PARALLEL_MIN_CHUNK_BYTES / (2 * sizeof(float)))
#define BIG64 (3 * CHUNK64 + 40)
#define BIG32 (3 * CHUNK32 + 40)

/* Heap-allocated: a few MB each, more than a test binary should keep in .bss. */
static double *big_prices64, *big_volumes64;
static float *big_prices32, *big_volumes32;

static void fill_big_inputs(void)
{
    big_prices64 = malloc(BIG64 * sizeof(double));
    big_volumes64 = malloc(BIG64 * sizeof(double));
    big_prices32 = malloc(BIG32 * sizeof(float));
    big_volumes32 = malloc(BIG32 * sizeof(float));
    if (!big_prices64 || !big_volumes64 || !big_prices32 || !big_volumes32)
        abort();
    srand(777);
    for (size_t i = 0; i < BIG64; i++) {
        big_prices64[i] = 50.0 + 100.0 * (double)rand() / RAND_MAX;
        big_volumes64[i] = 1.0 + (double)(rand() % 10000);
    }
    for (size_t i = 0; i < BIG32; i++) {
        big_prices32[i] = (float)(50.0 + 100.0 * (double)rand() / RAND_MAX);
        big_volumes32[i] = (float)(1 + rand() % 10000);
    }
}

static void free_big_inputs(void)
{
    free(big_prices64);
    free(big_volumes64);
    free(big_prices32);
    free(big_volumes32);
}

/* A million terms summed in double drift from the long-double sum by up to
 * about n * 2^-53 in the worst case; 1e-10 bounds that with room to spare and
 * still catches a dropped or doubled element (~1e-7 here). */
static int close_enough_large(double got, double want)
{
    return fabs(got - want) <= 1e-10 * fabs(want);
}

static void test_parallel_threads_used(void)
{
    CHECK_EQ_INT(hft_vwap_parallel_threads_used(1, sizeof(double), 8), 1);
    CHECK_EQ_INT(hft_vwap_parallel_threads_used(2 * CHUNK64 - 1, sizeof(double), 8), 1);
    CHECK_EQ_INT(hft_vwap_parallel_threads_used(2 * CHUNK64, sizeof(double), 8), 2);
    CHECK_EQ_INT(hft_vwap_parallel_threads_used(3 * CHUNK64, sizeof(double), 2), 2);
    CHECK_EQ_INT(hft_vwap_parallel_threads_used(3 * CHUNK64, sizeof(double), 8), 3);
    CHECK_EQ_INT(hft_vwap_parallel_threads_used(2 * CHUNK64, sizeof(float), 8), 1);
    CHECK_EQ_INT(hft_vwap_parallel_threads_used(2 * CHUNK32, sizeof(float), 8), 2);
    CHECK_EQ_INT(hft_vwap_parallel_threads_used(SIZE_MAX, sizeof(double), 1000), HFT_VWAP_MAX_THREADS);
    CHECK_EQ_INT(hft_vwap_parallel_threads_used(SIZE_MAX, sizeof(double), 0), 1);
}

static void test_parallel_f64_matches_reference(void)
{
    const size_t lengths[] = {1, 17, 1000, 2 * CHUNK64 - 1, 2 * CHUNK64, 2 * CHUNK64 + 1,
                              2 * CHUNK64 + 17, BIG64 - 1};
    const unsigned thread_counts[] = {1, 2, 3, 7, HFT_VWAP_MAX_THREADS};
    for (size_t l = 0; l < sizeof lengths / sizeof lengths[0]; l++) {
        size_t n = lengths[l];
        for (size_t offset = 0; offset <= 1; offset++) {
            const double *p = big_prices64 + offset, *v = big_volumes64 + offset;
            double want = reference_f64(p, v, n);
            for (size_t t = 0; t < sizeof thread_counts / sizeof thread_counts[0]; t++) {
                double out = 0;
                CHECK_EQ_INT(hft_vwap_f64_parallel(p, v, n, thread_counts[t], &out), HFT_OK);
                if (!close_enough_large(out, want))
                    fprintf(stderr, "n=%zu offset=%zu threads=%u: %.17g != %.17g\n", n, offset,
                            thread_counts[t], out, want);
                CHECK(close_enough_large(out, want));
            }
        }
    }
}

static void test_parallel_f32_matches_reference(void)
{
    const size_t lengths[] = {1, 1000, 2 * CHUNK32 - 1, 2 * CHUNK32 + 3, BIG32 - 1};
    const unsigned thread_counts[] = {1, 2, 3, 5};
    for (size_t l = 0; l < sizeof lengths / sizeof lengths[0]; l++) {
        size_t n = lengths[l];
        const float *p = big_prices32 + 1, *v = big_volumes32 + 1; /* 4-byte, not 16-byte, aligned */
        double want = reference_f32(p, v, n);
        for (size_t t = 0; t < sizeof thread_counts / sizeof thread_counts[0]; t++) {
            double out = 0;
            CHECK_EQ_INT(hft_vwap_f32_parallel(p, v, n, thread_counts[t], &out), HFT_OK);
            CHECK(close_enough_large(out, want));
        }
    }
}

/* One thread, or too few elements for two, must be the single-threaded
 * function exactly: the Python default path and the parallel one agree bit for
 * bit on every array that does not get split. */
static void test_parallel_unsplit_is_bit_identical(void)
{
    const size_t lengths[] = {1, 5, 1000, 2 * CHUNK64 - 1, BIG64};
    for (size_t l = 0; l < sizeof lengths / sizeof lengths[0]; l++) {
        double single = 0, parallel = 1;
        size_t n = lengths[l];
        CHECK_EQ_INT(hft_vwap_f64(big_prices64, big_volumes64, n, &single), HFT_OK);
        unsigned threads = n < 2 * CHUNK64 ? 8 : 1;
        CHECK_EQ_INT(hft_vwap_f64_parallel(big_prices64, big_volumes64, n, threads, &parallel), HFT_OK);
        CHECK(single == parallel);
    }
    double single32 = 0, parallel32 = 1;
    CHECK_EQ_INT(hft_vwap_f32(big_prices32, big_volumes32, 2 * CHUNK32 - 1, &single32), HFT_OK);
    CHECK_EQ_INT(hft_vwap_f32_parallel(big_prices32, big_volumes32, 2 * CHUNK32 - 1, 4, &parallel32), HFT_OK);
    CHECK(single32 == parallel32);
}

static void test_parallel_repeatable(void)
{
    for (unsigned threads = 2; threads <= 3; threads++) {
        double first = 0;
        CHECK_EQ_INT(hft_vwap_f64_parallel(big_prices64, big_volumes64, BIG64, threads, &first), HFT_OK);
        for (int repeat = 0; repeat < 5; repeat++) {
            double again = 0;
            CHECK_EQ_INT(hft_vwap_f64_parallel(big_prices64, big_volumes64, BIG64, threads, &again), HFT_OK);
            CHECK(again == first);
        }
    }
}

/* Several callers at once, each splitting the same arrays: every call spawns
 * its own workers, so they cannot disturb each other (TSan watches). */
struct concurrent_call {
    unsigned threads;
    double result;
    int rc;
};

static void *concurrent_caller(void *arg)
{
    struct concurrent_call *call = arg;
    call->rc = hft_vwap_f64_parallel(big_prices64, big_volumes64, BIG64, call->threads, &call->result);
    return NULL;
}

static void test_parallel_concurrent_callers_agree(void)
{
    enum { CALLERS = 4 };
    pthread_t callers[CALLERS];
    struct concurrent_call calls[CALLERS];
    double expected = 0;
    CHECK_EQ_INT(hft_vwap_f64_parallel(big_prices64, big_volumes64, BIG64, 3, &expected), HFT_OK);
    for (int i = 0; i < CALLERS; i++) {
        calls[i] = (struct concurrent_call){.threads = 3, .result = 0, .rc = -1};
        CHECK_EQ_INT(pthread_create(&callers[i], NULL, concurrent_caller, &calls[i]), 0);
    }
    for (int i = 0; i < CALLERS; i++) {
        pthread_join(callers[i], NULL);
        CHECK_EQ_INT(calls[i].rc, HFT_OK);
        CHECK(calls[i].result == expected);
    }
}

static void test_parallel_errors_leave_out_untouched(void)
{
    const double p[] = {1.0, 2.0};
    const float p32[] = {1.0f, 2.0f};
    double out = -1.0;
    CHECK_EQ_INT(hft_vwap_f64_parallel(p, p, 2, 0, &out), HFT_EINVAL);
    CHECK_EQ_INT(hft_vwap_f64_parallel(p, p, 2, HFT_VWAP_MAX_THREADS + 1, &out), HFT_EINVAL);
    CHECK_EQ_INT(hft_vwap_f64_parallel(p, p, 0, 2, &out), HFT_EINVAL);
    CHECK_EQ_INT(hft_vwap_f64_parallel(NULL, p, 2, 2, &out), HFT_EINVAL);
    CHECK_EQ_INT(hft_vwap_f64_parallel(p, NULL, 2, 2, &out), HFT_EINVAL);
    CHECK_EQ_INT(hft_vwap_f64_parallel(p, p, 2, 2, NULL), HFT_EINVAL);
    CHECK_EQ_INT(hft_vwap_f32_parallel(p32, p32, 2, 0, &out), HFT_EINVAL);
    CHECK_EQ_INT(hft_vwap_f32_parallel(NULL, p32, 2, 2, &out), HFT_EINVAL);

    /* Zero total volume across several chunks: only the combined sum decides. */
    size_t n = 2 * CHUNK64;
    double *zero_volumes = calloc(n, sizeof(double));
    CHECK(zero_volumes != NULL);
    if (zero_volumes != NULL) {
        CHECK_EQ_INT(hft_vwap_f64_parallel(big_prices64, zero_volumes, n, 2, &out), HFT_EINVAL);
        free(zero_volumes);
    }
    CHECK(out == -1.0);
}

int main(void)
{
    fill_inputs();
    fill_big_inputs();
    RUN(test_racing_first_calls_agree);
    RUN(test_known_value);
    RUN(test_scalar_kernels);
    RUN(test_avx2_kernels);
    RUN(test_dispatched_kernels);
    RUN(test_kernel_choice);
    RUN(test_errors_leave_out_untouched);
    RUN(test_parallel_threads_used);
    RUN(test_parallel_f64_matches_reference);
    RUN(test_parallel_f32_matches_reference);
    RUN(test_parallel_unsplit_is_bit_identical);
    RUN(test_parallel_repeatable);
    RUN(test_parallel_concurrent_callers_agree);
    RUN(test_parallel_errors_leave_out_untouched);
    free_big_inputs();
    return TEST_SUMMARY("vwap");
}
