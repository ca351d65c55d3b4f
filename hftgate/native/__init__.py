"""Python face of the C core in ``native/``.

``_native`` is the compiled cffi module (built by ``pip install -e .``); the
modules beside this one wrap it per concern so the rest of hftgate never touches
cffi directly.
"""

from __future__ import annotations

from hftgate.native._native import ffi, lib  # type: ignore[import-not-found]
from hftgate.native.errors import NativeError, check

__all__ = ["NativeError", "check", "ffi", "lib"]
