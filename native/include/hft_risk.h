/*
 * hft_risk.h -- pre-trade checks of new orders: the one copy of the admission rules that every
 * entry point of the execution service uses (SubmitOrder, SubmitOrders, SubmitOrderColumns and
 * OrderStream; services/execution/risk.py is its Python face).
 *
 * Why in C: the rules existed three times in Python (a numpy pass for batches, a loop for small
 * batches, a scalar copy for SubmitOrder), kept equal by tests; every rule change was three edits
 * and numpy's per-call set-up cost more than the work for one order. One C pass is the rule
 * book for a batch of any size, a batch of one included.
 *
 * hft_risk_check gives every order its first failing rule as a common.proto RejectReason
 * (0 = passes), in this order:
 *   1. client order id: client_id_state[i] == HFT_RISK_ID_INVALID         INVALID_ORDER
 *   2. the account's kill switch                                          KILL_SWITCH
 *   3. no instrument (rule_rows[i] < 0) or no engine book (symbol id < 0) UNKNOWN_SYMBOL
 *   4. the instrument's trading switch                                    TRADING_HALTED
 *   5. field values and combinations (side, type, tif, stp, display, post only, which prices a
 *      type takes): INVALID_ORDER, INVALID_QUANTITY or INVALID_PRICE
 *   6. price and lot grid                                                 OFF_TICK, OFF_LOT
 *   7. band around the reference price, then the instrument's ceiling     PRICE_BAND
 *   8. max quantity, then max notional at the worst price the order may trade at (its limit, else
 *      its protection, else the band's edge)                              MAX_QUANTITY, MAX_NOTIONAL
 *   9. client order id used before (client_id_state[i] == HFT_RISK_ID_USED) DUPLICATE_CLIENT_ORDER_ID
 *  10. rate: orders at index >= granted                                   RATE_LIMIT
 *  11. open orders: an order that can rest (GTC limit types, every stop) takes a place, in batch
 *      order, while open_room lasts                                       OPEN_ORDER_LIMIT
 *  12. position, worst case: a buy passes while net position + lots working on the buy side + the
 *      batch's earlier passing buys of the symbol + its quantity stay within the limit (sells
 *      mirrored), so that no combination of fills takes the account past it  POSITION_LIMIT
 * Rules 11 and 12 count only orders that passed every rule before them.
 *
 * Bounds (issue #13: nothing journaled may fail to apply): an order that passes brings prices at
 * most its instrument's price_ceiling and a quantity at most max_lots, so that any order's cum
 * notional fits int64 (services/execution/risk.py says how the caller derives the limits). The
 * arithmetic here cannot overflow whatever the inputs: every sum is checked, and one that would
 * overflow fails its rule.
 *
 * Ownership: every pointer belongs to the caller and is used only during the call.
 * Concurrency: none; a call reads the exposure and writes only reasons and the scratch.
 */
#ifndef HFT_RISK_H
#define HFT_RISK_H

#include <stddef.h>
#include <stdint.h>

#include "hft_book.h" /* HFT_MAX_PRICE, HFT_MAX_QTY: the largest price and quantity of any order */
#include "hft_common.h"

/* common.proto RejectReason values (hftgate/native/risk.py checks them against the proto). */
#define HFT_RISK_UNKNOWN_SYMBOL 1
#define HFT_RISK_INVALID_QUANTITY 2
#define HFT_RISK_INVALID_PRICE 3
#define HFT_RISK_OFF_TICK 4
#define HFT_RISK_OFF_LOT 5
#define HFT_RISK_PRICE_BAND 6
#define HFT_RISK_MAX_QUANTITY 7
#define HFT_RISK_MAX_NOTIONAL 8
#define HFT_RISK_POSITION_LIMIT 9
#define HFT_RISK_OPEN_ORDER_LIMIT 10
#define HFT_RISK_RATE_LIMIT 11
#define HFT_RISK_KILL_SWITCH 12
#define HFT_RISK_DUPLICATE_CLIENT_ORDER_ID 13
#define HFT_RISK_INVALID_ORDER 20
#define HFT_RISK_TRADING_HALTED 21

/* client_id_state[i]: what the caller found of order i's client order id. */
#define HFT_RISK_ID_OK 0
#define HFT_RISK_ID_INVALID 1 /* empty, too long, or not printable ASCII */
#define HFT_RISK_ID_USED 2    /* the account's already, or earlier in this batch */

/* A new order as execution.proto's NewOrder gives it (risk.py's NEW_ORDER_DTYPE, field for
 * field): side 1 buy, 2 sell; OrderType, TimeInForce and SelfTradePrevention values. */
typedef struct hft_new_order {
    int64_t side;
    int64_t order_type;
    int64_t tif;
    int64_t price;
    int64_t stop_price;
    int64_t quantity;
    int64_t display;
    int64_t post_only;
    int64_t stp;
    int64_t protection;
    int64_t priority; /* not a rule's business: carried for the caller */
} hft_new_order;

/* An instrument's limits, already clamped by the caller (risk.py's instrument_limits):
 * price_step and lot_step >= 1, price_ceiling >= 1, max_notional >= 1, band and reference >= 0
 * (band 0 = no band). Out-of-range values make hft_risk_check refuse the call (HFT_EINVAL). */
typedef struct hft_instrument_rules {
    int64_t trading_enabled;
    int64_t max_lots;
    int64_t price_ceiling;
    int64_t max_notional;
    int64_t band;
    int64_t reference;
    int64_t price_step;
    int64_t lot_step;
} hft_instrument_rules;

/* The account as the limits see it. position, open_buy and open_sell hold symbol_count entries,
 * indexed by engine symbol id. used is scratch of 2 x symbol_count zeros, left zero. */
typedef struct hft_account_limits {
    int64_t kill_switch;    /* nonzero: every order fails KILL_SWITCH */
    int64_t open_room;      /* max open orders - open orders now (may be <= 0) */
    int64_t position_limit; /* lots, 0..2^60 */
    int64_t granted;        /* rate tokens granted to this call */
    const int64_t *position;
    const int64_t *open_buy;
    const int64_t *open_sell;
    int64_t symbol_count;
    int64_t *used;
} hft_account_limits;

/* One call's orders. rules[rule_rows[i]] are order i's instrument's limits (rule_rows[i] < 0: no
 * such instrument); symbol_ids[i] its engine symbol id (< 0: no book for it). client_id_state may
 * be NULL: every id is HFT_RISK_ID_OK. */
typedef struct hft_risk_batch {
    const hft_new_order *orders;
    size_t count;
    const hft_instrument_rules *rules;
    size_t rule_count;
    const int64_t *rule_rows;
    const int64_t *symbol_ids;
    const uint8_t *client_id_state;
} hft_risk_batch;

/* Each order's RejectReason into reasons[0..count) and how many passed into *accepted.
 * HFT_EINVAL (nothing written): a rule row or a symbol id out of range, or limits out of their
 * ranges (see hft_instrument_rules). */
int hft_risk_check(const hft_risk_batch *batch, const hft_account_limits *account, int64_t *reasons,
                   size_t *accepted);

/* hft_risk_check for a batch of one, the order as arguments (a SubmitOrder needs no array):
 * its RejectReason (>= 0), or HFT_EINVAL (symbol id out of range, rules out of their ranges, a
 * client id state that is none of HFT_RISK_ID_*). rules NULL: no such instrument. */
int64_t hft_risk_check_one(const hft_account_limits *account, const hft_instrument_rules *rules,
                           int64_t symbol_id, int64_t client_id_state, int64_t side, int64_t order_type,
                           int64_t tif, int64_t price, int64_t stop_price, int64_t quantity, int64_t display,
                           int64_t post_only, int64_t stp, int64_t protection);

#endif /* HFT_RISK_H */
