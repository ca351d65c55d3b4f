/* pool.c -- see hft_pool.h. */
#include "hft_pool.h"

#include <stdint.h>
#include <stdlib.h>

struct hft_pool {
    unsigned char *slab;
    size_t object_size;
    size_t capacity;
    size_t in_use;
    unsigned char *acquired; /* one flag per object, so a double release is refused, not absorbed */
    void *free_head; /* released objects: each one's first word links to the next */
    size_t untouched_from; /* objects from this index on were never handed out */
};

int hft_pool_create(size_t object_size, size_t capacity, hft_pool **out)
{
    if (out == NULL || object_size == 0 || capacity == 0) {
        return HFT_EINVAL;
    }
    /* Room for the free-list link, and 16-byte alignment for every object; reject
     * sizes whose rounding or slab size would wrap around. */
    if (object_size > SIZE_MAX - 15u) {
        return HFT_EINVAL;
    }
    if (object_size < sizeof(void *)) {
        object_size = sizeof(void *);
    }
    object_size = (object_size + 15u) & ~(size_t)15u;
    if (capacity > (SIZE_MAX - HFT_CACHE_LINE) / object_size) {
        return HFT_EINVAL;
    }
    hft_pool *pool = calloc(1, sizeof(*pool));
    if (pool == NULL) {
        return HFT_ENOMEM;
    }
    pool->slab = aligned_alloc(HFT_CACHE_LINE, ((object_size * capacity) + HFT_CACHE_LINE - 1) /
                                                   HFT_CACHE_LINE * HFT_CACHE_LINE);
    pool->acquired = calloc(capacity, 1);
    if (pool->slab == NULL || pool->acquired == NULL) {
        free(pool->slab);
        free(pool->acquired);
        free(pool);
        return HFT_ENOMEM;
    }
    pool->object_size = object_size;
    pool->capacity = capacity;
    /* Objects never handed out are taken front to back from `untouched_from`, so
     * creating a pool touches none of the slab: a 1M-order engine used to spend
     * ~45 ms faulting in ~110 MB of pages to thread a free list through them. */
    pool->free_head = NULL;
    pool->untouched_from = 0;
    *out = pool;
    return HFT_OK;
}

void hft_pool_destroy(hft_pool *pool)
{
    if (pool == NULL) {
        return;
    }
    free(pool->slab);
    free(pool->acquired);
    free(pool);
}

void *hft_pool_acquire(hft_pool *pool)
{
    void *obj = pool->free_head;
    if (obj != NULL) {
        pool->free_head = *(void **)obj;
    } else if (pool->untouched_from < pool->capacity) {
        obj = pool->slab + pool->untouched_from++ * pool->object_size;
    } else {
        return NULL;
    }
    pool->acquired[((unsigned char *)obj - pool->slab) / pool->object_size] = 1;
    pool->in_use++;
    return obj;
}

int hft_pool_release(hft_pool *pool, void *obj)
{
    long index = hft_pool_index_of(pool, obj);
    if (index < 0 || !pool->acquired[index]) {
        return HFT_EINVAL;
    }
    pool->acquired[index] = 0;
    *(void **)obj = pool->free_head;
    pool->free_head = obj;
    pool->in_use--;
    return HFT_OK;
}

size_t hft_pool_in_use(const hft_pool *pool) { return pool->in_use; }

size_t hft_pool_capacity(const hft_pool *pool) { return pool->capacity; }

long hft_pool_index_of(const hft_pool *pool, const void *obj)
{
    const unsigned char *p = obj;
    if (p < pool->slab || p >= pool->slab + pool->capacity * pool->object_size) {
        return -1;
    }
    size_t offset = (size_t)(p - pool->slab);
    if (offset % pool->object_size != 0) {
        return -1;
    }
    return (long)(offset / pool->object_size);
}

void *hft_pool_at(hft_pool *pool, size_t index)
{
    return index < pool->capacity ? pool->slab + index * pool->object_size : NULL;
}
