/*
 * hft_snapshot_writer.h -- a forked child that writes regions of this process's memory to a file.
 *
 * The execution service snapshots its state between two batches: the caller lists the state's
 * arrays as they lie in memory (pointer, length: no copy) interleaved with small headers it built
 * itself, then hft_snapshot_fork_writer forks. The child sees those bytes exactly as they were at
 * the fork (copy-on-write) while the service goes on changing its own pages, writes the pieces in
 * order with write(2), fsyncs and _exit()s with a code. It runs no Python, takes no lock and
 * allocates nothing: a child of a multithreaded process may only call async-signal-safe functions,
 * since another thread may have held any lock (malloc's, the interpreter's) at the fork.
 *
 * CRC pieces let the file carry checksums of its own data without the parent reading that data:
 * a BYTES piece with crc_slot >= 0 adds its bytes to that slot's running CRC-32 (zlib's, as zip
 * archives use), and a CRC piece writes the slot's CRC so far as 4 little-endian bytes.
 */
#ifndef HFT_SNAPSHOT_WRITER_H
#define HFT_SNAPSHOT_WRITER_H

#include <sys/types.h>

#include "hft_common.h"

#define HFT_SNAPSHOT_PIECE_BYTES 0 /* `length` bytes at `data` */
#define HFT_SNAPSHOT_PIECE_CRC 1   /* the CRC-32 of slot `crc_slot` so far, 4 bytes little-endian */
/* Checksum slots per call (a zip member each: a snapshot has about twenty). */
#define HFT_SNAPSHOT_MAX_CRC_SLOTS 256

typedef struct hft_snapshot_piece {
    const void *data;
    uint64_t length;
    int32_t kind;     /* HFT_SNAPSHOT_PIECE_BYTES or HFT_SNAPSHOT_PIECE_CRC */
    int32_t crc_slot; /* -1: BYTES not checksummed */
} hft_snapshot_piece;

/* The writer child's exit codes (anything else: it was killed by a signal). */
#define HFT_SNAPSHOT_EXIT_OK 0
#define HFT_SNAPSHOT_EXIT_ORPHANED 70   /* the parent had died before the child started */
#define HFT_SNAPSHOT_EXIT_OPEN 71       /* open(2) of the file failed */
#define HFT_SNAPSHOT_EXIT_WRITE 72      /* write(2) failed (a full disk, a bad fd) */
#define HFT_SNAPSHOT_EXIT_FSYNC 73      /* fsync(2) or close(2) failed */
#define HFT_SNAPSHOT_EXIT_BAD_PIECES 74 /* a piece with an unknown kind or slot */

/* write(2)'s signature: how hft_snapshot_write_pieces_with hands bytes to the fd. */
typedef ssize_t (*hft_snapshot_write_fn)(int fd, const void *data, size_t length);

/* Check pieces before a fork: 0, or HFT_EINVAL for an unknown kind, a slot out of range or a NULL
 * with a nonzero length. */
int hft_snapshot_check_pieces(const hft_snapshot_piece *pieces, size_t count);

/* Write `pieces` to `fd` in order, in this process: retries short writes and EINTR. 0, or a
 * negative errno (HFT_EINVAL for bad pieces). Async-signal-safe once hft_crc32 has run once in
 * the process (its tables built): what the forked child calls. */
int hft_snapshot_write_pieces(int fd, const hft_snapshot_piece *pieces, size_t count);

/* The same with `write_fn` in place of write(2) (tests: short writes, EINTR). */
int hft_snapshot_write_pieces_with(int fd, const hft_snapshot_piece *pieces, size_t count,
                                   hft_snapshot_write_fn write_fn);

/* Fork a child that creates `path` (truncated, mode 0644), writes `pieces` into it, fsyncs it and
 * _exit()s with an HFT_SNAPSHOT_EXIT_* code. The child dies with this process (PR_SET_PDEATHSIG
 * from the forking thread: fork from one that lives as long as the process) and starts with
 * default signal dispositions (SIGINT ignored: a terminal's Ctrl-C is the parent's to handle, and
 * it waits for the child), so none of the parent's handlers ever runs in it. It may run on any CPU
 * the process may use, under SCHED_IDLE: only on time the service's threads leave idle. `pieces`
 * and `path` must stay valid until this returns; the child has its own copy of them from then on.
 *
 * Returns 0 with the child's pid in *pid_out (reap it with waitpid), or a negative errno: the
 * pieces are invalid (HFT_EINVAL) or fork failed (no child). */
int hft_snapshot_fork_writer(const char *path, const hft_snapshot_piece *pieces, size_t count, int *pid_out);

#endif /* HFT_SNAPSHOT_WRITER_H */
