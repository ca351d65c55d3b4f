/*
 * bench_queues.c -- the queue benchmarks without Python: median, min and max
 * of several runs of hft_spsc_bench / hft_mpsc_bench (see their comments in
 * hft_spsc.h and hft_mpsc.h for what one run measures and checks).
 *
 *   cc -std=gnu11 -O3 -D_GNU_SOURCE -pthread -Inative/include -o build/bench_queues \
 *      native/benchmark/bench_queues.c native/src/wait.c native/src/spsc.c native/src/mpsc.c
 *   build/bench_queues [runs]
 */
#include <stdio.h>
#include <stdlib.h>

#include "hft_mpsc.h"
#include "hft_spsc.h"

#define RECORDS_PER_RUN 2000000u
#define MAX_RUNS 101

typedef struct scenario {
    const char *name;
    unsigned producers; /* 0 = the SPSC ring */
    size_t record_size;
} scenario;

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 9;
    if (runs < 1 || runs > MAX_RUNS) {
        fprintf(stderr, "usage: %s [runs 1..%d]\n", argv[0], MAX_RUNS);
        return 2;
    }
    const scenario scenarios[] = {
        {"spsc 16 B", 0, 16},
        {"spsc 64 B", 0, 64},
        {"mpsc 2 producers 16 B", 2, 16},
        {"mpsc 2 producers 64 B", 2, 64},
        {"mpsc 4 producers 64 B", 4, 64},
    };
    for (size_t s = 0; s < sizeof(scenarios) / sizeof(scenarios[0]); s++) {
        const scenario *sc = &scenarios[s];
        double samples[MAX_RUNS];
        for (int r = 0; r < runs; r++) {
            int rc = sc->producers == 0
                         ? hft_spsc_bench(RECORDS_PER_RUN, sc->record_size, &samples[r])
                         : hft_mpsc_bench(RECORDS_PER_RUN / sc->producers, sc->producers, sc->record_size,
                                          &samples[r]);
            if (rc != HFT_OK) {
                fprintf(stderr, "%s: benchmark failed with %d\n", sc->name, rc);
                return 1;
            }
        }
        qsort(samples, (size_t)runs, sizeof(double), compare_doubles);
        printf("%-24s median %7.2f M/s   min %7.2f   max %7.2f   (%d runs of %u records)\n", sc->name,
               samples[runs / 2] / 1e6, samples[0] / 1e6, samples[runs - 1] / 1e6, runs, RECORDS_PER_RUN);
    }
    return 0;
}
