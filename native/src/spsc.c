/* spsc.c -- see hft_spsc.h.
 *
 * head and tail are free-running 64-bit record counts (they never wrap in
 * practice), so "full" is tail - head == capacity with no slot wasted.
 * The producer publishes a record by storing tail (release) after copying it;
 * the consumer returns slots by storing head (release) after copying records
 * out. Each such store is followed by a wake_all on the other side's
 * waitpoint, which costs one load while nobody sleeps (wait.c).
 */
#include "hft_spsc.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "hft_bench_internal.h"
#include "hft_wait.h"

struct hft_spsc_ring {
    /* Written by the producer only. */
    _Alignas(HFT_CACHE_LINE) _Atomic uint64_t tail;
    uint64_t cached_head; /* producer's last view of head: refreshed only when the ring looks full */

    /* Written by the consumer only. */
    _Alignas(HFT_CACHE_LINE) _Atomic uint64_t head;
    uint64_t cached_tail; /* consumer's last view of tail: refreshed only when the ring looks empty */

    /* Each waitpoint is read on every publish by the other side, and written only
     * when a thread parks, so it gets a line of its own. */
    _Alignas(HFT_CACHE_LINE) hft_waitpoint not_empty; /* the consumer parks here */
    _Alignas(HFT_CACHE_LINE) hft_waitpoint not_full;  /* the producer parks here */

    /* Set at create, read by both sides: a line shared read-only. */
    _Alignas(HFT_CACHE_LINE) unsigned char *slots;
    uint64_t capacity;
    uint64_t mask;
    size_t record_size;
    _Atomic bool closed;
};

/* Largest capacity we round up to; keeps tail - head comparisons far from overflow. */
#define SPSC_MAX_CAPACITY ((uint64_t)1 << 40)

static size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

int hft_spsc_ring_create(size_t capacity, size_t record_size, hft_spsc_ring **out)
{
    if (out == NULL || capacity == 0 || record_size == 0 || capacity > SPSC_MAX_CAPACITY) {
        return HFT_EINVAL;
    }
    uint64_t rounded = 1;
    while (rounded < capacity) {
        rounded <<= 1;
    }
    if (rounded > (SIZE_MAX - HFT_CACHE_LINE) / record_size) {
        return HFT_EINVAL;
    }
    hft_spsc_ring *ring = aligned_alloc(HFT_CACHE_LINE, round_up(sizeof(*ring), HFT_CACHE_LINE));
    if (ring == NULL) {
        return HFT_ENOMEM;
    }
    memset(ring, 0, sizeof(*ring));
    ring->slots = aligned_alloc(HFT_CACHE_LINE, round_up((size_t)rounded * record_size, HFT_CACHE_LINE));
    if (ring->slots == NULL) {
        free(ring);
        return HFT_ENOMEM;
    }
    atomic_init(&ring->tail, 0);
    atomic_init(&ring->head, 0);
    hft_waitpoint_init(&ring->not_empty);
    hft_waitpoint_init(&ring->not_full);
    ring->capacity = rounded;
    ring->mask = rounded - 1;
    ring->record_size = record_size;
    atomic_init(&ring->closed, false);
    *out = ring;
    return HFT_OK;
}

void hft_spsc_ring_destroy(hft_spsc_ring *ring)
{
    if (ring == NULL) {
        return;
    }
    free(ring->slots);
    free(ring);
}

static unsigned char *slot_at(const hft_spsc_ring *ring, uint64_t index)
{
    return ring->slots + (size_t)(index & ring->mask) * ring->record_size;
}

/* Free slots as the producer sees them, refreshing its view of head only when
 * the cached one says fewer than `wanted` are free. */
static uint64_t producer_free_slots(hft_spsc_ring *ring, uint64_t tail, uint64_t wanted)
{
    uint64_t free_slots = ring->capacity - (tail - ring->cached_head);
    if (free_slots < wanted) {
        ring->cached_head = atomic_load_explicit(&ring->head, memory_order_acquire);
        free_slots = ring->capacity - (tail - ring->cached_head);
    }
    return free_slots;
}

/* Records available as the consumer sees them; same caching rule. */
static uint64_t consumer_available(hft_spsc_ring *ring, uint64_t head, uint64_t wanted)
{
    uint64_t available = ring->cached_tail - head;
    if (available < wanted) {
        ring->cached_tail = atomic_load_explicit(&ring->tail, memory_order_acquire);
        available = ring->cached_tail - head;
    }
    return available;
}

int hft_spsc_ring_try_push(hft_spsc_ring *ring, const void *record)
{
    if (ring == NULL || record == NULL) {
        return HFT_EINVAL;
    }
    uint64_t tail = atomic_load_explicit(&ring->tail, memory_order_relaxed);
    if (producer_free_slots(ring, tail, 1) == 0) {
        return HFT_EAGAIN;
    }
    memcpy(slot_at(ring, tail), record, ring->record_size);
    atomic_store_explicit(&ring->tail, tail + 1, memory_order_release);
    hft_waitpoint_wake_all(&ring->not_empty);
    return HFT_OK;
}

int hft_spsc_ring_push_many(hft_spsc_ring *ring, const void *records, size_t n, size_t *pushed)
{
    if (ring == NULL || (records == NULL && n > 0) || pushed == NULL) {
        return HFT_EINVAL;
    }
    *pushed = 0;
    if (n == 0) {
        return HFT_OK;
    }
    uint64_t tail = atomic_load_explicit(&ring->tail, memory_order_relaxed);
    uint64_t count = producer_free_slots(ring, tail, n);
    if (count == 0) {
        return HFT_EAGAIN;
    }
    if (count > n) {
        count = n;
    }
    /* At most two copies: up to the end of the slot array, then from its start. */
    uint64_t first = ring->capacity - (tail & ring->mask);
    if (first > count) {
        first = count;
    }
    memcpy(slot_at(ring, tail), records, (size_t)first * ring->record_size);
    memcpy(ring->slots, (const unsigned char *)records + (size_t)first * ring->record_size,
           (size_t)(count - first) * ring->record_size);
    atomic_store_explicit(&ring->tail, tail + count, memory_order_release);
    hft_waitpoint_wake_all(&ring->not_empty);
    *pushed = (size_t)count;
    return HFT_OK;
}

int hft_spsc_ring_pop_many(hft_spsc_ring *ring, void *records_out, size_t max_records, size_t *popped)
{
    if (ring == NULL || (records_out == NULL && max_records > 0) || popped == NULL) {
        return HFT_EINVAL;
    }
    *popped = 0;
    if (max_records == 0) {
        return HFT_OK;
    }
    uint64_t head = atomic_load_explicit(&ring->head, memory_order_relaxed);
    uint64_t count = consumer_available(ring, head, max_records);
    if (count == 0) {
        return HFT_EAGAIN;
    }
    if (count > max_records) {
        count = max_records;
    }
    uint64_t first = ring->capacity - (head & ring->mask);
    if (first > count) {
        first = count;
    }
    memcpy(records_out, slot_at(ring, head), (size_t)first * ring->record_size);
    memcpy((unsigned char *)records_out + (size_t)first * ring->record_size, ring->slots,
           (size_t)(count - first) * ring->record_size);
    atomic_store_explicit(&ring->head, head + count, memory_order_release);
    hft_waitpoint_wake_all(&ring->not_full);
    *popped = (size_t)count;
    return HFT_OK;
}

int hft_spsc_ring_try_pop(hft_spsc_ring *ring, void *record_out)
{
    if (ring == NULL || record_out == NULL) {
        return HFT_EINVAL;
    }
    uint64_t head = atomic_load_explicit(&ring->head, memory_order_relaxed);
    if (consumer_available(ring, head, 1) == 0) {
        return HFT_EAGAIN;
    }
    memcpy(record_out, slot_at(ring, head), ring->record_size);
    atomic_store_explicit(&ring->head, head + 1, memory_order_release);
    hft_waitpoint_wake_all(&ring->not_full);
    return HFT_OK;
}

/* Waitpoint conditions: acquire loads, as the protocol in wait.c requires.
 * Each is evaluated only by the side that owns the other index. */
static bool ring_not_full_or_closed(const void *ctx)
{
    const hft_spsc_ring *ring = ctx;
    uint64_t tail = atomic_load_explicit(&ring->tail, memory_order_relaxed);
    return tail - atomic_load_explicit(&ring->head, memory_order_acquire) < ring->capacity ||
           atomic_load_explicit(&ring->closed, memory_order_acquire);
}

static bool ring_not_empty_or_closed(const void *ctx)
{
    const hft_spsc_ring *ring = ctx;
    uint64_t head = atomic_load_explicit(&ring->head, memory_order_relaxed);
    return atomic_load_explicit(&ring->tail, memory_order_acquire) != head ||
           atomic_load_explicit(&ring->closed, memory_order_acquire);
}

/* Called after an attempt said HFT_EAGAIN: park on `wp` until `ready` holds.
 * Returns HFT_OK to try again, or the code the blocking call should return.
 * The deadline is computed on the first miss only, so the fast path never
 * reads the clock. */
static int wait_after_miss(hft_spsc_ring *ring, hft_waitpoint *wp, hft_wait_ready_fn ready, int64_t timeout_ns,
                           int64_t *deadline_ns)
{
    if (atomic_load_explicit(&ring->closed, memory_order_acquire)) {
        return HFT_EINVAL;
    }
    if (*deadline_ns < 0) {
        *deadline_ns = hft_deadline_from_timeout(timeout_ns);
    }
    return hft_waitpoint_wait(wp, ready, ring, *deadline_ns);
}

int hft_spsc_ring_push_wait(hft_spsc_ring *ring, const void *record, int64_t timeout_ns)
{
    int64_t deadline_ns = -1;
    for (;;) {
        int rc = hft_spsc_ring_try_push(ring, record);
        if (rc != HFT_EAGAIN) {
            return rc;
        }
        rc = wait_after_miss(ring, &ring->not_full, ring_not_full_or_closed, timeout_ns, &deadline_ns);
        if (rc != HFT_OK) {
            return rc;
        }
    }
}

int hft_spsc_ring_pop_wait(hft_spsc_ring *ring, void *record_out, int64_t timeout_ns)
{
    int64_t deadline_ns = -1;
    for (;;) {
        int rc = hft_spsc_ring_try_pop(ring, record_out);
        if (rc != HFT_EAGAIN) {
            return rc;
        }
        rc = wait_after_miss(ring, &ring->not_empty, ring_not_empty_or_closed, timeout_ns, &deadline_ns);
        if (rc != HFT_OK) {
            return rc;
        }
    }
}

int hft_spsc_ring_pop_many_wait(hft_spsc_ring *ring, void *records_out, size_t max_records, size_t *popped,
                                int64_t timeout_ns)
{
    int64_t deadline_ns = -1;
    for (;;) {
        int rc = hft_spsc_ring_pop_many(ring, records_out, max_records, popped);
        if (rc != HFT_EAGAIN) {
            return rc;
        }
        rc = wait_after_miss(ring, &ring->not_empty, ring_not_empty_or_closed, timeout_ns, &deadline_ns);
        if (rc != HFT_OK) {
            return rc;
        }
    }
}

void hft_spsc_ring_close(hft_spsc_ring *ring)
{
    if (ring == NULL) {
        return;
    }
    atomic_store_explicit(&ring->closed, true, memory_order_release);
    hft_waitpoint_wake_all(&ring->not_empty);
    hft_waitpoint_wake_all(&ring->not_full);
}

size_t hft_spsc_ring_size_approx(const hft_spsc_ring *ring)
{
    /* head first: tail only grows, so tail - head cannot go negative. */
    uint64_t head = atomic_load_explicit(&ring->head, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&ring->tail, memory_order_acquire);
    uint64_t size = tail - head;
    return (size_t)(size > ring->capacity ? ring->capacity : size);
}

size_t hft_spsc_ring_capacity(const hft_spsc_ring *ring) { return (size_t)ring->capacity; }

size_t hft_spsc_ring_record_size(const hft_spsc_ring *ring) { return ring->record_size; }

/* --- benchmark ---------------------------------------------------------------- */

/* Records the benchmark can verify: word 0 is the sequence number, word 1 a
 * multiplicative hash of it (so a torn or stale copy is caught), and for
 * records of 24 bytes or more the last word repeats the hash. */
#define BENCH_HASH 0x9E3779B97F4A7C15ull
#define BENCH_BATCH 256
#define BENCH_RING_CAPACITY 16384

typedef struct spsc_bench {
    hft_spsc_ring *ring;
    uint64_t n_records;
    size_t record_size;
    pthread_barrier_t start;
    int consumer_rc;
} spsc_bench;

static void bench_record_fill(unsigned char *record, size_t record_size, uint64_t seq)
{
    uint64_t hash = seq * BENCH_HASH;
    memcpy(record, &seq, 8);
    memcpy(record + 8, &hash, 8);
    if (record_size >= 24) {
        memcpy(record + record_size - 8, &hash, 8);
    }
}

static bool bench_record_ok(const unsigned char *record, size_t record_size, uint64_t seq)
{
    uint64_t got_seq, got_hash, got_tail_hash;
    memcpy(&got_seq, record, 8);
    memcpy(&got_hash, record + 8, 8);
    memcpy(&got_tail_hash, record + record_size - 8, 8);
    return got_seq == seq && got_hash == seq * BENCH_HASH && got_tail_hash == got_hash;
}

static void *spsc_bench_producer(void *arg)
{
    hft_bench_pin_to_cpu_slot(1); /* consumer on one CPU, producers on another */
    spsc_bench *bench = arg;
    unsigned char record[4096];
    memset(record, 0xA5, bench->record_size);
    pthread_barrier_wait(&bench->start);
    for (uint64_t seq = 0; seq < bench->n_records; seq++) {
        bench_record_fill(record, bench->record_size, seq);
        if (hft_spsc_ring_push_wait(bench->ring, record, -1) != HFT_OK) {
            break; /* closed by the consumer after a failed check */
        }
    }
    return NULL;
}

static void *spsc_bench_consumer(void *arg)
{
    hft_bench_pin_to_cpu_slot(0); /* consumer on one CPU, producers on another */
    spsc_bench *bench = arg;
    unsigned char *batch = malloc(BENCH_BATCH * bench->record_size);
    bench->consumer_rc = batch == NULL ? HFT_ENOMEM : HFT_OK;
    pthread_barrier_wait(&bench->start);
    uint64_t expected = 0;
    while (bench->consumer_rc == HFT_OK && expected < bench->n_records) {
        size_t popped = 0;
        int rc = hft_spsc_ring_pop_many_wait(bench->ring, batch, BENCH_BATCH, &popped, -1);
        if (rc != HFT_OK) {
            bench->consumer_rc = rc;
            break;
        }
        for (size_t i = 0; i < popped; i++, expected++) {
            if (!bench_record_ok(batch + i * bench->record_size, bench->record_size, expected)) {
                bench->consumer_rc = HFT_ERANGE;
                break;
            }
        }
    }
    if (bench->consumer_rc != HFT_OK) {
        hft_spsc_ring_close(bench->ring); /* unblock the producer */
    }
    free(batch);
    return NULL;
}

int hft_spsc_bench(uint64_t n_records, size_t record_size, double *ops_per_s)
{
    if (ops_per_s == NULL || n_records == 0 || record_size < 16 || record_size > 4096) {
        return HFT_EINVAL;
    }
    spsc_bench bench = {.n_records = n_records, .record_size = record_size};
    int rc = hft_spsc_ring_create(BENCH_RING_CAPACITY, record_size, &bench.ring);
    if (rc != HFT_OK) {
        return rc;
    }
    pthread_t producer, consumer;
    pthread_barrier_init(&bench.start, NULL, 3);
    if (pthread_create(&consumer, NULL, spsc_bench_consumer, &bench) != 0) {
        rc = HFT_ENOMEM;
        goto out;
    }
    if (pthread_create(&producer, NULL, spsc_bench_producer, &bench) != 0) {
        /* The consumer is parked at the barrier; let it go with nothing to read. */
        bench.n_records = 0;
        pthread_barrier_wait(&bench.start);
        pthread_join(consumer, NULL);
        rc = HFT_ENOMEM;
        goto out;
    }
    pthread_barrier_wait(&bench.start);
    int64_t started = hft_wait_now_ns();
    pthread_join(producer, NULL);
    pthread_join(consumer, NULL);
    int64_t elapsed = hft_wait_now_ns() - started;
    rc = bench.consumer_rc;
    if (rc == HFT_OK) {
        *ops_per_s = (double)n_records * 1e9 / (double)(elapsed > 0 ? elapsed : 1);
    }
out:
    pthread_barrier_destroy(&bench.start);
    hft_spsc_ring_destroy(bench.ring);
    return rc;
}
