/*
 * test_clock.c -- the clock's contract: one source chosen once (racing first
 * uses agree), readings never go backwards on a thread, and they stay on the
 * CLOCK_MONOTONIC timeline. Tolerances are loose on purpose: the machine is
 * shared and the sanitizer builds are slow; nothing here asserts speed.
 */
#include <pthread.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "hft_clock.h"

/* How far now_ns may sit from CLOCK_MONOTONIC, and how much it may drift from
 * it over the 100 ms test window (calibration error is a few ppm). */
#define OFFSET_TOLERANCE_NS 2000000ll
#define DRIFT_TOLERANCE_NS 1000000ll

static int64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static void sleep_ms(long ms)
{
    struct timespec pause = {ms / 1000, (ms % 1000) * 1000000l};
    while (nanosleep(&pause, &pause) != 0) {
    }
}

static int64_t abs64(int64_t x)
{
    return x < 0 ? -x : x;
}

/* Must run first, in a child, before this process initialises the clock: the
 * environment switch is read once, at init. */
static void test_force_monotonic_switch(void)
{
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        setenv("HFT_CLOCK_FORCE_MONOTONIC", "1", 1);
        hft_clock_init();
        int ok = hft_clock_source() == HFT_CLOCK_SOURCE_MONOTONIC && hft_clock_tsc_ghz() == 0.0 &&
                 hft_clock_cycles_to_ns(12345) == 12345 &&
                 abs64((int64_t)hft_clock_now_ns() - monotonic_ns()) < OFFSET_TOLERANCE_NS;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void *first_use_worker(void *arg)
{
    uint64_t *out = arg;
    out[0] = hft_clock_now_ns();
    out[1] = (uint64_t)hft_clock_source();
    return NULL;
}

/* Every thread's first call races into init; all must see one source. */
static void test_racing_first_use(void)
{
    pthread_t threads[4];
    uint64_t results[4][2];
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(pthread_create(&threads[i], NULL, first_use_worker, results[i]), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(threads[i], NULL);
    for (int i = 0; i < 4; i++) {
        CHECK(results[i][0] > 0);
        CHECK_EQ_INT(results[i][1], results[0][1]);
    }
}

static void test_init_is_idempotent(void)
{
    int source = hft_clock_source();
    CHECK_EQ_INT(hft_clock_init(), HFT_OK);
    CHECK_EQ_INT(hft_clock_init(), HFT_OK);
    CHECK_EQ_INT(hft_clock_source(), source);
    CHECK(source == HFT_CLOCK_SOURCE_TSC || source == HFT_CLOCK_SOURCE_MONOTONIC);
    if (source == HFT_CLOCK_SOURCE_TSC)
        CHECK(hft_clock_tsc_ghz() > 0.1 && hft_clock_tsc_ghz() < 100.0);
    else
        CHECK(hft_clock_tsc_ghz() == 0.0);
}

static void test_now_never_goes_backwards(void)
{
    uint64_t previous = hft_clock_now_ns();
    int backwards = 0;
    for (int i = 0; i < 200000; i++) {
        uint64_t now = hft_clock_now_ns();
        backwards += now < previous;
        previous = now;
    }
    CHECK_EQ_INT(backwards, 0);
}

static void test_tracks_clock_monotonic(void)
{
    int64_t clock_start = (int64_t)hft_clock_now_ns();
    int64_t mono_start = monotonic_ns();
    uint64_t cycles_start = hft_clock_cycles();
    CHECK(abs64(clock_start - mono_start) < OFFSET_TOLERANCE_NS);

    sleep_ms(100);

    int64_t clock_end = (int64_t)hft_clock_now_ns();
    int64_t mono_end = monotonic_ns();
    uint64_t cycles_end = hft_clock_cycles();
    int64_t mono_elapsed = mono_end - mono_start;
    CHECK(abs64((clock_end - clock_start) - mono_elapsed) < DRIFT_TOLERANCE_NS);
    int64_t cycles_elapsed_ns = (int64_t)hft_clock_cycles_to_ns(cycles_end - cycles_start);
    CHECK(abs64(cycles_elapsed_ns - mono_elapsed) < DRIFT_TOLERANCE_NS);
}

int main(void)
{
    RUN(test_force_monotonic_switch);
    RUN(test_racing_first_use);
    RUN(test_init_is_idempotent);
    RUN(test_now_never_goes_backwards);
    RUN(test_tracks_clock_monotonic);
    return TEST_SUMMARY("clock");
}
