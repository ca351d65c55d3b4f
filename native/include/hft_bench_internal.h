/*
 * hft_bench_internal.h -- helpers for the in-library benchmarks (hft_*_bench).
 * Not part of the API; no cdef exposes it.
 */
#ifndef HFT_BENCH_INTERNAL_H
#define HFT_BENCH_INTERNAL_H

#include <pthread.h>
#include <sched.h>

/*
 * Pin the calling thread to the `slot`-th CPU this process may run on (modulo
 * their count). Benchmarks put consumer and producers on different CPUs so a
 * figure always measures the cross-core hand-off: left to the scheduler, two
 * threads sometimes share one core, batch through the ring without a single
 * cache-line transfer and report several times the real cross-core rate.
 * A process allowed only one CPU is left alone.
 */
static inline void hft_bench_pin_to_cpu_slot(int slot)
{
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0 || CPU_COUNT(&allowed) < 2) {
        return;
    }
    int wanted = slot % CPU_COUNT(&allowed);
    for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed)) {
            continue;
        }
        if (seen++ == wanted) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            (void)pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
            return;
        }
    }
}

#endif /* HFT_BENCH_INTERNAL_H */
