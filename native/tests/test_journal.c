/* Tests for the CRC-32 and the journal writer thread (hft_crc32.h, hft_journal.h). */
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "hft_crc32.h"
#include "hft_journal.h"

#define SLOT 64
#define INLINE (SLOT - HFT_JOURNAL_SLOT_HEADER_BYTES)

static void test_crc32_matches_zlib_vectors(void) {
    CHECK_EQ_INT(hft_crc32(0, "123456789", 9), 0xCBF43926u);
    CHECK_EQ_INT(hft_crc32(0, NULL, 0), 0);
    CHECK_EQ_INT(hft_crc32(0, "a", 1), 0xE8B7BE43u);
    /* Chaining over any split point gives the one-shot value (exercises the aligned 8-byte loop). */
    unsigned char data[1000];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i * 131 + 7);
    uint32_t whole = hft_crc32(0, data, sizeof data);
    for (size_t split = 0; split <= sizeof data; split += 37)
        CHECK_EQ_INT(hft_crc32(hft_crc32(0, data, split), data + split, sizeof data - split), whole);
    /* Reference: the bit-at-a-time definition. */
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < sizeof data; i++) {
        c ^= data[i];
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    }
    CHECK_EQ_INT(~c, whole);
}

/* The bit-at-a-time definition, continuing `crc` as hft_crc32 does. */
static uint32_t crc32_bitwise(uint32_t crc, const unsigned char *p, size_t length) {
    uint32_t c = ~crc;
    while (length--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    }
    return ~c;
}

static void test_crc32_every_length_and_offset_matches_the_definition(void) {
    /* Whichever kernel runs (hft_crc32_kernel_name): lengths around the folding's 64-byte entry,
     * its 16-byte steps and its 64-byte loop, at every alignment, from non-zero starting CRCs,
     * over pseudo-random bytes and over the all-ones bytes that stress the carries. */
    const char *kernel = hft_crc32_kernel_name();
    CHECK(strcmp(kernel, "pclmul") == 0 || strcmp(kernel, "slice8") == 0);
    static unsigned char data[4096 + 32];
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < sizeof data; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        data[i] = (unsigned char)x;
    }
    for (int pattern = 0; pattern < 2; pattern++) {
        if (pattern == 1) memset(data, 0xFF, sizeof data);
        for (size_t offset = 0; offset < 16; offset++) {
            for (size_t length = 0; length <= 300; length++) {
                uint32_t start = (uint32_t)(length * 2654435761u) ^ (uint32_t)offset;
                CHECK_EQ_INT(hft_crc32(start, data + offset, length), crc32_bitwise(start, data + offset, length));
            }
            size_t big = sizeof data - 32 - offset;
            CHECK_EQ_INT(hft_crc32(7, data + offset, big), crc32_bitwise(7, data + offset, big));
        }
    }
}

typedef struct {
    char dir[64];
    hft_mpsc_queue *queue;
    hft_journal_writer *writer;
    int notify_fd;
} fixture;

static void fixture_open_in(fixture *f, const char *dir, uint64_t next_seq, uint64_t segment_max,
                            int sync_before_ack, uint64_t preallocate) {
    if (dir) {
        snprintf(f->dir, sizeof f->dir, "%s", dir);
    } else {
        strcpy(f->dir, "/tmp/hft_journal_test_XXXXXX");
        CHECK(mkdtemp(f->dir) != NULL);
    }
    char path[128];
    snprintf(path, sizeof path, "%s/%020llu.journal", f->dir, (unsigned long long)next_seq);
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    CHECK(fd >= 0);
    CHECK_EQ_INT(hft_mpsc_queue_create(256, SLOT, &f->queue), HFT_OK);
    f->notify_fd = eventfd(0, EFD_CLOEXEC);
    hft_journal_writer_config config = {
        .directory = f->dir,
        .fd = fd,
        .segment_bytes = 0,
        .preallocate_bytes = preallocate,
        .segment_max_bytes = segment_max,
        .next_seq = next_seq,
        .sync_before_ack = sync_before_ack,
        .notify_fd = f->notify_fd,
        .batch_max_records = 16,
        .max_payload_bytes = 1 << 20,
        .space_retry_max_ms = 5,
    };
    CHECK_EQ_INT(hft_journal_writer_start(f->queue, &config, &f->writer), HFT_OK);
}

static void fixture_open(fixture *f, uint64_t next_seq, uint64_t segment_max, int sync_before_ack,
                         uint64_t preallocate) {
    fixture_open_in(f, NULL, next_seq, segment_max, sync_before_ack, preallocate);
}

/* Push one record as the Python producer does: header slot, then continuation slots. */
static void push_record(fixture *f, uint64_t seq, unsigned char type, const unsigned char *payload,
                        uint32_t length) {
    unsigned char slot[SLOT] = {0};
    memcpy(slot, &seq, 8);
    memcpy(slot + 8, &length, 4);
    slot[12] = type;
    slot[13] = length > INLINE ? HFT_JOURNAL_SLOT_FLAG_CONTINUED : 0;
    uint32_t first = length < INLINE ? length : INLINE;
    memcpy(slot + HFT_JOURNAL_SLOT_HEADER_BYTES, payload, first);
    CHECK_EQ_INT(hft_mpsc_queue_push_wait(f->queue, slot, -1), HFT_OK);
    for (uint32_t done = first; done < length; done += SLOT) {
        memset(slot, 0, SLOT);
        memcpy(slot, payload + done, length - done < SLOT ? length - done : SLOT);
        CHECK_EQ_INT(hft_mpsc_queue_push_wait(f->queue, slot, -1), HFT_OK);
    }
}

static void wait_acked(fixture *f, uint64_t seq) {
    hft_journal_writer_status status;
    for (;;) {
        hft_journal_writer_status_get(f->writer, &status);
        if (status.acked_seq >= seq || status.failed) break;
        struct pollfd p = {.fd = f->notify_fd, .events = POLLIN};
        if (poll(&p, 1, 1000) == 1) {
            uint64_t count;
            CHECK(read(f->notify_fd, &count, 8) == 8);
        }
    }
    CHECK_EQ_INT(status.failed, 0);
    CHECK(status.acked_seq >= seq);
}

static void fixture_close(fixture *f) {
    hft_mpsc_queue_close(f->queue);
    CHECK_EQ_INT(hft_journal_writer_join(f->writer, NULL), HFT_OK);
    hft_mpsc_queue_destroy(f->queue);
    close(f->notify_fd);
}

static void remove_dir(const char *dir) {
    char command[160];
    snprintf(command, sizeof command, "rm -rf '%s'", dir);
    CHECK_EQ_INT(system(command), 0);
}

static unsigned char *read_file(const char *dir, uint64_t first_seq, size_t *size) {
    char path[128];
    snprintf(path, sizeof path, "%s/%020llu.journal", dir, (unsigned long long)first_seq);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return NULL;
    struct stat st;
    fstat(fd, &st);
    unsigned char *data = malloc((size_t)st.st_size + 1);
    CHECK(read(fd, data, (size_t)st.st_size) == st.st_size);
    close(fd);
    *size = (size_t)st.st_size;
    return data;
}

/* Check `count` records starting at `offset`: header fields, CRC and payload pattern. */
static size_t check_records(const unsigned char *data, size_t size, size_t offset, uint64_t first_seq,
                            int count, const uint32_t *lengths) {
    for (int i = 0; i < count; i++) {
        CHECK(offset + HFT_JOURNAL_RECORD_HEADER_BYTES <= size);
        if (offset + HFT_JOURNAL_RECORD_HEADER_BYTES > size) return offset;
        const unsigned char *r = data + offset;
        uint32_t length, crc;
        uint64_t seq;
        memcpy(&length, r + 4, 4);
        memcpy(&seq, r + 8, 8);
        memcpy(&crc, r + 16, 4);
        CHECK(r[0] == 'H' && r[1] == 'J' && r[2] == 1);
        CHECK_EQ_INT(r[3], (seq % 7));
        CHECK_EQ_INT(seq, first_seq + (uint64_t)i);
        CHECK_EQ_INT(length, lengths[i]);
        CHECK(offset + HFT_JOURNAL_RECORD_HEADER_BYTES + length <= size);
        CHECK_EQ_INT(crc, hft_crc32(hft_crc32(0, r, 16), r + 20, length));
        for (uint32_t b = 0; b < length; b++)
            if (r[20 + b] != (unsigned char)(seq + b)) {
                CHECK(!"payload byte differs");
                break;
            }
        offset += HFT_JOURNAL_RECORD_HEADER_BYTES + length;
    }
    return offset;
}

static void make_payload(unsigned char *payload, uint64_t seq, uint32_t length) {
    for (uint32_t b = 0; b < length; b++) payload[b] = (unsigned char)(seq + b);
}

static void test_writer_frames_small_and_split_records(void) {
    fixture f;
    fixture_open(&f, 5, 1 << 30, 1, 4096); /* records land in space reserved 4 KiB at a time */
    /* 0 bytes, exactly inline, one over, several slots, and a record bigger than a batch of slots. */
    uint32_t lengths[] = {0, 7, INLINE, INLINE + 1, 3 * SLOT + 5, 40 * SLOT, 1};
    int n = (int)(sizeof lengths / sizeof lengths[0]);
    unsigned char *payload = malloc(40 * SLOT + 64);
    for (int i = 0; i < n; i++) {
        uint64_t seq = 5 + (uint64_t)i;
        make_payload(payload, seq, lengths[i]);
        push_record(&f, seq, (unsigned char)(seq % 7), payload, lengths[i]);
    }
    wait_acked(&f, 5 + (uint64_t)n - 1);
    hft_journal_writer_status status;
    hft_journal_writer_status_get(f.writer, &status);
    CHECK_EQ_INT(status.records, n);
    CHECK_EQ_INT(status.synced_seq, 5 + n - 1);
    CHECK(status.fsyncs >= 1 && status.fsyncs <= (uint64_t)n);
    fixture_close(&f);
    size_t size;
    unsigned char *data = read_file(f.dir, 5, &size);
    CHECK(data != NULL);
    if (data) {
        /* The records, then reserved space that reads as zeros, to a whole number of chunks. */
        size_t end = check_records(data, size, 0, 5, n, lengths);
        CHECK(size >= end);
        CHECK_EQ_INT(size % 4096, 0);
        for (size_t i = end; i < size; i++)
            if (data[i]) {
                CHECK(!"reserved space is not zero");
                break;
            }
    }
    free(data);
    free(payload);
    remove_dir(f.dir);
}

static void test_writer_rotates_segments_in_sequence(void) {
    fixture f;
    fixture_open(&f, 1, 200, 0, 0); /* tiny segments, plain appends; acknowledge after write */
    uint32_t lengths[40];
    unsigned char payload[100];
    for (int i = 0; i < 40; i++) {
        uint64_t seq = 1 + (uint64_t)i;
        lengths[i] = 30 + (uint32_t)(i % 50);
        make_payload(payload, seq, lengths[i]);
        push_record(&f, seq, (unsigned char)(seq % 7), payload, lengths[i]);
        if (i % 5 == 4) wait_acked(&f, seq); /* several batches, so several rotations */
    }
    wait_acked(&f, 40);
    fixture_close(&f);
    /* Walk the segments: each starts where the previous ended, records carry on. */
    uint64_t seq = 1;
    int segments = 0;
    while (seq <= 40) {
        size_t size;
        unsigned char *data = read_file(f.dir, seq, &size);
        CHECK(data != NULL);
        if (!data) break;
        segments++;
        size_t offset = 0;
        while (offset < size) {
            uint32_t one[1] = {lengths[seq - 1]};
            offset = check_records(data, size, offset, seq, 1, one);
            seq++;
        }
        free(data);
    }
    CHECK_EQ_INT(seq, 41);
    CHECK(segments >= 2);
    remove_dir(f.dir);
}

static void test_writer_stops_on_a_sequence_gap(void) {
    fixture f;
    fixture_open(&f, 1, 1 << 30, 1, 0);
    unsigned char payload[8] = {0};
    push_record(&f, 1, 1, payload, 8);
    wait_acked(&f, 1);
    push_record(&f, 3, 1, payload, 8); /* 2 is missing */
    hft_journal_writer_status status;
    do {
        struct pollfd p = {.fd = f.notify_fd, .events = POLLIN};
        poll(&p, 1, 100);
        hft_journal_writer_status_get(f.writer, &status);
    } while (!status.failed);
    CHECK_EQ_INT(status.acked_seq, 1);
    CHECK(strstr(status.message, "out of order") != NULL);
    fixture_close(&f);
    remove_dir(f.dir);
}

static void test_start_rejects_bad_configuration(void) {
    hft_mpsc_queue *queue;
    CHECK_EQ_INT(hft_mpsc_queue_create(4, SLOT, &queue), HFT_OK);
    hft_journal_writer *writer = NULL;
    hft_journal_writer_config config = {.directory = "/tmp", .fd = -1, .segment_max_bytes = 1, .next_seq = 1,
                                        .notify_fd = -1, .batch_max_records = 1, .max_payload_bytes = 1};
    CHECK_EQ_INT(hft_journal_writer_start(queue, &config, &writer), HFT_EINVAL);
    config.fd = 0;
    config.next_seq = 0;
    CHECK_EQ_INT(hft_journal_writer_start(queue, &config, &writer), HFT_EINVAL);
    CHECK(writer == NULL);
    CHECK_EQ_INT(hft_journal_writer_join(NULL, NULL), HFT_EINVAL);
    hft_mpsc_queue_destroy(queue);
}

/* The writer thread's allowed CPUs as the kernel lists them ("1", "0-1"), found by its name. */
static int writer_cpus_allowed(char *out, size_t size) {
    DIR *tasks = opendir("/proc/self/task");
    if (!tasks) return 0;
    int found = 0;
    struct dirent *entry;
    while (!found && (entry = readdir(tasks)) != NULL) {
        if (entry->d_name[0] == '.') continue;
        char path[300], line[256];
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", entry->d_name);
        FILE *comm = fopen(path, "r");
        if (!comm) continue;
        int is_writer = fgets(line, sizeof line, comm) && strncmp(line, "hft-journal", 11) == 0;
        fclose(comm);
        if (!is_writer) continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/status", entry->d_name);
        FILE *status = fopen(path, "r");
        if (!status) continue;
        while (fgets(line, sizeof line, status))
            if (strncmp(line, "Cpus_allowed_list:", 18) == 0) {
                char *value = line + 18;
                while (*value == ' ' || *value == '\t') value++;
                value[strcspn(value, "\n")] = 0;
                size_t length = strlen(value);
                if (length >= size) length = size - 1;
                memcpy(out, value, length);
                out[length] = 0;
                found = 1;
            }
        fclose(status);
    }
    closedir(tasks);
    return found;
}

static void test_writer_can_be_placed_on_chosen_cpus(void) {
    cpu_set_t mine;
    CHECK_EQ_INT(sched_getaffinity(0, sizeof mine, &mine), 0);
    int last = -1;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &mine)) last = cpu;
    CHECK(last >= 0);
    fixture f;
    fixture_open(&f, 1, 1 << 30, 1, 0);
    int cpus[] = {last};
    CHECK_EQ_INT(hft_journal_writer_set_cpus(f.writer, cpus, 1), HFT_OK);
    char allowed[64] = "", expected[16];
    snprintf(expected, sizeof expected, "%d", last);
    CHECK(writer_cpus_allowed(allowed, sizeof allowed));
    CHECK(strcmp(allowed, expected) == 0);
    /* Bad lists change nothing. */
    int negative[] = {-1}, too_big[] = {CPU_SETSIZE};
    CHECK_EQ_INT(hft_journal_writer_set_cpus(f.writer, cpus, 0), HFT_EINVAL);
    CHECK_EQ_INT(hft_journal_writer_set_cpus(f.writer, negative, 1), HFT_EINVAL);
    CHECK_EQ_INT(hft_journal_writer_set_cpus(f.writer, too_big, 1), HFT_EINVAL);
    CHECK_EQ_INT(hft_journal_writer_set_cpus(NULL, cpus, 1), HFT_EINVAL);
    CHECK(writer_cpus_allowed(allowed, sizeof allowed));
    CHECK(strcmp(allowed, expected) == 0);
    /* And the placed writer still writes. */
    unsigned char payload[8];
    make_payload(payload, 1, sizeof payload);
    push_record(&f, 1, 1, payload, sizeof payload);
    wait_acked(&f, 1);
    fixture_close(&f);
    remove_dir(f.dir);
}

/* A kept CPU: records pushed one at a time, each after the last one's ack and announced
 * (SubmitOrder's pattern), then bursts of split records not announced, all written in order;
 * the keeper woke the writer for the first kind only. */
static void test_a_writer_with_a_kept_cpu_writes_everything_in_order(void) {
    cpu_set_t mine;
    CHECK_EQ_INT(sched_getaffinity(0, sizeof mine, &mine), 0);
    int last = -1;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &mine)) last = cpu;
    fixture f;
    fixture_open(&f, 1, 1 << 30, 1, 1 << 20);
    int cpus[] = {last};
    CHECK_EQ_INT(hft_journal_writer_keep_cpu(f.writer, 0, cpus, 1), HFT_EINVAL);
    CHECK_EQ_INT(hft_journal_writer_keep_cpu(f.writer, HFT_JOURNAL_MAX_KEEP_CPU_US + 1, cpus, 1), HFT_EINVAL);
    CHECK_EQ_INT(hft_journal_writer_keep_cpu(f.writer, 1000, cpus, 0), HFT_EINVAL);
    hft_cpu_keeper_stats stats;
    hft_journal_writer_keep_cpu_awake(f.writer); /* no keeper yet: a no-op, as the kick */
    hft_journal_writer_kick(f.writer);
    hft_journal_writer_keeper_stats(f.writer, &stats);
    CHECK_EQ_INT(stats.wakes + stats.parks + stats.kicks, 0);
    CHECK_EQ_INT(hft_journal_writer_set_cpus(f.writer, cpus, 1), HFT_OK);
    CHECK_EQ_INT(hft_journal_writer_keep_cpu(f.writer, 50000, cpus, 1), HFT_OK);
    CHECK_EQ_INT(hft_journal_writer_keep_cpu(f.writer, 50000, cpus, 1), HFT_EINVAL); /* once */
    unsigned char payload[600];
    uint32_t lengths[400];
    uint64_t seq = 1;
    for (; seq <= 200; seq++) {
        lengths[seq - 1] = 16 + (uint32_t)(seq % 7);
        make_payload(payload, seq, lengths[seq - 1]);
        hft_journal_writer_keep_cpu_awake(f.writer);
        push_record(&f, seq, (unsigned char)(seq % 7), payload, lengths[seq - 1]);
        hft_journal_writer_kick(f.writer);
        wait_acked(&f, seq);
    }
    hft_journal_writer_keeper_stats(f.writer, &stats);
    CHECK(stats.wakes > 0);
    struct timespec past_window = {0, 100 * 1000 * 1000};
    nanosleep(&past_window, NULL);
    hft_journal_writer_keeper_stats(f.writer, &stats);
    uint64_t wakes_before_bursts = stats.wakes;
    CHECK(stats.parks > 0);
    for (; seq <= 400; seq++) { /* bursts, some records split over continuation slots */
        lengths[seq - 1] = seq % 3 ? 24 : 500;
        make_payload(payload, seq, lengths[seq - 1]);
        push_record(&f, seq, (unsigned char)(seq % 7), payload, lengths[seq - 1]);
    }
    wait_acked(&f, 400);
    hft_journal_writer_keeper_stats(f.writer, &stats);
    CHECK_EQ_INT(stats.wakes, wakes_before_bursts); /* unannounced: the keeper stayed parked */
    fixture_close(&f);
    size_t size;
    unsigned char *data = read_file(f.dir, 1, &size);
    CHECK(data != NULL);
    if (data) check_records(data, size, 0, 1, 400, lengths);
    free(data);
    remove_dir(f.dir);
}

/* --- a full disk: a small tmpfs of the test's own (root only) ------------------------------ */

static int mount_small_tmpfs(char *dir, size_t size, const char *options) {
    strcpy(dir, "/tmp/hft_journal_full_XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    if (geteuid() != 0 || mount("tmpfs", dir, "tmpfs", 0, options) != 0) {
        printf("SKIP full-disk journal tests: cannot mount a %zu-byte tmpfs on %s (%s); they need root\n",
               size, dir, geteuid() != 0 ? "not root" : strerror(errno));
        rmdir(dir);
        return 0;
    }
    return 1;
}

static void unmount_small_tmpfs(const char *dir) {
    CHECK_EQ_INT(umount(dir), 0);
    CHECK_EQ_INT(rmdir(dir), 0);
}

/* Take every free byte of the filesystem but `leave` into one filler file; returns its fd. */
static int fill_disk(const char *dir, off_t leave) {
    char path[128];
    snprintf(path, sizeof path, "%s/filler", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    off_t size = 0;
    for (off_t step = 1 << 20; step >= 4096; step /= 2)
        while (posix_fallocate(fd, size, step) == 0) size += step;
    if (leave) CHECK_EQ_INT(ftruncate(fd, size > leave ? size - leave : 0), 0);
    return fd;
}

static void wait_status(fixture *f, int want_blocked, hft_journal_writer_status *status) {
    for (int i = 0; i < 5000; i++) {
        hft_journal_writer_status_get(f->writer, status);
        if (status->blocked == want_blocked || status->failed) return;
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }
    CHECK(!"writer never reached the expected blocked state");
}

static void test_writer_waits_for_space_then_resumes_losing_nothing(void) {
    char dir[64];
    if (!mount_small_tmpfs(dir, 1 << 20, "size=1m")) return;
    fixture f;
    fixture_open_in(&f, dir, 1, 1 << 30, 1, 64 * 1024);
    uint32_t lengths[64];
    unsigned char payload[4096];
    for (int i = 0; i < 64; i++) lengths[i] = 3000 + (uint32_t)i;
    uint64_t seq = 1;
    for (; seq <= 4; seq++) {
        make_payload(payload, seq, lengths[seq - 1]);
        push_record(&f, seq, (unsigned char)(seq % 7), payload, lengths[seq - 1]);
    }
    wait_acked(&f, 4);
    /* 12 KiB left, less than the 64 KiB chunk: the writer reserves smaller steps and goes on. */
    int filler = fill_disk(dir, 12 * 1024);
    hft_journal_writer_status status;
    for (; seq <= 36; seq++) { /* 32 more records: ~96 KiB, more than the chunk left reserved */
        make_payload(payload, seq, lengths[(seq - 1) % 64]);
        push_record(&f, seq, (unsigned char)(seq % 7), payload, lengths[(seq - 1) % 64]);
        if (seq % 4 == 0) { /* one batch at a time, until the writer has to wait */
            do {
                struct pollfd p = {.fd = f.notify_fd, .events = POLLIN};
                if (poll(&p, 1, 10) == 1) {
                    uint64_t count;
                    CHECK(read(f.notify_fd, &count, 8) == 8);
                }
                hft_journal_writer_status_get(f.writer, &status);
            } while (status.acked_seq < seq && !status.blocked && !status.failed);
            if (status.blocked) break;
        }
    }
    /* Now the disk is full: the next records wait, unacknowledged, and the writer says why. */
    CHECK(seq <= 36); /* ~96 KiB never fit in the 12 KiB left */
    uint64_t last = seq > 36 ? 36 : seq;
    for (seq = last + 1; seq <= last + 3; seq++) {
        make_payload(payload, seq, lengths[(seq - 1) % 64]);
        push_record(&f, seq, (unsigned char)(seq % 7), payload, lengths[(seq - 1) % 64]);
    }
    last = seq - 1;
    wait_status(&f, 1, &status);
    CHECK_EQ_INT(status.failed, 0);
    CHECK_EQ_INT(status.blocked, 1);
    CHECK_EQ_INT(status.blocked_error, ENOSPC);
    CHECK(status.blocked_bytes > 0);
    CHECK_EQ_INT(status.stalls, 1);
    uint64_t acked_while_full = status.acked_seq;
    CHECK(acked_while_full > 4 && acked_while_full < last); /* it wrote on in small steps, then stopped */
    struct timespec pause = {0, 30000000};
    nanosleep(&pause, NULL);
    hft_journal_writer_status_get(f.writer, &status);
    CHECK_EQ_INT(status.acked_seq, acked_while_full); /* still nothing acknowledged that is not written */
    CHECK(status.space_retries >= 2);                   /* and it keeps trying */
    /* Space returns: the writer carries on by itself with every waiting record. */
    CHECK_EQ_INT(ftruncate(filler, 0), 0);
    wait_acked(&f, last);
    hft_journal_writer_status_get(f.writer, &status);
    CHECK_EQ_INT(status.blocked, 0);
    CHECK_EQ_INT(status.stalls, 1);
    fixture_close(&f);
    close(filler);
    size_t size;
    unsigned char *data = read_file(dir, 1, &size);
    CHECK(data != NULL);
    if (data) {
        uint32_t expected[80];
        for (uint64_t s = 1; s <= last; s++) expected[s - 1] = lengths[(s - 1) % 64];
        check_records(data, size, 0, 1, (int)last, expected);
    }
    free(data);
    unmount_small_tmpfs(dir);
}

static void test_blocked_writer_gives_up_when_aborted(void) {
    char dir[64];
    if (!mount_small_tmpfs(dir, 256 * 1024, "size=256k")) return;
    fixture f;
    fixture_open_in(&f, dir, 1, 1 << 30, 1, 64 * 1024);
    unsigned char payload[4096];
    make_payload(payload, 1, 100);
    push_record(&f, 1, 1, payload, 100);
    wait_acked(&f, 1);
    int filler = fill_disk(dir, 0);
    /* 24 * 3020 bytes: more than the 64 KiB already reserved, and what cannot be written yet fits
     * in the queue (256 slots, 48 a record). */
    for (uint64_t seq = 2; seq <= 25; seq++) {
        make_payload(payload, seq, 3000);
        push_record(&f, seq, (unsigned char)(seq % 7), payload, 3000);
    }
    hft_journal_writer_status status;
    wait_status(&f, 1, &status);
    CHECK_EQ_INT(status.blocked, 1);
    CHECK_EQ_INT(hft_journal_writer_abort(f.writer), HFT_OK);
    CHECK_EQ_INT(hft_journal_writer_abort(NULL), HFT_EINVAL);
    for (int i = 0; i < 5000 && !status.failed; i++) {
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
        hft_journal_writer_status_get(f.writer, &status);
    }
    CHECK_EQ_INT(status.failed, 1);
    CHECK_EQ_INT(status.error, ENOSPC);
    CHECK(strstr(status.message, "waiting for") != NULL);
    CHECK(status.acked_seq >= 1 && status.acked_seq < 25);
    fixture_close(&f);
    close(filler);
    unmount_small_tmpfs(dir);
}

static void test_rotation_on_request_starts_a_new_segment_before_the_next_batch(void) {
    fixture f;
    fixture_open(&f, 1, 1 << 30, 1, 4096);
    unsigned char payload[16];
    make_payload(payload, 1, 16);
    CHECK_EQ_INT(hft_journal_writer_request_rotation(NULL), HFT_EINVAL);
    push_record(&f, 1, 1, payload, 16);
    wait_acked(&f, 1);
    CHECK_EQ_INT(hft_journal_writer_request_rotation(f.writer), HFT_OK);
    make_payload(payload, 2, 16);
    push_record(&f, 2, 2, payload, 16);
    wait_acked(&f, 2);
    make_payload(payload, 3, 16);
    push_record(&f, 3, 3, payload, 16); /* the request was for one rotation only */
    wait_acked(&f, 3);
    hft_journal_writer_status status;
    hft_journal_writer_status_get(f.writer, &status);
    CHECK_EQ_INT(status.rotations, 1);
    fixture_close(&f);
    size_t size;
    unsigned char *first = read_file(f.dir, 1, &size);
    uint32_t sixteen[2] = {16, 16};
    CHECK(first != NULL);
    if (first) CHECK_EQ_INT(check_records(first, size, 0, 1, 1, sixteen), 20 + 16);
    CHECK_EQ_INT(size, 20 + 16); /* its reserved space was given back on rotation */
    unsigned char *second = read_file(f.dir, 2, &size); /* the batch after the request opens it */
    CHECK(second != NULL);
    if (second) check_records(second, size, 0, 2, 2, sixteen);
    free(first);
    free(second);
    remove_dir(f.dir);
}

/* While the loop polls (hft_journal_writer_poll_begin) an ack is not signalled on the eventfd;
 * poll_end returns it; afterwards acks are signalled again. */
static void test_acks_are_not_signalled_while_the_loop_polls(void) {
    fixture f;
    fixture_open(&f, 1, 1 << 30, 1, 4096);
    unsigned char payload[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    hft_journal_writer_poll_begin(f.writer);
    push_record(&f, 1, 1, payload, sizeof payload);
    hft_journal_writer_status status;
    for (int i = 0; i < 5000; i++) {
        hft_journal_writer_status_get(f.writer, &status);
        if (status.acked_seq >= 1) break;
        usleep(1000);
    }
    CHECK_EQ_INT(status.acked_seq, 1);
    struct pollfd p = {.fd = f.notify_fd, .events = POLLIN};
    CHECK_EQ_INT(poll(&p, 1, 50), 0);
    CHECK_EQ_INT(hft_journal_writer_poll_end(f.writer), 1);
    push_record(&f, 2, 1, payload, sizeof payload);
    CHECK_EQ_INT(poll(&p, 1, 5000), 1);
    wait_acked(&f, 2);
    fixture_close(&f);
    remove_dir(f.dir);
}

/* The buckets tile 0 .. INT64_MAX without gaps or overlaps, each within 1/16 of its values, and the
 * writer counts each fdatasync it reports once. */
static void test_fsync_latency_is_counted_per_bucket(void) {
    int64_t low, width;
    uint64_t next = 0;
    for (size_t i = 0; i < HFT_JOURNAL_SYNC_BUCKETS; i++) {
        CHECK_EQ_INT(hft_journal_sync_bucket(i, &low, &width), HFT_OK);
        CHECK_EQ_INT((uint64_t)low, next);
        CHECK(width >= 1 && (low < 32 ? width == 1 : width * 16 <= low));
        next = (uint64_t)low + (uint64_t)width;
    }
    CHECK_EQ_INT(next, (uint64_t)INT64_MAX + 1); /* the last bucket ends at INT64_MAX */
    CHECK_EQ_INT(hft_journal_sync_bucket(HFT_JOURNAL_SYNC_BUCKETS, &low, &width), HFT_EINVAL);
    CHECK_EQ_INT(hft_journal_sync_bucket(0, NULL, &width), HFT_EINVAL);

    fixture f;
    fixture_open(&f, 1, 1 << 30, 1, 4096);
    unsigned char payload[16];
    for (uint64_t seq = 1; seq <= 20; seq++) {
        make_payload(payload, seq, sizeof payload);
        push_record(&f, seq, (unsigned char)(seq % 7), payload, sizeof payload);
        wait_acked(&f, seq); /* one by one: one fsync each */
    }
    uint64_t *counts = calloc(HFT_JOURNAL_SYNC_BUCKETS, sizeof *counts);
    CHECK_EQ_INT(hft_journal_writer_sync_latency(f.writer, counts, HFT_JOURNAL_SYNC_BUCKETS), HFT_OK);
    hft_journal_writer_status status;
    hft_journal_writer_status_get(f.writer, &status);
    uint64_t total = 0;
    for (size_t i = 0; i < HFT_JOURNAL_SYNC_BUCKETS; i++) {
        total += counts[i];
    }
    CHECK_EQ_INT(total, status.fsyncs);
    CHECK(status.fsyncs >= 20);
    CHECK_EQ_INT(hft_journal_writer_sync_latency(NULL, counts, 1), HFT_EINVAL);
    free(counts);
    fixture_close(&f);
}

int main(void) {
    RUN(test_crc32_matches_zlib_vectors);
    RUN(test_crc32_every_length_and_offset_matches_the_definition);
    RUN(test_writer_frames_small_and_split_records);
    RUN(test_writer_rotates_segments_in_sequence);
    RUN(test_writer_stops_on_a_sequence_gap);
    RUN(test_start_rejects_bad_configuration);
    RUN(test_writer_can_be_placed_on_chosen_cpus);
    RUN(test_a_writer_with_a_kept_cpu_writes_everything_in_order);
    RUN(test_writer_waits_for_space_then_resumes_losing_nothing);
    RUN(test_blocked_writer_gives_up_when_aborted);
    RUN(test_rotation_on_request_starts_a_new_segment_before_the_next_batch);
    RUN(test_acks_are_not_signalled_while_the_loop_polls);
    RUN(test_fsync_latency_is_counted_per_bucket);
    return TEST_SUMMARY("journal");
}
