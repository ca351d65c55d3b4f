/* journal_writer.c -- the journal's group-commit writer thread (see hft_journal.h). */
#include "hft_journal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hft_cpu_keeper.h"
#include "hft_crc32.h"
#include "hft_wait.h"

struct hft_journal_writer {
    /* Set at start, then owned by the writer thread. */
    hft_mpsc_queue *queue;
    char *directory;
    int fd;
    int notify_fd;
    int sync_before_ack;
    size_t slot_bytes;
    size_t batch_max_records;
    uint32_t max_payload_bytes;
    uint64_t segment_bytes;     /* end of the records in the active segment */
    uint64_t file_bytes;        /* the active segment's size, preallocated space included */
    uint64_t preallocate_bytes; /* 0 once fallocate proved unsupported */
    uint64_t segment_max_bytes;
    uint64_t expected_seq;      /* next record's sequence number */
    uint32_t space_retry_max_ms;
    unsigned char *slots;       /* batch_max_records slots popped at a time */
    unsigned char *out;         /* the framed batch */
    size_t out_len;
    size_t out_cap;
    size_t record_start;        /* offset in `out` of the record being framed */
    uint32_t record_remaining;  /* its payload bytes still to come in continuation slots */
    uint32_t record_crc;
    pthread_t thread;

    /* Status: written by the writer thread only, read by anyone (atomics). */
    uint64_t acked_seq;
    uint64_t synced_seq;
    uint64_t batches;
    uint64_t records;
    uint64_t fsyncs;
    uint64_t bytes;
    uint64_t rotations;
    uint64_t rotations_deferred;
    uint64_t stalls;
    uint64_t space_retries;
    uint64_t blocked_bytes;
    int blocked;
    int blocked_error;
    int failed;
    int error;
    char message[192];  /* written before `failed` is released, read only after it is acquired */

    /* Requests from the controlling thread (atomics). */
    int rotate_requested;
    int abort_requested;
    uint32_t commit_window_us;  /* see hft_journal_writer_set_commit_window_us */
    hft_cpu_keeper *keeper;     /* see hft_journal_writer_keep_cpu; set once, read with acquire */
    int loop_polling;           /* see hft_journal_writer_poll_begin; seq_cst with acked_seq */

    /* fdatasync latency counts (hft_journal_writer_sync_latency): the writer thread adds, anyone
     * reads, one relaxed atomic word each. */
    uint64_t sync_ns_counts[HFT_JOURNAL_SYNC_BUCKETS];
};

/* Bucket of a latency of `ns` nanoseconds (see HFT_JOURNAL_SYNC_BUCKETS): exact below 32, then the
 * power of two's 16 sub-buckets, the value's 4 bits after its leading one. */
static size_t sync_bucket_of(int64_t ns) {
    if (ns < 32) return ns < 0 ? 0 : (size_t)ns;
    int exponent = 63 - __builtin_clzll((unsigned long long)ns); /* 5 .. 62 */
    size_t sub = (size_t)(((unsigned long long)ns >> (exponent - 4)) & 15u);
    return 32u + (size_t)(exponent - 5) * 16u + sub;
}

int hft_journal_sync_bucket(size_t index, int64_t *low, int64_t *width) {
    if (!low || !width || index >= HFT_JOURNAL_SYNC_BUCKETS) return HFT_EINVAL;
    if (index < 32) {
        *low = (int64_t)index;
        *width = 1;
        return HFT_OK;
    }
    int exponent = 5 + (int)((index - 32) / 16);
    int64_t sub = (int64_t)((index - 32) % 16);
    *width = (int64_t)1 << (exponent - 4);
    *low = (16 + sub) * *width;
    return HFT_OK;
}

int hft_journal_writer_sync_latency(const hft_journal_writer *w, uint64_t *counts, size_t n) {
    if (!w || (!counts && n)) return HFT_EINVAL;
    if (n > HFT_JOURNAL_SYNC_BUCKETS) n = HFT_JOURNAL_SYNC_BUCKETS;
    for (size_t i = 0; i < n; i++) counts[i] = __atomic_load_n(&w->sync_ns_counts[i], __ATOMIC_RELAXED);
    return HFT_OK;
}

static void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static void store(uint64_t *field, uint64_t value) { __atomic_store_n(field, value, __ATOMIC_RELEASE); }
static uint64_t load(const uint64_t *field) { return __atomic_load_n(field, __ATOMIC_ACQUIRE); }

static void notify(hft_journal_writer *w) {
    if (w->notify_fd < 0) return;
    uint64_t one = 1;
    /* An eventfd write only fails on counter overflow or a bad fd; the reader
     * also polls the status, so a lost wake-up delays, never loses, an ack. */
    ssize_t ignored = write(w->notify_fd, &one, sizeof one);
    (void)ignored;
}

/* Stop for good: record why, publish `failed`, wake the loop. */
static void fail(hft_journal_writer *w, int error, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(w->message, sizeof w->message, format, args);
    va_end(args);
    if (error) {
        size_t used = strlen(w->message);
        snprintf(w->message + used, sizeof w->message - used, ": %s", strerror(error));
    }
    w->error = error;
    __atomic_store_n(&w->failed, 1, __ATOMIC_RELEASE);
    notify(w);
}

/* Errors a wait can cure: the filesystem (or the user's quota) is full. */
static int out_of_space(int error) { return error == ENOSPC || error == EDQUOT; }

static int reserve(hft_journal_writer *w, size_t more) {
    if (w->out_len + more <= w->out_cap) return 0;
    size_t cap = w->out_cap ? w->out_cap : 64 * 1024;
    while (cap < w->out_len + more) cap *= 2;
    unsigned char *grown = realloc(w->out, cap);
    if (!grown) return -1;
    w->out = grown;
    w->out_cap = cap;
    return 0;
}

static void finish_record(hft_journal_writer *w) {
    put_u32(w->out + w->record_start + 16, w->record_crc);
}

/* Frame `count` popped slots into `out`; a record may span calls. Returns 0, or -1 after fail(). */
static int frame_slots(hft_journal_writer *w, size_t count, size_t *records_done) {
    const size_t inline_bytes = w->slot_bytes - HFT_JOURNAL_SLOT_HEADER_BYTES;
    for (size_t i = 0; i < count; i++) {
        const unsigned char *slot = w->slots + i * w->slot_bytes;
        if (w->record_remaining) { /* a continuation slot: raw payload */
            size_t take = w->record_remaining < w->slot_bytes ? w->record_remaining : w->slot_bytes;
            memcpy(w->out + w->out_len, slot, take);
            w->record_crc = hft_crc32(w->record_crc, slot, take);
            w->out_len += take;
            w->record_remaining -= (uint32_t)take;
            if (!w->record_remaining) {
                finish_record(w);
                (*records_done)++;
            }
            continue;
        }
        uint64_t seq = get_u64(slot);
        uint32_t length = get_u32(slot + 8);
        unsigned char record_type = slot[12];
        unsigned char flags = slot[13];
        if (seq != w->expected_seq) {
            fail(w, 0, "journal slot out of order: seq %llu where %llu was expected",
                 (unsigned long long)seq, (unsigned long long)w->expected_seq);
            return -1;
        }
        int continued = (flags & HFT_JOURNAL_SLOT_FLAG_CONTINUED) != 0;
        if (length > w->max_payload_bytes || continued != (length > inline_bytes)) {
            fail(w, 0, "journal slot for seq %llu is malformed (payload %u bytes, flags %#x)",
                 (unsigned long long)seq, length, flags);
            return -1;
        }
        if (reserve(w, HFT_JOURNAL_RECORD_HEADER_BYTES + (size_t)length)) {
            fail(w, ENOMEM, "journal batch buffer");
            return -1;
        }
        unsigned char *header = w->out + w->out_len;
        header[0] = 'H';
        header[1] = 'J';
        header[2] = 1; /* format version */
        header[3] = record_type;
        put_u32(header + 4, length);
        put_u64(header + 8, seq);
        w->record_start = w->out_len;
        w->record_crc = hft_crc32(0, header, 16);
        w->out_len += HFT_JOURNAL_RECORD_HEADER_BYTES;
        size_t first = length < inline_bytes ? length : inline_bytes;
        memcpy(w->out + w->out_len, slot + HFT_JOURNAL_SLOT_HEADER_BYTES, first);
        w->record_crc = hft_crc32(w->record_crc, slot + HFT_JOURNAL_SLOT_HEADER_BYTES, first);
        w->out_len += first;
        w->record_remaining = length - (uint32_t)first;
        w->expected_seq++;
        if (!w->record_remaining) {
            finish_record(w);
            (*records_done)++;
        }
    }
    return 0;
}

static int fsync_directory(const char *directory) {
    int dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return errno;
    int rc = fsync(dir) ? errno : 0;
    close(dir);
    return rc;
}

/* Start the segment whose first record is `first_seq`. */
static int rotate(hft_journal_writer *w, uint64_t first_seq) {
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/%020llu.journal", w->directory, (unsigned long long)first_seq);
    if (n < 0 || (size_t)n >= sizeof path) {
        fail(w, ENAMETOOLONG, "journal segment path");
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int error = errno;
        /* No room for a new segment: the records carry on in this one, and the next batch tries again. */
        if (out_of_space(error)) {
            store(&w->rotations_deferred, w->rotations_deferred + 1);
            return 0;
        }
        fail(w, error, "journal: cannot create segment %s", path);
        return -1;
    }
    int rc = fsync_directory(w->directory);
    if (rc) {
        close(fd);
        fail(w, rc, "journal: cannot fsync directory %s", w->directory);
        return -1;
    }
    /* Give back the full segment's reserved tail (up to preallocate_bytes of zeros): best effort, its
     * records are durable already and a reader stops at zeros anyway. */
    if (w->file_bytes > w->segment_bytes) {
        int ignored = ftruncate(w->fd, (off_t)w->segment_bytes);
        (void)ignored;
    }
    close(w->fd);
    w->fd = fd;
    w->segment_bytes = 0;
    w->file_bytes = 0;
    store(&w->rotations, w->rotations + 1);
    return 0;
}

static int sync_segment(hft_journal_writer *w, uint64_t through) {
    int64_t start = hft_wait_now_ns();
    if (fdatasync(w->fd)) {
        fail(w, errno, "journal: fdatasync failed after seq %llu", (unsigned long long)through);
        return -1;
    }
    uint64_t *count = &w->sync_ns_counts[sync_bucket_of(hft_wait_now_ns() - start)];
    __atomic_store_n(count, __atomic_load_n(count, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
    store(&w->fsyncs, w->fsyncs + 1);
    store(&w->synced_seq, through);
    return 0;
}

/* The writer cannot go on until space is freed: publish `blocked` (once per stall), wake the loop,
 * and sleep a little longer each time (1 ms doubling up to space_retry_max_ms). Returns 0 to retry,
 * or -1 after fail() once an abort was requested. */
static int wait_for_space(hft_journal_writer *w, int error, uint64_t bytes, unsigned *attempt) {
    if (__atomic_load_n(&w->abort_requested, __ATOMIC_ACQUIRE)) {
        fail(w, error, "journal: stopped while waiting for %llu bytes of disk space; records from seq %llu on "
             "were never written nor acknowledged", (unsigned long long)bytes,
             (unsigned long long)(load(&w->acked_seq) + 1));
        return -1;
    }
    if (!__atomic_load_n(&w->blocked, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&w->blocked_error, error, __ATOMIC_RELAXED);
        store(&w->blocked_bytes, bytes);
        store(&w->stalls, w->stalls + 1);
        __atomic_store_n(&w->blocked, 1, __ATOMIC_RELEASE);
        notify(w);
    } else {
        store(&w->blocked_bytes, bytes);
    }
    store(&w->space_retries, w->space_retries + 1);
    uint64_t delay_ms = 1ull << (*attempt < 16 ? *attempt : 16);
    if (delay_ms > w->space_retry_max_ms) delay_ms = w->space_retry_max_ms;
    (*attempt)++;
    struct timespec pause = {.tv_sec = (time_t)(delay_ms / 1000), .tv_nsec = (long)(delay_ms % 1000) * 1000000L};
    while (nanosleep(&pause, &pause) && errno == EINTR) {
    }
    return 0;
}

/* Space came back (or was never short): clear `blocked`. Returns 1 when the writer was blocked:
 * the caller's ack then notifies the loop even while it polls. */
static int space_available(hft_journal_writer *w) {
    if (__atomic_load_n(&w->blocked, __ATOMIC_ACQUIRE)) {
        store(&w->blocked_bytes, 0);
        __atomic_store_n(&w->blocked, 0, __ATOMIC_RELEASE);
        return 1;
    }
    return 0;
}

/* One attempt to make sure `length` more bytes after the records land in reserved space: a whole
 * preallocate_bytes chunk when the disk has it, else halving steps down to exactly what the batch
 * needs. 0 when reserved (or nothing to do), ENOSPC/EDQUOT when even that does not fit (retry
 * later), -1 after fail() on any other error. The one sync after an extension persists the new
 * size; the next ones do not. */
static int reserve_space(hft_journal_writer *w, size_t length) {
    uint64_t needed = w->segment_bytes + length;
    if (!w->preallocate_bytes || needed <= w->file_bytes) return 0;
    uint64_t chunk = w->preallocate_bytes;
    uint64_t minimum = needed - w->file_bytes;
    uint64_t step = (needed + chunk - 1) / chunk * chunk - w->file_bytes;
    for (;;) {
        int rc = posix_fallocate(w->fd, (off_t)w->file_bytes, (off_t)step);
        if (rc == 0) {
            w->file_bytes += step;
            return 0;
        }
        if (rc == EOPNOTSUPP || rc == EINVAL || rc == ENOSYS) {
            w->preallocate_bytes = 0; /* this filesystem cannot: plain appends from now on */
            return 0;
        }
        if (rc == EINTR) continue;
        if (!out_of_space(rc)) {
            fail(w, rc, "journal: cannot reserve %llu bytes", (unsigned long long)step);
            return -1;
        }
        if (step == minimum) return rc;
        step = step / 2 > minimum ? step / 2 : minimum;
    }
}

/* Write, sync and acknowledge one framed batch ending at `last_seq`. Out of disk space (reserving
 * or writing), the writer keeps the batch and retries until it fits (see wait_for_space); nothing
 * of it is acknowledged before then. */
static int commit(hft_journal_writer *w, uint64_t last_seq, size_t records) {
    unsigned attempt = 0;
    /* Framed already, the batch's records are last_seq - records + 1 .. last_seq. */
    if (__atomic_exchange_n(&w->rotate_requested, 0, __ATOMIC_ACQ_REL) && w->segment_bytes > 0 &&
        rotate(w, last_seq - records + 1))
        return -1;
    for (;;) {
        int rc = reserve_space(w, w->out_len);
        if (rc == 0) break;
        if (rc < 0 || wait_for_space(w, rc, w->out_len, &attempt)) return -1;
    }
    const unsigned char *p = w->out;
    size_t left = w->out_len;
    uint64_t offset = w->segment_bytes;
    while (left) {
        ssize_t written = pwrite(w->fd, p, left, (off_t)offset);
        if (written < 0) {
            int error = errno;
            if (error == EINTR) continue;
            /* Plain appends (or a filesystem that allocates on write): wait for space, then write
             * the rest at the same offset. */
            if (out_of_space(error)) {
                if (wait_for_space(w, error, left, &attempt)) return -1;
                continue;
            }
            fail(w, error, "journal: write of %zu bytes failed before seq %llu", left,
                 (unsigned long long)last_seq);
            return -1;
        }
        p += written;
        offset += (uint64_t)written;
        left -= (size_t)written;
    }
    if (offset > w->file_bytes) w->file_bytes = offset;
    w->segment_bytes += w->out_len;
    store(&w->bytes, w->bytes + w->out_len);
    if (w->sync_before_ack && sync_segment(w, last_seq)) return -1;
    int unblocked = space_available(w);
    /* Counters first: whoever sees the new acked_seq also sees the batch counted. */
    store(&w->records, w->records + records);
    store(&w->batches, w->batches + 1);
    /* Sequentially consistent pair with hft_journal_writer_poll_end's (store the flag, load the
     * seq): either this load sees the loop still polling, and the loop's re-read after it stops
     * sees this ack, or the loop has stopped and gets the signal. */
    __atomic_store_n(&w->acked_seq, last_seq, __ATOMIC_SEQ_CST);
    if (unblocked || !__atomic_load_n(&w->loop_polling, __ATOMIC_SEQ_CST)) notify(w);
    if (!w->sync_before_ack && sync_segment(w, last_seq)) return -1;
    if (w->segment_bytes >= w->segment_max_bytes) return rotate(w, w->expected_seq);
    return 0;
}

/* Waits until a slot arrives, then takes every slot that is there: woken by the keeper
 * while it spins (the producer then pushes without a syscall), else parked on the queue. */
static int take_slots(hft_journal_writer *w, size_t *popped) {
    hft_cpu_keeper *keeper = __atomic_load_n(&w->keeper, __ATOMIC_ACQUIRE);
    int rc = hft_mpsc_queue_pop_many(w->queue, w->slots, w->batch_max_records, popped);
    if (rc != HFT_EAGAIN) return rc;
    if (keeper && hft_cpu_keeper_wait(keeper))
        rc = hft_mpsc_queue_pop_many(w->queue, w->slots, w->batch_max_records, popped);
    /* The keeper handed the writer back, or the queue was closed (pop_many_wait says so). */
    if (rc == HFT_EAGAIN) rc = hft_mpsc_queue_pop_many_wait(w->queue, w->slots, w->batch_max_records, popped, -1);
    return rc;
}

static void *writer_main(void *argument) {
    hft_journal_writer *w = argument;
    for (;;) {
        size_t popped = 0, records = 0, taken;
        int rc = take_slots(w, &popped);
        if (rc == HFT_EINVAL) return NULL; /* closed and drained: a normal stop */
        if (rc != HFT_OK) {
            fail(w, 0, "journal queue wait failed (%d)", rc);
            return NULL;
        }
        w->out_len = 0;
        if (frame_slots(w, popped, &records)) return NULL;
        taken = popped;
        /* Group commit: whatever the producer published meanwhile joins this batch. */
        while (taken < w->batch_max_records) {
            rc = hft_mpsc_queue_pop_many(w->queue, w->slots, w->batch_max_records - taken, &popped);
            if (rc != HFT_OK || !popped) break;
            if (frame_slots(w, popped, &records)) return NULL;
            taken += popped;
        }
        /* Commit window: wait a little longer for more records to share this batch's fdatasync. */
        uint32_t window_us = __atomic_load_n(&w->commit_window_us, __ATOMIC_RELAXED);
        if (window_us && taken < w->batch_max_records) {
            struct timespec start, now;
            clock_gettime(CLOCK_MONOTONIC, &start);
            for (;;) {
                clock_gettime(CLOCK_MONOTONIC, &now);
                int64_t waited_ns =
                    (int64_t)(now.tv_sec - start.tv_sec) * 1000000000 + (now.tv_nsec - start.tv_nsec);
                int64_t left_ns = (int64_t)window_us * 1000 - waited_ns;
                if (left_ns <= 0 || taken >= w->batch_max_records) break;
                rc = hft_mpsc_queue_pop_many_wait(w->queue, w->slots, w->batch_max_records - taken, &popped,
                                                  left_ns);
                if (rc != HFT_OK || !popped) break; /* the window passed, or the queue closed */
                if (frame_slots(w, popped, &records)) return NULL;
                taken += popped;
            }
        }
        /* A record's slots are pushed together: the rest of a split one is moments away. */
        while (w->record_remaining) {
            size_t want = (w->record_remaining + w->slot_bytes - 1) / w->slot_bytes;
            if (want > w->batch_max_records) want = w->batch_max_records;
            rc = hft_mpsc_queue_pop_many_wait(w->queue, w->slots, want, &popped, -1);
            if (rc != HFT_OK) {
                fail(w, 0, "journal queue closed in the middle of record %llu",
                     (unsigned long long)(w->expected_seq - 1));
                return NULL;
            }
            if (frame_slots(w, popped, &records)) return NULL;
        }
        if (commit(w, w->expected_seq - 1, records)) return NULL;
    }
}

int hft_journal_writer_start(hft_mpsc_queue *queue, const hft_journal_writer_config *config,
                             hft_journal_writer **out) {
    if (!queue || !config || !out || !config->directory || config->fd < 0 || config->next_seq == 0 ||
        config->batch_max_records == 0 || config->segment_max_bytes == 0)
        return HFT_EINVAL;
    size_t slot_bytes = hft_mpsc_queue_record_size(queue);
    if (slot_bytes < HFT_JOURNAL_SLOT_HEADER_BYTES + 8) return HFT_EINVAL;
    hft_journal_writer *w = calloc(1, sizeof *w);
    if (!w) return HFT_ENOMEM;
    w->queue = queue;
    w->directory = strdup(config->directory);
    w->slots = malloc(config->batch_max_records * slot_bytes);
    if (!w->directory || !w->slots) goto nomem;
    w->fd = config->fd;
    w->notify_fd = config->notify_fd;
    w->sync_before_ack = config->sync_before_ack != 0;
    w->slot_bytes = slot_bytes;
    w->batch_max_records = config->batch_max_records;
    w->max_payload_bytes = config->max_payload_bytes;
    w->segment_bytes = config->segment_bytes;
    w->preallocate_bytes = config->preallocate_bytes;
    struct stat st;
    if (fstat(config->fd, &st)) goto bad_fd;
    w->file_bytes = (uint64_t)st.st_size > w->segment_bytes ? (uint64_t)st.st_size : w->segment_bytes;
    w->segment_max_bytes = config->segment_max_bytes;
    w->expected_seq = config->next_seq;
    w->space_retry_max_ms = config->space_retry_max_ms ? config->space_retry_max_ms : 100;
    w->acked_seq = config->next_seq - 1;
    w->synced_seq = config->next_seq - 1;
    if (pthread_create(&w->thread, NULL, writer_main, w)) goto nomem;
    pthread_setname_np(w->thread, "hft-journal"); /* shows in top -H, ps -L and /proc/<pid>/task */
    *out = w;
    return HFT_OK;
bad_fd:
    free(w->slots);
    free(w->directory);
    free(w);
    return HFT_EINVAL;
nomem:
    free(w->slots);
    free(w->directory);
    free(w);
    return HFT_ENOMEM;
}

int hft_journal_writer_set_cpus(hft_journal_writer *w, const int *cpus, size_t count) {
    if (!w || !cpus || count == 0) return HFT_EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    for (size_t i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) return HFT_EINVAL;
        CPU_SET(cpus[i], &set);
    }
    int rc = pthread_setaffinity_np(w->thread, sizeof set, &set);
    return rc ? -rc : HFT_OK;
}

int hft_journal_writer_keep_cpu(hft_journal_writer *w, uint32_t spin_us, const int *cpus, size_t count) {
    if (!w || spin_us == 0 || spin_us > HFT_JOURNAL_MAX_KEEP_CPU_US || !cpus || count == 0) return HFT_EINVAL;
    if (__atomic_load_n(&w->keeper, __ATOMIC_ACQUIRE)) return HFT_EINVAL;
    hft_cpu_keeper *keeper;
    int rc = hft_cpu_keeper_create((int64_t)spin_us * 1000, cpus, count, hft_mpsc_queue_poppable, w->queue,
                                   &keeper);
    if (rc) return rc;
    __atomic_store_n(&w->keeper, keeper, __ATOMIC_RELEASE);
    return HFT_OK;
}

void hft_journal_writer_keep_cpu_awake(hft_journal_writer *w) {
    hft_cpu_keeper *keeper = __atomic_load_n(&w->keeper, __ATOMIC_ACQUIRE);
    if (keeper) hft_cpu_keeper_touch(keeper);
}

void hft_journal_writer_keep_cpu_awake_only(hft_journal_writer *w) {
    hft_cpu_keeper *keeper = __atomic_load_n(&w->keeper, __ATOMIC_ACQUIRE);
    if (keeper) hft_cpu_keeper_touch_cpu_only(keeper);
}

void hft_journal_writer_kick(hft_journal_writer *w) {
    hft_cpu_keeper *keeper = __atomic_load_n(&w->keeper, __ATOMIC_ACQUIRE);
    if (keeper) hft_cpu_keeper_kick(keeper, HFT_JOURNAL_KEEPER_STALE_NS);
}

void hft_journal_writer_poll_begin(hft_journal_writer *w) {
    __atomic_store_n(&w->loop_polling, 1, __ATOMIC_SEQ_CST);
}

uint64_t hft_journal_writer_poll_end(hft_journal_writer *w) {
    __atomic_store_n(&w->loop_polling, 0, __ATOMIC_SEQ_CST);
    return __atomic_load_n(&w->acked_seq, __ATOMIC_SEQ_CST);
}

void hft_journal_writer_keeper_stats(const hft_journal_writer *w, hft_cpu_keeper_stats *out) {
    hft_cpu_keeper_stats none = {0, 0, 0, 0};
    hft_cpu_keeper *keeper = __atomic_load_n(&w->keeper, __ATOMIC_ACQUIRE);
    if (keeper) hft_cpu_keeper_stats_get(keeper, out);
    else *out = none;
}

void hft_journal_writer_status_get(const hft_journal_writer *w, hft_journal_writer_status *out) {
    memset(out, 0, sizeof *out);
    out->failed = __atomic_load_n(&w->failed, __ATOMIC_ACQUIRE);
    out->acked_seq = load(&w->acked_seq);
    out->synced_seq = load(&w->synced_seq);
    out->batches = load(&w->batches);
    out->records = load(&w->records);
    out->fsyncs = load(&w->fsyncs);
    out->bytes = load(&w->bytes);
    out->rotations = load(&w->rotations);
    out->rotations_deferred = load(&w->rotations_deferred);
    out->stalls = load(&w->stalls);
    out->space_retries = load(&w->space_retries);
    out->blocked = __atomic_load_n(&w->blocked, __ATOMIC_ACQUIRE);
    if (out->blocked) {
        out->blocked_bytes = load(&w->blocked_bytes);
        out->blocked_error = __atomic_load_n(&w->blocked_error, __ATOMIC_RELAXED);
    }
    if (out->failed) {
        out->error = w->error;
        memcpy(out->message, w->message, sizeof out->message);
    }
}

int hft_journal_writer_request_rotation(hft_journal_writer *w) {
    if (!w) return HFT_EINVAL;
    __atomic_store_n(&w->rotate_requested, 1, __ATOMIC_RELEASE);
    return HFT_OK;
}

int hft_journal_writer_set_commit_window_us(hft_journal_writer *w, uint32_t window_us) {
    if (!w || window_us > HFT_JOURNAL_MAX_COMMIT_WINDOW_US) return HFT_EINVAL;
    __atomic_store_n(&w->commit_window_us, window_us, __ATOMIC_RELAXED);
    return HFT_OK;
}

uint32_t hft_journal_writer_commit_window_us(const hft_journal_writer *w) {
    return w ? __atomic_load_n(&w->commit_window_us, __ATOMIC_RELAXED) : 0;
}

int hft_journal_writer_abort(hft_journal_writer *w) {
    if (!w) return HFT_EINVAL;
    __atomic_store_n(&w->abort_requested, 1, __ATOMIC_RELEASE);
    return HFT_OK;
}

int hft_journal_writer_join(hft_journal_writer *w, hft_journal_writer_status *final_status) {
    if (!w) return HFT_EINVAL;
    pthread_join(w->thread, NULL);
    hft_cpu_keeper_destroy(w->keeper);
    if (final_status) hft_journal_writer_status_get(w, final_status);
    if (w->fd >= 0) close(w->fd);
    free(w->out);
    free(w->slots);
    free(w->directory);
    free(w);
    return HFT_OK;
}
