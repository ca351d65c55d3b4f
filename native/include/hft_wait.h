/*
 * hft_wait.h -- park a thread until a condition holds, without burning a core
 * and without a syscall on the waker's fast path.
 *
 * A waitpoint is an eventcount: a waiter spins briefly, then announces itself,
 * re-checks its condition and sleeps on a Linux futex; a waker that has just
 * made the condition true issues FUTEX_WAKE only if a waiter is announced, so
 * the common case (nobody waiting) costs the waker one load.
 *
 * The contract that makes this free of lost wake-ups (argued in wait.c):
 *   - the waker makes the condition true with a release (or stronger) store
 *     and only then calls hft_waitpoint_wake_all();
 *   - the waiter's `ready` callback reads that state with acquire loads.
 * The waker needs no atomic read-modify-write and no fence instruction: the
 * store-load ordering the handshake needs is paid by the waiter, which is
 * about to sleep anyway, through membarrier(2) (see wait.c). Where membarrier
 * is unavailable the waker falls back to an atomic read-modify-write.
 *
 * Used by the SPSC ring and the MPSC queue (one waitpoint for "not empty",
 * one for "not full"). Waitpoints live in process-private memory (the futex is
 * FUTEX_PRIVATE), Linux only.
 */
#ifndef HFT_WAIT_H
#define HFT_WAIT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "hft_common.h"

/* Bit 0 of hft_waitpoint.word. */
#define HFT_WAIT_SLEEPER 1u

/* A deadline that never expires. */
#define HFT_DEADLINE_NEVER INT64_MAX

typedef struct hft_waitpoint {
    /* The futex word. Bit 0 (HFT_WAIT_SLEEPER) says "a waiter may be asleep";
     * waiters set it, and the first waker to find it set clears it and adds 2
     * (the wake epoch in bits 1-31) in one CAS, then issues FUTEX_WAKE. So a
     * sleeper costs its wakers one syscall, not one per publish while it
     * takes its time waking up, and a waiter that read the word before
     * sleeping is either refused by the kernel or woken. */
    _Atomic uint32_t word;
    /* Chosen at init: true when waiters issue membarrier(2), so wakers need
     * only a plain load; false when wakers must read the word with an RMW. */
    bool waiters_use_membarrier;
} hft_waitpoint;

/* The condition a waiter waits for; must read shared state with acquire loads. */
typedef bool (*hft_wait_ready_fn)(const void *ctx);

/* Zero the waitpoint and pick its barrier mode (registering the process for
 * membarrier once). Not thread-safe for one waitpoint: call before sharing it. */
void hft_waitpoint_init(hft_waitpoint *wp);

/* CLOCK_MONOTONIC now, in nanoseconds. */
int64_t hft_wait_now_ns(void);

/* Turn a relative timeout into an absolute CLOCK_MONOTONIC deadline:
 * negative -> HFT_DEADLINE_NEVER, 0 -> already expired (0), else now + timeout. */
int64_t hft_deadline_from_timeout(int64_t timeout_ns);

/* Block until ready(ctx) returns true or `deadline_ns` (absolute, CLOCK_MONOTONIC)
 * passes. Returns HFT_OK when ready, HFT_ETIMEDOUT when the deadline passed first
 * (a deadline already in the past checks ready() once and never sleeps).
 * Thread-safe: any number of threads may wait on one waitpoint. Readiness is
 * a hint for the caller's retry loop: another thread may consume the state
 * between this return and the caller's next attempt. */
int hft_waitpoint_wait(hft_waitpoint *wp, hft_wait_ready_fn ready, const void *ctx, int64_t deadline_ns);

/* The part of hft_waitpoint_wake_all that runs only when someone waits. */
void hft_waitpoint_wake_waiters(hft_waitpoint *wp);

/* Wake every thread parked on `wp`. Call right after the release store that
 * may have made some waiter's condition true. Thread-safe; inline because it
 * is on every push and pop: with nobody waiting it costs one load, no atomic
 * read-modify-write and no syscall. */
static inline void hft_waitpoint_wake_all(hft_waitpoint *wp)
{
    uint32_t word;
    if (wp->waiters_use_membarrier) {
        atomic_signal_fence(memory_order_seq_cst); /* keep the compiler from hoisting the load */
        word = atomic_load_explicit(&wp->word, memory_order_relaxed);
    } else {
        /* A read-modify-write reads the newest value of the word and orders
         * like a full fence; the price of having no membarrier. */
        word = atomic_fetch_or_explicit(&wp->word, 0, memory_order_seq_cst);
    }
    if (word & HFT_WAIT_SLEEPER) {
        hft_waitpoint_wake_waiters(wp);
    }
}

/* One CPU relax hint (x86 PAUSE, ARM YIELD) for spin loops. */
static inline void hft_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

#endif /* HFT_WAIT_H */
