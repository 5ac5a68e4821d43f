"""The ``"rr"`` hand-off: the primary's C dispatcher and a worker's end of it."""

from __future__ import annotations

import _socket
import socket
import sys
import threading
import time
from typing import Any, NamedTuple

from .. import _bindings as _b
from .. import _wire
from ..errors import ChannelClosedError


class Listener:
    """A worker's end of the round-robin hand-off: ``accept()`` like a listening socket.

    ``sock`` is the socket the primary's :meth:`RoundRobin.connect` made for this worker.
    ``fileno()`` is readable when a connection waits, so a Listener works with
    ``selectors``; ``accept()`` returns ``(socket, address)`` as ``socket.accept()`` does,
    after telling the primary that this worker has the connection.
    """

    def __init__(self, sock: Any) -> None:
        self.socket: socket.socket | None = None  # (None on Windows: a pipe, not a socket)
        if sys.platform == "win32" and isinstance(sock, _wire.Fd):
            # The hand-off pipe, as a handle of this process's own (no C runtime slot).
            self._fd = _b.take_inherited(sock.detach())
        elif isinstance(sock, socket.socket) and sock.family == getattr(socket, "AF_UNIX", -1):
            self.socket = sock
            self._fd = sock.fileno()
        else:
            raise TypeError("Listener needs the hand-off socket the primary gave this worker")
        self.address: Any = None  # the address the primary listens on
        self._lock = threading.Lock()
        self._kind: Kind | None = None  # what its connections are, once one came
        self.slot: Any = None  # the worker's board slot (set by cluster.listen())

    def fileno(self) -> int:
        """The hand-off socket's descriptor (readable when a connection waits).

        On Windows a pipe handle, which ``select`` does not take: see :meth:`wait`.
        """
        return self._fd

    def listening_socket(self) -> socket.socket:
        """The listening socket, for a server that accepts by itself.

        (uvicorn's ``Server``, aiohttp's ``SockSite``, waitress.)  Under ``"rr"`` the
        primary accepts and there is none: ``ValueError`` says so.
        """
        raise ValueError(
            "under policy 'rr' the primary accepts every connection: a server that "
            "accepts by itself needs policy 'shared' or 'reuseport' "
            "(setup_primary(policy='shared'), pyforkd run --policy shared)"
        )

    @property
    def covers_primary(self) -> bool:
        """True: :meth:`fileno` is readable when the primary stops giving connections."""
        return True

    def primary_said_stop(self) -> bool:
        """False: the primary's stop is seen by :meth:`accept` (the hand-off ends)."""
        return False

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a connection waits (or the primary is gone); False after ``timeout``."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        return bool(_b.fd_wait(self._fd, _b.POLL_IN, ms)) if self._fd >= 0 else True

    def accept(self, timeout: float | None = None) -> tuple[socket.socket, Any]:
        """The next connection and its peer's address; ``TimeoutError`` after ``timeout``.

        :class:`ChannelClosedError` once the primary is gone.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if deadline is not None and timeout != 0:  # (0: one non-blocking try)
                    left = max(0, int((deadline - time.monotonic()) * 1000))
                    if _b.fd_wait(self._checked(), _b.POLL_IN, left) is False:
                        raise TimeoutError("no connection came in time")
                got = self._take_handed(1, block=timeout is None)
                if got:
                    return got[0]
                if timeout == 0:
                    raise TimeoutError("no connection waits")

    def accept_many(self, limit: int = 64) -> list[tuple[socket.socket, Any]]:
        """Up to ``limit`` connections that wait now, without waiting (``[]``: none).

        One message tells the primary about all of them: cheaper than ``accept()`` each.
        :class:`ChannelClosedError` once the primary is gone.
        """
        with self._lock:
            return self._take_handed(limit, block=False)

    def _checked(self) -> int:
        if self._fd < 0:
            raise ChannelClosedError("the listener is closed")
        return self._fd

    def _take_handed(self, limit: int, block: bool) -> list[tuple[socket.socket, Any]]:
        """What the primary handed (waiting for the first with ``block``), acknowledged."""
        fd = self._checked()
        if self.slot is not None:
            self.slot.idle()
        taken: list[tuple[int, int]] = []
        gone = False
        while len(taken) < limit:
            try:
                got = _b.dispatch_take(fd, block and not taken)
            except (BrokenPipeError, ConnectionResetError):
                gone = True
                break
            if got is None:
                break
            taken.append(got)
        conns: list[socket.socket] = []
        try:
            for conn_fd, _ in taken:
                # Every connection of a listener is of one kind: asking the kernel for it
                # once saves system calls on every connection after the first.
                conn, self._kind = connection(conn_fd, self._kind, self.slot)
                conns.append(conn)
            if taken:
                _b.dispatch_ack(fd, [seq for _, seq in taken])
        except OSError as exc:
            for conn in conns:
                conn.close()
            for conn_fd, _ in taken[len(conns) :]:
                _b.close_native(conn_fd)
            if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                # (unacknowledged: the primary is gone and gives them to no one else)
                raise ChannelClosedError("the primary is gone") from None
            raise
        if gone and not conns:
            raise ChannelClosedError("the primary is gone")
        return [(conn, _peer(conn)) for conn in conns]

    def close(self) -> None:
        """Stop taking connections (the primary gives this worker's others to the rest)."""
        fd, self._fd = self._fd, -1
        if self.socket is not None:
            self.socket.close()
        elif fd >= 0:
            _b.close_native(fd)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _peer(conn: socket.socket) -> Any:
    try:
        return conn.getpeername()
    except OSError:
        return None  # the client left already: the first recv says so


class _Connection(socket.socket):
    """A connection a worker took: closing it tells the board (least-connections)."""

    __slots__ = ("_slot",)

    def _real_close(self, _ss: Any = _socket.socket) -> None:
        slot, self._slot = getattr(self, "_slot", None), None
        if slot is not None:
            slot.closed()
        _ss.close(self)


class Kind(NamedTuple):
    """What every connection of one listener is: learnt from its first connection."""

    family: int
    type: int
    proto: int
    set_nodelay: bool  # accepted TCP sockets do not inherit the listener's TCP_NODELAY here


def connection(fd: int, kind: Kind | None, slot: Any) -> tuple[socket.socket, Kind]:
    """A socket for a connection a worker accepted, and its listener's :class:`Kind`.

    A TCP connection is what ``accept()`` of a TCP socket gives: ``proto`` is
    ``IPPROTO_TCP`` and ``TCP_NODELAY`` is set, as asyncio and uvicorn expect (without it,
    Nagle and delayed ACKs stall each keep-alive reply for 40 ms).  ``slot``, the worker's
    board slot or None, counts it open until it is closed.
    """
    cls = socket.socket if slot is None else _Connection
    if kind is None:
        probe = socket.socket(fileno=fd)  # (asks the kernel for family and type)
        family, type_ = probe.family, probe.type
        probe.detach()
        tcp = family in (socket.AF_INET, socket.AF_INET6) and type_ == socket.SOCK_STREAM
        conn = cls(family, type_, socket.IPPROTO_TCP if tcp else 0, fd)
        set_nodelay = tcp and not conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        kind = Kind(family, type_, conn.proto, set_nodelay)
    else:
        conn = cls(kind.family, kind.type, kind.proto, fd)
    if kind.set_nodelay:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if slot is not None:
        conn._slot = slot  # type: ignore[attr-defined]
        slot.took()
    return conn, kind


def nodelay(sock: socket.socket) -> socket.socket:
    """``sock`` (a listening TCP socket) with ``TCP_NODELAY`` set.

    Its connections inherit it on Linux, the BSDs and Windows: no system call per
    connection there.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class RoundRobin:
    """The primary's side: the dispatcher over ``listener`` (a listening socket it keeps).

    ``max_inflight`` bounds each worker's connections handed and not yet accepted.
    """

    def __init__(
        self, listener: socket.socket, max_inflight: int = 0, least_connections: bool = False
    ) -> None:
        if not isinstance(listener, socket.socket):
            raise TypeError("RoundRobin needs a listening socket")
        self.listener = listener
        self._dispatcher = _b.Dispatcher(listener.fileno(), max_inflight)
        self._dispatcher.balance(least_connections)

    def connect(self, load: Any = None, pid: int = 0) -> tuple[int, Any]:
        """A new worker's hand-off channel: ``(slot, its end)`` to send to worker ``pid``.

        ``load``: a C pointer to the worker's count of open connections (for
        least-connections), kept valid until the worker is removed.
        """
        ours, theirs = handoff_pair(pid)
        try:
            slot = self.attach(ours, load)
        except BaseException:
            _wire.close_handle(theirs)
            raise
        return slot, theirs

    def attach(self, ours: int, load: Any = None) -> int:
        """Start handing connections over ``ours`` (see :func:`handoff_pair`); its slot.

        The dispatcher owns ``ours`` from now on (it is closed on failure too).
        """
        try:
            slot = self._dispatcher.add(ours)
        except BaseException:
            _b.close_native(ours)
            raise
        if load is not None:
            self._dispatcher.load(slot, load)
        return slot

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


def handoff_pair(pid: int) -> tuple[int, Any]:
    """A hand-off channel to worker ``pid``: ``(the dispatcher's end, the worker's)``.

    The dispatcher's end is a descriptor; the worker's a handle to send it (a socket; on
    Windows a pipe, as a :class:`Fd`).
    """
    ours, theirs = _b.fd_pair()
    try:
        if pid > 0:
            _b.fd_peer(ours, pid)  # (Windows: the connections handed over go to it)
        sendable: Any = (
            _wire.Fd(_b.adopt(theirs, True)) if _b.WINDOWS else socket.socket(fileno=theirs)
        )
    except BaseException:
        _b.close_native(ours)
        _b.close_native(theirs)
        raise
    return ours, sendable
