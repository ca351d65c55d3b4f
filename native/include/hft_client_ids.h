/*
 * hft_client_ids.h -- the execution service's client order id index: (account, client order id)
 * -> the order id it names, for the orders the service still holds, and the admission check of a
 * batch's ids (valid text, not used by the account, not repeated in the batch).
 *
 * Why in C: a batch of 10,000 orders spent ~18 ms of ~40 on its client order ids in Python
 * dicts (check, index, retire), more than on risk, matching and bookkeeping together.
 *
 * A client order id is 1..HFT_CLIENT_ID_MAX bytes of printable ASCII (0x20..0x7e). The index is
 * open addressing with linear probing and deletion by backward shift, over 16-byte cells (a full
 * hash and the index of a key record); the keys are copied into an arena of records reused
 * last-freed-first, so no string is allocated per order and nothing in it points into the
 * caller's memory. The cells grow (doubling, rehashing) to stay at most half full.
 *
 * Batches of ids travel as one text (the ids concatenated) and their byte lengths.
 *
 * Ownership: the index belongs to whoever made it (hft_client_ids_free); every other pointer
 * belongs to the caller and is used only during the call.
 * Concurrency: none; one writer.
 */
#ifndef HFT_CLIENT_IDS_H
#define HFT_CLIENT_IDS_H

#include <stddef.h>
#include <stdint.h>

#include "hft_common.h"
#include "hft_risk.h"

#define HFT_CLIENT_ID_MAX 64

/* hft_client_ids_check's states are hft_risk.h's HFT_RISK_ID_*: what the risk checks take. */

typedef struct hft_client_ids hft_client_ids;

int hft_client_ids_new(size_t capacity_hint, hft_client_ids **out);
void hft_client_ids_free(hft_client_ids *index);
size_t hft_client_ids_count(const hft_client_ids *index);
void hft_client_ids_clear(hft_client_ids *index);

/* The order id (account, id[0, length)) names, or 0. */
int64_t hft_client_ids_get(const hft_client_ids *index, uint64_t account, const char *id, size_t length);

/* One id's state for `account`, as hft_client_ids_check gives it for a batch of one:
 * HFT_RISK_ID_INVALID, HFT_RISK_ID_USED or HFT_RISK_ID_OK (id may be NULL only when length is 0). */
int hft_client_ids_state(const hft_client_ids *index, uint64_t account, const char *id, size_t length);

/* For n ids of one account (text, lengths): states[i] HFT_RISK_ID_INVALID (not 1..64
 * printable ASCII bytes), HFT_RISK_ID_USED (the account's already, or the same as an earlier
 * id of the batch) or HFT_RISK_ID_OK; *all_ok says whether every one is OK.
 * HFT_EINVAL: lengths that are negative or do not fit text_length. HFT_ENOMEM. */
int hft_client_ids_check(hft_client_ids *index, uint64_t account, const char *text, size_t text_length,
                         const int64_t *lengths, size_t n, uint8_t *states, int *all_ok);

/* Index n ids (text, lengths) of accounts[i] as order_ids[i] (> 0), replacing what an id named
 * before. HFT_EINVAL (nothing indexed): an id that is not valid, lengths that do not fit
 * text_length. HFT_ENOMEM (nothing indexed). */
int hft_client_ids_add(hft_client_ids *index, const uint64_t *accounts, const char *text, size_t text_length,
                       const int64_t *lengths, const int64_t *order_ids, size_t n);

/* Forget each of n ids (text, lengths) of accounts[i] that still names order_ids[i] (one that
 * names another order now stays). *removed: how many went. HFT_EINVAL (nothing removed):
 * lengths that do not fit text_length. */
int hft_client_ids_remove(hft_client_ids *index, const uint64_t *accounts, const char *text,
                          size_t text_length, const int64_t *lengths, const int64_t *order_ids, size_t n,
                          size_t *removed);

/* Up to capacity of the index's entries, in no particular order: accounts, order ids, and the ids
 * (entry i's at text + i x HFT_CLIENT_ID_MAX) with their lengths. Returns how many were written. */
size_t hft_client_ids_export(const hft_client_ids *index, uint64_t *accounts, int64_t *order_ids, char *text,
                             int64_t *lengths, size_t capacity);

/* Ids kept one per fixed-width row of HFT_CLIENT_ID_MAX bytes, zero-padded (the order table keeps
 * each row's id this way: no string object per order). An id holds no zero byte, so a row's id is
 * its bytes before the first zero.
 *
 * hft_client_ids_to_rows: n ids (text, lengths) into rows[0, n). HFT_EINVAL (nothing written): a
 * length outside 0..HFT_CLIENT_ID_MAX, or lengths that do not add up to text_length. */
int hft_client_ids_to_rows(const char *text, size_t text_length, const int64_t *lengths, size_t n, char *rows);

/* The ids of rows[0, n) joined into text (room for capacity bytes) and their lengths (0 for an
 * empty row). *written: the text's bytes. HFT_ERANGE when they do not fit capacity. */
int hft_client_ids_from_rows(const char *rows, size_t n, char *text, size_t capacity, int64_t *lengths,
                             size_t *written);

#endif /* HFT_CLIENT_IDS_H */
