/*
 * hft_cpu_keeper.h -- keep a worker thread's CPU out of idle while it is busy, and wake it there.
 *
 * Why: on a VM, a vCPU with nothing to run halts, and the host deschedules it. Whatever
 * must then happen on that CPU waits for the host to run the vCPU again: the disk's
 * completion interrupt at the end of an fdatasync, and the wake-up of a thread parked
 * on a futex (the waker also pays for the inter-processor interrupt). Measured on a
 * 2-vCPU VM with the journal writer alone on its CPU (SubmitOrder at one call in
 * flight): the fsync a call waits for took ~150 us from the hand-off, against ~90 us
 * for fdatasyncs back to back, and the loop's FUTEX_WAKE of the parked writer cost it
 * ~15 us. Bare metal pays the same kind of price for deep C-states.
 *
 * A keeper is a thread under SCHED_IDLE, pinned with its worker, that spins (x86
 * PAUSE) for `spin_ns` after the last sign that work is coming (hft_cpu_keeper_touch),
 * then parks until the next one. SCHED_IDLE means it runs only on CPU time nothing
 * else wants: any other thread that becomes runnable on that CPU preempts it at once,
 * and the scheduler counts the CPU as idle when it places woken threads. While it
 * spins the CPU never halts, so the interrupt and the wake-up are taken at once.
 *
 * It also carries the worker's wake-ups: a worker that would park waits in
 * hft_cpu_keeper_wait instead, on a futex of the keeper's; the keeper, spinning on
 * the same CPU, sees the worker's condition become true and wakes it there (a local
 * wake-up, no inter-processor interrupt). So the producer (the event loop) pushes
 * without any syscall while the keeper spins, unless the keeper is held off its CPU
 * by other threads: then hft_cpu_keeper_kick has the producer wake the worker itself.
 * When the keeper stops spinning it first hands the waiting worker back
 * (hft_cpu_keeper_wait returns false) so that the worker parks on its own waitpoint,
 * where producers wake it as usual.
 *
 * The cost: the CPU shows busy for `spin_ns` after each touch (time nothing else
 * wanted). Use it only for a worker that has a CPU of its own, and never under a
 * CPU quota (spinning would spend the quota).
 *
 * Threads: create and destroy from one controlling thread; wait from the one worker
 * thread; touch and kick from any.
 */
#ifndef HFT_CPU_KEEPER_H
#define HFT_CPU_KEEPER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hft_common.h"

typedef struct hft_cpu_keeper hft_cpu_keeper;

/* The condition a worker waits for; reads shared state with acquire loads. */
typedef bool (*hft_cpu_keeper_ready_fn)(const void *ctx);

/* Start a keeper that spins for `spin_ns` (> 0) after each touch, on `count` CPUs
 * `cpus` (the worker's), for a worker that waits for `ready(ctx)` (called from the
 * keeper's thread while the worker waits; it must stay valid until destroy). HFT_EINVAL for bad arguments, HFT_ENOMEM when memory or
 * the thread cannot be had, the negated errno of pthread_setaffinity_np, or -EPERM
 * when the thread cannot take SCHED_IDLE (a keeper at normal priority would take
 * CPU time from others). The keeper starts parked. */
int hft_cpu_keeper_create(int64_t spin_ns, const int *cpus, size_t count, hft_cpu_keeper_ready_fn ready,
                          const void *ctx, hft_cpu_keeper **out);

/* Stop the keeper (a worker inside hft_cpu_keeper_wait returns false) and free it.
 * The worker must not touch or wait on it afterwards. NULL is a no-op. */
void hft_cpu_keeper_destroy(hft_cpu_keeper *keeper);

/* "Work is coming": spin for the next spin_ns (waking the keeper if parked). Any thread.
 * A worker waiting on a spinning keeper is also woken at once, ahead of the work, and polls
 * its condition itself for up to 200 us before it waits again: when the work comes it is
 * already running (a futex wake-up and the switch from the keeper cost ~10 us on the 2-vCPU
 * VM, on the path of the one order a client waits for). */
void hft_cpu_keeper_touch(hft_cpu_keeper *keeper);

/* hft_cpu_keeper_touch with no work coming: keep the CPU awake, leave a waiting worker waiting
 * (a caller whose CPU needs the same state as a worker's user's, with nothing for the worker). */
void hft_cpu_keeper_touch_cpu_only(hft_cpu_keeper *keeper);

/* Worker: block until ready(ctx) holds, woken by the spinning keeper, and return true;
 * or return false at once, or as soon as the keeper stops spinning, for the worker to
 * wait its own way (ready may be true by then: the caller re-checks). */
bool hft_cpu_keeper_wait(hft_cpu_keeper *keeper);

/* Producer, right after making the worker's condition true: if the worker waits on the
 * keeper and the keeper has not been on its CPU for `stale_ns` (other threads hold it off:
 * it runs under SCHED_IDLE), wake the worker here instead (one FUTEX_WAKE, as without a
 * keeper). Otherwise one atomic load and a clock read. Any thread. */
void hft_cpu_keeper_kick(hft_cpu_keeper *keeper, int64_t stale_ns);

typedef struct hft_cpu_keeper_stats {
    uint64_t wakes;    /* times the keeper woke the worker (its condition held) */
    uint64_t parks;    /* times the keeper stopped spinning and parked */
    uint64_t kicks;    /* times a producer woke the worker because the keeper was held off */
    uint64_t prewakes; /* times the keeper woke the worker on a touch, ahead of its work */
} hft_cpu_keeper_stats;

void hft_cpu_keeper_stats_get(const hft_cpu_keeper *keeper, hft_cpu_keeper_stats *out);

#endif /* HFT_CPU_KEEPER_H */
