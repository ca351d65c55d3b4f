/*
 * hft_admission.h -- accepted new orders turned into the engine's commands and the journal's meta
 * rows: the one place that says how a client's NewOrder becomes what the engine runs.
 *
 *   - time in force 0 (unspecified): GTC for limit and stop-limit types, IOC for market types;
 *   - a market type's price is its protective bound: the client's protection price, else the
 *     symbol's band around its reference price (buy: reference + band, sell: reference - band,
 *     at least 1), else 0 (no bound); with a bound, MARKET runs as the engine's LIMIT and
 *     STOP_MARKET as STOP_LIMIT (IOC at the bound);
 *   - self-trade prevention 0 (unspecified) is the service's default, CANCEL_RESTING;
 *   - order ids are handed out in order from first_order_id.
 * The meta row keeps what the client sent (price, type, time in force, prevention mode) for the
 * acks and reports, which show the order as the client knows it.
 *
 * Why in C: SubmitOrders, stream messages and SubmitOrderColumns batches did this with ~30
 * numpy field assignments (~100 us for a 100-order message), and SubmitOrder with a scalar twin
 * of the same rules in Python; one call now serves both.
 *
 * The orders have passed the risk check (hft_risk.h), which bounds their enums, prices and
 * quantities; the call checks again what it indexes or adds, and HFT_EINVAL (with *bad the
 * offending order's index in `positions` order) means it wrote nothing.
 *
 * Ownership: every pointer belongs to the caller and is used only during the call.
 * Concurrency: none; pure over its arguments.
 */
#ifndef HFT_ADMISSION_H
#define HFT_ADMISSION_H

#include <stddef.h>
#include <stdint.h>

#include "hft_book.h"
#include "hft_client_ids.h"
#include "hft_common.h"
#include "hft_order_fold.h"
#include "hft_order_wire.h"
#include "hft_risk.h"

/* A symbol's price band for market orders without a protection price: none unless both are > 0. */
typedef struct hft_symbol_band {
    int64_t reference; /* the instrument's reference price, in ticks */
    int64_t band;      /* how far from it a market order may trade, in ticks */
} hft_symbol_band;

/* The batch's new orders: orders[p], symbol_ids[p], commands[p] and meta[p] (arrays of `rows`)
 * for each p in positions[0..count) (positions NULL: p = 0..count-1). Each command and meta row is written
 * whole (the meta row's fields for other actions zeroed); client_id_lengths[i] (NULL: leave 0)
 * is the i-th new order's client order id length in bytes (at most HFT_ORDER_WIRE_TEXT_MAX).
 * bands: band_count entries indexed by symbol id. */
int hft_admission_new_commands(const hft_new_order_row *orders, const int64_t *symbol_ids, size_t rows,
                               const int64_t *positions, size_t count, uint64_t account_id,
                               uint64_t first_order_id, const int64_t *client_id_lengths,
                               const hft_symbol_band *bands, size_t band_count, hft_order_command *commands,
                               hft_order_meta *meta, size_t *bad);

/* hft_admission_new_commands for one order (SubmitOrder): its fields by pointer, the rest as
 * values. HFT_EINVAL (nothing written) as above. */
int hft_admission_new_command(const hft_new_order_row *order, int64_t symbol_id, uint64_t account_id,
                              uint64_t order_id, int64_t client_id_length, const hft_symbol_band *bands,
                              size_t band_count, hft_order_command *command, hft_order_meta *meta);

/* A lone new order admitted in one call (SubmitOrder): its client order id's state for account_id
 * (hft_client_ids_state), the risk check (hft_risk_check_one, with `account` bound to the
 * account's limits and exposure), and, when it passes, its command and meta row
 * (hft_admission_new_command, client id length = client_id_length). Returns its RejectReason:
 * 0 = accepted, *command and *meta written; > 0 = refused, nothing written. HFT_EINVAL (< 0),
 * nothing written: a NULL pointer, or what hft_risk_check_one or hft_admission_new_command refuse.
 * command and meta both NULL (bands then unused): only the checks, the reason as above.
 *
 * Why one call: the three took ~16 us of Python and cffi around ~1 us of C for the one order a
 * client waits on before its record can be journaled. */
int64_t hft_admission_admit_one(const hft_client_ids *ids, const char *client_id, size_t client_id_length,
                                const hft_account_limits *account, const hft_instrument_rules *rules,
                                int64_t symbol_id, const hft_new_order_row *order, uint64_t account_id,
                                uint64_t order_id, const hft_symbol_band *bands, size_t band_count,
                                hft_order_command *command, hft_order_meta *meta);

#endif /* HFT_ADMISSION_H */
