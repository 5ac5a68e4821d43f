"""What a worker process uses: its resident memory and CPU time (``/proc``, or psutil)."""

from __future__ import annotations

import os

try:
    import psutil  # type: ignore[import-untyped]  # optional: where there is no /proc
except ImportError:
    psutil = None


def rss(pid: int) -> int:
    """A process's resident memory in bytes (``/proc``, or psutil where there is none)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except FileNotFoundError:
        if not os.path.isdir("/proc/self"):
            if psutil is None:
                raise OSError("max_memory needs /proc or the psutil package") from None
            return int(psutil.Process(pid).memory_info().rss)
        raise ProcessLookupError(pid) from None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        if psutil is None:
            return None
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return None
        return float(t.user + t.system)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
