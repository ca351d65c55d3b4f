/* Tests of accepted new orders turned into engine commands and journal meta rows
 * (native/include/hft_admission.h): the defaults, the market bound, the mappings, and the
 * refusals that write nothing, under the sanitizers. The service-level tests (SubmitOrder and a
 * batch of one give the same record, market orders in their bands) are in
 * tests/services/execution/. */
#include <stdint.h>
#include <string.h>

#include "../include/hft_admission.h"
#include "check.h"

enum { SYMBOLS = 3 };

static hft_new_order_row limit_buy(int64_t price, int64_t qty) {
    return (hft_new_order_row){.side = HFT_SIDE_BUY, .order_type = 1, .price = price, .quantity = qty};
}

static int fill(const hft_new_order_row *orders, const int64_t *symbols, size_t rows, const int64_t *positions,
                size_t count, const int64_t *lengths, const hft_symbol_band *bands, hft_order_command *commands,
                hft_order_meta *meta, size_t *bad) {
    return hft_admission_new_commands(orders, symbols, rows, positions, count, 7, 100, lengths, bands, SYMBOLS,
                                      commands, meta, bad);
}

static void test_a_limit_order_keeps_its_fields_and_gets_the_defaults(void) {
    hft_new_order_row o = limit_buy(250, 4);
    o.stop_price = 0, o.display = 2, o.priority = -3, o.post_only = 1;
    const int64_t symbol = 2, length = 9;
    hft_symbol_band bands[SYMBOLS] = {{0, 0}};
    hft_order_command c;
    hft_order_meta m;
    memset(&c, 0xAB, sizeof c), memset(&m, 0xAB, sizeof m);
    CHECK_EQ_INT(fill(&o, &symbol, 1, NULL, 1, &length, bands, &c, &m, NULL), HFT_OK);
    CHECK(c.order_id == 100 && c.account_id == 7 && c.symbol_id == 2);
    CHECK(c.price == 250 && c.qty == 4 && c.display_qty == 2 && c.priority == -3);
    CHECK(c.action == HFT_ACTION_NEW && c.side == HFT_SIDE_BUY && c.order_type == HFT_TYPE_LIMIT);
    CHECK(c.tif == HFT_TIF_GTC);                    /* unspecified: GTC for a limit order */
    CHECK(c.flags == HFT_FLAG_POST_ONLY);
    CHECK(c.stp_mode == HFT_STP_CANCEL_RESTING);    /* unspecified: the service's default */
    CHECK(c.reserved[0] == 0 && c.reserved[1] == 0); /* written whole */
    CHECK(m.client_price == 250 && m.protection == 0 && m.replace_quantity == 0 && m.priority == -3);
    CHECK(m.client_type == 1 && m.client_tif == HFT_TIF_GTC && m.client_stp == 1 && m.post_only == 1);
    CHECK(m.client_id_length == 9 && m.cancel_reason == 0 && m.priority_kept == 0 && m.reserved == 0);
}

static void test_market_orders_are_bounded_by_protection_then_band(void) {
    hft_new_order_row o[5];
    for (int i = 0; i < 5; i++) o[i] = (hft_new_order_row){.side = HFT_SIDE_BUY, .order_type = 2, .quantity = 1};
    o[1].side = HFT_SIDE_SELL;                 /* band below the reference */
    o[2].protection = 990;                     /* the client's bound wins */
    o[3].side = HFT_SIDE_SELL;                 /* symbol 1: band wider than the reference: floor 1 */
    o[4].order_type = 4, o[4].stop_price = 50; /* stop-market, symbol 2 has no band */
    const int64_t symbols[5] = {0, 0, 0, 1, 2};
    const int64_t lengths[5] = {1, 1, 1, 1, 1};
    hft_symbol_band bands[SYMBOLS] = {{1000, 25}, {10, 40}, {0, 0}};
    hft_order_command c[5];
    hft_order_meta m[5];
    CHECK_EQ_INT(fill(o, symbols, 5, NULL, 5, lengths, bands, c, m, NULL), HFT_OK);
    CHECK(c[0].price == 1025 && c[0].order_type == HFT_TYPE_LIMIT && c[0].tif == HFT_TIF_IOC);
    CHECK(c[1].price == 975 && c[1].order_type == HFT_TYPE_LIMIT);
    CHECK(c[2].price == 990 && m[2].protection == 990 && m[2].client_price == 0);
    CHECK(c[3].price == 1 && c[3].order_type == HFT_TYPE_LIMIT);
    CHECK(c[4].price == 0 && c[4].order_type == HFT_TYPE_STOP_MARKET && c[4].tif == HFT_TIF_IOC);
    CHECK(m[4].client_type == 4 && c[4].stop_price == 50);
    for (int i = 0; i < 5; i++) CHECK(c[i].order_id == (uint64_t)(100 + i));
}

static void test_self_trade_modes_and_explicit_time_in_force_map(void) {
    hft_new_order_row o[6];
    int64_t symbols[6] = {0}, lengths[6] = {1, 1, 1, 1, 1, 1};
    const uint8_t engine[6] = {HFT_STP_CANCEL_RESTING, HFT_STP_CANCEL_RESTING, HFT_STP_CANCEL_TAKER,
                               HFT_STP_CANCEL_BOTH,    HFT_STP_DECREMENT,      HFT_STP_NONE};
    for (int i = 0; i < 6; i++) o[i] = limit_buy(10, 1), o[i].stp = i, o[i].tif = i % 4;
    hft_symbol_band bands[SYMBOLS] = {{0, 0}};
    hft_order_command c[6];
    hft_order_meta m[6];
    CHECK_EQ_INT(fill(o, symbols, 6, NULL, 6, lengths, bands, c, m, NULL), HFT_OK);
    for (int i = 0; i < 6; i++) {
        CHECK_EQ_INT(c[i].stp_mode, engine[i]);
        CHECK_EQ_INT(m[i].client_stp, i ? i : 1);
        CHECK_EQ_INT(c[i].tif, i % 4 ? i % 4 : HFT_TIF_GTC);
    }
}

static void test_positions_fill_only_the_new_rows_ids_in_order(void) {
    hft_new_order_row o[4] = {limit_buy(1, 1), limit_buy(2, 1), limit_buy(3, 1), limit_buy(4, 1)};
    const int64_t symbols[4] = {0, 0, 0, 0}, positions[2] = {1, 3}, lengths[2] = {5, 6};
    hft_symbol_band bands[SYMBOLS] = {{0, 0}};
    hft_order_command c[4];
    hft_order_meta m[4];
    memset(c, 0, sizeof c), memset(m, 0, sizeof m);
    CHECK_EQ_INT(fill(o, symbols, 4, positions, 2, lengths, bands, c, m, NULL), HFT_OK);
    CHECK(c[0].order_id == 0 && c[2].order_id == 0); /* not new: left to the caller */
    CHECK(c[1].order_id == 100 && c[1].price == 2 && m[1].client_id_length == 5);
    CHECK(c[3].order_id == 101 && c[3].price == 4 && m[3].client_id_length == 6);
}

static void test_a_field_out_of_range_writes_nothing(void) {
    hft_symbol_band bands[SYMBOLS] = {{INT64_MAX - 5, 10}, {0, 0}, {0, 0}};
    hft_new_order_row good = limit_buy(5, 1);
    hft_new_order_row bad_rows[8];
    for (int i = 0; i < 8; i++) bad_rows[i] = good;
    bad_rows[0].side = 3;
    bad_rows[1].order_type = 5;
    bad_rows[2].tif = 4;
    bad_rows[3].stp = 6;
    bad_rows[4].priority = (int64_t)INT32_MAX + 1;
    bad_rows[5].order_type = 2; /* market buy on symbol 0: reference + band overflows */
    bad_rows[6].tif = -1;
    bad_rows[7].stp = -1;
    for (int i = 0; i < 8; i++) {
        hft_new_order_row o[2] = {good, bad_rows[i]};
        const int64_t symbols[2] = {0, 0}, lengths[2] = {1, 1};
        hft_order_command c[2];
        hft_order_meta m[2];
        memset(c, 0x5A, sizeof c), memset(m, 0x5A, sizeof m);
        size_t bad = 99;
        CHECK_EQ_INT(fill(o, symbols, 2, NULL, 2, lengths, bands, c, m, &bad), HFT_EINVAL);
        CHECK_EQ_INT((int)bad, 1);
        CHECK(c[0].order_id == 0x5A5A5A5A5A5A5A5AULL && m[0].client_price == 0x5A5A5A5A5A5A5A5ALL);
    }
    /* A symbol past the bands, a client id over 64 bytes, a position past the rows, a bad id. */
    const int64_t symbols[1] = {SYMBOLS}, ok_symbol[1] = {0}, long_id[1] = {65}, one[1] = {1};
    const int64_t past[1] = {1}, negative[1] = {-1};
    hft_order_command c;
    hft_order_meta m;
    CHECK_EQ_INT(fill(&good, symbols, 1, NULL, 1, one, bands, &c, &m, NULL), HFT_EINVAL);
    CHECK_EQ_INT(fill(&good, ok_symbol, 1, NULL, 1, long_id, bands, &c, &m, NULL), HFT_EINVAL);
    CHECK_EQ_INT(fill(&good, ok_symbol, 1, past, 1, one, bands, &c, &m, NULL), HFT_EINVAL);
    CHECK_EQ_INT(fill(&good, ok_symbol, 1, negative, 1, one, bands, &c, &m, NULL), HFT_EINVAL);
    CHECK_EQ_INT(fill(&good, ok_symbol, 1, NULL, 2, one, bands, &c, &m, NULL), HFT_EINVAL); /* count > rows */
    CHECK_EQ_INT(hft_admission_new_commands(&good, ok_symbol, 1, NULL, 1, 7, 0, one, bands, SYMBOLS, &c, &m, NULL),
                 HFT_EINVAL); /* order id 0 */
    CHECK_EQ_INT(hft_admission_new_commands(&good, ok_symbol, 1, NULL, 1, 7, UINT64_MAX, one, bands, SYMBOLS, &c,
                                            &m, NULL),
                 HFT_EINVAL); /* ids would wrap */
    CHECK_EQ_INT(fill(NULL, NULL, 0, NULL, 0, NULL, bands, NULL, NULL, NULL), HFT_OK); /* nothing to do */
}

static void test_one_order_gives_the_batch_rows(void) {
    hft_new_order_row o[3] = {limit_buy(7, 2), limit_buy(9, 1), limit_buy(1, 1)};
    o[1].side = HFT_SIDE_SELL, o[1].order_type = 2, o[1].stp = 4;
    o[2].order_type = 9; /* out of range */
    const int64_t symbols[3] = {1, 1, 1}, lengths[3] = {3, 4, 5};
    hft_symbol_band bands[SYMBOLS] = {{0, 0}, {500, 20}, {0, 0}};
    hft_order_command batch_c[2], one_c;
    hft_order_meta batch_m[2], one_m;
    CHECK_EQ_INT(fill(o, symbols, 2, NULL, 2, lengths, bands, batch_c, batch_m, NULL), HFT_OK);
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(hft_admission_new_command(&o[i], 1, 7, 100 + (uint64_t)i, lengths[i], bands, SYMBOLS, &one_c,
                                               &one_m),
                     HFT_OK);
        CHECK(memcmp(&one_c, &batch_c[i], sizeof one_c) == 0 && memcmp(&one_m, &batch_m[i], sizeof one_m) == 0);
    }
    memset(&one_c, 0x77, sizeof one_c);
    CHECK_EQ_INT(hft_admission_new_command(&o[2], 1, 7, 100, 5, bands, SYMBOLS, &one_c, &one_m), HFT_EINVAL);
    CHECK(one_c.order_id == 0x7777777777777777ULL); /* nothing written */
    CHECK_EQ_INT(hft_admission_new_command(&o[0], 1, 7, 0, 5, bands, SYMBOLS, &one_c, &one_m), HFT_EINVAL);
}

/* A lone order through hft_admission_admit_one: the id's state, the rules and the command in one call,
 * each refusal writing nothing, and the checks-only form. */
static void test_one_call_admits_a_lone_order(void) {
    hft_client_ids *ids = NULL;
    CHECK_EQ_INT(hft_client_ids_new(16, &ids), HFT_OK);
    const uint64_t account_id = 7;
    const int64_t used_length = 4, used_order = 41;
    CHECK_EQ_INT(hft_client_ids_add(ids, &account_id, "used", 4, &used_length, &used_order, 1), HFT_OK);
    int64_t position[SYMBOLS] = {0}, open_buy[SYMBOLS] = {0}, open_sell[SYMBOLS] = {0}, used[2 * SYMBOLS] = {0};
    hft_account_limits account = {.open_room = 10, .position_limit = 1000, .granted = 1, .position = position,
                                  .open_buy = open_buy, .open_sell = open_sell, .symbol_count = SYMBOLS,
                                  .used = used};
    hft_instrument_rules rules = {.trading_enabled = 1, .max_lots = 40, .price_ceiling = 1000,
                                  .max_notional = 1 << 20, .band = 0, .reference = 0, .price_step = 1, .lot_step = 1};
    hft_symbol_band bands[SYMBOLS] = {{0, 0}, {500, 20}, {0, 0}};
    const hft_new_order_row order = limit_buy(250, 4);
    hft_order_command c, want_c;
    hft_order_meta m, want_m;
    CHECK_EQ_INT(hft_admission_new_command(&order, 1, account_id, 100, 3, bands, SYMBOLS, &want_c, &want_m), HFT_OK);
    /* Accepted: the rows hft_admission_new_command gives. */
    CHECK_EQ_INT(hft_admission_admit_one(ids, "new", 3, &account, &rules, 1, &order, account_id, 100, bands, SYMBOLS,
                                         &c, &m),
                 0);
    CHECK(memcmp(&c, &want_c, sizeof c) == 0 && memcmp(&m, &want_m, sizeof m) == 0);
    /* Refused, nothing written: an id the account used, the same id of another account is new. */
    memset(&c, 0x77, sizeof c), memset(&m, 0x77, sizeof m);
    CHECK_EQ_INT(hft_admission_admit_one(ids, "used", 4, &account, &rules, 1, &order, account_id, 100, bands,
                                         SYMBOLS, &c, &m),
                 HFT_RISK_DUPLICATE_CLIENT_ORDER_ID);
    CHECK(c.order_id == 0x7777777777777777ULL && m.client_price == 0x7777777777777777LL);
    CHECK_EQ_INT(hft_admission_admit_one(ids, "used", 4, &account, &rules, 1, &order, 8, 100, bands, SYMBOLS, NULL,
                                         NULL),
                 0);
    /* Ids that are not 1..64 printable ASCII bytes; an unknown instrument; a rule. */
    const char long_id[66] = "0123456789012345678901234567890123456789012345678901234567890123x";
    CHECK_EQ_INT(hft_admission_admit_one(ids, "", 0, &account, &rules, 1, &order, account_id, 100, bands, SYMBOLS,
                                         &c, &m),
                 HFT_RISK_INVALID_ORDER);
    CHECK_EQ_INT(hft_admission_admit_one(ids, long_id, 65, &account, &rules, 1, &order, account_id, 100, bands,
                                         SYMBOLS, &c, &m),
                 HFT_RISK_INVALID_ORDER);
    CHECK_EQ_INT(hft_admission_admit_one(ids, long_id, 64, &account, &rules, 1, &order, account_id, 100, bands,
                                         SYMBOLS, NULL, NULL),
                 0);
    CHECK_EQ_INT(hft_admission_admit_one(ids, "a\tb", 3, &account, &rules, 1, &order, account_id, 100, bands,
                                         SYMBOLS, &c, &m),
                 HFT_RISK_INVALID_ORDER);
    CHECK_EQ_INT(hft_admission_admit_one(ids, "\xc3\xa9", 2, &account, &rules, 1, &order, account_id, 100, bands,
                                         SYMBOLS, &c, &m),
                 HFT_RISK_INVALID_ORDER);
    CHECK_EQ_INT(hft_admission_admit_one(ids, "new", 3, &account, NULL, -1, &order, account_id, 100, bands, SYMBOLS,
                                         &c, &m),
                 HFT_RISK_UNKNOWN_SYMBOL);
    hft_new_order_row big = limit_buy(250, 41);
    CHECK_EQ_INT(hft_admission_admit_one(ids, "new", 3, &account, &rules, 1, &big, account_id, 100, bands, SYMBOLS,
                                         &c, &m),
                 HFT_RISK_MAX_QUANTITY);
    CHECK(c.order_id == 0x7777777777777777ULL);
    /* Arguments that are not usable: HFT_EINVAL, nothing written. */
    CHECK_EQ_INT(hft_admission_admit_one(NULL, "new", 3, &account, &rules, 1, &order, account_id, 100, bands,
                                         SYMBOLS, &c, &m),
                 HFT_EINVAL);
    CHECK_EQ_INT(hft_admission_admit_one(ids, "new", 3, &account, &rules, 1, &order, account_id, 100, bands,
                                         SYMBOLS, &c, NULL),
                 HFT_EINVAL);
    CHECK_EQ_INT(hft_admission_admit_one(ids, "new", 3, &account, &rules, 1, &order, account_id, 0, bands, SYMBOLS,
                                         &c, &m),
                 HFT_EINVAL); /* order id 0 */
    CHECK(c.order_id == 0x7777777777777777ULL);
    for (int i = 0; i < 2 * SYMBOLS; i++) CHECK_EQ_INT(used[i], 0);
    hft_client_ids_free(ids);
}

int main(void) {
    RUN(test_a_limit_order_keeps_its_fields_and_gets_the_defaults);
    RUN(test_market_orders_are_bounded_by_protection_then_band);
    RUN(test_self_trade_modes_and_explicit_time_in_force_map);
    RUN(test_positions_fill_only_the_new_rows_ids_in_order);
    RUN(test_a_field_out_of_range_writes_nothing);
    RUN(test_one_order_gives_the_batch_rows);
    RUN(test_one_call_admits_a_lone_order);
    return TEST_SUMMARY("admission");
}
