from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hftgate.config import ConfigError, describe, from_env


@dataclass(frozen=True)
class ExampleConfig:
    port: int = 50051
    flush_interval_ms: float = 1.5
    durable: bool = True
    name: str = "svc"
    state_dir: Path = Path("data")
    tls_cert_path: Path | None = None
    venues: tuple[str, ...] = ("a",)
    api_key: str = "secret"
    key_prefix: str = "hft:"
    database_url: str = "postgresql+asyncpg://user:hunter2@db:5432/x"


def test_defaults_when_nothing_is_set() -> None:
    assert from_env(ExampleConfig, "X_", {}) == ExampleConfig()


def test_every_type_is_read_from_its_variable() -> None:
    env = {
        "X_PORT": "6000",
        "X_FLUSH_INTERVAL_MS": "0.25",
        "X_DURABLE": "off",
        "X_NAME": "exec",
        "X_STATE_DIR": "/tmp/s",
        "X_TLS_CERT_PATH": "/tmp/c.pem",
        "X_VENUES": "binance-spot, binance-usdm",
    }
    cfg = from_env(ExampleConfig, "X_", env)
    assert cfg.port == 6000
    assert cfg.flush_interval_ms == 0.25
    assert cfg.durable is False
    assert cfg.name == "exec"
    assert cfg.state_dir == Path("/tmp/s")
    assert cfg.tls_cert_path == Path("/tmp/c.pem")
    assert cfg.venues == ("binance-spot", "binance-usdm")


def test_empty_optional_path_means_none() -> None:
    assert from_env(ExampleConfig, "X_", {"X_TLS_CERT_PATH": ""}).tls_cert_path is None


@pytest.mark.parametrize(("var", "value"), [("X_PORT", "fast"), ("X_DURABLE", "maybe")])
def test_malformed_value_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        from_env(ExampleConfig, "X_", {var: value})


def test_describe_hides_secrets() -> None:
    line = describe(ExampleConfig())
    assert "port=50051" in line
    assert "secret" not in line
    assert "hunter2" not in line
    assert "user:***@db" in line
    assert "key_prefix='hft:'" in line
