/* test_histogram.c -- hft_histogram: configuration checks, precision against
 * exactly computed statistics, out-of-range policy, merge, reset, and the
 * one-histogram-per-thread pattern (meaningful under TSan). */
#include "hft_histogram.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define SAMPLES 100000
#define HOUR_NS 3600000000000LL

/* xorshift64*: a deterministic generator, so a failure reproduces. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static double uniform01(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0; /* [0, 1) */
}

/* Latency-shaped data: lognormal around 20 us with a long tail (Box-Muller). */
static void fill_lognormal(int64_t *values, size_t n, double median_ns, double sigma)
{
    for (size_t i = 0; i < n; i++) {
        double z = sqrt(-2.0 * log(1.0 - uniform01())) * cos(2.0 * M_PI * uniform01());
        values[i] = llround(median_ns * exp(sigma * z));
    }
}

static int compare_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The largest error the histogram may make on `exact`: 10^-sf relative, but
 * never finer than the resolution set by lowest_trackable. */
static double allowed_error(double exact, int significant_figures, int64_t lowest)
{
    double relative = exact * pow(10.0, -significant_figures);
    return relative > (double)lowest ? relative : (double)lowest;
}

static hft_histogram *make(int64_t lowest, int64_t highest, int significant_figures)
{
    hft_histogram *h = NULL;
    CHECK_EQ_INT(hft_histogram_create(lowest, highest, significant_figures, &h), HFT_OK);
    return h;
}

static void test_bad_configuration(void)
{
    hft_histogram *h = NULL;
    CHECK_EQ_INT(hft_histogram_create(0, 1000, 3, &h), HFT_EINVAL);
    CHECK_EQ_INT(hft_histogram_create(-5, 1000, 3, &h), HFT_EINVAL);
    CHECK_EQ_INT(hft_histogram_create(100, 199, 3, &h), HFT_EINVAL); /* highest < 2 * lowest */
    CHECK_EQ_INT(hft_histogram_create(1, 1000, 0, &h), HFT_EINVAL);
    CHECK_EQ_INT(hft_histogram_create(1, 1000, 6, &h), HFT_EINVAL);
    CHECK_EQ_INT(hft_histogram_create(1, HFT_HISTOGRAM_MAX_TRACKABLE + 1, 3, &h), HFT_EINVAL);
    CHECK_EQ_INT(hft_histogram_create(1, 1000, 3, NULL), HFT_EINVAL);
    /* A coarse resolution and 5 figures need more than 64 bits. */
    CHECK_EQ_INT(hft_histogram_create((int64_t)1 << 55, (int64_t)1 << 58, 5, &h), HFT_EINVAL);
    CHECK(h == NULL);
    hft_histogram_destroy(NULL);
}

static void test_empty_histogram_reports_zeros(void)
{
    hft_histogram *h = make(1, HOUR_NS, 3);
    CHECK_EQ_INT(hft_histogram_total_count(h), 0);
    CHECK_EQ_INT(hft_histogram_min(h), 0);
    CHECK_EQ_INT(hft_histogram_max(h), 0);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 99.0), 0);
    CHECK(hft_histogram_mean(h) == 0.0);
    CHECK(hft_histogram_stdev(h) == 0.0);
    hft_histogram_destroy(h);
}

/* With resolution 1 every value below 2 * 10^sf has its own counter. */
static void test_small_values_are_exact(void)
{
    hft_histogram *h = make(1, HOUR_NS, 3);
    for (int64_t v = 0; v < 2000; v++) {
        CHECK_EQ_INT(hft_histogram_record(h, v), HFT_OK);
    }
    CHECK_EQ_INT(hft_histogram_total_count(h), 2000);
    CHECK_EQ_INT(hft_histogram_min(h), 0);
    CHECK_EQ_INT(hft_histogram_max(h), 1999);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 50.0), 999); /* rank 1000 */
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 0.05), 0);   /* rank 1 */
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 0.0), 0);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 100.0), 1999);
    CHECK(fabs(hft_histogram_mean(h) - 999.5) < 1e-9);
    hft_histogram_destroy(h);
}

/* Every counter boundary across the range: values spaced 0.07% apart from 1 ns
 * to an hour, each side of each step, recorded together; the percentile at
 * rank i must report the i-th value within the precision and never below it. */
static void test_sweep_across_the_range_stays_within_precision(void)
{
    size_t n = 0, room = 1 << 18;
    int64_t *sweep = malloc(room * sizeof(*sweep));
    for (double x = 1.0; x < (double)HOUR_NS; x *= 1.0007) {
        for (int64_t v = (int64_t)x - 1; v <= (int64_t)x + 1; v++) { /* straddle power-of-two edges */
            sweep[n++] = v;
        }
    }
    CHECK(n <= room);
    qsort(sweep, n, sizeof(*sweep), compare_int64);
    double *pcts = malloc(n * sizeof(*pcts));
    int64_t *reported = malloc(n * sizeof(*reported));
    for (size_t i = 0; i < n; i++) {
        pcts[i] = 100.0 * (double)(i + 1) / (double)n; /* rank i + 1 */
    }

    static const int64_t lowests[] = {1, 1000};
    for (size_t l = 0; l < sizeof(lowests) / sizeof(lowests[0]); l++) {
        for (int sf = 1; sf <= HFT_HISTOGRAM_MAX_SIGNIFICANT_FIGURES; sf++) {
            hft_histogram *h = make(lowests[l], HOUR_NS, sf);
            CHECK_EQ_INT(hft_histogram_record_many(h, sweep, n), HFT_OK);
            CHECK_EQ_INT(hft_histogram_values_at_percentiles(h, pcts, reported, n), HFT_OK);
            size_t bad = 0;
            for (size_t i = 0; i < n; i++) {
                int64_t v = sweep[i];
                double error = (double)(reported[i] - v);
                if (error < 0 || error > allowed_error((double)v, sf, lowests[l])) {
                    if (bad++ == 0) {
                        fprintf(stderr, "lowest %lld sf %d: value %lld reported as %lld\n",
                                (long long)lowests[l], sf, (long long)v, (long long)reported[i]);
                    }
                }
            }
            CHECK_EQ_INT(bad, 0);
            hft_histogram_destroy(h);
        }
    }
    free(sweep);
    free(pcts);
    free(reported);
}

static void test_percentiles_mean_stdev_match_exact_statistics(void)
{
    int64_t *values = malloc(SAMPLES * sizeof(*values));
    int64_t *sorted = malloc(SAMPLES * sizeof(*sorted));
    fill_lognormal(values, SAMPLES, 20000.0, 1.0);
    memcpy(sorted, values, SAMPLES * sizeof(*values));
    qsort(sorted, SAMPLES, sizeof(*sorted), compare_int64);

    double sum = 0.0, sum_sq_dev = 0.0, sum_sq = 0.0;
    for (size_t i = 0; i < SAMPLES; i++) {
        sum += (double)values[i];
        sum_sq += (double)values[i] * (double)values[i];
    }
    double mean = sum / SAMPLES;
    for (size_t i = 0; i < SAMPLES; i++) {
        sum_sq_dev += ((double)values[i] - mean) * ((double)values[i] - mean);
    }
    double stdev = sqrt(sum_sq_dev / SAMPLES), rms = sqrt(sum_sq / SAMPLES);

    static const double pcts[] = {0.0, 1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0};
    enum { NPCTS = sizeof(pcts) / sizeof(pcts[0]) };
    for (int sf = 1; sf <= 4; sf++) {
        for (int64_t lowest = 1; lowest <= 1000; lowest *= 1000) {
            hft_histogram *h = make(lowest, HOUR_NS, sf);
            CHECK_EQ_INT(hft_histogram_record_many(h, values, SAMPLES), HFT_OK);
            CHECK_EQ_INT(hft_histogram_total_count(h), SAMPLES);
            CHECK_EQ_INT(hft_histogram_min(h), sorted[0]);
            CHECK_EQ_INT(hft_histogram_max(h), sorted[SAMPLES - 1]);

            int64_t batch[NPCTS];
            CHECK_EQ_INT(hft_histogram_values_at_percentiles(h, pcts, batch, NPCTS), HFT_OK);
            for (int k = 0; k < NPCTS; k++) {
                size_t rank = (size_t)ceil(pcts[k] * SAMPLES / 100.0 - 1e-9);
                int64_t exact = sorted[rank == 0 ? 0 : rank - 1];
                int64_t reported = hft_histogram_value_at_percentile(h, pcts[k]);
                CHECK_EQ_INT(batch[k], reported);
                CHECK(reported >= exact);
                CHECK((double)(reported - exact) <= allowed_error((double)exact, sf, lowest));
            }
            /* Each counter stands for its midpoint, so each value is off by at
             * most half the allowed error; mean and stdev inherit that. */
            double eps = pow(10.0, -sf);
            CHECK(fabs(hft_histogram_mean(h) - mean) <= (eps * mean + (double)lowest) / 2.0);
            CHECK(fabs(hft_histogram_stdev(h) - stdev) <= (eps * rms + (double)lowest) / 2.0);
            hft_histogram_destroy(h);
        }
    }
    free(values);
    free(sorted);
}

static void test_negative_values_are_rejected(void)
{
    hft_histogram *h = make(1, HOUR_NS, 3);
    CHECK_EQ_INT(hft_histogram_record(h, -1), HFT_ERANGE);
    CHECK_EQ_INT(hft_histogram_record_n(h, -1, 3), HFT_ERANGE);
    CHECK_EQ_INT(hft_histogram_record_n(h, 5, -3), HFT_EINVAL);
    CHECK_EQ_INT(hft_histogram_total_count(h), 0);

    int64_t batch[] = {10, 20, INT64_MIN, 30};
    CHECK_EQ_INT(hft_histogram_record_many(h, batch, 4), HFT_ERANGE);
    CHECK_EQ_INT(hft_histogram_total_count(h), 0); /* all or nothing */
    CHECK_EQ_INT(hft_histogram_record_many(h, batch, 2), HFT_OK);
    CHECK_EQ_INT(hft_histogram_total_count(h), 2);
    CHECK_EQ_INT(hft_histogram_record_many(h, NULL, 0), HFT_OK);
    CHECK_EQ_INT(hft_histogram_record_many(h, NULL, 1), HFT_EINVAL);
    hft_histogram_destroy(h);
}

static void test_values_above_highest_are_clamped_and_counted(void)
{
    hft_histogram *h = make(1, 1000000, 3);
    CHECK_EQ_INT(hft_histogram_record(h, 500), HFT_OK);
    CHECK_EQ_INT(hft_histogram_record(h, 5000000), HFT_OK);
    CHECK_EQ_INT(hft_histogram_record_n(h, INT64_MAX, 2), HFT_OK);
    CHECK_EQ_INT(hft_histogram_total_count(h), 4);
    CHECK_EQ_INT(hft_histogram_overflow_count(h), 3);
    CHECK_EQ_INT(hft_histogram_max(h), 1000000);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 100.0), 1000000);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 99.0), 1000000);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 25.0), 500);

    /* The very top of the largest allowed range is still a valid counter. */
    hft_histogram *wide = make(1, HFT_HISTOGRAM_MAX_TRACKABLE, 3);
    CHECK_EQ_INT(hft_histogram_record(wide, INT64_MAX), HFT_OK);
    CHECK_EQ_INT(hft_histogram_record(wide, 0), HFT_OK);
    CHECK_EQ_INT(hft_histogram_max(wide), HFT_HISTOGRAM_MAX_TRACKABLE);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(wide, 100.0), HFT_HISTOGRAM_MAX_TRACKABLE);
    CHECK(hft_histogram_mean(wide) > 0.0);
    hft_histogram_destroy(wide);
    hft_histogram_destroy(h);
}

static void test_record_n_equals_repeated_record(void)
{
    hft_histogram *a = make(1, HOUR_NS, 2);
    hft_histogram *b = make(1, HOUR_NS, 2);
    CHECK_EQ_INT(hft_histogram_record_n(a, 12345, 7), HFT_OK);
    CHECK_EQ_INT(hft_histogram_record_n(a, 99, 0), HFT_OK); /* no-op: must not move min */
    for (int i = 0; i < 7; i++) {
        hft_histogram_record(b, 12345);
    }
    CHECK_EQ_INT(hft_histogram_total_count(a), 7);
    CHECK_EQ_INT(hft_histogram_min(a), 12345);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(a, 50.0), hft_histogram_value_at_percentile(b, 50.0));
    CHECK(hft_histogram_mean(a) == hft_histogram_mean(b));
    hft_histogram_destroy(a);
    hft_histogram_destroy(b);
}

static void test_percentile_arguments(void)
{
    hft_histogram *h = make(1, HOUR_NS, 3);
    for (int64_t v = 1; v <= 100; v++) {
        hft_histogram_record(h, v);
    }
    int64_t out[3] = {-7, -7, -7};
    const double descending[] = {90.0, 50.0};
    const double out_of_range[] = {50.0, 100.5};
    const double with_nan[] = {NAN};
    CHECK_EQ_INT(hft_histogram_values_at_percentiles(h, descending, out, 2), HFT_EINVAL);
    CHECK_EQ_INT(hft_histogram_values_at_percentiles(h, out_of_range, out, 2), HFT_EINVAL);
    CHECK_EQ_INT(hft_histogram_values_at_percentiles(h, with_nan, out, 1), HFT_EINVAL);
    CHECK_EQ_INT(out[0], -7); /* untouched on error */
    const double repeated[] = {50.0, 50.0, 99.0};
    CHECK_EQ_INT(hft_histogram_values_at_percentiles(h, repeated, out, 3), HFT_OK);
    CHECK_EQ_INT(out[0], 50);
    CHECK_EQ_INT(out[1], 50);
    CHECK_EQ_INT(out[2], 99);
    /* The single-value form clamps instead of failing. */
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, -3.0), 1);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 250.0), 100);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, NAN), 1);
    /* Decimal percentiles whose rank is an exact integer are not pushed one up. */
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 7.0), 7);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 29.0), 29);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 57.0), 57);
    hft_histogram_destroy(h);
}

static void check_same_statistics(const hft_histogram *a, const hft_histogram *b)
{
    CHECK_EQ_INT(hft_histogram_total_count(a), hft_histogram_total_count(b));
    CHECK_EQ_INT(hft_histogram_overflow_count(a), hft_histogram_overflow_count(b));
    CHECK_EQ_INT(hft_histogram_min(a), hft_histogram_min(b));
    CHECK_EQ_INT(hft_histogram_max(a), hft_histogram_max(b));
    CHECK(hft_histogram_mean(a) == hft_histogram_mean(b));
    CHECK(hft_histogram_stdev(a) == hft_histogram_stdev(b));
    for (double pct = 0.0; pct <= 100.0; pct += 0.5) {
        CHECK_EQ_INT(hft_histogram_value_at_percentile(a, pct), hft_histogram_value_at_percentile(b, pct));
    }
}

static void test_merge_equals_recording_both(void)
{
    enum { HALF = 20000 };
    static int64_t first[HALF], second[HALF];
    fill_lognormal(first, HALF, 5000.0, 0.5);
    fill_lognormal(second, HALF, 80000.0, 1.5); /* different range: merge must widen min/max */
    second[0] = 10 * HOUR_NS;                   /* and carry the overflow count */

    hft_histogram *a = make(1, HOUR_NS, 3), *b = make(1, HOUR_NS, 3), *both = make(1, HOUR_NS, 3);
    hft_histogram_record_many(a, first, HALF);
    hft_histogram_record_many(b, second, HALF);
    hft_histogram_record_many(both, first, HALF);
    hft_histogram_record_many(both, second, HALF);
    CHECK_EQ_INT(hft_histogram_merge(a, b), HFT_OK);
    check_same_statistics(a, both);

    hft_histogram *empty = make(1, HOUR_NS, 3);
    CHECK_EQ_INT(hft_histogram_merge(a, empty), HFT_OK);
    check_same_statistics(a, both);
    CHECK_EQ_INT(hft_histogram_merge(empty, both), HFT_OK);
    check_same_statistics(empty, both);

    hft_histogram *other_figures = make(1, HOUR_NS, 2), *other_range = make(1, HOUR_NS / 2, 3),
                  *other_lowest = make(10, HOUR_NS, 3);
    CHECK_EQ_INT(hft_histogram_merge(a, other_figures), HFT_EINVAL);
    CHECK_EQ_INT(hft_histogram_merge(a, other_range), HFT_EINVAL);
    CHECK_EQ_INT(hft_histogram_merge(a, other_lowest), HFT_EINVAL);
    CHECK_EQ_INT(hft_histogram_merge(a, NULL), HFT_EINVAL);
    check_same_statistics(a, both); /* failed merges change nothing */

    hft_histogram_destroy(other_figures);
    hft_histogram_destroy(other_range);
    hft_histogram_destroy(other_lowest);
    hft_histogram_destroy(empty);
    hft_histogram_destroy(a);
    hft_histogram_destroy(b);
    hft_histogram_destroy(both);
}

static void test_reset_forgets_everything(void)
{
    hft_histogram *h = make(1, 1000000, 3);
    hft_histogram_record(h, 42);
    hft_histogram_record(h, 50000000);
    hft_histogram_reset(h);
    CHECK_EQ_INT(hft_histogram_total_count(h), 0);
    CHECK_EQ_INT(hft_histogram_overflow_count(h), 0);
    CHECK_EQ_INT(hft_histogram_max(h), 0);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 50.0), 0);
    hft_histogram_record(h, 7);
    CHECK_EQ_INT(hft_histogram_min(h), 7);
    CHECK_EQ_INT(hft_histogram_max(h), 7);
    CHECK_EQ_INT(hft_histogram_value_at_percentile(h, 50.0), 7);
    hft_histogram_destroy(h);
}

/* The documented way to measure from several threads: one histogram each,
 * merged after join. TSan checks that the pattern needs no other synchronisation. */
enum { THREADS = 2, PER_THREAD = 50000 };

struct worker {
    hft_histogram *h;
    int64_t first_value;
};

static void *record_worker(void *arg)
{
    struct worker *w = arg;
    for (int64_t i = 0; i < PER_THREAD; i++) {
        hft_histogram_record(w->h, w->first_value + i);
    }
    return NULL;
}

static void test_one_histogram_per_thread_then_merge(void)
{
    pthread_t threads[THREADS];
    struct worker workers[THREADS];
    for (int t = 0; t < THREADS; t++) {
        workers[t].h = make(1, HOUR_NS, 3);
        workers[t].first_value = (int64_t)t * PER_THREAD;
        CHECK_EQ_INT(pthread_create(&threads[t], NULL, record_worker, &workers[t]), 0);
    }
    hft_histogram *total = make(1, HOUR_NS, 3);
    for (int t = 0; t < THREADS; t++) {
        CHECK_EQ_INT(pthread_join(threads[t], NULL), 0);
        CHECK_EQ_INT(hft_histogram_merge(total, workers[t].h), HFT_OK);
        hft_histogram_destroy(workers[t].h);
    }
    CHECK_EQ_INT(hft_histogram_total_count(total), THREADS * PER_THREAD);
    CHECK_EQ_INT(hft_histogram_min(total), 0);
    CHECK_EQ_INT(hft_histogram_max(total), THREADS * PER_THREAD - 1);
    int64_t median = hft_histogram_value_at_percentile(total, 50.0);
    CHECK(median >= PER_THREAD - 1 && (double)median <= (PER_THREAD - 1) * 1.001);
    hft_histogram_destroy(total);
}

int main(void)
{
    RUN(test_bad_configuration);
    RUN(test_empty_histogram_reports_zeros);
    RUN(test_small_values_are_exact);
    RUN(test_sweep_across_the_range_stays_within_precision);
    RUN(test_percentiles_mean_stdev_match_exact_statistics);
    RUN(test_negative_values_are_rejected);
    RUN(test_values_above_highest_are_clamped_and_counted);
    RUN(test_record_n_equals_repeated_record);
    RUN(test_percentile_arguments);
    RUN(test_merge_equals_recording_both);
    RUN(test_reset_forgets_everything);
    RUN(test_one_histogram_per_thread_then_merge);
    return TEST_SUMMARY("histogram");
}
