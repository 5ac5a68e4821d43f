"""ASGI apps in cluster workers, on uvicorn's HTTP/1.1 and websocket protocols.

``pip install 'pyforkd[asgi]'``.  Each connection the worker takes (under every policy,
``"rr"`` included) goes to ``loop.connect_accepted_socket`` with uvicorn's protocol
(httptools when installed, else h11).  Lifespan startup and shutdown run once per worker.
When the primary stops the worker, it stops accepting; a request in progress is answered
with ``Connection: close`` (when its response has not started) and its connection closes
after it; a connection idle for half a second is closed; the worker exits once every
connection is done.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ChannelClosedError
from . import _worker_side


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

STOP_IDLE = 0.5  # while stopping: a connection idle this long is closed
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
    config = uvicorn.Config(
        app if access_log is None else _AccessLog(app, access_log),
        access_log=False,
        **options,
    )
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
    stop = asyncio.Event()
    me = _worker_side.current()
    if me is not None:
        me.on("stopping", lambda: loop.call_soon_threadsafe(stop.set))
    tasks: set[asyncio.Task[Any]] = set()

    def take(listener: Any) -> None:
        for _ in range(64):  # a burst at a time
            try:
                sock, _ = listener.accept(timeout=0)
            except TimeoutError:
                return
            except ChannelClosedError:  # the primary stopped this worker's listening
                stop.set()
                return
            task = loop.create_task(loop.connect_accepted_socket(protocol, sock))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    watched = []
    for listener in listeners:
        loop.add_reader(listener.fileno(), take, listener)
        watched.append(listener.fileno())
    try:
        await stop.wait()
    finally:
        for fd in watched:
            loop.remove_reader(fd)
        for listener in listeners:
            listener.close()
    await _finish(state)
    ticker.cancel()
    await lifespan.shutdown()


async def _finish(state: Any) -> None:
    """Let every connection end well: see the module's docstring."""
    since: dict[Any, float] = {}
    while state.connections:
        now = time.monotonic()
        for conn in list(state.connections):
            cycle: Any = getattr(conn, "cycle", None)
            busy = cycle is not None and not cycle.response_complete
            if busy and not cycle.response_started:
                cycle.keep_alive = False  # its response says close, and it ends after it
            elif not busy and now - since.setdefault(conn, now) >= STOP_IDLE:
                conn.shutdown()  # (idle: closed now)
            if busy:
                since.pop(conn, None)
        await asyncio.sleep(0.02)


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
            target = scope.get("raw_path") or scope["path"].encode()
            if scope.get("query_string"):
                target += b"?" + scope["query_string"]
            line = f"{scope['method']} {target.decode('latin-1')} HTTP/{scope['http_version']}"
            when = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
            referer = headers.get(b"referer", b"-").decode("latin-1")
            agent = headers.get(b"user-agent", b"-").decode("latin-1")
            self.write(
                f'{client[0]} - - [{when}] "{line}" {status[0] or 500} {status[1] or "-"} '
                f'"{referer}" "{agent}"'
            )
