/*
 * clock.c -- see hft_clock.h for the source choice and calibration.
 */
#include "hft_clock.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#define HFT_CLOCK_HAVE_TSC 1
#include <cpuid.h>
#include <x86intrin.h>
#else
#define HFT_CLOCK_HAVE_TSC 0
#endif

/* How long calibration watches the TSC against CLOCK_MONOTONIC, and how many
 * bracketed reads each end of that window takes to find an undisturbed one. */
#define CALIBRATION_WINDOW_NS 20000000ull
#define CALIBRATION_TRIES 16

/* Rates outside this band mean the TSC or the calibration is broken. */
#define TSC_MIN_HZ 1.0e8
#define TSC_MAX_HZ 1.0e11

/* Fixed-point scale of ns_per_cycle: ns = (cycles * ns_per_cycle_q32) >> 32. */
#define NS_PER_CYCLE_SHIFT 32

/* Written once inside init_once, then read-only. `ready` is stored with
 * release after everything else, so a reader that sees it set (acquire) sees
 * the rest. */
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static atomic_int ready;
static int source = HFT_CLOCK_SOURCE_MONOTONIC;
static uint64_t ns_per_cycle_q32;
static uint64_t base_cycles;
static uint64_t base_ns;
static double calibrated_ghz;

static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#if HFT_CLOCK_HAVE_TSC

static inline uint64_t read_tsc(void)
{
    unsigned int cpu_id_unused;
    return __rdtscp(&cpu_id_unused);
}

static int cpu_has_usable_tsc(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(0x80000007, &eax, &ebx, &ecx, &edx) || !(edx & (1u << 8)))
        return 0; /* no invariant TSC: its rate may change with P-states */
    if (!__get_cpuid(0x80000001, &eax, &ebx, &ecx, &edx) || !(edx & (1u << 27)))
        return 0; /* no RDTSCP */
    return 1;
}

static uint64_t tsc_cycles_to_ns(uint64_t cycles)
{
    return (uint64_t)(((unsigned __int128)cycles * ns_per_cycle_q32) >> NS_PER_CYCLE_SHIFT);
}

struct tsc_sample {
    uint64_t cycles;
    uint64_t ns;
};

/* One TSC reading paired with the CLOCK_MONOTONIC time it was taken at. The
 * pairing error is at most half the bracket; a bracket stretched by an
 * interrupt or a preemption is discarded in favour of the narrowest one. */
static struct tsc_sample take_tsc_sample(void)
{
    struct tsc_sample best = {0, 0};
    uint64_t best_width = UINT64_MAX;
    for (int i = 0; i < CALIBRATION_TRIES; i++) {
        uint64_t before = monotonic_ns();
        uint64_t cycles = read_tsc();
        uint64_t after = monotonic_ns();
        if (after - before < best_width) {
            best_width = after - before;
            best.cycles = cycles;
            best.ns = before + (after - before) / 2;
        }
    }
    return best;
}

/* Measure the TSC rate; on success set the conversion and the base pair. */
static int calibrate_tsc(void)
{
    struct tsc_sample start = take_tsc_sample();
    struct timespec pause = {0, (long)CALIBRATION_WINDOW_NS};
    nanosleep(&pause, NULL); /* an early wake-up (EINTR) only shortens the window */
    struct tsc_sample end = take_tsc_sample();
    if (end.ns <= start.ns || end.cycles <= start.cycles)
        return 0;
    double hz = (double)(end.cycles - start.cycles) * 1e9 / (double)(end.ns - start.ns);
    if (hz < TSC_MIN_HZ || hz > TSC_MAX_HZ)
        return 0;
    ns_per_cycle_q32 = (uint64_t)(1e9 * (double)(1ull << NS_PER_CYCLE_SHIFT) / hz + 0.5);
    calibrated_ghz = hz / 1e9;
    base_cycles = end.cycles;
    base_ns = end.ns;
    return 1;
}

#endif /* HFT_CLOCK_HAVE_TSC */

static int forced_monotonic(void)
{
    const char *value = getenv("HFT_CLOCK_FORCE_MONOTONIC");
    return value != NULL && strcmp(value, "1") == 0;
}

static void initialise(void)
{
#if HFT_CLOCK_HAVE_TSC
    if (!forced_monotonic() && cpu_has_usable_tsc() && calibrate_tsc())
        source = HFT_CLOCK_SOURCE_TSC;
#else
    (void)forced_monotonic;
#endif
    atomic_store_explicit(&ready, 1, memory_order_release);
}

int hft_clock_init(void)
{
    pthread_once(&init_once, initialise);
    return HFT_OK;
}

/* The hot-path guard: one acquire load (a plain load on x86) once initialised. */
static inline void ensure_initialised(void)
{
    if (__builtin_expect(!atomic_load_explicit(&ready, memory_order_acquire), 0))
        hft_clock_init();
}

uint64_t hft_clock_now_ns(void)
{
    ensure_initialised();
#if HFT_CLOCK_HAVE_TSC
    if (source == HFT_CLOCK_SOURCE_TSC) {
        uint64_t cycles = read_tsc();
        /* A reading older than the base can only come from a thread on a core
         * whose TSC lags by a few cycles; clamp rather than wrap around. */
        uint64_t elapsed = cycles > base_cycles ? cycles - base_cycles : 0;
        return base_ns + tsc_cycles_to_ns(elapsed);
    }
#endif
    return monotonic_ns();
}

uint64_t hft_clock_cycles(void)
{
    ensure_initialised();
#if HFT_CLOCK_HAVE_TSC
    if (source == HFT_CLOCK_SOURCE_TSC)
        return read_tsc();
#endif
    return monotonic_ns();
}

uint64_t hft_clock_cycles_to_ns(uint64_t cycles)
{
    ensure_initialised();
#if HFT_CLOCK_HAVE_TSC
    if (source == HFT_CLOCK_SOURCE_TSC)
        return tsc_cycles_to_ns(cycles);
#endif
    return cycles;
}

double hft_clock_tsc_ghz(void)
{
    ensure_initialised();
    return source == HFT_CLOCK_SOURCE_TSC ? calibrated_ghz : 0.0;
}

int hft_clock_source(void)
{
    ensure_initialised();
    return source;
}
