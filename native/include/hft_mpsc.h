/*
 * hft_mpsc.h -- bounded multi-producer single-consumer queue of fixed-size
 * records (Dmitry Vyukov's bounded queue: one sequence number per slot).
 *
 * Each slot carries a sequence number that says whose turn it is: a producer
 * claims a slot by advancing the shared enqueue position with one CAS, copies
 * its record in and publishes it by bumping the slot's sequence; the consumer
 * reads slots in order and hands each back to the producers of the next lap.
 * Producers never wait on each other except to win the CAS, but a producer
 * preempted between claiming and publishing holds up the consumer (records
 * come out in claim order). The capacity is rounded up to a power of two, at
 * least 2.
 *
 * Concurrency contract: any number of threads may call the *push* functions
 * at once; exactly one consumer thread calls the *pop* functions. size_approx,
 * capacity, record_size and close may be called from any thread.
 * create/destroy are not concurrent with anything. Records from one producer
 * come out in the order that producer pushed them.
 *
 * Blocking calls take `timeout_ns`: 0 = do not wait, negative = wait forever,
 * otherwise the longest wait in nanoseconds (spin briefly, then park on a
 * futex; see hft_wait.h).
 */
#ifndef HFT_MPSC_H
#define HFT_MPSC_H

#include <stdbool.h>

#include "hft_common.h"

typedef struct hft_mpsc_queue hft_mpsc_queue;

/* Create a queue holding at least `capacity` records of `record_size` bytes.
 * Returns HFT_OK and sets *out, HFT_EINVAL (NULL out, zero capacity or record
 * size, or sizes that overflow), or HFT_ENOMEM. */
int hft_mpsc_queue_create(size_t capacity, size_t record_size, hft_mpsc_queue **out);

/* Free the queue and any records still in it. NULL is a no-op. No thread may be
 * inside another call on this queue. */
void hft_mpsc_queue_destroy(hft_mpsc_queue *queue);

/* Any producer. Copy one record in. HFT_EAGAIN when full, HFT_EINVAL on NULL. */
int hft_mpsc_queue_try_push(hft_mpsc_queue *queue, const void *record);

/* Any producer. Copy `count` records (contiguous in `records`) in as one run of
 * consecutive positions, or none of them: HFT_EAGAIN when there is not room for
 * all now. A consumer sees them back to back, with no other producer's record
 * in between (a record too large for one slot can be split over several).
 * HFT_EINVAL on NULL or when count exceeds the capacity (it could never fit). */
int hft_mpsc_queue_try_push_many(hft_mpsc_queue *queue, const void *records, size_t count);

/* Any producer. Like try_push, but waits up to `timeout_ns` for a free slot.
 * HFT_ETIMEDOUT when it expires; HFT_EINVAL if the queue is closed while full. */
int hft_mpsc_queue_push_wait(hft_mpsc_queue *queue, const void *record, int64_t timeout_ns);

/* Consumer only. Copy the oldest record out. HFT_EAGAIN when empty (or when
 * the oldest slot is claimed by a producer that has not finished copying). */
int hft_mpsc_queue_try_pop(hft_mpsc_queue *queue, void *record_out);

/* Consumer only. Copy out up to `max_records` of the oldest published records
 * into `records_out`, contiguously; sets *popped. HFT_EAGAIN (and *popped = 0)
 * when none is ready and max_records > 0. */
int hft_mpsc_queue_pop_many(hft_mpsc_queue *queue, void *records_out, size_t max_records, size_t *popped);

/* Consumer only. Like try_pop, but waits up to `timeout_ns` for a record.
 * HFT_ETIMEDOUT when it expires; HFT_EINVAL if the queue is closed while empty. */
int hft_mpsc_queue_pop_wait(hft_mpsc_queue *queue, void *record_out, int64_t timeout_ns);

/* Consumer only. Wait up to `timeout_ns` until at least one record is ready,
 * then take up to `max_records` like pop_many (a group-commit writer's call).
 * HFT_ETIMEDOUT (*popped = 0) when it expires; HFT_EINVAL if closed while empty. */
int hft_mpsc_queue_pop_many_wait(hft_mpsc_queue *queue, void *records_out, size_t max_records,
                                 size_t *popped, int64_t timeout_ns);

/* Any thread. Stop all waiting: threads parked in a *_wait call wake up, and
 * from now on a wait that cannot complete at once returns HFT_EINVAL instead
 * of blocking. Non-blocking calls and records already queued are unaffected,
 * so the consumer can still drain the queue. Idempotent. */
void hft_mpsc_queue_close(hft_mpsc_queue *queue);

/* Any thread. Records claimed and not yet popped (including ones a producer
 * is still copying); exact only when no thread is active. */
size_t hft_mpsc_queue_size_approx(const hft_mpsc_queue *queue);

/* Whether a pop would find a record or the queue is closed (`queue` is an
 * hft_mpsc_queue *; the signature fits a wait condition). For the consumer
 * thread: acquire loads only, no write. */
bool hft_mpsc_queue_poppable(const void *queue);

/* Any thread. The rounded-up capacity, and the record size. */
size_t hft_mpsc_queue_capacity(const hft_mpsc_queue *queue);
size_t hft_mpsc_queue_record_size(const hft_mpsc_queue *queue);

/* Throughput benchmark: `producers` threads (1..64) each push
 * `n_records_per_producer` sequenced records (push_wait), one consumer thread
 * takes them in batches (pop_many_wait) and checks every record's producer id,
 * per-producer sequence number and content. Sets *ops_per_s to records per
 * second of wall time (CLOCK_MONOTONIC). `record_size` must be 16..4096.
 * Returns HFT_EINVAL on bad arguments, HFT_ENOMEM when the queue or a thread
 * cannot be created, HFT_ERANGE if a record arrived out of order or damaged. */
int hft_mpsc_bench(uint64_t n_records_per_producer, unsigned producers, size_t record_size,
                   double *ops_per_s);

#endif /* HFT_MPSC_H */
