"""``hftgate ledger verify`` as a command: exit codes and the message naming the broken link."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from services.execution.ledger import Fill, Ledger
from services.execution.ledger_verify import EXIT_BROKEN, EXIT_UNREADABLE, verify_command

app = typer.Typer()
app.command()(verify_command)


async def _fill_ledger(url: str, fills: int, tamper_position: int | None = None) -> None:
    ledger = await Ledger.open(url, "ledger_transactions")
    try:
        for i in range(1, fills + 1):
            ledger.record(
                Fill("CLZ4", i, 7000 + i, 1, "alice", i, "bob", 1000 + i, 1_700_000_000_000_000_000)
            )
        await ledger.flush()
        if tamper_position is not None:
            table = ledger.table
            async with ledger.engine.begin() as conn:
                await conn.execute(
                    sa.update(table)
                    .where(table.c.position == tamper_position)
                    .values(seller_account="mallory")
                )
    finally:
        await ledger.close()


def test_verify_reports_an_intact_chain_and_exits_zero(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    asyncio.run(_fill_ledger(url, 40))
    result = CliRunner().invoke(app, ["--database-url", url])
    assert result.exit_code == 0, result.output
    assert "intact" in result.output
    assert "40 transaction" in result.output


def test_verify_names_the_tampered_transaction_and_exits_one(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    asyncio.run(_fill_ledger(url, 40, tamper_position=23))
    result = CliRunner().invoke(app, ["--database-url", url])
    assert result.exit_code == EXIT_BROKEN, result.output
    assert "position 23" in result.output
    assert "CLZ4:23" in result.output


def test_verify_of_a_missing_ledger_exits_two_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sqlite3"
    result = CliRunner().invoke(app, ["--database-url", f"sqlite+aiosqlite:///{missing}"])
    assert result.exit_code == EXIT_UNREADABLE, result.output
    assert not missing.exists()
