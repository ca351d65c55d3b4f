/* mpsc.c -- see hft_mpsc.h.
 *
 * The slot array is `capacity` cells of [sequence | record]. For the cell at
 * position pos (pos counts up forever; the cell is pos & mask):
 *   sequence == pos            free: the producer that claims pos may write it
 *   sequence == pos + 1        published: the consumer may read it
 *   sequence == pos + capacity handed back: free for position pos + capacity
 * A producer claims pos with a CAS on enqueue_pos once the cell says "free";
 * a cell still at the previous lap's "published" value means the queue is full.
 *
 * The publishing stores (a cell's sequence by a producer, dequeue_pos by the
 * consumer) are release stores followed by a wake_all (wait.c). Producers
 * wait for "not full" through dequeue_pos, which the consumer stores once per
 * pop or pop_many batch after handing the cells back, rather than through the
 * cells themselves: one wake check per batch, not per cell.
 */
#include "hft_mpsc.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "hft_bench_internal.h"
#include "hft_wait.h"

struct hft_mpsc_queue {
    /* Contended by producers (CAS to claim a position). */
    _Alignas(HFT_CACHE_LINE) _Atomic uint64_t enqueue_pos;

    /* Written by the consumer only; producers read it only to decide whether to park. */
    _Alignas(HFT_CACHE_LINE) _Atomic uint64_t dequeue_pos;

    _Alignas(HFT_CACHE_LINE) hft_waitpoint not_empty; /* the consumer parks here */
    _Alignas(HFT_CACHE_LINE) hft_waitpoint not_full;  /* producers park here */

    /* Set at create, read by everyone. */
    _Alignas(HFT_CACHE_LINE) unsigned char *cells;
    uint64_t capacity;
    uint64_t mask;
    size_t record_size;
    size_t cell_size; /* 8-byte sequence + record, rounded up to keep sequences 8-byte aligned */
    _Atomic bool closed;
};

#define MPSC_MAX_CAPACITY ((uint64_t)1 << 40)
#define CELL_HEADER sizeof(uint64_t)

static size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

static unsigned char *cell_at(const hft_mpsc_queue *queue, uint64_t pos)
{
    return queue->cells + (size_t)(pos & queue->mask) * queue->cell_size;
}

static _Atomic uint64_t *cell_sequence(unsigned char *cell) { return (_Atomic uint64_t *)(void *)cell; }

int hft_mpsc_queue_create(size_t capacity, size_t record_size, hft_mpsc_queue **out)
{
    if (out == NULL || capacity == 0 || record_size == 0 || capacity > MPSC_MAX_CAPACITY ||
        record_size > SIZE_MAX / 2) {
        return HFT_EINVAL;
    }
    /* At least 2: with one cell, "published" (pos + 1) would read as "free" for
     * the next position (pos + 1) and a second producer would overwrite it. */
    uint64_t rounded = 2;
    while (rounded < capacity) {
        rounded <<= 1;
    }
    size_t cell_size = round_up(CELL_HEADER + record_size, CELL_HEADER);
    if (rounded > (SIZE_MAX - HFT_CACHE_LINE) / cell_size) {
        return HFT_EINVAL;
    }
    hft_mpsc_queue *queue = aligned_alloc(HFT_CACHE_LINE, round_up(sizeof(*queue), HFT_CACHE_LINE));
    if (queue == NULL) {
        return HFT_ENOMEM;
    }
    memset(queue, 0, sizeof(*queue));
    queue->cells = aligned_alloc(HFT_CACHE_LINE, round_up((size_t)rounded * cell_size, HFT_CACHE_LINE));
    if (queue->cells == NULL) {
        free(queue);
        return HFT_ENOMEM;
    }
    queue->capacity = rounded;
    queue->mask = rounded - 1;
    queue->record_size = record_size;
    queue->cell_size = cell_size;
    for (uint64_t pos = 0; pos < rounded; pos++) {
        atomic_init(cell_sequence(cell_at(queue, pos)), pos);
    }
    atomic_init(&queue->enqueue_pos, 0);
    atomic_init(&queue->dequeue_pos, 0);
    hft_waitpoint_init(&queue->not_empty);
    hft_waitpoint_init(&queue->not_full);
    atomic_init(&queue->closed, false);
    *out = queue;
    return HFT_OK;
}

void hft_mpsc_queue_destroy(hft_mpsc_queue *queue)
{
    if (queue == NULL) {
        return;
    }
    free(queue->cells);
    free(queue);
}

int hft_mpsc_queue_try_push(hft_mpsc_queue *queue, const void *record)
{
    if (queue == NULL || record == NULL) {
        return HFT_EINVAL;
    }
    uint64_t pos = atomic_load_explicit(&queue->enqueue_pos, memory_order_relaxed);
    unsigned char *cell;
    for (;;) {
        cell = cell_at(queue, pos);
        uint64_t sequence = atomic_load_explicit(cell_sequence(cell), memory_order_acquire);
        int64_t lag = (int64_t)(sequence - pos);
        if (lag == 0) {
            /* Free for pos: claim it. On failure `pos` is reloaded with the winner's next. */
            if (atomic_compare_exchange_weak_explicit(&queue->enqueue_pos, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed)) {
                break;
            }
        } else if (lag < 0) {
            return HFT_EAGAIN; /* the cell still holds the previous lap's record: full */
        } else {
            pos = atomic_load_explicit(&queue->enqueue_pos, memory_order_relaxed); /* we were behind */
        }
    }
    memcpy(cell + CELL_HEADER, record, queue->record_size);
    atomic_store_explicit(cell_sequence(cell), pos + 1, memory_order_release);
    hft_waitpoint_wake_all(&queue->not_empty);
    return HFT_OK;
}

int hft_mpsc_queue_try_push_many(hft_mpsc_queue *queue, const void *records, size_t count)
{
    if (queue == NULL || (records == NULL && count > 0) || count > queue->capacity) {
        return HFT_EINVAL;
    }
    if (count == 0) {
        return HFT_OK;
    }
    uint64_t pos = atomic_load_explicit(&queue->enqueue_pos, memory_order_relaxed);
    for (;;) {
        uint64_t first_sequence = atomic_load_explicit(cell_sequence(cell_at(queue, pos)), memory_order_acquire);
        int64_t lag = (int64_t)(first_sequence - pos);
        if (lag < 0) {
            return HFT_EAGAIN;
        }
        if (lag > 0) {
            pos = atomic_load_explicit(&queue->enqueue_pos, memory_order_relaxed); /* we were behind */
            continue;
        }
        /* The consumer frees cells in position order, so when the last of the run is
         * free for its position every cell before it is too. */
        uint64_t last = pos + count - 1;
        uint64_t last_sequence = atomic_load_explicit(cell_sequence(cell_at(queue, last)), memory_order_acquire);
        if ((int64_t)(last_sequence - last) < 0) {
            return HFT_EAGAIN; /* not room for all of them: push none */
        }
        if (atomic_compare_exchange_weak_explicit(&queue->enqueue_pos, &pos, pos + count, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            break;
        }
    }
    const unsigned char *in = records;
    for (size_t i = 0; i < count; i++) {
        unsigned char *cell = cell_at(queue, pos + i);
        memcpy(cell + CELL_HEADER, in + i * queue->record_size, queue->record_size);
        atomic_store_explicit(cell_sequence(cell), pos + i + 1, memory_order_release);
    }
    hft_waitpoint_wake_all(&queue->not_empty);
    return HFT_OK;
}

int hft_mpsc_queue_pop_many(hft_mpsc_queue *queue, void *records_out, size_t max_records, size_t *popped)
{
    if (queue == NULL || (records_out == NULL && max_records > 0) || popped == NULL) {
        return HFT_EINVAL;
    }
    *popped = 0;
    if (max_records == 0) {
        return HFT_OK;
    }
    uint64_t pos = atomic_load_explicit(&queue->dequeue_pos, memory_order_relaxed);
    unsigned char *out = records_out;
    size_t count = 0;
    while (count < max_records) {
        unsigned char *cell = cell_at(queue, pos + count);
        if (atomic_load_explicit(cell_sequence(cell), memory_order_acquire) != pos + count + 1) {
            break; /* not published yet (empty, or a producer still copying) */
        }
        memcpy(out + count * queue->record_size, cell + CELL_HEADER, queue->record_size);
        atomic_store_explicit(cell_sequence(cell), pos + count + queue->capacity, memory_order_release);
        count++;
    }
    if (count == 0) {
        return HFT_EAGAIN;
    }
    atomic_store_explicit(&queue->dequeue_pos, pos + count, memory_order_release);
    hft_waitpoint_wake_all(&queue->not_full);
    *popped = count;
    return HFT_OK;
}

int hft_mpsc_queue_try_pop(hft_mpsc_queue *queue, void *record_out)
{
    size_t popped;
    if (record_out == NULL) {
        return HFT_EINVAL;
    }
    return hft_mpsc_queue_pop_many(queue, record_out, 1, &popped);
}

/* Waitpoint conditions: acquire loads, as the protocol in wait.c requires. */
static bool queue_not_full_or_closed(const void *ctx)
{
    const hft_mpsc_queue *queue = ctx;
    uint64_t dequeue_pos = atomic_load_explicit(&queue->dequeue_pos, memory_order_acquire);
    uint64_t enqueue_pos = atomic_load_explicit(&queue->enqueue_pos, memory_order_acquire);
    return enqueue_pos - dequeue_pos < queue->capacity || atomic_load_explicit(&queue->closed, memory_order_acquire);
}

bool hft_mpsc_queue_poppable(const void *ctx)
{
    const hft_mpsc_queue *queue = ctx;
    uint64_t pos = atomic_load_explicit(&queue->dequeue_pos, memory_order_relaxed);
    unsigned char *cell = cell_at(queue, pos);
    return atomic_load_explicit(cell_sequence(cell), memory_order_acquire) == pos + 1 ||
           atomic_load_explicit(&queue->closed, memory_order_acquire);
}

/* Called after an attempt said HFT_EAGAIN: park on `wp` until `ready` holds.
 * Returns HFT_OK to try again, or the code the blocking call should return.
 * The deadline is computed on the first miss only, so the fast path never
 * reads the clock. */
static int wait_after_miss(hft_mpsc_queue *queue, hft_waitpoint *wp, hft_wait_ready_fn ready, int64_t timeout_ns,
                           int64_t *deadline_ns)
{
    if (atomic_load_explicit(&queue->closed, memory_order_acquire)) {
        return HFT_EINVAL;
    }
    if (*deadline_ns < 0) {
        *deadline_ns = hft_deadline_from_timeout(timeout_ns);
    }
    return hft_waitpoint_wait(wp, ready, queue, *deadline_ns);
}

int hft_mpsc_queue_push_wait(hft_mpsc_queue *queue, const void *record, int64_t timeout_ns)
{
    int64_t deadline_ns = -1;
    for (;;) {
        int rc = hft_mpsc_queue_try_push(queue, record);
        if (rc != HFT_EAGAIN) {
            return rc;
        }
        rc = wait_after_miss(queue, &queue->not_full, queue_not_full_or_closed, timeout_ns, &deadline_ns);
        if (rc != HFT_OK) {
            return rc;
        }
    }
}

int hft_mpsc_queue_pop_many_wait(hft_mpsc_queue *queue, void *records_out, size_t max_records,
                                 size_t *popped, int64_t timeout_ns)
{
    int64_t deadline_ns = -1;
    for (;;) {
        int rc = hft_mpsc_queue_pop_many(queue, records_out, max_records, popped);
        if (rc != HFT_EAGAIN) {
            return rc;
        }
        rc = wait_after_miss(queue, &queue->not_empty, hft_mpsc_queue_poppable, timeout_ns, &deadline_ns);
        if (rc != HFT_OK) {
            return rc;
        }
    }
}

int hft_mpsc_queue_pop_wait(hft_mpsc_queue *queue, void *record_out, int64_t timeout_ns)
{
    size_t popped;
    if (record_out == NULL) {
        return HFT_EINVAL;
    }
    return hft_mpsc_queue_pop_many_wait(queue, record_out, 1, &popped, timeout_ns);
}

void hft_mpsc_queue_close(hft_mpsc_queue *queue)
{
    if (queue == NULL) {
        return;
    }
    atomic_store_explicit(&queue->closed, true, memory_order_release);
    hft_waitpoint_wake_all(&queue->not_empty);
    hft_waitpoint_wake_all(&queue->not_full);
}

size_t hft_mpsc_queue_size_approx(const hft_mpsc_queue *queue)
{
    /* dequeue_pos first: enqueue_pos only grows and never trails it, so the
     * difference cannot go negative. */
    uint64_t dequeue_pos = atomic_load_explicit(&queue->dequeue_pos, memory_order_acquire);
    uint64_t enqueue_pos = atomic_load_explicit(&queue->enqueue_pos, memory_order_acquire);
    uint64_t size = enqueue_pos - dequeue_pos;
    return (size_t)(size > queue->capacity ? queue->capacity : size);
}

size_t hft_mpsc_queue_capacity(const hft_mpsc_queue *queue) { return (size_t)queue->capacity; }

size_t hft_mpsc_queue_record_size(const hft_mpsc_queue *queue) { return queue->record_size; }

/* --- benchmark ---------------------------------------------------------------- */

/* Records the benchmark can verify: word 0 is (producer << 48 | sequence),
 * word 1 a multiplicative hash of word 0 (so a torn or stale copy is caught),
 * and for records of 24 bytes or more the last word repeats the hash. */
#define BENCH_HASH 0x9E3779B97F4A7C15ull
#define BENCH_SEQ_BITS 48
#define BENCH_MAX_PRODUCERS 64
#define BENCH_BATCH 256
#define BENCH_QUEUE_CAPACITY 16384

typedef struct mpsc_bench {
    hft_mpsc_queue *queue;
    uint64_t n_per_producer;
    unsigned producers;
    size_t record_size;
    _Atomic int gate; /* 0 = hold, 1 = go, -1 = abandon (a thread could not be created) */
    int consumer_rc;
} mpsc_bench;

typedef struct mpsc_bench_producer_arg {
    mpsc_bench *bench;
    uint64_t producer;
} mpsc_bench_producer_arg;

/* Hold every thread until all exist, so thread creation is not timed. Returns false to abandon. */
static bool bench_wait_for_gate(mpsc_bench *bench)
{
    int gate;
    while ((gate = atomic_load_explicit(&bench->gate, memory_order_acquire)) == 0) {
        sched_yield();
    }
    return gate > 0;
}

static void *mpsc_bench_producer(void *arg)
{
    hft_bench_pin_to_cpu_slot(1); /* consumer on one CPU, producers on another */
    const mpsc_bench_producer_arg *self = arg;
    mpsc_bench *bench = self->bench;
    unsigned char record[4096];
    memset(record, 0x5A, bench->record_size);
    if (!bench_wait_for_gate(bench)) {
        return NULL;
    }
    for (uint64_t seq = 0; seq < bench->n_per_producer; seq++) {
        uint64_t tag = self->producer << BENCH_SEQ_BITS | seq;
        uint64_t hash = tag * BENCH_HASH;
        memcpy(record, &tag, 8);
        memcpy(record + 8, &hash, 8);
        memcpy(record + bench->record_size - 8, &hash, 8);
        if (hft_mpsc_queue_push_wait(bench->queue, record, -1) != HFT_OK) {
            break; /* closed by the consumer after a failed check */
        }
    }
    return NULL;
}

static void *mpsc_bench_consumer(void *arg)
{
    hft_bench_pin_to_cpu_slot(0); /* consumer on one CPU, producers on another */
    mpsc_bench *bench = arg;
    unsigned char *batch = malloc(BENCH_BATCH * bench->record_size);
    uint64_t expected[BENCH_MAX_PRODUCERS] = {0};
    bench->consumer_rc = batch == NULL ? HFT_ENOMEM : HFT_OK;
    if (!bench_wait_for_gate(bench)) {
        free(batch);
        return NULL;
    }
    const uint64_t seq_mask = ((uint64_t)1 << BENCH_SEQ_BITS) - 1;
    uint64_t remaining = bench->n_per_producer * bench->producers;
    while (bench->consumer_rc == HFT_OK && remaining > 0) {
        size_t popped = 0;
        int rc = hft_mpsc_queue_pop_many_wait(bench->queue, batch, BENCH_BATCH, &popped, -1);
        if (rc != HFT_OK) {
            bench->consumer_rc = rc;
            break;
        }
        for (size_t i = 0; i < popped; i++) {
            const unsigned char *record = batch + i * bench->record_size;
            uint64_t tag, hash, tail_hash;
            memcpy(&tag, record, 8);
            memcpy(&hash, record + 8, 8);
            memcpy(&tail_hash, record + bench->record_size - 8, 8);
            uint64_t producer = tag >> BENCH_SEQ_BITS;
            if (producer >= bench->producers || (tag & seq_mask) != expected[producer] ||
                hash != tag * BENCH_HASH || tail_hash != hash) {
                bench->consumer_rc = HFT_ERANGE;
                break;
            }
            expected[producer]++;
        }
        remaining -= popped;
    }
    if (bench->consumer_rc != HFT_OK) {
        hft_mpsc_queue_close(bench->queue); /* unblock the producers */
    }
    free(batch);
    return NULL;
}

int hft_mpsc_bench(uint64_t n_records_per_producer, unsigned producers, size_t record_size,
                   double *ops_per_s)
{
    if (ops_per_s == NULL || n_records_per_producer == 0 || n_records_per_producer >> BENCH_SEQ_BITS ||
        producers == 0 || producers > BENCH_MAX_PRODUCERS || record_size < 16 || record_size > 4096) {
        return HFT_EINVAL;
    }
    mpsc_bench bench = {.n_per_producer = n_records_per_producer, .producers = producers, .record_size = record_size};
    atomic_init(&bench.gate, 0);
    int rc = hft_mpsc_queue_create(BENCH_QUEUE_CAPACITY, record_size, &bench.queue);
    if (rc != HFT_OK) {
        return rc;
    }
    pthread_t threads[BENCH_MAX_PRODUCERS + 1];
    mpsc_bench_producer_arg args[BENCH_MAX_PRODUCERS];
    unsigned created = 0;
    if (pthread_create(&threads[created], NULL, mpsc_bench_consumer, &bench) == 0) {
        created++;
        for (unsigned p = 0; p < producers; p++) {
            args[p] = (mpsc_bench_producer_arg){.bench = &bench, .producer = p};
            if (pthread_create(&threads[created], NULL, mpsc_bench_producer, &args[p]) != 0) {
                break;
            }
            created++;
        }
    }
    bool all_created = created == producers + 1;
    int64_t started = hft_wait_now_ns();
    atomic_store_explicit(&bench.gate, all_created ? 1 : -1, memory_order_release);
    for (unsigned t = 0; t < created; t++) {
        pthread_join(threads[t], NULL);
    }
    int64_t elapsed = hft_wait_now_ns() - started;
    if (!all_created) {
        rc = HFT_ENOMEM;
    } else {
        rc = bench.consumer_rc;
        if (rc == HFT_OK) {
            *ops_per_s = (double)(n_records_per_producer * producers) * 1e9 / (double)(elapsed > 0 ? elapsed : 1);
        }
    }
    hft_mpsc_queue_destroy(bench.queue);
    return rc;
}
