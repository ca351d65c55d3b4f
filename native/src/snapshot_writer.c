/* snapshot_writer.c -- the forked snapshot writer (see hft_snapshot_writer.h).
 *
 * Everything the child runs is below: open, write, fsync, close, close_range, sigaction,
 * sigprocmask, prctl, getppid, sched_setaffinity, _exit and hft_crc32 over tables the parent
 * built. No malloc, no stdio, no locks: the forking process has other threads (gRPC's, the
 * journal writer), and the child gets a copy of every lock they held at that instant, never to be
 * released. */
#include "hft_snapshot_writer.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hft_crc32.h"

/* Pieces up to this size (headers, checksums) are gathered and written together: a snapshot has
 * about a hundred of them, each a system call of its own otherwise. */
#define GATHER_BYTES 16384
#define GATHER_PIECE_MAX 4096
/* Large pieces are checksummed and written this much at a time, so the bytes the CRC just read
 * are still in the cache when write(2) copies them. */
#define CHUNK_BYTES ((size_t)1 << 20)

typedef struct piece_output {
    int fd;
    hft_snapshot_write_fn write_fn;
    size_t gathered;
    unsigned char gather[GATHER_BYTES];
    uint32_t crc[HFT_SNAPSHOT_MAX_CRC_SLOTS];
} piece_output;

static int write_all(const piece_output *out, const unsigned char *data, size_t length) {
    while (length) {
        ssize_t written = out->write_fn(out->fd, data, length);
        if (written < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (written == 0) return -EIO; /* no progress on a file: give up rather than spin */
        data += written;
        length -= (size_t)written;
    }
    return 0;
}

static int flush_gathered(piece_output *out) {
    int rc = write_all(out, out->gather, out->gathered);
    out->gathered = 0;
    return rc;
}

static int put_small(piece_output *out, const void *data, size_t length) {
    if (out->gathered + length > GATHER_BYTES) {
        int rc = flush_gathered(out);
        if (rc) return rc;
    }
    if (length) memcpy(out->gather + out->gathered, data, length);
    out->gathered += length;
    return 0;
}

static int put_bytes(piece_output *out, const hft_snapshot_piece *piece) {
    const unsigned char *data = piece->data;
    size_t length = (size_t)piece->length;
    uint32_t *crc = piece->crc_slot >= 0 ? &out->crc[piece->crc_slot] : NULL;
    if (length <= GATHER_PIECE_MAX) {
        if (crc) *crc = hft_crc32(*crc, data, length);
        return put_small(out, data, length);
    }
    int rc = flush_gathered(out);
    while (rc == 0 && length) {
        size_t chunk = length < CHUNK_BYTES ? length : CHUNK_BYTES;
        if (crc) *crc = hft_crc32(*crc, data, chunk);
        rc = write_all(out, data, chunk);
        data += chunk;
        length -= chunk;
    }
    return rc;
}

int hft_snapshot_check_pieces(const hft_snapshot_piece *pieces, size_t count) {
    if (count && !pieces) return HFT_EINVAL;
    for (size_t i = 0; i < count; i++) {
        const hft_snapshot_piece *piece = &pieces[i];
        if (piece->crc_slot >= HFT_SNAPSHOT_MAX_CRC_SLOTS) return HFT_EINVAL;
        if (piece->kind == HFT_SNAPSHOT_PIECE_BYTES) {
            if (piece->crc_slot < -1 || (piece->length && !piece->data)) return HFT_EINVAL;
            if (piece->length > (uint64_t)SIZE_MAX) return HFT_EINVAL;
        } else if (piece->kind == HFT_SNAPSHOT_PIECE_CRC) {
            if (piece->crc_slot < 0) return HFT_EINVAL;
        } else {
            return HFT_EINVAL;
        }
    }
    return HFT_OK;
}

int hft_snapshot_write_pieces_with(int fd, const hft_snapshot_piece *pieces, size_t count,
                                   hft_snapshot_write_fn write_fn) {
    int rc = hft_snapshot_check_pieces(pieces, count);
    if (rc) return rc;
    piece_output out;
    out.fd = fd;
    out.write_fn = write_fn ? write_fn : write;
    out.gathered = 0;
    memset(out.crc, 0, sizeof out.crc);
    for (size_t i = 0; i < count && rc == 0; i++) {
        const hft_snapshot_piece *piece = &pieces[i];
        if (piece->kind == HFT_SNAPSHOT_PIECE_CRC) {
            uint32_t crc = out.crc[piece->crc_slot];
            unsigned char le[4] = {(unsigned char)crc, (unsigned char)(crc >> 8), (unsigned char)(crc >> 16),
                                   (unsigned char)(crc >> 24)};
            rc = put_small(&out, le, sizeof le);
        } else {
            rc = put_bytes(&out, piece);
        }
    }
    if (rc == 0) rc = flush_gathered(&out);
    return rc;
}

int hft_snapshot_write_pieces(int fd, const hft_snapshot_piece *pieces, size_t count) {
    return hft_snapshot_write_pieces_with(fd, pieces, count, NULL);
}

/* The failing step and errno on stderr, formatted by hand (snprintf and strerror may lock or
 * allocate). */
static void say_failed(const char *step, int error) {
    char line[96];
    size_t n = 0;
    const char *prefix = "hftgate snapshot writer: ";
    for (const char *p = prefix; *p && n < sizeof line; p++) line[n++] = *p;
    for (const char *p = step; *p && n < sizeof line - 24; p++) line[n++] = *p;
    const char *middle = " failed, errno ";
    for (const char *p = middle; *p && n < sizeof line - 12; p++) line[n++] = *p;
    char digits[12];
    size_t d = 0;
    unsigned value = error < 0 ? (unsigned)-error : (unsigned)error;
    do {
        digits[d++] = (char)('0' + value % 10);
        value /= 10;
    } while (value && d < sizeof digits);
    while (d) line[n++] = digits[--d];
    line[n++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, n);
    (void)ignored;
}

/* The half-written file stays for the parent to remove once it has reaped the child (it knows
 * the code; a path may also be a link the child must not judge). */
static __attribute__((noreturn)) void child_fail(const char *step, int error, int code) {
    say_failed(step, error);
    _exit(code);
}

static __attribute__((noreturn)) void run_child(const char *path, const hft_snapshot_piece *pieces,
                                                size_t count, pid_t parent, const sigset_t *mask) {
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != parent) _exit(HFT_SNAPSHOT_EXIT_ORPHANED); /* it died before the request took */
    /* The parent's handlers (Python's, which write to the event loop's wakeup fd) must never run
     * here: every signal is blocked since before the fork, and dispositions go back to the
     * defaults before the mask does. */
    struct sigaction action;
    memset(&action, 0, sizeof action);
    sigemptyset(&action.sa_mask);
    for (int number = 1; number < NSIG; number++) {
        if (number == SIGKILL || number == SIGSTOP) continue;
        action.sa_handler = number == SIGINT ? SIG_IGN : SIG_DFL;
        (void)sigaction(number, &action, NULL); /* (fails harmlessly for the C library's own) */
    }
    (void)sigprocmask(SIG_SETMASK, mask, NULL);
    /* The service's sockets (its listening one too) and files are no business of the child: a
     * connection the service closes must not stay open here until the child ends. stdin, stdout
     * and stderr stay (stderr for say_failed). Where the kernel lacks close_range (before 5.9)
     * they stay open until the child exits, which PR_SET_PDEATHSIG bounds. */
#ifdef SYS_close_range
    (void)syscall(SYS_close_range, 3u, ~0u, 0u);
#endif
    /* The forking thread (the event loop's) may be pinned to its own CPU: the child must not take
     * turns with it there. The kernel keeps the mask within the process's cpuset. */
    cpu_set_t anywhere;
    CPU_ZERO(&anywhere);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) CPU_SET(cpu, &anywhere);
    (void)sched_setaffinity(0, sizeof anywhere, &anywhere);
    /* Background work: the child runs only on CPU time the service and its clients leave idle
     * (SCHED_IDLE), so a snapshot never takes a core from order entry. Measured through the
     * service (160,000 SubmitOrderColumns orders over a snapshot, 6 runs each way): the slowest
     * 10,000-order call took 59-94 ms against 100-124 ms. A busy machine delays the snapshot
     * (SCHED_IDLE still runs a little), never the orders. */
    struct sched_param idle;
    memset(&idle, 0, sizeof idle);
    (void)sched_setscheduler(0, SCHED_IDLE, &idle);

    int fd;
    do fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        say_failed("open", errno);
        _exit(HFT_SNAPSHOT_EXIT_OPEN);
    }
    int rc = hft_snapshot_write_pieces(fd, pieces, count);
    if (rc == HFT_EINVAL) child_fail("checking the pieces", -rc, HFT_SNAPSHOT_EXIT_BAD_PIECES);
    if (rc) child_fail("write", -rc, HFT_SNAPSHOT_EXIT_WRITE);
    do rc = fsync(fd);
    while (rc != 0 && errno == EINTR);
    if (rc != 0 && errno != EINVAL) /* EINVAL: a special file (a pipe) has nothing to sync */
        child_fail("fsync", errno, HFT_SNAPSHOT_EXIT_FSYNC);
    if (close(fd) != 0 && errno != EINTR) child_fail("close", errno, HFT_SNAPSHOT_EXIT_FSYNC);
    _exit(HFT_SNAPSHOT_EXIT_OK);
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define HFT_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define HFT_SANITIZED 1
#endif

/* _Fork (glibc 2.34) runs no pthread_atfork handlers and takes none of the C library's locks in
 * the parent (fork waits for every malloc arena, so the event loop would wait for other threads'
 * allocations): the child needs neither. The sanitizers' runtimes hook fork to keep their own
 * state sane in the child, so their builds use it. */
static pid_t fork_bare(void) {
#if defined(__GLIBC__) && defined(__GLIBC_PREREQ) && !defined(HFT_SANITIZED)
#if __GLIBC_PREREQ(2, 34)
    return _Fork();
#else
    return fork();
#endif
#else
    return fork();
#endif
}

int hft_snapshot_fork_writer(const char *path, const hft_snapshot_piece *pieces, size_t count, int *pid_out) {
    if (!path || !pid_out) return HFT_EINVAL;
    int rc = hft_snapshot_check_pieces(pieces, count);
    if (rc) return rc;
    (void)hft_crc32(0, NULL, 0); /* its tables built here: the child finds them ready (no pthread_once) */
    pid_t parent = getpid();
    sigset_t all, before;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &before);
    pid_t pid = fork_bare();
    if (pid == 0) run_child(path, pieces, count, parent, &before);
    int error = errno;
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    if (pid < 0) return -error;
    *pid_out = (int)pid;
    return HFT_OK;
}
