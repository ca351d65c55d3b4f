/* The client order id index (see hft_client_ids.h). */
#include "hft_client_ids.h"

#include <stdlib.h>
#include <string.h>

/* The table is compact cells (16 bytes, four to a cache line) that point into an arena of keys:
 * a probe reads cells only, and a key record is read when a cell's whole hash matches. Keys are
 * handed out from a free list (last freed, first reused) or the arena's end, so a batch's keys sit
 * together and a batch's adds and removals walk memory in order. */
typedef struct cell {
    uint64_t hash;
    uint32_t key; /* the key record's index + 1; 0: the cell is free */
    uint32_t unused;
} cell;

typedef struct key_record {
    uint64_t account;
    int64_t order_id;
    uint8_t length;
    char id[HFT_CLIENT_ID_MAX];
} key_record;

struct hft_client_ids {
    cell *cells;
    size_t mask; /* cells - 1; a power of two minus one */
    size_t count;
    key_record *keys;
    size_t key_capacity;
    size_t keys_used;  /* records ever handed out (the arena's end) */
    uint32_t *free_keys; /* indexes of freed records (key_capacity of room) */
    size_t free_count;
    /* check()'s set of the batch's ids so far: offset << 8 | length, -1 free (reused, grown) */
    int64_t *seen;
    size_t seen_mask;
};

static uint64_t hash_of(uint64_t account, const char *id, size_t length) {
    uint64_t h = account * 0x9E3779B97F4A7C15ull ^ (length * 0xC2B2AE3D27D4EB4Full);
    size_t i = 0;
    for (; i + 8 <= length; i += 8) {
        uint64_t word;
        memcpy(&word, id + i, 8);
        h = (h ^ word) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
    }
    uint64_t tail = 0;
    memcpy(&tail, id + i, length - i);
    h = (h ^ tail) * 0xC4CEB9FE1A85EC53ull;
    return h ^ (h >> 29);
}

/* A batch's keys hashed PREFETCH_AHEAD items before their probe, with their home cell prefetched
 * then. The probes land on random cells of a table far bigger than the caches (8 MB of cells for
 * 200,000 ids): without it each probe waits a memory round trip for its cell. */
enum { PREFETCH_AHEAD = 8 };

typedef struct lookahead {
    const hft_client_ids *index;
    const uint64_t *accounts; /* one per key, or NULL: `account` for every key */
    uint64_t account;
    const char *text;
    const int64_t *lengths; /* non-negative and within the text (lengths_fit) */
    size_t n;
    size_t next;   /* the next key to hash */
    size_t offset; /* where its id starts in text */
    uint64_t hashes[PREFETCH_AHEAD];
} lookahead;

static void lookahead_step(lookahead *a) {
    if (a->next >= a->n) return;
    const int64_t length = a->lengths[a->next];
    uint64_t hash = 0; /* (an id of no valid length is never probed) */
    if (length >= 1 && length <= HFT_CLIENT_ID_MAX) {
        const uint64_t account = a->accounts != NULL ? a->accounts[a->next] : a->account;
        hash = hash_of(account, a->text + a->offset, (size_t)length);
        __builtin_prefetch(&a->index->cells[hash & a->index->mask]);
    }
    a->hashes[a->next % PREFETCH_AHEAD] = hash;
    a->offset += (size_t)length;
    a->next++;
}

static void lookahead_start(lookahead *a, const hft_client_ids *index, const uint64_t *accounts,
                            uint64_t account, const char *text, const int64_t *lengths, size_t n) {
    *a = (lookahead){.index = index, .accounts = accounts, .account = account, .text = text,
                     .lengths = lengths, .n = n};
    for (int k = 0; k < PREFETCH_AHEAD; k++) lookahead_step(a);
}

/* Key i's hash (keys are taken in order, each once), then the key PREFETCH_AHEAD further on is
 * hashed into the slot key i leaves. */
static uint64_t lookahead_take(lookahead *a, size_t i) {
    const uint64_t hash = a->hashes[i % PREFETCH_AHEAD];
    lookahead_step(a);
    return hash;
}

static int valid(const char *id, int64_t length) {
    if (length < 1 || length > HFT_CLIENT_ID_MAX) return 0;
    for (int64_t i = 0; i < length; i++)
        if ((unsigned char)id[i] < 0x20 || (unsigned char)id[i] > 0x7e) return 0;
    return 1;
}

int hft_client_ids_state(const hft_client_ids *index, uint64_t account, const char *id, size_t length) {
    if (length > HFT_CLIENT_ID_MAX || !valid(id, (int64_t)length)) return HFT_RISK_ID_INVALID;
    return hft_client_ids_get(index, account, id, length) > 0 ? HFT_RISK_ID_USED : HFT_RISK_ID_OK;
}

/* Whether lengths[0, n) are non-negative and add up to at most text_length. */
static int lengths_fit(const int64_t *lengths, size_t n, size_t text_length) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lengths[i] < 0 || (uint64_t)lengths[i] > text_length - total) return 0;
        total += (size_t)lengths[i];
    }
    return 1;
}

static size_t cell_count(size_t at_least) {
    size_t cells = 16;
    while (cells < 2 * at_least) cells <<= 1;
    return cells;
}

int hft_client_ids_new(size_t capacity_hint, hft_client_ids **out) {
    if (out == NULL) return HFT_EINVAL;
    hft_client_ids *index = calloc(1, sizeof *index);
    if (index == NULL) return HFT_ENOMEM;
    size_t cells = cell_count(capacity_hint);
    index->cells = calloc(cells, sizeof *index->cells);
    index->key_capacity = cells / 2;
    index->keys = malloc(index->key_capacity * sizeof *index->keys);
    index->free_keys = malloc(index->key_capacity * sizeof *index->free_keys);
    if (index->cells == NULL || index->keys == NULL || index->free_keys == NULL) {
        hft_client_ids_free(index);
        return HFT_ENOMEM;
    }
    index->mask = cells - 1;
    *out = index;
    return HFT_OK;
}

void hft_client_ids_free(hft_client_ids *index) {
    if (index == NULL) return;
    free(index->cells);
    free(index->keys);
    free(index->free_keys);
    free(index->seen);
    free(index);
}

size_t hft_client_ids_count(const hft_client_ids *index) { return index->count; }

void hft_client_ids_clear(hft_client_ids *index) {
    memset(index->cells, 0, (index->mask + 1) * sizeof *index->cells);
    index->count = index->keys_used = index->free_count = 0;
}

static const key_record *record_of(const hft_client_ids *index, const cell *c) { return &index->keys[c->key - 1]; }

/* The cell of (account, id), or the free cell where it would go. */
static size_t find(const hft_client_ids *index, uint64_t account, const char *id, size_t length,
                   uint64_t hash) {
    size_t i = hash & index->mask;
    for (;;) {
        const cell *c = &index->cells[i];
        if (c->key == 0) return i;
        if (c->hash == hash) {
            const key_record *k = record_of(index, c);
            if (k->account == account && k->length == length && memcmp(k->id, id, length) == 0) return i;
        }
        i = (i + 1) & index->mask;
    }
}

/* Room for `more` entries beyond count: cells at a load of at most one half, and key records. */
static int reserve(hft_client_ids *index, size_t more) {
    const size_t needed = index->count + more;
    /* Records free for new keys: the freed ones and the arena past its end. */
    if (more > index->key_capacity - index->keys_used + index->free_count) {
        size_t capacity = index->key_capacity;
        while (capacity - index->keys_used + index->free_count < more) capacity *= 2;
        if (capacity > UINT32_MAX - 1) return HFT_ENOMEM; /* (key indexes are 32-bit) */
        key_record *keys = realloc(index->keys, capacity * sizeof *keys);
        if (keys == NULL) return HFT_ENOMEM;
        index->keys = keys;
        uint32_t *free_keys = realloc(index->free_keys, capacity * sizeof *free_keys);
        if (free_keys == NULL) return HFT_ENOMEM;
        index->free_keys = free_keys;
        index->key_capacity = capacity;
    }
    if (2 * needed <= index->mask + 1) return HFT_OK;
    size_t cells = cell_count(needed);
    cell *old = index->cells;
    size_t old_cells = index->mask + 1;
    index->cells = calloc(cells, sizeof *index->cells);
    if (index->cells == NULL) {
        index->cells = old;
        return HFT_ENOMEM;
    }
    index->mask = cells - 1;
    for (size_t c = 0; c < old_cells; c++) {
        if (old[c].key == 0) continue;
        size_t i = old[c].hash & index->mask;
        while (index->cells[i].key != 0) i = (i + 1) & index->mask;
        index->cells[i] = old[c];
    }
    free(old);
    return HFT_OK;
}

static uint32_t take_key(hft_client_ids *index) {
    if (index->free_count) return index->free_keys[--index->free_count];
    return (uint32_t)index->keys_used++;
}

int64_t hft_client_ids_get(const hft_client_ids *index, uint64_t account, const char *id, size_t length) {
    if (index == NULL || id == NULL || length < 1 || length > HFT_CLIENT_ID_MAX) return 0;
    const cell *c = &index->cells[find(index, account, id, length, hash_of(account, id, length))];
    return c->key ? record_of(index, c)->order_id : 0;
}

int hft_client_ids_check(hft_client_ids *index, uint64_t account, const char *text, size_t text_length,
                         const int64_t *lengths, size_t n, uint8_t *states, int *all_ok) {
    if (index == NULL || all_ok == NULL || (n && (text == NULL || lengths == NULL || states == NULL)))
        return HFT_EINVAL;
    if (!lengths_fit(lengths, n, text_length)) return HFT_EINVAL;
    size_t seen_cells = cell_count(n);
    if (index->seen == NULL || index->seen_mask + 1 < seen_cells) {
        int64_t *seen = realloc(index->seen, seen_cells * sizeof *seen);
        if (seen == NULL) return HFT_ENOMEM;
        index->seen = seen;
        index->seen_mask = seen_cells - 1;
    }
    memset(index->seen, 0xff, (index->seen_mask + 1) * sizeof *index->seen); /* every cell -1 */
    int ok = 1;
    size_t offset = 0;
    lookahead ahead;
    lookahead_start(&ahead, index, NULL, account, text, lengths, n);
    for (size_t i = 0; i < n; i++) {
        const char *id = text + offset;
        const size_t length = (size_t)lengths[i];
        offset += length;
        const uint64_t hash = lookahead_take(&ahead, i);
        if (!valid(id, lengths[i])) {
            states[i] = HFT_RISK_ID_INVALID;
            ok = 0;
            continue;
        }
        if (index->cells[find(index, account, id, length, hash)].key != 0) {
            states[i] = HFT_RISK_ID_USED;
            ok = 0;
            continue;
        }
        /* Earlier in the batch? The set holds each earlier valid id as offset << 8 | length. */
        size_t cell = hash & index->seen_mask;
        int repeated = 0;
        for (;;) {
            const int64_t held = index->seen[cell];
            if (held < 0) break;
            const size_t held_offset = (size_t)held >> 8, held_length = (size_t)held & 0xff;
            if (held_length == length && memcmp(text + held_offset, id, length) == 0) {
                repeated = 1;
                break;
            }
            cell = (cell + 1) & index->seen_mask;
        }
        if (repeated) {
            states[i] = HFT_RISK_ID_USED;
            ok = 0;
            continue;
        }
        index->seen[cell] = (int64_t)((offset - length) << 8 | length);
        states[i] = HFT_RISK_ID_OK;
    }
    *all_ok = ok;
    return HFT_OK;
}

int hft_client_ids_add(hft_client_ids *index, const uint64_t *accounts, const char *text, size_t text_length,
                       const int64_t *lengths, const int64_t *order_ids, size_t n) {
    if (index == NULL || (n && (accounts == NULL || text == NULL || lengths == NULL || order_ids == NULL)))
        return HFT_EINVAL;
    if (!lengths_fit(lengths, n, text_length)) return HFT_EINVAL;
    size_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        if (!valid(text + offset, lengths[i]) || order_ids[i] < 1) return HFT_EINVAL;
        offset += (size_t)lengths[i];
    }
    int rc = reserve(index, n);
    if (rc != HFT_OK) return rc;
    offset = 0;
    lookahead ahead; /* (after reserve: it may have moved the cells) */
    lookahead_start(&ahead, index, accounts, 0, text, lengths, n);
    for (size_t i = 0; i < n; i++) {
        const char *id = text + offset;
        const size_t length = (size_t)lengths[i];
        offset += length;
        const uint64_t hash = lookahead_take(&ahead, i);
        cell *c = &index->cells[find(index, accounts[i], id, length, hash)];
        if (c->key == 0) {
            const uint32_t key = take_key(index);
            key_record *k = &index->keys[key];
            k->account = accounts[i];
            k->length = (uint8_t)length;
            memcpy(k->id, id, length);
            c->hash = hash;
            c->key = key + 1;
            index->count++;
        }
        index->keys[c->key - 1].order_id = order_ids[i];
    }
    return HFT_OK;
}

/* Free cell i and its key record, moving later cells of its run back so that every entry stays
 * reachable. */
static void delete_at(hft_client_ids *index, size_t i) {
    index->free_keys[index->free_count++] = index->cells[i].key - 1;
    size_t j = i;
    for (;;) {
        j = (j + 1) & index->mask;
        if (index->cells[j].key == 0) break;
        size_t home = index->cells[j].hash & index->mask;
        /* Cell j may move to i unless its home lies cyclically in (i, j]. */
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            index->cells[i] = index->cells[j];
            i = j;
        }
    }
    index->cells[i].key = 0;
    index->count--;
}

int hft_client_ids_remove(hft_client_ids *index, const uint64_t *accounts, const char *text,
                          size_t text_length, const int64_t *lengths, const int64_t *order_ids, size_t n,
                          size_t *removed) {
    if (index == NULL || removed == NULL ||
        (n && (accounts == NULL || text == NULL || lengths == NULL || order_ids == NULL)))
        return HFT_EINVAL;
    if (!lengths_fit(lengths, n, text_length)) return HFT_EINVAL;
    size_t offset = 0, gone = 0;
    lookahead ahead;
    lookahead_start(&ahead, index, accounts, 0, text, lengths, n);
    for (size_t i = 0; i < n; i++) {
        const char *id = text + offset;
        const int64_t length = lengths[i];
        offset += (size_t)length;
        const uint64_t hash = lookahead_take(&ahead, i);
        if (length < 1 || length > HFT_CLIENT_ID_MAX) continue; /* never indexed */
        const size_t at = find(index, accounts[i], id, (size_t)length, hash);
        if (index->cells[at].key != 0 && record_of(index, &index->cells[at])->order_id == order_ids[i]) {
            delete_at(index, at);
            gone++;
        }
    }
    *removed = gone;
    return HFT_OK;
}

size_t hft_client_ids_export(const hft_client_ids *index, uint64_t *accounts, int64_t *order_ids, char *text,
                             int64_t *lengths, size_t capacity) {
    size_t written = 0;
    for (size_t c = 0; c <= index->mask && written < capacity; c++) {
        if (index->cells[c].key == 0) continue;
        const key_record *e = record_of(index, &index->cells[c]);
        accounts[written] = e->account;
        order_ids[written] = e->order_id;
        memcpy(text + written * HFT_CLIENT_ID_MAX, e->id, e->length);
        lengths[written] = e->length;
        written++;
    }
    return written;
}

int hft_client_ids_to_rows(const char *text, size_t text_length, const int64_t *lengths, size_t n, char *rows) {
    if ((text == NULL && text_length) || (lengths == NULL && n) || (rows == NULL && n)) return HFT_EINVAL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lengths[i] < 0 || lengths[i] > HFT_CLIENT_ID_MAX) return HFT_EINVAL;
        total += (size_t)lengths[i];
    }
    if (total != text_length) return HFT_EINVAL;
    for (size_t i = 0; i < n; i++) {
        char *row = rows + i * HFT_CLIENT_ID_MAX;
        size_t length = (size_t)lengths[i];
        memcpy(row, text, length);
        memset(row + length, 0, HFT_CLIENT_ID_MAX - length);
        text += length;
    }
    return HFT_OK;
}

int hft_client_ids_from_rows(const char *rows, size_t n, char *text, size_t capacity, int64_t *lengths,
                             size_t *written) {
    if ((rows == NULL && n) || (lengths == NULL && n) || written == NULL || (text == NULL && capacity))
        return HFT_EINVAL;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const char *row = rows + i * HFT_CLIENT_ID_MAX;
        const char *zero = memchr(row, 0, HFT_CLIENT_ID_MAX);
        size_t length = zero == NULL ? HFT_CLIENT_ID_MAX : (size_t)(zero - row);
        if (length > capacity - at) return HFT_ERANGE;
        memcpy(text + at, row, length);
        lengths[i] = (int64_t)length;
        at += length;
    }
    *written = at;
    return HFT_OK;
}
