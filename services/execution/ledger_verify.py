"""``hftgate ledger verify``: walk the fill ledger's hash chain and report the first broken link.

Exit codes: 0 the chain holds, 1 a link is broken, 2 the ledger could not be read
(no such table, database unreachable).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import DBAPIError

from services.execution.ledger import (
    DEFAULT_TABLE_NAME,
    BrokenLink,
    count_entries,
    create_engine_for,
    default_database_url,
    ledger_table,
    table_exists,
    verify_chain,
)

EXIT_BROKEN = 1
EXIT_UNREADABLE = 2


class LedgerUnreadable(Exception):
    """The ledger table cannot be read at all."""


async def _verify(database_url: str, table_name: str, console: Console) -> tuple[int, BrokenLink | None]:
    engine = create_engine_for(database_url)
    try:
        sqlite_file = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
        if sqlite_file and sqlite_file != ":memory:" and not Path(sqlite_file).exists():
            # Checked first because connecting would create an empty database file.
            raise LedgerUnreadable(f"no SQLite ledger file at {sqlite_file}")
        if not await table_exists(engine, table_name):
            raise LedgerUnreadable(f"no ledger table {table_name!r} in {engine.url.render_as_string()}")
        table = ledger_table(table_name)
        total = await count_entries(engine, table)
        with Progress(
            TextColumn("verifying ledger"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("verify", total=total)
            broken = await verify_chain(
                engine, table, lambda checked: progress.update(task, completed=checked)
            )
        return total, broken
    finally:
        await engine.dispose()


def verify_command(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="HFTGATE_EXECUTION_LEDGER_DATABASE_URL",
            help="SQLAlchemy async URL of the ledger (default: the execution service's SQLite file).",
            show_default=False,
        ),
    ] = None,
    table: Annotated[str, typer.Option("--table", help="Ledger table name.")] = DEFAULT_TABLE_NAME,
) -> None:
    """Walk the fill ledger's hash chain and report the first broken link (exit code 1 when broken)."""
    console = Console(stderr=True)
    url = database_url or default_database_url()
    try:
        total, broken = asyncio.run(_verify(url, table, console))
    except LedgerUnreadable as exc:
        console.print(f"[red]cannot verify:[/red] {exc}")
        raise typer.Exit(EXIT_UNREADABLE) from None
    except (OSError, DBAPIError) as exc:
        console.print(f"[red]cannot verify:[/red] database unreachable: {exc}")
        raise typer.Exit(EXIT_UNREADABLE) from None
    if broken is not None:
        console.print(f"[red]ledger chain BROKEN[/red] at {broken}")
        raise typer.Exit(EXIT_BROKEN)
    console.print(f"[green]ledger chain intact[/green]: {total} transaction(s) in {table!r}")
