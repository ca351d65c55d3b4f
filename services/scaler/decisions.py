"""How many replicas a service should run: the scaling rule, with no gRPC import.

Every function here is a plain function of (the replicas' loads, the policy, the service's
scaling memory, the time ``now_ns`` the caller passes), so tests drive whole load traces
through it without sleeping. The rule, in the order it is applied (each step is named in the
decision's reason):

1. **The Kubernetes HPA rule** as ``pkg/controller/podautoscaler/replica_calculator.go`` has it
   (:func:`hpa_recommendation`): ``ceil(ready_with_metrics * average / target)``; nothing changes
   while the usage ratio is inside the tolerance band; replicas whose metric is missing (never
   reported, or stale) count 100% of the target when the ratio says scale down and 0% when it
   says scale up; replicas still starting count 0% when scaling up and are ignored otherwise; a
   recomputed ratio that crosses 1 or falls into the band holds the count. Beyond HPA: separate
   up and down tolerances (``1 - down <= ratio <= 1 + up`` holds).
2. **Prediction** (optional): a Holt-Winters forecast of the service's load ``horizon`` ahead
   (forecast.py) gives a second recommendation; the larger wins, so a forecast can raise the
   count ahead of a rising load and never lower it (AWS predictive scaling's rule). In
   forecast-only mode the decision records what the forecast would have done and acts on the
   observed load alone.
3. **Panic** (Knative's rule): when the observed ratio reaches ``panic_threshold`` (2x capacity)
   the recommendation is applied at once, past the scale-up stabilisation window and rate
   limits, and for ``panic_hold_ms`` afterwards the count never goes down. Scaling on in-flight
   requests or orders/s (which, unlike CPU, do not saturate at one core) a 5x step is therefore
   met in one decision.
4. **Stabilisation** (HPA ``stabilizeRecommendationWithBehaviors``): up to the lowest
   recommendation of the scale-up window, down to the highest of the scale-down window.
5. **Rate limits** (HPA ``calculateScaleUpLimitWithScalingRules``, select policy Max): at most
   ``max(limit_replicas, ceil(start * (1 + limit_percent/100)))`` replicas at the end of any
   ``period`` when scaling up, at least ``min(start - limit_replicas, floor(start * (1 -
   limit_percent/100)))`` when scaling down, where ``start`` is the count at the period's start.
6. **Bounds**: clamped to ``[min_replicas, max_replicas]``; while the service is *discovering*
   (``ScalingMemory.discovering_until_ns``: just after the scaler started or the policy appeared)
   the floor is what already runs, so replicas started outside the scaler (``hftgate up``) that
   have not reported yet are not started a second time.

Bounds of the memory: :data:`MAX_RECOMMENDATIONS` recommendations and :data:`MAX_SCALE_EVENTS`
scale events per service, oldest dropped first (windows longer than that many evaluations see
only the retained ones).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from services.scaler.forecast import MAX_SEASON_SAMPLES, ForecastSettings, HoltWinters

#: Recommendations kept per service for the stabilisation windows.
MAX_RECOMMENDATIONS = 4_096
#: Scale events kept per service for the rate limits.
MAX_SCALE_EVENTS = 1_024
#: The most replicas any policy may ask for.
MAX_REPLICAS_LIMIT = 256
#: Most evaluations a prediction may look ahead.
MAX_PREDICTION_STEPS = 10_000

NS_PER_MS = 1_000_000


class Metric(StrEnum):
    """The per-replica figure a policy scales on (names as in ReplicaMetrics)."""

    CPU_CORES = "cpu_cores"
    INFLIGHT_REQUESTS = "inflight_requests"
    ORDERS_PER_S = "orders_per_s"
    P99_LATENCY_NS = "p99_latency_ns"
    QUEUE_DEPTH = "queue_depth"

    @property
    def is_conserved(self) -> bool:
        """True when the service's total is the sum over replicas (load moves between them as
        they are added); latency is not, so its forecast is of the per-replica average."""
        return self is not Metric.P99_LATENCY_NS


class Action(StrEnum):
    HOLD = "hold"
    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"


class ScalingKind(StrEnum):
    """How a service's replica count changes.

    STATELESS: any replica serves any call; scaling starts replicas, or drains and stops them.
    SHARDED: each replica owns part of the state (execution shards own symbols); scaling moves
    symbols between shards, so a replica is never drained and stopped like a stateless one
    (app.py hands the change to a :class:`~services.scaler.app.ShardRebalancer`, or records
    what it would have moved when none is wired in).
    """

    STATELESS = "stateless"
    SHARDED = "sharded"


#: Services whose replicas own state, scaled by moving it (a policy that names no kind).
SHARDED_SERVICES: frozenset[str] = frozenset({"execution"})


def default_kind(service: str) -> ScalingKind:
    return ScalingKind.SHARDED if service in SHARDED_SERVICES else ScalingKind.STATELESS


class InvalidPolicy(ValueError):
    """A policy field is out of range; ``field`` names it for a BadRequest detail."""

    def __init__(self, field_name: str, description: str) -> None:
        super().__init__(f"{field_name}: {description}")
        self.field = field_name
        self.description = description


@dataclass(frozen=True)
class RateLimit:
    """At most this much change per ``period_ms``: the larger of ``replicas`` and ``percent`` of
    the count at the period's start (HPA's Pods and Percent policies, select policy Max).
    ``replicas`` 0 and ``percent`` 0 together = no change at all in that direction;
    ``period_ms`` 0 = no limit."""

    replicas: int = 4
    percent: float = 100.0
    period_ms: int = 15_000


@dataclass(frozen=True)
class Policy:
    """How one service is sized. Defaults are HPA's where HPA has one."""

    service: str
    min_replicas: int = 1
    max_replicas: int = 4
    metric: Metric = Metric.INFLIGHT_REQUESTS
    target_value: float = 1.0
    #: Band around the target in which nothing changes (HPA's --horizontal-pod-autoscaler-tolerance).
    tolerance: float = 0.1
    #: Per-direction bands; 0 = ``tolerance``.
    scale_up_tolerance: float = 0.0
    scale_down_tolerance: float = 0.0
    scale_up_stabilization_ms: int = 0
    scale_down_stabilization_ms: int = 300_000
    scale_up_limit: RateLimit = field(default_factory=lambda: RateLimit(4, 100.0, 15_000))
    scale_down_limit: RateLimit = field(default_factory=lambda: RateLimit(0, 100.0, 15_000))
    #: Observed ratio at which to panic (scale up at once); 0 = never.
    panic_threshold: float = 2.0
    #: After a panic, no scale-down for this long (Knative's stable window).
    panic_hold_ms: int = 60_000
    evaluation_interval_ms: int = 15_000
    #: How far ahead the forecast looks; 0 = prediction off.
    prediction_horizon_ms: int = 0
    #: Length of the load's season (e.g. a day) for the forecaster; 0 = no seasonality.
    season_ms: int = 0
    #: Record what the forecast would do, act on the observed load only.
    forecast_only: bool = False
    #: A replica whose last report is older than this counts as missing its metric.
    stale_after_ms: int = 5_000
    #: Where replicas run ("local_process", "docker_compose", "kubernetes"; "" = the default).
    backend: str = ""
    #: Stateless or sharded; None = by service (:func:`default_kind`).
    kind: ScalingKind | None = None

    @property
    def scaling_kind(self) -> ScalingKind:
        return self.kind if self.kind is not None else default_kind(self.service)

    @property
    def up_tolerance(self) -> float:
        return self.scale_up_tolerance or self.tolerance

    @property
    def down_tolerance(self) -> float:
        return self.scale_down_tolerance or self.tolerance

    @property
    def prediction_steps(self) -> int:
        if self.prediction_horizon_ms <= 0:
            return 0
        return max(1, math.ceil(self.prediction_horizon_ms / self.evaluation_interval_ms))

    @property
    def season_samples(self) -> int:
        if self.season_ms <= 0:
            return 0
        return round(self.season_ms / self.evaluation_interval_ms)

    def validate(self) -> None:
        """Raise :class:`InvalidPolicy` naming the first field out of range."""
        if not self.service:
            raise InvalidPolicy("service", "must not be empty")
        if not (1 <= self.min_replicas <= MAX_REPLICAS_LIMIT):
            raise InvalidPolicy(
                "min_replicas", f"must be in [1, {MAX_REPLICAS_LIMIT}], not {self.min_replicas}"
            )
        if not (self.min_replicas <= self.max_replicas <= MAX_REPLICAS_LIMIT):
            raise InvalidPolicy(
                "max_replicas",
                f"must be in [min_replicas {self.min_replicas}, {MAX_REPLICAS_LIMIT}], "
                f"not {self.max_replicas}",
            )
        if not (math.isfinite(self.target_value) and self.target_value > 0):
            raise InvalidPolicy("target_value", f"must be a finite number > 0, not {self.target_value!r}")
        for name in ("tolerance", "scale_up_tolerance", "scale_down_tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value < 1.0):
                raise InvalidPolicy(name, f"must be in [0, 1), not {value!r}")
        if not (
            self.panic_threshold == 0 or (math.isfinite(self.panic_threshold) and self.panic_threshold > 1)
        ):
            raise InvalidPolicy("panic_threshold", f"must be 0 (off) or > 1, not {self.panic_threshold!r}")
        if not (1 <= self.evaluation_interval_ms <= 3_600_000):
            raise InvalidPolicy(
                "evaluation_interval_ms", f"must be in [1, 3600000], not {self.evaluation_interval_ms}"
            )
        for name in (
            "scale_up_stabilization_ms",
            "scale_down_stabilization_ms",
            "panic_hold_ms",
            "prediction_horizon_ms",
            "season_ms",
        ):
            value = getattr(self, name)
            if not (0 <= value <= 7 * 86_400_000):
                raise InvalidPolicy(name, f"must be in [0, 604800000] (a week), not {value}")
        if not (1 <= self.stale_after_ms <= 3_600_000):
            raise InvalidPolicy("stale_after_ms", f"must be in [1, 3600000], not {self.stale_after_ms}")
        if self.prediction_steps > MAX_PREDICTION_STEPS:
            raise InvalidPolicy(
                "prediction_horizon_ms",
                f"looks {self.prediction_steps} evaluations ahead; at most {MAX_PREDICTION_STEPS}",
            )
        if self.season_samples > MAX_SEASON_SAMPLES:
            raise InvalidPolicy(
                "season_ms",
                f"is {self.season_samples} evaluations long; at most {MAX_SEASON_SAMPLES} "
                "(lengthen evaluation_interval_ms)",
            )
        for name in ("scale_up_limit", "scale_down_limit"):
            limit: RateLimit = getattr(self, name)
            if not (0 <= limit.replicas <= MAX_REPLICAS_LIMIT):
                raise InvalidPolicy(
                    f"{name}.replicas", f"must be in [0, {MAX_REPLICAS_LIMIT}], not {limit.replicas}"
                )
            if not (math.isfinite(limit.percent) and 0 <= limit.percent <= 10_000):
                raise InvalidPolicy(f"{name}.percent", f"must be in [0, 10000], not {limit.percent!r}")
            if not (0 <= limit.period_ms <= 3_600_000):
                raise InvalidPolicy(f"{name}.period_ms", f"must be in [0, 3600000], not {limit.period_ms}")


@dataclass(frozen=True)
class ReplicaLoad:
    """One counted replica (STARTING or READY; draining ones are not counted) as the rule sees it."""

    replica_id: str
    #: False while the replica is starting (not yet SERVING): HPA's "unready" pod.
    ready: bool
    #: Its last reported value of the policy's metric; None when missing (never reported, or stale).
    value: float | None


@dataclass(frozen=True)
class Decision:
    """One evaluation for one service, with every input and the reason."""

    service: str
    decided_ns: int
    action: Action
    current_replicas: int
    #: The rule's result (HPA tolerance and missing-metric rule, prediction) before stabilisation,
    #: rate limits and bounds.
    recommended_replicas: int
    desired_replicas: int
    metric: Metric
    #: Average of the reported values of ready replicas (0 when none reported).
    observed_value: float
    #: The per-replica value the forecast expects ``prediction_horizon_ms`` ahead (= observed when off).
    predicted_value: float
    prediction_horizon_ms: int
    target_value: float
    reason: str
    #: Knative's panic mode was on for this decision.
    panic: bool = False
    #: What the count would be with the forecast applied (differs from desired only in forecast-only mode).
    forecast_replicas: int = 0
    forecast_only: bool = False
    #: The inputs: each counted replica's load.
    loads: tuple[ReplicaLoad, ...] = ()


@dataclass
class ScalingMemory:
    """What the rule remembers about one service between evaluations (bounded, see module doc)."""

    #: (time, recommendation) of past evaluations, for the stabilisation windows.
    recommendations: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=MAX_RECOMMENDATIONS))
    #: (time, change in replicas) of applied scalings, for the rate limits.
    scale_events: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=MAX_SCALE_EVENTS))
    #: No scale-down before this time (a panic is being held).
    panic_until_ns: int = 0
    #: Until this time, replicas already running (started outside the scaler, e.g. by
    #: ``hftgate up``) may not have reported yet: min_replicas is not enforced, so an empty or
    #: short service is not filled with replicas it already has. Load-driven changes still apply.
    discovering_until_ns: int = 0
    forecaster: HoltWinters | None = None
    #: The settings the forecaster was made with (a policy change remakes it).
    forecaster_settings: ForecastSettings | None = None

    def record_scaling(self, now_ns: int, change: int) -> None:
        """Note that the backend carried out a change of ``change`` replicas at ``now_ns``."""
        if change:
            self.scale_events.append((now_ns, change))


# --- the HPA rule ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HpaResult:
    replicas: int
    #: The usage ratio of the reported values alone.
    ratio: float
    #: The ratio after the missing-metric rule (= ratio when nothing was missing).
    adjusted_ratio: float
    note: str


def _in_band(ratio: float, up_tolerance: float, down_tolerance: float) -> bool:
    return 1.0 - down_tolerance <= ratio <= 1.0 + up_tolerance


def hpa_recommendation(
    loads: Sequence[ReplicaLoad], target: float, up_tolerance: float, down_tolerance: float
) -> HpaResult:
    """HPA's ``calcPlainMetricReplicas`` (see the module docstring); ``loads`` are the counted replicas."""
    current = len(loads)
    reported = [load.value for load in loads if load.ready and load.value is not None]
    if not reported:
        return HpaResult(current, 0.0, 0.0, "no replica has reported a fresh metric: holding")
    missing = sum(1 for load in loads if load.ready and load.value is None)
    unready = sum(1 for load in loads if not load.ready)
    ratio = sum(reported) / len(reported) / target
    if missing == 0 and (unready == 0 or ratio <= 1.0):
        if _in_band(ratio, up_tolerance, down_tolerance):
            return HpaResult(current, ratio, ratio, "within tolerance")
        return HpaResult(math.ceil(ratio * len(reported)), ratio, ratio, "")
    values = list(reported)
    notes = []
    if missing:
        fill = target if ratio < 1.0 else 0.0
        values += [fill] * missing
        notes.append(f"{missing} missing counted at {'100' if ratio < 1.0 else '0'}% of target")
    if ratio > 1.0 and unready:
        values += [0.0] * unready
        notes.append(f"{unready} starting counted at 0%")
    adjusted = sum(values) / len(values) / target
    note = ", ".join(notes)
    if (
        _in_band(adjusted, up_tolerance, down_tolerance)
        or (ratio < 1.0 and adjusted > 1.0)
        or (ratio > 1.0 and adjusted < 1.0)
    ):
        return HpaResult(current, ratio, adjusted, f"{note}: ratio {adjusted:.3g} holds")
    replicas = math.ceil(adjusted * len(values))
    if (adjusted < 1.0 and replicas > current) or (adjusted > 1.0 and replicas < current):
        return HpaResult(current, ratio, adjusted, f"{note}: would change direction, holding")
    return HpaResult(replicas, ratio, adjusted, note)


# --- stabilisation and rate limits ----------------------------------------------------------------
def stabilize(
    recommendation: int,
    current: int,
    recommendations: Sequence[tuple[int, int]],
    now_ns: int,
    up_window_ms: int,
    down_window_ms: int,
) -> int:
    """HPA's ``stabilizeRecommendationWithBehaviors``: ``recommendations`` are the earlier ones."""
    up = down = recommendation
    up_cutoff = now_ns - up_window_ms * NS_PER_MS
    down_cutoff = now_ns - down_window_ms * NS_PER_MS
    for when, value in recommendations:
        if when > up_cutoff:
            up = min(up, value)
        if when > down_cutoff:
            down = max(down, value)
    result = current
    if result < up:
        result = up
    if result > down:
        result = down
    return result


def _change_in_period(events: Sequence[tuple[int, int]], now_ns: int, period_ms: int, sign: int) -> int:
    cutoff = now_ns - period_ms * NS_PER_MS
    return sum(abs(change) for when, change in events if when > cutoff and (change > 0) == (sign > 0))


def rate_limited(
    desired: int, current: int, events: Sequence[tuple[int, int]], now_ns: int, up: RateLimit, down: RateLimit
) -> tuple[int, str]:
    """``desired`` within the per-direction rate limits (HPA's ``convertDesiredReplicasWithBehaviorRate``)."""
    if desired > current and up.period_ms > 0:
        added = _change_in_period(events, now_ns, up.period_ms, +1)
        removed = _change_in_period(events, now_ns, up.period_ms, -1)
        start = current - added + removed
        limit = max(start + up.replicas, math.ceil(start * (1 + up.percent / 100.0)))
        limit = max(limit, current)
        if desired > limit:
            return limit, f"scale-up rate limit {limit} (from {start} in {up.period_ms} ms)"
    elif desired < current and down.period_ms > 0:
        added = _change_in_period(events, now_ns, down.period_ms, +1)
        removed = _change_in_period(events, now_ns, down.period_ms, -1)
        start = current - added + removed
        limit = min(start - down.replicas, math.floor(start * (1 - down.percent / 100.0)))
        limit = min(limit, current)
        if desired < limit:
            return limit, f"scale-down rate limit {limit} (from {start} in {down.period_ms} ms)"
    return desired, ""


# --- the whole decision -----------------------------------------------------------------------------
def _forecaster(policy: Policy, memory: ScalingMemory) -> HoltWinters | None:
    if policy.prediction_horizon_ms <= 0:
        memory.forecaster = memory.forecaster_settings = None
        return None
    settings = ForecastSettings(season_samples=policy.season_samples)
    if memory.forecaster is None or memory.forecaster_settings != settings:
        memory.forecaster = HoltWinters(settings)
        memory.forecaster_settings = settings
    return memory.forecaster


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def decide(now_ns: int, policy: Policy, loads: Sequence[ReplicaLoad], memory: ScalingMemory) -> Decision:
    """Evaluate the rule once for ``policy.service`` (see the module docstring).

    ``loads`` are the service's counted replicas (STARTING and READY). ``memory`` gains this
    evaluation's recommendation and forecaster observation; call ``memory.record_scaling`` once the
    backend has carried a change out (the rate limits count applied changes only).
    """
    current = len(loads)
    metric = policy.metric.value
    target = policy.target_value
    reported = [load.value for load in loads if load.ready and load.value is not None]
    observed = sum(reported) / len(reported) if reported else 0.0
    ready = sum(1 for load in loads if load.ready)

    # Prediction: forecast the total (or, for latency, the average) and express it per replica.
    model = _forecaster(policy, memory)
    predicted = observed
    forecast_replicas_raw = 0
    if model is not None and reported:
        total = observed * ready if policy.metric.is_conserved else observed
        model.update(total)
        expected = model.forecast(policy.prediction_steps)
        if policy.metric.is_conserved:
            predicted = expected / current if current else 0.0
            needed = expected / target
        else:
            predicted = expected
            needed = current * expected / target
        if needed / max(current, 1) > 1.0 + policy.up_tolerance:
            forecast_replicas_raw = math.ceil(needed)

    parts: list[str] = []
    discovering = now_ns < memory.discovering_until_ns
    discovery_left_ms = (memory.discovering_until_ns - now_ns) // NS_PER_MS if discovering else 0
    if current == 0 and discovering:
        hpa = HpaResult(0, 0.0, 0.0, "no replicas")
        parts.append(
            f"no replica has reported yet: waiting {discovery_left_ms} ms more for running ones "
            f"before starting min_replicas {policy.min_replicas}"
        )
    elif current == 0:
        hpa = HpaResult(policy.min_replicas, 0.0, 0.0, "no replicas")
        parts.append(f"no replicas: start min_replicas {policy.min_replicas}")
    else:
        hpa = hpa_recommendation(loads, target, policy.up_tolerance, policy.down_tolerance)
        formula = f"ceil({len(reported)} * {_fmt(observed)} / {_fmt(target)})"
        parts.append(f"{metric} {_fmt(observed)} vs target {_fmt(target)} on {current} replicas")
        if hpa.note:
            parts.append(f"{formula}: {hpa.note}" if hpa.note != "within tolerance" else "within tolerance")
        else:
            parts.append(f"{formula} = {hpa.replicas}")
    observed_recommendation = hpa.replicas
    forecast_recommendation = max(observed_recommendation, forecast_replicas_raw)
    if model is not None:
        parts.append(
            f"predicted {_fmt(predicted)} in {policy.prediction_horizon_ms} ms"
            + (f" needs {forecast_replicas_raw}" if forecast_replicas_raw else "")
        )
    use_forecast = model is not None and not policy.forecast_only
    recommended = forecast_recommendation if use_forecast else observed_recommendation

    # Panic: the observed ratio at or above the threshold scales up at once.
    panic = False
    if policy.panic_threshold and current and hpa.ratio >= policy.panic_threshold:
        panic = True
        memory.panic_until_ns = now_ns + policy.panic_hold_ms * NS_PER_MS
        parts.append(f"panic: ratio {_fmt(hpa.ratio)} >= {_fmt(policy.panic_threshold)}")

    def settle(recommendation: int) -> tuple[int, list[str]]:
        notes: list[str] = []
        if current == 0:
            value = recommendation
        elif panic:
            value = max(recommendation, current)
        else:
            value = stabilize(
                recommendation,
                current,
                memory.recommendations,
                now_ns,
                policy.scale_up_stabilization_ms,
                policy.scale_down_stabilization_ms,
            )
            if value != recommendation:
                notes.append(f"stabilised to {value}")
            if value < current and now_ns < memory.panic_until_ns:
                value = current
                notes.append("panic held: no scale-down")
            limited, why = rate_limited(
                value, current, memory.scale_events, now_ns, policy.scale_up_limit, policy.scale_down_limit
            )
            if why:
                notes.append(why)
            value = limited
        # While discovering, the floor is what already runs: the replicas that have not reported
        # yet are probably running, and min_replicas would start their twins.
        floor = min(policy.min_replicas, max(value, current)) if discovering else policy.min_replicas
        clamped = min(max(value, floor), policy.max_replicas)
        if clamped != value:
            bound = "max_replicas" if clamped < value else "min_replicas"
            notes.append(f"clamped to {bound} {clamped}")
        elif discovering and current and value < policy.min_replicas:
            notes.append(f"min_replicas {policy.min_replicas} waits {discovery_left_ms} ms for reports")
        return clamped, notes

    desired, notes = settle(recommended)
    forecast_desired = desired
    if model is not None and policy.forecast_only:
        forecast_desired, _ = settle(forecast_recommendation)
        if forecast_desired != desired:
            parts.append(f"forecast-only: prediction would set {forecast_desired}")
    memory.recommendations.append((now_ns, recommended))
    parts.extend(notes)
    action = (
        Action.HOLD if desired == current else (Action.SCALE_UP if desired > current else Action.SCALE_DOWN)
    )
    parts.append(f"-> {desired}")
    return Decision(
        service=policy.service,
        decided_ns=now_ns,
        action=action,
        current_replicas=current,
        recommended_replicas=recommended,
        desired_replicas=desired,
        metric=policy.metric,
        observed_value=observed,
        predicted_value=predicted,
        prediction_horizon_ms=policy.prediction_horizon_ms if model is not None else 0,
        target_value=target,
        reason="; ".join(parts),
        panic=panic,
        forecast_replicas=forecast_desired,
        forecast_only=policy.forecast_only and model is not None,
        loads=tuple(loads),
    )
