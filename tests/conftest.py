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
