/*
 * check.h -- the whole C test harness: CHECK(cond) records a failure with its
 * location and goes on; RUN(test_fn) runs one test; TEST_SUMMARY() prints
 * "N passed, N failed" and returns the process exit code.
 */
#ifndef HFT_TEST_CHECK_H
#define HFT_TEST_CHECK_H

#include <stdio.h>

static int check_failures_in_test;
static int tests_passed;
static int tests_failed;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            check_failures_in_test++;                                            \
        }                                                                        \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                       \
    do {                                                                         \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);          \
        if (check_a_ != check_b_) {                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n",   \
                    __FILE__, __LINE__, #a, #b, check_a_, check_b_);             \
            check_failures_in_test++;                                            \
        }                                                                        \
    } while (0)

#define RUN(fn)                                                                  \
    do {                                                                         \
        check_failures_in_test = 0;                                              \
        fn();                                                                    \
        if (check_failures_in_test) {                                            \
            fprintf(stderr, "FAIL %s\n", #fn);                                   \
            tests_failed++;                                                      \
        } else {                                                                 \
            tests_passed++;                                                      \
        }                                                                        \
    } while (0)

#define TEST_SUMMARY(suite)                                                      \
    (printf("%s: %d passed, %d failed\n", suite, tests_passed, tests_failed),   \
     tests_failed ? 1 : 0)

#endif /* HFT_TEST_CHECK_H */
