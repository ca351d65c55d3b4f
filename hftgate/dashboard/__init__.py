"""``hftgate dashboard``: a live web page of the running suite (see :mod:`hftgate.dashboard.server`).

Polls every service over gRPC with the ``admin`` principal's credentials
(:mod:`hftgate.dashboard.poller`) and serves the page, ``/api/state`` and the live
``/api/events`` stream (server-sent events, one sample a poll) on 127.0.0.1.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated

import typer

from hftgate.dashboard.poller import DashboardConfig, Poller
from hftgate.dashboard.server import Dashboard, DashboardPageMissing
from hftgate.security import SecurityError

__all__ = ["Dashboard", "DashboardConfig", "Poller", "dashboard_command", "register"]


def dashboard_command(
    port: Annotated[int, typer.Option("--port", min=0, max=65_535, help="HTTP port on 127.0.0.1.")] = 8080,
    poll_interval_ms: Annotated[
        int, typer.Option("--poll-interval-ms", min=100, max=60_000, help="How often the suite is polled.")
    ] = 1000,
) -> None:
    """Serve a live dashboard of the running suite on http://127.0.0.1:PORT/ (Ctrl-C stops it).

    Service addresses come from HFTGATE_<SERVICE>_PORT (as `hftgate up` uses them) or
    HFTGATE_DASHBOARD_<SERVICE>_ADDRESS; the suite secret is read as the services read it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = DashboardConfig.from_env(http_port=port)
    config = DashboardConfig(base.addresses, http_port=port, poll_interval_ms=poll_interval_ms)
    try:
        dashboard = Dashboard(config, Poller.for_suite(config))
    except (DashboardPageMissing, SecurityError) as error:
        typer.echo(f"hftgate dashboard: {error}", err=True)
        raise typer.Exit(1) from None
    except OSError as error:
        raise typer.BadParameter(
            f"cannot serve on 127.0.0.1:{port}: {error.strerror}", param_hint="--port"
        ) from None
    dashboard.start()
    typer.echo(f"dashboard on {dashboard.url} (Ctrl-C stops it)", err=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        dashboard.stop()


def register(app: typer.Typer) -> None:
    """Add ``hftgate dashboard`` to the CLI."""
    app.command("dashboard")(dashboard_command)
