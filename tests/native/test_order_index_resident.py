"""The engine's order-id index is resident from the engine's creation, so the stream of order ids
does not grow the process's memory (it used to fault the table's pages in one by one, ~16 bytes an
order over the first 2 x max_orders ids: the execution service's ``rss_bytes_per_order``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Runs in a fresh interpreter, so the figures are this engine's alone.
_PROBE = textwrap.dedent(
    """
    import json
    import numpy as np
    from hftgate.matching import EngineConfig, MatchingEngine, Side, TimeInForce
    from hftgate.matching.types import Action, OrderType, new_commands

    def rss():
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    max_orders = 1 << 16  # an index of 2^17 slots of 16 bytes: 2 MiB
    chunk = 2048
    commands = new_commands(2 * chunk)
    commands["order_type"] = OrderType.LIMIT
    commands["side"] = Side.BUY
    commands["tif"] = TimeInForce.GTC
    commands["price"] = 100
    commands["qty"] = 1
    commands["action"][0::2] = Action.NEW
    commands["action"][1::2] = Action.CANCEL
    before = rss()
    engine = MatchingEngine(EngineConfig(max_symbols=1, max_orders=max_orders))
    created = rss()
    rejected = 0
    warm = 0
    # Four times the index's slots, one live order at a time: every slot's page is reached. The
    # first chunk warms the engine's and numpy's own buffers up.
    for first in range(1, 8 * max_orders, chunk):
        if first == 1 + chunk:
            warm = rss()
        ids = np.arange(first, first + chunk, dtype=np.uint64)
        commands["order_id"][0::2] = ids
        commands["order_id"][1::2] = ids
        events = engine.process(commands)
        rejected += int(np.count_nonzero(events["type"] == %d))
    after = rss()
    print(json.dumps({"created": created - before, "flow": after - warm, "rejected": rejected}))
    """
)


def test_order_index_is_resident_at_creation_and_the_order_stream_does_not_grow_it() -> None:
    from hftgate.matching import EventType

    code = _PROBE % int(EventType.REJECT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["rejected"] == 0  # every NEW and CANCEL was applied: the ids did walk the index
    index_bytes = (1 << 17) * 16
    assert figures["created"] >= index_bytes * 0.9, figures
    # 512k orders through the engine: under a byte an order (a lazily zeroed index: 2 MiB).
    assert figures["flow"] < index_bytes // 4, figures
