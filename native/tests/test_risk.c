/* Tests of the pre-trade checks (native/include/hft_risk.h): each rule once passing and once
 * failing, their order, the limits at their edges and values that would overflow, under the
 * sanitizers. The differential test against the Python reference is
 * tests/services/execution/test_execution_risk.py. */
#include <stdint.h>
#include <string.h>

#include "../include/hft_risk.h"
#include "check.h"

enum { SYMBOLS = 2, MAX_ORDERS = 8 };
enum { LIMIT = 1, MARKET = 2, STOP_LIMIT = 3, STOP_MARKET = 4, GTC = 1, IOC = 2 };

typedef struct fixture {
    hft_new_order orders[MAX_ORDERS];
    hft_instrument_rules rules;
    int64_t rule_rows[MAX_ORDERS], symbol_ids[MAX_ORDERS];
    uint8_t id_state[MAX_ORDERS];
    int64_t position[SYMBOLS], open_buy[SYMBOLS], open_sell[SYMBOLS], used[2 * SYMBOLS];
    int64_t reasons[MAX_ORDERS];
    hft_risk_batch batch;
    hft_account_limits account;
} fixture;

/* A GTC buy limit of 10 lots at 100 on symbol 0, whose instrument has a tick of 5, a lot of 2, a
 * band of 30 around 100, 40 lots and a notional of 2,000 at most; an account with room for all. */
static hft_new_order limit_buy(void) {
    hft_new_order order = {0};
    order.side = 1;
    order.order_type = LIMIT;
    order.tif = GTC;
    order.price = 100;
    order.quantity = 10;
    return order;
}

static void setup(fixture *f, size_t count) {
    memset(f, 0, sizeof *f);
    f->rules = (hft_instrument_rules){.trading_enabled = 1, .max_lots = 40, .price_ceiling = 130,
                                      .max_notional = 2000, .band = 30, .reference = 100,
                                      .price_step = 5, .lot_step = 2};
    for (size_t i = 0; i < MAX_ORDERS; i++) f->orders[i] = limit_buy();
    f->batch = (hft_risk_batch){.orders = f->orders, .count = count, .rules = &f->rules, .rule_count = 1,
                                .rule_rows = f->rule_rows, .symbol_ids = f->symbol_ids,
                                .client_id_state = f->id_state};
    f->account = (hft_account_limits){.open_room = 100, .position_limit = 1000, .granted = 100,
                                      .position = f->position, .open_buy = f->open_buy,
                                      .open_sell = f->open_sell, .symbol_count = SYMBOLS, .used = f->used};
}

/* The reason of f's first order alone, which hft_risk_check_one gives too. */
static int64_t reason_of_one(fixture *f) {
    size_t accepted = 99;
    f->batch.count = 1;
    int rc = hft_risk_check(&f->batch, &f->account, f->reasons, &accepted);
    CHECK_EQ_INT(rc, HFT_OK);
    CHECK_EQ_INT(accepted, f->reasons[0] == 0);
    const hft_new_order *o = &f->orders[0];
    int64_t one = hft_risk_check_one(&f->account, f->rule_rows[0] < 0 ? NULL : &f->rules, f->symbol_ids[0],
                                     f->id_state[0], o->side, o->order_type, o->tif, o->price, o->stop_price,
                                     o->quantity, o->display, o->post_only, o->stp, o->protection);
    CHECK_EQ_INT(one, f->reasons[0]);
    for (int i = 0; i < 2 * SYMBOLS; i++) CHECK_EQ_INT(f->used[i], 0);
    return f->reasons[0];
}

/* The reason of `order` alone on a fresh fixture. */
static int64_t reason_of(hft_new_order order) {
    fixture f;
    setup(&f, 1);
    f.orders[0] = order;
    return reason_of_one(&f);
}

static void test_a_valid_order_passes(void) {
    CHECK_EQ_INT(reason_of(limit_buy()), 0);
    hft_new_order market = limit_buy();
    market.order_type = MARKET;
    market.tif = IOC;
    market.price = 0;
    CHECK_EQ_INT(reason_of(market), 0);
    hft_new_order stop = limit_buy();
    stop.order_type = STOP_MARKET;
    stop.tif = 0;
    stop.price = 0;
    stop.stop_price = 105;
    CHECK_EQ_INT(reason_of(stop), 0);
}

static void test_field_rules(void) {
    hft_new_order o;
    o = limit_buy(), o.side = 3;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_ORDER);
    o = limit_buy(), o.order_type = 5;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_ORDER);
    o = limit_buy(), o.tif = 4;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_ORDER);
    o = limit_buy(), o.stp = 6;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_ORDER);
    o = limit_buy(), o.quantity = 0;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_QUANTITY);
    o = limit_buy(), o.quantity = HFT_MAX_QTY + 1;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_QUANTITY);
    o = limit_buy(), o.price = 0;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_PRICE);
    o = limit_buy(), o.order_type = MARKET, o.tif = IOC; /* a market order with a price */
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_PRICE);
    o = limit_buy(), o.stop_price = 105; /* a trigger on a plain limit */
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_ORDER);
    o = limit_buy(), o.order_type = STOP_LIMIT; /* a stop without a trigger */
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_PRICE);
    o = limit_buy(), o.protection = 105; /* protection is for market types */
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_ORDER);
    o = limit_buy(), o.protection = -5;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_PRICE);
    o = limit_buy(), o.order_type = MARKET, o.price = 0, o.tif = GTC;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_ORDER);
    o = limit_buy(), o.display = 10; /* display must be below the quantity */
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_ORDER);
    o = limit_buy(), o.display = 4;
    CHECK_EQ_INT(reason_of(o), 0);
    o = limit_buy(), o.display = 4, o.tif = IOC;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_ORDER);
    o = limit_buy(), o.post_only = 1, o.tif = IOC;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_ORDER);
    o = limit_buy(), o.post_only = 1;
    CHECK_EQ_INT(reason_of(o), 0);
}

static void test_instrument_rules(void) {
    hft_new_order o;
    o = limit_buy(), o.price = 101;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_OFF_TICK);
    o = limit_buy(), o.order_type = STOP_LIMIT, o.stop_price = 103;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_OFF_TICK);
    o = limit_buy(), o.order_type = MARKET, o.price = 0, o.tif = IOC, o.protection = 97;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_OFF_TICK);
    o = limit_buy(), o.quantity = 9;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_OFF_LOT);
    o = limit_buy(), o.display = 3;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_OFF_LOT);
    o = limit_buy(), o.price = 130; /* the band's edge passes, one tick further does not */
    CHECK_EQ_INT(reason_of(o), 0);
    o = limit_buy(), o.price = 135;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_PRICE_BAND);
    o = limit_buy(), o.price = 65;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_PRICE_BAND);
    o = limit_buy(), o.order_type = MARKET, o.price = 0, o.tif = IOC, o.protection = 135;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_PRICE_BAND);
    o = limit_buy(), o.quantity = 42;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_MAX_QUANTITY);
    o = limit_buy(), o.quantity = 20; /* 20 x 100 = 2,000: the limit itself passes */
    CHECK_EQ_INT(reason_of(o), 0);
    o = limit_buy(), o.quantity = 22;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_MAX_NOTIONAL);
    /* A market order without protection is counted at the band's edge: 16 x 130 > 2,000. */
    o = limit_buy(), o.order_type = MARKET, o.price = 0, o.tif = IOC, o.quantity = 16;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_MAX_NOTIONAL);
    o.quantity = 14;
    CHECK_EQ_INT(reason_of(o), 0);

    fixture f;
    setup(&f, 1);
    f.rules.trading_enabled = 0;
    f.orders[0].side = 9; /* halted comes before the order's own fields */
    CHECK_EQ_INT(reason_of_one(&f), HFT_RISK_TRADING_HALTED);
    setup(&f, 1);
    f.rules.band = 0; /* no band: the ceiling still holds */
    f.orders[0].price = 135;
    CHECK_EQ_INT(reason_of_one(&f), HFT_RISK_PRICE_BAND);
}

static void test_the_first_rules_come_first(void) {
    fixture f;
    setup(&f, 1);
    f.orders[0].price = 101; /* also off tick */
    f.id_state[0] = HFT_RISK_ID_INVALID;
    f.account.kill_switch = 1;
    CHECK_EQ_INT(reason_of_one(&f), HFT_RISK_INVALID_ORDER);
    f.id_state[0] = HFT_RISK_ID_USED;
    CHECK_EQ_INT(reason_of_one(&f), HFT_RISK_KILL_SWITCH);
    f.account.kill_switch = 0;
    CHECK_EQ_INT(reason_of_one(&f), HFT_RISK_OFF_TICK); /* a used id comes after the order's fields */
    f.orders[0].price = 100;
    CHECK_EQ_INT(reason_of_one(&f), HFT_RISK_DUPLICATE_CLIENT_ORDER_ID);
    f.id_state[0] = HFT_RISK_ID_OK;
    f.rule_rows[0] = -1;
    CHECK_EQ_INT(reason_of_one(&f), HFT_RISK_UNKNOWN_SYMBOL);
    f.rule_rows[0] = 0;
    f.symbol_ids[0] = -1;
    CHECK_EQ_INT(reason_of_one(&f), HFT_RISK_UNKNOWN_SYMBOL);
}

static void test_account_limits_count_in_batch_order(void) {
    fixture f;
    size_t accepted = 0;
    setup(&f, 4);
    f.account.granted = 3;
    CHECK_EQ_INT(hft_risk_check(&f.batch, &f.account, f.reasons, &accepted), HFT_OK);
    CHECK_EQ_INT(f.reasons[2], 0);
    CHECK_EQ_INT(f.reasons[3], HFT_RISK_RATE_LIMIT);
    CHECK_EQ_INT(accepted, 3);

    setup(&f, 4);
    f.account.open_room = 2;
    f.orders[1].tif = IOC; /* cannot rest: takes no place */
    CHECK_EQ_INT(hft_risk_check(&f.batch, &f.account, f.reasons, &accepted), HFT_OK);
    CHECK_EQ_INT(f.reasons[0] + f.reasons[1] + f.reasons[2], 0);
    CHECK_EQ_INT(f.reasons[3], HFT_RISK_OPEN_ORDER_LIMIT);

    /* Position 5 long + 5 working buys + 3 x 10 lots: the limit of 40 is met, not passed. */
    setup(&f, 4);
    f.position[0] = 5;
    f.open_buy[0] = 5;
    f.account.position_limit = 40;
    f.orders[2].side = 2; /* a sell counts on the other side: 0 working sells - 5 long + 10 */
    CHECK_EQ_INT(hft_risk_check(&f.batch, &f.account, f.reasons, &accepted), HFT_OK);
    CHECK_EQ_INT(f.reasons[0] + f.reasons[1] + f.reasons[2] + f.reasons[3], 0);
    f.account.position_limit = 39;
    CHECK_EQ_INT(hft_risk_check(&f.batch, &f.account, f.reasons, &accepted), HFT_OK);
    CHECK_EQ_INT(f.reasons[3], HFT_RISK_POSITION_LIMIT);
    CHECK_EQ_INT(accepted, 3);
    for (int i = 0; i < 2 * SYMBOLS; i++) CHECK_EQ_INT(f.used[i], 0); /* the scratch is left zero */
}

static void test_sums_that_would_overflow_fail_their_rule(void) {
    fixture f;
    setup(&f, 1);
    f.position[0] = INT64_MAX;
    f.open_buy[0] = 1;
    f.account.position_limit = INT64_MAX;
    CHECK_EQ_INT(reason_of_one(&f), HFT_RISK_POSITION_LIMIT);
    setup(&f, 1);
    f.position[0] = INT64_MIN;
    f.orders[0].side = 2;
    f.account.position_limit = INT64_MAX;
    CHECK_EQ_INT(reason_of_one(&f), HFT_RISK_POSITION_LIMIT);
    setup(&f, 1);
    f.position[0] = INT64_MAX - 9;
    f.account.position_limit = INT64_MAX;
    CHECK_EQ_INT(reason_of_one(&f), HFT_RISK_POSITION_LIMIT); /* + 10 lots would overflow (- 10 would just fit) */

    hft_new_order o = limit_buy();
    o.price = INT64_MAX;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_PRICE);
    o = limit_buy(), o.price = INT64_MIN;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_PRICE);
    o = limit_buy(), o.quantity = INT64_MIN;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_QUANTITY);
    o = limit_buy(), o.order_type = MARKET, o.price = 0, o.tif = IOC, o.protection = INT64_MAX;
    CHECK_EQ_INT(reason_of(o), HFT_RISK_INVALID_PRICE);

    /* The widest limits there are: a price at 2^61 with a band of 2^61 around 2^61. */
    setup(&f, 1);
    f.rules = (hft_instrument_rules){.trading_enabled = 1, .max_lots = 1, .price_ceiling = HFT_MAX_PRICE,
                                     .max_notional = INT64_MAX, .band = HFT_MAX_PRICE,
                                     .reference = HFT_MAX_PRICE, .price_step = 1, .lot_step = 1};
    f.orders[0].price = 1;
    f.orders[0].quantity = 1;
    CHECK_EQ_INT(reason_of_one(&f), 0);
    f.orders[0].order_type = MARKET, f.orders[0].price = 0, f.orders[0].tif = IOC; /* worst 2^62 */
    CHECK_EQ_INT(reason_of_one(&f), 0);
}

static void test_bad_arguments_are_refused_before_anything_is_written(void) {
    fixture f;
    size_t accepted = 77;
    setup(&f, 2);
    f.reasons[0] = f.reasons[1] = -1;
    f.symbol_ids[1] = SYMBOLS; /* no such symbol in the exposure arrays */
    CHECK_EQ_INT(hft_risk_check(&f.batch, &f.account, f.reasons, &accepted), HFT_EINVAL);
    setup(&f, 2);
    f.reasons[0] = f.reasons[1] = -1;
    f.rule_rows[1] = 1; /* one rules row only */
    CHECK_EQ_INT(hft_risk_check(&f.batch, &f.account, f.reasons, &accepted), HFT_EINVAL);
    setup(&f, 2);
    f.reasons[0] = f.reasons[1] = -1;
    f.rules.price_step = 0; /* would divide by zero */
    CHECK_EQ_INT(hft_risk_check(&f.batch, &f.account, f.reasons, &accepted), HFT_EINVAL);
    CHECK_EQ_INT(f.reasons[0], -1);
    CHECK_EQ_INT(accepted, 77);
    CHECK_EQ_INT(hft_risk_check(NULL, &f.account, f.reasons, &accepted), HFT_EINVAL);
    setup(&f, 1);
    hft_new_order o = limit_buy();
    CHECK_EQ_INT(hft_risk_check_one(&f.account, &f.rules, SYMBOLS, 0, o.side, o.order_type, o.tif, o.price, 0,
                                    o.quantity, 0, 0, 0, 0),
                 HFT_EINVAL);
    CHECK_EQ_INT(hft_risk_check_one(&f.account, &f.rules, 0, 3, o.side, o.order_type, o.tif, o.price, 0,
                                    o.quantity, 0, 0, 0, 0),
                 HFT_EINVAL);
    f.rules.lot_step = 0;
    CHECK_EQ_INT(hft_risk_check_one(&f.account, &f.rules, 0, 0, o.side, o.order_type, o.tif, o.price, 0,
                                    o.quantity, 0, 0, 0, 0),
                 HFT_EINVAL);
}

int main(void) {
    RUN(test_a_valid_order_passes);
    RUN(test_field_rules);
    RUN(test_instrument_rules);
    RUN(test_the_first_rules_come_first);
    RUN(test_account_limits_count_in_batch_order);
    RUN(test_sums_that_would_overflow_fail_their_rule);
    RUN(test_bad_arguments_are_refused_before_anything_is_written);
    return TEST_SUMMARY("risk");
}
