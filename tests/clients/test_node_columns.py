"""SubmitOrderColumns from a second language (issue #17): Node's @grpc/grpc-js, with the protos
loaded at run time by @grpc/proto-loader, builds OrderColumns from plain arrays and reads the
AckColumns back. The npm packages are installed under build/node-client on first use."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hftgate.v1 import execution_pb2 as api
from tests.services.execution.conftest import execution_config, key, start_harness

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "build" / "node-client"
PACKAGES = ("@grpc/grpc-js@1", "@grpc/proto-loader@0")


def _node_modules() -> Path:
    modules = NODE_DIR / "node_modules"
    if not (modules / "@grpc" / "grpc-js").exists() or not (modules / "@grpc" / "proto-loader").exists():
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--silent", *PACKAGES],
            check=True,
            timeout=300,
            capture_output=True,
        )
    return modules


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="needs node and npm")
async def test_a_node_client_sends_columns_and_reads_the_acks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.execution import codec

    modules = _node_modules()
    read = codec.read_order_columns
    taken: list[bool] = []  # whether the C column reader took each request's bytes

    def recording(*args: object) -> object:
        inputs = read(*args)  # type: ignore[arg-type]
        taken.append(inputs is not None)
        return inputs

    monkeypatch.setattr(codec, "read_order_columns", recording)
    h = await start_harness(execution_config(tmp_path))
    try:
        # (Not subprocess.run: the server answers on this test's event loop.)
        node = await asyncio.create_subprocess_exec(
            "node",
            str(ROOT / "tests" / "clients" / "node" / "submit_columns.js"),
            f"127.0.0.1:{h.running.port}",
            "hftgate-demo-alice",
            str(ROOT / "protos"),
            env={**os.environ, "NODE_PATH": str(modules)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(node.communicate(), 60)
        assert node.returncode == 0, err.decode()
        acks = json.loads(out)
        assert acks["status"] == [api.ORDER_STATUS_NEW] * 3 + [api.ORDER_STATUS_REJECTED]
        assert acks["reason_text"] == ["Cannot submit order 'js-4': unknown symbol 'NOPE'"]
        assert acks["durable"] is True
        assert taken == [True]  # what protobufjs writes is what the C fast path reads
        # The orders are there as the Node client built them.
        for order_id, client_id, lots in zip(
            acks["order_id"][:3], ("js-1", "js-2", "js-3"), (1, 2, 3), strict=True
        ):
            got = await h.stub.GetOrder(api.GetOrderRequest(order_id=int(order_id)), metadata=key("alice"))
            assert (got.order.request.client_order_id, got.order.request.quantity_lots) == (client_id, lots)
    finally:
        await h.close()
