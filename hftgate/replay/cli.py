"""``hftgate replay PATH...``: publish recorded market data to a running market data service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from hftgate.replay import source
from hftgate.replay.publisher import ReplayResult, channel_to, feed_credentials, replay
from hftgate.replay.readers import UnknownFormatError
from hftgate.security import ClientCredentials, SecurityError
from hftgate.v1 import marketdata_pb2

console = Console(stderr=True)


def _summary_rows(table: Table, stream: str, summary: marketdata_pb2.PublishSummary) -> None:
    reasons = ", ".join(
        f"{marketdata_pb2.TickRejectReason.Name(r.reason).removeprefix('TICK_REJECT_REASON_').lower()}={r.count}"
        for r in summary.rejected_by_reason
    )
    table.add_row(stream, str(summary.accepted), str(summary.rejected), reasons or "-")


def _report(result: ReplayResult) -> None:
    table = Table(title=f"replayed {result.ticks:,} ticks in {result.elapsed_s:.2f} s")
    for column in ("stream", "accepted", "rejected", "rejected by reason"):
        table.add_column(column)
    _summary_rows(table, "quotes + depth", result.quote_summary)
    _summary_rows(table, "trades", result.trade_summary)
    console.print(table)
    recorded_s = result.recorded_span_ns / 1e9
    rate = result.ticks / result.elapsed_s if result.elapsed_s > 0 else 0.0
    console.print(f"recorded span {recorded_s:.1f} s, {rate:,.0f} ticks/s")


async def _run(
    files: list[Path],
    target: str,
    speed: float,
    max_batch: int,
    limit_per_file: int,
    credentials: ClientCredentials,
) -> ReplayResult:
    with console.status(f"reading {len(files)} file(s)"):
        ticks = source.load(files, limit_per_file)
    columns = (
        TextColumn("[bold]replay[/] {task.fields[clock]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    first = ticks[0].receive_ts_ns if ticks else 0
    async with channel_to(target, credentials) as channel:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("replay", total=len(ticks), clock="", rate="")

            def on_progress(sent: int, total: int) -> None:
                elapsed = progress.tasks[0].elapsed or 0.0
                recorded = (ticks[sent - 1].receive_ts_ns - first) / 1e9
                progress.update(
                    task,
                    completed=sent,
                    clock=f"t+{recorded:,.1f}s",
                    rate=f"{sent / elapsed:,.0f} ticks/s" if elapsed > 0 else "",
                )

            return await replay(
                ticks,
                channel,
                speed=speed,
                max_batch=max_batch,
                on_progress=on_progress,
                metadata=credentials.metadata,
            )


def replay_command(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Data files or directories; each file's format is recognised from its content."),
    ],
    target: Annotated[str, typer.Option(help="host:port of the market data service.")] = "127.0.0.1:50052",
    speed: Annotated[
        float, typer.Option(help="1 = recorded speed, 10 = ten times faster, 0 = as fast as possible.")
    ] = 1.0,
    max_batch: Annotated[int, typer.Option(help="Most ticks in one stream message.")] = 1000,
    limit_per_file: Annotated[int, typer.Option(help="Read at most this many ticks per file (0 = all).")] = 0,
) -> None:
    """Publish recorded market data (see ../shared/data/README.md) to the market data service."""
    if speed < 0 or max_batch <= 0:
        raise typer.BadParameter("--speed must be >= 0 and --max-batch > 0")
    try:
        files, skipped = source.expand(paths)
    except (UnknownFormatError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    for reason in skipped:
        console.print(f"[yellow]skipped[/] {reason}")
    if not files:
        raise typer.BadParameter("no readable data files among the given paths")
    try:
        credentials = feed_credentials()
    except SecurityError as exc:
        console.print(
            f"[red]cannot publish:[/] {exc} (set HFTGATE_SUITE_SECRET or HFTGATE_SUITE_SECRET_FILE)"
        )
        raise typer.Exit(2) from None
    try:
        result = asyncio.run(_run(files, target, speed, max_batch, limit_per_file, credentials))
    except grpc.aio.AioRpcError as exc:
        console.print(
            f"[red]the market data service at {target} refused:[/] {exc.code().name}: {exc.details()}"
        )
        raise typer.Exit(1) from None
    _report(result)


app = typer.Typer(help="Replay recorded market data into the market data service.")
app.command("replay")(replay_command)
