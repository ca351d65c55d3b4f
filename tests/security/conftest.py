"""One real suite for the adversarial tests: cache, market data and execution as processes.

Started once per module through :func:`hftgate.supervisor.start_services`, exactly as
``hftgate up`` starts it: free ports, a state directory of its own, the ``dev`` profile (so the
demo accounts alice, bob, carol and dave exist with their published keys), and the suite
secret made by the supervisor under ``<state dir>/secrets/suite.secret`` (the session-wide
``HFTGATE_SUITE_SECRET`` of tests/conftest.py is removed from the suite's environment, so this
suite's secret is its own and the tests read it from its file, as an operator's CLI does).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.security import SuiteSecret, load_suite_secret
from hftgate.supervisor import ALL_SERVICES, RunningService, start_services, stop_services
from hftgate.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    cache_pb2,
    cache_pb2_grpc,
    execution_pb2_grpc,
    marketdata_pb2_grpc,
)
from tests.security.helpers import Metadata, token

SUITE_SERVICES = ("cache", "marketdata", "execution")
#: New (venue, symbol) pairs the "feed" publisher may create in this suite: small, so a flood
#: beyond it is cheap to send (the rule is the same at the default share of max_symbols).
FEED_SYMBOL_QUOTA = 48


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Suite:
    """The running suite and what its legitimate operator holds."""

    state_dir: Path
    #: The environment the services were started with (the secret's file, the profile).
    env: dict[str, str]
    secret: SuiteSecret
    secret_file: Path
    running: list[RunningService]
    addresses: dict[str, str]
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def channel(self, service: str) -> grpc.Channel:
        if service not in self.channels:
            self.channels[service] = grpc.insecure_channel(self.addresses[service], options=CHANNEL_OPTIONS)
        return self.channels[service]

    @property
    def cache(self) -> cache_pb2_grpc.CacheServiceStub:
        return cache_pb2_grpc.CacheServiceStub(self.channel("cache"))

    @property
    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel("cache"))

    @property
    def execution(self) -> execution_pb2_grpc.ExecutionServiceStub:
        return execution_pb2_grpc.ExecutionServiceStub(self.channel("execution"))

    @property
    def marketdata(self) -> marketdata_pb2_grpc.MarketDataServiceStub:
        return marketdata_pb2_grpc.MarketDataServiceStub(self.channel("marketdata"))

    def token(self, principal: str) -> Metadata:
        return token(self.secret, principal)

    @property
    def as_admin(self) -> Metadata:
        return self.token("admin")

    # --- the operator's view, to check that an attack changed nothing ---------------------
    def raw_row(self, key: str) -> bytes | None:
        """A row of the cache's raw keyspace, read as admin (None when absent)."""
        reply = self.cache.Get(cache_pb2.CacheGetRequest(key=key), metadata=self.as_admin, timeout=15)
        return reply.entry.value if reply.found else None

    def accounts(self) -> dict[str, Any]:
        reply = self.admin.ListAccounts(admin_pb2.ListAccountsRequest(), metadata=self.as_admin, timeout=15)
        return {a.name: a for a in reply.accounts}

    def audit(self, limit: int = 1_000) -> list[Any]:
        reply = self.admin.ListAudit(
            admin_pb2.ListAuditRequest(limit=limit), metadata=self.as_admin, timeout=15
        )
        return list(reply.rows)

    def cli_env(self, **extra: str) -> dict[str, str]:
        """What an operator's shell beside this suite has: its state dir and secret file."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HFTGATE_")}
        env.update(
            HFTGATE_STATE_DIR=str(self.state_dir),
            HFTGATE_SUITE_SECRET_FILE=str(self.secret_file),
            HFTGATE_PROFILE="dev",
        )
        env.update(extra)
        return env


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    state_dir = tmp_path_factory.mktemp("adversarial-suite")
    # Nothing of the test session's own configuration: only what `hftgate up` would set.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTGATE_")}
    env.update(
        HFTGATE_STATE_DIR=str(state_dir),
        HFTGATE_PROFILE="dev",
        HFTGATE_MARKETDATA_PUBLISHER_SYMBOL_QUOTAS=f"feed={FEED_SYMBOL_QUOTA}",
        # A shared 2-CPU test machine: no pinned or busy-polling threads.
        HFTGATE_EXECUTION_LOOP_CPUS="off",
        HFTGATE_EXECUTION_JOURNAL_WRITER_CPUS="off",
        HFTGATE_EXECUTION_JOURNAL_ACK_POLL_US="0",
    )
    specs = [s for s in ALL_SERVICES if s.name in SUITE_SERVICES]
    for spec in specs:
        env[spec.port_variable] = str(free_port())
    running = start_services(specs, env=env, startup_timeout_s=90)
    suite_env = running[0].env
    secret_file = Path(suite_env["HFTGATE_SUITE_SECRET_FILE"])
    secret = load_suite_secret({"HFTGATE_SUITE_SECRET_FILE": str(secret_file)})
    suite = Suite(
        state_dir=state_dir,
        env=suite_env,
        secret=secret,
        secret_file=secret_file,
        running=running,
        addresses={s.spec.name: s.address for s in running},
    )
    try:
        yield suite
    finally:
        for channel in suite.channels.values():
            channel.close()
        stop_services(running, grace_s=15)
    # Every attack left every service up: each stops gracefully (exit 0).
    assert [s.process.returncode for s in running] == [0] * len(running), [
        (s.spec.name, s.process.returncode) for s in running
    ]
