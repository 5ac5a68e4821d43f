"""The addresses a cluster listens on: checked, described, and bound.

An address is ``(host, port)`` (IPv4, or IPv6 when the host has a colon, with or without
brackets) or a ``str`` path (a UNIX socket).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any, Union

from ._handoff import nodelay

Address = Union[tuple[str, int], str]


def check(address: Any) -> Address:
    """``address`` checked and normalized (``TypeError``/``ValueError`` say what is wrong)."""
    if isinstance(address, str):
        if not address or "\0" in address:
            raise ValueError(f"a UNIX socket path must be non-empty, without NUL: {address!r}")
        if not hasattr(socket, "AF_UNIX"):
            raise ValueError(f"UNIX socket {address!r}: this Python has no AF_UNIX")
        return address
    if isinstance(address, list):
        address = tuple(address)
    if not (
        isinstance(address, tuple)
        and len(address) == 2
        and isinstance(address[0], str)
        and isinstance(address[1], int)
        and not isinstance(address[1], bool)
    ):
        raise TypeError(f"an address is (host, port) or a UNIX socket path (str), not {address!r}")
    host, port = address
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, not {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # ([::1], port): the brackets of a URL
    if "\0" in host:
        raise ValueError(f"a host cannot hold NUL: {host!r}")
    return host, port


def family(address: Address) -> int:
    """``AF_UNIX``, ``AF_INET6`` or ``AF_INET``."""
    if isinstance(address, str):
        return socket.AF_UNIX  # type: ignore[attr-defined, no-any-return, unused-ignore]
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def describe(address: Any) -> str:
    """``127.0.0.1:8000``, ``[::1]:8000`` or ``unix:/run/app.sock``, for messages."""
    if isinstance(address, str):
        return f"unix:{address}"
    if isinstance(address, (tuple, list)) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return repr(address)


def bind(address: Address, type: int = socket.SOCK_STREAM, umask: int | None = None) -> Any:
    """A socket bound to ``address``: listening (TCP with ``TCP_NODELAY``) or datagram.

    IPv6 sockets take IPv6 only.  A UNIX path's stale socket (nobody accepts there) is
    removed first; anything else there is ``EADDRINUSE``, with the reason.  ``umask``
    applies to the socket file while it is made.
    """
    fam = family(address)
    if type == socket.SOCK_STREAM and fam != getattr(socket, "AF_UNIX", None):
        try:
            return nodelay(socket.create_server(address, family=fam))
        except OSError as exc:
            if not exc.errno:
                raise
            # (create_server's text repeats the address: the caller names it once)
            raise OSError(exc.errno, os.strerror(exc.errno)) from None
    if isinstance(address, str):
        _remove_stale(address)
    sock = socket.socket(fam, type)
    try:
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        old = None if umask is None else os.umask(umask)
        try:
            sock.bind(address)
        finally:
            if old is not None:
                os.umask(old)
        if type == socket.SOCK_STREAM:
            sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale(path: str) -> None:
    """Unlink ``path`` when it is a UNIX socket that nobody accepts on."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EADDRINUSE, "the path exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:  # type: ignore[attr-defined, unused-ignore]
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # a socket left by a process that is gone
            return
        except OSError:
            return  # (not a stream socket, or no permission: bind says what is wrong)
    raise OSError(errno.EADDRINUSE, "a process accepts connections there")


def unlink(sock: socket.socket) -> None:
    """Remove the file of a UNIX socket this process bound (once it stops listening)."""
    try:
        path = sock.getsockname()
    except OSError:
        return
    if isinstance(path, str) and path and not path.startswith("\0"):
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass  # (gone already, or replaced: not ours to remove)
