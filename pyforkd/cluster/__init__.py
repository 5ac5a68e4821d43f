"""The cluster: a primary that shares a port across workers and restarts them.

The primary, its workers, the ``"rr"`` policy (a C dispatcher thread, no GIL, hands
every connection over and keeps its copy until the worker has it: a worker that dies
loses none), ``"shared"`` and ``"reuseport"``, events, restarts with back-off and a
crash-loop stop, zero-downtime reloads.  On Windows workers are spawned (there is no
fork) and share the listening socket by default (``"shared"``, as in Node there); ``"rr"``
works there too.  The Node-style use::

    from pyforkd import cluster
    if cluster.is_primary:
        for _ in range(2):
            cluster.fork()
        cluster.on("exit", lambda worker, code, signal: print("worker", worker.id, "died"))
        cluster.run()                                   # blocks: supervise, restart
    else:
        listener = cluster.listen(("127.0.0.1", 3000))  # .accept() like a socket
        serve_forever(listener)

A forked worker runs the script's ``__main__`` again from the top, with ``is_worker``
true (its imports are warm: it is a fork).  SIGTERM or SIGINT to the primary stop the
cluster (on Windows Ctrl-Break or Ctrl-C): workers stop taking connections, finish, and
exit.

The package, one module per concern: this one (Node's module-level API), ``_settings``,
``_supervise`` (the primary: ``Cluster`` and ``Worker``), ``_handoff`` (the ``"rr"``
hand-off), ``_worker_side`` (``cluster.worker`` and ``listen()``), ``_board`` (what
workers tell the primary through shared memory), ``control`` (``pyforkd status``
and friends over a local socket), ``_systemd``, ``_procstat``, and ``servers``
(socketserver and asyncio).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import web
from ._handoff import Listener, RoundRobin
from ._log import say
from ._settings import DEFAULTS, EVENTS, WORKER_EVENTS, parse_size
from ._supervise import Cluster, Worker
from ._worker_side import SELF_EVENTS, current, heartbeat, listen, ready
from .servers import (
    AsyncServer,
    HTTPServer,
    ServerMixin,
    TCPServer,
    ThreadingHTTPServer,
    ThreadingTCPServer,
    start_server,
)

__all__ = [
    "DEFAULTS",
    "EVENTS",
    "SELF_EVENTS",
    "WORKER_EVENTS",
    "AsyncServer",
    "Cluster",
    "HTTPServer",
    "Listener",
    "RoundRobin",
    "ServerMixin",
    "TCPServer",
    "ThreadingHTTPServer",
    "ThreadingTCPServer",
    "Worker",
    "default",
    "fork",
    "heartbeat",
    "listen",
    "on",
    "parse_size",
    "ready",
    "reload",
    "run",
    "say",
    "scale",
    "serve",
    "setup_primary",
    "shutdown",
    "start_server",
]


_default = Cluster()


def default() -> Cluster:
    """The cluster that this module's functions drive (``pyforkd run``'s)."""
    return _default


def __getattr__(name: str) -> Any:
    if name in ("is_primary", "is_worker", "workers", "settings"):
        return getattr(_default, name)
    if name == "worker":
        return current()
    if name == "stopping":
        me = current()
        if me is None:
            raise AttributeError("cluster.stopping is a worker's: the primary has none")
        return me.stopping
    raise AttributeError(f"module 'pyforkd.cluster' has no attribute {name!r}")


def fork(env: Mapping[str, str] | None = None) -> Worker:
    """Start a worker (the default cluster's :meth:`Cluster.fork`)."""
    return _default.fork(env)


def on(event: str, fn: Callable[..., Any]) -> None:
    """Call ``fn`` on ``event`` (the default cluster's :meth:`Cluster.on`).

    In a worker: ``"stopping"`` (and the other events of ``cluster.worker.on``), when the
    primary stops this worker; ``cluster.stopping`` is the same as a ``threading.Event``.
    """
    me = current()
    if me is not None:
        me.on(event, fn)
        return
    _default.on(event, fn)


def run() -> None:
    """Supervise the workers (the default cluster's :meth:`Cluster.run`)."""
    _default.run()


def setup_primary(**settings: Any) -> None:
    """Settings for workers forked after this (the default cluster's)."""
    _default.setup_primary(**settings)


def reload() -> None:
    """Replace every worker without refusing a connection (the default cluster's)."""
    _default.reload()


def scale(n: int) -> None:
    """Run ``n`` workers (the default cluster's :meth:`Cluster.scale`)."""
    _default.scale(n)


def shutdown(graceful_timeout: float | None = None, *, fast: bool = False) -> None:
    """Stop the default cluster (see :meth:`Cluster.shutdown`)."""
    _default.shutdown(graceful_timeout, fast=fast)


def serve(
    app: Callable[..., Any],
    bind: Any = web.DEFAULT_BIND,
    *,
    workers: int = 1,
    threads: int = 1,
    interface: str | None = None,
    access_log: str | None = None,
    **settings: Any,
) -> None:
    """Serve a WSGI or ASGI ``app`` on ``workers`` processes: ``pyforkd run MODULE:APP``.

    Call it in the script's ``__main__`` block.  In the primary it binds ``bind`` (one
    address or a list: ``"HOST:PORT"``, ``"[::1]:PORT"``, ``"unix:PATH"``, ``"fd://N"`` or
    ``(host, port)``), starts the workers with ``settings`` (as :func:`setup_primary`)
    and supervises them until the cluster stops; each worker, running the script again,
    serves ``app`` there: WSGI with ``threads`` threads, ASGI on uvicorn's protocols.
    ``interface`` (``"wsgi"``/``"asgi"``) overrides the detection; ``access_log`` is
    ``"-"`` (stdout) or a file.
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, not {workers!r}")
    kind = web.interface(app, interface)
    binds = [bind] if isinstance(bind, (str, tuple)) else list(bind)
    addresses = [web.parse_bind(b) if isinstance(b, str) else b for b in binds]
    if current() is not None:
        # (the primary's addresses: an fd://N it adopted has become one)
        web.serve_in_worker(app, web.binds_from_env(), kind, threads, access_log)
        return
    for i, address in enumerate(addresses):
        if isinstance(address, tuple) and address[0] == "fd":
            addresses[i] = _default.adopt(web.adopt_fd(address[1]))
    _default.setup_primary(**settings)
    env = web.binds_env(addresses)
    for _ in range(workers):
        _default.fork(env)
    _default.run()
