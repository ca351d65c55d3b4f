/*
 * hft_journal.h -- the journal's group-commit writer thread.
 *
 * Why in C: the writer must never need the GIL. A Python writer thread woken
 * by a new record first waits for the event loop to let go of the GIL, and
 * again after its fsync to schedule the acknowledgement; on a 2-core machine
 * those two waits cost ~100 us per batch, more than the fsync itself. This
 * thread takes records from an hft_mpsc_queue, frames them, writes the batch
 * with one write(), makes it durable with one fdatasync() (group commit:
 * whatever arrived meanwhile shares the next one), publishes the highest
 * acknowledgeable sequence number and writes to an eventfd the event loop
 * watches. The loop reads the status and resolves its waiters.
 *
 * Queue slots (slot_bytes each, little-endian), pushed by ONE producer thread
 * (the event loop), so the slots of a record are consecutive:
 *
 *     offset size field
 *     0      8    seq             consecutive, starting at config.next_seq
 *     8      4    payload_length
 *     12     1    record_type
 *     13     1    flags           bit 0: the payload continues in the next slots
 *     14     2    (zero)
 *     16     ..   payload         first slot_bytes - 16 bytes of it
 *
 * A record with flag bit 0 is followed by ceil((payload_length - (slot_bytes -
 * 16)) / slot_bytes) continuation slots holding the rest of the payload, raw.
 * The producer pushes a record's slots in one go (and only when they all fit),
 * so a writer that has the first slot gets the rest within microseconds.
 *
 * On-disk record (little-endian), the format services/execution/journal.py reads:
 *
 *     0  2 magic "HJ" | 2 1 version 1 | 3 1 record_type | 4 4 payload_length
 *     8  8 seq        | 16 4 crc32 (zlib's) over bytes 0..15 then the payload
 *     20 .. payload
 *
 * Segments: <directory>/<first seq, 20 digits>.journal. After a batch that
 * leaves the active segment at or past segment_max_bytes (or before the batch
 * after hft_journal_writer_request_rotation) the writer creates the next one
 * (O_EXCL), fsyncs the directory, trims the reserved space off the full one
 * and closes it.
 *
 * Preallocation: records are written with pwrite at the end of the records,
 * into space the writer reserved ahead with fallocate (preallocate_bytes at a
 * time), so a record's fdatasync does not also have to persist a new file
 * size: measured on ext4 here, ~90 us instead of ~130 us per sync. The
 * reserved space reads as zeros; a reader treats an all-zero remainder of a
 * segment as its end. On a filesystem without fallocate the writer simply
 * appends.
 *
 * Full disk: when a whole chunk cannot be reserved (ENOSPC or EDQUOT) the
 * writer tries halving steps down to exactly what the batch in hand needs, so
 * it keeps writing while any room is left. When even that (or a plain append's
 * write) does not fit, the writer keeps the batch, publishes status.blocked = 1
 * (with the errno and the bytes it needs), signals the eventfd, and retries
 * after 1 ms, 2 ms, ... up to space_retry_max_ms between attempts. Nothing of
 * that batch is acknowledged until it is written and synced; once it is,
 * blocked returns to 0 before the acknowledgement's signal. Records queued
 * meanwhile wait in the queue: nothing is lost, nothing is acknowledged early.
 * A segment that cannot be created for lack of space is not a failure either:
 * the records carry on in the active segment and the next batch tries again
 * (status.rotations_deferred counts those). hft_journal_writer_abort makes a
 * blocked writer give up (a failure: the unwritten records are never
 * acknowledged), so a stop need not wait for space.
 *
 * Failure: any other write, fsync, open or format error stops the writer for
 * good: status.failed becomes 1 (with errno and a message), the eventfd is
 * signalled, and nothing after the last acknowledged record is ever
 * acknowledged. An fdatasync error is always final: after one, Linux may have
 * dropped the unsynced pages, so retrying could acknowledge lost data.
 *
 * Threads: start and join from one controlling thread; status_get from any.
 */
#ifndef HFT_JOURNAL_H
#define HFT_JOURNAL_H

#include "hft_common.h"
#include "hft_cpu_keeper.h"
#include "hft_mpsc.h"

#define HFT_JOURNAL_SLOT_HEADER_BYTES 16
#define HFT_JOURNAL_RECORD_HEADER_BYTES 20
#define HFT_JOURNAL_SLOT_FLAG_CONTINUED 1

typedef struct hft_journal_writer hft_journal_writer;

typedef struct hft_journal_writer_config {
    const char *directory;       /* segment directory (copied) */
    int fd;                      /* active segment, open O_WRONLY; the writer owns and closes it */
    uint64_t segment_bytes;      /* where the active segment's records end (the next record goes there) */
    uint64_t preallocate_bytes;  /* reserve this much ahead with fallocate; 0 = plain appends */
    uint64_t segment_max_bytes;  /* rotate once a batch leaves the segment at least this big */
    uint64_t next_seq;           /* sequence number of the first record the writer will see */
    int sync_before_ack;         /* 1: acknowledge after fdatasync (durable); 0: after write, then sync */
    int notify_fd;               /* eventfd written after every acknowledged batch and on failure */
    size_t batch_max_records;    /* at most this many slots per write (>= 1) */
    uint32_t max_payload_bytes;  /* a slot announcing more is a format error */
    uint32_t space_retry_max_ms; /* longest pause between attempts while out of disk space; 0 = 100 */
} hft_journal_writer_config;

typedef struct hft_journal_writer_status {
    uint64_t acked_seq;   /* highest sequence number that may be acknowledged (next_seq - 1 at start) */
    uint64_t synced_seq;  /* highest sequence number covered by a completed fdatasync */
    uint64_t batches;     /* write() calls that completed a batch */
    uint64_t records;
    uint64_t fsyncs;
    uint64_t bytes;       /* bytes written since start */
    uint64_t rotations;   /* segments started since start */
    uint64_t rotations_deferred; /* rotations put off because the new segment found no space */
    uint64_t stalls;      /* times the writer became blocked for lack of space */
    uint64_t space_retries; /* pauses spent waiting for space, over all stalls */
    uint64_t blocked_bytes; /* while blocked: the bytes the batch in hand still needs */
    int blocked;          /* 1 while the writer waits for disk space (read with acquire ordering) */
    int blocked_error;    /* while blocked: ENOSPC or EDQUOT */
    int failed;           /* 1 once the writer stopped on an error */
    int error;            /* errno of that error (0 for a format error) */
    char message[192];    /* what failed, for logs and exceptions */
} hft_journal_writer_status;

/* Start the writer thread on `queue` (the queue must outlive the writer).
 * HFT_EINVAL for bad configuration, HFT_ENOMEM when memory or the thread cannot be had. */
int hft_journal_writer_start(hft_mpsc_queue *queue, const hft_journal_writer_config *config,
                             hft_journal_writer **out);

/* A consistent-enough copy of the counters: acked_seq and failed are read with
 * acquire ordering, so a reader that sees failed == 1 also sees the message. */
void hft_journal_writer_status_get(const hft_journal_writer *writer, hft_journal_writer_status *out);

/* How long each fdatasync of the writer took (the durability an acknowledgement waits for), in
 * nanoseconds, as counts per log-linear bucket: values below 32 exactly, then 16 buckets per power
 * of two (each within 1/16 of its value). Why buckets of the writer's own rather than an
 * hft_histogram: a histogram has one writer and no concurrent reader, while these counts are read
 * by the service's loop (stats, metrics) while the writer thread keeps adding to them; each count
 * is one atomic word, so a copy taken meanwhile may miss the latest fsync but never tears a count.
 * What a client of a lone order waits for is this plus the hand-offs: on a VM it differs from
 * back-to-back fsyncs by as much as the host's idle disk path takes to wake. */
#define HFT_JOURNAL_SYNC_BUCKETS 960

/* Copy the fdatasync latency counts into counts[0 .. n-1] (n at most HFT_JOURNAL_SYNC_BUCKETS;
 * fewer: the first n buckets). Any thread. HFT_EINVAL on NULL. */
int hft_journal_writer_sync_latency(const hft_journal_writer *writer, uint64_t *counts, size_t n);

/* The smallest nanosecond value bucket `index` counts, and its width (values low .. low+width-1).
 * HFT_EINVAL for an index of HFT_JOURNAL_SYNC_BUCKETS or more or NULL outputs. */
int hft_journal_sync_bucket(size_t index, int64_t *low, int64_t *width);

/* Restrict the writer thread to the `count` CPUs in `cpus` (Linux CPU numbers).
 * Why: with the event loop on other CPUs, the writer's fdatasync runs beside the
 * loop's matching instead of queueing behind it, and neither thread is migrated
 * at each wake-up (measured on a 2-vCPU VM: ~80 us less per durable order).
 * HFT_EINVAL for an empty list or a CPU number out of range, or the negated
 * errno of pthread_setaffinity_np (e.g. -EINVAL for CPUs the process may not use). */
int hft_journal_writer_set_cpus(hft_journal_writer *writer, const int *cpus, size_t count);

/* Longest keeper spin hft_journal_writer_keep_cpu takes. */
#define HFT_JOURNAL_MAX_KEEP_CPU_US 100000

/* Give the writer an hft_cpu_keeper (hft_cpu_keeper.h) pinned to `cpus` (the writer's, after
 * hft_journal_writer_set_cpus) that keeps that CPU out of idle for `spin_us` after each
 * hft_journal_writer_keep_cpu_awake: the fdatasync's completion interrupt then finds the CPU
 * running, and while the keeper spins the writer waits on it, so the producer's push needs no
 * FUTEX_WAKE. Once per writer; the keeper stops with the writer (join). HFT_EINVAL for 0 or
 * more than HFT_JOURNAL_MAX_KEEP_CPU_US, an empty CPU list or a second call; else as
 * hft_cpu_keeper_create. */
int hft_journal_writer_keep_cpu(hft_journal_writer *writer, uint32_t spin_us, const int *cpus, size_t count);

/* A record someone will wait on is coming (a lone order's): keep the writer's CPU awake from now
 * for the keeper's window. Any thread; a no-op without a keeper. Called by the producer rather
 * than the writer so that throughput loads, which never wait on one record, leave the keeper
 * parked: beside a busy writer it would only take the core's resources from the event loop
 * (vCPUs that share a physical core). */
void hft_journal_writer_keep_cpu_awake(hft_journal_writer *writer);

/* The same with no record coming (hft_cpu_keeper_touch_cpu_only): the writer is not woken ahead.
 * For the benchmark's echo floor, which must see the CPUs as SubmitOrder's caller does. */
void hft_journal_writer_keep_cpu_awake_only(hft_journal_writer *writer);

/* The producer pushed records: if the writer waits on its keeper and the keeper has not run for
 * HFT_JOURNAL_KEEPER_STALE_NS (held off its CPU by other threads), wake the writer here. Call
 * after every push when the writer has a keeper; cheap otherwise (hft_cpu_keeper_kick). */
void hft_journal_writer_kick(hft_journal_writer *writer);

/* A keeper that has not checked in for this long counts as held off its CPU. It checks in
 * every microsecond or so while it runs. */
#define HFT_JOURNAL_KEEPER_STALE_NS 20000

/* The event loop busy-waits for an ack (SubmitOrder's lone order: it reads acked_seq instead of
 * sleeping until the eventfd wakes it). Until hft_journal_writer_poll_end, the writer does not
 * write the eventfd after an acknowledged batch: the loop sees the ack itself, and the signal
 * would only wake it once more after the reply has left, for nothing (a select and a handler
 * on the CPU the reply's client may be waiting for). Failures and changes of disk space are
 * still signalled. One poller at a time (the loop's thread). */
void hft_journal_writer_poll_begin(hft_journal_writer *writer);

/* End the busy-wait and return acked_seq, read after the end: acks published meanwhile were not
 * signalled, so the caller acknowledges through this value. */
uint64_t hft_journal_writer_poll_end(hft_journal_writer *writer);

/* The keeper's counters (all 0 without one). */
void hft_journal_writer_keeper_stats(const hft_journal_writer *writer, hft_cpu_keeper_stats *out);

/* Ask the writer to start a new segment before its next batch (when the active one holds any
 * records), whatever its size: after a snapshot, so the records it covers can soon be dropped
 * whole. Any thread. HFT_EINVAL on NULL. */
int hft_journal_writer_request_rotation(hft_journal_writer *writer);

/* The group-commit window: after a batch's first record, wait up to `window_us` more for
 * records to share its write and fdatasync (0, the default: take only what is already queued).
 * Why tunable at run time: a window trades each record's latency for fewer syncs per record
 * under load; the scaler's optimiser tries values and keeps one only when a measured window of
 * latency shows it helped. The writer reads it at each batch. Any thread. HFT_EINVAL on NULL or
 * a window above HFT_JOURNAL_MAX_COMMIT_WINDOW_US. */
#define HFT_JOURNAL_MAX_COMMIT_WINDOW_US 10000u
int hft_journal_writer_set_commit_window_us(hft_journal_writer *writer, uint32_t window_us);
uint32_t hft_journal_writer_commit_window_us(const hft_journal_writer *writer);

/* Make a writer that waits for disk space give up: it fails (status.failed, a message naming the
 * first record it could not write) and its thread ends; a writer that is not blocked goes on
 * until it has to wait for space. For a stop that cannot wait. Any thread. HFT_EINVAL on NULL. */
int hft_journal_writer_abort(hft_journal_writer *writer);

/* Wait for the thread to end and free the writer (closing its segment fd); the
 * counters as they ended go to *final_status unless it is NULL. Close the queue
 * first (hft_mpsc_queue_close): the writer drains what is queued, writes and
 * syncs it, then exits. Returns HFT_OK, or HFT_EINVAL on NULL. */
int hft_journal_writer_join(hft_journal_writer *writer, hft_journal_writer_status *final_status);

#endif /* HFT_JOURNAL_H */
