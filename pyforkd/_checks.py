"""Argument checks shared by every module: one place states each rule and its message."""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = ["check_timeout", "deadline"]


def check_timeout(timeout: Any, what: str = "timeout") -> float | None:
    """``timeout`` as float seconds, or None; ``ValueError``/``TypeError`` when invalid."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{what} must be >= 0 seconds, got {timeout!r}")
    return float(timeout)


def deadline(timeout: Any, what: str = "timeout") -> float | None:
    """The ``time.monotonic()`` at which ``timeout`` runs out, or None for no limit."""
    seconds = check_timeout(timeout, what)
    return None if seconds is None else time.monotonic() + seconds
