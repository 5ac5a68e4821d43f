"""ASGI apps in cluster workers, on uvicorn's HTTP/1.1 and websocket protocols.

``pip install 'pyforkd[asgi]'``.  Each connection the worker takes (under every policy,
``"rr"`` included) goes to ``loop.connect_accepted_socket`` with uvicorn's protocol
(httptools when installed, else h11).  Lifespan startup and shutdown run once per worker.
When the primary stops the worker, it stops accepting, answers the next request of each
connection with ``Connection: close``, closes a connection idle for half a second, and
exits once every connection is done.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ChannelClosedError
from . import _worker_side
from ._log import access_line


def _optional(name: str) -> Any:
    """The module ``name``, or None where it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


uvicorn = _optional("uvicorn")
_server = _optional("uvicorn.server")  # (ServerState: where uvicorn counts connections)
uvloop = _optional("uvloop")  # (asyncio's own loop without it)

__all__ = ["serve"]

log = logging.getLogger("pyforkd.asgi")

STOP_IDLE = 0.5  # while stopping: a connection idle this long is closed
_PUMP_POLL = 0.2  # Windows: how often a listener's thread looks for the stop
_BOOT_ERROR = 3  # the cluster does not restart a worker that exits so


def serve(
    app: Callable[..., Any],
    listeners: Iterable[Any],
    *,
    access_log: Callable[[str], None] | None = None,
    **uvicorn_options: Any,
) -> None:
    """In a worker: serve ASGI ``app`` on ``listeners`` until the primary stops it.

    ``uvicorn_options`` go to ``uvicorn.Config`` (``root_path``, ``timeout_keep_alive``,
    ``ws``, ``proxy_headers``, ...).  A failed lifespan startup exits with status 3, which
    the cluster does not restart.
    """
    if uvicorn is None:
        raise RuntimeError("ASGI apps run on uvicorn's protocols: pip install 'pyforkd[asgi]'")
    runner = asyncio.run if uvloop is None else uvloop.run
    runner(_serve(app, list(listeners), access_log, uvicorn_options))


async def _serve(
    app: Callable[..., Any],
    listeners: list[Any],
    access_log: Callable[[str], None] | None,
    options: dict[str, Any],
) -> None:
    options.setdefault("log_config", None)  # (this program's logging is its own)
    options.setdefault("proxy_headers", False)
    me = _worker_side.current()
    timeout = me.timeout if me is not None else None
    starts: dict[int, tuple[float, str]] = {}  # a request's scope -> its start, its line
    if access_log is not None:
        app = _AccessLog(app, access_log)
    if timeout:
        app = _Timed(app, starts)
    stop = asyncio.Event()
    config = uvicorn.Config(app, access_log=False, **options)
    config.load()
    lifespan = config.lifespan_class(config)
    await lifespan.startup()
    if lifespan.should_exit:
        sys.exit(_BOOT_ERROR)
    state = _server.ServerState()
    loop = asyncio.get_running_loop()

    def protocol() -> asyncio.Protocol:
        return config.http_protocol_class(
            config=config, server_state=state, app_state=lifespan.state
        )

    async def tick() -> None:
        # What uvicorn's own server does each second: the Date header of every response.
        while True:
            date = email.utils.formatdate(usegmt=True).encode()
            state.default_headers = [(b"date", date), *config.encoded_headers]
            await asyncio.sleep(1.0)

    ticker = loop.create_task(tick())
    done = threading.Event()
    if timeout:
        threading.Thread(
            target=_watch,
            args=(state, starts, timeout, loop, done),
            name="pyforkd asgi watchdog",
            daemon=True,
        ).start()
    if me is not None:
        me.on("stopping", lambda: loop.call_soon_threadsafe(stop.set))
    tasks: set[asyncio.Task[Any]] = set()

    def connect(sock: Any) -> None:
        task = loop.create_task(loop.connect_accepted_socket(protocol, sock))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def take(listener: Any) -> None:
        try:
            burst = listener.accept_many(64)
        except ChannelClosedError:  # the primary stopped this worker's listening
            stop.set()
            return
        for sock, _ in burst:
            connect(sock)

    watched: list[int] = []
    pumps: list[threading.Thread] = []
    unlisten = threading.Event()
    for listener in listeners:
        if sys.platform == "win32":  # (the proactor loop has no add_reader)
            pump = threading.Thread(
                target=_pump, args=(listener, loop, connect, stop, unlisten), daemon=True
            )
            pump.start()
            pumps.append(pump)
        else:
            loop.add_reader(listener.fileno(), take, listener)
            watched.append(listener.fileno())
    try:
        await stop.wait()
    finally:
        for fd in watched:
            loop.remove_reader(fd)
        unlisten.set()  # (the pumps see it within a poll)
        for pump in pumps:
            await asyncio.to_thread(pump.join)
        for listener in listeners:
            listener.close()
    # Connections taken just now get their protocol at the loop's next turns (a task
    # each): they are waited for, so that the stop serves them too.
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    # Each request from now on says close: the app every connection runs is swapped
    # (uvicorn's protocols take their app from the config, and keep it).
    closing = _Closing(config.loaded_app)
    config.loaded_app = closing
    for conn in list(state.connections):
        if hasattr(conn, "app"):
            conn.app = closing
    await _finish(state)
    done.set()
    ticker.cancel()
    await lifespan.shutdown()


def _pump(
    listener: Any,
    loop: asyncio.AbstractEventLoop,
    connect: Callable[[Any], None],
    stop: asyncio.Event,
    done: threading.Event,
) -> None:
    """On Windows: take ``listener``'s connections in a thread, each handed to ``loop``."""
    while not done.is_set():
        try:
            sock, _ = listener.accept(timeout=_PUMP_POLL)
        except TimeoutError:
            continue
        except (ChannelClosedError, OSError):  # the primary stopped this worker's listening
            loop.call_soon_threadsafe(stop.set)
            return
        loop.call_soon_threadsafe(connect, sock)


async def _finish(state: Any) -> None:
    """Let every connection end well: see the module's docstring.

    Each request that starts from now on is answered with ``Connection: close`` (see
    :class:`_Closing`); a connection whose last request is done and that has had no other
    for ``STOP_IDLE`` is closed.  (A request is seen by its cycle, which is new for each:
    a weak reference tells a new one from the last one seen.)
    """
    seen: dict[Any, tuple[Any, float]] = {}
    while state.connections:
        now = time.monotonic()
        for conn in list(state.connections):
            cycle: Any = getattr(conn, "cycle", None)
            last = seen.get(conn)
            if cycle is not None and not cycle.response_complete:
                seen[conn] = (weakref.ref(cycle), now)  # busy
                if not cycle.response_started:
                    cycle.keep_alive = False  # (begun before the stop: it says close too)
            elif last is None or (cycle is not None and last[0]() is not cycle):
                seen[conn] = (None if cycle is None else weakref.ref(cycle), now)
            elif now - last[1] >= STOP_IDLE:
                conn.shutdown()  # (idle: closed now)
        await asyncio.sleep(0.02)


def _watch(
    state: Any,
    starts: dict[int, tuple[float, str]],
    timeout: float,
    loop: asyncio.AbstractEventLoop,
    done: threading.Event,
) -> None:
    """The watchdog: this worker is alive, and no request runs over ``timeout``.

    Its beat stops when the loop holds the GIL for good (the primary then kills the
    worker).  A request over the limit is answered 503 where nothing was sent yet, its
    connection ended, and this worker replaced.
    """
    me = _worker_side.current()
    while not done.wait(min(1.0, timeout / 4)):
        if me is not None:
            me.slot.beat()
        now = time.monotonic()
        for conn in list(state.connections):
            cycle: Any = getattr(conn, "cycle", None)
            if cycle is None or cycle.response_complete or cycle.disconnected:
                continue
            start, line = starts.get(id(cycle.scope), (now, ""))
            if now - start <= timeout:
                continue
            # (the app's later sends are dropped, as for a client that left)
            cycle.disconnected = True
            # (asyncio lends a TransportSocket, without send(): a duplicate of it writes)
            lent = conn.transport.get_extra_info("socket")
            sock = None if lent is None else lent.dup()
            try:
                _worker_side.timed_out(sock, not cycle.response_started, line, timeout)
            finally:
                if sock is not None:
                    sock.close()
            loop.call_soon_threadsafe(conn.transport.abort)


class _Closing:
    """ASGI middleware for a stopping worker: each response says ``Connection: close``.

    The client then opens its next connection to another worker; nothing it sent is lost.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)


class _Timed:
    """ASGI middleware: when each HTTP request started, for the watchdog."""

    def __init__(self, app: Callable[..., Any], starts: dict[int, tuple[float, str]]) -> None:
        self.app = app
        self.starts = starts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.starts[id(scope)] = (time.monotonic(), _line(scope))
        try:
            await self.app(scope, receive, send)
        finally:
            self.starts.pop(id(scope), None)


def _line(scope: Any) -> str:
    """The request line of an HTTP scope, for the log."""
    target = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    return f"{scope['method']} {target.decode('latin-1')} HTTP/{scope['http_version']}"


class _AccessLog:
    """ASGI middleware: one combined-format line per HTTP response."""

    def __init__(self, app: Callable[..., Any], write: Callable[[str], None]) -> None:
        self.app = app
        self.write = write

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [0, 0]  # code, body bytes

        async def counting(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                status[1] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting)
        finally:
            headers = dict(scope.get("headers") or [])
            client = scope.get("client") or ("-", 0)
            self.write(
                access_line(
                    client[0],
                    _line(scope),
                    status[0] or 500,
                    status[1],
                    headers.get(b"referer", b"-").decode("latin-1"),
                    headers.get(b"user-agent", b"-").decode("latin-1"),
                )
            )
