"""CPU placement of a service's latency-critical threads: the event loop and a helper thread.

Why: the execution service acknowledges an order only after its journal record is on disk.
The loop hands the record to the journal's C writer thread, matches the order while the
writer runs ``write`` + ``fdatasync``, then waits to be woken. Left to the scheduler, the
writer is often woken onto the loop's own CPU (the loop is about to sleep, so that looks
cheap), and the two then take turns instead of overlapping. Measured through the real
service on the 2-vCPU VM (``hftgate bench execution``, same runs): a SubmitOrder took
~80 µs less at the median with the loop and the writer on different CPUs; putting only
one of them in place gained nothing. The LMAX single-writer design says the same:
a thread per hot role, each on its own core.

A placement is a CPU list per role, each one of:

- ``auto`` (the default): when the process may use at least two CPUs, the helper (journal
  writer) gets the highest-numbered one and the event loop all the others; with a single
  CPU, or under a CPU quota (a Kubernetes CPU limit, ``docker run --cpus``: CPUs shared
  with others), nothing is pinned;
- ``off``: leave the thread where the scheduler puts it;
- an explicit list in the kernel's notation, e.g. ``2`` or ``0-3,6`` (it must be within
  the CPUs the process may use: ``taskset``, a container's cpuset).

Pinning the loop is done from the loop's thread and changes only that thread (and the
threads it starts later, which inherit its mask). Work the loop hands to its default
executor (``asyncio.to_thread``: snapshot writes, file work) should not crowd the loop's
CPUs, so :func:`pin_event_loop` gives the loop an executor whose threads may use every CPU
the process could use before.

Only a service's ``__main__`` applies a placement: a library call (tests, an embedding
process) never changes the affinity of the caller's threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

AUTO = "auto"
OFF = "off"


def parse_cpus(spec: str) -> frozenset[int]:
    """CPU numbers from the kernel's list notation (``0-3,6``); ValueError when malformed."""
    cpus: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(f"CPU list {spec!r}: {part!r} is not a CPU number or range") from None
        if first < 0 or last < first:
            raise ValueError(f"CPU list {spec!r}: {part!r} is not a valid range")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError(f"CPU list {spec!r} names no CPU")
    return frozenset(cpus)


def check_spec(spec: str) -> None:
    """Raise ValueError unless ``spec`` is ``auto``, ``off`` or a CPU list (for config loading)."""
    if spec.strip().lower() not in (AUTO, OFF):
        parse_cpus(spec)


@dataclass(frozen=True)
class Placement:
    """Where each role runs; None = not pinned."""

    loop: frozenset[int] | None
    helper: frozenset[int] | None

    @property
    def writer_apart(self) -> bool:
        """Whether the helper has CPUs the loop never runs on (both pinned, no CPU shared)."""
        return self.loop is not None and self.helper is not None and not (self.loop & self.helper)

    def describe(self) -> str:
        def show(cpus: frozenset[int] | None) -> str:
            return "any CPU" if cpus is None else "CPU " + ",".join(map(str, sorted(cpus)))

        return f"event loop on {show(self.loop)}, journal writer on {show(self.helper)}"


def plan(loop_spec: str, helper_spec: str, allowed: frozenset[int], *, cpu_quota: bool = False) -> Placement:
    """The placement for ``loop_spec`` / ``helper_spec`` given the CPUs the process may use.

    ``auto`` keeps the two roles apart: an ``auto`` role takes what the other role leaves
    (the helper the highest free CPU, the loop every free CPU), and is not pinned when
    nothing is left, nor under a CPU quota (``cpu_quota``: a container limited by CFS time
    rather than by a cpuset shares its CPUs with others, and a pinned thread could not move
    away from a busy one). Explicit lists outside ``allowed`` raise ValueError.
    """
    loop_spec, helper_spec = loop_spec.strip().lower(), helper_spec.strip().lower()
    if cpu_quota:
        loop_spec = OFF if loop_spec == AUTO else loop_spec
        helper_spec = OFF if helper_spec == AUTO else helper_spec
    explicit: dict[str, frozenset[int] | None] = {}
    for role, spec in (("loop", loop_spec), ("helper", helper_spec)):
        if spec in (AUTO, OFF):
            continue
        cpus = parse_cpus(spec)
        if not cpus <= allowed:
            outside = ",".join(map(str, sorted(cpus - allowed)))
            raise ValueError(f"{role} CPU list {spec!r}: CPU {outside} not available to this process")
        explicit[role] = cpus
    loop = explicit.get("loop")
    helper = explicit.get("helper")
    if helper_spec == AUTO and len(allowed) >= 2:
        free = allowed - (loop or frozenset())
        helper = frozenset({max(free)}) if free else None
    if loop_spec == AUTO and len(allowed) >= 2 and helper is not None:
        loop = (allowed - helper) or None
    return Placement(loop, helper)


def cpu_quota_limited(cgroup_root: Path = Path("/sys/fs/cgroup")) -> bool:
    """Whether this process's cgroup limits its CPU time by a quota (cgroup v2 ``cpu.max`` or
    v1 ``cpu.cfs_quota_us``), as a Kubernetes CPU limit or ``docker run --cpus`` does."""
    try:
        v2 = (cgroup_root / "cpu.max").read_text().split()
        return bool(v2) and v2[0] != "max"
    except OSError:
        pass
    try:
        return int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text()) > 0
    except (OSError, ValueError):
        return False


def allowed_cpus() -> frozenset[int]:
    """The CPUs this thread may run on now."""
    return frozenset(os.sched_getaffinity(0))


def pin_event_loop(loop: asyncio.AbstractEventLoop, cpus: frozenset[int]) -> None:
    """Pin the calling thread (the loop's) to ``cpus``; the loop's default executor keeps every
    CPU the thread could use before (its threads start unpinned from the loop's mask)."""
    before = allowed_cpus()
    os.sched_setaffinity(0, cpus)

    def widen() -> None:
        os.sched_setaffinity(0, before)

    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(thread_name_prefix="hft-background", initializer=widen)
    )


#: Threads of grpc's own that carry a call to the event loop: the event engine's pool (socket
#: I/O), its timer and lifeguard threads, and grpc.aio's completion-queue poller (a Python thread).
GRPC_THREAD_NAMES = ("event_engine", "grpc_global_tim", "lifeguard")
GRPC_POLLER_THREAD_SUFFIX = "(_poll_wrapper)"
#: Most passes pin_grpc_threads makes over the process's threads.
_PIN_PASSES = 5
#: apply() pins grpc's threads again this long after the first time.
REPIN_AFTER_S = 0.5


def pin_grpc_threads(cpus: frozenset[int]) -> int:
    """Move grpc's threads (see :data:`GRPC_THREAD_NAMES`) to ``cpus``; returns how many moved.

    A request reaches the loop in hops: socket -> event engine thread -> completion queue ->
    poller thread -> loop. With all of them on the loop's CPUs each hop wakes a thread on a
    busy CPU instead of an idle one, which on a VM costs an exit per wake-up. Measured with
    the journal writer alone on the other CPU of the 2-vCPU VM: SubmitOrder overhead 0.16-0.18
    ms with grpc's threads beside the loop, 0.20-0.22 ms with them free. Threads grpc starts
    later from these inherit their CPUs. Names are grpc's, not an API: an unknown name is
    simply not moved.
    """
    moved: set[int] = set()
    # Again until a pass finds nothing left to move: a thread that an unmoved grpc thread starts
    # during a pass inherits the old CPUs and may not be in that pass's listing (seen under load:
    # one event_engine thread of several left on every CPU).
    for _ in range(_PIN_PASSES):
        native_ids = {
            t.native_id for t in threading.enumerate() if t.name.endswith(GRPC_POLLER_THREAD_SUFFIX)
        }
        moved_now = 0
        for task in Path("/proc/self/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                tid = int(task.name)
                if (tid in native_ids or name.startswith(GRPC_THREAD_NAMES)) and os.sched_getaffinity(
                    tid
                ) != cpus:
                    os.sched_setaffinity(tid, cpus)
                    moved.add(tid)
                    moved_now += 1
            except (OSError, ValueError):
                continue  # the thread ended meanwhile
        if not moved_now:
            break
    return len(moved)


def apply(
    chosen: Placement, loop: asyncio.AbstractEventLoop, place_helper: Callable[[frozenset[int]], None]
) -> None:
    """Put the helper thread (through ``place_helper``) and, from the loop's thread, the loop with
    gRPC's threads where ``chosen`` says; a role that is None stays where it is."""
    if chosen.helper is not None:
        place_helper(chosen.helper)
    if chosen.loop is not None:
        pin_event_loop(loop, chosen.loop)
        pin_grpc_threads(chosen.loop)
        # Once more a little later: a grpc thread started at that moment by a thread not yet moved
        # can still escape every pass (seen in the parallel suite: one event_engine thread of four
        # left on every CPU); once all of grpc's threads are moved, those they start inherit.
        loop.call_later(REPIN_AFTER_S, pin_grpc_threads, chosen.loop)
