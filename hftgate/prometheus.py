"""Prometheus for the suite: each process's /metrics port, and a scrape configuration naming them.

Every service serves Prometheus' text format on ``<host>:<metrics port>/metrics`` when its
``HFTGATE_<SERVICE>_METRICS_PORT`` is above 0 (the ``metrics_port`` field of each service's
config; 0, the default, serves nothing). The host is ``HFTGATE_METRICS_HOST`` for every service
of the suite (:func:`metrics_host`): 127.0.0.1 by default, so /metrics (unauthenticated, like
every Prometheus endpoint) is reachable only from the same host; a container sets ``0.0.0.0`` so
that Prometheus on the compose network can scrape it (compose publishes none of these ports).

The series are the shared RPC counters and latency histograms of :mod:`hftgate.telemetry`
(``hftgate_rpc_total{method,code}``, ``hftgate_rpc_seconds``, ``hftgate_spans_dropped_total``),
the process's CPU and memory (``process_*``), and each service's own
(``services/<name>/metrics.py``).

Default ports (:data:`DEFAULT_METRICS_PORTS`, from :data:`DEFAULT_METRICS_BASE_PORT` = 9100):
gateway 9100, execution 9101, market data 9102, cache 9103, scaler 9104; execution shard ``i``
listens on shard 0's port plus 10 * ``i`` (``hftgate.supervisor.INSTANCE_PORT_STEP``: shard 1 on
9111), as its gRPC port does. :func:`metrics_env` gives those variables for a suite's
environment; :func:`suite_targets` and :func:`targets_of_running` the processes to scrape;
:func:`scrape_config` / :func:`write_scrape_config` the ``prometheus.yml``. ``hftgate
prometheus-config`` prints it.

A metrics port that cannot be bound (another process holds it) is logged as an error and the
service runs on without /metrics (:func:`serve_metrics`): a trading service does not refuse to
start over its telemetry, and Prometheus shows the target down (``up == 0``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from hftgate import telemetry

if TYPE_CHECKING:
    from hftgate.supervisor import RunningService

log = logging.getLogger(__name__)

#: The first metrics port of ``hftgate up``; each service gets an offset from it.
DEFAULT_METRICS_BASE_PORT = 9100
#: Offset of each service's metrics port from the base (execution shard ``i`` adds 10 * ``i``).
METRICS_PORT_OFFSETS: Mapping[str, int] = {
    "gateway": 0,
    "execution": 1,
    "marketdata": 2,
    "cache": 3,
    "scaler": 4,
}
DEFAULT_METRICS_PORTS: Mapping[str, int] = {
    name: DEFAULT_METRICS_BASE_PORT + offset for name, offset in METRICS_PORT_OFFSETS.items()
}
#: The scrape interval of the generated configuration (Prometheus' own default is 60 s).
DEFAULT_SCRAPE_INTERVAL_S = 5.0
#: Where ``hftgate up`` and the CLI put the generated file under the state directory.
SCRAPE_CONFIG_NAME = "prometheus/prometheus.yml"
_MAX_PORT = 65_535


@dataclass(frozen=True)
class MetricsTarget:
    """One process to scrape: its service (the Prometheus job), its name, its /metrics address."""

    service: str
    #: The process: ``execution``, ``execution-1``... (the ``process`` label of its series).
    label: str
    address: str


def metrics_port_variable(service: str) -> str:
    """The variable a service reads its metrics port from: ``HFTGATE_CACHE_METRICS_PORT``..."""
    return f"HFTGATE_{service.upper()}_METRICS_PORT"


def _port(value: str, variable: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"{variable} must be a port number, not {value!r}") from None
    if not 0 <= port <= _MAX_PORT:
        raise ValueError(f"{variable} must be 0 (no /metrics) or a port up to {_MAX_PORT}, not {port}")
    return port


def metrics_env(
    base_port: int = DEFAULT_METRICS_BASE_PORT,
    services: Iterable[str] = tuple(METRICS_PORT_OFFSETS),
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``HFTGATE_<SERVICE>_METRICS_PORT`` for each of ``services``: base_port + its offset, unless
    ``environ`` sets the variable already (a port given wins). ``base_port`` 0 = none."""
    if not 0 <= base_port <= _MAX_PORT - max(METRICS_PORT_OFFSETS.values()):
        raise ValueError(f"the metrics base port must be 0 (none) or 1..{_MAX_PORT - 4}, not {base_port}")
    env = {} if environ is None else environ
    chosen: dict[str, str] = {}
    for service in services:
        if service not in METRICS_PORT_OFFSETS:
            raise ValueError(f"unknown service {service!r}: one of {', '.join(METRICS_PORT_OFFSETS)}")
        variable = metrics_port_variable(service)
        if env.get(variable):
            chosen[variable] = str(_port(env[variable], variable))
        elif base_port:
            chosen[variable] = str(base_port + METRICS_PORT_OFFSETS[service])
    return chosen


def suite_targets(
    environ: Mapping[str, str],
    services: Iterable[str] = tuple(METRICS_PORT_OFFSETS),
    *,
    shards: int = 1,
    host: str = "127.0.0.1",
) -> list[MetricsTarget]:
    """The processes of a suite started with ``environ`` that serve /metrics: each of ``services``
    whose metrics port variable is above 0, and for execution ``shards`` shards (shard ``i`` on
    shard 0's port + 10 * ``i``, as the supervisor gives it)."""
    from hftgate.supervisor import INSTANCE_PORT_STEP

    targets: list[MetricsTarget] = []
    for service in services:
        variable = metrics_port_variable(service)
        port = _port(environ.get(variable) or "0", variable)
        if not port:
            continue
        instances = shards if service == "execution" else 1
        for instance in range(instances):
            label = service if instance == 0 else f"{service}-{instance}"
            targets.append(MetricsTarget(service, label, f"{host}:{port + INSTANCE_PORT_STEP * instance}"))
    return targets


def targets_of_running(running: Sequence[RunningService], host: str = "127.0.0.1") -> list[MetricsTarget]:
    """The started processes (``hftgate.supervisor.start_services``) that were given a metrics
    port, each at the port its own environment names."""
    targets = []
    for service in running:
        variable = metrics_port_variable(service.spec.name)
        port = _port(service.env.get(variable) or "0", variable)
        if port:
            targets.append(MetricsTarget(service.spec.name, service.spec.label, f"{host}:{port}"))
    return targets


def scrape_config(
    targets: Sequence[MetricsTarget],
    *,
    scrape_interval_s: float = DEFAULT_SCRAPE_INTERVAL_S,
    rule_files: Sequence[str] = (),
) -> dict[str, Any]:
    """A ``prometheus.yml`` (as a mapping) scraping ``targets``: one job per service, each
    process's series labelled ``process`` (``execution-1``) and ``service``."""
    if not 0 < scrape_interval_s <= 3_600:
        raise ValueError(f"the scrape interval must be above 0 and at most 3600 s, not {scrape_interval_s}")
    interval = _duration(scrape_interval_s)
    jobs: dict[str, list[dict[str, Any]]] = {}
    for target in targets:
        jobs.setdefault(target.service, []).append(
            {"targets": [target.address], "labels": {"process": target.label, "service": target.service}}
        )
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            # A scrape must end before the next one starts.
            "scrape_timeout": _duration(min(scrape_interval_s, 10.0)),
        },
        "scrape_configs": [
            {"job_name": f"hftgate-{service}", "metrics_path": "/metrics", "static_configs": static}
            for service, static in jobs.items()
        ],
    }
    if rule_files:
        config["rule_files"] = list(rule_files)
    return config


def _duration(seconds: float) -> str:
    """Prometheus' duration syntax, in whole milliseconds (it accepts no decimals)."""
    milliseconds = max(1, round(seconds * 1000))
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def render(config: Mapping[str, Any]) -> str:
    return "# Generated by hftgate (hftgate/prometheus.py); regenerate rather than edit.\n" + yaml.safe_dump(
        dict(config), sort_keys=False
    )


def write_scrape_config(path: Path, targets: Sequence[MetricsTarget], **options: Any) -> Path:
    """Write :func:`scrape_config` of ``targets`` to ``path`` (atomically) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(render(scrape_config(targets, **options)), encoding="utf-8")
    os.replace(partial, path)
    return path


METRICS_HOST_VARIABLE = "HFTGATE_METRICS_HOST"
DEFAULT_METRICS_HOST = "127.0.0.1"


def metrics_host(environ: Mapping[str, str] | None = None) -> str:
    """The address /metrics binds: ``HFTGATE_METRICS_HOST`` (an IPv4/IPv6 address, or ``localhost``),
    127.0.0.1 by default. A name that is not an address raises ValueError naming the variable:
    binding to whatever a name resolves to would make exposure depend on DNS."""
    import ipaddress

    env = os.environ if environ is None else environ
    host = env.get(METRICS_HOST_VARIABLE, "").strip() or DEFAULT_METRICS_HOST
    if host == "localhost":
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{METRICS_HOST_VARIABLE} must be an IP address to bind /metrics to (127.0.0.1, 0.0.0.0, ::), "
            f"not {host[:64]!r}"
        ) from None
    return host


def serve_metrics(service_name: str, port: int, environ: Mapping[str, str] | None = None) -> bool:
    """Configure this process's telemetry and, if ``port`` > 0, serve /metrics on it.

    True when /metrics is served. A port that cannot be bound is logged (saying which and why)
    and the service goes on without /metrics (see the module docstring). A port out of range
    raises ValueError naming the variable, as does a host that is not an address."""
    _port(str(port), metrics_port_variable(service_name))
    host = metrics_host(environ)
    try:
        telemetry.configure(service_name, metrics_port=port, metrics_host=host)
    except OSError as exc:
        log.error(
            "%s: cannot serve /metrics on %s:%d (%s); running without metrics",
            service_name,
            host,
            port,
            exc.strerror or exc,
        )
        return False
    return port > 0


# --- the command ------------------------------------------------------------------------------


def prometheus_config(
    out: Annotated[str, typer.Option("--out", "-o", help="Write the file here instead of printing it.")] = "",
    base_port: Annotated[
        int,
        typer.Option(
            "--metrics-base-port",
            help="First metrics port (gateway; execution +1, marketdata +2, cache +3, scaler +4); "
            "HFTGATE_<SERVICE>_METRICS_PORT variables win.",
        ),
    ] = DEFAULT_METRICS_BASE_PORT,
    shards: Annotated[
        int, typer.Option("--shards", min=1, max=16, help="Execution shards (shard i: port +10*i).")
    ] = 2,
    services: Annotated[
        list[str] | None, typer.Option("--service", "-s", help="Only these services (repeatable).")
    ] = None,
    scrape_interval_s: Annotated[
        float, typer.Option("--scrape-interval-s", help="Scrape (and rule evaluation) interval.")
    ] = DEFAULT_SCRAPE_INTERVAL_S,
) -> None:
    """Print (or write) a Prometheus scrape configuration for the suite's /metrics ports."""
    chosen = tuple(services or METRICS_PORT_OFFSETS)
    try:
        env = metrics_env(base_port, chosen, os.environ)
        targets = suite_targets(env, chosen, shards=shards)
        text = render(scrape_config(targets, scrape_interval_s=scrape_interval_s))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not out:
        typer.echo(text, nl=False)
        return
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    typer.echo(f"{len(targets)} targets written to {target}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``hftgate prometheus-config`` to the CLI."""
    app.command("prometheus-config")(prometheus_config)
