"""Every CLI command answers --help, and `up` copes with what is built."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hftgate.cli import app

runner = CliRunner()
SUITES = ("native", "matching", "marketdata", "cache", "execution", "crash", "all")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["up"],
        ["bench"],
        *[["bench", suite] for suite in SUITES],
    ],
)
def test_every_command_has_help(args: list[str]) -> None:
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_up_rejects_an_unknown_service() -> None:
    result = runner.invoke(app, ["up", "--service", "nonsense"])
    assert result.exit_code != 0
    assert "nonsense" in result.output


def test_up_offers_the_demo_flow_and_the_summary_interval() -> None:
    result = runner.invoke(app, ["up", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in (
        "--demo-flow",
        "--no-demo-flow",
        "--demo-rate",
        "--summary-interval-s",
        "--dashboard-port",
    ):
        assert option in result.output


def test_up_refuses_a_negative_summary_interval() -> None:
    result = runner.invoke(app, ["up", "--summary-interval-s", "-1"])
    assert result.exit_code == 2
    assert "--summary-interval-s" in result.output
