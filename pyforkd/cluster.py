"""The cluster: a primary that shares a listening socket's connections across workers.

In progress (see the open issue): this module has the round-robin hand-off, the part the
rest builds on.  The primary owns the listening socket; a C thread (csrc/unix/dispatch.c,
no GIL) accepts and hands each connection to the next worker with room over that
worker's private socket, and keeps its own copy until the worker acknowledges it, so a
connection given to a worker that dies first goes to another: none is lost::

    lsock = socket.create_server(("127.0.0.1", 8000))
    rr = cluster.RoundRobin(lsock)
    slot, theirs = rr.connect()                            # one per worker
    w = pyforkd.fork_worker(serve)
    w.send("your connections", handle=theirs)

    # in the worker
    _, sock = pyforkd.parent().recv(with_handle=True)
    listener = cluster.Listener(sock)
    conn, address = listener.accept()                      # exactly like socket.accept()
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from . import _bindings as _b
from .errors import ChannelClosedError

__all__ = ["Listener", "RoundRobin"]


class Listener:
    """A worker's end of the round-robin hand-off: ``accept()`` like a listening socket.

    ``sock`` is the socket the primary's :meth:`RoundRobin.connect` made for this worker.
    ``fileno()`` is readable when a connection waits, so a Listener works with
    ``selectors``; ``accept()`` returns ``(socket, address)`` as ``socket.accept()`` does,
    after telling the primary that this worker has the connection.
    """

    def __init__(self, sock: socket.socket) -> None:
        if not isinstance(sock, socket.socket) or sock.family != socket.AF_UNIX:
            raise TypeError("Listener needs the AF_UNIX socket the primary gave this worker")
        self.socket = sock
        self._lock = threading.Lock()

    def fileno(self) -> int:
        """The hand-off socket's descriptor (readable when a connection waits)."""
        return self.socket.fileno()

    def accept(self, timeout: float | None = None) -> tuple[socket.socket, Any]:
        """The next connection and its peer's address; ``TimeoutError`` after ``timeout``.

        :class:`ChannelClosedError` once the primary is gone.
        """
        fd = self.socket.fileno()
        if fd < 0:
            raise ChannelClosedError("the listener is closed")
        with self._lock:
            while True:
                if timeout is not None:
                    ready = _b.fd_wait(fd, _b.POLL_IN, max(0, int(timeout * 1000)))
                    if ready is False:
                        raise TimeoutError("no connection came in time")
                try:
                    got = _b.dispatch_take(fd, timeout is None)
                except (BrokenPipeError, ConnectionResetError):
                    raise ChannelClosedError("the primary is gone") from None
                if got is not None:
                    break
            conn_fd, seq = got
            try:
                conn = socket.socket(fileno=conn_fd)
            except OSError:
                os.close(conn_fd)
                raise
            try:
                _b.dispatch_ack(fd, seq)
            except OSError:
                conn.close()  # the primary is gone: it gives the connection to no one else
                raise ChannelClosedError("the primary is gone") from None
        try:
            address = conn.getpeername()
        except OSError:
            address = None  # the client left already: the first recv says so
        return conn, address

    def close(self) -> None:
        """Stop taking connections (the primary gives this worker's others to the rest)."""
        self.socket.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RoundRobin:
    """The primary's side: the dispatcher over ``listener`` (a listening socket it keeps).

    ``max_inflight`` bounds each worker's connections handed and not yet accepted.
    """

    def __init__(self, listener: socket.socket, max_inflight: int = 0) -> None:
        if not isinstance(listener, socket.socket):
            raise TypeError("RoundRobin needs a listening socket")
        self.listener = listener
        self._dispatcher = _b.Dispatcher(listener.fileno(), max_inflight)

    def connect(self) -> tuple[int, socket.socket]:
        """A new worker's hand-off socket: ``(slot, its end)`` to send to the worker."""
        ours, theirs = socket.socketpair()
        try:
            slot = self._dispatcher.add(ours.fileno())
        except BaseException:
            ours.close()
            theirs.close()
            raise
        ours.detach()  # the dispatcher owns it now
        return slot, theirs

    def remove(self, slot: int) -> bool:
        """No more connections for that worker; those it did not accept go to the others."""
        return self._dispatcher.remove(slot)

    def stats(self, slot: int = -1) -> dict[str, int]:
        """A worker's counters, or (slot -1) the dispatcher's."""
        a, b, c, d = self._dispatcher.stats(slot)
        if slot == -1:
            return {"accepted": a, "waiting": b, "redispatched": c, "accept_errors": d}
        return {"handed": a, "accepted": b, "in_flight": c, "live": d}

    def close(self) -> None:
        """Stop dispatching; connections no worker accepted are closed."""
        self._dispatcher.close()
