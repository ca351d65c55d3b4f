"""``hftgate bench --compare BASELINE.json``: a benchmark run against a saved one, by ratios.

Absolute times differ from machine to machine, so a baseline names keys that are already ratios
or counts relative to the run (``p50_over_echo``: the order p50 over the same run's empty-gRPC
floor; ``acked_ratio``; ``throughput_ratio``: answers per second over the rate asked for), each
with the direction that is better and the margin a run may drift before it counts as a regression:

- ``lower`` is better (latencies, ratios of latencies): a regression is ``run > baseline * (1 + margin)``;
- ``higher`` is better (throughput, shares acknowledged): a regression is ``run < baseline * (1 - margin)``.

A baseline file::

    {
      "description": "what run made it, and how to make it again",
      "command": "hftgate bench e2e --rate 200 --duration 3 --via gateway --json",
      "keys": {
        "p50_over_echo": {"value": 12.0, "direction": "lower", "margin": 2.0},
        "acked_ratio": {"value": 1.0, "direction": "higher", "margin": 0.0}
      }
    }

``margin`` may be left out: :data:`DEFAULT_MARGINS` by direction. A key the baseline names but the
run lacks is a failure too (the run is not the one the baseline was made from). Exit codes of the
command: 0 when no key regressed, 1 on a regression or a missing key, 2 when a file is unreadable.

``python -m hftgate.bench.compare BASELINE.json [RUN.json]`` does the same (the run from standard
input when no file is named, so ``hftgate bench e2e ... --json | hftgate bench --compare B.json``
works); :func:`make_baseline` writes a baseline from a run.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

Direction = Literal["lower", "higher"]
DIRECTIONS: tuple[Direction, ...] = ("lower", "higher")
#: How far a run may drift the wrong way before it regresses, by direction (a ratio of the baseline):
#: latency ratios are noisy on a shared machine (a loaded 2-core box doubles them easily), so a
#: run fails only past twice its baseline; throughput and acknowledged shares are steadier.
DEFAULT_MARGINS: dict[Direction, float] = {"lower": 1.0, "higher": 0.2}
#: The baseline CI compares a short e2e run with.
CI_BASELINE = Path(__file__).resolve().parent / "baselines" / "ci.json"
#: The exit codes of the command.
EXIT_OK, EXIT_REGRESSED, EXIT_UNREADABLE = 0, 1, 2


class BaselineError(ValueError):
    """A baseline or run file that cannot be used: the message says what is wrong with it."""


@dataclass(frozen=True)
class Bound:
    """One key of a baseline."""

    key: str
    value: float
    direction: Direction
    margin: float

    @property
    def limit(self) -> float:
        """The worst value a run may have and still pass."""
        if self.direction == "lower":
            return self.value * (1.0 + self.margin)
        return self.value * (1.0 - self.margin)


@dataclass(frozen=True)
class Verdict:
    """One key of one comparison."""

    bound: Bound
    observed: float | None  # None: the run has no such key

    @property
    def ratio(self) -> float | None:
        """The run's value over the baseline's (None when either makes that meaningless)."""
        if self.observed is None or self.bound.value == 0:
            return None
        return self.observed / self.bound.value

    @property
    def passed(self) -> bool:
        if self.observed is None or math.isnan(self.observed):
            return False
        if self.bound.direction == "lower":
            return self.observed <= self.bound.limit
        return self.observed >= self.bound.limit

    def describe(self) -> str:
        bound = self.bound
        if self.observed is None:
            return f"{bound.key}: missing from the run (baseline {bound.value:g})"
        sign = "<=" if bound.direction == "lower" else ">="
        ratio = "" if self.ratio is None else f", {self.ratio:.3g}x the baseline"
        state = "ok" if self.passed else "REGRESSED"
        return (
            f"{bound.key}: {self.observed:g} ({bound.direction} is better; must be {sign} {bound.limit:g} = "
            f"baseline {bound.value:g} with a {bound.margin:.0%} margin{ratio}) {state}"
        )


@dataclass(frozen=True)
class Comparison:
    verdicts: tuple[Verdict, ...]

    @property
    def passed(self) -> bool:
        return all(verdict.passed for verdict in self.verdicts)

    @property
    def regressions(self) -> list[Verdict]:
        return [verdict for verdict in self.verdicts if not verdict.passed]

    def report(self) -> str:
        lines = [verdict.describe() for verdict in self.verdicts]
        lines.append(
            "no regression"
            if self.passed
            else f"{len(self.regressions)} of {len(self.verdicts)} keys regressed"
        )
        return "\n".join(lines)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BaselineError(f"{what} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise BaselineError(f"{what} must be finite, not {value!r}")
    return number


def parse_baseline(data: Mapping[str, Any]) -> list[Bound]:
    """The bounds of a baseline (see the module docstring); BaselineError naming what is wrong."""
    keys = data.get("keys") if isinstance(data, Mapping) else None
    if not isinstance(keys, Mapping) or not keys:
        raise BaselineError('a baseline needs a non-empty "keys" object')
    bounds = []
    for key, spec in keys.items():
        if not isinstance(spec, Mapping):
            raise BaselineError(f"baseline key {key!r} must be an object with value and direction")
        direction = spec.get("direction")
        if direction not in DIRECTIONS:
            raise BaselineError(
                f"baseline key {key!r}: direction must be 'lower' or 'higher', not {direction!r}"
            )
        value = _number(spec.get("value"), f"baseline key {key!r}: value")
        margin = _number(spec.get("margin", DEFAULT_MARGINS[direction]), f"baseline key {key!r}: margin")
        if not margin >= 0 or (direction == "higher" and margin > 1):
            raise BaselineError(
                f"baseline key {key!r}: margin must be 0 or more (at most 1 for higher), not {margin}"
            )
        bounds.append(Bound(str(key), value, direction, margin))
    return bounds


def compare(run: Mapping[str, Any], baseline: Mapping[str, Any]) -> Comparison:
    """Each baseline key against the run's value of it."""
    verdicts = []
    for bound in parse_baseline(baseline):
        raw = run.get(bound.key)
        observed = None if raw is None else _number(raw, f"the run's {bound.key}")
        verdicts.append(Verdict(bound, observed))
    return Comparison(tuple(verdicts))


def make_baseline(
    run: Mapping[str, Any],
    keys: Mapping[str, Direction],
    *,
    margins: Mapping[str, float] | None = None,
    description: str = "",
    command: str = "",
) -> dict[str, Any]:
    """A baseline holding ``run``'s values of ``keys`` (key -> direction)."""
    chosen = {}
    for key, direction in keys.items():
        if key not in run:
            raise BaselineError(f"the run has no {key!r} to make a baseline of")
        spec: dict[str, Any] = {"value": _number(run[key], key), "direction": direction}
        if margins and key in margins:
            spec["margin"] = margins[key]
        chosen[key] = spec
    baseline = {"description": description, "command": command, "keys": chosen}
    parse_baseline(baseline)
    return baseline


def load_json(path: Path | None, stdin: TextIO | None = None) -> dict[str, Any]:
    """A JSON object from ``path``, or from ``stdin`` when ``path`` is None."""
    where = "standard input" if path is None else str(path)
    try:
        text = (stdin or sys.stdin).read() if path is None else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BaselineError(f"cannot read {where}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{where} is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise BaselineError(f"{where} must hold a JSON object, not {type(data).__name__}")
    return data


def run_comparison(
    baseline_path: Path, run_path: Path | None, out: TextIO, stdin: TextIO | None = None
) -> int:
    """Compare and print; the exit code (see the module docstring)."""
    try:
        baseline = load_json(baseline_path)
        run = load_json(run_path, stdin)
        comparison = compare(run, baseline)
    except BaselineError as exc:
        out.write(f"cannot compare: {exc}\n")
        return EXIT_UNREADABLE
    out.write(comparison.report() + "\n")
    return EXIT_OK if comparison.passed else EXIT_REGRESSED


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m hftgate.bench.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("baseline", type=Path)
    parser.add_argument("run", type=Path, nargs="?", help="the run's JSON (default: standard input)")
    args = parser.parse_args(argv)
    return run_comparison(args.baseline, args.run, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
