"""Suite-wide test set-up: one suite secret for every service a test starts, in process or not.

Services and the clients of tests derive their service tokens and API-key hashes from it
(hftgate.security), exactly as a deployment's processes share one. Tests of the secret's
own loading pass an explicit environment instead.
"""

from __future__ import annotations

import os
import secrets

os.environ.setdefault("HFTGATE_SUITE_SECRET", "test-suite-" + secrets.token_hex(24))

# Imported before any test runs. Otherwise hypothesis's pytest plugin imports it at the very end
# of a run that did not use it, and pytest then compiles its modules after the test's grpc.aio
# calls; after an aio call refused mid-stream that compile failed with CPython 3.11's
# "SystemError: AST constructor recursion depth mismatch" (seen running one replay test alone).
import hypothesis  # noqa: F401

# --- one running suite for the tests that need any -------------------------------------------
import pytest

SHARED_SUITE_FIXTURE = "two_shard_suite"


@pytest.fixture(scope="session")
def two_shard_suite(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The suite of tests/running_suite.py, started once for every test that asks for it."""
    from tests.running_suite import SUITE, start_suite, stop_suite, suite_specs

    if {s.name for s in suite_specs()} != set(SUITE):
        pytest.skip("the running suite needs cache, marketdata, execution, the gateway and the scaler")
    suite = start_suite(tmp_path_factory.mktemp("running-suite"))
    try:
        yield suite
    finally:
        stop_suite(suite)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that share the running suite run last and together (in their own order), so the
    suite starts once and stops at the end of the session instead of idling beside other tests."""
    shared = [item for item in items if SHARED_SUITE_FIXTURE in getattr(item, "fixturenames", ())]
    if shared:
        others = [item for item in items if SHARED_SUITE_FIXTURE not in getattr(item, "fixturenames", ())]
        items[:] = others + shared
