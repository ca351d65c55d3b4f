/* test_pool.c -- hft_pool: creation arguments, exhaustion, reuse, handles
 * (index_of/at) and rejection of pointers the pool never handed out. */
#include "hft_pool.h"

#include <stdint.h>
#include <string.h>

#include "check.h"

#define CAPACITY 64

static hft_pool *make(size_t object_size, size_t capacity)
{
    hft_pool *pool = NULL;
    CHECK_EQ_INT(hft_pool_create(object_size, capacity, &pool), HFT_OK);
    return pool;
}

static void test_bad_create_arguments(void)
{
    hft_pool *pool = NULL;
    CHECK_EQ_INT(hft_pool_create(0, 10, &pool), HFT_EINVAL);
    CHECK_EQ_INT(hft_pool_create(32, 0, &pool), HFT_EINVAL);
    CHECK_EQ_INT(hft_pool_create(32, 10, NULL), HFT_EINVAL);
    /* A slab larger than the address space: caught before any arithmetic wraps. */
    CHECK_EQ_INT(hft_pool_create(64, SIZE_MAX / 64 + 1, &pool), HFT_EINVAL);
    CHECK(pool == NULL);
    hft_pool_destroy(NULL);
}

static void test_acquire_all_then_exhausted(void)
{
    hft_pool *pool = make(40, CAPACITY);
    unsigned char *objects[CAPACITY];
    CHECK_EQ_INT(hft_pool_capacity(pool), CAPACITY);
    for (size_t i = 0; i < CAPACITY; i++) {
        objects[i] = hft_pool_acquire(pool);
        CHECK(objects[i] != NULL);
        CHECK_EQ_INT((uintptr_t)objects[i] % 16, 0);
        memset(objects[i], (int)i, 40); /* the whole requested size is ours (ASan watches) */
    }
    CHECK_EQ_INT(hft_pool_in_use(pool), CAPACITY);
    CHECK(hft_pool_acquire(pool) == NULL);
    CHECK(hft_pool_acquire(pool) == NULL); /* stays exhausted, and in_use does not drift */
    CHECK_EQ_INT(hft_pool_in_use(pool), CAPACITY);
    /* No two objects overlap: every one still holds its own pattern. */
    int intact = 1;
    for (size_t i = 0; i < CAPACITY; i++) {
        for (size_t b = 0; b < 40; b++) {
            intact &= objects[i][b] == (unsigned char)i;
        }
    }
    CHECK(intact);
    hft_pool_destroy(pool);
}

static void test_untouched_objects_come_in_order_after_released_ones(void)
{
    hft_pool *pool = make(24, 8);
    CHECK_EQ_INT(hft_pool_index_of(pool, hft_pool_acquire(pool)), 0);
    void *second = hft_pool_acquire(pool);
    CHECK_EQ_INT(hft_pool_index_of(pool, second), 1);
    CHECK_EQ_INT(hft_pool_release(pool, second), HFT_OK);
    CHECK(hft_pool_acquire(pool) == second); /* a released object is reused first */
    CHECK_EQ_INT(hft_pool_index_of(pool, hft_pool_acquire(pool)), 2); /* then the next untouched one */
    CHECK_EQ_INT(hft_pool_in_use(pool), 3);
    hft_pool_destroy(pool);
}

static void test_release_then_reacquire(void)
{
    hft_pool *pool = make(24, 4);
    void *objects[4];
    for (int i = 0; i < 4; i++) {
        objects[i] = hft_pool_acquire(pool);
    }
    CHECK_EQ_INT(hft_pool_release(pool, objects[2]), HFT_OK);
    CHECK_EQ_INT(hft_pool_in_use(pool), 3);
    CHECK(hft_pool_acquire(pool) == objects[2]); /* the only free object */
    CHECK(hft_pool_acquire(pool) == NULL);

    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(hft_pool_release(pool, objects[i]), HFT_OK);
    }
    CHECK_EQ_INT(hft_pool_in_use(pool), 0);
    /* Everything comes back, each object exactly once. */
    int seen[4] = {0};
    for (int i = 0; i < 4; i++) {
        long index = hft_pool_index_of(pool, hft_pool_acquire(pool));
        CHECK(index >= 0 && index < 4);
        if (index >= 0 && index < 4) {
            seen[index]++;
        }
    }
    CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 1 && seen[3] == 1);
    CHECK(hft_pool_acquire(pool) == NULL);
    hft_pool_destroy(pool);
}

static void test_index_of_and_at_round_trip(void)
{
    hft_pool *pool = make(100, CAPACITY);
    for (size_t i = 0; i < CAPACITY; i++) {
        void *obj = hft_pool_at(pool, i);
        CHECK(obj != NULL);
        CHECK_EQ_INT(hft_pool_index_of(pool, obj), (long)i);
    }
    CHECK(hft_pool_at(pool, CAPACITY) == NULL);
    CHECK(hft_pool_at(pool, SIZE_MAX) == NULL);
    for (size_t i = 0; i < CAPACITY; i++) {
        void *obj = hft_pool_acquire(pool);
        CHECK(hft_pool_at(pool, (size_t)hft_pool_index_of(pool, obj)) == obj);
    }
    hft_pool_destroy(pool);
}

static void test_object_size_is_rounded_to_16_bytes(void)
{
    static const size_t requested[] = {1, 8, 16, 17, 100};
    static const size_t stride[] = {16, 16, 16, 32, 112};
    for (size_t i = 0; i < sizeof(requested) / sizeof(requested[0]); i++) {
        hft_pool *pool = make(requested[i], 3);
        unsigned char *first = hft_pool_at(pool, 0), *second = hft_pool_at(pool, 1);
        CHECK_EQ_INT(second - first, stride[i]);
        hft_pool_destroy(pool);
    }
}

static void test_foreign_and_misaligned_pointers_are_rejected(void)
{
    hft_pool *pool = make(32, 8), *other = make(32, 8);
    unsigned char *mine = hft_pool_acquire(pool);
    void *theirs = hft_pool_acquire(other);
    long on_stack = 0;
    unsigned char *last = hft_pool_at(pool, 7);

    CHECK_EQ_INT(hft_pool_release(pool, theirs), HFT_EINVAL);
    CHECK_EQ_INT(hft_pool_release(pool, &on_stack), HFT_EINVAL);
    CHECK_EQ_INT(hft_pool_release(pool, NULL), HFT_EINVAL);
    CHECK_EQ_INT(hft_pool_release(pool, mine + 1), HFT_EINVAL);  /* inside an object */
    CHECK_EQ_INT(hft_pool_release(pool, mine + 16), HFT_EINVAL); /* 16-aligned but not an object start */
    CHECK_EQ_INT(hft_pool_release(pool, last + 32), HFT_EINVAL); /* one past the slab */
    CHECK_EQ_INT(hft_pool_index_of(pool, theirs), -1);
    CHECK_EQ_INT(hft_pool_index_of(pool, mine + 1), -1);
    CHECK_EQ_INT(hft_pool_in_use(pool), 1); /* rejected releases change nothing */
    CHECK_EQ_INT(hft_pool_in_use(other), 1);

    CHECK_EQ_INT(hft_pool_release(pool, mine), HFT_OK);
    CHECK_EQ_INT(hft_pool_release(other, theirs), HFT_OK);
    CHECK_EQ_INT(hft_pool_in_use(pool), 0);
    hft_pool_destroy(pool);
    hft_pool_destroy(other);
}

static void test_sizes_that_would_wrap_are_rejected(void)
{
    hft_pool *pool = NULL;
    /* Rounding SIZE_MAX up to 16 would wrap to 0. */
    CHECK_EQ_INT(hft_pool_create(SIZE_MAX, 1, &pool), HFT_EINVAL);
    CHECK_EQ_INT(hft_pool_create(SIZE_MAX - 14, 1, &pool), HFT_EINVAL);
    /* object_size * capacity fits, but rounding the slab to a cache line would wrap. */
    CHECK_EQ_INT(hft_pool_create(16, SIZE_MAX / 16, &pool), HFT_EINVAL);
    CHECK(pool == NULL);
}

static void test_double_release_is_refused_and_changes_nothing(void)
{
    hft_pool *pool = make(32, 4);
    void *a = hft_pool_acquire(pool);
    void *b = hft_pool_acquire(pool);
    CHECK_EQ_INT(hft_pool_release(pool, a), HFT_OK);
    CHECK_EQ_INT(hft_pool_release(pool, a), HFT_EINVAL);
    CHECK_EQ_INT(hft_pool_in_use(pool), 1);
    /* A never-acquired object is refused too. */
    CHECK_EQ_INT(hft_pool_release(pool, hft_pool_at(pool, 3)), HFT_EINVAL);
    /* The free list is intact: exactly three objects come back, all distinct from b. */
    void *got[3];
    for (int i = 0; i < 3; i++) {
        got[i] = hft_pool_acquire(pool);
        CHECK(got[i] != NULL && got[i] != b);
    }
    CHECK(got[0] != got[1] && got[1] != got[2] && got[0] != got[2]);
    CHECK(hft_pool_acquire(pool) == NULL);
    hft_pool_destroy(pool);
}

int main(void)
{
    RUN(test_bad_create_arguments);
    RUN(test_acquire_all_then_exhausted);
    RUN(test_release_then_reacquire);
    RUN(test_untouched_objects_come_in_order_after_released_ones);
    RUN(test_index_of_and_at_round_trip);
    RUN(test_object_size_is_rounded_to_16_bytes);
    RUN(test_foreign_and_misaligned_pointers_are_rejected);
    RUN(test_sizes_that_would_wrap_are_rejected);
    RUN(test_double_release_is_refused_and_changes_nothing);
    return TEST_SUMMARY("pool");
}
