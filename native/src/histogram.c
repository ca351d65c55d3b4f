/* histogram.c -- see hft_histogram.h.
 *
 * Layout of the counters, with H = sub_bucket_half_count (a power of two) and
 * u = unit_magnitude (log2 of the resolution):
 *
 *   bucket 0 covers 0 .. 2H*2^u - 1 in 2H counters of width 2^u;
 *   bucket b >= 1 covers 2H*2^(u+b-1) .. 2H*2^(u+b) - 1, i.e. only its upper
 *   half is new (the lower half is bucket b-1's range), so it needs H counters
 *   of width 2^(u+b).
 *
 * Stored flat, bucket 0 takes counters 0 .. 2H-1 and bucket b >= 1 takes
 * (b+1)*H .. (b+2)*H-1, so counts_len = (bucket_count + 1) * H. Within every
 * bucket but the first a counter's width is at most 1/H of the values it holds:
 * that is the relative precision.
 */
#include "hft_histogram.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct hft_histogram {
    /* Configuration, fixed at create. */
    int64_t lowest_trackable;
    int64_t highest_trackable;
    int significant_figures;
    int unit_magnitude;                  /* log2 of the narrowest counter's width */
    int sub_bucket_half_count_magnitude; /* log2(H) */
    int64_t sub_bucket_half_count;       /* H */
    uint64_t sub_bucket_mask;            /* (2H - 1) << unit_magnitude: the bits bucket 0 spans */
    int bucket_count;
    size_t counts_len;

    /* Recorded data. */
    int64_t total_count;
    int64_t overflow_count;
    int64_t min; /* INT64_MAX while empty, so the first record always lowers it */
    int64_t max;
    int64_t counts[]; /* counts_len counters, allocated with the struct */
};

/* Number of bits needed to hold `value` (0 for 0). */
static inline int bit_length(uint64_t value) { return value == 0 ? 0 : 64 - __builtin_clzll(value); }

static inline int bucket_index_of(const hft_histogram *h, int64_t value)
{
    /* OR-ing in the mask makes every value in bucket 0 look as large as bucket
     * 0's top, so small values need no branch. */
    int pow2_ceiling = bit_length((uint64_t)value | h->sub_bucket_mask);
    return pow2_ceiling - h->unit_magnitude - (h->sub_bucket_half_count_magnitude + 1);
}

static inline size_t counts_index_of(const hft_histogram *h, int64_t value)
{
    int bucket = bucket_index_of(h, value);
    int64_t sub_bucket = value >> (bucket + h->unit_magnitude); /* H..2H-1, or 0..2H-1 in bucket 0 */
    return (size_t)(((int64_t)(bucket + 1) << h->sub_bucket_half_count_magnitude) +
                    (sub_bucket - h->sub_bucket_half_count));
}

/* Smallest value counted by counter `index`, and the width of its range. */
static inline int64_t lowest_value_at(const hft_histogram *h, size_t index)
{
    int bucket = (int)(index >> h->sub_bucket_half_count_magnitude) - 1;
    int64_t sub_bucket = (int64_t)(index & (size_t)(h->sub_bucket_half_count - 1)) + h->sub_bucket_half_count;
    if (bucket < 0) { /* the lower half of bucket 0 */
        sub_bucket -= h->sub_bucket_half_count;
        bucket = 0;
    }
    return sub_bucket << (bucket + h->unit_magnitude);
}

static inline int64_t width_at(const hft_histogram *h, size_t index)
{
    int bucket = (int)(index >> h->sub_bucket_half_count_magnitude) - 1;
    return (int64_t)1 << ((bucket < 0 ? 0 : bucket) + h->unit_magnitude);
}

int hft_histogram_create(int64_t lowest_trackable, int64_t highest_trackable, int significant_figures,
                         hft_histogram **out)
{
    if (out == NULL || lowest_trackable < 1 || highest_trackable > HFT_HISTOGRAM_MAX_TRACKABLE ||
        highest_trackable < 2 * lowest_trackable ||
        significant_figures < HFT_HISTOGRAM_MIN_SIGNIFICANT_FIGURES ||
        significant_figures > HFT_HISTOGRAM_MAX_SIGNIFICANT_FIGURES) {
        return HFT_EINVAL;
    }
    /* Enough linear sub-buckets that a counter is at most 10^-sf of its values:
     * 2 * 10^sf, rounded up to a power of two. */
    int64_t single_unit_limit = 2;
    for (int i = 0; i < significant_figures; i++) {
        single_unit_limit *= 10;
    }
    int sub_bucket_count_magnitude = bit_length((uint64_t)(single_unit_limit - 1));
    int unit_magnitude = bit_length((uint64_t)lowest_trackable) - 1;
    /* 2H << unit must stay a valid int64_t bucket boundary. */
    if (unit_magnitude + sub_bucket_count_magnitude > 62) {
        return HFT_EINVAL;
    }

    /* Double the covered range, one bucket at a time, until highest fits. */
    int bucket_count = 1;
    uint64_t smallest_untrackable = (uint64_t)1 << (sub_bucket_count_magnitude + unit_magnitude);
    while (smallest_untrackable <= (uint64_t)highest_trackable) {
        smallest_untrackable <<= 1;
        bucket_count++;
    }
    int64_t half_count = (int64_t)1 << (sub_bucket_count_magnitude - 1);
    size_t counts_len = (size_t)(bucket_count + 1) * (size_t)half_count;

    hft_histogram *h = calloc(1, sizeof(*h) + counts_len * sizeof(int64_t));
    if (h == NULL) {
        return HFT_ENOMEM;
    }
    h->lowest_trackable = lowest_trackable;
    h->highest_trackable = highest_trackable;
    h->significant_figures = significant_figures;
    h->unit_magnitude = unit_magnitude;
    h->sub_bucket_half_count_magnitude = sub_bucket_count_magnitude - 1;
    h->sub_bucket_half_count = half_count;
    h->sub_bucket_mask = ((uint64_t)(2 * half_count) - 1) << unit_magnitude;
    h->bucket_count = bucket_count;
    h->counts_len = counts_len;
    h->min = INT64_MAX;
    *out = h;
    return HFT_OK;
}

void hft_histogram_destroy(hft_histogram *h) { free(h); }

void hft_histogram_reset(hft_histogram *h)
{
    memset(h->counts, 0, h->counts_len * sizeof(int64_t));
    h->total_count = 0;
    h->overflow_count = 0;
    h->min = INT64_MAX;
    h->max = 0;
}

/* The whole recording path; callers have already rejected negative values and counts. */
static inline void record_checked(hft_histogram *h, int64_t value, int64_t count)
{
    if (value > h->highest_trackable) {
        value = h->highest_trackable;
        h->overflow_count += count;
    }
    h->counts[counts_index_of(h, value)] += count;
    h->total_count += count;
    if (value < h->min) {
        h->min = value;
    }
    if (value > h->max) {
        h->max = value;
    }
}

int hft_histogram_record(hft_histogram *h, int64_t value)
{
    if (value < 0) {
        return HFT_ERANGE;
    }
    record_checked(h, value, 1);
    return HFT_OK;
}

int hft_histogram_record_n(hft_histogram *h, int64_t value, int64_t count)
{
    if (value < 0) {
        return HFT_ERANGE;
    }
    if (count < 0) {
        return HFT_EINVAL;
    }
    if (count > 0) { /* count 0 must not move min/max */
        record_checked(h, value, count);
    }
    return HFT_OK;
}

int hft_histogram_record_many(hft_histogram *h, const int64_t *values, size_t n)
{
    if (values == NULL && n > 0) {
        return HFT_EINVAL;
    }
    /* Validate first so a bad batch leaves the histogram as it was. */
    int64_t any_negative = 0;
    for (size_t i = 0; i < n; i++) {
        any_negative |= values[i]; /* the sign bit survives the OR: one branch for the batch */
    }
    if (any_negative < 0) {
        return HFT_ERANGE;
    }
    for (size_t i = 0; i < n; i++) {
        record_checked(h, values[i], 1);
    }
    return HFT_OK;
}

int hft_histogram_merge(hft_histogram *dst, const hft_histogram *src)
{
    if (dst == NULL || src == NULL || dst->lowest_trackable != src->lowest_trackable ||
        dst->highest_trackable != src->highest_trackable ||
        dst->significant_figures != src->significant_figures) {
        return HFT_EINVAL;
    }
    if (src->total_count == 0) {
        return HFT_OK;
    }
    /* Only the counters between src's min and max can be non-zero. */
    size_t first = counts_index_of(src, src->min);
    size_t last = counts_index_of(src, src->max);
    for (size_t i = first; i <= last; i++) {
        dst->counts[i] += src->counts[i];
    }
    dst->total_count += src->total_count;
    dst->overflow_count += src->overflow_count;
    if (src->min < dst->min) {
        dst->min = src->min;
    }
    if (src->max > dst->max) {
        dst->max = src->max;
    }
    return HFT_OK;
}

/* 1-based rank of the nearest-rank percentile: ceil(pct/100 * total), at least 1. */
static int64_t rank_at_percentile(double pct, int64_t total)
{
    double exact = pct * (double)total / 100.0;
    /* Decimal percentiles are inexact in binary (99.9 is 99.90000000000000568...),
     * so an exact rank can come out a hair above an integer; ceil would then skip
     * one value. Snap near-integers before rounding up. */
    double nearest = nearbyint(exact);
    if (fabs(exact - nearest) <= 1e-9 * exact) {
        exact = nearest;
    }
    int64_t rank = (int64_t)ceil(exact);
    if (rank < 1) {
        rank = 1;
    }
    return rank > total ? total : rank;
}

int hft_histogram_values_at_percentiles(const hft_histogram *h, const double *percentiles,
                                        int64_t *values_out, size_t n)
{
    if (h == NULL || (n > 0 && (percentiles == NULL || values_out == NULL))) {
        return HFT_EINVAL;
    }
    for (size_t k = 0; k < n; k++) {
        double pct = percentiles[k];
        /* Written so NaN fails too. */
        if (!(pct >= 0.0 && pct <= 100.0) || (k > 0 && pct < percentiles[k - 1])) {
            return HFT_EINVAL;
        }
    }
    if (h->total_count == 0) {
        for (size_t k = 0; k < n; k++) {
            values_out[k] = 0;
        }
        return HFT_OK;
    }
    /* One walk from min's counter upwards; ranks only grow because the
     * percentiles do, so each percentile resumes where the previous stopped. */
    size_t index = counts_index_of(h, h->min);
    int64_t cumulative = h->counts[index];
    for (size_t k = 0; k < n; k++) {
        if (percentiles[k] == 0.0) {
            values_out[k] = h->min;
            continue;
        }
        if (percentiles[k] == 100.0) {
            values_out[k] = h->max;
            continue;
        }
        int64_t rank = rank_at_percentile(percentiles[k], h->total_count);
        while (cumulative < rank) {
            cumulative += h->counts[++index];
        }
        /* Report the top of the counter's range so the answer errs high, but
         * never above what was actually recorded. */
        int64_t highest_equivalent = lowest_value_at(h, index) + width_at(h, index) - 1;
        values_out[k] = highest_equivalent < h->max ? highest_equivalent : h->max;
    }
    return HFT_OK;
}

int64_t hft_histogram_value_at_percentile(const hft_histogram *h, double pct)
{
    if (!(pct > 0.0)) { /* also catches NaN */
        pct = 0.0;
    } else if (pct > 100.0) {
        pct = 100.0;
    }
    int64_t value = 0;
    hft_histogram_values_at_percentiles(h, &pct, &value, 1);
    return value;
}

int64_t hft_histogram_total_count(const hft_histogram *h) { return h->total_count; }

int64_t hft_histogram_overflow_count(const hft_histogram *h) { return h->overflow_count; }

int64_t hft_histogram_min(const hft_histogram *h) { return h->total_count == 0 ? 0 : h->min; }

int64_t hft_histogram_max(const hft_histogram *h) { return h->max; }

/* Each counter stands for the midpoint of its range: the estimate that halves
 * the worst-case error of using either end. */
static inline double midpoint_at(const hft_histogram *h, size_t index)
{
    return (double)lowest_value_at(h, index) + (double)(width_at(h, index) - 1) / 2.0;
}

double hft_histogram_mean(const hft_histogram *h)
{
    if (h->total_count == 0) {
        return 0.0;
    }
    size_t last = counts_index_of(h, h->max);
    double sum = 0.0;
    for (size_t i = counts_index_of(h, h->min); i <= last; i++) {
        if (h->counts[i] != 0) {
            sum += (double)h->counts[i] * midpoint_at(h, i);
        }
    }
    return sum / (double)h->total_count;
}

double hft_histogram_stdev(const hft_histogram *h)
{
    if (h->total_count == 0) {
        return 0.0;
    }
    /* Two passes (mean, then squared deviations) rather than sum of squares:
     * squares of nanosecond latencies lose the small differences that matter. */
    double mean = hft_histogram_mean(h);
    size_t last = counts_index_of(h, h->max);
    double sum_sq = 0.0;
    for (size_t i = counts_index_of(h, h->min); i <= last; i++) {
        if (h->counts[i] != 0) {
            double deviation = midpoint_at(h, i) - mean;
            sum_sq += (double)h->counts[i] * deviation * deviation;
        }
    }
    return sqrt(sum_sq / (double)h->total_count);
}
