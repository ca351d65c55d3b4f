/*
 * hft_order_retire.h -- order rows leaving the execution state's table: each row's client order
 * id forgotten in the index (hft_client_ids.h) while it still names the row's order, and, when
 * asked, the row freed (its order id and its id text zeroed).
 *
 * The table's client order ids are kept beside it as fixed-width rows of HFT_CLIENT_ID_MAX
 * bytes, zero-padded (an empty row: no id); slot_ids holds each row's order id (0: free).
 *
 * Why in C: the service retires as many orders as it takes (a 100-order stream message retires
 * ~100 older ones, a SubmitOrder one); gathering their ids into a text with numpy and a copy of
 * the rows cost ~35 us a message and ~10 us a SubmitOrder, for well under a microsecond of C.
 *
 * Every slot is checked before anything changes: HFT_EINVAL (a slot past the table) changes
 * nothing. Ownership: every pointer belongs to the caller and is used only during the call.
 * Concurrency: none; the caller owns the table and the index.
 */
#ifndef HFT_ORDER_RETIRE_H
#define HFT_ORDER_RETIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hft_client_ids.h"
#include "hft_common.h"
#include "hft_order_fold.h"

/* Forget the client order ids of table rows slots[0, n) (account: the row's account_id; order:
 * slot_ids[slot]; rows with no id are skipped); with free_rows, zero their slot_ids entries and
 * id rows too. *removed: how many ids went (an id that names another order now stays). */
int hft_order_retire_rows(hft_client_ids *index, const hft_order_row *table, int64_t *slot_ids, char *id_rows,
                          size_t table_len, const int64_t *slots, size_t n, bool free_rows, size_t *removed);

#endif /* HFT_ORDER_RETIRE_H */
