"""The Windows tests: run by ``python3 tests/windows/run_wine.py`` (wine, in .ci/run) or by
pytest on Windows itself.  Children are this interpreter with inline code."""

from __future__ import annotations

import sys

if sys.platform != "win32":  # (tests/conftest.py keeps POSIX runs out of this directory)
    raise ImportError("tests/windows runs on Windows (or in wine: tests/windows/run_wine.py)")
