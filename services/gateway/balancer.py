"""Which replica of a stateless service (market data, cache) gets the next call: no gRPC import.

Each replica is an :class:`Endpoint` with what the balancer knows of it: its health (from the
replica's own ``grpc.health.v1`` Watch), whether it is draining (its replica source says so),
whether it was ejected after a transport failure, the calls in flight on it, and a peak-EWMA of
its latency. :class:`Balancer` picks among the *eligible* ones (SERVING, not draining, not
ejected; while none has answered its health watch yet, those not known to be unhealthy).

Algorithms (``GatewayConfig.balancer``):

* ``p2c_peak_ewma`` (the default): power of two choices, two eligible replicas drawn at random
  and the one of lower cost kept, cost = (calls in flight + 1) x peak-EWMA latency (Finagle's
  "P2C + peak EWMA"). The EWMA jumps to a slower observation at once and decays towards faster
  ones, and towards zero while a replica is not observed, so a replica that was slow is tried
  again after a while instead of never. It reacts to slowness even with one call in flight,
  where counting calls in flight alone cannot tell replicas apart. The decay runs on *busy*
  time: a stretch in which the balancer sees no call counts for at most :data:`IDLE_CAP_MS`.
  Decaying on wall time, a pause in traffic made every replica look alike again (all decayed
  towards zero by the same factor); the first calls after it then re-measured the fast replicas
  first and sent a burst to the slow one, which still looked cheap (``bench gateway``'s balancing
  p99 fell either side of its bar from that alone).
* ``p2c_inflight``: power of two choices on calls in flight only (least outstanding requests).
* ``round_robin``: each eligible replica in turn (the baseline the benchmark compares with).

``hftgate bench gateway`` measures the three with one replica of three slowed by 5 ms per call.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence

ALGORITHMS: tuple[str, ...] = ("p2c_peak_ewma", "p2c_inflight", "round_robin")
DEFAULT_ALGORITHM = "p2c_peak_ewma"
#: The most a stretch with no call counts towards the peak-EWMA's decay (see the module docstring).
IDLE_CAP_MS = 100.0


class Endpoint:
    """One replica as the balancer sees it. ``serving`` is None until its first health answer."""

    __slots__ = (
        "_ewma_ns",
        "_stamp_ns",
        "address",
        "calls",
        "draining",
        "ejected_until_ns",
        "failures",
        "inflight",
        "serving",
    )

    def __init__(self, address: str, *, draining: bool = False) -> None:
        self.address = address
        self.serving: bool | None = None
        self.draining = draining
        self.ejected_until_ns = 0
        self.inflight = 0
        #: Calls started on this replica, and of them those that failed in transport.
        self.calls = 0
        self.failures = 0
        self._ewma_ns = 0.0
        self._stamp_ns = 0

    def eligible(self, now_ns: int) -> bool:
        """Whether new calls may go here: SERVING, not draining, not ejected."""
        return self.serving is True and not self.draining and now_ns >= self.ejected_until_ns

    def maybe_eligible(self, now_ns: int) -> bool:
        """Not known to be unusable (health not answered yet): the fallback while none is SERVING."""
        return self.serving is None and not self.draining and now_ns >= self.ejected_until_ns

    def latency_ns(self, now_ns: int, decay_ns: float) -> float:
        """The peak-EWMA latency, decayed towards zero for the time since it was last updated
        (``now_ns`` on the balancer's busy clock, :meth:`Balancer.busy_ns`)."""
        self._observe(0.0, now_ns, decay_ns)
        return self._ewma_ns

    def _observe(self, rtt_ns: float, now_ns: int, decay_ns: float) -> None:
        if rtt_ns > self._ewma_ns:
            self._ewma_ns = rtt_ns  # the peak: slowness counts at once
        else:
            elapsed = max(now_ns - self._stamp_ns, 0)
            weight = math.exp(-elapsed / decay_ns)
            self._ewma_ns = self._ewma_ns * weight + rtt_ns * (1.0 - weight)
        self._stamp_ns = now_ns

    def cost(self, now_ns: int, decay_ns: float) -> float:
        return (self.inflight + 1) * (self.latency_ns(now_ns, decay_ns) + 1.0)

    def __repr__(self) -> str:
        return (
            f"Endpoint({self.address}, serving={self.serving}, draining={self.draining}, "
            f"inflight={self.inflight})"
        )


class Balancer:
    """Picks an endpoint by one of :data:`ALGORITHMS` and keeps the endpoints' statistics.

    ``clock_ns`` and ``rng`` are injectable for tests."""

    def __init__(
        self,
        algorithm: str = DEFAULT_ALGORITHM,
        *,
        decay_ms: float = 1_000.0,
        eject_ms: float = 1_000.0,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        rng: random.Random | None = None,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown balancer {algorithm!r}: choose from {', '.join(ALGORITHMS)}")
        if decay_ms <= 0 or eject_ms < 0:
            raise ValueError("the balancer's decay must be > 0 ms and its ejection >= 0 ms")
        self.algorithm = algorithm
        self.decay_ns = decay_ms * 1e6
        self.eject_ns = int(eject_ms * 1e6)
        self.clock_ns = clock_ns
        self._rng = rng or random.Random()
        self._next = 0
        #: Busy time (ns): the clock's time with each call-less stretch cut to IDLE_CAP_MS.
        self._busy_ns = 0
        self._seen_ns = clock_ns()
        self._idle_cap_ns = int(IDLE_CAP_MS * 1e6)

    def busy_ns(self) -> int:
        """The busy clock the peak-EWMA decays on (see the module docstring)."""
        now = self.clock_ns()
        gap = now - self._seen_ns
        if gap > 0:
            self._busy_ns += min(gap, self._idle_cap_ns)
            self._seen_ns = now
        return self._busy_ns

    def candidates(self, endpoints: Sequence[Endpoint], exclude: Endpoint | None = None) -> list[Endpoint]:
        """The endpoints a call may go to now (see the module docstring), less ``exclude``."""
        now = self.clock_ns()
        ready = [e for e in endpoints if e is not exclude and e.eligible(now)]
        if ready:
            return ready
        return [e for e in endpoints if e is not exclude and e.maybe_eligible(now)]

    def pick(self, endpoints: Sequence[Endpoint], exclude: Endpoint | None = None) -> Endpoint | None:
        """The endpoint for the next call, or None when none may take it."""
        found = self.candidates(endpoints, exclude)
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        if self.algorithm == "round_robin":
            self._next += 1
            return found[self._next % len(found)]
        first, second = self._rng.sample(found, 2)
        if self.algorithm == "p2c_inflight":
            if first.inflight == second.inflight:
                return first  # already a random one of the two
            return first if first.inflight < second.inflight else second
        busy = self.busy_ns()
        return first if first.cost(busy, self.decay_ns) <= second.cost(busy, self.decay_ns) else second

    def started(self, endpoint: Endpoint) -> int:
        """A call starts on ``endpoint``; returns its start time for :meth:`finished`."""
        endpoint.inflight += 1
        endpoint.calls += 1
        self.busy_ns()  # (a call is activity: the stretch before it ends here)
        return self.clock_ns()

    def finished(self, endpoint: Endpoint, started_ns: int, *, transport_failure: bool = False) -> None:
        """A call that :meth:`started` ended. A transport failure (the replica could not be
        reached or broke the call) ejects the replica for ``eject_ms`` and counts as slow."""
        endpoint.inflight = max(0, endpoint.inflight - 1)
        now = self.clock_ns()
        rtt = float(max(now - started_ns, 0))
        if transport_failure:
            endpoint.failures += 1
            endpoint.ejected_until_ns = now + self.eject_ns
            rtt = max(rtt, float(self.eject_ns))
        endpoint._observe(rtt, self.busy_ns(), self.decay_ns)
