"""Every module of the product imports: catches a file that was used but never committed."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import hftgate
import services


def all_modules() -> list[str]:
    names = []
    for package in (hftgate, services):
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            # __main__ modules start servers; generated stubs are tested in test_protos.
            if info.name.endswith("__main__") or info.name.startswith("hftgate.v1"):
                continue
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", all_modules())
def test_module_imports(name: str) -> None:
    importlib.import_module(name)
