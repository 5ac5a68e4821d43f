"""cffi builder for ``pyforkd._core`` (out-of-line API mode).

The declarations cffi sees are the plain C headers in ``csrc/cdef/``, one per capability;
``csrc/include/pyforkd.h`` includes the same files, so C and Python read one text.  The
sources are the portable ``csrc/common/*.c`` plus the platform's own directory
(``csrc/unix`` or ``csrc/win``); Python code never sees the difference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
PLATFORM_DIR = "win" if sys.platform == "win32" else "unix"


def _relative(path: Path) -> str:
    # setuptools wants source paths relative to the project root.
    return os.path.relpath(path, ROOT).replace(os.sep, "/")


def _sources() -> list[str]:
    files = sorted((CSRC / "common").glob("*.c")) + sorted((CSRC / PLATFORM_DIR).glob("*.c"))
    if sys.platform == "darwin":
        files = [f for f in files if not f.name.endswith("_linux.c")]
    elif sys.platform.startswith("linux"):
        files = [f for f in files if not f.name.endswith("_darwin.c")]
    return [_relative(f) for f in files]


def _cdef() -> str:
    return "\n".join(p.read_text() for p in sorted((CSRC / "cdef").glob("*.h")))


def _compile_args() -> list[str]:
    if sys.platform == "win32":
        return ["/W3", "/std:c11"]
    return ["-std=c11", "-Wall", "-Wextra", "-O2"]


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "pyforkd._core",
    '#include "pyforkd.h"',
    sources=_sources(),
    include_dirs=[_relative(CSRC / "include")],
    extra_compile_args=_compile_args(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
