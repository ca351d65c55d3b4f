"""Configuration from the environment, in one place per component.

Each component declares one frozen dataclass whose fields carry their unit in their
name (``flush_interval_ms``) and a typed default; :func:`from_env` fills it from
``<PREFIX><FIELD_NAME_UPPER>`` environment variables. Unknown or malformed values
fail fast at start-up with a message naming the variable.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """An environment variable could not be read as its field's type."""


def _convert(raw: str, target: Any, var: str) -> Any:
    origin = typing.get_origin(target)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(target) if a is not type(None)]
        if raw == "":
            return None
        return _convert(raw, args[0], var)
    if target is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{var}={raw!r}: expected a boolean (1/0, true/false, yes/no, on/off)")
    if target in (int, float):
        try:
            return target(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{var}={raw!r}: expected {target.__name__}") from None
    if target is Path:
        return Path(raw)
    if origin is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def from_env(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` (a dataclass) from defaults overridden by ``PREFIX + FIELD`` variables."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        var = prefix + field.name.upper()
        if var in env:
            values[field.name] = _convert(env[var], hints[field.name], var)
    return cls(**values)


_SECRET_SUFFIXES = ("api_key", "password", "secret", "token")
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def _shown(name: str, value: object) -> object:
    if name.endswith(_SECRET_SUFFIXES):
        return "***"
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    return value


def describe(config: object) -> str:
    """One line listing every effective value, for the start-up log."""
    items = dataclasses.asdict(config)  # type: ignore[call-overload]
    shown = {k: _shown(k, v) for k, v in items.items()}
    return f"{type(config).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def repo_root() -> Path:
    """The checkout root (where pyproject.toml lives)."""
    return Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """Recorded market data: ``HFTGATE_DATA_DIR`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get("HFTGATE_DATA_DIR")
    return Path(env) if env else repo_root().parent / "shared" / "data"


def default_state_dir() -> Path:
    """Where services keep journals, SQLite files and the embedded Redis: ``HFTGATE_STATE_DIR`` or ./data."""
    env = os.environ.get("HFTGATE_STATE_DIR")
    return Path(env) if env else repo_root() / "data"
