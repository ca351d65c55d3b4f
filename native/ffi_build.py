"""Build recipe for ``hftgate.native._native``: cffi in API mode, out of line.

Each concern of the C core has a header in ``native/include/`` and the part of it
Python may call in ``native/cdef/<concern>.cdef`` (cffi's cdef parser takes no
preprocessor logic, so the cdef stays a plain, reviewed subset of the header).
Every ``.cdef`` file and every ``native/src/*.c`` file is picked up here, so adding
a concern never means editing this file.

Ownership at the boundary: C never keeps a pointer to Python-owned memory beyond
the call that received it, and every ``*_create`` has a matching ``*_destroy``
that the Python wrapper calls (through ``ffi.gc`` or an explicit ``close()``).
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

NATIVE_DIR = Path(__file__).resolve().parent
INCLUDE_DIR = NATIVE_DIR / "include"
SRC_DIR = NATIVE_DIR / "src"
CDEF_DIR = NATIVE_DIR / "cdef"

# The same warning flags the C tests use; our sources must compile cleanly under them.
C_FLAGS = [
    "-std=gnu11",
    "-O3",
    "-fno-strict-aliasing",
    "-D_GNU_SOURCE",
    "-Wall",
    "-Wextra",
    "-Werror",
    # cffi's generated glue declares parameters it does not always use.
    "-Wno-unused-parameter",
]


def _rel(path: Path) -> str:
    # setuptools wants source paths relative to the project root (where setup.py runs).
    return os.path.relpath(path, Path.cwd())


def build_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef("\n".join(p.read_text() for p in sorted(CDEF_DIR.glob("*.cdef"))))
    headers = sorted(INCLUDE_DIR.glob("hft_*.h"))
    ffi.set_source(
        "hftgate.native._native",
        "\n".join(f'#include "{h.name}"' for h in headers),
        sources=[_rel(p) for p in sorted(SRC_DIR.glob("*.c"))],
        include_dirs=[_rel(INCLUDE_DIR)],
        extra_compile_args=C_FLAGS,
        libraries=["m", "pthread"],
    )
    return ffi


ffibuilder = build_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
