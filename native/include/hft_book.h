/*
 * hft_book.h -- the vocabulary of the matching engine: order commands in,
 * match events out, and the records the book queries return.
 *
 * Money is never a float here: prices are int64 ticks and quantities int64
 * lots. Every struct below is laid out with explicit padding so that the numpy
 * dtypes in hftgate/matching/types.py can mirror it byte for byte; the batch
 * entry point (hft_engine.h) reads commands from, and writes events into,
 * numpy arrays without copying.
 *
 * The rules these records follow (what each event means, in which order they
 * come) are written down once, in hft_engine.h.
 */
#ifndef HFT_BOOK_H
#define HFT_BOOK_H

#include "hft_common.h"

/* Bounds that keep every sum and difference on the order path inside int64:
 * a level's total of at most HFT_MAX_ORDERS orders of HFT_MAX_QTY lots, and a
 * price plus the market protection band. */
#define HFT_MAX_PRICE 2305843009213693952   /* 2^61 ticks, either sign */
#define HFT_MAX_QTY 1099511627776           /* 2^40 lots */
#define HFT_MAX_ORDERS 8388608              /* 2^23 live orders per engine */

/* cmd.symbol_id for a cancel-all over every book of the engine. */
#define HFT_ALL_SYMBOLS 4294967295

#define HFT_SIDE_BUY 1
#define HFT_SIDE_SELL 2

#define HFT_ACTION_NEW 1
#define HFT_ACTION_CANCEL 2
#define HFT_ACTION_REPLACE 3
#define HFT_ACTION_CANCEL_ALL 4

#define HFT_TYPE_LIMIT 1
#define HFT_TYPE_MARKET 2      /* IOC/FOK inside the protection band, see hft_engine.h */
#define HFT_TYPE_STOP_LIMIT 3  /* becomes a limit order when the last trade reaches stop_price */
#define HFT_TYPE_STOP_MARKET 4 /* becomes a market order when the last trade reaches stop_price */

#define HFT_TIF_GTC 1 /* rests until filled or cancelled */
#define HFT_TIF_IOC 2 /* fills what it can now, the rest expires */
#define HFT_TIF_FOK 3 /* fills completely now or not at all */

#define HFT_FLAG_POST_ONLY 1       /* never takes: rejected if it would cross */
#define HFT_FLAG_POST_ONLY_SLIDE 2 /* never takes: repriced one tick behind the best opposite price */

/* Self-trade prevention: what happens when an order would trade against a
 * resting order of the same non-zero account. The taker's mode decides. */
#define HFT_STP_DEFAULT 0        /* use the engine's configured mode */
#define HFT_STP_CANCEL_RESTING 1 /* cancel the resting order, keep matching */
#define HFT_STP_CANCEL_TAKER 2   /* cancel the rest of the incoming order */
#define HFT_STP_CANCEL_BOTH 3
#define HFT_STP_DECREMENT 4      /* reduce both by the smaller open quantity, no trade */
#define HFT_STP_NONE 5           /* allow the self-trade */

#define HFT_EVENT_ACK 1       /* a new order was accepted (resting, pending stop, or about to trade) */
#define HFT_EVENT_REJECT 2    /* a command was refused; `reason` says why; nothing changed */
#define HFT_EVENT_FILL 3      /* a trade: order_id took from maker_order_id */
#define HFT_EVENT_CANCELED 4  /* quantity removed by a cancel, cancel-all, self-trade prevention or a full book */
#define HFT_EVENT_EXPIRED 5   /* quantity of an IOC/FOK/market order that could not trade */
#define HFT_EVENT_REPLACED 6  /* a replace was applied: price and qty are the new ones */
#define HFT_EVENT_TRIGGERED 7 /* a stop order was elected by the last trade price; its order events follow */

/* Machine-readable reasons. 1..19 are for REJECT, 20.. for the other events. */
#define HFT_REASON_NONE 0
#define HFT_REASON_INVALID_ACTION 1
#define HFT_REASON_INVALID_SIDE 2
#define HFT_REASON_INVALID_TYPE 3
#define HFT_REASON_INVALID_TIF 4
#define HFT_REASON_INVALID_QTY 5
#define HFT_REASON_INVALID_PRICE 6
#define HFT_REASON_INVALID_ORDER_ID 7
#define HFT_REASON_INVALID_COMBINATION 8 /* e.g. post-only IOC, iceberg market, GTC market */
#define HFT_REASON_INVALID_STP_MODE 9
#define HFT_REASON_UNKNOWN_SYMBOL 10
#define HFT_REASON_DUPLICATE_ORDER_ID 11
#define HFT_REASON_UNKNOWN_ORDER 12
#define HFT_REASON_ACCOUNT_MISMATCH 13 /* cancel/replace from an account that does not own the order */
#define HFT_REASON_BOOK_FULL 14        /* order pool or price-level array exhausted */
#define HFT_REASON_POST_ONLY_WOULD_TAKE 15
#define HFT_REASON_NO_LIQUIDITY 16     /* market order with no opposite price to anchor its band */
#define HFT_REASON_NOT_REPLACEABLE 17  /* no longer used: pending stops can be replaced (kept so codes stay stable) */
#define HFT_REASON_USER_CANCEL 20
#define HFT_REASON_CANCEL_ALL 21
#define HFT_REASON_SELF_TRADE 22
#define HFT_REASON_UNFILLED 23         /* IOC / market remainder */
#define HFT_REASON_FOK_UNFILLABLE 24
#define HFT_REASON_REPRICED 25         /* ACK/REPLACED of a post-only-slide order moved off its price */

/* One instruction to the engine (64 bytes). Fields a given action does not use
 * are ignored; zero them. */
typedef struct hft_order_command {
    uint64_t order_id;    /* caller-chosen, non-zero, unique among the engine's live orders */
    uint64_t account_id;  /* owner; 0 = anonymous (never self-trade-checked) */
    int64_t price;        /* limit price in ticks (NEW limit/stop-limit, REPLACE) */
    int64_t qty;          /* NEW: order quantity; REPLACE: the new open quantity (lots) */
    int64_t stop_price;   /* stop orders: trigger price in ticks */
    int64_t display_qty;  /* iceberg: the shown quantity (0 = show everything) */
    uint32_t symbol_id;   /* which book; HFT_ALL_SYMBOLS for a cancel-all over all books */
    int32_t priority;     /* used only by the optional per-client ordering in Python; the matcher ignores it */
    uint8_t action;       /* HFT_ACTION_* */
    uint8_t side;         /* HFT_SIDE_* */
    uint8_t order_type;   /* HFT_TYPE_* */
    uint8_t tif;          /* HFT_TIF_* */
    uint8_t flags;        /* HFT_FLAG_* */
    uint8_t stp_mode;     /* HFT_STP_* */
    uint8_t reserved[2];
} hft_order_command;

/* One outcome (80 bytes). A fill is reported once, from the taker's side, with
 * the maker's id and account so the caller can notify both parties. */
typedef struct hft_match_event {
    uint64_t order_id;         /* the order this is about; the taker for fills */
    uint64_t account_id;       /* its account */
    uint64_t maker_order_id;   /* fills: the resting order; otherwise 0 */
    uint64_t maker_account_id; /* fills: the resting order's account */
    int64_t price;             /* fills: trade price; otherwise the order's price (see hft_engine.h) */
    int64_t qty;               /* fills: traded; ACK: accepted; CANCELED/EXPIRED: removed; REPLACED: new open qty */
    int64_t leaves_qty;        /* order_id's open quantity (shown + hidden) after this event */
    int64_t maker_leaves_qty;  /* fills: the maker's open quantity after this fill */
    uint32_t symbol_id;
    uint32_t command_index;    /* position, in the array passed to this call, of the command that caused it */
    uint8_t type;              /* HFT_EVENT_* */
    uint8_t side;              /* order_id's side */
    uint16_t reason;           /* HFT_REASON_* */
    uint32_t reserved;
} hft_match_event;

/* One price level as the depth query reports it (shown quantity only). */
typedef struct hft_depth_level {
    int64_t price;
    int64_t qty;
    uint32_t order_count;
    uint32_t reserved;
} hft_depth_level;

/* A live order (resting or waiting for its stop trigger), as queries report it. */
typedef struct hft_order_info {
    uint64_t order_id;
    uint64_t account_id;
    int64_t price;       /* limit price (stop-market: 0) */
    int64_t stop_price;  /* stop orders; otherwise 0 */
    int64_t visible_qty; /* shown at the level (pending stops: 0) */
    int64_t hidden_qty;  /* iceberg reserve, or a pending stop's whole quantity */
    int64_t display_qty;
    uint32_t symbol_id;
    uint8_t side;
    uint8_t order_type;
    uint8_t tif;
    uint8_t flags;
    uint8_t stp_mode;
    uint8_t is_pending_stop;
    uint8_t reserved[6];
} hft_order_info;

/* Best prices, their shown quantities, and the last trade (which drives stops). */
typedef struct hft_top_of_book {
    int64_t bid_price;
    int64_t bid_qty; /* 0 when there is no bid */
    int64_t ask_price;
    int64_t ask_qty; /* 0 when there is no ask */
    int64_t last_trade_price;
    uint8_t has_bid;
    uint8_t has_ask;
    uint8_t has_last_trade;
    uint8_t reserved[5];
} hft_top_of_book;

#endif /* HFT_BOOK_H */
