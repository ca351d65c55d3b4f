"""``hftgate bench matching``: throughput of the C matching engine against the pure-Python reference, and
how much of a real CME E-mini day's recorded fills the engine reproduces.

- ``orders_per_s``: commands per second through :meth:`MatchingEngine.process` (one Python->C call for
  the whole batch, events returned as a numpy array) on a seeded flow of ~60% limit orders, 30% cancels
  and 10% market orders (:func:`hftgate.matching.flows.benchmark_flow`); median of ``repeats`` runs,
  each on a fresh engine.
- ``reference_orders_per_s``: the same flow through :class:`ReferenceEngine` in the same run (its input
  converted to Python tuples beforehand, untimed); ``speedup`` is the ratio.
- ``fills_match_reference``: both produced exactly the same events (fills, acks, cancels, ...) and
  end with exactly the same books.
- ``mbo_fill_agreement``: the share of the exchange's recorded fill quantity that the engine filled
  against the same resting order at the same price when replaying every ``l3/`` E-mini MBO file
  (:mod:`hftgate.matching.mbo`), with ``mbo_orders_per_s`` the replay's throughput and
  ``mbo_fills_match_reference`` the reference's verdict on the same replay.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from hftgate.matching.engine import EngineConfig, MatchingEngine
from hftgate.matching.flows import benchmark_flow
from hftgate.matching.mbo import data_dir as default_data_dir
from hftgate.matching.mbo import fill_agreement, load_mbo, mbo_files
from hftgate.matching.reference import ReferenceEngine
from hftgate.matching.types import Side

DEFAULT_ORDERS = 400_000


def _same_books(engine: MatchingEngine, reference: ReferenceEngine, symbols: tuple[int, ...]) -> bool:
    return all(
        engine.orders(side, symbol=symbol, pending_stops=stops).tolist()
        == reference.orders_on(side, symbol=symbol, pending_stops=stops)
        for symbol in symbols
        for side in Side
        for stops in (False, True)
    )


def run(
    repeats: int = 3,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    orders: int = DEFAULT_ORDERS,
    seed: int = 7,
) -> dict[str, float | bool]:
    """Run the benchmark; ``data_dir`` defaults to $HFTGATE_DATA_DIR or <repo>/../shared/data."""
    if repeats < 1:
        raise ValueError(f"Cannot benchmark: repeats must be at least 1, got {repeats}")
    flow = benchmark_flow(orders, seed)
    config = EngineConfig(max_orders=orders + 16)

    # Each run starts from a fresh engine, built before the clock starts: only the batch call (and the
    # event array it returns) is timed.
    engine_durations = []
    for _ in range(repeats):
        engine = MatchingEngine(config)
        started = time.perf_counter()
        events = engine.process(flow)
        engine_durations.append(time.perf_counter() - started)

    rows = flow.tolist()  # the reference's natural input: converted once, untimed
    reference_durations = []
    for _ in range(repeats):
        reference = ReferenceEngine(config)
        started = time.perf_counter()
        reference_events = reference.process(rows)
        reference_durations.append(time.perf_counter() - started)

    engine_seconds = statistics.median(engine_durations)
    reference_seconds = statistics.median(reference_durations)
    fills_match = events.tolist() == reference_events and _same_books(engine, reference, (0,))

    agreement, mbo_rate, mbo_match = _replay_mbo(repeats, default_data_dir(data_dir))
    return {
        "orders": float(orders),
        "orders_per_s": orders / engine_seconds,
        "reference_orders_per_s": orders / reference_seconds,
        "speedup": reference_seconds / engine_seconds,
        "fills_match_reference": fills_match,
        "mbo_fill_agreement": agreement,
        "mbo_orders_per_s": mbo_rate,
        "mbo_fills_match_reference": mbo_match,
    }


def _replay_mbo(repeats: int, directory: Path) -> tuple[float, float, bool]:
    """(fill agreement, commands per second, reference agrees) over every MBO file in ``directory``."""
    paths = mbo_files(directory)
    if not paths:
        raise FileNotFoundError(
            f"Cannot replay MBO data: no {directory / 'l3'}/databento_glbx-mdp3_ES*_mbo_*.csv.gz; "
            "pass data_dir or set HFTGATE_DATA_DIR"
        )
    agreed = recorded = commands = 0
    seconds = 0.0
    reference_agrees = True
    for path in paths:
        replay = load_mbo(path)
        config = replay.engine_config()
        durations = []
        for _ in range(repeats):
            engine = MatchingEngine(config, symbols=replay.symbols)
            started = time.perf_counter()
            events = engine.process(replay.commands)
            durations.append(time.perf_counter() - started)
        seconds += statistics.median(durations)
        commands += len(replay.commands)
        agreed += fill_agreement(replay, events)
        recorded += replay.recorded_fill_qty
        reference = ReferenceEngine(config, symbols=replay.symbols)
        reference_agrees &= reference.process(replay.commands) == events.tolist()
        reference_agrees &= _same_books(engine, reference, replay.symbols)
    return agreed / max(recorded, 1), commands / seconds, reference_agrees


def main(argv: list[str] | None = None) -> int:
    """``python -m hftgate.bench.matching [--json] [--repeats N] [--data-dir DIR]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    repeats = int(args[args.index("--repeats") + 1]) if "--repeats" in args else 3
    directory = args[args.index("--data-dir") + 1] if "--data-dir" in args else None
    result = run(repeats, directory)
    if "--json" in args:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:28s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
