/*
 * hft_histogram.h -- latency histogram with bounded relative error (HDR style).
 *
 * Why log-linear buckets: latencies span nanoseconds to seconds, and what
 * matters is relative precision ("p99 is 12.3 us, give or take 0.1%"), not a
 * fixed bin width. Values are split into buckets by power of two; each bucket
 * is cut into the same number of linear sub-buckets, enough that any value is
 * known to `significant_figures` decimal digits. Finding a value's counter is a
 * count-leading-zeros and two shifts, so recording costs a few nanoseconds, and
 * memory depends only on the configured range, never on how much is recorded.
 *
 * Precision: a value v is reported within max(v * 10^-sf, lowest_trackable) of
 * itself, sf being significant_figures (the relative part is really 2^-k, with
 * 2^(k+1) >= 2 * 10^sf sub-buckets per bucket). lowest_trackable is the
 * resolution: the narrowest counter is the largest power of two <= it, so pass
 * 1 to know small values exactly, or e.g. 1000 when nanosecond detail below a
 * microsecond does not matter and the memory does.
 *
 * Out-of-range values, decided once for every record function:
 *   - negative values are rejected with HFT_ERANGE and nothing is recorded: a
 *     negative latency means a clock bug, and clamping it to 0 would hide it;
 *   - 0 .. lowest_trackable-1 are recorded (they land in the first counter);
 *   - values above highest_trackable are recorded AS highest_trackable and also
 *     counted in hft_histogram_overflow_count, so one stall of several hours
 *     neither fails the caller nor silently vanishes. Min, max, mean and the
 *     percentiles describe the clamped values.
 *
 * Concurrency: a histogram has a single writer and is NOT safe to read while
 * that writer records (no locks, no atomics: recording must stay a plain
 * increment). Threads that measure in parallel each record into their own
 * histogram, and whoever aggregates merges them with hft_histogram_merge once
 * the writers are joined or otherwise synchronised with the reader.
 */
#ifndef HFT_HISTOGRAM_H
#define HFT_HISTOGRAM_H

#include "hft_common.h"

typedef struct hft_histogram hft_histogram;

/* Limits of the configuration accepted by hft_histogram_create. */
#define HFT_HISTOGRAM_MIN_SIGNIFICANT_FIGURES 1
#define HFT_HISTOGRAM_MAX_SIGNIFICANT_FIGURES 5
/* INT64_MAX / 2 (146 years in ns): keeps every bucket boundary inside int64_t. */
#define HFT_HISTOGRAM_MAX_TRACKABLE 4611686018427387903LL

/* Allocate a histogram tracking lowest_trackable .. highest_trackable with
 * significant_figures decimal digits of precision. This is the only allocation
 * the histogram ever makes (about 8 * (buckets + 1) * 2^k bytes, e.g. 270 KB for
 * 1 ns .. 1 h at 3 figures). Returns HFT_OK and sets *out, HFT_EINVAL when
 * lowest_trackable < 1, highest_trackable < 2 * lowest_trackable or above
 * HFT_HISTOGRAM_MAX_TRACKABLE, significant_figures outside 1..5, or the
 * resolution and precision together do not fit 64 bits; or HFT_ENOMEM.
 * Thread-safe (touches nothing shared). */
int hft_histogram_create(int64_t lowest_trackable, int64_t highest_trackable, int significant_figures,
                         hft_histogram **out);

/* Free the histogram. NULL is a no-op. */
void hft_histogram_destroy(hft_histogram *h);

/* Forget every recorded value; the configuration stays. Single writer. */
void hft_histogram_reset(hft_histogram *h);

/* Record one value. O(1), no allocation, no locks. HFT_OK (also when the value
 * was clamped to highest_trackable), or HFT_ERANGE for a negative value.
 * Single writer: only the histogram's owning thread may call it. */
int hft_histogram_record(hft_histogram *h, int64_t value);

/* Record `count` occurrences of `value` (e.g. from a coordinated-omission
 * correction or a pre-aggregated source). HFT_OK (count 0 is a no-op),
 * HFT_ERANGE for a negative value, HFT_EINVAL for a negative count. Single writer. */
int hft_histogram_record_n(hft_histogram *h, int64_t value, int64_t count);

/* Record values[0 .. n-1], typically a numpy int64 array passed without copying.
 * All or nothing: if any value is negative, nothing is recorded and HFT_ERANGE
 * is returned. HFT_EINVAL if values is NULL while n > 0. Single writer. */
int hft_histogram_record_many(hft_histogram *h, const int64_t *values, size_t n);

/* Add every count of `src` into `dst`, which must have been created with the
 * same lowest, highest and significant figures (HFT_EINVAL otherwise, and dst
 * is unchanged). Neither histogram may be written meanwhile; `src` is only read. */
int hft_histogram_merge(hft_histogram *dst, const hft_histogram *src);

/* The value at percentile `pct` (0..100, clamped into that range; NaN counts as
 * 0) by the nearest-rank definition: the smallest recorded value v such that at
 * least pct% of the values are <= v, reported as the upper end of v's counter
 * (never above the exact max) so the answer errs high, within the precision.
 * pct 0 gives the exact min, pct 100 the exact max, an empty histogram 0.
 * Walks the counters once: O(counters between min and max). Readers must not
 * run concurrently with the writer (see the header comment). */
int64_t hft_histogram_value_at_percentile(const hft_histogram *h, double pct);

/* Several percentiles in one walk: values_out[i] = value at percentiles[i].
 * percentiles must be in non-decreasing order and each within 0..100
 * (HFT_EINVAL otherwise, values_out untouched). Same reader contract as above. */
int hft_histogram_values_at_percentiles(const hft_histogram *h, const double *percentiles,
                                        int64_t *values_out, size_t n);

/* Number of values recorded, and how many of them were clamped down to
 * highest_trackable. */
int64_t hft_histogram_total_count(const hft_histogram *h);
int64_t hft_histogram_overflow_count(const hft_histogram *h);

/* Exact smallest and largest recorded values (after clamping); 0 when empty. */
int64_t hft_histogram_min(const hft_histogram *h);
int64_t hft_histogram_max(const hft_histogram *h);

/* Mean and population standard deviation, computed from the counters (each
 * counted as the midpoint of its range), so within the configured precision;
 * 0.0 when empty. O(counters between min and max). */
double hft_histogram_mean(const hft_histogram *h);
double hft_histogram_stdev(const hft_histogram *h);

#endif /* HFT_HISTOGRAM_H */
