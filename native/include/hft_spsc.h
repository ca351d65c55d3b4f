/*
 * hft_spsc.h -- bounded single-producer single-consumer ring of fixed-size
 * records.
 *
 * Records are `record_size` bytes, copied in and out (the ring never keeps a
 * caller's pointer). The capacity is rounded up to a power of two so a slot
 * index is a mask, not a division. Producer and consumer indices live on
 * separate cache lines and each side caches the other's index, so in steady
 * state a push or pop touches only its own line plus the slot.
 *
 * Concurrency contract: exactly one producer thread calls the *push* functions
 * and exactly one consumer thread calls the *pop* functions (they may be the
 * same thread). size_approx, capacity, record_size and close may be called
 * from any thread. create/destroy are not concurrent with anything.
 *
 * Blocking calls take `timeout_ns`: 0 = do not wait, negative = wait forever,
 * otherwise the longest wait in nanoseconds. A waiting thread spins briefly and
 * then parks on a futex (hft_wait.h); it does not burn a core while idle.
 */
#ifndef HFT_SPSC_H
#define HFT_SPSC_H

#include "hft_common.h"

typedef struct hft_spsc_ring hft_spsc_ring;

/* Create a ring holding at least `capacity` records of `record_size` bytes.
 * Returns HFT_OK and sets *out, HFT_EINVAL (NULL out, zero capacity or record
 * size, or sizes that overflow), or HFT_ENOMEM. */
int hft_spsc_ring_create(size_t capacity, size_t record_size, hft_spsc_ring **out);

/* Free the ring and any records still in it. NULL is a no-op. No thread may be
 * inside another call on this ring. */
void hft_spsc_ring_destroy(hft_spsc_ring *ring);

/* Producer only. Copy one record in. HFT_EAGAIN when full, HFT_EINVAL on NULL. */
int hft_spsc_ring_try_push(hft_spsc_ring *ring, const void *record);

/* Producer only. Copy up to `n` consecutive records in, as many as fit; sets
 * *pushed. HFT_EAGAIN (and *pushed = 0) when full and n > 0. */
int hft_spsc_ring_push_many(hft_spsc_ring *ring, const void *records, size_t n, size_t *pushed);

/* Producer only. Like try_push, but waits up to `timeout_ns` for a free slot.
 * HFT_ETIMEDOUT when it expires; HFT_EINVAL if the ring is closed while full. */
int hft_spsc_ring_push_wait(hft_spsc_ring *ring, const void *record, int64_t timeout_ns);

/* Consumer only. Copy the oldest record out. HFT_EAGAIN when empty. */
int hft_spsc_ring_try_pop(hft_spsc_ring *ring, void *record_out);

/* Consumer only. Copy out up to `max_records` of the oldest records (everything
 * available, if it fits) into `records_out`, contiguously; sets *popped.
 * HFT_EAGAIN (and *popped = 0) when empty and max_records > 0. */
int hft_spsc_ring_pop_many(hft_spsc_ring *ring, void *records_out, size_t max_records, size_t *popped);

/* Consumer only. Like try_pop, but waits up to `timeout_ns` for a record.
 * HFT_ETIMEDOUT when it expires; HFT_EINVAL if the ring is closed while empty. */
int hft_spsc_ring_pop_wait(hft_spsc_ring *ring, void *record_out, int64_t timeout_ns);

/* Consumer only. Wait up to `timeout_ns` until at least one record is there,
 * then take up to `max_records` like pop_many (a group-commit writer's call).
 * HFT_ETIMEDOUT (*popped = 0) when it expires; HFT_EINVAL if closed while empty. */
int hft_spsc_ring_pop_many_wait(hft_spsc_ring *ring, void *records_out, size_t max_records, size_t *popped,
                                int64_t timeout_ns);

/* Any thread. Stop all waiting: threads parked in a *_wait call wake up, and
 * from now on a wait that cannot complete at once returns HFT_EINVAL instead
 * of blocking. Non-blocking calls and records already queued are unaffected,
 * so a consumer can still drain the ring. Idempotent. */
void hft_spsc_ring_close(hft_spsc_ring *ring);

/* Any thread. Records in the ring; exact only when neither side is active. */
size_t hft_spsc_ring_size_approx(const hft_spsc_ring *ring);

/* Any thread. The rounded-up capacity, and the record size. */
size_t hft_spsc_ring_capacity(const hft_spsc_ring *ring);
size_t hft_spsc_ring_record_size(const hft_spsc_ring *ring);

/* Throughput benchmark: one producer thread pushes `n_records` sequenced
 * records (push_wait), one consumer thread takes them in batches
 * (pop_many_wait) and checks every record's sequence number and content.
 * Sets *ops_per_s to records per second of wall time (CLOCK_MONOTONIC).
 * `record_size` must be 16..4096. Returns HFT_EINVAL on bad arguments,
 * HFT_ENOMEM when the ring or a thread cannot be created, HFT_ERANGE if a
 * record arrived out of order or damaged (a bug in the ring). */
int hft_spsc_bench(uint64_t n_records, size_t record_size, double *ops_per_s);

#endif /* HFT_SPSC_H */
