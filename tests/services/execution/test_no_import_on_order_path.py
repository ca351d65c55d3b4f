"""Nothing is imported on the order path once a shard serves.

A module imported lazily by a library the first time some call runs is paid by whichever order
runs it first: numpy's ``np.unique`` imported ``numpy.ma`` (~10 ms here) inside the first
SubmitOrders a shard took, which after a symbol move was the batch of every order that had
waited for the move. The service imports such modules at start-up; this test runs each kind of
order call once in a fresh interpreter (the test process has imported everything already) and
checks that none of them imported anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

_PROBE = textwrap.dedent(
    """
    import asyncio, json, sys, tempfile
    from pathlib import Path
    from hftgate.v1 import common_pb2 as common
    from hftgate.v1 import execution_pb2 as api
    from tests.services.execution.conftest import execution_config, key, start_harness

    def order(cid, side, price, qty=5, tif=api.TIME_IN_FORCE_GTC, kind=api.ORDER_TYPE_LIMIT):
        return api.NewOrder(client_order_id=cid, symbol="BTCUSDT", side=side, order_type=kind,
                            time_in_force=tif, price_ticks=price, quantity_lots=qty)

    async def main():
        h = await start_harness(execution_config(Path(tempfile.mkdtemp())))
        before = set(sys.modules)
        buy, sell, ioc = common.SIDE_BUY, common.SIDE_SELL, api.TIME_IN_FORCE_IOC
        one = await h.stub.SubmitOrder(
            api.SubmitOrderRequest(order=order("s1", buy, 4_990_000)), metadata=key("alice"))
        await h.stub.SubmitOrders(api.SubmitOrdersRequest(
            orders=[order(f"r{i}", sell, 5_010_000 + i) for i in range(20)]), metadata=key("bob"))
        takers = [order(f"x{i}", buy, 5_020_000, 1, ioc) for i in range(20)]
        takers += [order(f"m{i}", buy, 0, 1, ioc, api.ORDER_TYPE_MARKET) for i in range(3)]
        await h.stub.SubmitOrders(api.SubmitOrdersRequest(orders=takers), metadata=key("alice"))
        await h.stub.ReplaceOrder(api.ReplaceOrderRequest(
            order_id=one.ack.order_id, price_ticks=4_980_000, quantity_lots=4), metadata=key("alice"))
        await h.stub.GetOrder(api.GetOrderRequest(order_id=one.ack.order_id), metadata=key("alice"))
        await h.stub.CancelOrder(api.CancelOrderRequest(order_id=one.ack.order_id), metadata=key("alice"))
        print(json.dumps(sorted(set(sys.modules) - before)))
        await h.close()

    asyncio.run(main())
    """
)


def test_order_calls_import_nothing_once_the_shard_serves(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3]
    environment = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == []
