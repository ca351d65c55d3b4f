/* wait.c -- see hft_wait.h.
 *
 * Why no wake-up is lost. The steps, on each side (`word` is the futex word,
 * SLEEPER its bit 0):
 *
 *   waiter                                       waker
 *   W1 key = (word |= SLEEPER)  (seq_cst RMW)    S1 publish the state  (release store)
 *   B  full barrier on every thread              S2 w = word           (plain load)
 *      (membarrier PRIVATE_EXPEDITED)            S3 if w has SLEEPER: CAS it to
 *   W3 ready()?                 (acquire loads)     (w & ~SLEEPER) + 2, and the
 *   W4 FUTEX_WAIT(word, key)                        CAS winner does FUTEX_WAKE(all)
 *
 * This is Dekker's handshake: each side writes its own flag and then reads the
 * other's, and it only works if neither read can be satisfied before the
 * writer's own store is visible. A fence on the waker's side would cost every
 * push (an x86 MFENCE or XCHG waits for the store buffer to drain, which on
 * a ring means waiting for the cache lines the other core is reading: ten
 * times slower than the rest of a push). So the waiter pays instead:
 * membarrier(2) returns only after every running thread of the process has
 * executed a full memory barrier (by IPI) or been descheduled (a context
 * switch is one). That barrier point splits the waker's program in two:
 *   - S2 ran before it: then so did S1, program-order earlier, and the barrier
 *     drained it to memory before B returned, so W3 reads the new state and
 *     the waiter does not sleep;
 *   - S2 ran after it: W1 was complete before B started (a locked RMW is
 *     globally visible when it retires), so S2 reads W1's value or a later
 *     one. Only a waker's CAS ever clears SLEEPER, and every successful CAS is
 *     followed by FUTEX_WAKE. So either S2 sees SLEEPER and this waker (or a
 *     concurrent one that wins the CAS) clears it, or S2 sees it already
 *     cleared after W1 by another waker. Either way the word changes after W1
 *     and a FUTEX_WAKE follows the change.
 * The kernel compares the word with `key` under its futex-bucket lock, so
 * FUTEX_WAIT either sees the change and returns at once, or is queued before
 * the FUTEX_WAKE and is woken. The waiter then re-checks ready() and, if it
 * must wait again, announces again. The waker's atomic_signal_fence only stops
 * the compiler from reordering S2 above S1; the hardware reordering is what B
 * covers.
 *
 * A waiter that finds ready() true at W3 leaves SLEEPER set (another waiter may
 * be asleep behind it), which costs the next waker one needless FUTEX_WAKE.
 *
 * Without membarrier (old kernel, seccomp) there is no B and the waker reads
 * the word with a seq_cst read-modify-write instead of S2's plain load. Two
 * RMWs on one word are totally ordered: if the waker's comes after W1 it
 * sees SLEEPER; if before, W1 reads from it, acquiring S1, and W3 sees the
 * new state. (A fence pair would do as well, but ThreadSanitizer does not
 * model fences and the C tests run under it.)
 *
 * The epoch is 31 bits and wraps; a waiter would have to miss exactly 2^31
 * wakes between W1 and W4 to be fooled, which cannot happen in practice.
 */
#include "hft_wait.h"

#include <limits.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Rounds of ready()+PAUSE before parking: a few microseconds, about the cost of
 * a futex sleep/wake round trip, so a peer that is about to act is not paid for
 * with two syscalls, while a genuinely idle thread gives its core back quickly. */
#define HFT_WAIT_SPIN_ROUNDS 256 /* pauses spent spinning before a waiter parks */
#define HFT_WAIT_MAX_PAUSES_BETWEEN_CHECKS 16

#define NS_PER_S 1000000000LL

static pthread_once_t membarrier_once = PTHREAD_ONCE_INIT;
static bool membarrier_registered; /* written once under membarrier_once */

static void register_membarrier(void)
{
    membarrier_registered = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

void hft_waitpoint_init(hft_waitpoint *wp)
{
    pthread_once(&membarrier_once, register_membarrier);
    atomic_init(&wp->word, 0);
    wp->waiters_use_membarrier = membarrier_registered;
}

/* Step B: make every thread of the process execute a full barrier. */
static void barrier_on_every_thread(const hft_waitpoint *wp)
{
    if (!wp->waiters_use_membarrier) {
        return; /* the wakers' read-modify-write does the ordering instead */
    }
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0) {
        return;
    }
    /* Registration is per address space; a child created by fork(2) may need
     * its own. Wakers of this waitpoint skip their fence, so continuing
     * without the barrier could lose a wake-up: give up loudly instead. */
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0 ||
        syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) {
        abort();
    }
}

int64_t hft_wait_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

int64_t hft_deadline_from_timeout(int64_t timeout_ns)
{
    if (timeout_ns < 0) {
        return HFT_DEADLINE_NEVER;
    }
    if (timeout_ns == 0) {
        return 0;
    }
    int64_t now = hft_wait_now_ns();
    return timeout_ns > HFT_DEADLINE_NEVER - now ? HFT_DEADLINE_NEVER : now + timeout_ns;
}

static bool deadline_passed(int64_t deadline_ns)
{
    return deadline_ns != HFT_DEADLINE_NEVER && hft_wait_now_ns() >= deadline_ns;
}

/* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so spurious
 * wake-ups and retries never stretch the caller's timeout. */
static void futex_wait_until(_Atomic uint32_t *word, uint32_t expected, int64_t deadline_ns)
{
    struct timespec abs_deadline;
    struct timespec *timeout = NULL;
    if (deadline_ns != HFT_DEADLINE_NEVER) {
        abs_deadline.tv_sec = (time_t)(deadline_ns / NS_PER_S);
        abs_deadline.tv_nsec = (long)(deadline_ns % NS_PER_S);
        timeout = &abs_deadline;
    }
    /* EAGAIN (word changed), EINTR and ETIMEDOUT all mean "go and re-check",
     * which the caller's loop does; there is nothing else to handle. */
    (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET_PRIVATE, expected, timeout, NULL,
                  FUTEX_BITSET_MATCH_ANY);
}

int hft_waitpoint_wait(hft_waitpoint *wp, hft_wait_ready_fn ready, const void *ctx, int64_t deadline_ns)
{
    if (ready(ctx)) {
        return HFT_OK;
    }
    if (deadline_ns == 0) {
        return HFT_ETIMEDOUT;
    }
    /* Back off between checks (1, 2, 4 ... 16 pauses): each check reads a line the
     * other core is writing, and polling it every pause steals that line on every
     * record (measured: 16-byte SPSC records went from ~16 to ~21 M/s cross-core).
     * The cap bounds the extra wake-up delay to 16 pauses, well under 2 us. */
    for (int spent = 0, pauses = 1; spent < HFT_WAIT_SPIN_ROUNDS; spent += pauses) {
        for (int i = 0; i < pauses; i++) {
            hft_cpu_relax();
        }
        if (ready(ctx)) {
            return HFT_OK;
        }
        if (pauses < HFT_WAIT_MAX_PAUSES_BETWEEN_CHECKS) {
            pauses <<= 1;
        }
    }
    for (;;) {
        uint32_t key = atomic_fetch_or_explicit(&wp->word, HFT_WAIT_SLEEPER, memory_order_seq_cst) |
                       HFT_WAIT_SLEEPER;        /* W1 */
        barrier_on_every_thread(wp);            /* B */
        if (ready(ctx)) {                       /* W3 */
            return HFT_OK;
        }
        if (deadline_passed(deadline_ns)) {
            return HFT_ETIMEDOUT;
        }
        futex_wait_until(&wp->word, key, deadline_ns); /* W4 */
        if (ready(ctx)) {
            return HFT_OK;
        }
        if (deadline_passed(deadline_ns)) {
            return HFT_ETIMEDOUT; /* before announcing again, so no waker pays for us */
        }
    }
}

void hft_waitpoint_wake_waiters(hft_waitpoint *wp)
{
    uint32_t word = atomic_load_explicit(&wp->word, memory_order_relaxed);
    while (word & HFT_WAIT_SLEEPER) { /* S3 */
        if (atomic_compare_exchange_weak_explicit(&wp->word, &word, (word & ~HFT_WAIT_SLEEPER) + 2,
                                                  memory_order_seq_cst, memory_order_relaxed)) {
            (void)syscall(SYS_futex, (uint32_t *)&wp->word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
            return;
        }
    }
}
