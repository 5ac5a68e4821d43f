"""The cluster's settings: Node's (``setup_primary``) and pyforkd's own, with their checks."""

from __future__ import annotations

import os
import signal as _signal
import sys
from typing import Any

try:
    import psutil  # type: ignore[import-untyped]  # optional: where there is no /proc
except ImportError:
    psutil = None

from .. import _bindings as _b
from . import _procstat

POLL_SECONDS = 0.05  # Windows: how often a pipe to a worker or to the primary is looked at
EVENTS = ("fork", "online", "listening", "message", "disconnect", "exit", "setup")
WORKER_EVENTS = ("online", "listening", "message", "disconnect", "exit")
NO_RESTART_CODES = (3, 4)  # a worker's "boot or app error: do not restart me"
BACKOFF_FACTOR, BACKOFF_MAX = 1.5, 15.0  # the restart delay grows so, up to 15 s
STABLE_UPTIME = 30.0  # a worker that lived this long resets the back-off
POLICIES = ("rr", "shared", "reuseport")
BALANCES = ("round-robin", "least-connections")
# Windows: no fork, and workers share the listening socket (Node's default there too).
DEFAULTS: dict[str, Any] = {
    "policy": "shared" if _b.WINDOWS else "rr",
    "balance": "round-robin",
    "start": "spawn" if _b.WINDOWS else "fork",
    "restart": True,
    "restart_delay": 0.1,  # the first restart's delay (then x1.5 per young death)
    "max_restarts": 10,  # restarts in a row of workers that died young: the cluster stops
    "timeout": None,
    "kill_timeout": 3.0,
    "ready_timeout": None,
    "wait_ready": False,
    "max_requests": None,
    "max_requests_jitter": 0,
    "max_memory": None,
    "umask": None,  # for the UNIX sockets the primary makes (None: the process's own)
    "log_file": None,  # the primary's stderr (and its workers'), reopened on SIGUSR1
    "graceful_timeout": 10.0,
    "log_prefix": False,
    # Node's: the script and its arguments (setup_primary() fills in this program's),
    # the interpreter's options (start="spawn"), and the directory workers start in.
    "exec": None,
    "args": None,
    "exec_argv": [],
    "cwd": None,
    # The workers' stdin/stdout/stderr: "inherit", "pipe" (the primary's end is the
    # worker's stdin/stdout/stderr attribute) or "ignore"; silent: all three "pipe".
    "silent": False,
    "stdio": None,
}
STDIO_MODES = ("inherit", "pipe", "ignore")
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str | int) -> int:
    """Bytes from ``300M``, ``1.5G``, ``4096`` (``ValueError`` names what is wrong)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"a memory size must be positive, not {text}")
        return text
    if not isinstance(text, str):
        raise TypeError(f"a memory size is a number of bytes or a string like '300M', not {text!r}")
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in "KMG" else ""
    try:
        n = float(t[: len(t) - len(unit)])
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (e.g. 300M, 1.5G, 4096)") from None
    if not n > 0:
        raise ValueError(f"a memory size must be positive, not {text!r}")
    return int(n * UNITS[unit])


def seconds(key: str, value: Any, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key} must be a number of seconds, not {value!r}")
    if not value > 0:
        raise ValueError(f"{key} must be positive, not {value!r}")
    return float(value)


def check_setting(key: str, value: Any) -> Any:
    """A setup_primary() setting, checked (and normalized)."""
    if key == "policy":
        if value not in POLICIES:
            raise ValueError(f"policy must be 'rr', 'shared' or 'reuseport', not {value!r}")
        if value == "reuseport" and not sys.platform.startswith("linux"):
            # (macOS has SO_REUSEPORT, but gives every connection to one socket)
            raise ValueError(
                "policy 'reuseport' needs SO_REUSEPORT sockets that the kernel balances "
                "(Linux); use 'rr' or 'shared' here"
            )
        return value
    if key == "balance":
        if value not in BALANCES:
            raise ValueError(f"balance must be 'round-robin' or 'least-connections', not {value!r}")
        return value
    if key == "start":
        if value not in ("fork", "spawn"):
            raise ValueError(f"start must be 'fork' or 'spawn', not {value!r}")
        if value == "fork" and _b.WINDOWS:
            raise ValueError("start must be 'spawn' on Windows (it has no fork)")
        return value
    if key == "stdio":
        if value is None:
            return None
        if (
            not isinstance(value, (list, tuple))
            or len(value) < 3
            or any(m not in STDIO_MODES for m in value[:3])
            or any(m != "ipc" for m in value[3:])
        ):
            raise ValueError(
                "stdio must list 'inherit', 'pipe' or 'ignore' for stdin, stdout and "
                f"stderr (then 'ipc' at most), not {value!r}"
            )
        return list(value[:3])
    if key in ("restart", "wait_ready", "log_prefix", "silent"):
        if not isinstance(value, bool):
            raise TypeError(f"{key} must be a bool, not {value!r}")
        return value
    if key in ("timeout", "ready_timeout"):
        return seconds(key, value)
    if key == "restart_delay":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"restart_delay must be a number of seconds >= 0, not {value!r}")
        return float(value)
    if key == "log_file":
        if value is not None and not (isinstance(value, str) and value and "\0" not in value):
            raise TypeError(f"log_file must be a path (str) or None, not {value!r}")
        return value
    if key == "umask":
        if value is not None and not (
            isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777
        ):
            raise ValueError(f"umask must be None or 0-0o777, not {value!r}")
        return value
    if key in ("graceful_timeout", "kill_timeout"):
        return seconds(key, value, allow_none=False)
    if key in ("max_requests", "max_requests_jitter", "max_restarts"):
        if value is None and key == "max_requests":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be a count >= 0, not {value!r}")
        return value if value or key != "max_requests" else None
    if key == "max_memory":
        if value is None:
            return None
        size = parse_size(value)
        _procstat.rss(os.getpid())  # OSError now when this OS cannot tell a process's memory
        return size
    if key in ("exec", "cwd"):
        if value is None:
            return None
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{key} must be a path, not {value!r}")
        return os.path.abspath(os.fspath(value))  # (checked at fork(), as Node does)
    if key in ("args", "exec_argv"):
        if not (isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value)):
            raise TypeError(f"{key} must be a list of str, not {value!r}")
        return list(value)
    raise TypeError(f"setup_primary() got an unknown setting {key!r}")


PRIMARY_SIGNALS = tuple(
    getattr(_signal, name)
    for name in ("SIGTERM", "SIGHUP", "SIGTTIN", "SIGTTOU")
    if hasattr(_signal, name)  # (Windows has SIGTERM alone)
)
