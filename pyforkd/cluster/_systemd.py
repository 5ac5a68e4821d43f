"""systemd (and any supervisor that speaks its protocols): socket activation and sd_notify.

Socket activation: systemd starts the primary with listening sockets from descriptor 3 on,
``LISTEN_FDS`` of them, for the process ``LISTEN_PID``.  :func:`listen_fds` takes them once
(close-on-exec set, the variables removed so that children do not take them too).

sd_notify: when ``NOTIFY_SOCKET`` names a datagram socket (a path, or ``@name`` for the
abstract namespace), :func:`notify` sends it ``READY=1``, ``RELOADING=1``, ``STOPPING=1``,
``STATUS=...`` lines.  Without it, notify does nothing.
"""

from __future__ import annotations

import os
import socket
import sys
import time

__all__ = ["listen_fds", "notify"]

_FIRST = 3
_state: dict[str, list[socket.socket] | None] = {"taken": None}


def listen_fds() -> list[socket.socket]:
    """The sockets systemd passed to this process (empty when it passed none)."""
    taken = _state["taken"]
    if taken is not None:
        return taken
    _state["taken"] = taken = []
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return taken
    if pid != os.getpid() or count <= 0:
        return taken
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    for fd in range(_FIRST, _FIRST + count):
        os.set_inheritable(fd, False)
        try:
            taken.append(socket.socket(fileno=fd))
        except OSError:
            continue  # not a socket (systemd can pass FIFOs too): not ours to serve
    return taken


def activated(sock: socket.socket) -> bool:
    """Whether ``sock`` is one systemd passed (its file, if any, is systemd's)."""
    return any(sock is taken for taken in _state["taken"] or ())


def forget() -> None:
    """In a forked child: close the activated sockets (the primary serves them)."""
    for sock in _state["taken"] or ():
        sock.close()
    _state["taken"] = None


def matching(address: object, type: int = socket.SOCK_STREAM) -> socket.socket | None:
    """The activated socket for ``address`` (same port; same path for AF_UNIX).

    ``type``: a listening stream socket (the default), or a datagram one.
    """
    for sock in listen_fds():
        try:
            if sock.type != type:
                continue
            if type == socket.SOCK_STREAM and not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN
            ):
                continue
            mine = sock.getsockname()
        except OSError:
            continue
        if isinstance(address, str) and mine == address:
            return sock
        if (
            isinstance(address, tuple)
            and isinstance(mine, tuple)
            and len(address) >= 2
            and address[1] == mine[1] != 0
        ):
            return sock
    return None


def notify(state: str) -> bool:
    """Send ``state`` (``KEY=value`` lines) to ``NOTIFY_SOCKET``; False when there is none.

    ``RELOADING=1`` gets the ``MONOTONIC_USEC`` that systemd 253 and later ask for.
    """
    where = os.environ.get("NOTIFY_SOCKET")
    if not where or sys.platform == "win32":  # (systemd is Linux's)
        return False
    if where.startswith("@"):
        where = "\0" + where[1:]
    if "RELOADING=1" in state.split("\n"):
        state += f"\nMONOTONIC_USEC={time.monotonic_ns() // 1000}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), where)
        except OSError:
            return False  # the supervisor is gone or the socket is wrong: nothing to tell
    return True
