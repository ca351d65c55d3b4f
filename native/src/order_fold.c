/* The engine's events folded into the order table (see hft_order_fold.h). */
#include "hft_order_fold.h"

#include <stdlib.h>
#include <string.h>

/* The rows touched so far (open addressing over slots; a slot is >= 0, EMPTY marks a free cell). */
#define EMPTY (-1)

typedef struct touched_set {
    int64_t *cells;
    size_t mask;
} touched_set;

static int touched_init(touched_set *set, size_t at_most) {
    size_t size = 16;
    while (size < 2 * at_most + 2) size <<= 1;
    set->cells = malloc(size * sizeof *set->cells);
    if (set->cells == NULL) return HFT_ENOMEM;
    memset(set->cells, 0xff, size * sizeof *set->cells); /* every cell EMPTY (-1) */
    set->mask = size - 1;
    return HFT_OK;
}

/* Whether slot was already in the set; adds it if not. */
static int touched_seen(touched_set *set, int64_t slot) {
    size_t i = ((uint64_t)slot * 0x9E3779B97F4A7C15ull) >> 20 & set->mask;
    for (;;) {
        int64_t cell = set->cells[i];
        if (cell == slot) return 1;
        if (cell == EMPTY) {
            set->cells[i] = slot;
            return 0;
        }
        i = (i + 1) & set->mask;
    }
}

/* The row of slot, recorded as touched (with its open lots before the batch) the first time. */
static hft_order_row *touch(hft_order_row *table, int64_t slot, touched_set *set, hft_fold_out *out,
                            int64_t transact_ns) {
    hft_order_row *row = &table[slot];
    if (!touched_seen(set, slot)) {
        out->touched[out->n_touched] = slot;
        out->before[out->n_touched] = hft_fold_is_open(row->status) ? row->leaves : 0;
        out->n_touched++;
        row->updated_ns = transact_ns;
    }
    return row;
}

static int64_t saturate(__int128 value) {
    if (value > INT64_MAX) return INT64_MAX;
    if (value < INT64_MIN) return INT64_MIN;
    return (int64_t)value;
}

static uint16_t mapped(const uint16_t *reason_of, uint16_t engine_reason, uint16_t otherwise) {
    uint16_t reason = engine_reason < 256 ? reason_of[engine_reason] : HFT_FOLD_UNMAPPED;
    return reason == HFT_FOLD_UNMAPPED ? otherwise : reason;
}

static int order_event(uint8_t type) {
    return type == HFT_EVENT_ACK || type == HFT_EVENT_TRIGGERED || type == HFT_EVENT_REPLACED ||
           type == HFT_EVENT_CANCELED || type == HFT_EVENT_EXPIRED;
}

static int slot_ok(int64_t slot, size_t table_len) { return slot >= 0 && (uint64_t)slot < table_len; }

/* Everything the fold will need, checked before it writes anything. */
static int check(size_t table_len, const hft_match_event *events, size_t n, const int64_t *taker_slots,
                 const int64_t *maker_slots, const hft_fold_batch *batch, const hft_fold_out *out,
                 size_t *bad_event) {
    size_t reports = 0, fills = 0, rejected = 0;
    for (size_t i = 0; i < n; i++) {
        const hft_match_event *e = &events[i];
        if (e->command_index >= batch->commands_count) return HFT_EINVAL;
        if (e->type == HFT_EVENT_FILL) {
            if (!slot_ok(taker_slots[i], table_len) || !slot_ok(maker_slots[i], table_len)) {
                *bad_event = i;
                return HFT_ENOENT;
            }
            reports += 2;
            fills++;
        } else if (e->type == HFT_EVENT_REJECT) {
            rejected++;
        } else if (e->order_id < batch->restore_id_base && order_event(e->type)) {
            if (!slot_ok(taker_slots[i], table_len)) {
                *bad_event = i;
                return HFT_ENOENT;
            }
            reports++;
        }
    }
    if (batch->new_count && batch->slot_mask >= table_len) return HFT_EINVAL; /* a new slot past the table */
    size_t news = 0;
    for (size_t ci = 0; ci < batch->commands_count; ci++) {
        const hft_order_command *c = &batch->commands[ci];
        if (c->action == HFT_ACTION_NEW) {
            if (c->order_id != batch->first_new_id + news) return HFT_EINVAL;
            news++;
        } else if (batch->command_slots == NULL) {
            return HFT_EINVAL;
        } else if (batch->command_slots[ci] >= (int64_t)table_len) {
            return HFT_EINVAL;
        }
    }
    if (news != batch->new_count) return HFT_EINVAL;
    if (reports > out->report_cap || fills > out->fill_cap || rejected > out->rejected_cap ||
        2 * n + batch->new_count > out->touched_cap || batch->commands_count > out->outcome_cap)
        return HFT_ERANGE;
    return HFT_OK;
}

static void fill(hft_order_row *table, const hft_match_event *e, int64_t taker_slot, int64_t maker_slot,
                 int64_t input_seq, const hft_fold_batch *batch, touched_set *set, hft_fold_out *out) {
    int64_t trade_id = out->next_trade_id++;
    __int128 notional = (__int128)e->price * e->qty;
    hft_order_row *taker = touch(table, taker_slot, set, out, batch->transact_ns);
    hft_order_row *maker = touch(table, maker_slot, set, out, batch->transact_ns);
    hft_order_row *rows[2] = {taker, maker};
    const uint64_t own_ids[2] = {e->order_id, e->maker_order_id};
    const int64_t own_leaves[2] = {e->leaves_qty, e->maker_leaves_qty};
    const uint8_t liquidity[2] = {HFT_FOLD_LIQUIDITY_TAKER, HFT_FOLD_LIQUIDITY_MAKER};
    const uint64_t other_accounts[2] = {e->maker_account_id, e->account_id};
    for (int k = 0; k < 2; k++) {
        hft_order_row *row = rows[k];
        /* Bounded at admission (risk.py); saturated rather than wrapped should limits change. */
        row->cum = saturate((__int128)row->cum + e->qty);
        row->notional = saturate((__int128)row->notional + notional);
        row->leaves = own_leaves[k];
        row->status = own_leaves[k] ? HFT_FOLD_STATUS_PARTIAL : HFT_FOLD_STATUS_FILLED;
        row->last_exec_seq = out->next_seq;
        hft_report_row *r = &out->reports[out->n_reports++];
        memset(r, 0, sizeof *r);
        r->sequence = out->next_seq++;
        r->input_sequence = input_seq;
        r->order_id = (int64_t)own_ids[k];
        r->account_id = row->account_id;
        r->price = row->price;
        r->quantity = row->quantity;
        r->last_price = e->price;
        r->last_quantity = e->qty;
        r->leaves = own_leaves[k];
        r->cum = row->cum;
        r->trade_id = trade_id;
        r->counterparty_order_id = other_accounts[k] == row->account_id ? (int64_t)own_ids[1 - k] : 0;
        r->received_ns = batch->received_ns;
        r->transact_ns = batch->transact_ns;
        r->symbol_id = e->symbol_id;
        r->exec_type = own_leaves[k] ? HFT_FOLD_EXEC_PARTIAL_FILL : HFT_FOLD_EXEC_FILL;
        r->side = row->side;
        r->status = row->status;
        r->liquidity = liquidity[k];
    }
    int buy_is_taker = e->side == HFT_SIDE_BUY;
    hft_fill_row *f = &out->fills[out->n_fills++];
    memset(f, 0, sizeof *f);
    f->trade_id = trade_id;
    f->price = e->price;
    f->quantity = e->qty;
    f->buy_order_id = (int64_t)(buy_is_taker ? e->order_id : e->maker_order_id);
    f->buy_account_id = buy_is_taker ? e->account_id : e->maker_account_id;
    f->sell_order_id = (int64_t)(buy_is_taker ? e->maker_order_id : e->order_id);
    f->sell_account_id = buy_is_taker ? e->maker_account_id : e->account_id;
    f->transact_ns = batch->transact_ns;
    f->symbol_id = e->symbol_id;
    f->aggressor_side = e->side;
}

static void order_change(hft_order_row *table, const hft_match_event *e, int64_t slot, int64_t input_seq,
                         const hft_fold_batch *batch, touched_set *set, hft_fold_out *out) {
    hft_order_row *row = touch(table, slot, set, out, batch->transact_ns);
    uint32_t ci = e->command_index;
    uint16_t reason = 0;
    uint8_t status, exec_type;
    switch (e->type) {
    case HFT_EVENT_ACK: {
        uint8_t engine_type = batch->commands[ci].order_type;
        /* The engine's type, not the client's: a stop-limit moved after it triggered is entered
         * on its new shard as the limit it became, and is live. */
        status = engine_type == HFT_TYPE_STOP_LIMIT || engine_type == HFT_TYPE_STOP_MARKET
                     ? HFT_FOLD_STATUS_PENDING
                     : HFT_FOLD_STATUS_NEW;
        row->leaves = e->qty;
        exec_type = HFT_FOLD_EXEC_NEW;
        break;
    }
    case HFT_EVENT_TRIGGERED:
        status = row->cum ? HFT_FOLD_STATUS_PARTIAL : HFT_FOLD_STATUS_NEW;
        exec_type = HFT_FOLD_EXEC_TRIGGERED;
        break;
    case HFT_EVENT_REPLACED:
        if (row->status == HFT_FOLD_STATUS_PENDING) { /* a stop still waiting: maybe a new trigger too */
            status = HFT_FOLD_STATUS_PENDING;
            if (batch->commands[ci].stop_price) row->stop_price = batch->commands[ci].stop_price;
            if (row->order_type != HFT_FOLD_CLIENT_STOP_MARKET) row->price = e->price;
        } else {
            status = row->cum ? HFT_FOLD_STATUS_PARTIAL : HFT_FOLD_STATUS_NEW;
            row->price = e->price;
        }
        row->quantity = saturate((__int128)row->cum + e->qty);
        row->leaves = e->qty;
        exec_type = HFT_FOLD_EXEC_REPLACED;
        break;
    case HFT_EVENT_CANCELED:
        row->leaves = e->leaves_qty;
        reason = mapped(batch->reason_of, e->reason, 0);
        uint8_t cancel_reason = batch->meta[ci].cancel_reason;
        if (e->reason == HFT_REASON_USER_CANCEL && cancel_reason) reason = cancel_reason;
        status = e->leaves_qty ? row->status : HFT_FOLD_STATUS_CANCELED;
        exec_type = HFT_FOLD_EXEC_CANCELED;
        break;
    default: /* HFT_EVENT_EXPIRED */
        row->leaves = 0;
        reason = mapped(batch->reason_of, e->reason, 0);
        if (e->reason == HFT_REASON_UNFILLED && !row->cum &&
            (row->order_type == HFT_FOLD_CLIENT_MARKET || row->order_type == HFT_FOLD_CLIENT_STOP_MARKET))
            reason = HFT_FOLD_REASON_NO_LIQUIDITY;
        status = HFT_FOLD_STATUS_EXPIRED;
        exec_type = HFT_FOLD_EXEC_EXPIRED;
        break;
    }
    row->status = status;
    if (reason) row->reason = reason;
    row->last_exec_seq = out->next_seq;
    hft_report_row *r = &out->reports[out->n_reports++];
    memset(r, 0, sizeof *r);
    r->sequence = out->next_seq++;
    r->input_sequence = input_seq;
    r->order_id = (int64_t)e->order_id;
    r->account_id = row->account_id;
    r->price = row->price;
    r->quantity = row->quantity;
    r->leaves = row->leaves;
    r->cum = row->cum;
    r->received_ns = batch->received_ns;
    r->transact_ns = batch->transact_ns;
    r->symbol_id = e->symbol_id;
    r->reason = reason;
    r->exec_type = exec_type;
    r->side = row->side;
    r->status = status;
}

/* The batch's NEW commands as their rows (see hft_order_fold.h). */
static void add_new_rows(hft_order_row *table, const hft_fold_batch *batch) {
    for (size_t ci = 0; ci < batch->commands_count; ci++) {
        const hft_order_command *c = &batch->commands[ci];
        if (c->action != HFT_ACTION_NEW) continue;
        const hft_order_meta *m = &batch->meta[ci];
        const int64_t slot = (int64_t)((c->order_id - 1) & batch->slot_mask);
        hft_order_row *row = &table[slot];
        memset(row, 0, sizeof *row);
        row->account_id = c->account_id;
        row->price = m->client_price;
        row->stop_price = c->stop_price;
        row->quantity = c->qty;
        row->display = c->display_qty;
        row->protection = m->protection;
        row->leaves = c->qty;
        row->created_ns = batch->received_ns;
        row->updated_ns = batch->received_ns;
        row->priority = m->priority;
        row->symbol_id = c->symbol_id;
        row->side = c->side;
        row->order_type = m->client_type;
        row->tif = m->client_tif;
        row->stp = m->client_stp;
        row->post_only = m->post_only;
        batch->slot_ids[slot] = (int64_t)c->order_id;
    }
}

/* Each command's outcome (hft_fold_outcome): its order's row after the batch, then its own last
 * report, then its refusal. */
static void outcomes(const hft_order_row *table, const hft_fold_batch *batch, hft_fold_out *out) {
    static const hft_order_row none; /* an order not held: all zero */
    for (size_t ci = 0; ci < batch->commands_count; ci++) {
        const hft_order_command *c = &batch->commands[ci];
        /* (check() made sure command_slots is there when a command is not NEW) */
        const int64_t slot = c->action == HFT_ACTION_NEW ? (int64_t)((c->order_id - 1) & batch->slot_mask)
                                                          : batch->command_slots[ci];
        const hft_order_row *row = slot >= 0 ? &table[slot] : &none;
        hft_fold_outcome *o = &out->outcomes[ci];
        memset(o, 0, sizeof *o);
        o->order_id = (int64_t)c->order_id;
        o->price = row->price;
        o->quantity = row->quantity;
        o->leaves = row->leaves;
        o->cum = row->cum;
        o->reason = row->reason;
        o->status = row->status;
        o->priority_kept = batch->meta[ci].priority_kept != 0;
    }
    for (size_t i = 0; i < out->n_reports; i++) { /* the last report of an input about its order wins */
        const hft_report_row *r = &out->reports[i];
        const size_t ci = (size_t)(r->input_sequence - batch->first_input_seq);
        if ((uint64_t)r->order_id != batch->commands[ci].order_id) continue;
        hft_fold_outcome *o = &out->outcomes[ci];
        o->price = r->price;
        o->quantity = r->quantity;
        o->leaves = r->leaves;
        o->cum = r->cum;
        o->reason = r->reason;
        o->status = r->status;
    }
    for (size_t k = 0; k < out->n_rejected; k++) {
        const size_t ci = (size_t)out->rejected_index[k];
        hft_fold_outcome *o = &out->outcomes[ci];
        o->status = HFT_FOLD_STATUS_REJECTED;
        o->reason = out->rejected_reason[k];
        o->priority_kept = 0;
        if (batch->commands[ci].action == HFT_ACTION_NEW) {
            o->order_id = 0;
            o->leaves = 0;
        }
    }
}

int hft_order_fold(hft_order_row *table, size_t table_len, const hft_match_event *events, size_t n,
                   const int64_t *taker_slots, const int64_t *maker_slots, const hft_fold_batch *batch,
                   hft_fold_out *out, size_t *bad_event) {
    if (batch == NULL || out == NULL || bad_event == NULL) return HFT_EINVAL;
    if ((n && (events == NULL || taker_slots == NULL || maker_slots == NULL)) || (table_len && table == NULL) ||
        (batch->commands_count && (batch->commands == NULL || batch->meta == NULL || out->outcomes == NULL)) ||
        (batch->new_count && batch->slot_ids == NULL) || batch->reason_of == NULL)
        return HFT_EINVAL;
    out->n_reports = out->n_fills = out->n_rejected = out->n_touched = out->unknown = 0;
    int rc = check(table_len, events, n, taker_slots, maker_slots, batch, out, bad_event);
    if (rc != HFT_OK) return rc;
    touched_set set;
    rc = touched_init(&set, 2 * n + batch->new_count);
    if (rc != HFT_OK) return rc;
    add_new_rows(table, batch);
    for (size_t i = 0; i < batch->new_count; i++) { /* the batch's new orders: nothing open before */
        int64_t slot = (int64_t)((batch->first_new_id + i - 1) & batch->slot_mask);
        if (!touched_seen(&set, slot)) {
            out->touched[out->n_touched] = slot;
            out->before[out->n_touched] = 0;
            out->n_touched++;
            table[slot].updated_ns = batch->transact_ns;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const hft_match_event *e = &events[i];
        int64_t input_seq = batch->first_input_seq + (int64_t)e->command_index;
        if (e->type == HFT_EVENT_FILL) {
            fill(table, e, taker_slots[i], maker_slots[i], input_seq, batch, &set, out);
        } else if (e->type == HFT_EVENT_REJECT) {
            out->rejected_index[out->n_rejected] = e->command_index;
            out->rejected_reason[out->n_rejected] =
                mapped(batch->reason_of, e->reason, HFT_FOLD_REASON_INVALID_ORDER);
            out->n_rejected++;
        } else if (e->order_id >= batch->restore_id_base) {
            continue;
        } else if (!order_event(e->type)) {
            out->unknown++;
        } else {
            order_change(table, e, taker_slots[i], input_seq, batch, &set, out);
        }
    }
    free(set.cells);
    outcomes(table, batch, out);
    return HFT_OK;
}
