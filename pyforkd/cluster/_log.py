"""pyforkd's own log lines: the time first, then ``pyforkd: ...``.

They go to the primary's stderr, which ``pyforkd run --log-file`` points at a file;
:func:`reopen` opens that file again (SIGUSR1, after logrotate moved it).
"""

from __future__ import annotations

import os
import sys
import time

_file: dict[str, str | None] = {"path": None}


def say(text: str, who: str = "pyforkd") -> None:
    """One line of pyforkd's (more after it, a traceback say, are written as they are)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    first, _, rest = text.rstrip("\n").partition("\n")
    out = f"{stamp} {who}: {first}\n" + (rest + "\n" if rest else "")
    try:
        sys.stderr.write(out)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # (no stderr to write to: a log line is not worth dying for)


def access_line(
    remote: str, request_line: str, status: int, size: int, referer: str, agent: str
) -> str:
    """One request in the combined log format (Apache's, nginx's)."""
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
    return (
        f'{remote or "-"} - - [{when}] "{request_line}" {status} {size or "-"} '
        f'"{referer}" "{agent}"'
    )


def log_to(path: str) -> None:
    """Point this process's stderr (descriptor 2) at the file ``path``, appending."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        sys.stderr.flush()
        os.dup2(fd, 2)  # (dup2's copy is inheritable: workers write to it too)
    finally:
        os.close(fd)
    _file["path"] = path


def reopen() -> None:
    """Open the log file again (after logrotate moved it); nothing without one."""
    path = _file["path"]
    if path is not None:
        try:
            log_to(path)
        except OSError as exc:
            say(f"cannot reopen the log file {path}: {exc.strerror}")
