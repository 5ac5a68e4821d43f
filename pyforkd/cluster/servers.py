"""Servers whose connections come from the cluster: ``socketserver`` and asyncio."""

from __future__ import annotations

import asyncio
import http.server
import socket
import socketserver
from collections.abc import Callable
from typing import Any

try:
    import psutil  # type: ignore[import-untyped]  # optional: where there is no /proc
except ImportError:
    psutil = None

from .. import _bindings as _b
from ..errors import ChannelClosedError
from . import _worker_side
from ._handoff import Listener
from ._settings import POLL_SECONDS
from ._worker_side import listen


class ServerMixin:
    """Makes a ``socketserver`` server take its connections from the cluster.

    Put it first: ``class Server(cluster.ServerMixin, socketserver.ThreadingTCPServer)``.
    In a worker, the server's address is what it asks ``cluster.listen()`` for (under every
    policy); ``serve_forever()`` ends when the primary stops giving it connections (a
    reload, a scale-down, a stop), and ``server_close()`` then waits for the requests in
    progress (with ``ThreadingMixIn``), so a worker drains before it exits.
    """

    listener: Listener
    server_address: Any
    socket: Any  # a socket.socket (in this class, that name is the attribute)

    def server_bind(self) -> None:
        """Listen through the cluster (instead of binding a socket of its own).

        The classes after this one still run their own ``server_bind`` (http.server's
        sets ``server_name``, wsgiref's its base environ), on a stand-in socket that is
        already bound.
        """
        made = self.socket  # the one socketserver made: never bound
        self.listener = listen(self.server_address)
        self.socket = _Bound(self.listener.address)
        try:
            super().server_bind()  # type: ignore[misc]
        finally:
            made.close()
            # (Windows "rr": a pipe, no socket; the closed one stays for socketserver)
            self.socket = made if self.listener.socket is None else self.listener.socket
        self.server_address = self.listener.address

    def server_activate(self) -> None:
        """Nothing to do: the primary listens."""

    def fileno(self) -> int:
        """Readable when a connection waits (what ``serve_forever`` selects on)."""
        return self.listener.fileno()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until shut down, as socketserver's loop.

        On Windows under ``"rr"`` it waits on the hand-off pipe itself (``select`` there
        takes sockets only).
        """
        if not (_b.WINDOWS and self.listener.socket is None):
            super().serve_forever(poll_interval)  # type: ignore[misc]
            return
        state = self.__dict__  # socketserver.BaseServer's private flags
        state["_BaseServer__is_shut_down"].clear()
        try:
            while not state["_BaseServer__shutdown_request"]:
                if self.listener.wait(poll_interval):
                    self._handle_request_noblock()  # type: ignore[attr-defined]
                self.service_actions()
        finally:
            state["_BaseServer__shutdown_request"] = False
            state["_BaseServer__is_shut_down"].set()

    def get_request(self) -> tuple[Any, Any]:
        """The next connection, if it is still there (another worker may take it first)."""
        try:
            return self.listener.accept(timeout=0)
        except TimeoutError:
            raise OSError("no connection waits") from None  # socketserver skips this one
        except ChannelClosedError:
            self._BaseServer__shutdown_request = True  # ends serve_forever
            raise OSError("the primary stopped this worker's listening") from None

    def service_actions(self) -> None:
        """Between requests (``serve_forever`` calls it): this worker waits, not hung."""
        me = _worker_side.current()
        if me is not None:
            me.slot.idle()
        if self.listener.primary_said_stop():
            self._BaseServer__shutdown_request = True  # ends serve_forever
        super().service_actions()  # type: ignore[misc]

    def server_close(self) -> None:
        """Stop taking connections (and, with threads, wait for the requests served)."""
        listener = self.__dict__.get("listener")
        if listener is not None:  # (None: server_bind failed, and socketserver closes)
            listener.close()
        super().server_close()  # type: ignore[misc]


class _Bound:
    """A socket already bound to ``address``.

    It has what a ``server_bind`` of socketserver's touches, and no more.
    """

    def __init__(self, address: Any) -> None:
        self.address = address

    def setsockopt(self, *args: Any) -> None:
        """Nothing: the primary set up the listening socket (SO_REUSEADDR and all)."""

    def bind(self, address: Any) -> None:
        """Nothing: the primary bound it already."""

    def getsockname(self) -> Any:
        return self.address


class TCPServer(ServerMixin, socketserver.TCPServer):
    """``socketserver.TCPServer`` whose connections come from the cluster."""


class ThreadingTCPServer(ServerMixin, socketserver.ThreadingTCPServer):
    """``socketserver.ThreadingTCPServer`` whose connections come from the cluster."""


class HTTPServer(ServerMixin, http.server.HTTPServer):
    """``http.server.HTTPServer`` whose connections come from the cluster."""


class ThreadingHTTPServer(ServerMixin, http.server.ThreadingHTTPServer):
    """``http.server.ThreadingHTTPServer`` whose connections come from the cluster."""


async def start_server(
    client_connected_cb: Callable[[Any, Any], Any], address: Any, **options: Any
) -> AsyncServer:
    """In a worker, under asyncio: serve ``address`` like ``asyncio.start_server``.

    Each connection the primary gives this worker becomes an ``(asyncio.StreamReader,
    asyncio.StreamWriter)`` pair passed to ``client_connected_cb`` (a coroutine function
    or a plain one); ``options`` go to ``asyncio.open_connection`` (e.g. ``limit``).
    """
    loop = asyncio.get_running_loop()
    if _b.WINDOWS and not isinstance(loop, asyncio.SelectorEventLoop):
        raise NotImplementedError(
            "cluster.start_server on Windows needs a selector event loop (the proactor has "
            "no add_reader): asyncio.set_event_loop_policy("
            "asyncio.WindowsSelectorEventLoopPolicy()) before asyncio.run"
        )
    listener = listen(address)
    if _b.WINDOWS and listener.socket is None:
        listener.close()  # (the primary gives its connections to the other workers)
        raise NotImplementedError(
            "cluster.start_server on Windows needs policy 'shared' (under 'rr' a worker's "
            "hand-off pipe is no socket the event loop can watch)"
        )
    server = AsyncServer(listener, loop)

    async def serve(conn: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=conn, **options)
        result = client_connected_cb(reader, writer)
        if asyncio.iscoroutine(result):
            await result

    def ready() -> None:
        while True:
            try:
                conn, _ = listener.accept(timeout=0)
            except TimeoutError:
                return
            except ConnectionError:  # the primary stopped giving us connections
                server.close()
                return
            task = loop.create_task(serve(conn))
            server._tasks.add(task)
            task.add_done_callback(server._tasks.discard)

    me = _worker_side.current()
    if me is not None and me.timeout:
        slot, every = me.slot, me.timeout / 4

        # A loop that stops turning (a handler that blocks it) is a hung worker: the beat
        # below stops, and the primary's timeout kills it.
        def beat() -> None:
            if not server._closed.done():
                slot.beat()
                loop.call_later(every, beat)

        beat()
    if not listener.covers_primary:
        # fileno() does not cover the primary here (Windows): look at it now and then.
        def look() -> None:
            if server._closed.done():
                return
            if listener.primary_said_stop():
                server.close()
            else:
                loop.call_later(POLL_SECONDS * 5, look)

        look()
    server._fds.append(listener.fileno())  # (shared: it covers the primary's stop too)
    for fd in server._fds:
        loop.add_reader(fd, ready)
    return server


class AsyncServer:
    """What :func:`start_server` returns: ``close()``, ``await wait_closed()``."""

    def __init__(self, listener: Listener, loop: Any) -> None:
        self.listener = listener
        self._loop = loop
        self._fds: list[int] = []  # watched, by number (the listener may be closed first)
        self._tasks: set[Any] = set()
        self._closed = loop.create_future()

    def close(self) -> None:
        """Take no more connections (those being served go on)."""
        while self._fds:
            self._loop.remove_reader(self._fds.pop())
        self.listener.close()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Until :meth:`close` (or the primary's disconnect), then the open connections."""
        await self._closed
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
