from __future__ import annotations

import os
from pathlib import Path

import pytest

from hftgate.config import default_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The recorded market data beside the checkout (../shared/data or HFTGATE_DATA_DIR)."""
    path = default_data_dir()
    if not (path / "quotes").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"recorded market data not found at {path} (set HFTGATE_DATA_DIR)")
        pytest.skip(f"recorded market data not found at {path} (set HFTGATE_DATA_DIR)")
    return path
