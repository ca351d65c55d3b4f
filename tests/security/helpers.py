"""What a hostile client of the suite needs: credentials of every kind, and a refusal checker."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import grpc

from hftgate.security import API_KEY_METADATA, SERVICE_TOKEN_METADATA, SuiteSecret
from hftgate.v1 import common_pb2, execution_pb2

Metadata = tuple[tuple[str, str], ...]

#: Text that would mean a status leaked Python internals.
INTERNALS = ("Traceback", "<class", "Exception", "Error(", 'File "', "google.protobuf", "site-packages")
#: A suite secret that is not the suite's: what another deployment (or an attacker) holds.
OTHER_SUITE = SuiteSecret(b"another-suite-entirely-" + b"0123456789abcdef" * 3, "another suite")
DEMO_ACCOUNTS = ("alice", "bob", "carol", "dave")


def demo_key(account: str) -> str:
    """The published API key of a demo account (dev profile)."""
    return f"hftgate-demo-{account}"


def token(secret: SuiteSecret, principal: str) -> Metadata:
    return ((SERVICE_TOKEN_METADATA, secret.token_for(principal)),)


def api_key(key: str) -> Metadata:
    return ((API_KEY_METADATA, key),)


def forged_tokens(secret: SuiteSecret) -> dict[str, Metadata]:
    """Service tokens that must prove nothing, by what is wrong with each."""
    real = secret.token_for("admin")
    principal, _, mac = real.partition(".")
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    return {
        "made-up mac": ((SERVICE_TOKEN_METADATA, "admin." + "ab" * 32),),
        "one digit off": ((SERVICE_TOKEN_METADATA, f"{principal}.{flipped}"),),
        "another suite's admin": token(OTHER_SUITE, "admin"),
        "execution's mac for admin": (
            (SERVICE_TOKEN_METADATA, "admin." + secret.token_for("execution").partition(".")[2]),
        ),
        "no mac": ((SERVICE_TOKEN_METADATA, "admin"),),
        "empty": ((SERVICE_TOKEN_METADATA, ""),),
        "oversized": ((SERVICE_TOKEN_METADATA, "admin." + "a" * 4_000),),
    }


def refused(
    call: Callable[..., Any],
    request: Any,
    metadata: Sequence[tuple[str, str]],
    codes: Collection[grpc.StatusCode],
    *,
    timeout: float = 15.0,
) -> grpc.RpcError:
    """Make the call and return its error, asserting its code is one of ``codes`` and its message
    names the problem without Python internals."""
    try:
        reply = call(request, metadata=tuple(metadata), timeout=timeout)
    except grpc.RpcError as exc:
        error = exc
    else:
        raise AssertionError(f"expected one of {sorted(c.name for c in codes)}, got a reply: {reply!r}")
    assert isinstance(error, grpc.Call)
    code, details = error.code(), error.details() or ""
    assert code in codes, f"expected one of {sorted(c.name for c in codes)}, got {code.name}: {details}"
    assert details.strip(), f"{code.name} without a message"
    assert len(details) < 1_000, f"an over-long status message ({len(details)} characters)"
    assert not any(marker in details for marker in INTERNALS), details
    return error


def limit_order(
    client_order_id: str,
    *,
    side: int = common_pb2.SIDE_BUY,
    price_ticks: int = 4_000_000,
    quantity_lots: int = 100,
    symbol: str = "BTCUSDT",
    time_in_force: int = execution_pb2.TIME_IN_FORCE_GTC,
) -> execution_pb2.NewOrder:
    """A plain limit order (BTCUSDT: 40,000.00 USDT, 0.01 BTC by default)."""
    return execution_pb2.NewOrder(
        client_order_id=client_order_id,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        order_type=execution_pb2.ORDER_TYPE_LIMIT,
        time_in_force=time_in_force,  # type: ignore[arg-type]
        price_ticks=price_ticks,
        quantity_lots=quantity_lots,
    )
