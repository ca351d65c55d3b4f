/* cpu_keeper.c -- see hft_cpu_keeper.h.
 *
 * Two handshakes, each Dekker's (each side stores its own flag with seq_cst, then
 * loads the other's), so that neither a wake-up nor a hand-back is lost:
 *
 *   worker waits                      keeper
 *   v = worker_word                   (spinning) if waiting && ready():
 *   waiting = 1                           if xchg(waiting, 0): worker_word++, FUTEX_WAKE
 *   ready()?        -> true           (stops)   spinning = 0
 *   spinning?  no   -> false                    if xchg(waiting, 0): worker_word++, FUTEX_WAKE
 *   FUTEX_WAIT(worker_word, v)
 *
 * A bump of worker_word after the worker read v makes its FUTEX_WAIT return at once;
 * a keeper that stops after the worker saw it spinning finds `waiting` set and bumps.
 *
 * The keeper parks on a waitpoint (hft_wait.h) until a touch opens a window (or it stops): a
 * touch is a store of spin_until then hft_waitpoint_wake_all, one load when the keeper spins.
 *
 * The keeper runs under SCHED_IDLE, so any other thread on its CPU holds it off; a worker
 * whose wake-up depended on it alone would wait as long (a priority inversion). Two things
 * bound that: the producer kicks after making the condition true (hft_cpu_keeper_kick: it
 * wakes the worker itself when the keeper has not checked in for a while), and the worker's
 * futex wait times out after WORKER_BACKSTOP_NS for the rare kick that finds the keeper
 * fresh just before it is preempted.
 */
#include "hft_cpu_keeper.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hft_wait.h"

/* PAUSEs between two checks while spinning: bounds the wake-up delay to well under a
 * microsecond and keeps the keeper off the cache lines the worker's producers write. */
#define KEEPER_PAUSES_PER_CHECK 16

struct hft_cpu_keeper {
    int64_t spin_ns;
    hft_cpu_keeper_ready_fn ready;
    const void *ctx;
    pthread_t thread;

    _Atomic int64_t spin_until_ns; /* written by touch */
    _Atomic int64_t alive_ns;      /* the clock at the spinning keeper's latest check */
    _Atomic uint32_t worker_word;  /* the worker's futex */
    _Atomic int waiting;           /* the worker is in hft_cpu_keeper_wait */
    _Atomic int spinning;          /* the keeper spins and will wake the worker */
    hft_waitpoint park;            /* where the keeper waits for a window (or the stop) */
    _Atomic int stopping;
    _Atomic uint64_t touches;      /* counts hft_cpu_keeper_touch: a new one pre-wakes the worker */
    _Atomic uint64_t wakes;
    _Atomic uint64_t parks;
    _Atomic uint64_t kicks;
    _Atomic uint64_t prewakes;
};

/* A waiting worker re-checks its condition itself this often, whatever the keeper does. */
#define WORKER_BACKSTOP_NS 1000000L

/* How long a worker woken ahead of its work (a touch: work is coming) polls its condition
 * itself before it waits on the futex again. A touch comes before the work it announces (a
 * lone order's admission, ~50 us on the 2-vCPU VM); a worker already running when the work
 * comes takes it at once, where a futex wake-up and the switch from the keeper to the worker
 * took ~10 us there. Bounded: when no work follows (a refused order) the worker spins this
 * long at its own priority, on its own CPU, for nothing. */
#define WORKER_PREWAKE_SPIN_NS 200000L

static void futex_wait(_Atomic uint32_t *word, uint32_t expected, const struct timespec *timeout) {
    /* EAGAIN (changed), EINTR, ETIMEDOUT: the callers re-check their state and come back. */
    (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, expected, timeout, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word) {
    (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* The keeper's side of the first handshake: release a waiting worker. */
static void release_worker(hft_cpu_keeper *k) {
    if (atomic_exchange(&k->waiting, 0)) {
        atomic_fetch_add(&k->worker_word, 1);
        futex_wake(&k->worker_word);
    }
}

static bool window_open(hft_cpu_keeper *k) {
    int64_t now = hft_wait_now_ns();
    atomic_store_explicit(&k->alive_ns, now, memory_order_relaxed);
    return now < atomic_load(&k->spin_until_ns);
}

/* The keeper's park condition: a window is open, or it must stop (acquire loads: hft_wait.h). */
static bool keeper_has_work(const void *ctx) {
    const hft_cpu_keeper *k = ctx;
    return atomic_load_explicit(&k->stopping, memory_order_acquire) ||
           hft_wait_now_ns() < atomic_load_explicit(&k->spin_until_ns, memory_order_acquire);
}

static void *keeper_main(void *argument) {
    hft_cpu_keeper *k = argument;
    uint64_t seen_touches = 0;
    while (!atomic_load_explicit(&k->stopping, memory_order_acquire)) {
        if (window_open(k)) {
            if (!atomic_load_explicit(&k->spinning, memory_order_relaxed)) atomic_store(&k->spinning, 1);
            uint64_t touches = atomic_load_explicit(&k->touches, memory_order_relaxed);
            if (atomic_load(&k->waiting)) {
                if (k->ready(k->ctx)) {
                    release_worker(k);
                    atomic_fetch_add_explicit(&k->wakes, 1, memory_order_relaxed);
                } else if (touches != seen_touches) {
                    /* Work was announced: have the worker running when it comes. */
                    release_worker(k);
                    atomic_fetch_add_explicit(&k->prewakes, 1, memory_order_relaxed);
                }
            }
            seen_touches = touches;
            for (int i = 0; i < KEEPER_PAUSES_PER_CHECK; i++) hft_cpu_relax();
            continue;
        }
        atomic_store(&k->spinning, 0);
        release_worker(k);
        atomic_fetch_add_explicit(&k->parks, 1, memory_order_relaxed);
        hft_waitpoint_wait(&k->park, keeper_has_work, k, HFT_DEADLINE_NEVER);
    }
    atomic_store(&k->spinning, 0);
    release_worker(k);
    return NULL;
}

int hft_cpu_keeper_create(int64_t spin_ns, const int *cpus, size_t count, hft_cpu_keeper_ready_fn ready,
                          const void *ctx, hft_cpu_keeper **out) {
    if (spin_ns <= 0 || !cpus || count == 0 || !ready || !out) return HFT_EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    for (size_t i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) return HFT_EINVAL;
        CPU_SET(cpus[i], &set);
    }
    hft_cpu_keeper *k = calloc(1, sizeof *k);
    if (!k) return HFT_ENOMEM;
    k->spin_ns = spin_ns;
    k->ready = ready;
    k->ctx = ctx;
    hft_waitpoint_init(&k->park);
    pthread_attr_t attr;
    if (pthread_attr_init(&attr)) {
        free(k);
        return HFT_ENOMEM;
    }
    int rc = pthread_attr_setaffinity_np(&attr, sizeof set, &set);
    if (!rc) rc = pthread_create(&k->thread, &attr, keeper_main, k);
    pthread_attr_destroy(&attr);
    if (rc) {
        free(k);
        return rc == EAGAIN || rc == ENOMEM ? HFT_ENOMEM : -rc;
    }
    /* A new keeper parks before it spins (no touch yet), so it never spins at normal priority.
     * (glibc's thread attributes take no SCHED_IDLE: set it on the running thread.) */
    struct sched_param param = {.sched_priority = 0};
    rc = pthread_setschedparam(k->thread, SCHED_IDLE, &param);
    if (rc) {
        hft_cpu_keeper_destroy(k);
        return -rc;
    }
    pthread_setname_np(k->thread, "hft-keeper");
    *out = k;
    return HFT_OK;
}

void hft_cpu_keeper_destroy(hft_cpu_keeper *k) {
    if (!k) return;
    atomic_store_explicit(&k->stopping, 1, memory_order_release);
    hft_waitpoint_wake_all(&k->park);
    pthread_join(k->thread, NULL);
    free(k);
}

void hft_cpu_keeper_touch_cpu_only(hft_cpu_keeper *k) {
    atomic_store_explicit(&k->spin_until_ns, hft_wait_now_ns() + k->spin_ns, memory_order_release);
    hft_waitpoint_wake_all(&k->park);
}

void hft_cpu_keeper_touch(hft_cpu_keeper *k) {
    atomic_fetch_add_explicit(&k->touches, 1, memory_order_relaxed);
    hft_cpu_keeper_touch_cpu_only(k);
}

bool hft_cpu_keeper_wait(hft_cpu_keeper *k) {
    for (;;) {
        uint32_t word = atomic_load(&k->worker_word);
        atomic_store(&k->waiting, 1);
        if (k->ready(k->ctx)) break;
        if (!atomic_load(&k->spinning)) {
            atomic_store(&k->waiting, 0);
            return false;
        }
        struct timespec backstop = {0, WORKER_BACKSTOP_NS};
        futex_wait(&k->worker_word, word, &backstop);
        if (k->ready(k->ctx)) break;
        /* Woken ahead of the work (a prewake), or spuriously: poll a while before waiting again.
         * `waiting` is 0 meanwhile (the keeper's release cleared it): no futex wake-ups. */
        int64_t until = hft_wait_now_ns() + WORKER_PREWAKE_SPIN_NS;
        bool ready = false;
        while (!(ready = k->ready(k->ctx)) && atomic_load_explicit(&k->spinning, memory_order_relaxed) &&
               hft_wait_now_ns() < until)
            for (int i = 0; i < KEEPER_PAUSES_PER_CHECK; i++) hft_cpu_relax();
        if (ready) break;
    }
    atomic_store(&k->waiting, 0);
    return true;
}

void hft_cpu_keeper_kick(hft_cpu_keeper *k, int64_t stale_ns) {
    if (!atomic_load(&k->waiting)) return;
    if (hft_wait_now_ns() - atomic_load_explicit(&k->alive_ns, memory_order_relaxed) > stale_ns) {
        release_worker(k);
        atomic_fetch_add_explicit(&k->kicks, 1, memory_order_relaxed);
    }
}

void hft_cpu_keeper_stats_get(const hft_cpu_keeper *k, hft_cpu_keeper_stats *out) {
    out->wakes = atomic_load_explicit(&k->wakes, memory_order_relaxed);
    out->parks = atomic_load_explicit(&k->parks, memory_order_relaxed);
    out->kicks = atomic_load_explicit(&k->kicks, memory_order_relaxed);
    out->prewakes = atomic_load_explicit(&k->prewakes, memory_order_relaxed);
}
