/*
 * hft_pool.h -- fixed-size object pool with an intrusive free list.
 *
 * One slab of `capacity` objects of `object_size` bytes (rounded up to 16 so
 * every object is 16-byte aligned) is allocated at create time, but its pages
 * are touched only as objects are first handed out; acquire and release are
 * O(1) and never touch malloc. Released objects are reused first (LIFO). Used for the matching engine's order
 * records, so the order path allocates nothing.
 *
 * Concurrency: single-threaded. A pool belongs to one owner (one book, one
 * engine); nothing here is safe to call from two threads at once.
 */
#ifndef HFT_POOL_H
#define HFT_POOL_H

#include "hft_common.h"

typedef struct hft_pool hft_pool;

/* Create a pool of `capacity` objects of `object_size` bytes each.
 * Returns HFT_OK and sets *out, or HFT_EINVAL (zero size/capacity, or a slab
 * larger than SIZE_MAX) or HFT_ENOMEM. */
int hft_pool_create(size_t object_size, size_t capacity, hft_pool **out);

/* Free the pool and every object in it (acquired or not). NULL is a no-op. */
void hft_pool_destroy(hft_pool *pool);

/* Take one object (contents unspecified). Returns NULL when the pool is exhausted. */
void *hft_pool_acquire(hft_pool *pool);

/* Give back an object obtained from this pool's acquire. Returns HFT_EINVAL if
 * `obj` does not point at an object boundary inside this pool's slab, or if it is
 * not currently acquired (a double release is refused and changes nothing). */
int hft_pool_release(hft_pool *pool, void *obj);

/* Objects currently handed out, and the total capacity. */
size_t hft_pool_in_use(const hft_pool *pool);
size_t hft_pool_capacity(const hft_pool *pool);

/* Index of `obj` in the slab (0 .. capacity-1), or -1 if it is not one of ours.
 * Lets callers store 32-bit handles instead of pointers. */
long hft_pool_index_of(const hft_pool *pool, const void *obj);

/* The object at `index`, or NULL when out of range. */
void *hft_pool_at(hft_pool *pool, size_t index);

#endif /* HFT_POOL_H */
