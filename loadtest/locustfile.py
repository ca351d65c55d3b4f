"""Locust load test of the execution API over gRPC (closed loop: each user waits for its answer).

Each simulated user is one account (API keys round-robin over the users) on its own gRPC
channel, and runs a mix of tasks: single orders (SubmitOrder), small batches (SubmitOrders),
replaces and cancels of its own resting orders, and GetOrder. With
``HFTGATE_LOADTEST_MARKETDATA=1`` (for a target that serves market data too: the gateway)
market data users join them, reading snapshots (GetSnapshot, which the gateway balances over
the market data replicas). Every call is reported to locust as a request named after the RPC, so
locust's statistics, CSV and web UI work as for HTTP.

Locust rounds sub-100 ms timings to whole milliseconds in its reports, and one locust process
tops out near 3,600 gRPC calls/s on this project's 2-core machine: use it for throughput and
error behaviour, not for sub-millisecond latency claims (``hftgate bench e2e`` measures those).
CI runs a smoke run of a few seconds through the gateway that fails on any failed call
(``tests/loadtest/test_locust_smoke.py``).

Closed-loop tools under-report latency when the service stalls (a waiting user sends nothing);
for latency percentiles under a fixed arrival rate use ``loadtest/open_loop.py``. Locust is for
finding the throughput knee and watching errors as users ramp up.

Bounded in time and count even when locust is given no ``-t``: the run stops after
``HFTGATE_LOADTEST_MAX_SECONDS`` (default 60) or ``HFTGATE_LOADTEST_MAX_CALLS`` calls (default
200,000), whichever first. Only loopback targets are accepted.

Run against a service started with ``python -m services.execution`` (demo accounts; keys are
``<demo_key_secret>-<name>``)::

    HFTGATE_LOADTEST_API_KEYS=hftgate-demo-alice,hftgate-demo-bob \\
        .venv/bin/locust -f loadtest/locustfile.py --headless -u 8 -r 4 -t 30s --host 127.0.0.1:50051

Through the gateway of ``hftgate up`` (which checks the key and routes each order to its shard),
``--host gateway`` (or ``127.0.0.1:50050``); ``--host execution`` is shard 0 directly
(``loadtest.open_loop.TARGET_ALIASES``)::

    HFTGATE_LOADTEST_API_KEYS=hftgate-demo-alice,hftgate-demo-bob \\
        .venv/bin/locust -f loadtest/locustfile.py --headless -u 8 -r 4 -t 30s --host gateway
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent

# gRPC's C core must cooperate with gevent (which locust has already patched in by now);
# this has to run before any gRPC object exists.
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser

from hftgate.bench.execution import OrderFlow, require_loopback, run_prefix
from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.v1 import execution_pb2, execution_pb2_grpc, marketdata_pb2, marketdata_pb2_grpc
from loadtest.open_loop import resolve_target

grpc_gevent.init_gevent()

MAX_SECONDS = float(os.environ.get("HFTGATE_LOADTEST_MAX_SECONDS", "60"))
MAX_CALLS = int(os.environ.get("HFTGATE_LOADTEST_MAX_CALLS", "200000"))
API_KEYS = [k for k in os.environ.get("HFTGATE_LOADTEST_API_KEYS", "hftgate-demo-alice").split(",") if k]
BATCH_ORDERS = int(os.environ.get("HFTGATE_LOADTEST_BATCH_ORDERS", "50"))
MARKETDATA = os.environ.get("HFTGATE_LOADTEST_MARKETDATA", "").strip().lower() in ("1", "true", "yes", "on")
CALL_DEADLINE_S = 5.0

_key_cycle = itertools.cycle(API_KEYS)
_prefix = run_prefix()
_user_numbers = itertools.count()
_calls = itertools.count(1)


_stopping = False


def _stop_the_run(environment: Environment) -> None:
    """Stop every user and end the run, from a greenlet of its own (a user cannot stop the runner
    from inside its own task: the runner waits for that very task to finish)."""
    global _stopping
    if not _stopping and environment.runner is not None:
        _stopping = True
        gevent.spawn(environment.runner.quit)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    if environment.host:
        require_loopback(resolve_target(environment.host))
    gevent.spawn_later(MAX_SECONDS, _stop_the_run, environment)


class _GrpcUser(User):
    """One account on its own channel to the target; every call becomes a locust request event."""

    abstract = True
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        target = require_loopback(resolve_target(self.host or "127.0.0.1:50051"))
        self.metadata = (("x-api-key", next(_key_cycle)),)
        self.number = next(_user_numbers)
        self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)

    def on_stop(self) -> None:
        self.channel.close()

    def _call(self, name: str, method: Callable[..., Any], request: Any) -> Any:
        """Call ``method``, report it to locust, and stop the run at its bounds."""
        if next(_calls) > MAX_CALLS:
            _stop_the_run(self.environment)
            raise StopUser()
        start = time.perf_counter()
        response, error = None, None
        try:
            response = method(request, metadata=self.metadata, timeout=CALL_DEADLINE_S)
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=response.ByteSize() if response is not None else 0,
            exception=error,
            context={},
        )
        return response


class ExecutionUser(_GrpcUser):
    """An account trading: orders, batches, replaces, cancels and reads of its own orders."""

    weight = 4

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.flow = OrderFlow(f"{_prefix}u{self.number}-", seed=self.number)
        self.stub = execution_pb2_grpc.ExecutionServiceStub(self.channel)
        self.resting: deque[int] = deque(maxlen=1_000)  # ids of our orders last seen resting

    def _remember(self, ack: Any) -> None:
        if ack.status in (execution_pb2.ORDER_STATUS_NEW, execution_pb2.ORDER_STATUS_PARTIALLY_FILLED):
            self.resting.append(ack.order_id)

    @task(10)
    def submit_order(self) -> None:
        request = execution_pb2.SubmitOrderRequest(order=self.flow.next_order())
        response = self._call("SubmitOrder", self.stub.SubmitOrder, request)
        if response is not None:
            self._remember(response.ack)

    @task(2)
    def submit_orders(self) -> None:
        request = execution_pb2.SubmitOrdersRequest(
            orders=[self.flow.next_order() for _ in range(BATCH_ORDERS)]
        )
        response = self._call("SubmitOrders", self.stub.SubmitOrders, request)
        if response is not None:
            for ack in response.acks:
                self._remember(ack)

    @task(3)
    def cancel_order(self) -> None:
        if not self.resting:
            return
        request = execution_pb2.CancelOrderRequest(order_id=self.resting.popleft())
        self._call("CancelOrder", self.stub.CancelOrder, request)

    @task(2)
    def replace_order(self) -> None:
        if not self.resting:
            return
        # One lot more: above any filled quantity, so the replace is accepted while the order rests
        # (a fill racing it answers a rejection, which is an answer, not a failure).
        order_id = self.resting[0]
        current = self._call("GetOrder", self.stub.GetOrder, execution_pb2.GetOrderRequest(order_id=order_id))
        if current is None or current.order.leaves_quantity_lots <= 0:
            return
        quantity = current.order.request.quantity_lots + 1
        request = execution_pb2.ReplaceOrderRequest(order_id=order_id, quantity_lots=quantity)
        self._call("ReplaceOrder", self.stub.ReplaceOrder, request)

    @task(1)
    def get_order(self) -> None:
        if not self.resting:
            return
        request = execution_pb2.GetOrderRequest(order_id=self.resting[-1])
        self._call("GetOrder", self.stub.GetOrder, request)


class MarketDataUser(_GrpcUser):
    """An account reading market data snapshots (through the gateway, balanced over the replicas)."""

    abstract = not MARKETDATA
    weight = 1

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.stub = marketdata_pb2_grpc.MarketDataServiceStub(self.channel)

    @task
    def get_snapshot(self) -> None:
        self._call("GetSnapshot", self.stub.GetSnapshot, marketdata_pb2.GetSnapshotRequest(depth_levels=5))
