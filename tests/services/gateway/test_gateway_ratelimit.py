"""Per-account order rate limits at the gateway: the token buckets (an injected clock), and the
gateway in front of two real shards answering RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo,
letting cancels through, and pacing a stream instead of refusing it."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from services.gateway.config import load_config
from services.gateway.metrics import GatewayCollector
from services.gateway.ratelimit import TokenBuckets
from services.gateway.server import GatewayServer
from services.gateway.server import start as start_gateway
from tests.services.gateway.conftest import ALICE, BOB, Suite, gateway_config, new_order


class _Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_a_bucket_spends_its_burst_then_says_when_the_next_orders_can_go() -> None:
    clock = _Clock()
    buckets = TokenBuckets(orders_per_s=10, burst_orders=5, max_accounts=10, clock=clock)
    assert buckets.take("alice", 3) == 0.0
    assert buckets.take("alice", 2) == 0.0
    assert buckets.take("alice", 1) == pytest.approx(0.1), "one token every 100 ms"
    assert buckets.take("alice", 4) == pytest.approx(0.4)
    assert buckets.take("bob", 5) == 0.0, "each account has its own bucket"
    clock.now_s += 0.25
    assert buckets.take("alice", 2) == 0.0  # 2.5 tokens refilled
    assert buckets.tokens("alice") == pytest.approx(0.5)
    clock.now_s += 60
    assert buckets.tokens("alice") == 5, "never more than the burst"
    assert math.isinf(buckets.take("alice", 6)), "more than the burst can never be served whole"
    assert buckets.take("alice", 0) == 0.0


def test_a_stream_may_spend_past_the_burst_and_then_waits_out_its_debt() -> None:
    clock = _Clock()
    buckets = TokenBuckets(orders_per_s=10, burst_orders=5, max_accounts=10, clock=clock)
    assert buckets.take("alice", 8, debt_ok=True) == 0.0
    assert buckets.tokens("alice") == pytest.approx(-3)
    assert buckets.take("alice", 1, debt_ok=True) == pytest.approx(0.4)
    clock.now_s += 0.4
    assert buckets.take("alice", 1, debt_ok=True) == 0.0


def test_the_bucket_table_is_bounded_least_recently_used_first_out() -> None:
    clock = _Clock()
    buckets = TokenBuckets(orders_per_s=1, burst_orders=2, max_accounts=2, clock=clock)
    buckets.take("a", 2)
    buckets.take("b", 2)
    assert buckets.tokens("a") == 0  # a is now the most recent
    buckets.take("c", 1)
    assert len(buckets) == 2
    assert buckets.tokens("a") == 0, "a was kept"
    assert buckets.tokens("b") == 2, "b was forgotten: it comes back full, as an idle bucket would be"


def test_the_rate_limit_config_is_checked() -> None:
    assert load_config({}).rate_limit_orders_per_s > 0
    assert load_config({"HFTGATE_GATEWAY_RATE_LIMIT_ORDERS_PER_S": "0"}).rate_limit_orders_per_s == 0
    with pytest.raises(ValueError, match="RATE_LIMIT_ORDERS_PER_S must be >= 0"):
        load_config({"HFTGATE_GATEWAY_RATE_LIMIT_ORDERS_PER_S": "-1"})
    with pytest.raises(ValueError, match="RATE_LIMIT_BURST_ORDERS must be at least 1"):
        load_config({"HFTGATE_GATEWAY_RATE_LIMIT_BURST_ORDERS": "0"})


# --- at the gateway ------------------------------------------------------------------------------


async def _limited_stub(suite: Suite, **limits: Any) -> tuple[GatewayServer, api_grpc.ExecutionServiceStub]:
    url = f"sqlite+aiosqlite:///{suite.tmp / 'shardmap.sqlite3'}"
    gateway = await start_gateway(gateway_config(suite.tmp, url, **limits))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")

    class _Stop:
        async def stop(self, grace: float) -> None:
            await channel.close(None)
            await gateway.stop(grace)

    suite.extra.append(_Stop())
    return gateway, api_grpc.ExecutionServiceStub(channel)


def _details(
    error: grpc.aio.AioRpcError,
) -> tuple[error_details_pb2.QuotaFailure, error_details_pb2.RetryInfo | None]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    quota, retry = error_details_pb2.QuotaFailure(), None
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            detail.Unpack(quota)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
    return quota, retry


async def test_orders_over_the_accounts_limit_are_refused_with_retry_info_and_cancels_still_go(
    suite: Suite,
) -> None:
    gateway, stub = await _limited_stub(suite, rate_limit_orders_per_s=0.1, rate_limit_burst_orders=3)
    batch = [new_order("r0", "BTCUSDT"), new_order("r1", "ETHUSDT")]
    acks = (await stub.SubmitOrders(api.SubmitOrdersRequest(orders=batch), metadata=ALICE)).acks
    one = await stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("r2", "ETHUSDT")), metadata=ALICE)
    assert one.ack.status == api.ORDER_STATUS_NEW
    with pytest.raises(grpc.aio.AioRpcError) as over:
        await stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("r3", "BTCUSDT")), metadata=ALICE)
    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over its gateway rate limit of 0.1 orders/s (burst 3)" in (over.value.details() or "")
    quota, retry = _details(over.value)
    assert quota.violations[0].subject == "account:alice"
    assert retry is not None
    delay_s = retry.retry_delay.ToNanoseconds() / 1e9
    assert 0 < delay_s <= 10.0, "one token comes back within 1 / 0.1 orders/s"
    assert suite.orders_on(0) + suite.orders_on(1) == 3, "the refused order never reached a shard"
    # A replace costs an order; a cancel is free, so an account can always take its risk off.
    with pytest.raises(grpc.aio.AioRpcError) as replace:
        await stub.ReplaceOrder(
            api.ReplaceOrderRequest(order_id=acks[0].order_id, quantity_lots=5), metadata=ALICE
        )
    assert replace.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    canceled = await stub.CancelOrder(api.CancelOrderRequest(order_id=acks[0].order_id), metadata=ALICE)
    assert canceled.ack.status == api.ORDER_STATUS_CANCELED
    # Another account has its own bucket.
    other = await stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("b0", "BTCUSDT")), metadata=BOB)
    assert other.ack.status == api.ORDER_STATUS_NEW
    # A batch larger than the burst can never go whole: no RetryInfo, and the message says to split it.
    big = [new_order(f"big{i}", "BTCUSDT") for i in range(4)]
    with pytest.raises(grpc.aio.AioRpcError) as too_big:
        await stub.SubmitOrders(api.SubmitOrdersRequest(orders=big), metadata=BOB)
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "split it into batches of at most 3" in (too_big.value.details() or "")
    assert _details(too_big.value)[1] is None
    # Prometheus sees the refusals and the bounded table.
    assert gateway.app is not None
    figures = {m.name: m.samples[0].value for m in GatewayCollector(gateway.app).collect() if m.samples}
    assert figures["hftgate_gateway_rate_limited_calls"] == 3
    assert figures["hftgate_gateway_rate_limit_accounts"] == 2


async def test_an_order_stream_over_the_limit_is_paced_not_refused(suite: Suite) -> None:
    _, stub = await _limited_stub(suite, rate_limit_orders_per_s=40, rate_limit_burst_orders=2)

    async def requests() -> AsyncIterator[api.OrderStreamRequest]:
        for i in range(3):
            yield api.OrderStreamRequest(
                inputs=[
                    api.OrderInput(new_order=new_order(f"ps{i}a", "BTCUSDT")),
                    api.OrderInput(new_order=new_order(f"ps{i}b", "ETHUSDT")),
                ]
            )

    acks = [
        a
        async for response in stub.OrderStream(requests(), metadata=ALICE, timeout=10)
        for a in response.acks
    ]
    assert [a.client_order_id for a in acks] == [f"ps{i}{x}" for i in range(3) for x in "ab"]
    assert all(a.status == api.ORDER_STATUS_NEW for a in acks)
    # The same orders as one unary batch are more than the burst: refused, never paced.
    batch = [new_order(f"pb{i}", "BTCUSDT") for i in range(6)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SubmitOrders(api.SubmitOrdersRequest(orders=batch), metadata=ALICE)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
