"""docker-compose.yml starts the same modules `hftgate up` starts (no Docker engine needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from hftgate.supervisor import ALL_SERVICES

ROOT = Path(__file__).resolve().parent.parent


def load_compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_compose_service_runs_a_real_module() -> None:
    services = load_compose()["services"]
    for name, spec in services.items():
        command = spec.get("command", [])
        if command[:2] == ["python", "-m"]:
            module = command[2]
            assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{name}: {module} not found"


def test_every_built_service_is_in_compose_with_its_default_port() -> None:
    services = load_compose()["services"]
    for spec in ALL_SERVICES:
        if not spec.is_available():
            continue
        assert spec.name in services, f"{spec.name} is built but missing from docker-compose.yml"
        ports = services[spec.name].get("ports", [])
        assert f"{spec.default_port}:{spec.default_port}" in ports


def test_compose_services_listen_on_all_interfaces() -> None:
    services = load_compose()["services"]
    for spec in ALL_SERVICES:
        if spec.name in services:
            env = services[spec.name]["environment"]
            assert env.get(f"HFTGATE_{spec.name.upper()}_HOST") == "0.0.0.0"
