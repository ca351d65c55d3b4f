"""``hftgate accounts | keys | instruments | audit``: the admin API (served by the cache service).

Each command calls the AdminService at ``--cache`` (default ``HFTGATE_CACHE_ADDRESS`` or
127.0.0.1:50053) as the ``admin`` principal: its token comes from the suite secret
(``HFTGATE_SUITE_SECRET``, or the file under the state directory that the services share),
and TLS from ``HFTGATE_TLS_DIR`` when set. Errors print the service's status and message and
exit with code 1. ``--json`` prints the reply as JSON instead of a table.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.security import ADMIN, SecurityError, load_suite_secret, suite_client_tls
from hftgate.v1 import admin_pb2, admin_pb2_grpc

DEFAULT_CACHE_ADDRESS = "127.0.0.1:50053"
TIMEOUT_S = 10.0

accounts_app = typer.Typer(
    help="Trading accounts: add, list, disable, enable, set-limits.", no_args_is_help=True
)
keys_app = typer.Typer(help="API keys: issue, list, revoke, rotate.", no_args_is_help=True)
instruments_app = typer.Typer(help="Instruments: add, halt, resume.", no_args_is_help=True)

out = Console()
err = Console(stderr=True)

CacheOption = Annotated[
    str,
    typer.Option(
        "--cache",
        envvar="HFTGATE_CACHE_ADDRESS",
        help="The cache service (host:port) that serves the admin API.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the reply as JSON.")]


@contextmanager
def _admin(cache: str) -> Iterator[Callable[[str, Message], Any]]:
    """A function calling one AdminService method with the admin credentials."""
    try:
        credentials = load_suite_secret().service_credentials(ADMIN, suite_client_tls(ADMIN))
    except SecurityError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from None
    channel = credentials.open_sync_channel(cache, CHANNEL_OPTIONS)
    stub = admin_pb2_grpc.AdminServiceStub(channel)

    def call(method: str, request: Message) -> Any:
        try:
            return getattr(stub, method)(request, timeout=TIMEOUT_S, metadata=credentials.metadata)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            err.print(f"error: {code.name if code else 'UNKNOWN'}: {details}")
            raise typer.Exit(1) from None

    try:
        yield call
    finally:
        channel.close()


def _print_json(reply: Message) -> None:
    out.print_json(json_format.MessageToJson(reply, preserving_proto_field_name=True))


def _when(ns: int) -> str:
    if not ns:
        return "never"
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _accounts_table(accounts: list[admin_pb2.Account]) -> Table:
    table = Table("name", "id", "kill switch", "position limit (lots)", "max open", "orders/s", "burst")
    for a in accounts:
        table.add_row(
            a.name,
            str(a.account_id),
            "ON" if a.kill_switch else "off",
            str(a.position_limit_lots),
            str(a.max_open_orders),
            f"{a.rate_limit_orders_per_s:g}",
            str(a.rate_limit_burst),
        )
    return table


def _account_reply(reply: admin_pb2.AccountReply, as_json: bool) -> None:
    if as_json:
        _print_json(reply)
    else:
        out.print(_accounts_table([reply.account]))


def _limits(
    position_limit_lots: int | None,
    max_open_orders: int | None,
    rate_limit_orders_per_s: float | None,
    rate_limit_burst: int | None,
) -> dict[str, Any]:
    values = {
        "position_limit_lots": position_limit_lots,
        "max_open_orders": max_open_orders,
        "rate_limit_orders_per_s": rate_limit_orders_per_s,
        "rate_limit_burst": rate_limit_burst,
    }
    return {k: v for k, v in values.items() if v is not None}


PositionOption = Annotated[int | None, typer.Option(help="Position limit per instrument, in lots.")]
OpenOption = Annotated[int | None, typer.Option(help="Most open orders at once.")]
RateOption = Annotated[float | None, typer.Option(help="Sustained orders per second.")]
BurstOption = Annotated[int | None, typer.Option(help="Burst on top of the rate, in orders.")]


@accounts_app.command("add")
def accounts_add(
    name: Annotated[str, typer.Argument(help="The account's name (1-64 of A-Z a-z 0-9 _ . @ -).")],
    position_limit_lots: PositionOption = None,
    max_open_orders: OpenOption = None,
    rate_limit_orders_per_s: RateOption = None,
    rate_limit_burst: BurstOption = None,
    disabled: Annotated[bool, typer.Option(help="Create it with the kill switch on.")] = False,
    cache: CacheOption = DEFAULT_CACHE_ADDRESS,
    as_json: JsonOption = False,
) -> None:
    """Create an account (its id is the next unused one)."""
    limits = _limits(position_limit_lots, max_open_orders, rate_limit_orders_per_s, rate_limit_burst)
    with _admin(cache) as call:
        reply = call("AddAccount", admin_pb2.AddAccountRequest(name=name, kill_switch=disabled, **limits))
    _account_reply(reply, as_json)


@accounts_app.command("list")
def accounts_list(cache: CacheOption = DEFAULT_CACHE_ADDRESS, as_json: JsonOption = False) -> None:
    """List every account."""
    with _admin(cache) as call:
        reply = call("ListAccounts", admin_pb2.ListAccountsRequest())
    if as_json:
        _print_json(reply)
    else:
        out.print(_accounts_table(list(reply.accounts)))


@accounts_app.command("disable")
def accounts_disable(
    name: str, cache: CacheOption = DEFAULT_CACHE_ADDRESS, as_json: JsonOption = False
) -> None:
    """Turn the account's kill switch on: its new orders are refused."""
    with _admin(cache) as call:
        reply = call("SetKillSwitch", admin_pb2.SetKillSwitchRequest(name=name, kill_switch=True))
    _account_reply(reply, as_json)


@accounts_app.command("enable")
def accounts_enable(
    name: str, cache: CacheOption = DEFAULT_CACHE_ADDRESS, as_json: JsonOption = False
) -> None:
    """Turn the account's kill switch off."""
    with _admin(cache) as call:
        reply = call("SetKillSwitch", admin_pb2.SetKillSwitchRequest(name=name, kill_switch=False))
    _account_reply(reply, as_json)


@accounts_app.command("set-limits")
def accounts_set_limits(
    name: str,
    position_limit_lots: PositionOption = None,
    max_open_orders: OpenOption = None,
    rate_limit_orders_per_s: RateOption = None,
    rate_limit_burst: BurstOption = None,
    cache: CacheOption = DEFAULT_CACHE_ADDRESS,
    as_json: JsonOption = False,
) -> None:
    """Change some of an account's limits (the others stay)."""
    limits = _limits(position_limit_lots, max_open_orders, rate_limit_orders_per_s, rate_limit_burst)
    if not limits:
        err.print("error: give at least one limit to change (see --help)")
        raise typer.Exit(2)
    with _admin(cache) as call:
        reply = call("SetAccountLimits", admin_pb2.SetAccountLimitsRequest(name=name, **limits))
    _account_reply(reply, as_json)


def _keys_table(keys: list[admin_pb2.KeyInfo]) -> Table:
    table = Table("key id", "account", "created", "expires", "replaced by")
    for k in keys:
        table.add_row(k.key_id, k.account, _when(k.created_ns), _when(k.expires_ns), k.replaced_by or "-")
    return table


def _issued(reply: admin_pb2.IssueKeyReply, as_json: bool) -> None:
    if as_json:
        _print_json(reply)
        return
    out.print(_keys_table([reply.info] + ([reply.previous] if reply.HasField("previous") else [])))
    err.print("the new API key (shown only now; the service keeps only its hash):")
    print(reply.api_key)  # plain stdout, one line: easy to capture in a script


@keys_app.command("issue")
def keys_issue(
    account: str,
    ttl_ms: Annotated[int, typer.Option(help="Lifetime in ms; 0 = until revoked.")] = 0,
    cache: CacheOption = DEFAULT_CACHE_ADDRESS,
    as_json: JsonOption = False,
) -> None:
    """Issue a new API key for an account; prints it once."""
    with _admin(cache) as call:
        reply = call("IssueKey", admin_pb2.IssueKeyRequest(account=account, ttl_ms=ttl_ms))
    _issued(reply, as_json)


@keys_app.command("list")
def keys_list(account: str, cache: CacheOption = DEFAULT_CACHE_ADDRESS, as_json: JsonOption = False) -> None:
    """List an account's keys (ids and dates; never the keys)."""
    with _admin(cache) as call:
        reply = call("ListKeys", admin_pb2.ListKeysRequest(account=account))
    if as_json:
        _print_json(reply)
    else:
        out.print(_keys_table(list(reply.keys)))


@keys_app.command("revoke")
def keys_revoke(key_id: str, cache: CacheOption = DEFAULT_CACHE_ADDRESS, as_json: JsonOption = False) -> None:
    """Revoke a key at once."""
    with _admin(cache) as call:
        reply = call("RevokeKey", admin_pb2.RevokeKeyRequest(key_id=key_id))
    if as_json:
        _print_json(reply)
    else:
        out.print(f"revoked key {reply.info.key_id} of account {reply.info.account}")


@keys_app.command("rotate")
def keys_rotate(
    key_id: str,
    overlap_ms: Annotated[
        int, typer.Option(help="How long the old key keeps working, ms; 0 = the service's default.")
    ] = 0,
    cache: CacheOption = DEFAULT_CACHE_ADDRESS,
    as_json: JsonOption = False,
) -> None:
    """Issue a successor key; the old one works only for the overlap window."""
    with _admin(cache) as call:
        reply = call("RotateKey", admin_pb2.RotateKeyRequest(key_id=key_id, overlap_ms=overlap_ms))
    _issued(reply, as_json)


def _instrument_reply(reply: admin_pb2.InstrumentReply, as_json: bool) -> None:
    if as_json:
        _print_json(reply)
        return
    i = reply.instrument
    table = Table("symbol", "tick", "lot", "max order (lots)", "band (ticks)", "trading")
    table.add_row(
        i.symbol,
        i.tick_size,
        i.lot_size,
        str(i.max_order_lots),
        str(i.price_band_ticks),
        "yes" if i.trading_enabled else "HALTED",
    )
    out.print(table)


@instruments_app.command("add")
def instruments_add(
    symbol: str,
    tick_size: Annotated[str, typer.Option(help="Price of one tick (decimal).")] = "0.01",
    lot_size: Annotated[str, typer.Option(help="Quantity of one lot (decimal).")] = "0.0001",
    base_asset: Annotated[str, typer.Option(help="Base asset, e.g. BTC.")] = "",
    quote_asset: Annotated[str, typer.Option(help="Quote asset, e.g. USDT.")] = "",
    max_order_lots: Annotated[int, typer.Option(help="Largest order in lots; 0 = default.")] = 0,
    max_notional: Annotated[int, typer.Option(help="Largest ticks x lots of one order; 0 = none.")] = 0,
    price_band_ticks: Annotated[int, typer.Option(help="Band half-width in ticks; 0 = none.")] = 0,
    reference_price_ticks: Annotated[int, typer.Option(help="Centre of the band in ticks.")] = 0,
    cache: CacheOption = DEFAULT_CACHE_ADDRESS,
    as_json: JsonOption = False,
) -> None:
    """Create an instrument (it trades at once)."""
    definition = admin_pb2.InstrumentDefinition(
        symbol=symbol,
        tick_size=tick_size,
        lot_size=lot_size,
        base_asset=base_asset,
        quote_asset=quote_asset,
        max_order_lots=max_order_lots,
        max_notional=max_notional,
        price_band_ticks=price_band_ticks,
        reference_price_ticks=reference_price_ticks,
    )
    with _admin(cache) as call:
        reply = call("AddInstrument", admin_pb2.AddInstrumentRequest(instrument=definition))
    _instrument_reply(reply, as_json)


@instruments_app.command("halt")
def instruments_halt(
    symbol: str, cache: CacheOption = DEFAULT_CACHE_ADDRESS, as_json: JsonOption = False
) -> None:
    """Halt trading in an instrument."""
    with _admin(cache) as call:
        reply = call(
            "SetTradingEnabled", admin_pb2.SetTradingEnabledRequest(symbol=symbol, trading_enabled=False)
        )
    _instrument_reply(reply, as_json)


@instruments_app.command("resume")
def instruments_resume(
    symbol: str, cache: CacheOption = DEFAULT_CACHE_ADDRESS, as_json: JsonOption = False
) -> None:
    """Resume trading in a halted instrument."""
    with _admin(cache) as call:
        reply = call(
            "SetTradingEnabled", admin_pb2.SetTradingEnabledRequest(symbol=symbol, trading_enabled=True)
        )
    _instrument_reply(reply, as_json)


def audit_command(
    limit: Annotated[int, typer.Option(help="How many rows, newest first (1-1000).")] = 50,
    target: Annotated[str, typer.Option(help="Only rows about this target, e.g. account:alice.")] = "",
    cache: CacheOption = DEFAULT_CACHE_ADDRESS,
    as_json: JsonOption = False,
) -> None:
    """The admin audit log: who changed what, when."""
    with _admin(cache) as call:
        reply = call("ListAudit", admin_pb2.ListAuditRequest(limit=limit, target=target))
    if as_json:
        _print_json(reply)
        return
    table = Table("id", "when", "actor", "action", "target", "detail")
    for row in reply.rows:
        table.add_row(str(row.id), _when(row.at_ns), row.actor, row.action, row.target, row.detail_json)
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add the admin commands to the ``hftgate`` command line."""
    app.add_typer(accounts_app, name="accounts")
    app.add_typer(keys_app, name="keys")
    app.add_typer(instruments_app, name="instruments")
    app.command("audit")(audit_command)
