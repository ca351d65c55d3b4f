/* test_queues.c -- the waitpoint, the SPSC ring and the MPSC queue. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "hft_mpsc.h"
#include "hft_spsc.h"
#include "hft_wait.h"

/* Records moved by the SPSC stress test, and by each MPSC stress producer
 * (fewer: four producers on two cores, under ThreadSanitizer, must stay quick). */
#define SPSC_STRESS_RECORDS 1000000u
#define MPSC_STRESS_RECORDS_PER_PRODUCER 200000u

#define MS 1000000LL

typedef struct record16 {
    uint64_t producer;
    uint64_t seq;
} record16;

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * MS};
    nanosleep(&ts, NULL);
}

/* --- waitpoint ------------------------------------------------------------------ */

typedef struct flag_waiter {
    hft_waitpoint wp;
    _Atomic int flag;
    int rc;
} flag_waiter;

static bool flag_is_set(const void *ctx)
{
    const flag_waiter *w = ctx;
    return atomic_load_explicit(&w->flag, memory_order_seq_cst) != 0;
}

static void *wait_for_flag(void *arg)
{
    flag_waiter *w = arg;
    w->rc = hft_waitpoint_wait(&w->wp, flag_is_set, w, HFT_DEADLINE_NEVER);
    return NULL;
}

static void waitpoint_parks_and_wakes(bool use_membarrier)
{
    flag_waiter w;
    hft_waitpoint_init(&w.wp);
    w.wp.waiters_use_membarrier = w.wp.waiters_use_membarrier && use_membarrier;
    atomic_init(&w.flag, 0);
    w.rc = 1;
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, wait_for_flag, &w) == 0);
    /* The waiter announces itself only once it is about to sleep. */
    while ((atomic_load(&w.wp.word) & HFT_WAIT_SLEEPER) == 0) {
        sleep_ms(1);
    }
    atomic_store_explicit(&w.flag, 1, memory_order_seq_cst);
    hft_waitpoint_wake_all(&w.wp);
    pthread_join(thread, NULL);
    CHECK_EQ_INT(w.rc, HFT_OK);
    /* The wake cleared the sleeper bit and moved the epoch on. */
    CHECK_EQ_INT(atomic_load(&w.wp.word), 2);
}

static void test_waitpoint_parks_and_wakes(void) { waitpoint_parks_and_wakes(true); }

/* The path taken where membarrier(2) is not available. */
static void test_waitpoint_parks_and_wakes_without_membarrier(void) { waitpoint_parks_and_wakes(false); }

/* Two threads hand a turn back and forth, each parking until it is theirs.
 * A lost wake-up would show as a wait that times out. */
#define PING_PONG_ROUNDS 5000

typedef struct ping_pong {
    hft_waitpoint wp[2];
    _Atomic uint64_t turn;
    int failures;
} ping_pong;

typedef struct ping_pong_player {
    ping_pong *game;
    uint64_t side;
} ping_pong_player;

static bool is_my_turn(const void *ctx)
{
    const ping_pong_player *p = ctx;
    return atomic_load_explicit(&p->game->turn, memory_order_acquire) % 2 == p->side;
}

static void *ping_pong_play(void *arg)
{
    ping_pong_player *p = arg;
    for (uint64_t round = 0; round < PING_PONG_ROUNDS; round++) {
        if (hft_waitpoint_wait(&p->game->wp[p->side], is_my_turn, p, hft_deadline_from_timeout(10000 * MS)) !=
            HFT_OK) {
            p->game->failures++;
            return NULL;
        }
        if (round % 8 == p->side) {
            /* Dawdle now and then so the other side gives up spinning and parks. */
            struct timespec pause = {.tv_nsec = 20000};
            nanosleep(&pause, NULL);
        }
        atomic_fetch_add_explicit(&p->game->turn, 1, memory_order_release);
        hft_waitpoint_wake_all(&p->game->wp[1 - p->side]);
    }
    return NULL;
}

static void waitpoint_ping_pong(bool use_membarrier)
{
    ping_pong game = {.failures = 0};
    for (int i = 0; i < 2; i++) {
        hft_waitpoint_init(&game.wp[i]);
        game.wp[i].waiters_use_membarrier = game.wp[i].waiters_use_membarrier && use_membarrier;
    }
    atomic_init(&game.turn, 0);
    ping_pong_player players[2] = {{&game, 0}, {&game, 1}};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        pthread_create(&threads[i], NULL, ping_pong_play, &players[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(threads[i], NULL);
    }
    CHECK_EQ_INT(game.failures, 0);
    CHECK_EQ_INT(atomic_load(&game.turn), 2 * PING_PONG_ROUNDS);
}

static void test_waitpoint_ping_pong(void) { waitpoint_ping_pong(true); }

static void test_waitpoint_ping_pong_without_membarrier(void) { waitpoint_ping_pong(false); }

static void test_waitpoint_timeouts(void)
{
    flag_waiter w;
    hft_waitpoint_init(&w.wp);
    atomic_init(&w.flag, 0);
    CHECK_EQ_INT(hft_waitpoint_wait(&w.wp, flag_is_set, &w, hft_deadline_from_timeout(0)), HFT_ETIMEDOUT);
    int64_t before = hft_wait_now_ns();
    CHECK_EQ_INT(hft_waitpoint_wait(&w.wp, flag_is_set, &w, hft_deadline_from_timeout(20 * MS)), HFT_ETIMEDOUT);
    CHECK(hft_wait_now_ns() - before >= 20 * MS);
    atomic_store(&w.flag, 1);
    CHECK_EQ_INT(hft_waitpoint_wait(&w.wp, flag_is_set, &w, hft_deadline_from_timeout(0)), HFT_OK);
    CHECK(hft_deadline_from_timeout(-1) == HFT_DEADLINE_NEVER);
    CHECK(hft_deadline_from_timeout(INT64_MAX) == HFT_DEADLINE_NEVER);
}

/* --- SPSC: single thread ------------------------------------------------------------ */

static void test_spsc_bad_arguments(void)
{
    hft_spsc_ring *ring = NULL;
    CHECK_EQ_INT(hft_spsc_ring_create(0, 16, &ring), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_ring_create(8, 0, &ring), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_ring_create(8, 16, NULL), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_ring_create(SIZE_MAX, 16, &ring), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_ring_create((size_t)1 << 30, SIZE_MAX / 4, &ring), HFT_EINVAL);
    CHECK(ring == NULL);

    CHECK_EQ_INT(hft_spsc_ring_create(5, 16, &ring), HFT_OK);
    record16 r = {0, 0};
    size_t n = 99;
    CHECK_EQ_INT(hft_spsc_ring_try_push(NULL, &r), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_ring_try_push(ring, NULL), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_ring_try_pop(ring, NULL), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_ring_push_many(ring, NULL, 1, &n), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_ring_push_many(ring, &r, 1, NULL), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_ring_pop_many(ring, NULL, 1, &n), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_ring_pop_many_wait(NULL, &r, 1, &n, 0), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_ring_push_wait(ring, NULL, -1), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_ring_pop_wait(NULL, &r, -1), HFT_EINVAL);
    hft_spsc_ring_destroy(ring);
    hft_spsc_ring_destroy(NULL);
}

static void test_spsc_full_and_empty(void)
{
    hft_spsc_ring *ring;
    CHECK_EQ_INT(hft_spsc_ring_create(5, sizeof(record16), &ring), HFT_OK);
    CHECK_EQ_INT(hft_spsc_ring_capacity(ring), 8);
    CHECK_EQ_INT(hft_spsc_ring_record_size(ring), sizeof(record16));
    record16 r;
    CHECK_EQ_INT(hft_spsc_ring_try_pop(ring, &r), HFT_EAGAIN);
    for (uint64_t i = 0; i < 8; i++) {
        r = (record16){0, i};
        CHECK_EQ_INT(hft_spsc_ring_try_push(ring, &r), HFT_OK);
    }
    CHECK_EQ_INT(hft_spsc_ring_size_approx(ring), 8);
    CHECK_EQ_INT(hft_spsc_ring_try_push(ring, &r), HFT_EAGAIN);
    size_t pushed = 99;
    CHECK_EQ_INT(hft_spsc_ring_push_many(ring, &r, 1, &pushed), HFT_EAGAIN);
    CHECK_EQ_INT(pushed, 0);
    for (uint64_t i = 0; i < 8; i++) {
        CHECK_EQ_INT(hft_spsc_ring_try_pop(ring, &r), HFT_OK);
        CHECK_EQ_INT(r.seq, i);
    }
    CHECK_EQ_INT(hft_spsc_ring_try_pop(ring, &r), HFT_EAGAIN);
    size_t popped = 99;
    CHECK_EQ_INT(hft_spsc_ring_pop_many(ring, &r, 1, &popped), HFT_EAGAIN);
    CHECK_EQ_INT(popped, 0);
    CHECK_EQ_INT(hft_spsc_ring_size_approx(ring), 0);
    CHECK_EQ_INT(hft_spsc_ring_pop_many(ring, &r, 0, &popped), HFT_OK);
    CHECK_EQ_INT(popped, 0);
    hft_spsc_ring_destroy(ring);
}

static void test_spsc_batches_wrap_around(void)
{
    hft_spsc_ring *ring;
    CHECK_EQ_INT(hft_spsc_ring_create(8, sizeof(record16), &ring), HFT_OK);
    record16 in[12], out[12];
    uint64_t next_in = 0, next_out = 0;
    /* Batches of 5 against a ring of 8 cross the end of the slot array at every offset. */
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 12; i++) {
            in[i] = (record16){7, next_in + (uint64_t)i};
        }
        size_t pushed = 0, popped = 0;
        CHECK_EQ_INT(hft_spsc_ring_push_many(ring, in, 5, &pushed), HFT_OK);
        CHECK_EQ_INT(pushed, 5);
        next_in += pushed;
        CHECK_EQ_INT(hft_spsc_ring_pop_many(ring, out, 12, &popped), HFT_OK);
        CHECK_EQ_INT(popped, 5);
        for (size_t i = 0; i < popped; i++) {
            CHECK_EQ_INT(out[i].seq, next_out++);
        }
    }
    /* A batch larger than the free space is cut to fit. */
    for (int i = 0; i < 12; i++) {
        in[i] = (record16){7, next_in + (uint64_t)i};
    }
    size_t pushed = 0, popped = 0;
    CHECK_EQ_INT(hft_spsc_ring_push_many(ring, in, 12, &pushed), HFT_OK);
    CHECK_EQ_INT(pushed, 8);
    CHECK_EQ_INT(hft_spsc_ring_pop_many(ring, out, 3, &popped), HFT_OK);
    CHECK_EQ_INT(popped, 3);
    CHECK_EQ_INT(out[0].seq, next_out);
    CHECK_EQ_INT(out[2].seq, next_out + 2);
    hft_spsc_ring_destroy(ring);
}

/* --- SPSC: two threads -------------------------------------------------------------- */

typedef struct spsc_stress {
    hft_spsc_ring *ring;
    uint64_t n;
    uint64_t received;
    uint64_t out_of_order;
} spsc_stress;

/* Uses every push flavour in turn so each sees contention; a non-blocking
 * push that finds the ring full falls back to push_wait rather than spin. */
static void *spsc_stress_producer(void *arg)
{
    spsc_stress *s = arg;
    record16 batch[7];
    uint64_t seq = 0;
    while (seq < s->n) {
        size_t want = s->n - seq < 7 ? (size_t)(s->n - seq) : 7, pushed = 0;
        for (size_t i = 0; i < want; i++) {
            batch[i] = (record16){1, seq + i};
        }
        int rc;
        switch (seq % 3) {
        case 0:
            rc = hft_spsc_ring_push_wait(s->ring, batch, -1);
            pushed = 1;
            break;
        case 1:
            rc = hft_spsc_ring_try_push(s->ring, batch);
            pushed = 1;
            break;
        default:
            rc = hft_spsc_ring_push_many(s->ring, batch, want, &pushed);
        }
        if (rc == HFT_EAGAIN) {
            rc = hft_spsc_ring_push_wait(s->ring, batch, -1);
            pushed = 1;
        }
        if (rc != HFT_OK) {
            return NULL;
        }
        seq += pushed;
    }
    return NULL;
}

static void *spsc_stress_consumer(void *arg)
{
    spsc_stress *s = arg;
    record16 batch[64];
    while (s->received < s->n) {
        size_t popped = 0;
        if (s->received % 2 == 0) {
            if (hft_spsc_ring_pop_many_wait(s->ring, batch, 64, &popped, -1) != HFT_OK) {
                break;
            }
        } else if (hft_spsc_ring_pop_wait(s->ring, batch, -1) == HFT_OK) {
            popped = 1;
        }
        for (size_t i = 0; i < popped; i++) {
            if (batch[i].seq != s->received || batch[i].producer != 1) {
                s->out_of_order++;
            }
            s->received++;
        }
    }
    return NULL;
}

static void test_spsc_two_threads_keep_order(void)
{
    spsc_stress s = {.n = SPSC_STRESS_RECORDS};
    CHECK_EQ_INT(hft_spsc_ring_create(1024, sizeof(record16), &s.ring), HFT_OK);
    pthread_t producer, consumer;
    pthread_create(&consumer, NULL, spsc_stress_consumer, &s);
    pthread_create(&producer, NULL, spsc_stress_producer, &s);
    pthread_join(producer, NULL);
    pthread_join(consumer, NULL);
    CHECK_EQ_INT(s.received, s.n);
    CHECK_EQ_INT(s.out_of_order, 0);
    CHECK_EQ_INT(hft_spsc_ring_size_approx(s.ring), 0);
    hft_spsc_ring_destroy(s.ring);
}

/* --- SPSC: blocking, timeouts, close ------------------------------------------------ */

typedef struct spsc_blocked_call {
    hft_spsc_ring *ring;
    record16 record;
    int rc;
    int64_t timeout_ns;
} spsc_blocked_call;

static void *spsc_pop_wait_thread(void *arg)
{
    spsc_blocked_call *c = arg;
    c->rc = hft_spsc_ring_pop_wait(c->ring, &c->record, c->timeout_ns);
    return NULL;
}

static void *spsc_push_wait_thread(void *arg)
{
    spsc_blocked_call *c = arg;
    c->rc = hft_spsc_ring_push_wait(c->ring, &c->record, c->timeout_ns);
    return NULL;
}

static void test_spsc_parked_consumer_is_woken(void)
{
    spsc_blocked_call c = {.rc = 1, .timeout_ns = -1};
    CHECK_EQ_INT(hft_spsc_ring_create(4, sizeof(record16), &c.ring), HFT_OK);
    pthread_t thread;
    pthread_create(&thread, NULL, spsc_pop_wait_thread, &c);
    sleep_ms(30); /* long enough for the consumer to give up spinning and park */
    record16 r = {3, 42};
    CHECK_EQ_INT(hft_spsc_ring_try_push(c.ring, &r), HFT_OK);
    pthread_join(thread, NULL);
    CHECK_EQ_INT(c.rc, HFT_OK);
    CHECK_EQ_INT(c.record.seq, 42);
    hft_spsc_ring_destroy(c.ring);
}

static void test_spsc_parked_producer_is_woken(void)
{
    spsc_blocked_call c = {.rc = 1, .timeout_ns = 10000 * MS, .record = {3, 99}};
    CHECK_EQ_INT(hft_spsc_ring_create(1, sizeof(record16), &c.ring), HFT_OK);
    record16 r = {3, 98};
    CHECK_EQ_INT(hft_spsc_ring_try_push(c.ring, &r), HFT_OK);
    pthread_t thread;
    pthread_create(&thread, NULL, spsc_push_wait_thread, &c);
    sleep_ms(30);
    CHECK_EQ_INT(hft_spsc_ring_try_pop(c.ring, &r), HFT_OK);
    CHECK_EQ_INT(r.seq, 98);
    pthread_join(thread, NULL);
    CHECK_EQ_INT(c.rc, HFT_OK);
    CHECK_EQ_INT(hft_spsc_ring_try_pop(c.ring, &r), HFT_OK);
    CHECK_EQ_INT(r.seq, 99);
    hft_spsc_ring_destroy(c.ring);
}

static void test_spsc_timeouts(void)
{
    hft_spsc_ring *ring;
    CHECK_EQ_INT(hft_spsc_ring_create(1, sizeof(record16), &ring), HFT_OK);
    record16 r = {0, 0};
    size_t popped = 99;
    CHECK_EQ_INT(hft_spsc_ring_pop_wait(ring, &r, 0), HFT_ETIMEDOUT);
    int64_t before = hft_wait_now_ns();
    CHECK_EQ_INT(hft_spsc_ring_pop_many_wait(ring, &r, 1, &popped, 15 * MS), HFT_ETIMEDOUT);
    CHECK(hft_wait_now_ns() - before >= 15 * MS);
    CHECK_EQ_INT(popped, 0);
    CHECK_EQ_INT(hft_spsc_ring_push_wait(ring, &r, 0), HFT_OK);
    CHECK_EQ_INT(hft_spsc_ring_push_wait(ring, &r, 0), HFT_ETIMEDOUT);
    before = hft_wait_now_ns();
    CHECK_EQ_INT(hft_spsc_ring_push_wait(ring, &r, 15 * MS), HFT_ETIMEDOUT);
    CHECK(hft_wait_now_ns() - before >= 15 * MS);
    hft_spsc_ring_destroy(ring);
}

static void test_spsc_close_wakes_and_still_drains(void)
{
    spsc_blocked_call c = {.rc = 1, .timeout_ns = -1};
    CHECK_EQ_INT(hft_spsc_ring_create(2, sizeof(record16), &c.ring), HFT_OK);
    pthread_t thread;
    pthread_create(&thread, NULL, spsc_pop_wait_thread, &c);
    sleep_ms(20);
    hft_spsc_ring_close(c.ring);
    pthread_join(thread, NULL);
    CHECK_EQ_INT(c.rc, HFT_EINVAL);
    /* Queued records survive close; only waiting stops. */
    record16 r = {5, 1};
    CHECK_EQ_INT(hft_spsc_ring_try_push(c.ring, &r), HFT_OK);
    CHECK_EQ_INT(hft_spsc_ring_pop_wait(c.ring, &r, -1), HFT_OK);
    CHECK_EQ_INT(hft_spsc_ring_pop_wait(c.ring, &r, -1), HFT_EINVAL);
    hft_spsc_ring_close(c.ring);
    hft_spsc_ring_destroy(c.ring);
}

/* --- MPSC ----------------------------------------------------------------------------- */

static void test_mpsc_bad_arguments(void)
{
    hft_mpsc_queue *queue = NULL;
    CHECK_EQ_INT(hft_mpsc_queue_create(0, 16, &queue), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_create(8, 0, &queue), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_create(8, 16, NULL), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_create(SIZE_MAX, 16, &queue), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_create(8, SIZE_MAX, &queue), HFT_EINVAL);
    CHECK(queue == NULL);
    CHECK_EQ_INT(hft_mpsc_queue_create(8, 16, &queue), HFT_OK);
    record16 r = {0, 0};
    size_t n = 0;
    CHECK_EQ_INT(hft_mpsc_queue_try_push(NULL, &r), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_try_push(queue, NULL), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_try_pop(queue, NULL), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_pop_many(queue, NULL, 1, &n), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_pop_many(queue, &r, 1, NULL), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_pop_wait(queue, NULL, -1), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_push_wait(NULL, &r, -1), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_pop_many_wait(NULL, &r, 1, &n, -1), HFT_EINVAL);
    hft_mpsc_queue_destroy(queue);
    hft_mpsc_queue_destroy(NULL);
}

static void test_mpsc_full_and_empty(void)
{
    hft_mpsc_queue *queue;
    /* A requested capacity of 1 becomes 2, the smallest that works with per-slot sequences. */
    CHECK_EQ_INT(hft_mpsc_queue_create(1, sizeof(record16), &queue), HFT_OK);
    CHECK_EQ_INT(hft_mpsc_queue_capacity(queue), 2);
    hft_mpsc_queue_destroy(queue);

    CHECK_EQ_INT(hft_mpsc_queue_create(3, sizeof(record16), &queue), HFT_OK);
    CHECK_EQ_INT(hft_mpsc_queue_capacity(queue), 4);
    CHECK_EQ_INT(hft_mpsc_queue_record_size(queue), sizeof(record16));
    record16 r, out[8];
    CHECK_EQ_INT(hft_mpsc_queue_try_pop(queue, &r), HFT_EAGAIN);
    /* Three laps around the four cells. */
    uint64_t next_out = 0;
    for (uint64_t lap = 0; lap < 3; lap++) {
        for (uint64_t i = 0; i < 4; i++) {
            r = (record16){0, lap * 4 + i};
            CHECK_EQ_INT(hft_mpsc_queue_try_push(queue, &r), HFT_OK);
        }
        CHECK_EQ_INT(hft_mpsc_queue_size_approx(queue), 4);
        CHECK_EQ_INT(hft_mpsc_queue_try_push(queue, &r), HFT_EAGAIN);
        CHECK_EQ_INT(hft_mpsc_queue_try_pop(queue, &r), HFT_OK);
        CHECK_EQ_INT(r.seq, next_out++);
        size_t popped = 0;
        CHECK_EQ_INT(hft_mpsc_queue_pop_many(queue, out, 8, &popped), HFT_OK);
        CHECK_EQ_INT(popped, 3);
        for (size_t i = 0; i < popped; i++) {
            CHECK_EQ_INT(out[i].seq, next_out++);
        }
        CHECK_EQ_INT(hft_mpsc_queue_pop_many(queue, out, 8, &popped), HFT_EAGAIN);
        CHECK_EQ_INT(popped, 0);
    }
    CHECK_EQ_INT(hft_mpsc_queue_size_approx(queue), 0);
    hft_mpsc_queue_destroy(queue);
}

#define MPSC_PRODUCERS 4

typedef struct mpsc_stress {
    hft_mpsc_queue *queue;
    uint64_t per_producer;
} mpsc_stress;

typedef struct mpsc_stress_producer {
    mpsc_stress *stress;
    uint64_t id;
} mpsc_stress_producer;

static void *mpsc_stress_produce(void *arg)
{
    const mpsc_stress_producer *p = arg;
    for (uint64_t seq = 0; seq < p->stress->per_producer; seq++) {
        record16 r = {p->id, seq};
        /* Every other record tries the non-blocking push first. */
        if (seq % 2 == 0 || hft_mpsc_queue_try_push(p->stress->queue, &r) == HFT_EAGAIN) {
            hft_mpsc_queue_push_wait(p->stress->queue, &r, -1);
        }
    }
    return NULL;
}

static void test_mpsc_producers_keep_their_order(void)
{
    mpsc_stress s = {.per_producer = MPSC_STRESS_RECORDS_PER_PRODUCER};
    /* Small, so producers often find it full and park. */
    CHECK_EQ_INT(hft_mpsc_queue_create(64, sizeof(record16), &s.queue), HFT_OK);
    pthread_t threads[MPSC_PRODUCERS];
    mpsc_stress_producer producers[MPSC_PRODUCERS];
    for (unsigned i = 0; i < MPSC_PRODUCERS; i++) {
        producers[i] = (mpsc_stress_producer){&s, i};
        pthread_create(&threads[i], NULL, mpsc_stress_produce, &producers[i]);
    }
    uint64_t expected[MPSC_PRODUCERS] = {0};
    uint64_t received = 0, bad = 0;
    record16 batch[32];
    while (received < s.per_producer * MPSC_PRODUCERS) {
        size_t popped = 0;
        if (hft_mpsc_queue_pop_many_wait(s.queue, batch, 32, &popped, 10000 * MS) != HFT_OK) {
            break;
        }
        for (size_t i = 0; i < popped; i++) {
            if (batch[i].producer >= MPSC_PRODUCERS || batch[i].seq != expected[batch[i].producer]++) {
                bad++;
            }
        }
        received += popped;
    }
    for (unsigned i = 0; i < MPSC_PRODUCERS; i++) {
        pthread_join(threads[i], NULL);
        CHECK_EQ_INT(expected[i], s.per_producer);
    }
    CHECK_EQ_INT(received, s.per_producer * MPSC_PRODUCERS);
    CHECK_EQ_INT(bad, 0);
    record16 r;
    CHECK_EQ_INT(hft_mpsc_queue_try_pop(s.queue, &r), HFT_EAGAIN);
    hft_mpsc_queue_destroy(s.queue);
}

static void test_mpsc_push_many_is_all_or_nothing_and_contiguous(void)
{
    hft_mpsc_queue *q;
    CHECK_EQ_INT(hft_mpsc_queue_create(4, sizeof(record16), &q), HFT_OK);
    record16 three[3] = {{1, 0}, {1, 1}, {1, 2}}, two[2] = {{2, 0}, {2, 1}}, out;
    CHECK_EQ_INT(hft_mpsc_queue_try_push_many(q, three, 3), HFT_OK);
    CHECK_EQ_INT(hft_mpsc_queue_try_push_many(q, two, 2), HFT_EAGAIN); /* one slot free: none pushed */
    CHECK_EQ_INT(hft_mpsc_queue_size_approx(q), 3);
    CHECK_EQ_INT(hft_mpsc_queue_try_pop(q, &out), HFT_OK);
    CHECK_EQ_INT(hft_mpsc_queue_try_push_many(q, two, 2), HFT_OK); /* wraps around the ring */
    uint64_t want[4][2] = {{1, 1}, {1, 2}, {2, 0}, {2, 1}};
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(hft_mpsc_queue_try_pop(q, &out), HFT_OK);
        CHECK(out.producer == want[i][0] && out.seq == want[i][1]);
    }
    CHECK_EQ_INT(hft_mpsc_queue_try_push_many(q, NULL, 0), HFT_OK);
    record16 five[5] = {{0, 0}};
    CHECK_EQ_INT(hft_mpsc_queue_try_push_many(q, five, 5), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_try_push_many(NULL, five, 1), HFT_EINVAL);
    hft_mpsc_queue_destroy(q);
}

/* Producers push runs of 3 while others push too: every run arrives whole and in order. */
#define PUSH_MANY_RUNS 20000
static void *mpsc_push_many_produce(void *arg)
{
    const mpsc_stress_producer *p = arg;
    for (uint64_t run = 0; run < PUSH_MANY_RUNS; run++) {
        record16 records[3] = {{p->id, 3 * run}, {p->id, 3 * run + 1}, {p->id, 3 * run + 2}};
        while (hft_mpsc_queue_try_push_many(p->stress->queue, records, 3) == HFT_EAGAIN) {
        }
    }
    return NULL;
}

static void test_mpsc_push_many_runs_stay_whole_under_contention(void)
{
    mpsc_stress s = {.per_producer = 3 * PUSH_MANY_RUNS};
    CHECK_EQ_INT(hft_mpsc_queue_create(16, sizeof(record16), &s.queue), HFT_OK);
    pthread_t threads[2];
    mpsc_stress_producer producers[2] = {{&s, 0}, {&s, 1}};
    for (int i = 0; i < 2; i++) pthread_create(&threads[i], NULL, mpsc_push_many_produce, &producers[i]);
    uint64_t expected[2] = {0, 0}, received = 0, bad = 0, last_producer = 2, in_run = 0;
    record16 batch[32];
    while (received < 2 * s.per_producer) {
        size_t popped = 0;
        if (hft_mpsc_queue_pop_many_wait(s.queue, batch, 32, &popped, 10000 * MS) != HFT_OK) break;
        for (size_t i = 0; i < popped; i++) {
            record16 r = batch[i];
            if (r.producer > 1 || r.seq != expected[r.producer]++) bad++;
            /* Within a run of 3 no other producer's record appears. */
            if (in_run > 0 && r.producer != last_producer) bad++;
            in_run = (in_run + 1) % 3;
            last_producer = r.producer;
        }
        received += popped;
    }
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    CHECK_EQ_INT(received, 2 * s.per_producer);
    CHECK_EQ_INT(bad, 0);
    hft_mpsc_queue_destroy(s.queue);
}

typedef struct mpsc_blocked_call {
    hft_mpsc_queue *queue;
    record16 record;
    int rc;
} mpsc_blocked_call;

static void *mpsc_pop_wait_thread(void *arg)
{
    mpsc_blocked_call *c = arg;
    c->rc = hft_mpsc_queue_pop_wait(c->queue, &c->record, -1);
    return NULL;
}

static void *mpsc_push_wait_thread(void *arg)
{
    mpsc_blocked_call *c = arg;
    c->rc = hft_mpsc_queue_push_wait(c->queue, &c->record, -1);
    return NULL;
}

static void test_mpsc_blocking_timeouts_and_close(void)
{
    hft_mpsc_queue *queue;
    CHECK_EQ_INT(hft_mpsc_queue_create(2, sizeof(record16), &queue), HFT_OK);
    record16 r = {0, 0};
    CHECK_EQ_INT(hft_mpsc_queue_pop_wait(queue, &r, 0), HFT_ETIMEDOUT);
    int64_t before = hft_wait_now_ns();
    CHECK_EQ_INT(hft_mpsc_queue_pop_wait(queue, &r, 15 * MS), HFT_ETIMEDOUT);
    CHECK(hft_wait_now_ns() - before >= 15 * MS);

    /* A parked consumer is woken by a push. */
    mpsc_blocked_call consumer = {.queue = queue, .rc = 1};
    pthread_t thread;
    pthread_create(&thread, NULL, mpsc_pop_wait_thread, &consumer);
    sleep_ms(30);
    r = (record16){9, 7};
    CHECK_EQ_INT(hft_mpsc_queue_push_wait(queue, &r, -1), HFT_OK);
    pthread_join(thread, NULL);
    CHECK_EQ_INT(consumer.rc, HFT_OK);
    CHECK_EQ_INT(consumer.record.seq, 7);

    /* Two producers parked on a full queue are both woken as it drains. */
    CHECK_EQ_INT(hft_mpsc_queue_try_push(queue, &r), HFT_OK);
    CHECK_EQ_INT(hft_mpsc_queue_try_push(queue, &r), HFT_OK);
    CHECK_EQ_INT(hft_mpsc_queue_push_wait(queue, &r, 5 * MS), HFT_ETIMEDOUT);
    mpsc_blocked_call producers[2] = {{queue, {1, 100}, 1}, {queue, {2, 200}, 1}};
    pthread_t producer_threads[2];
    for (int i = 0; i < 2; i++) {
        pthread_create(&producer_threads[i], NULL, mpsc_push_wait_thread, &producers[i]);
    }
    sleep_ms(30);
    record16 out[4];
    size_t popped = 0, total = 0;
    while (total < 4) {
        CHECK_EQ_INT(hft_mpsc_queue_pop_many_wait(queue, out, 4, &popped, 10000 * MS), HFT_OK);
        total += popped;
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(producer_threads[i], NULL);
        CHECK_EQ_INT(producers[i].rc, HFT_OK);
    }

    /* close wakes a parked consumer with HFT_EINVAL. */
    consumer.rc = 1;
    pthread_create(&thread, NULL, mpsc_pop_wait_thread, &consumer);
    sleep_ms(20);
    hft_mpsc_queue_close(queue);
    pthread_join(thread, NULL);
    CHECK_EQ_INT(consumer.rc, HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_queue_try_push(queue, &r), HFT_OK);
    CHECK_EQ_INT(hft_mpsc_queue_pop_wait(queue, &r, -1), HFT_OK);
    CHECK_EQ_INT(hft_mpsc_queue_pop_wait(queue, &r, -1), HFT_EINVAL);
    hft_mpsc_queue_destroy(queue);
}

/* --- benchmarks run and refuse bad arguments ------------------------------------------- */

static void test_benchmarks_run(void)
{
    double ops = 0;
    CHECK_EQ_INT(hft_spsc_bench(20000, 16, &ops), HFT_OK);
    CHECK(ops > 0);
    ops = 0;
    CHECK_EQ_INT(hft_spsc_bench(5000, 64, &ops), HFT_OK);
    CHECK(ops > 0);
    ops = 0;
    CHECK_EQ_INT(hft_mpsc_bench(5000, 3, 64, &ops), HFT_OK);
    CHECK(ops > 0);
    CHECK_EQ_INT(hft_spsc_bench(100, 8, &ops), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_bench(0, 16, &ops), HFT_EINVAL);
    CHECK_EQ_INT(hft_spsc_bench(100, 16, NULL), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_bench(100, 0, 16, &ops), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_bench(100, 65, 16, &ops), HFT_EINVAL);
    CHECK_EQ_INT(hft_mpsc_bench(100, 2, 5000, &ops), HFT_EINVAL);
}

int main(void)
{
    RUN(test_waitpoint_parks_and_wakes);
    RUN(test_waitpoint_parks_and_wakes_without_membarrier);
    RUN(test_waitpoint_ping_pong);
    RUN(test_waitpoint_ping_pong_without_membarrier);
    RUN(test_waitpoint_timeouts);
    RUN(test_spsc_bad_arguments);
    RUN(test_spsc_full_and_empty);
    RUN(test_spsc_batches_wrap_around);
    RUN(test_spsc_two_threads_keep_order);
    RUN(test_spsc_parked_consumer_is_woken);
    RUN(test_spsc_parked_producer_is_woken);
    RUN(test_spsc_timeouts);
    RUN(test_spsc_close_wakes_and_still_drains);
    RUN(test_mpsc_bad_arguments);
    RUN(test_mpsc_full_and_empty);
    RUN(test_mpsc_producers_keep_their_order);
    RUN(test_mpsc_push_many_is_all_or_nothing_and_contiguous);
    RUN(test_mpsc_push_many_runs_stay_whole_under_contention);
    RUN(test_mpsc_blocking_timeouts_and_close);
    RUN(test_benchmarks_run);
    return TEST_SUMMARY("queues");
}
