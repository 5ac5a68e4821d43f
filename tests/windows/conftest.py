"""The Windows tests: run by ``python3 tests/windows/run_wine.py`` (wine, in .ci/run) or by
pytest on Windows itself.  Children are this interpreter with inline code."""

from __future__ import annotations

import ctypes
import sys
from ctypes import wintypes

if sys.platform != "win32":  # (tests/conftest.py keeps POSIX runs out of this directory)
    raise ImportError("tests/windows runs on Windows (or in wine: tests/windows/run_wine.py)")


def handle_count() -> int:
    """How many handles this process has open.

    Counted by asking about every handle value below 65536 (GetHandleInformation): the
    system hands out the lowest free values, so a leak shows there.  (GetProcessHandleCount
    would be simpler, but wine answers 0 to it.)
    """
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.GetHandleInformation.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    flags = wintypes.DWORD()
    return sum(
        1 for h in range(4, 1 << 16, 4) if kernel32.GetHandleInformation(h, ctypes.byref(flags))
    )
