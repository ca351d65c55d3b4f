/* Tests for the forked snapshot writer (hft_snapshot_writer.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "hft_crc32.h"
#include "hft_snapshot_writer.h"

/* A large piece (several write chunks, not a whole number of them) and the small ones around it. */
#define BIG_BYTES ((size_t)(3u << 20) + 12345u)

static unsigned char *big;

static hft_snapshot_piece bytes_piece(const void *data, size_t length, int slot) {
    hft_snapshot_piece piece = {data, length, HFT_SNAPSHOT_PIECE_BYTES, slot};
    return piece;
}

static hft_snapshot_piece crc_piece(int slot) {
    hft_snapshot_piece piece = {NULL, 0, HFT_SNAPSHOT_PIECE_CRC, slot};
    return piece;
}

static void put_le32(unsigned char *at, uint32_t value) {
    for (int i = 0; i < 4; i++) at[i] = (unsigned char)(value >> (8 * i));
}

/* The pieces every test writes, and the bytes they must give: "head" "123456789" big CRC(0)
 * "mid" CRC(1) "" CRC(2) "tail", where slot 0 covers "123456789" and big, slot 1 only "head" and
 * "mid", slot 2 nothing. */
#define PIECE_COUNT 10
static size_t make_pieces(hft_snapshot_piece *pieces, unsigned char **expected) {
    size_t n = 0;
    pieces[n++] = bytes_piece("head", 4, 1);
    pieces[n++] = bytes_piece("123456789", 9, 0);
    pieces[n++] = bytes_piece(big, BIG_BYTES, 0);
    pieces[n++] = crc_piece(0);
    pieces[n++] = bytes_piece("mid", 3, 1);
    pieces[n++] = crc_piece(1);
    pieces[n++] = bytes_piece(NULL, 0, -1);
    pieces[n++] = crc_piece(2);
    pieces[n++] = bytes_piece("tail", 4, -1);
    pieces[n++] = crc_piece(3);
    size_t total = 4 + 9 + BIG_BYTES + 4 + 3 + 4 + 4 + 4 + 4;
    unsigned char *out = malloc(total);
    size_t at = 0;
    memcpy(out + at, "head", 4), at += 4;
    memcpy(out + at, "123456789", 9), at += 9;
    memcpy(out + at, big, BIG_BYTES), at += BIG_BYTES;
    /* slot 0's CRC by the chaining contract; "123456789" alone is zlib's check value 0xCBF43926 */
    CHECK_EQ_INT(hft_crc32(0, "123456789", 9), 0xCBF43926u);
    put_le32(out + at, hft_crc32(hft_crc32(0, "123456789", 9), big, BIG_BYTES)), at += 4;
    memcpy(out + at, "mid", 3), at += 3;
    put_le32(out + at, hft_crc32(0, "headmid", 7)), at += 4;
    put_le32(out + at, 0), at += 4;
    memcpy(out + at, "tail", 4), at += 4;
    put_le32(out + at, 0), at += 4; /* slot 3: never fed */
    CHECK_EQ_INT(at, total);
    CHECK_EQ_INT(n, PIECE_COUNT);
    *expected = out;
    return total;
}

static char directory[64];

static void path_in_directory(char *path, size_t size, const char *name) {
    snprintf(path, size, "%s/%s", directory, name);
}

static unsigned char *read_file(const char *path, size_t *length) {
    FILE *file = fopen(path, "rb");
    if (!file) return NULL;
    fseek(file, 0, SEEK_END);
    long size = ftell(file);
    fseek(file, 0, SEEK_SET);
    unsigned char *data = malloc((size_t)size + 1);
    *length = fread(data, 1, (size_t)size, file);
    fclose(file);
    return data;
}

static int exit_code_of(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) continue;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return -WTERMSIG(status);
}

static void test_writes_the_exact_bytes_with_their_checksums(void) {
    hft_snapshot_piece pieces[PIECE_COUNT];
    unsigned char *expected;
    size_t total = make_pieces(pieces, &expected);
    char path[128];
    path_in_directory(path, sizeof path, "direct");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK_EQ_INT(hft_snapshot_write_pieces(fd, pieces, PIECE_COUNT), 0);
    close(fd);
    size_t length = 0;
    unsigned char *written = read_file(path, &length);
    CHECK(written != NULL);
    CHECK_EQ_INT(length, total);
    CHECK(written && memcmp(written, expected, total) == 0);
    free(written);
    free(expected);
    unlink(path);
}

/* write(2) as a slow pipe or a signal gives it: a few bytes per call, and every third call
 * interrupted before it wrote anything. */
static unsigned short_calls;
static ssize_t short_write(int fd, const void *data, size_t length) {
    short_calls++;
    if (short_calls % 3 == 0) {
        errno = EINTR;
        return -1;
    }
    size_t most = 1 + short_calls % 7;
    if (length > most && length < 100000) length = most;  /* the big piece: a short write of it too */
    else if (length >= 100000) length = length / 3 + 1;
    return write(fd, data, length);
}

static void test_short_writes_and_interrupted_writes_are_retried(void) {
    hft_snapshot_piece pieces[PIECE_COUNT];
    unsigned char *expected;
    size_t total = make_pieces(pieces, &expected);
    char path[128];
    path_in_directory(path, sizeof path, "short");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    short_calls = 0;
    CHECK_EQ_INT(hft_snapshot_write_pieces_with(fd, pieces, PIECE_COUNT, short_write), 0);
    CHECK(short_calls > 20); /* it did go in many short steps */
    close(fd);
    size_t length = 0;
    unsigned char *written = read_file(path, &length);
    CHECK_EQ_INT(length, total);
    CHECK(written && memcmp(written, expected, total) == 0);
    free(written);
    free(expected);
    unlink(path);
}

static ssize_t failing_write(int fd, const void *data, size_t length) {
    (void)fd, (void)data, (void)length;
    errno = ENOSPC;
    return -1;
}

static void test_a_failing_fd_or_bad_pieces_give_an_error(void) {
    hft_snapshot_piece pieces[PIECE_COUNT];
    unsigned char *expected;
    make_pieces(pieces, &expected);
    free(expected);
    CHECK_EQ_INT(hft_snapshot_write_pieces(-1, pieces, PIECE_COUNT), -EBADF);
    int fd = open("/dev/null", O_RDONLY);
    CHECK_EQ_INT(hft_snapshot_write_pieces(fd, pieces, PIECE_COUNT), -EBADF);
    close(fd);
    CHECK_EQ_INT(hft_snapshot_write_pieces_with(1, pieces, PIECE_COUNT, failing_write), -ENOSPC);
    hft_snapshot_piece bad[3] = {bytes_piece("x", 1, -2), crc_piece(-1), bytes_piece(NULL, 5, -1)};
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(hft_snapshot_check_pieces(&bad[i], 1), HFT_EINVAL);
    hft_snapshot_piece unknown = {"x", 1, 7, -1};
    CHECK_EQ_INT(hft_snapshot_check_pieces(&unknown, 1), HFT_EINVAL);
    CHECK_EQ_INT(hft_snapshot_check_pieces(&bad[0], 0), 0);
    int pid = 0;
    CHECK_EQ_INT(hft_snapshot_fork_writer("/nonexistent/x", bad, 3, &pid), HFT_EINVAL);
    CHECK_EQ_INT(pid, 0); /* refused before any fork */
}

static void test_the_forked_child_writes_the_file_and_exits_zero(void) {
    hft_snapshot_piece pieces[PIECE_COUNT];
    unsigned char *expected;
    size_t total = make_pieces(pieces, &expected);
    char path[128];
    path_in_directory(path, sizeof path, "forked");
    int pid = 0;
    CHECK_EQ_INT(hft_snapshot_fork_writer(path, pieces, PIECE_COUNT, &pid), 0);
    CHECK(pid > 0);
    CHECK_EQ_INT(exit_code_of(pid), HFT_SNAPSHOT_EXIT_OK);
    size_t length = 0;
    unsigned char *written = read_file(path, &length);
    CHECK_EQ_INT(length, total);
    CHECK(written && memcmp(written, expected, total) == 0);
    free(written);
    free(expected);
    unlink(path);
}

static void test_a_child_that_cannot_write_exits_nonzero(void) {
    hft_snapshot_piece pieces[PIECE_COUNT];
    unsigned char *expected;
    make_pieces(pieces, &expected);
    free(expected);
    char path[128];
    int pid = 0;
    /* A full disk: the file is a link to /dev/full (ENOSPC on write). */
    path_in_directory(path, sizeof path, "full");
    CHECK_EQ_INT(symlink("/dev/full", path), 0);
    CHECK_EQ_INT(hft_snapshot_fork_writer(path, pieces, PIECE_COUNT, &pid), 0);
    CHECK_EQ_INT(exit_code_of(pid), HFT_SNAPSHOT_EXIT_WRITE);
    unlink(path);
    /* A path that cannot be opened for writing (a directory). */
    path_in_directory(path, sizeof path, "a-directory");
    CHECK_EQ_INT(mkdir(path, 0700), 0);
    CHECK_EQ_INT(hft_snapshot_fork_writer(path, pieces, PIECE_COUNT, &pid), 0);
    CHECK_EQ_INT(exit_code_of(pid), HFT_SNAPSHOT_EXIT_OPEN);
    rmdir(path);
}

static volatile sig_atomic_t parent_handler_ran;
static void parent_handler(int number) {
    (void)number;
    parent_handler_ran = 1;
}

/* A writer whose file is a FIFO blocks in open until someone reads: a child caught mid-snapshot. */
static int start_blocked_writer(const char *fifo, const hft_snapshot_piece *pieces, size_t count) {
    int pid = 0;
    CHECK_EQ_INT(hft_snapshot_fork_writer(fifo, pieces, count, &pid), 0);
    return pid;
}

/* Whether the child's descriptors come down to stdin, stdout and stderr (it closes the rest
 * first thing, before it opens its file). */
static int eventually_only_standard_fds(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    for (int attempt = 0; attempt < 1000; attempt++) {
        DIR *fds = opendir(path);
        if (!fds) return 0;
        int others = 0;
        struct dirent *entry;
        while ((entry = readdir(fds)) != NULL)
            if (entry->d_name[0] != '.' && atoi(entry->d_name) > 2) others++;
        closedir(fds);
        if (!others) return 1;
        struct timespec pause_10ms = {0, 10 * 1000 * 1000};
        nanosleep(&pause_10ms, NULL);
    }
    return 0;
}

static void test_the_child_keeps_no_parent_file_and_runs_none_of_its_signal_handlers(void) {
    char fifo[128];
    path_in_directory(fifo, sizeof fifo, "fifo");
    CHECK_EQ_INT(mkfifo(fifo, 0600), 0);
    struct sigaction action = {0}, old_term, old_int;
    action.sa_handler = parent_handler;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, &old_term);
    sigaction(SIGINT, &action, &old_int);
    hft_snapshot_piece piece = bytes_piece("snapshot", 8, -1);

    /* SIGTERM: the default action (the child dies), not the parent's handler. */
    int held = open("/dev/null", O_RDONLY); /* a file of the parent's the child must not keep */
    int pid = start_blocked_writer(fifo, &piece, 1);
    close(held);
    CHECK(eventually_only_standard_fds(pid));
    CHECK_EQ_INT(kill(pid, SIGTERM), 0);
    CHECK_EQ_INT(exit_code_of(pid), -SIGTERM);

    /* SIGINT (a terminal's Ctrl-C reaches the whole group): ignored, the write completes. */
    pid = start_blocked_writer(fifo, &piece, 1);
    CHECK_EQ_INT(kill(pid, SIGINT), 0);
    struct timespec pause = {0, 20 * 1000 * 1000};
    nanosleep(&pause, NULL); /* (time for the signal to land; the outcome does not depend on it) */
    int reader = open(fifo, O_RDONLY);
    char got[16] = {0};
    size_t have = 0;
    ssize_t n;
    while ((n = read(reader, got + have, sizeof got - 1 - have)) > 0) have += (size_t)n;
    close(reader);
    CHECK_EQ_INT(exit_code_of(pid), HFT_SNAPSHOT_EXIT_OK);
    CHECK_EQ_INT(have, 8);
    CHECK(memcmp(got, "snapshot", 8) == 0);
    CHECK(!parent_handler_ran);

    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGINT, &old_int, NULL);
    unlink(fifo);
}

static int process_gone(pid_t pid) {
    if (kill(pid, 0) != 0) return 1;
    char path[64], stat[256] = {0};
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *file = fopen(path, "r");
    if (!file) return 1;
    size_t n = fread(stat, 1, sizeof stat - 1, file);
    fclose(file);
    stat[n] = 0;
    const char *end = strrchr(stat, ')');
    return end && end[1] == ' ' && end[2] == 'Z'; /* dead, waiting for its new parent to reap it */
}

static void test_the_child_dies_with_its_parent(void) {
    char fifo[128];
    path_in_directory(fifo, sizeof fifo, "orphan-fifo");
    CHECK_EQ_INT(mkfifo(fifo, 0600), 0);
    int report[2];
    CHECK_EQ_INT(pipe(report), 0);
    pid_t middle = fork();
    if (middle == 0) { /* the "service": starts a writer stuck in open, says its pid, waits */
        hft_snapshot_piece piece = bytes_piece("x", 1, -1);
        int writer = 0;
        if (hft_snapshot_fork_writer(fifo, &piece, 1, &writer) != 0) _exit(1);
        ssize_t ignored = write(report[1], &writer, sizeof writer);
        (void)ignored;
        pause();
        _exit(0);
    }
    int writer = 0;
    close(report[1]);
    CHECK_EQ_INT(read(report[0], &writer, sizeof writer), (ssize_t)sizeof writer);
    close(report[0]);
    CHECK(writer > 0);
    CHECK(!process_gone(writer));
    CHECK_EQ_INT(kill(middle, SIGKILL), 0);
    CHECK_EQ_INT(exit_code_of(middle), -SIGKILL);
    int gone = 0;
    for (int i = 0; i < 1000 && !gone; i++) { /* up to 10 s; the signal is sent when the parent dies */
        gone = process_gone(writer);
        struct timespec pause_10ms = {0, 10 * 1000 * 1000};
        if (!gone) nanosleep(&pause_10ms, NULL);
    }
    CHECK(gone);
    if (!gone) kill(writer, SIGKILL);
    unlink(fifo);
}

int main(void) {
    snprintf(directory, sizeof directory, "/tmp/hft-snapshot-writer-XXXXXX");
    if (!mkdtemp(directory)) {
        perror("mkdtemp");
        return 1;
    }
    big = malloc(BIG_BYTES);
    for (size_t i = 0; i < BIG_BYTES; i++) big[i] = (unsigned char)(i * 2654435761u >> 13);
    RUN(test_writes_the_exact_bytes_with_their_checksums);
    RUN(test_short_writes_and_interrupted_writes_are_retried);
    RUN(test_a_failing_fd_or_bad_pieces_give_an_error);
    RUN(test_the_forked_child_writes_the_file_and_exits_zero);
    RUN(test_a_child_that_cannot_write_exits_nonzero);
    RUN(test_the_child_keeps_no_parent_file_and_runs_none_of_its_signal_handlers);
    RUN(test_the_child_dies_with_its_parent);
    free(big);
    rmdir(directory);
    return TEST_SUMMARY("snapshot_writer");
}
