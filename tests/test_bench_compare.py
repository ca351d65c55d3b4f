"""hftgate.bench.compare: a run against a saved baseline, by ratios with a margin per direction;
and the CI baseline against one short real end-to-end run."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hftgate.bench import compare as cmp
from hftgate.bench.compare import (
    CI_BASELINE,
    EXIT_OK,
    EXIT_REGRESSED,
    EXIT_UNREADABLE,
    BaselineError,
    compare,
    make_baseline,
    parse_baseline,
    run_comparison,
)

ROOT = Path(__file__).resolve().parent.parent


def baseline(**keys: Any) -> dict[str, Any]:
    return {"description": "test", "keys": keys}


# --- the comparison ---------------------------------------------------------------------------


def test_a_latency_ratio_regresses_only_beyond_its_margin() -> None:
    saved = baseline(p50_over_echo={"value": 4.0, "direction": "lower", "margin": 0.5})

    assert compare({"p50_over_echo": 5.9}, saved).passed  # 1.475x: within 50%
    assert compare({"p50_over_echo": 6.0}, saved).passed  # exactly the limit
    assert compare({"p50_over_echo": 1.0}, saved).passed  # better is never a regression
    worse = compare({"p50_over_echo": 6.1}, saved)
    assert not worse.passed
    (verdict,) = worse.regressions
    assert verdict.bound.limit == pytest.approx(6.0)
    assert verdict.ratio == pytest.approx(6.1 / 4.0)
    assert "REGRESSED" in worse.report() and "1 of 1 keys regressed" in worse.report()


def test_a_throughput_ratio_regresses_only_below_its_margin() -> None:
    saved = baseline(gateway_rps={"value": 1000.0, "direction": "higher", "margin": 0.2})

    assert compare({"gateway_rps": 800.0}, saved).passed
    assert compare({"gateway_rps": 5000.0}, saved).passed
    assert not compare({"gateway_rps": 799.0}, saved).passed


def test_margins_default_by_direction() -> None:
    bounds = {
        b.key: b
        for b in parse_baseline(
            baseline(a={"value": 1, "direction": "lower"}, b={"value": 1, "direction": "higher"})
        )
    }

    assert bounds["a"].margin == cmp.DEFAULT_MARGINS["lower"]
    assert bounds["b"].margin == cmp.DEFAULT_MARGINS["higher"]


def test_a_key_the_run_lacks_fails_and_every_key_is_judged() -> None:
    saved = baseline(
        acked_ratio={"value": 1.0, "direction": "higher", "margin": 0.0},
        p99_over_echo={"value": 10.0, "direction": "lower"},
    )

    result = compare({"acked_ratio": 1.0}, saved)

    assert not result.passed
    assert [v.bound.key for v in result.regressions] == ["p99_over_echo"]
    assert "p99_over_echo: missing from the run" in result.report()
    assert len(result.verdicts) == 2


def test_a_zero_margin_higher_key_demands_the_baseline_exactly() -> None:
    saved = baseline(acked_ratio={"value": 1.0, "direction": "higher", "margin": 0.0})

    assert compare({"acked_ratio": 1.0}, saved).passed
    assert not compare({"acked_ratio": 0.9999}, saved).passed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, 'non-empty "keys"'),
        ({"keys": {}}, 'non-empty "keys"'),
        (baseline(a=3), "must be an object"),
        (
            baseline(a={"value": 1, "direction": "sideways"}),
            "direction must be 'lower' or 'higher', not 'sideways'",
        ),
        (baseline(a={"value": "fast", "direction": "lower"}), "value must be a number, not 'fast'"),
        (baseline(a={"value": True, "direction": "lower"}), "value must be a number, not True"),
        (baseline(a={"value": float("nan"), "direction": "lower"}), "must be finite"),
        (baseline(a={"value": 1, "direction": "lower", "margin": -0.1}), "margin must be 0 or more"),
        (baseline(a={"value": 1, "direction": "higher", "margin": 1.5}), "at most 1 for higher"),
    ],
)
def test_a_bad_baseline_is_refused_saying_what_is_wrong(data: dict[str, Any], message: str) -> None:
    with pytest.raises(BaselineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_baseline(data)


def test_a_run_value_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(BaselineError, match="the run's a must be a number, not 'x'"):
        compare({"a": "x"}, baseline(a={"value": 1, "direction": "lower"}))


def test_make_baseline_keeps_the_chosen_keys_and_round_trips() -> None:
    run = {"p50_over_echo": 3.5, "acked_ratio": 1.0, "p50_ms": 2.0}

    made = make_baseline(
        run, {"p50_over_echo": "lower", "acked_ratio": "higher"}, margins={"acked_ratio": 0.0}
    )

    assert set(made["keys"]) == {"p50_over_echo", "acked_ratio"}
    assert made["keys"]["acked_ratio"]["margin"] == 0.0
    assert compare(run, json.loads(json.dumps(made))).passed
    with pytest.raises(BaselineError, match="the run has no 'rps'"):
        make_baseline(run, {"rps": "higher"})


# --- the command ------------------------------------------------------------------------------


def test_the_command_exits_zero_one_or_two(tmp_path: Path) -> None:
    saved = tmp_path / "baseline.json"
    saved.write_text(json.dumps(baseline(p50_over_echo={"value": 4.0, "direction": "lower", "margin": 0.5})))
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"p50_over_echo": 4.2}))
    bad.write_text(json.dumps({"p50_over_echo": 9.0}))

    out = io.StringIO()
    assert run_comparison(saved, good, out) == EXIT_OK
    assert "no regression" in out.getvalue()
    out = io.StringIO()
    assert run_comparison(saved, bad, out) == EXIT_REGRESSED
    assert "p50_over_echo: 9 " in out.getvalue()
    # The run from standard input, as `hftgate bench e2e --json | hftgate bench --compare B` sends it.
    out = io.StringIO()
    assert run_comparison(saved, None, out, stdin=io.StringIO('{"p50_over_echo": 4.0}')) == EXIT_OK

    for broken, message in (
        (tmp_path / "missing.json", "cannot read"),
        (tmp_path / "text.json", "is not JSON"),
        (tmp_path / "list.json", "must hold a JSON object, not list"),
    ):
        if broken.name == "text.json":
            broken.write_text("p50: fast")
        elif broken.name == "list.json":
            broken.write_text("[1, 2]")
        out = io.StringIO()
        assert run_comparison(saved, broken, out) == EXIT_UNREADABLE
        assert message in out.getvalue()


def test_the_module_runs_as_a_command(tmp_path: Path) -> None:
    saved = tmp_path / "baseline.json"
    saved.write_text(json.dumps(baseline(rps={"value": 100.0, "direction": "higher"})))
    done = subprocess.run(
        [sys.executable, "-m", "hftgate.bench.compare", str(saved)],
        input='{"rps": 10.0}',
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_REGRESSED, done.stderr
    assert "rps: 10 (higher is better; must be >= 80" in done.stdout


# --- the CI baseline --------------------------------------------------------------------------


def test_the_ci_baseline_holds_only_ratios_an_e2e_run_reports() -> None:
    from hftgate.bench.e2e import figures
    from loadtest.open_loop import OpenLoopReport

    saved = json.loads(CI_BASELINE.read_text())
    bounds = parse_baseline(saved)
    assert saved["command"].startswith("hftgate bench e2e ")
    # Ratios and shares only: no absolute time (machines differ).
    assert all(not b.key.endswith(("_ms", "_s")) for b in bounds)
    summary = dict.fromkeys(("p50", "p90", "p95", "p99", "p99_9", "max", "mean", "stdev"), 1.0)
    report = OpenLoopReport(
        "127.0.0.1:1", 100.0, sent=10, accepted=10, completed_per_s=100.0, latency_ms=summary
    )
    report.send_lag_ms = summary
    reported = set(figures(report, 100.0, 1.0, "gateway", False)) | {"p50_over_echo", "p99_over_echo"}
    assert {b.key for b in bounds} <= reported


#: The baseline's keys a short run on a loaded 2-core machine passes every time: counts and
#: rates. The latency ratio (p50_over_echo) measured 6.5 to 60 here while other jobs ran, so this
#: test checks that it is reported and sane, not that it is within its margin.
ROBUST_KEYS = ("acked_ratio", "throughput_ratio")


def test_a_short_real_run_through_the_gateway_passes_the_ci_baseline_on_its_robust_keys() -> None:
    from hftgate.bench.e2e import e2e

    saved = json.loads(CI_BASELINE.read_text())
    run = e2e(rate=saved["rate"], duration_s=saved["duration_s"], via=saved["via"], floor_samples=300)

    assert run["sent"] == run["scheduled"] == int(saved["rate"] * saved["duration_s"])
    assert run["acked"] == run["sent"], run
    robust = {**saved, "keys": {key: saved["keys"][key] for key in ROBUST_KEYS}}
    result = compare(run, robust)
    assert result.passed, result.report()
    full = compare(run, saved)  # every key is there to judge, whatever the machine's load
    assert all(verdict.observed is not None for verdict in full.verdicts), full.report()
    assert run["p50_over_echo"] > 1  # an order costs more than an empty call
