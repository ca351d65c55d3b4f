/* Tests of folding engine events into an order table (native/include/hft_order_fold.h). The
 * differential test against the Python fold it replaced is tests/services/execution/
 * test_order_fold.py; these check the rules one at a time and the refusals, under the
 * sanitizers. */
#include <stdint.h>
#include <string.h>

#include "../include/hft_order_fold.h"
#include "check.h"

enum { ROWS = 8, EVENTS = 8 };

typedef struct fixture {
    hft_order_row table[ROWS];
    hft_match_event events[EVENTS];
    int64_t taker[EVENTS], maker[EVENTS];
    hft_order_command commands[EVENTS];
    hft_order_meta meta[EVENTS];
    int64_t slot_ids[ROWS];
    int64_t command_slots[EVENTS];
    hft_fold_outcome outcomes[EVENTS];
    uint16_t reason_of[256];
    hft_report_row reports[2 * EVENTS];
    hft_fill_row fills[EVENTS];
    int64_t rejected_index[EVENTS];
    uint16_t rejected_reason[EVENTS];
    int64_t touched[3 * EVENTS], before[3 * EVENTS];
    hft_fold_batch batch;
    hft_fold_out out;
} fixture;

static void setup(fixture *f) {
    memset(f, 0, sizeof *f);
    for (int i = 0; i < ROWS; i++) {
        f->table[i].account_id = 1 + (uint64_t)(i % 2);
        f->table[i].status = HFT_FOLD_STATUS_NEW;
        f->table[i].leaves = f->table[i].quantity = 10;
        f->table[i].side = i % 2 ? HFT_SIDE_SELL : HFT_SIDE_BUY;
        f->table[i].order_type = 1; /* limit */
    }
    for (int i = 0; i < 256; i++) f->reason_of[i] = HFT_FOLD_UNMAPPED;
    f->reason_of[HFT_REASON_UNFILLED] = 0;
    f->reason_of[HFT_REASON_POST_ONLY_WOULD_TAKE] = 14;
    for (int i = 0; i < EVENTS; i++) f->command_slots[i] = -1;
    f->batch = (hft_fold_batch){.commands = f->commands, .commands_count = EVENTS, .meta = f->meta,
                                .slot_mask = ROWS - 1, .slot_ids = f->slot_ids,
                                .command_slots = f->command_slots,
                                .first_input_seq = 100, .received_ns = 5, .transact_ns = 7,
                                .restore_id_base = UINT64_C(1) << 62, .reason_of = f->reason_of};
    f->out = (hft_fold_out){.reports = f->reports, .report_cap = 2 * EVENTS, .fills = f->fills,
                            .fill_cap = EVENTS, .rejected_index = f->rejected_index,
                            .rejected_reason = f->rejected_reason, .rejected_cap = EVENTS,
                            .touched = f->touched, .before = f->before, .touched_cap = 3 * EVENTS,
                            .outcomes = f->outcomes, .outcome_cap = EVENTS, .next_seq = 50,
                            .next_trade_id = 9};
    for (int i = 0; i < EVENTS; i++) f->maker[i] = -1;
}

static int fold(fixture *f, size_t n, size_t *bad) {
    return hft_order_fold(f->table, ROWS, f->events, n, f->taker, f->maker, &f->batch, &f->out, bad);
}

static void test_a_fill_updates_both_orders_and_reports_each_side(void) {
    fixture f;
    setup(&f);
    f.events[0] = (hft_match_event){.order_id = 11, .account_id = 1, .maker_order_id = 12,
                                    .maker_account_id = 1, .price = 500, .qty = 4, .leaves_qty = 6,
                                    .maker_leaves_qty = 0, .symbol_id = 3, .command_index = 2,
                                    .type = HFT_EVENT_FILL, .side = HFT_SIDE_BUY};
    f.taker[0] = 0;
    f.maker[0] = 2; /* same account as the taker: each report names the other order */
    f.table[2].leaves = 4;
    size_t bad = 0;
    CHECK_EQ_INT(fold(&f, 1, &bad), HFT_OK);
    CHECK_EQ_INT(f.table[0].cum, 4);
    CHECK_EQ_INT(f.table[0].notional, 2000);
    CHECK_EQ_INT(f.table[0].status, HFT_FOLD_STATUS_PARTIAL);
    CHECK_EQ_INT(f.table[2].status, HFT_FOLD_STATUS_FILLED);
    CHECK_EQ_INT(f.table[2].updated_ns, 7);
    CHECK_EQ_INT(f.out.n_reports, 2);
    CHECK_EQ_INT(f.reports[0].sequence, 50);
    CHECK_EQ_INT(f.reports[1].sequence, 51);
    CHECK_EQ_INT(f.reports[0].input_sequence, 102);
    CHECK_EQ_INT(f.reports[0].counterparty_order_id, 12);
    CHECK_EQ_INT(f.reports[1].counterparty_order_id, 11);
    CHECK_EQ_INT(f.reports[0].liquidity, HFT_FOLD_LIQUIDITY_TAKER);
    CHECK_EQ_INT(f.reports[1].exec_type, HFT_FOLD_EXEC_FILL);
    CHECK_EQ_INT(f.out.n_fills, 1);
    CHECK_EQ_INT(f.fills[0].trade_id, 9);
    CHECK_EQ_INT(f.fills[0].buy_order_id, 11);
    CHECK_EQ_INT(f.fills[0].sell_order_id, 12);
    CHECK_EQ_INT(f.out.next_trade_id, 10);
    CHECK_EQ_INT(f.out.n_touched, 2);
    CHECK_EQ_INT(f.before[0], 10);
    CHECK_EQ_INT(f.before[1], 4);
}

static void test_order_events_follow_their_rules(void) {
    fixture f;
    setup(&f);
    f.commands[0].order_type = HFT_TYPE_STOP_LIMIT;
    f.meta[1].cancel_reason = 13; /* a kill-switch cancel carries its own reason */
    f.table[2].order_type = HFT_FOLD_CLIENT_MARKET;
    f.table[2].leaves = 0;
    f.events[0] = (hft_match_event){.order_id = 1, .qty = 10, .type = HFT_EVENT_ACK, .command_index = 0};
    f.events[1] = (hft_match_event){.order_id = 2, .leaves_qty = 0, .type = HFT_EVENT_CANCELED,
                                    .reason = HFT_REASON_USER_CANCEL, .command_index = 1};
    f.events[2] = (hft_match_event){.order_id = 3, .type = HFT_EVENT_EXPIRED, .reason = HFT_REASON_UNFILLED,
                                    .command_index = 2};
    f.events[3] = (hft_match_event){.order_id = 4, .price = 77, .qty = 3, .type = HFT_EVENT_REPLACED,
                                    .command_index = 3};
    f.events[4] = (hft_match_event){.type = HFT_EVENT_REJECT, .reason = HFT_REASON_POST_ONLY_WOULD_TAKE,
                                    .command_index = 4};
    f.events[5] = (hft_match_event){.order_id = UINT64_C(1) << 62, .type = HFT_EVENT_ACK, .command_index = 5};
    f.events[6] = (hft_match_event){.order_id = 5, .type = 99, .command_index = 6};
    for (int i = 0; i < 4; i++) f.taker[i] = i;
    f.taker[6] = 4;
    f.table[3].cum = 2;
    size_t bad = 0;
    CHECK_EQ_INT(fold(&f, 7, &bad), HFT_OK);
    CHECK_EQ_INT(f.table[0].status, HFT_FOLD_STATUS_PENDING);
    CHECK_EQ_INT(f.table[1].status, HFT_FOLD_STATUS_CANCELED);
    CHECK_EQ_INT(f.table[1].reason, 13);
    CHECK_EQ_INT(f.table[2].status, HFT_FOLD_STATUS_EXPIRED);
    CHECK_EQ_INT(f.table[2].reason, HFT_FOLD_REASON_NO_LIQUIDITY);
    CHECK_EQ_INT(f.table[3].status, HFT_FOLD_STATUS_PARTIAL);
    CHECK_EQ_INT(f.table[3].price, 77);
    CHECK_EQ_INT(f.table[3].quantity, 5);
    CHECK_EQ_INT(f.out.n_reports, 4); /* the reject, the restore order and the unknown type: none */
    CHECK_EQ_INT(f.out.n_rejected, 1);
    CHECK_EQ_INT(f.rejected_index[0], 4);
    CHECK_EQ_INT(f.rejected_reason[0], 14);
    CHECK_EQ_INT(f.out.unknown, 1);
    CHECK_EQ_INT(f.table[4].updated_ns, 0); /* the unknown event touched nothing */
}

static void test_refusals_change_nothing(void) {
    fixture f;
    setup(&f);
    f.events[0] = (hft_match_event){.order_id = 1, .qty = 1, .type = HFT_EVENT_ACK};
    f.events[1] = (hft_match_event){.order_id = 2, .maker_order_id = 3, .qty = 1, .price = 1,
                                    .type = HFT_EVENT_FILL};
    f.taker[0] = 0;
    f.taker[1] = 1;
    f.maker[1] = ROWS; /* past the table */
    hft_order_row before[ROWS];
    memcpy(before, f.table, sizeof before);
    size_t bad = 0;
    CHECK_EQ_INT(fold(&f, 2, &bad), HFT_ENOENT);
    CHECK_EQ_INT(bad, 1);
    CHECK(memcmp(before, f.table, sizeof before) == 0);
    f.maker[1] = 2;
    f.out.report_cap = 2;
    CHECK_EQ_INT(fold(&f, 2, &bad), HFT_ERANGE);
    CHECK(memcmp(before, f.table, sizeof before) == 0);
    f.out.report_cap = 2 * EVENTS;
    f.events[0].command_index = EVENTS;
    CHECK_EQ_INT(fold(&f, 2, &bad), HFT_EINVAL);
    CHECK_EQ_INT(hft_order_fold(f.table, ROWS, NULL, 1, f.taker, f.maker, &f.batch, &f.out, &bad), HFT_EINVAL);
    CHECK_EQ_INT(hft_order_fold(f.table, ROWS, f.events, 0, NULL, NULL, &f.batch, &f.out, &bad), HFT_OK);
    f.batch.new_count = 1;
    f.batch.slot_mask = 2 * ROWS - 1; /* new orders' rows could fall past the table */
    CHECK_EQ_INT(fold(&f, 0, &bad), HFT_EINVAL);
}

static void test_notional_and_cum_saturate(void) {
    fixture f;
    setup(&f);
    f.table[0].notional = INT64_MAX - 1;
    f.table[1].notional = INT64_MIN;
    f.events[0] = (hft_match_event){.order_id = 1, .maker_order_id = 2, .price = INT64_MAX, .qty = INT64_MAX,
                                    .type = HFT_EVENT_FILL, .side = HFT_SIDE_SELL};
    f.taker[0] = 0;
    f.maker[0] = 1;
    size_t bad = 0;
    CHECK_EQ_INT(fold(&f, 1, &bad), HFT_OK);
    CHECK(f.table[0].notional == INT64_MAX);
    CHECK(f.table[1].notional == INT64_MAX);
    CHECK(f.table[0].cum == INT64_MAX);
    CHECK_EQ_INT(f.fills[0].sell_order_id, 1);
}

static void test_each_row_is_touched_once_with_what_it_had_open(void) {
    fixture f;
    setup(&f);
    f.batch.first_new_id = 6; /* row (6 - 1) & mask = 5 */
    f.batch.new_count = 1;
    f.commands[0] = (hft_order_command){.order_id = 6, .account_id = 1, .qty = 10, .action = HFT_ACTION_NEW,
                                        .side = HFT_SIDE_BUY};
    f.table[5].status = HFT_FOLD_STATUS_NEW;
    f.table[5].leaves = 10; /* a new order: counts as nothing open before the batch */
    f.table[6].status = HFT_FOLD_STATUS_FILLED;
    for (int i = 0; i < 3; i++) {
        f.events[i] = (hft_match_event){.order_id = 6, .maker_order_id = 7, .qty = 1, .price = 1,
                                        .leaves_qty = 9 - i, .maker_leaves_qty = 9 - i,
                                        .type = HFT_EVENT_FILL, .side = HFT_SIDE_BUY};
        f.taker[i] = 5;
        f.maker[i] = 6;
    }
    size_t bad = 0;
    CHECK_EQ_INT(fold(&f, 3, &bad), HFT_OK);
    CHECK_EQ_INT(f.out.n_touched, 2);
    CHECK_EQ_INT(f.touched[0], 5);
    CHECK_EQ_INT(f.before[0], 0);
    CHECK_EQ_INT(f.touched[1], 6);
    CHECK_EQ_INT(f.before[1], 0); /* it was not open */
    CHECK_EQ_INT(f.table[5].cum, 3);
}

static void test_new_orders_become_rows_and_every_input_gets_its_outcome(void) {
    fixture f;
    setup(&f);
    f.batch.commands_count = 3;
    f.batch.first_new_id = 4; /* rows 3 and 4 */
    f.batch.new_count = 2;
    f.commands[0] = (hft_order_command){.order_id = 4, .account_id = 2, .price = 90, .qty = 6, .stop_price = 0,
                                        .display_qty = 2, .symbol_id = 1, .action = HFT_ACTION_NEW,
                                        .side = HFT_SIDE_SELL, .order_type = HFT_TYPE_LIMIT};
    f.meta[0] = (hft_order_meta){.client_price = 90, .protection = 0, .priority = -3, .client_type = 1,
                                 .client_tif = 1, .client_stp = 5, .post_only = 1};
    f.commands[1] = f.commands[0];
    f.commands[1].order_id = 5; /* refused by the engine */
    f.commands[2] = (hft_order_command){.order_id = 1, .qty = 4, .action = HFT_ACTION_REPLACE};
    f.meta[2].priority_kept = 1;
    f.command_slots[2] = 0;
    f.events[0] = (hft_match_event){.order_id = 4, .qty = 6, .type = HFT_EVENT_ACK, .command_index = 0};
    f.events[1] = (hft_match_event){.order_id = 5, .type = HFT_EVENT_REJECT, .reason = HFT_REASON_POST_ONLY_WOULD_TAKE,
                                    .command_index = 1};
    f.taker[0] = 3;
    f.taker[1] = 4;
    f.table[0].cum = 3; /* the replaced order: no report of its own in this batch, so its row */
    f.table[0].price = 77;
    size_t bad = 0;
    CHECK_EQ_INT(fold(&f, 2, &bad), HFT_OK);
    const hft_order_row *row = &f.table[3];
    CHECK_EQ_INT(row->account_id, 2);
    CHECK_EQ_INT(row->price, 90);
    CHECK_EQ_INT(row->quantity, 6);
    CHECK_EQ_INT(row->display, 2);
    CHECK_EQ_INT(row->symbol_id, 1);
    CHECK_EQ_INT(row->side, HFT_SIDE_SELL);
    CHECK_EQ_INT(row->priority, -3);
    CHECK_EQ_INT(row->stp, 5);
    CHECK_EQ_INT(row->post_only, 1);
    CHECK_EQ_INT(row->created_ns, 5);
    CHECK_EQ_INT(row->updated_ns, 7);
    CHECK_EQ_INT(row->status, HFT_FOLD_STATUS_NEW); /* from the ACK */
    CHECK_EQ_INT(f.slot_ids[3], 4);
    CHECK_EQ_INT(f.slot_ids[4], 5);
    CHECK_EQ_INT(f.outcomes[0].order_id, 4);
    CHECK_EQ_INT(f.outcomes[0].status, HFT_FOLD_STATUS_NEW);
    CHECK_EQ_INT(f.outcomes[0].leaves, 6);
    CHECK_EQ_INT(f.outcomes[1].order_id, 0);
    CHECK_EQ_INT(f.outcomes[1].status, HFT_FOLD_STATUS_REJECTED);
    CHECK_EQ_INT(f.outcomes[1].reason, 14);
    CHECK_EQ_INT(f.outcomes[1].leaves, 0);
    CHECK_EQ_INT(f.outcomes[2].order_id, 1);
    CHECK_EQ_INT(f.outcomes[2].price, 77);
    CHECK_EQ_INT(f.outcomes[2].cum, 3);
    CHECK_EQ_INT(f.outcomes[2].priority_kept, 1);

    /* Refusals, each before anything is written. */
    hft_order_row before[ROWS];
    setup(&f);
    memcpy(before, f.table, sizeof before);
    f.batch.commands_count = 1;
    f.batch.first_new_id = 4;
    f.batch.new_count = 1;
    f.commands[0] = (hft_order_command){.order_id = 5, .qty = 1, .action = HFT_ACTION_NEW}; /* out of turn */
    CHECK_EQ_INT(fold(&f, 0, &bad), HFT_EINVAL);
    f.commands[0].order_id = 4;
    f.batch.new_count = 2; /* more new orders announced than there are */
    CHECK_EQ_INT(fold(&f, 0, &bad), HFT_EINVAL);
    f.batch.new_count = 1;
    f.out.outcome_cap = 0;
    CHECK_EQ_INT(fold(&f, 0, &bad), HFT_ERANGE);
    f.out.outcome_cap = EVENTS;
    f.commands[0] = (hft_order_command){.order_id = 1, .action = HFT_ACTION_CANCEL};
    f.batch.new_count = 0;
    f.batch.command_slots = NULL; /* a cancel needs its order's row */
    CHECK_EQ_INT(fold(&f, 0, &bad), HFT_EINVAL);
    f.batch.command_slots = f.command_slots;
    f.command_slots[0] = ROWS; /* past the table */
    CHECK_EQ_INT(fold(&f, 0, &bad), HFT_EINVAL);
    CHECK(memcmp(before, f.table, sizeof before) == 0);
}

int main(void) {
    RUN(test_a_fill_updates_both_orders_and_reports_each_side);
    RUN(test_order_events_follow_their_rules);
    RUN(test_refusals_change_nothing);
    RUN(test_notional_and_cum_saturate);
    RUN(test_each_row_is_touched_once_with_what_it_had_open);
    RUN(test_new_orders_become_rows_and_every_input_gets_its_outcome);
    return TEST_SUMMARY("order_fold");
}
