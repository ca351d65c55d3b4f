/*
 * hft_order_fold.h -- the execution service's order bookkeeping for one applied batch: the
 * matching engine's events folded into the order table (status, open and filled quantity,
 * notional, price after a replace) with one execution report per order event and per side of
 * a fill, and one trade row per fill (services/execution/state.py, ExecutionState.apply_batch).
 *
 * Why: the same fold in Python cost ~5 us an event (a tuple per row, a list per touched order),
 * most of a SubmitOrders call of crossing orders; the engine itself matches ~10 M orders/s.
 *
 * The rows are the service's numpy structured arrays: hft_order_row is ORDER_DTYPE, field for
 * field (its natural C layout has no padding, so the same bytes); reports and trades are
 * REPORT_DTYPE and FILL_DTYPE rows, packed as numpy packs them, so that Python takes them as they
 * are. hftgate/native/order_fold.py checks every layout against its dtype.
 *
 * First the batch's NEW commands become their rows: account, side, symbol, quantity (open in
 * full), stop price and display from the command; the client's price, protection, type, time
 * in force, self-trade rule, post-only flag and priority from its meta row; status 0 (not working
 * until the engine's ACK, so that exposure counts it from there); created_ns = received_ns.
 *
 * Then per event, in order (the rules are apply_batch's; see there for why):
 *   FILL      both orders: cum += qty, notional += price * qty (exact, saturated at int64's
 *             bounds), leaves from the event, status PARTIALLY_FILLED or FILLED; a report per
 *             side (taker first), the counterparty id shown only within one account; a trade.
 *   REJECT    the input is refused: (command index, reason) into rejected[] (the caller closes
 *             a refused NEW's row and frees its client order id).
 *   ACK       leaves = qty; PENDING_TRIGGER for the engine's stop types, else NEW.
 *   TRIGGERED PARTIALLY_FILLED if it had fills, else NEW.
 *   REPLACED  a waiting stop stays PENDING_TRIGGER (a new stop price, when the command has one,
 *             and a new engine price unless it is a stop-market); otherwise its price changes;
 *             quantity = cum + qty, leaves = qty.
 *   CANCELED  leaves from the event (a partial cancel keeps the status), else CANCELED; the
 *             reason is the engine's mapped, or the command's cancel reason for a user cancel
 *             that carries one (kill switch).
 *   EXPIRED   leaves = 0, EXPIRED; an unfilled market order's remainder says NO_LIQUIDITY.
 * Events of orders at or above restore_id_base (recovery's last-price orders) are skipped;
 * event types it does not know are counted in *unknown and skipped.
 *
 * Every row touched gets updated_ns = transact_ns; touched[] lists each touched slot once, in
 * first-touch order, with before[] its open lots before the batch (0 if it was not open, and 0
 * for the batch's new orders, listed first): what the caller's exposure update needs.
 *
 * Last, each command's outcome (hft_fold_outcome): what its ack says.
 *
 * Slots: taker_slots[i] is the table row of events[i].order_id, maker_slots[i] that of
 * events[i].maker_order_id (fills only), -1 where the order is not held. Every slot an event
 * needs is checked before anything is written: on HFT_ENOENT (*bad_event = the event's index)
 * nothing changed. HFT_ERANGE: an output array is too small (sizes that always suffice: reports
 * 2 x events, fills and rejected and touched 2 x events + new orders, outcomes one per command);
 * nothing changed either.
 *
 * Ownership: every pointer belongs to the caller and is used only during the call.
 * Concurrency: none; the caller owns the table.
 */
#ifndef HFT_ORDER_FOLD_H
#define HFT_ORDER_FOLD_H

#include <stddef.h>
#include <stdint.h>

#include "hft_book.h"
#include "hft_common.h"

/* execution.proto OrderStatus, ExecType, Liquidity, OrderType; common.proto RejectReason. */
#define HFT_FOLD_STATUS_PENDING 1
#define HFT_FOLD_STATUS_NEW 2
#define HFT_FOLD_STATUS_PARTIAL 3
#define HFT_FOLD_STATUS_FILLED 4
#define HFT_FOLD_STATUS_CANCELED 5
#define HFT_FOLD_STATUS_EXPIRED 6
#define HFT_FOLD_STATUS_REJECTED 7
#define HFT_FOLD_EXEC_NEW 1
#define HFT_FOLD_EXEC_PARTIAL_FILL 2
#define HFT_FOLD_EXEC_FILL 3
#define HFT_FOLD_EXEC_CANCELED 4
#define HFT_FOLD_EXEC_REPLACED 5
#define HFT_FOLD_EXEC_EXPIRED 6
#define HFT_FOLD_EXEC_TRIGGERED 7
#define HFT_FOLD_LIQUIDITY_MAKER 1
#define HFT_FOLD_LIQUIDITY_TAKER 2
#define HFT_FOLD_CLIENT_MARKET 2
#define HFT_FOLD_CLIENT_STOP_MARKET 4
#define HFT_FOLD_REASON_NO_LIQUIDITY 18
#define HFT_FOLD_REASON_INVALID_ORDER 20
/* Whether an order in status `status` is open (works in a book or waits for its trigger). */
static inline int hft_fold_is_open(uint8_t status) {
    return status == HFT_FOLD_STATUS_NEW || status == HFT_FOLD_STATUS_PENDING ||
           status == HFT_FOLD_STATUS_PARTIAL;
}

/* reason_of[] entry of an engine reason with no mapping (REJECT: INVALID_ORDER, else none). */
#define HFT_FOLD_UNMAPPED 0xFFFF

/* ORDER_DTYPE (services/execution/state.py), 112 bytes. */
typedef struct hft_order_row {
    uint64_t account_id;
    int64_t price;
    int64_t stop_price;
    int64_t quantity;
    int64_t display;
    int64_t protection;
    int64_t leaves;
    int64_t cum;
    int64_t notional;
    int64_t created_ns;
    int64_t updated_ns;
    int64_t last_exec_seq;
    int32_t priority;
    uint32_t symbol_id;
    uint16_t reason;
    uint8_t side;
    uint8_t order_type; /* the client's: execution.proto OrderType */
    uint8_t tif;
    uint8_t stp;
    uint8_t post_only;
    uint8_t status;
} hft_order_row;

/* REPORT_DTYPE, field for field (packed, as numpy lays it out: 122 bytes). */
typedef struct __attribute__((packed)) hft_report_row {
    int64_t sequence;
    int64_t input_sequence;
    int64_t order_id;
    uint64_t account_id;
    int64_t price;
    int64_t quantity;
    int64_t last_price;
    int64_t last_quantity;
    int64_t leaves;
    int64_t cum;
    int64_t trade_id;
    int64_t counterparty_order_id;
    int64_t received_ns;
    int64_t transact_ns;
    uint32_t symbol_id;
    uint16_t reason;
    uint8_t exec_type;
    uint8_t side;
    uint8_t status;
    uint8_t liquidity;
} hft_report_row;

/* FILL_DTYPE, field for field (packed: 69 bytes). */
typedef struct __attribute__((packed)) hft_fill_row {
    int64_t trade_id;
    int64_t price;
    int64_t quantity;
    int64_t buy_order_id;
    uint64_t buy_account_id;
    int64_t sell_order_id;
    uint64_t sell_account_id;
    int64_t transact_ns;
    uint32_t symbol_id;
    uint8_t aggressor_side;
} hft_fill_row;

/* META_DTYPE (services/execution/records.py), field for field (packed: 36 bytes): what the
 * journal keeps of each command besides the engine's view of it. */
typedef struct __attribute__((packed)) hft_order_meta {
    int64_t client_price;     /* the limit price the client gave (0 for market types) */
    int64_t protection;       /* a market type's protective bound as given (0 = default) */
    int64_t replace_quantity; /* REPLACE: the new total quantity */
    int32_t priority;
    uint8_t client_type; /* execution.proto OrderType */
    uint8_t client_tif;
    uint8_t client_stp;
    uint8_t post_only;
    uint8_t client_id_length;
    uint8_t cancel_reason; /* common.proto RejectReason of a service-made cancel, 0 for none */
    uint8_t priority_kept; /* REPLACE: decided before the engine ran */
    uint8_t reserved;
} hft_order_meta;

/* What a batch is, besides its events. */
typedef struct hft_fold_batch {
    const hft_order_command *commands; /* the batch's commands (the engine's order types, stop prices) */
    const hft_order_meta *meta;        /* one per command */
    size_t commands_count;
    uint64_t first_new_id;             /* the batch's NEW commands, in order, have ids first_new_id .. */
    size_t new_count;                  /* + new_count - 1 and become table rows (id - 1) & slot_mask */
    uint64_t slot_mask;
    int64_t *slot_ids;                 /* the table's order id per row (table_len): set for new rows */
    const int64_t *command_slots;      /* the row of each command's order (-1: not held); NULL: the
                                          batch is all NEW, whose rows the fold knows */
    int64_t first_input_seq;
    int64_t received_ns;
    int64_t transact_ns;
    uint64_t restore_id_base;
    const uint16_t *reason_of;     /* 256 entries: engine reason -> RejectReason (HFT_FOLD_UNMAPPED) */
} hft_fold_batch;

/* What an input left its order in (OUTCOME_DTYPE, hftgate/native/order_fold.py: 48 bytes): its
 * ack's values. From the input's last report about its own order, else from the order's row
 * after the batch; an input the engine refused is REJECTED with the refusal's reason, and a
 * refused NEW has order id 0 and no open lots. */
typedef struct hft_fold_outcome {
    int64_t order_id;
    int64_t price;
    int64_t quantity;
    int64_t leaves;
    int64_t cum;
    uint16_t reason;
    uint8_t status;
    uint8_t priority_kept; /* a REPLACE that kept its time priority (never for a refused input) */
    uint8_t reserved[4];
} hft_fold_outcome;

/* Where the fold writes, with the capacities of each array; the counts come back. */
typedef struct hft_fold_out {
    hft_report_row *reports;
    size_t report_cap;
    size_t n_reports;
    hft_fill_row *fills;
    size_t fill_cap;
    size_t n_fills;
    int64_t *rejected_index; /* command index of each refused input */
    uint16_t *rejected_reason;
    size_t rejected_cap;
    size_t n_rejected;
    int64_t *touched; /* each touched row once */
    int64_t *before;  /* its open lots before the batch */
    size_t touched_cap;
    size_t n_touched;
    hft_fold_outcome *outcomes; /* one per command */
    size_t outcome_cap;
    size_t unknown;   /* events of a type the fold does not know (skipped) */
    int64_t next_seq;      /* in: the next report sequence; out: after the batch's reports */
    int64_t next_trade_id; /* in and out, likewise for trades */
} hft_fold_out;

/* Fold events[0, n) into table[0, table_len) (see above). HFT_OK, HFT_ENOENT (*bad_event set),
 * HFT_ERANGE, or HFT_EINVAL for a NULL array with a non-zero length, a command index past the
 * batch's commands, a new order's slot past the table, NEW commands whose count or ids are not
 * new_count from first_new_id, or no command_slots for a batch that is not all NEW. */
int hft_order_fold(hft_order_row *table, size_t table_len, const hft_match_event *events, size_t n,
                   const int64_t *taker_slots, const int64_t *maker_slots, const hft_fold_batch *batch,
                   hft_fold_out *out, size_t *bad_event);

#endif
