"""Web apps on the cluster: ``pyforkd run MODULE:APP`` and ``cluster.serve(app, ...)``.

The primary binds (``-b``), each worker imports the app (or has it, forked), listens on
every address and serves it: WSGI on pyforkd's own server, ASGI on uvicorn's protocols.
A worker of ``pyforkd run MODULE:APP`` runs ``_run_app.py``, which calls :func:`worker`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import logging.handlers
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import _address, _worker_side, asgi, wsgi

INTERFACES = ("wsgi", "asgi")
DEFAULT_BIND = "127.0.0.1:8000"


def parse_bind(text: str) -> Any:
    """An address for ``cluster.listen`` (or ``("fd", N)``) from a ``-b`` argument.

    ``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` (every IPv4 address), ``unix:PATH`` or
    ``fd://N``.  ``ValueError`` says what is wrong.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"a bind address is HOST:PORT, unix:PATH or fd://N, not {text!r}")
    if text.startswith("unix:"):
        return _address.check(text[5:])
    if text.startswith("fd://"):
        number = text[5:]
        if not number.isdigit():
            raise ValueError(f"fd://N takes a descriptor number, not {text!r}")
        return ("fd", int(number))
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"a bind address is HOST:PORT, unix:PATH or fd://N, not {text!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"an IPv6 host goes in brackets: [{host}]:{port}, not {text!r}")
    return _address.check((host or "0.0.0.0", int(port)))


def load(spec: str, factory: bool = False) -> Callable[..., Any]:
    """The app named ``MODULE:ATTR`` (``ATTR`` may be dotted); called when ``factory``.

    The current directory is searched first, as ``python -m`` does.  ``ImportError`` or
    ``AttributeError`` name what is missing.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"an app is MODULE:ATTR (e.g. myapp:app), not {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise  # (something the module imports is missing: its own error says what)
        raise ImportError(f"no module {module_name!r} (for the app {spec!r})") from None
    app: Any = module
    for part in attr.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise AttributeError(f"module {module_name!r} has no {attr!r} (the app)") from None
    if factory:
        app = app()
    if not callable(app):
        raise TypeError(f"{spec} is a {type(app).__name__}, not an app (a callable)")
    return app


def interface(app: Any, override: str | None = None) -> str:
    """``"asgi"`` or ``"wsgi"``; ``override`` wins.

    ASGI: a coroutine function, or an object whose ``__call__`` is one.
    """
    if override is not None:
        if override not in INTERFACES:
            raise ValueError(f"interface is wsgi or asgi, not {override!r}")
        return override
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else type(app).__call__
    return "asgi" if inspect.iscoroutinefunction(call) else "wsgi"


def serve_in_worker(
    app: Callable[..., Any],
    binds: Sequence[Any],
    kind: str,
    threads: int = 1,
    access_log: str | None = None,
) -> None:
    """Listen on every address and serve ``app`` until the primary stops this worker."""
    listeners = [_worker_side.listen(address) for address in binds]
    log = _access_logger(access_log)
    if kind == "asgi":
        asgi.serve(app, listeners, access_log=log)
    else:
        wsgi.serve(app, listeners, threads, access_log=log)


def _access_logger(where: str | None) -> Callable[[str], None] | None:
    """``-``: stdout; a path: that file (appended, reopened on SIGUSR1); None: no log."""
    if where is None:
        return None
    logger = logging.getLogger("pyforkd.access")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if where == "-":
        handler: logging.Handler = logging.StreamHandler(sys.stdout)
    else:
        # (logrotate moves the file away: the next line reopens it)
        handler = logging.handlers.WatchedFileHandler(where)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger.info


def worker(settings: str) -> None:
    """A worker of ``pyforkd run MODULE:APP``, from its settings (JSON; see :func:`plan`)."""
    opts = json.loads(settings)
    app = load(opts["app"], opts["factory"])
    kind = interface(app, opts["interface"])
    binds = [b if isinstance(b, str) else tuple(b) for b in opts["binds"]]
    serve_in_worker(app, binds, kind, opts["threads"], opts["access_log"])


def adopt_fd(number: int) -> socket.socket:
    """The listening socket behind descriptor ``number`` (``fd://N``), for the primary."""
    try:
        sock = socket.socket(fileno=number)
    except OSError as exc:
        raise OSError(exc.errno, f"fd://{number}: {exc.strerror}") from None
    try:
        accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        accepting = 1  # (this OS cannot tell: trust it)
    if sock.type != socket.SOCK_STREAM or not accepting:
        sock.detach()
        raise ValueError(f"fd://{number} is not a listening stream socket")
    os.set_inheritable(number, False)
    return sock


def plan(
    app: str,
    binds: Sequence[Any],
    *,
    factory: bool = False,
    kind: str | None = None,
    threads: int = 1,
    access_log: str | None = None,
) -> str:
    """A worker's settings, as :func:`worker` reads them."""
    return json.dumps(
        {
            "app": app,
            "binds": [list(b) if isinstance(b, tuple) else b for b in binds],
            "factory": factory,
            "interface": kind,
            "threads": threads,
            "access_log": access_log,
        }
    )


_BINDS_ENV = "PYFORKD_BINDS"


def binds_env(addresses: Sequence[Any]) -> dict[str, str]:
    """What tells a worker of ``cluster.serve`` the addresses its primary chose."""
    return {_BINDS_ENV: json.dumps([list(a) if isinstance(a, tuple) else a for a in addresses])}


def binds_from_env() -> list[Any]:
    """In a worker of ``cluster.serve``: its primary's addresses."""
    text = os.environ.get(_BINDS_ENV)
    if text is None:
        raise RuntimeError("this worker was not started by cluster.serve()")
    return [a if isinstance(a, str) else tuple(a) for a in json.loads(text)]


RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_run_app.py")
