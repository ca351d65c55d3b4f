"""Benchmark: the cache service's near cache, and a Get through a real cache-service process.

In process (same trace, same run, for every policy):

- A Zipf(s) trace over ``keys`` keys (ranks shuffled onto key names), ``reads`` reads and
  ``write_percent`` % writes among all operations. A read that misses loads the key
  (puts it), as a read-through cache does; a write puts it.
- ``l1_hit_ratio``: services.cache.l1.NearCache (the L1 the client and the service use),
  capacity ``capacity_percent`` % of the keys; ``lru_l1_hit_ratio``: a plain LRU of the
  same capacity; ``theine_l1_hit_ratio``: the ``theine`` library's cache (W-TinyLFU with a
  Rust core) of the same capacity; ``topk_l1_hit_ratio``: the share of reads that go to
  the trace's most frequent ``capacity`` keys, what a perfect static cache would get.
- ``l1_get_p99_us``: 99th percentile of one NearCache.get on that trace (hits and
  misses), timer included.

Through real processes (``remote=True``): a cache-service process (``python -m
services.cache``) on a real Redis (``redis_url``, or a redis-server this benchmark starts
on a free port) and SQLite in a temporary directory; a CacheClient in this process.

- ``remote_get_p50_ms`` / ``remote_get_p99_ms``: sequential Gets of keys written through
  the service beforehand (so they live in Redis and in the service's own L1), bypassing
  the calling client's near cache.
- ``remote_get_redis_p50_ms``: the same, from a second service process started with its
  own L1 disabled, so every Get reads Redis.
- ``grpc_echo_p50_ms``, ``tcp_floor_p50_ms``: the floors (hftgate.bench.floors), same run.
- ``remote_get_over_echo``: remote_get_p50_ms / grpc_echo_p50_ms.

On the real order path (``remote=True``): an execution-service process reading its reference
data (instruments, accounts, API keys) through a third cache-service process (its embedded
CacheClient and near cache) takes a replayed order flow, the recorded CME E-mini order-by-order
day (:func:`hftgate.bench.execution.replayed_mbo_messages`: adds, cancels, modifies and trades,
spread over the four demo accounts, one OrderStream each).

- ``order_path_hit_ratio``: from the execution service's own GetStats afterwards, the share of
  its order-path lookups answered without reading SQL; ``order_path_lookups`` and
  ``order_path_sql_lookups`` are the counts behind it, ``order_path_inputs`` the inputs replayed.

Every figure is the median over ``repeats`` rounds (new trace seed per round).
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hftgate.bench import floors
from hftgate.bench.execution import ExecutionProcess, drive_stream, replayed_mbo_messages, run_prefix
from hftgate.native.histogram import LatencyHistogram
from hftgate.security import load_suite_secret
from hftgate.supervisor import wait_until_serving
from services.cache.client import CacheClient
from services.cache.embedded_redis import EmbeddedRedis
from services.cache.l1 import NearCache

VALUE = b"v" * 64


@dataclass(frozen=True)
class Trace:
    """A Zipf trace: ``ops[i]`` is a key name, ``is_write[i]`` whether it is a write."""

    ops: list[str]
    is_write: list[bool]
    topk_hit_ratio: float
    reads: int


def zipf_trace(keys: int, reads: int, write_percent: float, capacity: int, s: float, seed: int) -> Trace:
    """Draw a Zipf(s) trace over ``keys`` keys with ``reads`` reads and ``write_percent`` % writes."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, keys + 1, dtype=np.float64) ** s
    weights /= weights.sum()
    n_ops = round(reads / (1.0 - write_percent / 100.0))
    ranks = rng.choice(keys, size=n_ops, p=weights)
    is_write = rng.random(n_ops) < write_percent / 100.0
    key_ids = rng.permutation(keys)[ranks]  # hot keys are not the first names
    read_counts = np.bincount(key_ids[~is_write], minlength=keys)
    read_counts.sort()
    n_reads = int(read_counts.sum())
    topk = float(read_counts[-capacity:].sum()) / n_reads
    names = [f"instrument:{i:07d}" for i in range(keys)]
    return Trace([names[i] for i in key_ids.tolist()], is_write.tolist(), topk, n_reads)


def near_cache_hit_ratio(trace: Trace, capacity: int) -> tuple[float, float]:
    """Hit ratio of NearCache on ``trace`` and the p99 of one get, in microseconds."""
    cache = NearCache(capacity, 1 << 40)
    hist = LatencyHistogram()
    record = hist.record
    clock = time.perf_counter_ns
    get = cache.get
    put = cache.put
    hits = 0
    for key, write in zip(trace.ops, trace.is_write, strict=True):
        if write:
            put(key, VALUE)
            continue
        start = clock()
        entry = get(key)
        record(clock() - start)
        if entry is None:
            put(key, VALUE)
        else:
            hits += 1
    p99_us = hist.percentile(99.0) / 1000.0
    hist.close()
    return hits / trace.reads, p99_us


def lru_hit_ratio(trace: Trace, capacity: int) -> float:
    """Hit ratio of a plain LRU (an OrderedDict) of ``capacity`` entries on ``trace``."""
    cache: OrderedDict[str, bytes] = OrderedDict()
    hits = 0
    for key, write in zip(trace.ops, trace.is_write, strict=True):
        if not write and key in cache:
            cache.move_to_end(key)
            hits += 1
            continue
        cache[key] = VALUE
        cache.move_to_end(key)
        if len(cache) > capacity:
            cache.popitem(last=False)
    return hits / trace.reads


def theine_hit_ratio(trace: Trace, capacity: int) -> float:
    """Hit ratio of the ``theine`` library's cache of ``capacity`` entries on ``trace``."""
    import theine

    cache: theine.Cache[str, bytes] = theine.Cache(capacity)
    hits = 0
    for key, write in zip(trace.ops, trace.is_write, strict=True):
        if write:
            cache.set(key, VALUE)
            continue
        _, found = cache.get(key)
        if found:
            hits += 1
        else:
            cache.set(key, VALUE)
    cache.close()
    return hits / trace.reads


def run_near_cache(
    *,
    keys: int = 1_000_000,
    reads: int = 2_000_000,
    write_percent: float = 5.0,
    capacity_percent: float = 5.0,
    zipf_s: float = 0.99,
    repeats: int = 3,
    seed: int = 20240601,
) -> dict[str, float]:
    """The in-process half of :func:`run`."""
    capacity = int(keys * capacity_percent / 100.0)
    samples: dict[str, list[float]] = {
        "l1_hit_ratio": [],
        "lru_l1_hit_ratio": [],
        "theine_l1_hit_ratio": [],
        "topk_l1_hit_ratio": [],
        "l1_get_p99_us": [],
    }
    for round_ in range(max(1, repeats)):
        trace = zipf_trace(keys, reads, write_percent, capacity, zipf_s, seed + round_)
        ratio, p99_us = near_cache_hit_ratio(trace, capacity)
        samples["l1_hit_ratio"].append(ratio)
        samples["l1_get_p99_us"].append(p99_us)
        samples["lru_l1_hit_ratio"].append(lru_hit_ratio(trace, capacity))
        samples["theine_l1_hit_ratio"].append(theine_hit_ratio(trace, capacity))
        samples["topk_l1_hit_ratio"].append(trace.topk_hit_ratio)
    return {name: statistics.median(values) for name, values in samples.items()}


@contextmanager
def cache_service_process(
    state_dir: Path, redis_url: str, *, suite_state_dir: Path | None = None, **settings: str
) -> Iterator[int]:
    """Run ``python -m services.cache`` on a free port; yield the port; SIGTERM it afterwards.
    ``suite_state_dir``: the suite state directory whose secret it shares with the other services
    of the run (else the environment's or the default one's)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "service.log"
    env = dict(
        os.environ,
        HFTGATE_CACHE_PORT="0",
        HFTGATE_CACHE_REDIS_URL=redis_url,
        HFTGATE_CACHE_STATE_DIR=str(state_dir),
        **{f"HFTGATE_CACHE_{name.upper()}": value for name, value in settings.items()},
    )
    if suite_state_dir is not None:
        env["HFTGATE_STATE_DIR"] = str(suite_state_dir)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "services.cache"], env=env, stderr=log_file)
    try:
        deadline = time.monotonic() + 30
        while True:
            # The port it bound (port 0: no port chosen here can be taken meanwhile), then ready as
            # the supervisor judges a service: SERVING on grpc.health.v1.
            match = re.search(rb"listening on [\d.]+:(\d+)", log_path.read_bytes())
            if match and wait_until_serving(f"127.0.0.1:{int(match.group(1))}", 0.5):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cache service did not start; its log:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield int(match.group(1))
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _remote_get_ns(client: CacheClient, keys: list[str], samples: int, offset: int = 0) -> np.ndarray:
    """Sequential Gets through ``client`` that skip its near cache, in ns each."""
    out = np.empty(samples, dtype=np.int64)
    for i in range(samples):
        key = keys[(offset + i) % len(keys)]
        start = time.perf_counter_ns()
        entry = await client.get_entry(key, near_cache=False)
        out[i] = time.perf_counter_ns() - start
        if entry is None:
            raise RuntimeError(f"benchmark key {key!r} vanished from the cache service")
    return out


async def _measure_remote(
    service_port: int, no_l1_port: int, echo_target: str, tcp_target: str, samples: int, repeats: int
) -> dict[str, float]:
    """Per run: blocks of echo, Get, Get-from-Redis and TCP round trips, interleaved, so every
    figure and its floors share the machine's noise."""
    keys = [f"instrument:{i:05d}" for i in range(2000)]
    figures: dict[str, list[float]] = {
        name: [] for name in ("get_p50", "get_p99", "redis_p50", "echo_p50", "tcp_p50")
    }
    block = 100
    # The service and this process share the suite secret (HFTGATE_SUITE_SECRET, or its file under
    # the state directory); the benchmark writes instrument rows, which only the admin may.
    admin = load_suite_secret().service_credentials("admin")
    async with (
        CacheClient(f"127.0.0.1:{service_port}", watcher_name="bench", credentials=admin) as client,
        CacheClient(f"127.0.0.1:{no_l1_port}", watcher_name="bench-no-l1", credentials=admin) as no_l1,
        floors.GrpcEcho(echo_target) as echo,
    ):
        for start in range(0, len(keys), 500):
            await client.set_many([(key, VALUE * 4) for key in keys[start : start + 500]])
        with floors.TcpPingPong(tcp_target) as tcp:
            # Warm up every path (connections, the service's L1) before measuring.
            await _remote_get_ns(client, keys, len(keys))
            await _remote_get_ns(no_l1, keys, 500)
            await echo.round_trips_ns(500)
            tcp.round_trips_ns(500)
            for _ in range(max(1, repeats)):
                parts: dict[str, list[np.ndarray]] = {"echo": [], "get": [], "redis": [], "tcp": []}
                for offset in range(0, samples, block):
                    parts["echo"].append(await echo.round_trips_ns(block))
                    parts["get"].append(await _remote_get_ns(client, keys, block, offset))
                    parts["redis"].append(await _remote_get_ns(no_l1, keys, block, offset))
                    parts["tcp"].append(tcp.round_trips_ns(block))
                trips = {name: np.concatenate(arrays) for name, arrays in parts.items()}
                figures["echo_p50"].append(float(np.median(trips["echo"])) / 1e6)
                figures["get_p50"].append(float(np.median(trips["get"])) / 1e6)
                figures["get_p99"].append(float(np.percentile(trips["get"], 99)) / 1e6)
                figures["redis_p50"].append(float(np.median(trips["redis"])) / 1e6)
                figures["tcp_p50"].append(float(np.median(trips["tcp"])) / 1e6)
    return {name: statistics.median(values) for name, values in figures.items()}


def run_remote(*, samples: int = 3000, repeats: int = 3, redis_url: str | None = None) -> dict[str, float]:
    """The through-real-processes half of :func:`run`."""
    with tempfile.TemporaryDirectory(prefix="hftgate-bench-cache-") as tmp:
        root = Path(tmp)
        redis = None
        if redis_url is None:
            redis = EmbeddedRedis(root / "redis")
            redis.start()
            redis_url = redis.url
        try:
            with (
                cache_service_process(root / "service", redis_url, key_prefix="bench:") as port,
                cache_service_process(
                    root / "no-l1", redis_url, key_prefix="bench:", l1_max_entries="0"
                ) as no_l1,
                floors.floor_server("grpc") as echo_target,
                floors.floor_server("tcp") as tcp_target,
            ):
                figures = asyncio.run(_measure_remote(port, no_l1, echo_target, tcp_target, samples, repeats))
        finally:
            if redis is not None:
                redis.stop()
    return {
        "remote_get_p50_ms": figures["get_p50"],
        "remote_get_p99_ms": figures["get_p99"],
        "remote_get_redis_p50_ms": figures["redis_p50"],
        "grpc_echo_p50_ms": figures["echo_p50"],
        "tcp_floor_p50_ms": figures["tcp_p50"],
        "remote_get_over_echo": figures["get_p50"] / figures["echo_p50"],
    }


async def _replay_through_execution(execution: ExecutionProcess, window_inputs: int) -> dict[str, float]:
    import grpc

    from hftgate.v1 import execution_pb2, execution_pb2_grpc

    messages = replayed_mbo_messages(prefix=run_prefix())
    async with grpc.aio.insecure_channel(execution.address) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        await asyncio.gather(
            *(
                drive_stream(stub, execution.account(name), account_messages, window_inputs=window_inputs)
                for name, account_messages in messages.items()
            )
        )
        stats = await stub.GetStats(execution_pb2.GetStatsRequest(), metadata=execution.admin_metadata())
    return {
        "order_path_hit_ratio": stats.order_path_hit_ratio,
        "order_path_lookups": stats.reference_lookups,
        "order_path_sql_lookups": stats.reference_sql_lookups,
        "order_path_inputs": sum(len(m.inputs) for account in messages.values() for m in account),
    }


def run_order_path(*, redis_url: str | None = None, window_inputs: int = 1_000) -> dict[str, float]:
    """The order-path third of :func:`run`: execution service -> cache service -> Redis / SQL."""
    with tempfile.TemporaryDirectory(prefix="hftgate-bench-order-path-") as tmp:
        root = Path(tmp)
        redis = None
        if redis_url is None:
            redis = EmbeddedRedis(root / "redis")
            redis.start()
            redis_url = redis.url
        try:
            # One suite secret for both (the execution process's state directory holds it): the
            # execution service's token must be valid at the cache.
            suite_dir = root / "execution"
            with cache_service_process(
                root / "cache", redis_url, suite_state_dir=suite_dir, key_prefix="bench-order-path:"
            ) as port:
                execution = ExecutionProcess(suite_dir, {"cache_address": f"127.0.0.1:{port}"})
                with execution:
                    execution.start()
                    figures = asyncio.run(_replay_through_execution(execution, window_inputs))
        finally:
            if redis is not None:
                redis.stop()
    return figures


def run(
    *,
    keys: int = 1_000_000,
    reads: int = 2_000_000,
    write_percent: float = 5.0,
    capacity_percent: float = 5.0,
    zipf_s: float = 0.99,
    repeats: int = 3,
    remote: bool = True,
    remote_samples: int = 3000,
    redis_url: str | None = None,
) -> dict[str, float | int | bool]:
    """Run the benchmark; see the module docstring for what each figure means."""
    result: dict[str, float | int | bool] = {}
    result.update(
        run_near_cache(
            keys=keys,
            reads=reads,
            write_percent=write_percent,
            capacity_percent=capacity_percent,
            zipf_s=zipf_s,
            repeats=repeats,
        )
    )
    result["l1_vs_topk"] = result["l1_hit_ratio"] / result["topk_l1_hit_ratio"]
    if remote:
        result.update(run_remote(samples=remote_samples, repeats=repeats, redis_url=redis_url))
        result.update(run_order_path(redis_url=redis_url))
    return result


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name:28s} {value}")
