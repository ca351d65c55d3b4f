"""Configuration of the scaler, from ``HFTGATE_SCALER_*`` environment variables.

``HFTGATE_SCALER_POLICIES`` gives start-up policies, comma-separated, each
``service:metric:target:min:max`` (e.g. ``marketdata:inflight_requests:50:1:4``); the admin
changes them at run time with SetPolicy. Policies not given there do not exist until then.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hftgate.config import ConfigError, default_state_dir, from_env, repo_root
from services.scaler.backends import RUNNABLE_SERVICES

ENV_PREFIX = "HFTGATE_SCALER_"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class ScalerConfig:
    """Every setting of the scaler, with its unit in its name."""

    host: str = "127.0.0.1"
    port: int = 50054
    #: Back end of policies that name none: local_process, docker_compose or kubernetes (which
    #: also configures the Kubernetes back end; the others are always configured).
    default_backend: str = "local_process"
    #: Evaluation period of policies that give none.
    evaluation_interval_ms: int = 15_000
    #: What ReportMetricsResponse asks replicas to use.
    report_interval_ms: int = 1_000
    #: After the scaler starts (or a policy appears), how long replicas already running (started
    #: by ``hftgate up``, not by the scaler) have to report before min_replicas is enforced.
    discovery_ms: int = 5_000
    #: A replica silent this long counts as missing its metric (policies that give none).
    stale_after_ms: int = 5_000
    #: A replica the scaler did not start is dropped (FAILED) after this long without a report.
    forget_after_ms: int = 60_000
    #: Local back end: replicas of each stateless service kept started and SERVING in reserve
    #: (STANDBY: no calls, not counted). A scale-up claims one at once instead of waiting for a
    #: process to start (a "warm pool"), and another is started in its place. 0 = none.
    warm_replicas: int = 0
    #: Between marking a replica DRAINING (balancers move away) and sending it SIGTERM.
    drain_ms: int = 2_000
    #: How often dead replicas are looked for (and restarted).
    monitor_interval_ms: int = 500
    #: max_replicas of a SetPolicy that gives 0.
    default_max_replicas: int = 4
    #: Bounds of the scaler's tables (beyond them: RESOURCE_EXHAUSTED, or the oldest dropped).
    max_replicas_per_service: int = 64
    max_reports_per_replica: int = 120
    max_decisions: int = 10_000
    max_watchers: int = 64
    max_queued_per_watcher: int = 1_024
    #: Local back end: how long a new replica has to report SERVING, and its SIGTERM grace.
    startup_timeout_s: float = 30.0
    stop_grace_s: float = 10.0
    #: Where local replicas keep their state (one folder each); empty = HFTGATE_STATE_DIR/scaler.
    state_dir: str = ""
    #: docker compose back end: the file and project.
    compose_file: str = ""
    compose_project: str = "hftgate"
    #: Kubernetes back end: the namespace of the suite's workloads (the manifests set it to the
    #: scaler's own), how to find the cluster (auto = in_cluster inside a pod, else kubeconfig),
    #: the kubeconfig file and context (empty: the client's defaults, KUBECONFIG or ~/.kube/config).
    kubernetes_namespace: str = "hftgate"
    kubernetes_config: str = "auto"
    kubernetes_kubeconfig: str = ""
    kubernetes_context: str = ""
    #: Services run by a StatefulSet (one volume per replica); the others by a Deployment.
    kubernetes_statefulsets: tuple[str, ...] = ("execution",)
    #: Timeout of one API request, and how long a scale-up waits for the new pods to be ready
    #: (0: return once the patch is accepted).
    kubernetes_request_timeout_s: float = 10.0
    kubernetes_ready_timeout_s: float = 120.0
    policies: tuple[str, ...] = ()
    #: Scale execution by moving symbols (rebalancer.py): at start the scaler opens the suite's
    #: shard map store, finishes the moves a previous scaler left unfinished, and carries out
    #: execution's decisions by adding or retiring local shard processes. False: execution's
    #: decisions are only recorded.
    rebalance_shards: bool = True
    #: After a retired shard leaves the shard map, how long before its process gets SIGTERM (the
    #: gateway and routing clients follow the map by polling it, 500 ms by default).
    rebalance_retire_grace_ms: int = 1_000
    #: The optimiser (optimiser.py): tunes the cache's near-cache capacity toward
    #: optimiser_hit_ratio_target and the execution journal's group-commit window toward
    #: optimiser_p99_latency_target_ns, through each service's TuningService (scaler.proto), one
    #: setting at a time, each trial measured over optimiser_window_ms.
    optimiser_enabled: bool = False
    optimiser_window_ms: int = 10_000
    optimiser_sample_interval_ms: int = 1_000
    optimiser_pause_ms: int = 5_000
    optimiser_hit_ratio_target: float = 0.95
    optimiser_p99_latency_target_ns: int = 1_000_000
    shutdown_grace_ms: int = 5_000
    #: Prometheus /metrics on 127.0.0.1 at this port (hftgate/prometheus.py); 0 = no metrics endpoint.
    metrics_port: int = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else default_state_dir() / "scaler"

    def compose_path(self) -> Path:
        return Path(self.compose_file) if self.compose_file else repo_root() / "docker-compose.yml"


def load_config(environ: Mapping[str, str] | None = None) -> ScalerConfig:
    env = os.environ if environ is None else environ
    config = from_env(ScalerConfig, ENV_PREFIX, env)
    if config.default_backend not in ("local_process", "docker_compose", "kubernetes"):
        raise ConfigError(
            f"{ENV_PREFIX}DEFAULT_BACKEND must be local_process, docker_compose or kubernetes, "
            f"not {config.default_backend!r}"
        )
    if config.kubernetes_config not in ("auto", "in_cluster", "kubeconfig"):
        raise ConfigError(
            f"{ENV_PREFIX}KUBERNETES_CONFIG must be auto, in_cluster or kubeconfig, "
            f"not {config.kubernetes_config!r}"
        )
    if not _DNS_LABEL.fullmatch(config.kubernetes_namespace):
        raise ConfigError(
            f"{ENV_PREFIX}KUBERNETES_NAMESPACE must be a DNS label (at most 63 lower-case letters, "
            "digits and '-', starting and ending with a letter or digit), "
            f"not {config.kubernetes_namespace!r}"
        )
    unknown = sorted(set(config.kubernetes_statefulsets) - RUNNABLE_SERVICES)
    if unknown:
        raise ConfigError(
            f"{ENV_PREFIX}KUBERNETES_STATEFULSETS names services the scaler does not run: "
            + ", ".join(unknown)
        )
    if not (math.isfinite(config.kubernetes_request_timeout_s) and config.kubernetes_request_timeout_s > 0):
        raise ConfigError(
            f"{ENV_PREFIX}KUBERNETES_REQUEST_TIMEOUT_S must be a finite number of seconds > 0, "
            f"not {config.kubernetes_request_timeout_s}"
        )
    if not (math.isfinite(config.kubernetes_ready_timeout_s) and config.kubernetes_ready_timeout_s >= 0):
        raise ConfigError(
            f"{ENV_PREFIX}KUBERNETES_READY_TIMEOUT_S must be a finite number of seconds >= 0, "
            f"not {config.kubernetes_ready_timeout_s}"
        )
    for name in ("evaluation_interval_ms", "report_interval_ms", "stale_after_ms", "monitor_interval_ms"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be positive, not {getattr(config, name)}")
    if config.optimiser_enabled:
        if not 0 < config.optimiser_hit_ratio_target < 1:
            raise ConfigError(
                f"{ENV_PREFIX}OPTIMISER_HIT_RATIO_TARGET must be in (0, 1), "
                f"not {config.optimiser_hit_ratio_target}"
            )
        if config.optimiser_p99_latency_target_ns <= 0:
            raise ConfigError(f"{ENV_PREFIX}OPTIMISER_P99_LATENCY_TARGET_NS must be positive")
        if (
            config.optimiser_window_ms < 3 * config.optimiser_sample_interval_ms
            or config.optimiser_sample_interval_ms <= 0
        ):
            raise ConfigError(
                f"{ENV_PREFIX}OPTIMISER_WINDOW_MS must hold at least 3 samples of "
                f"{ENV_PREFIX}OPTIMISER_SAMPLE_INTERVAL_MS (> 0)"
            )
    if not 0 <= config.warm_replicas <= 16:
        raise ConfigError(f"{ENV_PREFIX}WARM_REPLICAS must be 0..16, not {config.warm_replicas}")
    if config.rebalance_retire_grace_ms < 0:
        raise ConfigError(
            f"{ENV_PREFIX}REBALANCE_RETIRE_GRACE_MS must be >= 0, not {config.rebalance_retire_grace_ms}"
        )
    if config.discovery_ms < 0:
        raise ConfigError(f"{ENV_PREFIX}DISCOVERY_MS must be >= 0, not {config.discovery_ms}")
    for name in ("max_replicas_per_service", "max_reports_per_replica", "max_decisions", "max_watchers"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be positive, not {getattr(config, name)}")
    return config
