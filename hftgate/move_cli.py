"""``hftgate move SYMBOL --to SHARD``: an operator moves one symbol between execution shards.

The move is services/scaler/moves.py's durable state machine, run here with the ``admin``
principal's credentials against the suite's shard map store (``HFTGATE_SHARD_MAP_DATABASE_URL``,
else ``DATABASE_URL``, else the SQLite file under the state directory, as every process finds it).
A move interrupted anywhere (this command killed, a shard restarted) is finished by ``hftgate move
--resume``, or by the next mover that starts (the scaler resumes unfinished moves at start).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True)


async def _run(symbol: str | None, to_shard_id: int | None, resume: bool) -> list[dict[str, object]]:
    from hftgate import shardmap
    from hftgate.security import ADMIN, load_suite_secret, suite_client_tls
    from services.scaler.moves import SymbolMover

    store = shardmap.ShardMapStore(shardmap.default_url())
    await store.start()
    try:
        credentials = load_suite_secret().service_credentials(ADMIN, suite_client_tls(ADMIN))
        async with SymbolMover(store, credentials) as mover:
            if resume:
                moves = await mover.resume_all()
            else:
                assert symbol is not None and to_shard_id is not None
                moves = [await mover.move(symbol, to_shard_id)]
    finally:
        await store.close()
    return [
        {
            "move_id": m.move_id,
            "symbol": m.symbol,
            "from_shard_id": m.from_shard_id,
            "to_shard_id": m.to_shard_id,
            "step": m.step,
            "error": m.error,
        }
        for m in moves
    ]


def move_command(
    symbol: Annotated[str | None, typer.Argument(help="The symbol to move (e.g. ETHUSDT).")] = None,
    to: Annotated[int | None, typer.Option("--to", min=0, help="The shard id that will own it.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Finish every interrupted move instead of starting one.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a line per move.")] = False,
) -> None:
    """Move a symbol's book to another execution shard without losing an order (durable, resumable)."""
    from services.scaler.moves import MoveRefused

    if resume == (symbol is not None):
        raise typer.BadParameter("name a SYMBOL with --to, or --resume alone")
    if not resume and to is None:
        raise typer.BadParameter("--to SHARD is required with a symbol")
    try:
        moves = asyncio.run(_run(symbol, to, resume))
    except (MoveRefused, ValueError) as exc:
        err.print(f"move refused: {exc}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(moves, indent=2))
        return
    if not moves:
        err.print("no unfinished move")
    for m in moves:
        how = f" ({m['error']})" if m["error"] else ""
        typer.echo(f"{m['symbol']}: shard {m['from_shard_id']} -> {m['to_shard_id']}: {m['step']}{how}")
    if any(m["step"] != "done" for m in moves):
        raise typer.Exit(1)
