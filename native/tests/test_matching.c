/* test_matching.c -- the matching engine through its public API (hft_engine.h). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "hft_engine.h"

#define MAX_EVENTS 4096

static hft_match_event events[MAX_EVENTS];
static size_t n_events;

static hft_engine *new_engine(uint64_t max_orders, uint32_t max_levels)
{
    hft_engine_config config;
    hft_engine_config_default(&config);
    config.max_orders = max_orders;
    config.max_levels_per_side = max_levels;
    config.max_symbols = 2;
    config.market_protection_ticks = 5;
    hft_engine *engine = NULL;
    CHECK_EQ_INT(hft_engine_create(&config, &engine), HFT_OK);
    CHECK_EQ_INT(hft_engine_add_book(engine, 0), HFT_OK);
    return engine;
}

/* Apply one command; its events land in events[0 .. n_events). */
static size_t apply(hft_engine *engine, hft_order_command cmd)
{
    size_t consumed = 0;
    CHECK_EQ_INT(hft_engine_process_batch(engine, &cmd, 1, events, MAX_EVENTS, &consumed, &n_events), HFT_OK);
    CHECK_EQ_INT(consumed, 1);
    return n_events;
}

static hft_order_command order(uint64_t id, uint8_t side, int64_t price, int64_t qty)
{
    return (hft_order_command){.order_id = id, .account_id = 0, .price = price, .qty = qty,
                               .action = HFT_ACTION_NEW, .side = side, .order_type = HFT_TYPE_LIMIT,
                               .tif = HFT_TIF_GTC};
}

static hft_order_command with_tif(hft_order_command cmd, uint8_t tif)
{
    cmd.tif = tif;
    return cmd;
}

static hft_order_command with_account(hft_order_command cmd, uint64_t account, uint8_t stp)
{
    cmd.account_id = account;
    cmd.stp_mode = stp;
    return cmd;
}

static hft_order_command cancel(uint64_t id)
{
    return (hft_order_command){.order_id = id, .action = HFT_ACTION_CANCEL};
}

static hft_order_command replace(uint64_t id, int64_t price, int64_t qty)
{
    return (hft_order_command){.order_id = id, .price = price, .qty = qty, .action = HFT_ACTION_REPLACE};
}

static hft_order_command stop(uint64_t id, uint8_t side, uint8_t type, int64_t stop_price, int64_t price,
                              int64_t qty)
{
    hft_order_command cmd = order(id, side, price, qty);
    cmd.order_type = type;
    cmd.stop_price = stop_price;
    if (type == HFT_TYPE_STOP_MARKET) {
        cmd.tif = HFT_TIF_IOC;
    }
    return cmd;
}

static int count_type(uint8_t type)
{
    int n = 0;
    for (size_t i = 0; i < n_events; i++) {
        n += events[i].type == type;
    }
    return n;
}

static const hft_match_event *nth_of_type(uint8_t type, int nth)
{
    for (size_t i = 0; i < n_events; i++) {
        if (events[i].type == type && nth-- == 0) {
            return &events[i];
        }
    }
    return NULL;
}

/* The ids resting on one side, in priority order; returns how many. */
static size_t side_ids(hft_engine *engine, uint8_t side, uint64_t *ids, size_t max)
{
    hft_order_info info[64];
    size_t n = 0;
    CHECK_EQ_INT(hft_engine_book_orders(engine, 0, side, 0, info, 64, &n), HFT_OK);
    for (size_t i = 0; i < n && i < max; i++) {
        ids[i] = info[i].order_id;
    }
    return n;
}

static void test_limit_orders_rest_with_price_time_priority(void)
{
    hft_engine *e = new_engine(64, 16);
    apply(e, order(1, HFT_SIDE_BUY, 100, 5));
    CHECK_EQ_INT(events[0].type, HFT_EVENT_ACK);
    apply(e, order(2, HFT_SIDE_BUY, 101, 3));
    apply(e, order(3, HFT_SIDE_BUY, 100, 4));
    apply(e, order(4, HFT_SIDE_SELL, 105, 2));
    hft_top_of_book top;
    CHECK_EQ_INT(hft_engine_top_of_book(e, 0, &top), HFT_OK);
    CHECK(top.has_bid && top.has_ask && !top.has_last_trade);
    CHECK_EQ_INT(top.bid_price, 101);
    CHECK_EQ_INT(top.bid_qty, 3);
    CHECK_EQ_INT(top.ask_price, 105);
    hft_depth_level depth[4];
    size_t n = 0;
    CHECK_EQ_INT(hft_engine_depth(e, 0, HFT_SIDE_BUY, depth, 4, &n), HFT_OK);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(depth[1].price, 100);
    CHECK_EQ_INT(depth[1].qty, 9);
    CHECK_EQ_INT(depth[1].order_count, 2);
    uint64_t ids[8];
    CHECK_EQ_INT(side_ids(e, HFT_SIDE_BUY, ids, 8), 3);
    CHECK(ids[0] == 2 && ids[1] == 1 && ids[2] == 3);
    CHECK_EQ_INT(hft_engine_top_of_book(e, 1, &top), HFT_ENOENT);
    hft_engine_destroy(e);
}

static void test_taker_fills_across_levels_at_maker_prices(void)
{
    hft_engine *e = new_engine(64, 16);
    apply(e, order(1, HFT_SIDE_SELL, 101, 2));
    apply(e, order(2, HFT_SIDE_SELL, 102, 3));
    apply(e, order(3, HFT_SIDE_SELL, 101, 1));
    apply(e, order(4, HFT_SIDE_BUY, 102, 5));
    CHECK_EQ_INT(count_type(HFT_EVENT_FILL), 3);
    const hft_match_event *f0 = nth_of_type(HFT_EVENT_FILL, 0);
    const hft_match_event *f1 = nth_of_type(HFT_EVENT_FILL, 1);
    const hft_match_event *f2 = nth_of_type(HFT_EVENT_FILL, 2);
    CHECK(f0->maker_order_id == 1 && f0->price == 101 && f0->qty == 2 && f0->leaves_qty == 3);
    CHECK(f1->maker_order_id == 3 && f1->price == 101 && f1->qty == 1);
    CHECK(f2->maker_order_id == 2 && f2->price == 102 && f2->qty == 2 && f2->leaves_qty == 0);
    CHECK_EQ_INT(f2->maker_leaves_qty, 1);
    hft_top_of_book top;
    hft_engine_top_of_book(e, 0, &top);
    CHECK(top.has_ask && top.ask_price == 102 && top.ask_qty == 1 && !top.has_bid);
    CHECK_EQ_INT(top.last_trade_price, 102);
    CHECK_EQ_INT(hft_engine_live_orders(e), 1);
    hft_engine_destroy(e);
}

static void test_ioc_remainder_expires_and_gtc_remainder_rests(void)
{
    hft_engine *e = new_engine(64, 16);
    apply(e, order(1, HFT_SIDE_SELL, 100, 2));
    apply(e, with_tif(order(2, HFT_SIDE_BUY, 100, 5), HFT_TIF_IOC));
    CHECK_EQ_INT(count_type(HFT_EVENT_FILL), 1);
    CHECK_EQ_INT(events[n_events - 1].type, HFT_EVENT_EXPIRED);
    CHECK_EQ_INT(events[n_events - 1].qty, 3);
    CHECK_EQ_INT(events[n_events - 1].reason, HFT_REASON_UNFILLED);
    CHECK_EQ_INT(hft_engine_live_orders(e), 0);
    apply(e, order(3, HFT_SIDE_SELL, 100, 2));
    apply(e, order(4, HFT_SIDE_BUY, 100, 5));
    hft_top_of_book top;
    hft_engine_top_of_book(e, 0, &top);
    CHECK(top.has_bid && top.bid_qty == 3 && !top.has_ask);
    hft_engine_destroy(e);
}

static void test_fok_when_book_too_thin_expires_without_fills(void)
{
    hft_engine *e = new_engine(64, 16);
    apply(e, order(1, HFT_SIDE_SELL, 100, 2));
    apply(e, order(2, HFT_SIDE_SELL, 101, 2));
    apply(e, order(3, HFT_SIDE_SELL, 103, 9));
    apply(e, with_tif(order(4, HFT_SIDE_BUY, 101, 5), HFT_TIF_FOK));
    CHECK_EQ_INT(n_events, 2);
    CHECK_EQ_INT(events[1].type, HFT_EVENT_EXPIRED);
    CHECK_EQ_INT(events[1].reason, HFT_REASON_FOK_UNFILLABLE);
    apply(e, with_tif(order(5, HFT_SIDE_BUY, 101, 4), HFT_TIF_FOK));
    CHECK_EQ_INT(count_type(HFT_EVENT_FILL), 2);
    CHECK_EQ_INT(count_type(HFT_EVENT_EXPIRED), 0);
    hft_engine_destroy(e);
}

static void test_market_order_stays_inside_protection_band(void)
{
    hft_engine *e = new_engine(64, 16);
    hft_order_command market = order(9, HFT_SIDE_BUY, 0, 10);
    market.order_type = HFT_TYPE_MARKET;
    market.tif = HFT_TIF_IOC;
    apply(e, market);
    CHECK_EQ_INT(events[0].type, HFT_EVENT_REJECT);
    CHECK_EQ_INT(events[0].reason, HFT_REASON_NO_LIQUIDITY);
    apply(e, order(1, HFT_SIDE_SELL, 100, 2));
    apply(e, order(2, HFT_SIDE_SELL, 105, 2));
    apply(e, order(3, HFT_SIDE_SELL, 106, 2)); /* band is 5 ticks: out of reach */
    apply(e, market);
    CHECK_EQ_INT(events[0].price, 105);
    CHECK_EQ_INT(count_type(HFT_EVENT_FILL), 2);
    CHECK_EQ_INT(events[n_events - 1].type, HFT_EVENT_EXPIRED);
    CHECK_EQ_INT(events[n_events - 1].qty, 6);
    market.tif = HFT_TIF_GTC;
    market.order_id = 10;
    apply(e, market);
    CHECK_EQ_INT(events[0].reason, HFT_REASON_INVALID_COMBINATION);
    hft_engine_destroy(e);
}

static void test_cancel_and_its_rejects(void)
{
    hft_engine *e = new_engine(64, 16);
    apply(e, with_account(order(1, HFT_SIDE_BUY, 100, 5), 7, 0));
    apply(e, cancel(1));
    CHECK_EQ_INT(events[0].type, HFT_EVENT_REJECT);
    CHECK_EQ_INT(events[0].reason, HFT_REASON_ACCOUNT_MISMATCH);
    hft_order_command c = cancel(1);
    c.account_id = 7;
    apply(e, c);
    CHECK_EQ_INT(events[0].type, HFT_EVENT_CANCELED);
    CHECK_EQ_INT(events[0].qty, 5);
    CHECK_EQ_INT(events[0].reason, HFT_REASON_USER_CANCEL);
    apply(e, c);
    CHECK_EQ_INT(events[0].reason, HFT_REASON_UNKNOWN_ORDER);
    hft_top_of_book top;
    hft_engine_top_of_book(e, 0, &top);
    CHECK(!top.has_bid);
    apply(e, order(2, HFT_SIDE_BUY, 100, 5));
    apply(e, order(2, HFT_SIDE_BUY, 100, 5));
    CHECK_EQ_INT(events[0].reason, HFT_REASON_DUPLICATE_ORDER_ID);
    hft_engine_destroy(e);
}

static void test_replace_keeps_priority_only_when_reducing_at_same_price(void)
{
    hft_engine *e = new_engine(64, 16);
    apply(e, order(1, HFT_SIDE_BUY, 100, 5));
    apply(e, order(2, HFT_SIDE_BUY, 100, 5));
    uint64_t ids[8];
    apply(e, replace(1, 100, 3));
    CHECK_EQ_INT(events[0].type, HFT_EVENT_REPLACED);
    side_ids(e, HFT_SIDE_BUY, ids, 8);
    CHECK(ids[0] == 1 && ids[1] == 2);
    apply(e, replace(1, 100, 4)); /* quantity up: to the back */
    side_ids(e, HFT_SIDE_BUY, ids, 8);
    CHECK(ids[0] == 2 && ids[1] == 1);
    apply(e, replace(2, 99, 5));
    apply(e, replace(2, 100, 5)); /* price change: behind 1 */
    side_ids(e, HFT_SIDE_BUY, ids, 8);
    CHECK(ids[0] == 1 && ids[1] == 2);
    apply(e, order(3, HFT_SIDE_SELL, 102, 2));
    apply(e, replace(1, 102, 4)); /* now crossing: trades, rest rests */
    CHECK_EQ_INT(count_type(HFT_EVENT_FILL), 1);
    hft_top_of_book top;
    hft_engine_top_of_book(e, 0, &top);
    CHECK(top.bid_price == 102 && top.bid_qty == 2 && !top.has_ask);
    hft_engine_destroy(e);
}

static void test_cancel_all_removes_only_that_accounts_orders(void)
{
    hft_engine *e = new_engine(64, 16);
    apply(e, with_account(order(1, HFT_SIDE_BUY, 100, 5), 7, 0));
    apply(e, with_account(order(2, HFT_SIDE_BUY, 100, 5), 8, 0));
    apply(e, with_account(order(3, HFT_SIDE_SELL, 103, 5), 7, 0));
    apply(e, with_account(stop(4, HFT_SIDE_BUY, HFT_TYPE_STOP_LIMIT, 110, 111, 1), 7, 0));
    hft_order_command all = {.account_id = 7, .action = HFT_ACTION_CANCEL_ALL, .symbol_id = HFT_ALL_SYMBOLS};
    apply(e, all);
    CHECK_EQ_INT(count_type(HFT_EVENT_CANCELED), 3);
    CHECK(events[0].order_id == 1 && events[1].order_id == 3 && events[2].order_id == 4);
    CHECK_EQ_INT(hft_engine_live_orders(e), 1);
    all.symbol_id = 1; /* no book */
    apply(e, all);
    CHECK_EQ_INT(events[0].reason, HFT_REASON_UNKNOWN_SYMBOL);
    hft_engine_destroy(e);
}

static void test_self_trade_prevention_modes(void)
{
    static const uint8_t modes[] = {HFT_STP_CANCEL_RESTING, HFT_STP_CANCEL_TAKER, HFT_STP_CANCEL_BOTH,
                                    HFT_STP_DECREMENT, HFT_STP_NONE};
    for (size_t m = 0; m < sizeof(modes); m++) {
        hft_engine *e = new_engine(64, 16);
        apply(e, with_account(order(1, HFT_SIDE_SELL, 100, 2), 7, 0)); /* own order first in queue */
        apply(e, with_account(order(2, HFT_SIDE_SELL, 100, 4), 8, 0));
        apply(e, with_account(order(3, HFT_SIDE_BUY, 100, 3), 7, modes[m]));
        uint64_t asks[8];
        size_t n_asks = side_ids(e, HFT_SIDE_SELL, asks, 8);
        switch (modes[m]) {
        case HFT_STP_CANCEL_RESTING:
            CHECK(events[1].type == HFT_EVENT_CANCELED && events[1].order_id == 1 &&
                  events[1].reason == HFT_REASON_SELF_TRADE);
            CHECK(events[2].type == HFT_EVENT_FILL && events[2].maker_order_id == 2 && events[2].qty == 3);
            CHECK(n_asks == 1 && asks[0] == 2);
            break;
        case HFT_STP_CANCEL_TAKER:
            CHECK(n_events == 2 && events[1].order_id == 3 && events[1].qty == 3);
            CHECK_EQ_INT(n_asks, 2);
            break;
        case HFT_STP_CANCEL_BOTH:
            CHECK(n_events == 3 && events[1].order_id == 1 && events[2].order_id == 3);
            CHECK(n_asks == 1 && asks[0] == 2);
            break;
        case HFT_STP_DECREMENT:
            /* 2 of each is removed; the taker's last lot trades with order 2. */
            CHECK(events[1].order_id == 1 && events[1].qty == 2 && events[1].leaves_qty == 0);
            CHECK(events[2].order_id == 3 && events[2].qty == 2 && events[2].leaves_qty == 1);
            CHECK(events[3].type == HFT_EVENT_FILL && events[3].qty == 1 && events[3].maker_order_id == 2);
            break;
        default:
            CHECK(events[1].type == HFT_EVENT_FILL && events[1].maker_order_id == 1);
            break;
        }
        hft_engine_destroy(e);
    }
}

static void test_fok_counts_self_trade_prevention(void)
{
    hft_engine *e = new_engine(64, 16);
    apply(e, with_account(order(1, HFT_SIDE_SELL, 100, 5), 7, 0));
    apply(e, with_account(order(2, HFT_SIDE_SELL, 100, 2), 8, 0));
    /* Cancel-resting would remove order 1: only 2 lots are really there. */
    apply(e, with_account(with_tif(order(3, HFT_SIDE_BUY, 100, 3), HFT_TIF_FOK), 7, HFT_STP_CANCEL_RESTING));
    CHECK_EQ_INT(events[1].reason, HFT_REASON_FOK_UNFILLABLE);
    CHECK_EQ_INT(hft_engine_live_orders(e), 2);
    hft_engine_destroy(e);
}

static void test_iceberg_refills_to_back_of_level(void)
{
    hft_engine *e = new_engine(64, 16);
    hft_order_command iceberg = order(1, HFT_SIDE_SELL, 100, 10);
    iceberg.display_qty = 3;
    apply(e, iceberg);
    apply(e, order(2, HFT_SIDE_SELL, 100, 2));
    hft_top_of_book top;
    hft_engine_top_of_book(e, 0, &top);
    CHECK_EQ_INT(top.ask_qty, 5);
    apply(e, order(3, HFT_SIDE_BUY, 100, 4));
    /* 3 from the iceberg's shown slice, then order 2 is next (the refill went behind it). */
    CHECK_EQ_INT(count_type(HFT_EVENT_FILL), 2);
    CHECK(nth_of_type(HFT_EVENT_FILL, 0)->maker_order_id == 1 && nth_of_type(HFT_EVENT_FILL, 0)->qty == 3);
    CHECK(nth_of_type(HFT_EVENT_FILL, 1)->maker_order_id == 2 && nth_of_type(HFT_EVENT_FILL, 1)->qty == 1);
    CHECK_EQ_INT(nth_of_type(HFT_EVENT_FILL, 0)->maker_leaves_qty, 7);
    uint64_t ids[8];
    side_ids(e, HFT_SIDE_SELL, ids, 8);
    CHECK(ids[0] == 2 && ids[1] == 1);
    /* A big taker eats the whole iceberg, slice after slice. */
    apply(e, with_tif(order(4, HFT_SIDE_BUY, 100, 50), HFT_TIF_IOC));
    CHECK_EQ_INT(count_type(HFT_EVENT_FILL), 4); /* 1 from order 2, then 3+3+1 from the iceberg */
    CHECK_EQ_INT(events[n_events - 1].qty, 42);
    hft_engine_destroy(e);
}

static void test_stop_orders_trigger_in_order_and_cascade(void)
{
    hft_engine *e = new_engine(64, 16);
    apply(e, order(1, HFT_SIDE_SELL, 101, 1));
    apply(e, order(2, HFT_SIDE_SELL, 102, 1));
    apply(e, order(3, HFT_SIDE_SELL, 103, 1));
    apply(e, stop(10, HFT_SIDE_BUY, HFT_TYPE_STOP_LIMIT, 102, 102, 1));
    apply(e, stop(11, HFT_SIDE_BUY, HFT_TYPE_STOP_MARKET, 101, 0, 1));
    CHECK_EQ_INT(events[0].type, HFT_EVENT_ACK);
    CHECK_EQ_INT(hft_engine_live_orders(e), 5);
    /* A trade at 101 elects stop 11 (stop 101), which buys at 102 and elects stop 10. */
    apply(e, order(4, HFT_SIDE_BUY, 101, 1));
    CHECK_EQ_INT(count_type(HFT_EVENT_TRIGGERED), 2);
    CHECK_EQ_INT(nth_of_type(HFT_EVENT_TRIGGERED, 0)->order_id, 11);
    CHECK_EQ_INT(nth_of_type(HFT_EVENT_TRIGGERED, 1)->order_id, 10);
    CHECK_EQ_INT(nth_of_type(HFT_EVENT_FILL, 1)->price, 102);
    /* Stop 10's limit is 102 and 102 is gone: it rests as a bid. */
    hft_top_of_book top;
    hft_engine_top_of_book(e, 0, &top);
    CHECK(top.has_bid && top.bid_price == 102 && top.ask_price == 103);
    /* A stop already satisfied by the last trade fires on arrival. */
    apply(e, stop(12, HFT_SIDE_SELL, HFT_TYPE_STOP_LIMIT, 105, 102, 1));
    CHECK(events[1].type == HFT_EVENT_TRIGGERED && events[2].type == HFT_EVENT_FILL);
    hft_engine_destroy(e);
}

static void test_post_only_rejects_or_slides(void)
{
    hft_engine *e = new_engine(64, 16);
    apply(e, order(1, HFT_SIDE_SELL, 101, 1));
    hft_order_command maker = order(2, HFT_SIDE_BUY, 101, 1);
    maker.flags = HFT_FLAG_POST_ONLY;
    apply(e, maker);
    CHECK_EQ_INT(events[0].reason, HFT_REASON_POST_ONLY_WOULD_TAKE);
    maker.flags = HFT_FLAG_POST_ONLY_SLIDE;
    apply(e, maker);
    CHECK(events[0].type == HFT_EVENT_ACK && events[0].reason == HFT_REASON_REPRICED && events[0].price == 100);
    CHECK_EQ_INT(n_events, 1);
    maker.order_id = 3;
    maker.flags = HFT_FLAG_POST_ONLY;
    maker.tif = HFT_TIF_IOC;
    apply(e, maker);
    CHECK_EQ_INT(events[0].reason, HFT_REASON_INVALID_COMBINATION);
    hft_engine_destroy(e);
}

static void test_full_pool_and_full_side_reject_cleanly(void)
{
    hft_engine *e = new_engine(2, 2);
    apply(e, order(1, HFT_SIDE_BUY, 100, 1));
    apply(e, order(2, HFT_SIDE_BUY, 99, 1));
    apply(e, order(3, HFT_SIDE_SELL, 101, 1)); /* no free record: refused before anything happens */
    CHECK(n_events == 1 && events[0].reason == HFT_REASON_BOOK_FULL);
    apply(e, with_tif(order(4, HFT_SIDE_SELL, 100, 1), HFT_TIF_IOC)); /* never rests: still welcome */
    CHECK_EQ_INT(count_type(HFT_EVENT_FILL), 1);
    hft_engine_destroy(e);

    e = new_engine(8, 2);
    apply(e, order(1, HFT_SIDE_BUY, 100, 1));
    apply(e, order(2, HFT_SIDE_BUY, 99, 1));
    apply(e, order(3, HFT_SIDE_BUY, 98, 1)); /* a third price level does not fit */
    CHECK(n_events == 2 && events[1].type == HFT_EVENT_CANCELED && events[1].reason == HFT_REASON_BOOK_FULL);
    apply(e, order(5, HFT_SIDE_BUY, 99, 1)); /* an existing level does */
    CHECK(n_events == 1 && events[0].type == HFT_EVENT_ACK);
    CHECK_EQ_INT(hft_engine_live_orders(e), 3);
    hft_engine_destroy(e);
}

static void test_small_event_buffer_spills_and_resumes(void)
{
    hft_engine *e = new_engine(256, 64);
    hft_order_command cmds[41];
    for (int i = 0; i < 40; i++) {
        cmds[i] = order((uint64_t)i + 1, HFT_SIDE_SELL, 100 + i, 1);
    }
    cmds[40] = with_tif(order(100, HFT_SIDE_BUY, 200, 100), HFT_TIF_IOC); /* 1 ACK, 40 fills, 1 expiry */
    hft_match_event small[7];
    hft_match_event all[128];
    size_t total = 0;
    size_t done = 0;
    int calls = 0;
    while (done < 41 || hft_engine_pending_events(e) > 0) {
        size_t consumed = 0;
        size_t written = 0;
        CHECK_EQ_INT(hft_engine_process_batch(e, cmds + done, 41 - done, small, 7, &consumed, &written), HFT_OK);
        CHECK(written <= 7);
        memcpy(all + total, small, written * sizeof(*small));
        total += written;
        done += consumed;
        calls++;
        CHECK(calls < 100);
        if (calls >= 100) {
            break;
        }
    }
    CHECK_EQ_INT(total, 40 + 42);
    CHECK_EQ_INT(all[total - 1].type, HFT_EVENT_EXPIRED);
    CHECK_EQ_INT(all[total - 1].qty, 60);
    CHECK_EQ_INT(all[total - 2].price, 139);
    size_t consumed = 0;
    size_t written = 0;
    CHECK_EQ_INT(hft_engine_process_batch(e, cmds, 1, small, 0, &consumed, &written), HFT_EINVAL);
    hft_engine_destroy(e);
}

static void test_invalid_commands_are_rejected_with_reasons(void)
{
    hft_engine *e = new_engine(16, 16);
    struct {
        hft_order_command cmd;
        uint16_t reason;
    } cases[] = {
        {order(0, HFT_SIDE_BUY, 100, 1), HFT_REASON_INVALID_ORDER_ID},
        {order(1, 3, 100, 1), HFT_REASON_INVALID_SIDE},
        {order(1, HFT_SIDE_BUY, 100, 0), HFT_REASON_INVALID_QTY},
        {order(1, HFT_SIDE_BUY, HFT_MAX_PRICE + 1, 1), HFT_REASON_INVALID_PRICE},
        {with_tif(order(1, HFT_SIDE_BUY, 100, 1), 9), HFT_REASON_INVALID_TIF},
        {with_account(order(1, HFT_SIDE_BUY, 100, 1), 1, 9), HFT_REASON_INVALID_STP_MODE},
        {{.order_id = 1, .action = 9}, HFT_REASON_INVALID_ACTION},
        {replace(77, 100, 1), HFT_REASON_UNKNOWN_ORDER},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        apply(e, cases[i].cmd);
        CHECK_EQ_INT(n_events, 1);
        CHECK_EQ_INT(events[0].type, HFT_EVENT_REJECT);
        CHECK_EQ_INT(events[0].reason, cases[i].reason);
    }
    hft_order_command unknown_symbol = order(1, HFT_SIDE_BUY, 100, 1);
    unknown_symbol.symbol_id = 1;
    apply(e, unknown_symbol);
    CHECK_EQ_INT(events[0].reason, HFT_REASON_UNKNOWN_SYMBOL);
    CHECK_EQ_INT(hft_engine_live_orders(e), 0);
    hft_engine_destroy(e);
}

/* A deterministic mixed flow: the book never rests crossed, every lot is
 * accounted for, and a second engine fed the same flow says exactly the same. */
static void test_random_flow_keeps_invariants_and_is_deterministic(void)
{
    enum { N = 20000, BATCH = 500 };
    hft_engine *a = new_engine(4096, 256);
    hft_engine *b = new_engine(4096, 256);
    hft_order_command *cmds = calloc(BATCH, sizeof(*cmds));
    hft_match_event *ev_a = calloc(BATCH * 64, sizeof(*ev_a));
    hft_match_event *ev_b = calloc(BATCH * 64, sizeof(*ev_b));
    uint64_t rng = 42;
    int64_t submitted = 0;
    int64_t removed = 0; /* filled (both sides) + cancelled + expired */
    for (int round = 0; round < N / BATCH; round++) {
        for (int i = 0; i < BATCH; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            uint64_t r = rng >> 33;
            uint64_t id = (uint64_t)round * BATCH + (uint64_t)i + 1;
            hft_order_command c = order(id, (r & 1) ? HFT_SIDE_BUY : HFT_SIDE_SELL, 1000 + (int64_t)(r >> 1) % 40 - 20,
                                        1 + (int64_t)(r >> 8) % 9);
            c.account_id = 1 + id % 5;
            switch ((r >> 16) % 10) {
            case 0:
            case 1:
            case 2:
                c = cancel(id > 30 ? id - 1 - (r >> 20) % 30 : 1);
                /* Usually the owner; one in four comes from the wrong account. */
                c.account_id = 1 + (c.order_id + ((r >> 26) % 4 == 0)) % 5;
                break;
            case 3:
                c.tif = HFT_TIF_IOC;
                break;
            case 4:
                c.display_qty = 1 + (r >> 24) % 3;
                break;
            default:
                break;
            }
            cmds[i] = c;
        }
        size_t consumed_a = 0, written_a = 0, consumed_b = 0, written_b = 0;
        CHECK_EQ_INT(hft_engine_process_batch(a, cmds, BATCH, ev_a, BATCH * 64, &consumed_a, &written_a), HFT_OK);
        CHECK_EQ_INT(hft_engine_process_batch(b, cmds, BATCH, ev_b, BATCH * 64, &consumed_b, &written_b), HFT_OK);
        CHECK_EQ_INT(consumed_a, BATCH);
        CHECK_EQ_INT(written_a, written_b);
        CHECK(memcmp(ev_a, ev_b, written_a * sizeof(*ev_a)) == 0);
        for (size_t k = 0; k < written_a; k++) {
            const hft_match_event *ev = &ev_a[k];
            if (ev->type == HFT_EVENT_ACK) {
                submitted += ev->qty;
            } else if (ev->type == HFT_EVENT_FILL) {
                removed += 2 * ev->qty;
            } else if (ev->type == HFT_EVENT_CANCELED || ev->type == HFT_EVENT_EXPIRED) {
                removed += ev->qty;
            }
        }
        hft_top_of_book top;
        hft_engine_top_of_book(a, 0, &top);
        CHECK(!(top.has_bid && top.has_ask) || top.bid_price < top.ask_price);
    }
    int64_t resting = 0;
    for (uint8_t side = HFT_SIDE_BUY; side <= HFT_SIDE_SELL; side++) {
        size_t n = 0;
        hft_engine_book_orders(a, 0, side, 0, NULL, 0, &n);
        hft_order_info *info = calloc(n + 1, sizeof(*info));
        hft_engine_book_orders(a, 0, side, 0, info, n, &n);
        for (size_t k = 0; k < n; k++) {
            resting += info[k].visible_qty + info[k].hidden_qty;
        }
        free(info);
    }
    CHECK_EQ_INT(submitted, removed + resting);
    free(cmds);
    free(ev_a);
    free(ev_b);
    hft_engine_destroy(a);
    hft_engine_destroy(b);
}

/* Ids in patterns that defeat naive hashing (same low bits, strides of the
 * table size, sequential runs): every live order stays findable through
 * inserts and deletes in scrambled order. */
static void test_order_index_survives_patterned_ids(void)
{
    enum { N = 3000 };
    static uint64_t id_list[N];
    static int live[N];
    hft_engine *e = new_engine(N, 8);
    for (int i = 0; i < N; i++) {
        uint64_t k = (uint64_t)i / 3;
        switch (i % 3) {
        case 0:
            id_list[i] = (k + 1) << 32; /* identical low bits */
            break;
        case 1:
            id_list[i] = 1000000 + k; /* a sequential run */
            break;
        default:
            id_list[i] = (k + 1) * 8192; /* a stride of the table size */
            break;
        }
        apply(e, order(id_list[i], HFT_SIDE_BUY, 100 + i % 4, 1));
        CHECK_EQ_INT(events[0].type, HFT_EVENT_ACK);
        live[i] = 1;
    }
    uint64_t rng = 7;
    for (int round = 0; round < 2 * N; round++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        int i = (int)((rng >> 33) % N);
        if (live[i]) {
            apply(e, cancel(id_list[i]));
            CHECK_EQ_INT(events[0].type, HFT_EVENT_CANCELED);
            live[i] = 0;
        } else {
            apply(e, order(id_list[i], HFT_SIDE_BUY, 100 + i % 4, 1));
            CHECK_EQ_INT(events[0].type, HFT_EVENT_ACK);
            live[i] = 1;
        }
    }
    size_t n_live = 0;
    for (int i = 0; i < N; i++) {
        hft_order_info info;
        int rc = hft_engine_order_info(e, id_list[i], &info);
        CHECK_EQ_INT(rc, live[i] ? HFT_OK : HFT_ENOENT);
        if (rc == HFT_OK) {
            CHECK(info.order_id == id_list[i]);
        }
        n_live += (size_t)live[i];
    }
    CHECK_EQ_INT(hft_engine_live_orders(e), n_live);
    hft_engine_destroy(e);
}

static void test_decrement_takes_iceberg_reserve_first(void)
{
    hft_engine *e = new_engine(64, 16);
    hft_order_command iceberg = with_account(order(1, HFT_SIDE_SELL, 100, 10), 7, 0);
    iceberg.display_qty = 4;
    apply(e, iceberg);
    apply(e, with_account(order(2, HFT_SIDE_BUY, 100, 5), 7, HFT_STP_DECREMENT));
    CHECK_EQ_INT(n_events, 3);
    CHECK(events[1].order_id == 1 && events[1].qty == 5 && events[1].leaves_qty == 5);
    hft_order_info info;
    CHECK_EQ_INT(hft_engine_order_info(e, 1, &info), HFT_OK);
    CHECK(info.visible_qty == 4 && info.hidden_qty == 1);
    apply(e, with_account(order(3, HFT_SIDE_BUY, 100, 5), 7, HFT_STP_DECREMENT));
    CHECK_EQ_INT(hft_engine_order_info(e, 1, &info), HFT_ENOENT);
    CHECK_EQ_INT(hft_engine_live_orders(e), 0);
    hft_engine_destroy(e);
}

static void test_event_overflow_keeps_its_command_index(void)
{
    hft_engine *e = new_engine(64, 64);
    hft_order_command cmds[4];
    for (int i = 0; i < 3; i++) {
        cmds[i] = order((uint64_t)i + 1, HFT_SIDE_SELL, 100, 1);
    }
    cmds[3] = with_tif(order(9, HFT_SIDE_BUY, 100, 3), HFT_TIF_IOC);
    hft_match_event small[4];
    size_t consumed = 0, written = 0;
    CHECK_EQ_INT(hft_engine_process_batch(e, cmds, 4, small, 4, &consumed, &written), HFT_OK);
    CHECK(consumed == 4 && written == 4);
    CHECK_EQ_INT(hft_engine_pending_events(e), 3);
    CHECK_EQ_INT(hft_engine_process_batch(e, NULL, 0, small, 4, &consumed, &written), HFT_OK);
    CHECK(consumed == 0 && written == 3);
    for (size_t i = 0; i < written; i++) {
        CHECK(small[i].type == HFT_EVENT_FILL && small[i].command_index == 3);
    }
    CHECK_EQ_INT(hft_engine_pending_events(e), 0);
    hft_engine_destroy(e);
}

static void test_bad_configurations_are_refused(void)
{
    hft_engine_config config;
    hft_engine *e = NULL;
    hft_engine_config_default(&config);
    config.max_orders = 0;
    CHECK_EQ_INT(hft_engine_create(&config, &e), HFT_EINVAL);
    hft_engine_config_default(&config);
    config.default_stp_mode = HFT_STP_DEFAULT;
    CHECK_EQ_INT(hft_engine_create(&config, &e), HFT_EINVAL);
    hft_engine_config_default(&config);
    config.market_protection_ticks = -1;
    CHECK_EQ_INT(hft_engine_create(&config, &e), HFT_EINVAL);
    hft_engine_config_default(&config);
    CHECK_EQ_INT(hft_engine_create(&config, &e), HFT_OK);
    CHECK_EQ_INT(hft_engine_add_book(e, config.max_symbols), HFT_EINVAL);
    CHECK_EQ_INT(hft_engine_add_book(e, 0), HFT_OK);
    CHECK_EQ_INT(hft_engine_add_book(e, 0), HFT_EEXIST);
    hft_engine_destroy(e);
    hft_engine_destroy(NULL);
}

/* A partly filled iceberg survives a snapshot restore exactly: same slice, reserve
 * and queue position, so later flow trades the same against both engines. */
static void test_restore_resting_reproduces_a_partly_filled_iceberg(void)
{
    hft_engine *live = new_engine(64, 16);
    hft_order_command iceberg = order(1, HFT_SIDE_SELL, 100, 10);
    iceberg.display_qty = 3;
    apply(live, iceberg);
    apply(live, order(2, HFT_SIDE_SELL, 100, 4));
    apply(live, order(3, HFT_SIDE_SELL, 101, 5));
    apply(live, with_tif(order(4, HFT_SIDE_BUY, 100, 2), HFT_TIF_IOC)); /* slice of 1 left on #1 */
    hft_order_info before[8];
    size_t n = 0;
    CHECK_EQ_INT(hft_engine_book_orders(live, 0, HFT_SIDE_SELL, 0, before, 8, &n), HFT_OK);
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_INT(before[0].visible_qty, 1);
    CHECK_EQ_INT(before[0].hidden_qty, 7);

    hft_engine *restored = new_engine(64, 16);
    for (size_t i = 0; i < n; i++) {
        hft_order_command c = {.order_id = before[i].order_id, .account_id = before[i].account_id,
                               .price = before[i].price, .display_qty = before[i].display_qty,
                               .symbol_id = before[i].symbol_id, .side = before[i].side,
                               .flags = before[i].flags, .stp_mode = before[i].stp_mode};
        CHECK_EQ_INT(hft_engine_restore_resting(restored, &c, before[i].visible_qty, before[i].hidden_qty), HFT_OK);
    }
    hft_order_info after[8];
    size_t m = 0;
    CHECK_EQ_INT(hft_engine_book_orders(restored, 0, HFT_SIDE_SELL, 0, after, 8, &m), HFT_OK);
    CHECK_EQ_INT(m, n);
    CHECK(memcmp(before, after, n * sizeof before[0]) == 0);

    /* Refused: a duplicate id, a crossing price, a slice bigger than the display, bad side. */
    hft_order_command dup = {.order_id = 2, .price = 100, .symbol_id = 0, .side = HFT_SIDE_SELL};
    CHECK_EQ_INT(hft_engine_restore_resting(restored, &dup, 1, 0), HFT_EEXIST);
    hft_order_command crossing = {.order_id = 9, .price = 102, .symbol_id = 0, .side = HFT_SIDE_BUY};
    CHECK_EQ_INT(hft_engine_restore_resting(restored, &crossing, 1, 0), HFT_EINVAL);
    hft_order_command big_slice = {.order_id = 10, .price = 90, .display_qty = 2, .symbol_id = 0,
                                   .side = HFT_SIDE_BUY};
    CHECK_EQ_INT(hft_engine_restore_resting(restored, &big_slice, 3, 5), HFT_EINVAL);
    hft_order_command no_side = {.order_id = 11, .price = 90, .symbol_id = 0};
    CHECK_EQ_INT(hft_engine_restore_resting(restored, &no_side, 1, 0), HFT_EINVAL);
    hft_order_command no_book = {.order_id = 12, .price = 90, .symbol_id = 1, .side = HFT_SIDE_BUY};
    CHECK_EQ_INT(hft_engine_restore_resting(restored, &no_book, 1, 0), HFT_EINVAL);
    /* The same aggressive order trades the same way against both. */
    hft_match_event live_events[16], restored_events[16];
    apply(live, with_tif(order(5, HFT_SIDE_BUY, 101, 9), HFT_TIF_IOC));
    size_t live_n = n_events;
    memcpy(live_events, events, live_n * sizeof events[0]);
    apply(restored, with_tif(order(5, HFT_SIDE_BUY, 101, 9), HFT_TIF_IOC));
    CHECK_EQ_INT(n_events, live_n);
    memcpy(restored_events, events, n_events * sizeof events[0]);
    CHECK(memcmp(live_events, restored_events, live_n * sizeof events[0]) == 0);

    hft_engine_destroy(live);
    hft_engine_destroy(restored);
}

/* A stop still waiting for its trigger can be replaced: in place, re-parked, or fired at once. */
static void test_replace_pending_stops(void)
{
    hft_engine *e = new_engine(64, 16);
    apply(e, order(1, HFT_SIDE_SELL, 100, 1));
    apply(e, with_tif(order(2, HFT_SIDE_BUY, 100, 1), HFT_TIF_IOC)); /* last trade 100 */
    apply(e, stop(10, HFT_SIDE_BUY, HFT_TYPE_STOP_LIMIT, 105, 106, 5));
    apply(e, stop(11, HFT_SIDE_BUY, HFT_TYPE_STOP_LIMIT, 105, 106, 5));
    /* Quantity down, same prices: in place, still first in trigger order. */
    apply(e, replace(10, 106, 3));
    CHECK_EQ_INT(n_events, 1);
    CHECK_EQ_INT(events[0].type, HFT_EVENT_REPLACED);
    CHECK_EQ_INT(events[0].qty, 3);
    hft_order_info stops[4];
    size_t n = 0;
    CHECK_EQ_INT(hft_engine_book_orders(e, 0, HFT_SIDE_BUY, 1, stops, 4, &n), HFT_OK);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(stops[0].order_id, 10);
    CHECK_EQ_INT(stops[0].hidden_qty, 3);
    /* A new trigger: to the back of its new level (104 comes before 105 for buy stops). */
    hft_order_command move = replace(11, 107, 4);
    move.stop_price = 104;
    apply(e, move);
    CHECK_EQ_INT(n_events, 1);
    CHECK_EQ_INT(events[0].type, HFT_EVENT_REPLACED);
    CHECK_EQ_INT(events[0].price, 107);
    CHECK_EQ_INT(hft_engine_book_orders(e, 0, HFT_SIDE_BUY, 1, stops, 4, &n), HFT_OK);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(stops[0].order_id, 11);
    CHECK_EQ_INT(stops[0].stop_price, 104);
    CHECK_EQ_INT(stops[0].price, 107);
    CHECK_EQ_INT(stops[0].hidden_qty, 4);
    /* A trigger the last trade already satisfies: REPLACED, then TRIGGERED and the order rests. */
    hft_order_command fire = replace(10, 99, 3);
    fire.stop_price = 100;
    apply(e, fire);
    CHECK_EQ_INT(events[0].type, HFT_EVENT_REPLACED);
    CHECK_EQ_INT(count_type(HFT_EVENT_TRIGGERED), 1);
    hft_order_info info;
    CHECK_EQ_INT(hft_engine_order_info(e, 10, &info), HFT_OK);
    CHECK_EQ_INT(info.is_pending_stop, 0);
    CHECK_EQ_INT(info.price, 99);
    CHECK_EQ_INT(info.visible_qty, 3);
    /* Bad quantity or trigger: rejected, nothing changed. */
    apply(e, replace(11, 107, 0));
    CHECK_EQ_INT(events[0].type, HFT_EVENT_REJECT);
    CHECK_EQ_INT(events[0].reason, HFT_REASON_INVALID_QTY);
    CHECK_EQ_INT(hft_engine_order_info(e, 11, &info), HFT_OK);
    CHECK_EQ_INT(info.hidden_qty, 4);
    hft_engine_destroy(e);
}

int main(void)
{
    RUN(test_limit_orders_rest_with_price_time_priority);
    RUN(test_taker_fills_across_levels_at_maker_prices);
    RUN(test_ioc_remainder_expires_and_gtc_remainder_rests);
    RUN(test_fok_when_book_too_thin_expires_without_fills);
    RUN(test_market_order_stays_inside_protection_band);
    RUN(test_cancel_and_its_rejects);
    RUN(test_replace_keeps_priority_only_when_reducing_at_same_price);
    RUN(test_cancel_all_removes_only_that_accounts_orders);
    RUN(test_self_trade_prevention_modes);
    RUN(test_fok_counts_self_trade_prevention);
    RUN(test_iceberg_refills_to_back_of_level);
    RUN(test_stop_orders_trigger_in_order_and_cascade);
    RUN(test_post_only_rejects_or_slides);
    RUN(test_full_pool_and_full_side_reject_cleanly);
    RUN(test_small_event_buffer_spills_and_resumes);
    RUN(test_invalid_commands_are_rejected_with_reasons);
    RUN(test_random_flow_keeps_invariants_and_is_deterministic);
    RUN(test_order_index_survives_patterned_ids);
    RUN(test_decrement_takes_iceberg_reserve_first);
    RUN(test_event_overflow_keeps_its_command_index);
    RUN(test_bad_configurations_are_refused);
    RUN(test_restore_resting_reproduces_a_partly_filled_iceberg);
    RUN(test_replace_pending_stops);
    return TEST_SUMMARY("matching");
}
