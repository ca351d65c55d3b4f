"""The ``hftgate`` command line: start the suite, run benchmarks, replay data."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from hftgate import bench as bench_suites
from hftgate import supervisor

app = typer.Typer(help="hftgate: gRPC services for low-latency trading.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (never part of `make test`).")
app.add_typer(bench_app, name="bench")

err = Console(stderr=True)


@app.command()
def up(
    services: Annotated[
        list[str] | None, typer.Option("--service", "-s", help="Start only these services (repeatable).")
    ] = None,
    replay: Annotated[
        bool,
        typer.Option(help="Feed the recorded Binance quotes and trades to the market data service."),
    ] = True,
    replay_speed: Annotated[float, typer.Option(help="Replay speed: 1 = as recorded.")] = 1.0,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls/--no-tls",
            help="Serve and call over TLS with a suite CA made under <state dir>/tls (sets HFTGATE_TLS_DIR).",
        ),
    ] = False,
    shards: Annotated[
        int,
        typer.Option(
            "--shards",
            min=1,
            max=supervisor.MAX_LOCAL_SHARDS,
            help="Execution shards to start (shard i on port 50051 + 10*i); the gateway routes to all.",
        ),
    ] = 2,
    metrics_base_port: Annotated[
        int,
        typer.Option(
            "--metrics-base-port",
            min=0,
            max=65_000,
            help="Serve /metrics from this port up (gateway +0, execution +1, marketdata +2, cache +3, "
            "scaler +4, shard i +10*i) and write a Prometheus scrape config; 0 = no metrics.",
        ),
    ] = 9100,
    dashboard_port: Annotated[
        int,
        typer.Option("--dashboard-port", min=0, max=65_535, help="Serve the live dashboard here; 0 = none."),
    ] = 8080,
    demo_flow: Annotated[
        bool,
        typer.Option(
            "--demo-flow/--no-demo-flow",
            help="Send a gentle live flow of crossing demo orders through the gateway (dev profile only).",
        ),
    ] = True,
    demo_rate: Annotated[
        float,
        typer.Option("--demo-rate", min=1, max=1_000, help="Orders per second of the demo flow."),
    ] = 100.0,
    summary_interval_s: Annotated[
        float,
        typer.Option(
            "--summary-interval-s",
            min=0,
            max=3_600,
            help="Print a summary line this often (orders/s, p50/p99, cache, shards, replicas); 0 = never.",
        ),
    ] = 5.0,
) -> None:
    """Start every built service as a local process on its embedded defaults; Ctrl-C stops them.

    Execution runs as --shards processes that split the symbols, behind the gateway on 50050.
    Then the recorded market data is replayed, demo orders flow through the gateway and a summary
    is printed every --summary-interval-s until Ctrl-C, which stops every process started."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    specs = supervisor.available_services()
    if services:
        unknown = set(services) - {s.name for s in supervisor.ALL_SERVICES}
        if unknown:
            raise typer.BadParameter(f"unknown service(s): {', '.join(sorted(unknown))}")
        specs = [s for s in specs if s.name in services]
    if not specs:
        err.print("no services are built yet: nothing to start")
        return
    import os

    from hftgate import prometheus, shardmap
    from hftgate.config import default_state_dir

    stopping = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        if not stopping.is_set() and running is None:
            raise _Stop()  # during start-up: start_services stops what it started, and re-raises
        stopping.set()  # once up: the watch loop ends and everything is stopped in order

    running: list[supervisor.RunningService] | None = None
    # Set before anything starts, so Ctrl-C during start-up still stops what was started.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    env = dict(os.environ)
    env.update(prometheus.metrics_env(metrics_base_port, environ=env))
    try:
        running = supervisor.start_services(specs, env=env, tls=tls, shards=shards)
    except _Stop:  # start_services stopped what it had started
        err.print("interrupted during start-up: every started service stopped")
        raise typer.Exit(130) from None
    except shardmap.ShardMapError as exc:  # the stored map cannot be used as asked: say why
        err.print(f"cannot start the execution shards: {exc}")
        raise typer.Exit(2) from None
    dashboard = feeder = flow = None
    try:
        targets = {t.label: t for t in prometheus.targets_of_running(running)}
        table = Table("service", "address", "pid", "metrics")
        for service in running:
            target = targets.get(service.spec.label)
            table.add_row(
                service.spec.label,
                service.address,
                str(service.process.pid),
                target.address if target else "-",
            )
        err.print(table)
        if targets:
            scrape = prometheus.write_scrape_config(
                default_state_dir() / "prometheus" / "prometheus.yml", list(targets.values())
            )
            err.print(f"Prometheus scrape config: {scrape} (prometheus --config.file={scrape})")
        if dashboard_port or summary_interval_s:
            dashboard = _start_dashboard(running, dashboard_port, serve_http=bool(dashboard_port))
        feeder = supervisor.start_replay(running, replay_speed) if replay else None
        if feeder is not None:
            err.print(f"replaying recorded market data at {replay_speed:g}x (pid {feeder.pid})")
        if demo_flow:
            flow = _start_demo_flow(running, demo_rate)
        err.print("suite is up; Ctrl-C or SIGTERM stops it")
        _watch(running, dashboard, flow, summary_interval_s, stopping)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if flow is not None:
            flow.stop()
        if dashboard is not None:
            dashboard.stop()
        if feeder is not None and feeder.poll() is None:
            feeder.terminate()
            feeder.wait()
        supervisor.stop_services(running)
        err.print("every process started was stopped")


class _Stop(Exception):
    """Ctrl-C or SIGTERM during start-up."""


def _watch(
    running: list[supervisor.RunningService],
    dashboard: Any,
    flow: Any,
    summary_interval_s: float,
    stopping: threading.Event,
) -> None:
    """Until ``stopping``: exit if a service dies, and print a summary line every interval."""
    next_summary = time.monotonic() + summary_interval_s if summary_interval_s else None
    while not stopping.is_set():
        dead = [s for s in running if s.process.poll() is not None]
        if dead:
            err.print(f"service {dead[0].spec.label} exited with code {dead[0].process.returncode}")
            raise typer.Exit(1)
        if next_summary is not None and time.monotonic() >= next_summary:
            next_summary += summary_interval_s
            state = dashboard.latest() if dashboard is not None else None
            window = flow.flow.take_window() if flow is not None else None
            url = dashboard.url if dashboard is not None and dashboard.port else None
            line = supervisor.format_summary(state, window, url)
            # Plain print: a rich console would wrap the line at its width.
            print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)
        stopping.wait(0.25)


def _start_demo_flow(running: list[supervisor.RunningService], rate: float) -> Any:
    """The demo order flow through the gateway, or None (said why) when it cannot run."""
    from hftgate.demoflow import DemoFlow, DemoFlowConfig, DemoFlowThread

    gateway = next((s for s in running if s.spec.name == "gateway"), None)
    if gateway is None:
        err.print("no demo flow: the gateway is not running")
        return None
    if gateway.env.get("HFTGATE_PROFILE") != "dev":
        err.print("no demo flow: demo accounts exist only in the dev profile")
        return None
    config = DemoFlowConfig.from_env(gateway.address, rate, gateway.env)
    thread = DemoFlowThread(DemoFlow(config, tls_environ=gateway.env))
    thread.start()
    err.print(
        f"demo order flow: {rate:g} orders/s from {', '.join(config.accounts)} through {gateway.address}"
    )
    return thread


def _start_dashboard(running: list[supervisor.RunningService], port: int, *, serve_http: bool = True) -> Any:
    """The live dashboard of the suite just started (only sampling, for the summary, when not
    ``serve_http``), or None (said why) when it cannot run."""
    from hftgate.dashboard import Dashboard, DashboardConfig, Poller

    env: dict[str, str] = {}
    # Each child's own port variable (shard 0's for execution: the first started wins), and the
    # suite's secret and TLS.
    for service in reversed(running):
        env.update(service.env)
    config = DashboardConfig.from_env(env, http_port=port)
    try:
        dashboard = Dashboard(config, Poller.for_suite(config, env), serve_http=serve_http)
    except Exception as error:  # the suite runs without its dashboard
        err.print(f"no dashboard: {error}")
        return None
    dashboard.start()
    if serve_http:
        err.print(f"dashboard on {dashboard.url}")
    return dashboard


def _run_suite(suite: str, as_json: bool, repeats: int, **options: object) -> None:
    steps = bench_suites.suite_steps(suite)
    if not steps:
        err.print(f"benchmark suite {suite!r} has nothing built yet")
        raise typer.Exit(1)
    results: bench_suites.BenchResult = {}
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True
    ) as progress:
        task = progress.add_task(suite, total=len(steps))
        for name, run in steps:
            progress.update(task, description=f"{suite}: {name}")
            results.update(run(repeats=repeats, **options))
            progress.advance(task)
    if as_json:
        sys.stdout.write(json.dumps(results, indent=2, sort_keys=False) + "\n")
        return
    table = Table("metric", "value", title=f"hftgate bench {suite}")
    for key, value in results.items():
        table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
RepeatsOption = Annotated[int, typer.Option("--repeats", min=1, help="Runs per measurement (median taken).")]


@bench_app.command("native")
def bench_native(as_json: JsonOption = False, repeats: RepeatsOption = 5) -> None:
    """C core: VWAP vs numpy/scalar/Python, queue throughput, clock and histogram cost."""
    _run_suite("native", as_json, repeats)


@bench_app.command("matching")
def bench_matching(as_json: JsonOption = False, repeats: RepeatsOption = 3) -> None:
    """Matching engine vs the pure-Python reference, and the CME MBO replay agreement."""
    _run_suite("matching", as_json, repeats)


@bench_app.command("marketdata")
def bench_marketdata(as_json: JsonOption = False, repeats: RepeatsOption = 3) -> None:
    """Per-tick processing and arbitrage latency on real data, and ingest through gRPC."""
    _run_suite("marketdata", as_json, repeats)


@bench_app.command("cache")
def bench_cache(as_json: JsonOption = False, repeats: RepeatsOption = 3) -> None:
    """L1 hit ratios on a Zipf trace, and remote Get latency against the gRPC and TCP floors."""
    _run_suite("cache", as_json, repeats)


@bench_app.command("execution")
def bench_execution(as_json: JsonOption = False, repeats: RepeatsOption = 3) -> None:
    """Order entry through a real server with the durable journal: batch, stream, unary, and the floors."""
    _run_suite("execution", as_json, repeats)


@bench_app.command("crash")
def bench_crash(
    as_json: JsonOption = False,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Independent harness runs.")] = 1,
    kills: Annotated[int, typer.Option("--kills", min=1, help="SIGKILLs per run, at random moments.")] = 10,
    shards: Annotated[
        int, typer.Option("--shards", min=1, max=2, help="Execution shards (kills alternate between them).")
    ] = 2,
) -> None:
    """kill -9 an execution shard under load, restart it, and check nothing acknowledged was lost."""
    _run_suite("crash", as_json, repeats, kills=kills, shards=shards)


@bench_app.command("gateway")
def bench_gateway(as_json: JsonOption = False, repeats: RepeatsOption = 1) -> None:
    """SubmitOrder direct, via the routing client, the Python gateway and HAProxy on two shards;
    throughput; balancing; floors; bars."""
    _run_suite("gateway", as_json, repeats)


@bench_app.command("scaling")
def bench_scaling(as_json: JsonOption = False, repeats: RepeatsOption = 1) -> None:
    """Scaler: a market data load step (10% to 300% of one replica) via the gateway; a square wave."""
    _run_suite("scaling", as_json, repeats)


@bench_app.command("moves")
def bench_moves(as_json: JsonOption = False, repeats: RepeatsOption = 1) -> None:
    """A symbol moved between two shards under ~1,000 orders/s: pause, lost acks, duplicate fills, books."""
    _run_suite("moves", as_json, repeats)


@bench_app.command("tracing")
def bench_tracing(as_json: JsonOption = False, repeats: RepeatsOption = 3) -> None:
    """Sequential SubmitOrder with tracing off, every call sampled (in-process collector), and 1%."""
    _run_suite("tracing", as_json, repeats)


@bench_app.callback(invoke_without_command=True)
def bench_main(
    ctx: typer.Context,
    compare_with: Annotated[
        Path | None,
        typer.Option(
            "--compare",
            help="Compare a run's JSON (--run FILE, else standard input) with this baseline by ratios; "
            "exit 1 on a regression beyond the baseline's margins (hftgate/bench/compare.py).",
        ),
    ] = None,
    run_file: Annotated[
        Path | None, typer.Option("--run", help="The run's JSON for --compare (default: standard input).")
    ] = None,
) -> None:
    """Benchmarks (never part of `make test`)."""
    if compare_with is None:
        if ctx.invoked_subcommand is None:
            typer.echo(ctx.get_help())
        return
    if ctx.invoked_subcommand is not None:
        raise typer.BadParameter(
            "--compare reads a saved run (--run or standard input); run the benchmark first"
        )
    from hftgate.bench.compare import run_comparison

    raise typer.Exit(run_comparison(compare_with, run_file, sys.stdout))


@bench_app.command("e2e")
def bench_e2e(
    rate: Annotated[
        float, typer.Option("--rate", help="Orders per second, each on a fixed schedule.")
    ] = 1_000.0,
    duration_s: Annotated[float, typer.Option("--duration", help="Seconds of load.")] = 60.0,
    via: Annotated[
        str,
        typer.Option("--via", help="direct (owning shard), client (routing client), gateway or haproxy"),
    ] = "gateway",
    batch_per_ms: Annotated[
        bool, typer.Option("--batch-per-ms", help="Send the orders due at each wake-up as one SubmitOrders.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Open-loop orders to two durable shards, latency from each order's intended send time, with floors."""
    from hftgate.bench.e2e import HaproxyUnavailable, check_arguments, e2e

    try:
        check_arguments(rate, duration_s, via)
    except HaproxyUnavailable as exc:
        err.print(str(exc))
        raise typer.Exit(1) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with err.status(f"e2e: {rate:g} orders/s for {duration_s:g} s via {via}"):
        result = e2e(rate, duration_s, via, batch_per_ms)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    table = Table("metric", "value", title="hftgate bench e2e")
    for key, value in result.items():
        table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


@bench_app.command("all")
def bench_all(as_json: JsonOption = False, repeats: RepeatsOption = 3) -> None:
    """Every suite that is built, one after the other."""
    combined: dict[str, bench_suites.BenchResult] = {}
    for suite in bench_suites.SUITES:
        steps = bench_suites.suite_steps(suite)
        if not steps or suite == "crash":
            continue
        results: bench_suites.BenchResult = {}
        for _name, run in steps:
            results.update(run(repeats=repeats))
        combined[suite] = results
    if as_json:
        sys.stdout.write(json.dumps(combined, indent=2) + "\n")
        return
    for suite, results in combined.items():
        table = Table("metric", "value", title=f"hftgate bench {suite}")
        for key, value in results.items():
            table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else str(value))
        Console().print(table)


@app.command()
def fuzz(
    minutes: Annotated[
        float, typer.Option("--minutes", min=0.05, help="Total time, shared by the services.")
    ] = 3.0,
    service: Annotated[
        list[str] | None,
        typer.Option(
            "--service", "-s", help="Fuzz only these (execution, marketdata, cache, gateway, scaler)."
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the mutation loop (generation is derandomized per round).")
    ] = 0,
    as_json: JsonOption = False,
) -> None:
    """Start the suite in a temporary state directory and fuzz every RPC of every service."""
    import tempfile

    from hftgate.fuzz import FUZZ_SERVICES, check_fuzz_services, fuzz_suite

    names = tuple(service or FUZZ_SERVICES)
    try:
        check_fuzz_services(names)
    except ValueError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None
    with tempfile.TemporaryDirectory(prefix="hftgate-fuzz-") as state_dir:
        reports = fuzz_suite(
            state_dir, seconds_per_service=minutes * 60 / len(names), services=names, seed=seed, log=err.print
        )
    findings = sum(len(r.findings) for r in reports.values())
    if as_json:
        sys.stdout.write(json.dumps({name: r.as_dict() for name, r in reports.items()}, indent=2) + "\n")
    else:
        for name, report in reports.items():
            err.print(f"{name}: {report.calls} calls, codes {dict(report.codes)}")
            for finding in report.findings[:20]:
                err.print(f"  {finding.kind} {finding.method}: {finding.detail}")
    if findings:
        raise typer.Exit(1)


certs_app = typer.Typer(
    help="TLS certificates for the suite (a CA and one certificate per service).", no_args_is_help=True
)
app.add_typer(certs_app, name="certs")


@certs_app.command("init")
def certs_init(
    folder: Annotated[
        str,
        typer.Option(
            "--dir", help="Where to write them; default <state dir>/tls. Point HFTGATE_TLS_DIR here."
        ),
    ] = "",
    host: Annotated[
        list[str] | None, typer.Option("--host", help="Extra host name or IP each certificate is valid for.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Make a new CA even if one exists.")] = False,
) -> None:
    """Make a suite CA and a certificate per service, for mutual TLS between services."""
    from pathlib import Path

    from hftgate.config import default_state_dir
    from hftgate.security import certs_init as make_certs

    target = Path(folder) if folder else default_state_dir() / "tls"
    hosts = ("localhost", "127.0.0.1", "::1", *(host or ()))
    written = make_certs(target, hosts=hosts, overwrite=overwrite)
    err.print(f"{len(written)} files written under {target}; set HFTGATE_TLS_DIR={target}")


def _register_optional_commands() -> None:
    """Commands whose implementation lives with a service package, added when present."""
    try:
        from hftgate.replay.cli import replay_command
    except ModuleNotFoundError:
        pass
    else:
        app.command("replay")(replay_command)
    try:
        from services.execution.ledger_verify import verify_command
    except ModuleNotFoundError:
        pass
    else:
        ledger_app = typer.Typer(help="The hash-chained ledger of fills.", no_args_is_help=True)
        ledger_app.command("verify")(verify_command)
        app.add_typer(ledger_app, name="ledger")
    try:
        from hftgate.admin_cli import register as register_admin_commands
    except ModuleNotFoundError:
        pass
    else:
        register_admin_commands(app)  # accounts, keys, instruments, audit
    from hftgate.move_cli import move_command

    app.command("move")(move_command)
    from hftgate.tracereport import register as register_trace_report

    register_trace_report(app)  # trace-report
    from hftgate.prometheus import register as register_prometheus

    register_prometheus(app)  # prometheus-config
    from hftgate.dashboard import register as register_dashboard

    register_dashboard(app)  # dashboard


_register_optional_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
