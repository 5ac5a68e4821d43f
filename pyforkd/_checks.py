"""Argument checks shared by every module: one place states each rule and its message."""

from __future__ import annotations

import codecs
import math
import time
from typing import Any

__all__ = ["FOREVER", "check_encoding", "check_timeout", "deadline"]

# Timeouts this long or longer (inf, or beyond what a C wait or a thread's wait can
# express) mean no limit: about 31 years.
FOREVER = 1e9


def check_timeout(timeout: Any, what: str = "timeout") -> float | None:
    """``timeout`` as float seconds, or None; ``ValueError``/``TypeError`` when invalid."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(timeout).__name__}")
    if (isinstance(timeout, float) and math.isnan(timeout)) or timeout < 0:
        raise ValueError(f"{what} must be >= 0 seconds, got {timeout!r}")
    if timeout >= FOREVER:  # (inf included: no limit, as threading's waits take it)
        return None
    return float(timeout)


def deadline(timeout: Any, what: str = "timeout") -> float | None:
    """The ``time.monotonic()`` at which ``timeout`` runs out, or None for no limit."""
    seconds = check_timeout(timeout, what)
    return None if seconds is None else time.monotonic() + seconds


def check_encoding(encoding: Any, errors: Any = "strict", what: str = "encoding") -> None:
    """Refuse an encoding that cannot decode text (a child's output, a received file).

    ``encoding`` is None, ``"buffer"`` (Node's word for bytes) or a text codec, and
    ``errors`` an error handler: else ``TypeError``/``ValueError`` naming the argument.
    """
    if encoding is None or encoding == "buffer":
        return
    if not isinstance(encoding, str):
        raise TypeError(f"{what} must be a str or None, not {type(encoding).__name__}")
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"{what}: unknown encoding {encoding!r}") from None
    if not getattr(info, "_is_text_encoding", True):
        raise ValueError(f"{what}: {encoding!r} is not a text encoding")
    if not isinstance(errors, str):
        raise TypeError(f"errors must be a str, not {type(errors).__name__}")
    try:
        codecs.lookup_error(errors)
    except LookupError:
        raise ValueError(f"errors: unknown error handler {errors!r}") from None
