"""The execution service's TuningService: the journal's group-commit window, changed live by the
control plane (scaler, admin) only, within its bounds; the starting value from the config."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from hftgate import security
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import scaler_pb2, scaler_pb2_grpc
from tests.services.execution.conftest import Harness, execution_config, key, start_harness

SETTING = "journal_group_commit_window_us"


def token(principal: str) -> tuple[tuple[str, str], ...]:
    return security.load_suite_secret().service_credentials(principal).metadata


async def test_the_scaler_changes_the_commit_window_live_and_orders_still_commit(tmp_path: Path) -> None:
    h: Harness = await start_harness(execution_config(tmp_path, journal_commit_window_us=50))
    try:
        stub = scaler_pb2_grpc.TuningServiceStub(h.channel)
        got = await stub.GetTunable(scaler_pb2.GetTunableRequest(name=SETTING), metadata=token("scaler"))
        assert (got.tunable.value, got.tunable.min_value, got.tunable.max_value) == (50, 0, 10_000)
        changed = await stub.SetTunable(
            scaler_pb2.SetTunableRequest(name=SETTING, value=400), metadata=token("admin")
        )
        assert changed.tunable.value == 400 == h.core.journal.commit_window_us
        order = api.NewOrder(
            client_order_id="t1",
            symbol="BTCUSDT",
            side=1,  # type: ignore[arg-type]
            order_type=api.ORDER_TYPE_LIMIT,
            time_in_force=api.TIME_IN_FORCE_GTC,
            price_ticks=4_000_000,
            quantity_lots=1,
        )
        ack = (await h.stub.SubmitOrder(api.SubmitOrderRequest(order=order), metadata=key("alice"))).ack
        assert ack.status == api.ORDER_STATUS_NEW and ack.durable
        for metadata, value, code in (
            (key("alice"), 100.0, grpc.StatusCode.PERMISSION_DENIED),
            (token("gateway"), 100.0, grpc.StatusCode.PERMISSION_DENIED),
            (token("scaler"), 10_001.0, grpc.StatusCode.INVALID_ARGUMENT),
            (token("scaler"), -1.0, grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SetTunable(
                    scaler_pb2.SetTunableRequest(name=SETTING, value=value), metadata=metadata
                )
            assert refused.value.code() == code
        assert h.core.journal.commit_window_us == 400
    finally:
        await h.close()


def test_a_commit_window_out_of_range_is_refused_at_start() -> None:
    from services.execution.config import load_config

    with pytest.raises(
        ValueError, match=r"JOURNAL_COMMIT_WINDOW_US must be 0\.\.10000 microseconds, not 20000"
    ):
        load_config({"HFTGATE_EXECUTION_JOURNAL_COMMIT_WINDOW_US": "20000"})


def test_a_writer_cpu_keeper_window_out_of_range_is_refused_at_start() -> None:
    from services.execution.config import load_config

    with pytest.raises(ValueError, match=r"JOURNAL_KEEP_CPU_US must be 0\.\.100000 microseconds, not 100001"):
        load_config({"HFTGATE_EXECUTION_JOURNAL_KEEP_CPU_US": "100001"})
    assert load_config({"HFTGATE_EXECUTION_JOURNAL_KEEP_CPU_US": "0"}).journal_keep_cpu_us == 0
    assert load_config({}).journal_keep_cpu_us == 2000
