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
"""

from __future__ import annotations

import _socket
import asyncio
import atexit
import collections
import errno
import http.server
import os
import random
import runpy
import select
import selectors
import signal as _signal
import socket
import socketserver
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

try:
    import psutil  # type: ignore[import-untyped]  # optional: where there is no /proc
except ImportError:
    psutil = None

from . import _bindings as _b
from . import _board, _systemd
from . import channel as _channel
from . import worker as _worker
from .child_process import _live_pids, signal_name
from .errors import ChannelClosedError, FrameError

__all__ = [
    "EVENTS",
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
    "fork",
    "heartbeat",
    "listen",
    "on",
    "parse_size",
    "ready",
    "reload",
    "run",
    "scale",
    "setup_primary",
    "shutdown",
    "start_server",
]

EVENTS = ("fork", "online", "listening", "message", "disconnect", "exit", "setup")
WORKER_EVENTS = ("online", "listening", "message", "disconnect", "exit")
_NO_RESTART_CODES = (3, 4)  # a worker's "boot or app error: do not restart me"
_BACKOFF_FACTOR, _BACKOFF_MAX = 1.5, 15.0  # the restart delay grows so, up to 15 s
_STABLE_UPTIME = 30.0  # a worker that lived this long resets the back-off
_POLICIES = ("rr", "shared", "reuseport")
_BALANCES = ("round-robin", "least-connections")
# Windows: no fork, and workers share the listening socket (Node's default there too).
_DEFAULTS: dict[str, Any] = {
    "policy": "shared" if _b.WINDOWS else "rr",
    "balance": "round-robin",
    "start": "spawn" if _b.WINDOWS else "fork",
    "restart": True,
    "restart_delay": 0.1,  # the first restart's delay (then x1.5 per young death)
    "max_restarts": 10,  # restarts in a row of workers that died young: the cluster stops
    "timeout": None,
    "kill_timeout": 3.0,
    "ready_timeout": None,
    "wait_ready": False,
    "max_requests": None,
    "max_requests_jitter": 0,
    "max_memory": None,
    "graceful_timeout": 10.0,
    "log_prefix": False,
    # Node's: the script and its arguments (setup_primary() fills in this program's),
    # the interpreter's options (start="spawn"), and the directory workers start in.
    "exec": None,
    "args": None,
    "exec_argv": [],
    "cwd": None,
    # The workers' stdin/stdout/stderr: "inherit", "pipe" (the primary's end is the
    # worker's stdin/stdout/stderr attribute) or "ignore"; silent: all three "pipe".
    "silent": False,
    "stdio": None,
}
_STDIO_MODES = ("inherit", "pipe", "ignore")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str | int) -> int:
    """Bytes from ``300M``, ``1.5G``, ``4096`` (``ValueError`` names what is wrong)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"a memory size must be positive, not {text}")
        return text
    if not isinstance(text, str):
        raise TypeError(f"a memory size is a number of bytes or a string like '300M', not {text!r}")
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in "KMG" else ""
    try:
        n = float(t[: len(t) - len(unit)])
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (e.g. 300M, 1.5G, 4096)") from None
    if not n > 0:
        raise ValueError(f"a memory size must be positive, not {text!r}")
    return int(n * _UNITS[unit])


def _seconds(key: str, value: Any, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key} must be a number of seconds, not {value!r}")
    if not value > 0:
        raise ValueError(f"{key} must be positive, not {value!r}")
    return float(value)


def _check_setting(key: str, value: Any) -> Any:
    """A setup_primary() setting, checked (and normalized)."""
    if key == "policy":
        if value not in _POLICIES:
            raise ValueError(f"policy must be 'rr', 'shared' or 'reuseport', not {value!r}")
        if value == "reuseport" and not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError("policy 'reuseport' needs SO_REUSEPORT, which this OS lacks")
        return value
    if key == "balance":
        if value not in _BALANCES:
            raise ValueError(f"balance must be 'round-robin' or 'least-connections', not {value!r}")
        return value
    if key == "start":
        if value not in ("fork", "spawn"):
            raise ValueError(f"start must be 'fork' or 'spawn', not {value!r}")
        if value == "fork" and _b.WINDOWS:
            raise ValueError("start must be 'spawn' on Windows (it has no fork)")
        return value
    if key == "stdio":
        if value is None:
            return None
        if (
            not isinstance(value, (list, tuple))
            or len(value) < 3
            or any(m not in _STDIO_MODES for m in value[:3])
            or any(m != "ipc" for m in value[3:])
        ):
            raise ValueError(
                "stdio must list 'inherit', 'pipe' or 'ignore' for stdin, stdout and "
                f"stderr (then 'ipc' at most), not {value!r}"
            )
        return list(value[:3])
    if key in ("restart", "wait_ready", "log_prefix", "silent"):
        if not isinstance(value, bool):
            raise TypeError(f"{key} must be a bool, not {value!r}")
        return value
    if key in ("timeout", "ready_timeout"):
        return _seconds(key, value)
    if key == "restart_delay":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"restart_delay must be a number of seconds >= 0, not {value!r}")
        return float(value)
    if key in ("graceful_timeout", "kill_timeout"):
        return _seconds(key, value, allow_none=False)
    if key in ("max_requests", "max_requests_jitter", "max_restarts"):
        if value is None and key == "max_requests":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be a count >= 0, not {value!r}")
        return value if value or key != "max_requests" else None
    if key == "max_memory":
        if value is None:
            return None
        size = parse_size(value)
        _rss(os.getpid())  # OSError now when this OS cannot tell a process's memory
        return size
    if key in ("exec", "cwd"):
        if value is None:
            return None
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{key} must be a path, not {value!r}")
        return os.path.abspath(os.fspath(value))  # (checked at fork(), as Node does)
    if key in ("args", "exec_argv"):
        if not (isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value)):
            raise TypeError(f"{key} must be a list of str, not {value!r}")
        return list(value)
    raise TypeError(f"setup_primary() got an unknown setting {key!r}")


def _rss(pid: int) -> int:
    """A process's resident memory in bytes (``/proc``, or psutil where there is none)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except FileNotFoundError:
        if not os.path.isdir("/proc/self"):
            if psutil is None:
                raise OSError("max_memory needs /proc or the psutil package") from None
            return int(psutil.Process(pid).memory_info().rss)
        raise ProcessLookupError(pid) from None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        if psutil is None:
            return None
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return None
        return float(t.user + t.system)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PRIMARY_SIGNALS = tuple(
    getattr(_signal, name)
    for name in ("SIGTERM", "SIGHUP", "SIGTTIN", "SIGTTOU")
    if hasattr(_signal, name)  # (Windows has SIGTERM alone)
)


class Listener:
    """A worker's end of the round-robin hand-off: ``accept()`` like a listening socket.

    ``sock`` is the socket the primary's :meth:`RoundRobin.connect` made for this worker.
    ``fileno()`` is readable when a connection waits, so a Listener works with
    ``selectors``; ``accept()`` returns ``(socket, address)`` as ``socket.accept()`` does,
    after telling the primary that this worker has the connection.
    """

    def __init__(self, sock: Any) -> None:
        self.socket: socket.socket | None = None  # (None on Windows: a pipe, not a socket)
        if sys.platform == "win32" and isinstance(sock, _channel.Fd):
            # The hand-off pipe, as a handle of this process's own (no C runtime slot).
            self._fd = _b.take_inherited(sock.detach())
        elif isinstance(sock, socket.socket) and sock.family == getattr(socket, "AF_UNIX", -1):
            self.socket = sock
            self._fd = sock.fileno()
        else:
            raise TypeError("Listener needs the hand-off socket the primary gave this worker")
        self.address: Any = None  # the address the primary listens on
        self._lock = threading.Lock()
        self._kind: tuple[int, int] = (-1, -1)  # its connections' (family, type), once known

    def fileno(self) -> int:
        """The hand-off socket's descriptor (readable when a connection waits).

        On Windows a pipe handle, which ``select`` does not take: see :meth:`wait`.
        """
        return self._fd

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a connection waits (or the primary is gone); False after ``timeout``."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        return bool(_b.fd_wait(self._fd, _b.POLL_IN, ms)) if self._fd >= 0 else True

    def accept(self, timeout: float | None = None) -> tuple[socket.socket, Any]:
        """The next connection and its peer's address; ``TimeoutError`` after ``timeout``.

        :class:`ChannelClosedError` once the primary is gone.
        """
        fd = self._fd
        if fd < 0:
            raise ChannelClosedError("the listener is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        me = _role["worker"]
        if me is not None:
            me.slot.idle()
        with self._lock:
            while True:
                if deadline is not None and timeout != 0:  # (0: one non-blocking try)
                    left = max(0, int((deadline - time.monotonic()) * 1000))
                    if _b.fd_wait(fd, _b.POLL_IN, left) is False:
                        raise TimeoutError("no connection came in time")
                try:
                    got = _b.dispatch_take(fd, timeout is None)
                except (BrokenPipeError, ConnectionResetError):
                    raise ChannelClosedError("the primary is gone") from None
                if got is not None:
                    break
                if timeout == 0:
                    raise TimeoutError("no connection waits")
            conn_fd, seq = got
            try:
                conn = _connection(conn_fd, *self._kind)
                # Every connection of a listener is of one kind: asking the kernel for it
                # once saves three system calls per connection after the first.
                self._kind = (conn.family, conn.type)
            except OSError:
                _b.close_native(conn_fd)
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
        fd, self._fd = self._fd, -1
        if self.socket is not None:
            self.socket.close()
        elif fd >= 0:
            _b.close_native(fd)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Connection(socket.socket):
    """A connection a worker took: closing it tells the board (least-connections)."""

    __slots__ = ("_slot",)

    def _real_close(self, _ss: Any = _socket.socket) -> None:
        slot, self._slot = getattr(self, "_slot", None), None
        if slot is not None:
            slot.closed()
        _ss.close(self)


def _connection(fd: int, family: int = -1, type: int = -1) -> socket.socket:
    """A socket for a connection this worker accepted (counted on its board slot)."""
    me = _role["worker"]
    if me is None:
        return socket.socket(fileno=fd) if family < 0 else socket.socket(family, type, 0, fd)
    conn = _Connection(fileno=fd) if family < 0 else _Connection(family, type, 0, fd)
    conn._slot = me.slot
    me.slot.took()
    return conn


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
            _channel._close_handle(theirs)
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
            _channel.Fd(_b.adopt(theirs, True)) if _b.WINDOWS else socket.socket(fileno=theirs)
        )
    except BaseException:
        _b.close_native(ours)
        _b.close_native(theirs)
        raise
    return ours, sendable


# ---- the cluster --------------------------------------------------------------------------


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


_POLL_SECONDS = 0.05  # Windows: how often the primary looks at its workers' pipes
_LEAVING_POLL_SECONDS = 0.02  # how often it looks for a disconnected worker's exit


def _ready(w: Worker) -> bool:
    """Whether a worker's channel has something to read (or its end) now."""
    ch = w.process.channel
    return ch is not None and ch.fileno() >= 0 and bool(_b.fd_wait(ch.fileno(), _b.POLL_IN, 0))


_RUNPY = ("<frozen runpy>", runpy.__file__)  # (frozen from Python 3.11 on)


def _user_frames(text: str) -> str:
    """A worker's traceback without the pyforkd and runpy frames that ran the script.

    Only the leading ones go: frames under the script's own calls stay.
    """
    out: list[str] = []
    skip = False
    leading = True
    for line in text.splitlines(keepends=True):
        if line.startswith('  File "'):
            path = line[len('  File "') :].split('"', 1)[0]
            ours = path.startswith(_PACKAGE + os.sep) or path in _RUNPY
            skip = leading and ours
            leading = leading and ours
            if skip:
                continue
        elif skip and line.startswith("    "):
            continue  # the skipped frame's source lines
        else:
            skip = False
        out.append(line)
    return "".join(out)


def _udp_socket(address: tuple[str, int]) -> socket.socket:
    """A bound UDP socket for ``address`` (IPv6 when the host says so)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class _LogPipe:
    """A worker's stdout or stderr, copied line by line with its prefix."""

    def __init__(self, fd: int, prefix: str, stream: Any) -> None:
        self.fd = fd
        self._prefix = prefix.encode()
        self._stream = stream
        self._partial = b""
        # Windows (Python before 3.12) cannot make a pipe non-blocking: pump() asks first.
        if sys.platform != "win32":
            os.set_blocking(fd, False)

    def pump(self) -> bool:
        """Copy what is there; False at the end (every writer closed it)."""
        while True:
            if sys.platform == "win32" and not _b.pipe_readable(self.fd):
                return True
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return True
            if not data:
                self._write(b"", final=True)
                return False
            self._write(data)

    def _write(self, data: bytes, final: bool = False) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        if not lines:
            return
        out = b"".join(self._prefix + line + b"\n" for line in lines)
        self._stream.flush()
        buffer = getattr(self._stream, "buffer", None)
        if buffer is not None:
            buffer.write(out)
        else:
            self._stream.write(out.decode(errors="replace"))
        self._stream.flush()

    def close(self) -> None:
        """Copy what is left and close."""
        if self.fd >= 0:
            if self.pump():
                self._write(b"", final=True)
            os.close(self.fd)
            self.fd = -1


class _Stdio:
    """A worker's stdin/stdout/stderr as the settings ask.

    The ends to give it (dup'ed onto their ``targets`` there) and those the primary keeps.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        modes = settings["stdio"] or (["pipe"] * 3 if settings["silent"] else ["inherit"] * 3)
        self.targets: list[int] = []
        self.given: list[int] = []
        self.kept: list[int | None] = [None, None, None]
        self.prefixed: list[tuple[int, Any]] = []  # (read end, the primary's stream)
        try:
            for i, mode in enumerate(modes):
                if mode == "inherit" and i > 0 and settings["log_prefix"]:
                    r, w = os.pipe()
                    self.prefixed.append((r, (sys.stdout, sys.stderr)[i - 1]))
                    self._give(i, w)
                elif mode == "pipe":
                    r, w = os.pipe()
                    self.kept[i] = w if i == 0 else r
                    self._give(i, r if i == 0 else w)
                elif mode == "ignore":
                    self._give(i, os.open(os.devnull, os.O_RDONLY if i == 0 else os.O_WRONLY))
        except BaseException:
            self.close()
            raise

    def _give(self, target: int, fd: int) -> None:
        self.targets.append(target)
        self.given.append(fd)

    def close_given(self) -> None:
        for fd in self.given:
            os.close(fd)
        self.given.clear()

    def close(self) -> None:
        """Everything, when the worker did not start."""
        self.close_given()
        for fd in [*self.kept, *(r for r, _ in self.prefixed)]:
            if fd is not None:
                os.close(fd)
        self.kept = [None, None, None]
        self.prefixed.clear()

    def files(self) -> tuple[Any, Any, Any]:
        """The primary's ends as files: the worker's stdin (writable), stdout, stderr."""
        out = tuple(
            None if fd is None else open(fd, "wb" if i == 0 else "rb")  # noqa: SIM115
            for i, fd in enumerate(self.kept)
        )
        self.kept = [None, None, None]
        return out  # type: ignore[return-value]


class _Malformed(ValueError):
    """A worker's control message that is not one the primary knows."""


_MESSAGES_AT_ONCE = 1024
_DROPPED_WARNING_EVERY = 10.0


class Worker:
    """A worker as the primary sees it.

    ``id``, ``process`` (a :class:`pyforkd.Worker`), ``state`` (``"none"``, ``"online"``,
    ``"listening"``, ``"disconnected"``, ``"dead"``), ``ready`` (it listens, or said so
    with ``cluster.ready()`` under ``wait_ready``), ``restarts`` (how many workers this one
    replaced in a row, after deaths), ``send``/``recv`` to talk to it, ``disconnect()``,
    ``kill()``.
    """

    def __init__(self, cluster: Cluster, wid: int, process: _worker.Worker, board: int) -> None:
        self.id = wid
        self.process = process
        self.state = "none"
        self.ready = False
        self.restarts = 0
        self.exited_after_disconnect = False
        self._cluster = cluster
        self._board = board  # its slot on the cluster's board
        self._slots: list[tuple[Any, int]] = []  # (address, dispatcher slot)
        self._listened = False
        self._started = time.monotonic()
        self._env: dict[str, str] | None = None
        self._why: str | None = None  # why the primary killed it (hung, never ready)
        self._restart_after_kill = True
        self._cpu_sample: tuple[float, float] | None = None  # (when, CPU seconds) for status
        self._kill_at: float | None = None  # SIGKILL then, unless it is gone
        self._recycling = False  # a replacement is on its way
        self._max_served: int | None = None  # max_requests, with its jitter
        self._logs: list[Any] = []  # its stdout/stderr pipes (log_prefix)
        self._unattached: list[tuple[Any, int]] = []  # rr ends kept until ready
        self._handlers: dict[str, list[Callable[..., Any]]] = collections.defaultdict(list)
        # Its streams piped to the primary (setup_primary(silent=True) or stdio "pipe"),
        # else None.  (Node has them on worker.process.)
        self.stdin: Any = None
        self.stdout: Any = None
        self.stderr: Any = None

    def on(self, event: str, fn: Callable[..., Any]) -> Worker:
        """Call ``fn`` on this worker's ``event``, in Node's order with the cluster's handlers.

        Events: ``"online"``, ``"listening"`` (address), ``"message"`` (the message, and
        the handle when one came), ``"disconnect"``, ``"exit"`` (code, signal name).
        Returns the worker.
        """
        if event not in WORKER_EVENTS:
            raise ValueError(f"unknown event {event!r}; events are {', '.join(WORKER_EVENTS)}")
        if not callable(fn):
            raise TypeError("on() needs a callable")
        self._handlers[event].append(fn)
        return self

    def send(self, message: Any, handle: Any = None, **options: Any) -> None:
        """Send a message to the worker (it reads it with ``pyforkd.parent().recv()``)."""
        self.process.send(message, handle, **options)

    def recv(self, timeout: float | None = None, **options: Any) -> Any:
        """Receive a message from the worker, while :meth:`Cluster.run` does not run.

        (``run()`` hands every message to the ``"message"`` handlers, and drops them when
        there is none.)
        """
        return self.process.recv(timeout, **options)

    def disconnect(self, graceful_timeout: float | None = None) -> Worker:
        """Stop giving it connections; it finishes those it has and exits.

        One that listens to nothing is let go, as in Node: its channel closes and it ends
        when its program does.  It is killed if it still runs after ``graceful_timeout``
        (default: the cluster's).  Returns the worker, as Node's does.
        """
        return self._disconnect(graceful_timeout, let_go=True)

    def _disconnect(self, graceful_timeout: float | None, let_go: bool) -> Worker:
        """disconnect(), and the cluster's own stops, reloads and scale-downs.

        For those (``let_go`` False) a worker that listens to nothing has nothing to
        finish: it gets SIGTERM at once.
        """
        self.exited_after_disconnect = True
        # A datagram is served as it comes: a worker that only serves UDP has nothing to
        # finish, like one that listens to nothing.
        listening = any(slot != -2 for _, slot in self._slots)
        self._cluster._stop_dispatching(self)  # its accept() ends: it finishes and exits
        if self.state == "dead":
            return self
        if not listening and let_go:
            self._cluster._let_go(self)  # (Node's: it ends when its program does)
        elif not listening:
            self.process.kill("SIGTERM")  # a stop or a reload: nothing of it to drain
        grace = graceful_timeout or self._cluster.settings["graceful_timeout"]
        at = time.monotonic() + grace
        self._kill_at = at if self._kill_at is None else min(self._kill_at, at)
        self._cluster._wake()
        return self

    def kill(self, sig: Any = "SIGTERM") -> None:
        """Signal the worker (it is not restarted: ``exited_after_disconnect`` is set)."""
        self.exited_after_disconnect = True
        self._cluster._stop_dispatching(self)
        self.process.kill(sig)

    def is_connected(self) -> bool:
        """True while its channel is open."""
        return self.process.connected

    def is_dead(self) -> bool:
        """True once its process has exited."""
        return self.process.returncode is not None

    def __repr__(self) -> str:
        return f"<cluster.Worker id={self.id} pid={self.process.pid} {self.state}>"


class Cluster:
    """A primary and its workers; the ``cluster`` module's functions use a default one."""

    def __init__(self) -> None:
        self.workers: dict[int, Worker] = {}
        self.settings: dict[str, Any] = dict(_DEFAULTS)
        self._handlers: dict[str, list[Callable[..., Any]]] = collections.defaultdict(list)
        self._next_id = 1
        # Per address: the listening socket, and its dispatcher once a worker uses "rr".
        self._listeners: dict[Any, list[Any]] = {}
        self._stopping = False
        self._failures = 0  # workers in a row that died young
        self._restarts: list[tuple[float, dict[str, str] | None, int]] = []  # when, env, count
        self._requests: list[tuple[str, int]] = []  # reload / scale, done by run()'s loop
        self._replaces: dict[int, Worker] = {}  # a reload's new worker id -> the old one
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.error: str | None = None  # why the cluster stopped by itself, if it did
        self._board: _board.Board | None = None  # made with the first worker
        self._zygote: _worker.Zygote | None = None  # where forked workers come from
        self._memory_checked = 0.0
        self._sd_ready = False  # systemd was told READY=1 (and no reload since)
        self._dropped = 0  # workers' messages no handler took, since the last warning
        self._again: set[Worker] = set()  # workers whose messages were not all read
        self._dropped_warned = -_DROPPED_WARNING_EVERY
        self._queued: list[tuple[str, tuple[Any, ...]]] = []  # events for run()'s next turn
        self._leaving: dict[int, Worker] = {}  # channel closed, process not yet gone
        _clusters.add(self)

    @property
    def is_primary(self) -> bool:
        """True in the primary (any process that is not a cluster worker)."""
        return _role["worker"] is None

    @property
    def is_worker(self) -> bool:
        """True in a worker the primary forked."""
        return _role["worker"] is not None

    def setup_primary(self, **settings: Any) -> None:
        """Settings for the workers forked after this.

        ``TypeError``/``ValueError`` name a bad one (nothing is changed then).

        ``exec``: the script workers run (default: this program's ``__main__``), with
        ``args`` as its ``sys.argv[1:]``; ``start``: ``"fork"`` (default on POSIX: the
        worker is a fork of the primary, imports warm) or ``"spawn"`` (a fresh interpreter
        that runs the script, as on Windows).

        ``policy``: ``"rr"`` (the primary hands each connection to a worker), ``"shared"``
        (workers accept on the primary's listening socket) or ``"reuseport"`` (each worker
        binds its own ``SO_REUSEPORT`` socket; a worker that stops drops what waits in its
        own accept queue).  ``balance`` (``"rr"`` only): ``"round-robin"`` or
        ``"least-connections"`` (to the worker with the fewest open connections).

        ``restart`` (bool): start a new worker when one dies: at once, and when workers
        keep dying young (before 30 s) after ``restart_delay`` (0.1 s) growing x1.5 per
        death in a row (up to 15 s; a worker that lived 30 s resets it); ``max_restarts``
        (10) such restarts in a row stop the cluster (``run()`` raises: a crash loop).
        ``timeout`` (seconds): a worker busy with one connection for longer (or whose
        asyncio loop does not turn, under :func:`start_server`) is hung: it gets SIGTERM,
        then SIGKILL after ``kill_timeout``, and is replaced.
        ``ready_timeout`` (seconds): a worker not ready by then (listening, or
        ``cluster.ready()`` when ``wait_ready`` is true) is killed and not restarted.
        ``max_requests`` (+ a random ``max_requests_jitter``): a worker that took that many
        connections is replaced (its replacement first, then it drains), as is one whose
        resident memory passes ``max_memory`` (bytes, or a string like ``"300M"``).
        ``graceful_timeout``: how long a stop or a drain waits before SIGKILL.
        ``log_prefix`` (bool): each worker's stdout/stderr lines come out of the primary's
        with ``[worker N]`` in front.
        """
        checked = {key: _check_setting(key, value) for key, value in settings.items()}
        self.settings.update(checked)
        self._setup()

    def _setup(self) -> None:
        """Fill in Node's defaults and say 'setup' (Node's fork() does this too)."""
        if self.settings["exec"] is None:  # the script and its arguments: this program's
            main = getattr(sys.modules.get("__main__"), "__file__", None)
            self.settings["exec"] = os.path.abspath(main) if main else None
        if self.settings["args"] is None:
            self.settings["args"] = list(sys.argv[1:])
        self._later("setup", dict(self.settings))

    def _later(self, event: str, *args: Any) -> None:
        """Emit ``event`` from run()'s loop, at its next turn.

        Node emits 'setup' and 'fork' on its next tick: a handler added right after the
        call still gets them.
        """
        self._queued.append((event, args))
        self._wake()

    def on(self, event: str, fn: Callable[..., Any]) -> None:
        """Call ``fn`` on ``event`` (one of :data:`EVENTS`), in Node's order."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events are {', '.join(EVENTS)}")
        if not callable(fn):
            raise TypeError("on() needs a callable")
        self._handlers[event].append(fn)

    def _emit(self, event: str, *args: Any) -> None:
        for fn in list(self._handlers.get(event, ())):
            fn(*args)

    def _emit_worker(self, w: Worker, event: str, *args: Any) -> None:
        """A worker's event: its own handlers first, then the cluster's (Node's order).

        For 'message' the cluster's come first: Node forwards it from the worker's emitter
        with a handler added before any of the program's.
        """
        if event == "message":
            self._emit(event, w, *args)
        for fn in list(w._handlers.get(event, ())):
            fn(*args)
        if event != "message":
            self._emit(event, w, *args)

    def fork(self, env: Mapping[str, str] | None = None) -> Worker:
        """Start a worker: a fork of this process that runs ``__main__`` from the top.

        With ``setup_primary(start="spawn")``: a fresh interpreter that runs the script.
        """
        if self.is_worker:
            raise RuntimeError("fork() is for the primary (this is a worker)")
        self._setup()  # (as Node's fork(), which calls setupPrimary(): 'setup' each time)
        st = self.settings
        path = st["exec"]
        argv = None
        if path is not None:
            if not os.path.isfile(path):
                raise FileNotFoundError(errno.ENOENT, "exec: no such script", path)
            argv = [path, *(st["args"] if st["args"] is not None else sys.argv[1:])]
        else:
            path = getattr(sys.modules.get("__main__"), "__file__", None)
            if not path:
                raise RuntimeError(
                    "a cluster needs a script for its workers: run one, or setup_primary(exec=...)"
                )
            if st["args"] is not None:
                argv = [os.path.abspath(path), *st["args"]]
            elif st["start"] == "spawn":
                argv = list(sys.argv)
        if st["exec_argv"] and st["start"] != "spawn":
            raise ValueError(
                "exec_argv needs setup_primary(start='spawn'): a forked worker runs in this "
                "interpreter, with its options"
            )
        if st["cwd"] is not None and not os.path.isdir(st["cwd"]):
            raise FileNotFoundError(errno.ENOENT, "cwd: no such directory", st["cwd"])
        if self._board is None:
            self._board = _board.Board()
        forking = self.settings["start"] == "fork"
        if forking and self._zygote is None:
            # Made at the first fork, before the cluster's threads (control, dispatchers)
            # and before anything of a worker's is open: every worker comes from it, so
            # the primary never forks while a thread of its own runs.
            self._zygote = _worker.Zygote(_worker_main)
        plan = _Stdio(st)
        try:
            wid = self._next_id
            extra = {str(k): str(v) for k, v in (env or {}).items()}
            where = (wid, os.path.abspath(path), argv, extra, st["cwd"])
            if self._zygote is not None and forking:
                process = self._zygote.fork(*where, name=f"worker {wid}")
            else:
                process = _worker.fork_worker(
                    _worker_main,
                    *where,
                    start=st["start"],
                    name=f"worker {wid}",
                    exec_argv=st["exec_argv"],
                )
        except BaseException:
            plan.close()
            raise
        # Its board slot is made after the fork and its descriptor closed here once sent:
        # this worker alone has it, no worker forked before or after.
        try:
            slot, slot_fd = self._board.take()
        except BaseException:
            process.kill("SIGKILL")  # (it waits for its hello: nothing of it ran)
            process.wait()
            process.close()
            plan.close()
            raise
        board_fd = _channel.Fd(slot_fd)
        self._next_id += 1
        w = Worker(self, wid, process, slot)
        w._env = extra
        if self.settings["max_requests"]:
            w._max_served = self.settings["max_requests"] + random.randint(
                0, self.settings["max_requests_jitter"]
            )
        hello = ("cluster", "hello", slot, self.settings["timeout"], plan.targets)
        ch = process.channel
        assert ch is not None
        try:
            ch.send_control(hello, board_fd)
            if plan.targets:
                ends = [_channel.Fd(fd) for fd in plan.given]
                ch.send_control(("cluster", "stdio"), ends, keep_open=True)
        except ChannelClosedError:
            pass  # it died already: run() reaps it
        finally:
            board_fd.close()  # (closed once sent; here when it was not)
            plan.close_given()  # the worker has its own copies
        w.stdin, w.stdout, w.stderr = plan.files()
        for r, stream in plan.prefixed:
            w._logs.append(_LogPipe(r, f"[worker {wid}] ", stream))
        self.workers[wid] = w
        self._later("fork", w)
        return w

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"!")
        except OSError:
            pass  # full: a wake-up is pending already

    # ---- the primary's loop ---------------------------------------------------------

    def run(self) -> None:
        """Supervise until :meth:`shutdown` (or a stop signal) and every worker is gone.

        In the main thread it takes the signals: SIGTERM a graceful stop, SIGINT and
        SIGQUIT a fast one, SIGHUP a reload, SIGTTIN/SIGTTOU one worker more or less,
        SIGUSR1/SIGUSR2 passed on to every worker.  Raises ``RuntimeError`` when workers
        keep dying young (a crash loop) or none is left to run.
        """
        if self.is_worker:
            raise RuntimeError("run() is for the primary (this is a worker)")
        previous = {}
        if threading.current_thread() is threading.main_thread():
            handlers: dict[str, Callable[..., Any]] = {
                "SIGTERM": lambda *_: self._request("stop", 0),
                "SIGINT": lambda *_: self._request("stop", 1),
                "SIGQUIT": lambda *_: self._request("stop", 1),
                "SIGBREAK": lambda *_: self._request("stop", 0),  # Windows: Ctrl-Break
                "SIGHUP": lambda *_: self._request("reload", 0),
                "SIGTTIN": lambda *_: self._request("scale", 1),
                "SIGTTOU": lambda *_: self._request("scale", -1),
                "SIGUSR1": self._forward,
                "SIGUSR2": self._forward,
            }
            for name, fn in handlers.items():
                sig = getattr(_signal, name, None)
                if sig is not None:  # (Windows has SIGTERM, SIGINT and SIGBREAK)
                    previous[sig] = _signal.signal(sig, fn)
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        # Windows' select() takes sockets only: the channels' and logs' pipes are looked
        # at in turn instead, every _POLL_SECONDS at most.
        polled = _b.WINDOWS
        watched: dict[int, Worker] = {}
        logs: set[_LogPipe] = set()
        self.error = None
        try:
            while True:
                while self._queued:
                    event, args = self._queued.pop(0)
                    self._emit(event, *args)
                for w in list(self.workers.values()):
                    ch = w.process.channel
                    if w.state in ("disconnected", "dead"):
                        continue  # (its channel has ended: nothing more comes from it)
                    if w.id not in watched and ch is not None and ch.fileno() >= 0:
                        if not polled:
                            sel.register(ch.fileno(), selectors.EVENT_READ, w)
                        watched[w.id] = w
                    for pipe in w._logs:
                        if pipe not in logs and pipe.fd >= 0:
                            if not polled:
                                sel.register(pipe.fd, selectors.EVENT_READ, pipe)
                            logs.add(pipe)
                if not self.workers and not self._restarts:
                    if not self._stopping and self.error is None:
                        self.error = "no workers are left, and none is to be restarted"
                    break
                timeout = self._tick()
                if self._restarts:
                    due = max(0.0, self._restarts[0][0] - time.monotonic())
                    timeout = due if timeout is None else min(due, timeout)
                if polled and (watched or logs):
                    timeout = _POLL_SECONDS if timeout is None else min(timeout, _POLL_SECONDS)
                ready: list[tuple[Any, Any]] = [(k.fileobj, k.data) for k, _ in sel.select(timeout)]
                # Workers with more to read than one turn took (their socket may be empty).
                for w in self._again:
                    if w.id in watched and w.process.channel is not None:
                        ready.append((w.process.channel.fileno(), w))
                self._again.clear()
                if polled:
                    ready += [(p.fd, p) for p in logs if _b.pipe_readable(p.fd)]
                    ready += [(w.process.channel, w) for w in watched.values() if _ready(w)]
                for fileobj, data in ready:
                    if data is None:
                        try:
                            while self._wake_r.recv(512):
                                pass  # drain: one wake-up covers them all
                        except BlockingIOError:
                            pass  # drained
                        continue
                    if isinstance(data, _LogPipe):
                        if data in logs and not data.pump():
                            if not polled:
                                sel.unregister(fileobj)
                            logs.discard(data)
                            data.close()
                        continue
                    w = data
                    if w.id in watched and not self._service(w):
                        if not polled:
                            sel.unregister(fileobj)
                        del watched[w.id]
                        self._reap(w)
                self._check_workers()
                self._due_restarts()
                self._do_requests()
        finally:
            sel.close()
            for sig, handler in previous.items():
                _signal.signal(sig, handler)
            for pipe in logs:
                pipe.close()
            self._close_listeners()
            if not self.workers and self._board is not None:
                self._board.close()  # (after the dispatchers that read it)
                self._board = None
            if not self.workers and self._zygote is not None:
                self._zygote.stop()  # (every worker it made is reaped)
                self._zygote = None
            if not self._stopping:  # (shutdown() told systemd already)
                _systemd.notify("STOPPING=1")
            if not self.workers:
                # Stopped and empty: a later fork() and run() start it again.
                self._stopping = False
                self._failures = 0
        if self.error:
            raise RuntimeError(self.error)

    def _forward(self, sig: int, frame: Any = None) -> None:
        for w in list(self.workers.values()):
            if w.process.returncode is None:
                try:
                    w.process.kill(sig)
                except OSError:
                    pass  # it has just exited: nothing to tell it

    def _tick(self) -> float | None:
        """How long run() may sleep before :meth:`_check_workers` has work (None: ever)."""
        st = self.settings
        if self._leaving:
            return _LEAVING_POLL_SECONDS
        if not (
            st["timeout"]
            or st["ready_timeout"]
            or st["max_requests"]
            or st["max_memory"]
            or os.getpid() == 1
            or any(w._kill_at is not None for w in self.workers.values())
        ):
            return None
        return min(0.25, (st["timeout"] or 1.0) / 4)

    def _check_workers(self) -> None:
        """Hung workers, workers never ready, and those to recycle; strays when PID 1."""
        for w in list(self._leaving.values()):
            if w.process.poll() is not None:
                self._exited(w)
        now = time.monotonic()
        st = self.settings
        board = self._board
        memory = st["max_memory"] and now >= self._memory_checked + 1.0
        if memory:
            self._memory_checked = now
        for w in list(self.workers.values()):
            if w._kill_at is not None and now >= w._kill_at:
                w._kill_at = None
                if w.process.returncode is None:
                    w.process.kill("SIGKILL")
            if w._why is not None or w.state == "dead" or board is None or w._board < 0:
                continue
            busy = board.read(w._board, _board.BUSY)
            if st["timeout"] and busy and (time.monotonic_ns() - busy) / 1e9 > st["timeout"]:
                self._kill_bad(w, f"hung: busy for over {st['timeout']:g} s (the timeout)")
                continue
            if st["ready_timeout"] and not w.ready and now - w._started > st["ready_timeout"]:
                how = "called cluster.ready()" if st["wait_ready"] else "listened"
                self._kill_bad(
                    w, f"not ready after {st['ready_timeout']:g} s (it never {how})", restart=False
                )
                continue
            if w._recycling or w.exited_after_disconnect or not w.ready or self._stopping:
                continue
            served = board.read(w._board, _board.SERVED)
            if w._max_served is not None and served >= w._max_served:
                self._recycle(w, f"took {served} connections (max_requests)")
            elif memory:
                try:
                    rss = _rss(w.process.pid)
                except OSError:
                    continue  # it is exiting: the reap comes
                if rss > st["max_memory"]:
                    self._recycle(
                        w, f"uses {rss >> 20} MiB (max_memory {st['max_memory'] >> 20} MiB)"
                    )
        if os.getpid() == 1:
            self._reap_strays()

    def _kill_bad(self, w: Worker, why: str, restart: bool = True) -> None:
        """Kill a worker that failed the primary's checks: SIGTERM, then SIGKILL."""
        w._why = why
        w._restart_after_kill = restart
        sys.stderr.write(f"pyforkd cluster: worker {w.id} (pid {w.process.pid}) {why}: killed\n")
        sys.stderr.flush()
        self._terminate(w)

    def _terminate(self, w: Worker) -> None:
        """No more work for ``w``; SIGTERM now, SIGKILL after ``kill_timeout``."""
        self._stop_dispatching(w)
        w._kill_at = time.monotonic() + self.settings["kill_timeout"]
        try:
            w.process.kill("SIGTERM")
        except OSError:
            pass  # it has just exited: the reap comes

    def _recycle(self, w: Worker, why: str) -> None:
        """Replace ``w``: a new worker first, then ``w`` drains once that one is ready."""
        w._recycling = True
        sys.stderr.write(f"pyforkd cluster: worker {w.id} (pid {w.process.pid}) {why}: replaced\n")
        sys.stderr.flush()
        new = self.fork(w._env)
        new.restarts = w.restarts
        self._replaces[new.id] = w

    def _reap_strays(self) -> None:
        """As PID 1: wait for orphans the kernel gave us (not our own children)."""
        if sys.platform == "win32":
            return  # (no PID 1 there)
        ours = {w.process.pid for w in self.workers.values()} | _live_pids()
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in ours:
                return  # nothing, or one of ours that its owner reaps
            try:
                os.waitpid(info.si_pid, 0)
            except ChildProcessError:
                return

    def status(self) -> list[dict[str, Any]]:
        """A row per worker, for ``pyforkd status``.

        Keys: ``id``, ``pid``, ``state``, ``ready``, ``uptime`` (s), ``restarts``,
        ``served`` and ``open`` connections, ``cpu`` (% since the last status, or over its
        life), ``rss`` (bytes, None when unknown).
        """
        rows = []
        now = time.monotonic()
        for w in sorted(list(self.workers.values()), key=lambda w: w.id):
            pid = w.process.pid
            cpu_now = _cpu_seconds(pid)
            cpu = None
            if cpu_now is not None:
                then, used = w._cpu_sample or (w._started, 0.0)
                cpu = 100.0 * (cpu_now - used) / max(now - then, 1e-6)
                w._cpu_sample = (now, cpu_now)
            try:
                rss: int | None = _rss(pid)
            except OSError:
                rss = None
            board = self._board
            rows.append(
                {
                    "id": w.id,
                    "pid": pid,
                    "state": "draining"
                    if w.exited_after_disconnect and w.state != "dead"
                    else w.state,
                    "ready": w.ready,
                    "uptime": now - w._started,
                    "restarts": w.restarts,
                    "served": board.read(w._board, _board.SERVED) if board and w._board >= 0 else 0,
                    "open": board.read(w._board, _board.OPEN) if board and w._board >= 0 else 0,
                    "cpu": cpu,
                    "rss": rss,
                }
            )
        return rows

    def _service(self, w: Worker) -> bool:
        """Read what the worker sent; False once its channel has closed.

        Its own messages and the user's are taken as they come, at most
        _MESSAGES_AT_ONCE a turn (one worker's flood holds up no other; one with more
        gets another turn).  A worker that sends anything malformed is killed (and
        restarted like one that crashed): the primary and the other workers go on.
        """
        ch = w.process.channel
        assert ch is not None
        try:
            for _ in range(_MESSAGES_AT_ONCE):
                try:
                    control, msg, handle = ch.recv_any(0)
                except TimeoutError:
                    return ch.connected
                except ChannelClosedError:
                    return False
                if control:
                    self._control(w, msg, handle)
                else:
                    self._message(w, msg, handle)
        except (FrameError, _Malformed) as exc:
            w._why = f"sent a malformed message ({exc})"
            sys.stderr.write(
                f"pyforkd cluster: worker {w.id} (pid {w.process.pid}) {w._why}: killed\n"
            )
            sys.stderr.flush()
            w.process.kill("SIGKILL")  # (its channel is closed: nothing of it can drain)
            return False
        finally:
            self._warn_dropped()
        self._again.add(w)
        self._wake()
        return True

    def _message(self, w: Worker, msg: Any, handle: Any) -> None:
        """Hand one of the worker's messages to the "message" handlers.

        Without a handler it is dropped (a primary that does not listen must not keep
        them), with a warning at most every 10 s.
        """
        if self.settings["wait_ready"] and isinstance(msg, str) and msg == "ready":
            self._became_ready(w)  # process.send('ready'), as PM2 has it
        if not self._handlers.get("message") and not w._handlers.get("message"):
            self._dropped += 1
            for h in handle if isinstance(handle, list) else [handle] if handle else []:
                h.close()
        elif handle is None:
            self._emit_worker(w, "message", msg)
        else:
            self._emit_worker(w, "message", msg, handle)

    def _warn_dropped(self) -> None:
        if self._dropped and time.monotonic() >= self._dropped_warned + _DROPPED_WARNING_EVERY:
            self._dropped_warned = time.monotonic()
            sys.stderr.write(
                f"pyforkd cluster: {self._dropped} message(s) from workers dropped: there is "
                "no 'message' handler (cluster.on('message', fn) takes them)\n"
            )
            sys.stderr.flush()
            self._dropped = 0

    def _control(self, w: Worker, msg: Any, handle: Any) -> None:
        """Act on one of the worker's own messages (``_Malformed`` when it is not one)."""
        if not isinstance(msg, tuple) or not msg:
            raise _Malformed(f"a control message of type {type(msg).__name__}")
        if msg[0] != "cluster":
            # The worker's outcome (its script ended): keep it, say why if it failed.
            if msg[0] == "result" and len(msg) == 2:
                w.process._outcome = msg
                return
            if not (
                msg[0] == "error"
                and len(msg) == 2
                and isinstance(msg[1], tuple)
                and len(msg[1]) == 5
                and isinstance(msg[1][2], str)
            ):
                raise _Malformed(f"an outcome {str(msg)[:80]!r}")
            w.process._outcome = msg
            remote_tb = _user_frames(msg[1][2])
            sys.stderr.write(f"pyforkd cluster: worker {w.id} failed:\n{remote_tb}")
            return
        kind = msg[1] if len(msg) > 1 else None
        if kind == "online" and len(msg) == 2:
            w.state = "online"
            self._emit_worker(w, "online")
        elif kind == "listen" and len(msg) == 4 and msg[3] in ("tcp", "udp"):
            try:
                key = _check_address(msg[2])
            except (TypeError, ValueError) as exc:
                raise _Malformed(f"a listen request: {exc}") from None
            self._listen_for(w, key, msg[3])
        elif kind == "ready" and len(msg) == 2:
            self._became_ready(w)
        elif kind == "leaving" and len(msg) == 2:
            w.exited_after_disconnect = True  # it disconnected itself: no restart
        else:
            raise _Malformed(f"a control message {str(msg)[:80]!r}")

    def _listen_for(self, w: Worker, key: tuple[str, int], kind: str) -> None:
        ch = w.process.channel
        assert ch is not None
        if self._stopping or w.exited_after_disconnect:
            # Asked to stop before it listened: it has nothing to finish, it just ends.
            ch.send_control(("cluster", "stopping"))
            return
        policy = "shared" if kind == "udp" else self.settings["policy"]
        if policy == "reuseport":  # the worker binds its own socket: nothing to share here
            if key[1] == 0:  # each worker would get a port of its own
                text = "policy 'reuseport' needs a fixed port, not 0"
                ch.send_control(("cluster", "listen-error", errno.EINVAL, text, key))
                return
            w._slots.append((key, -1))
            self._now_listening(w, key, policy, None)
            return
        try:
            if (kind, key) not in self._listeners:
                if kind == "udp":
                    sock = _systemd.matching(key, socket.SOCK_DGRAM) or _udp_socket(key)
                else:
                    sock = _systemd.matching(key) or socket.create_server(key)
                self._listeners[(kind, key)] = [sock, None]
            entry = self._listeners[(kind, key)]
            if policy == "rr":
                if entry[1] is None:
                    least = self.settings["balance"] == "least-connections"
                    entry[1] = RoundRobin(entry[0], least_connections=least)
                if self.settings["wait_ready"] and not w.ready:
                    # No connection for it before it is ready: the dispatcher gets its end
                    # then (_became_ready).
                    ours, theirs = handoff_pair(w.process.pid)
                    w._unattached.append(((kind, key), ours))
                    self._now_listening(w, entry[0].getsockname(), policy, theirs)
                    return
                slot, theirs = entry[1].connect(self._load(w), w.process.pid)
            else:  # "shared": the worker takes from the socket itself (UDP: always)
                slot, theirs = (-2 if kind == "udp" else -1), entry[0]
        except OSError as exc:
            text = _b.describe(exc.errno) if exc.errno else str(exc)
            ch.send_control(("cluster", "listen-error", exc.errno, text, key))
            return
        w._slots.append(((kind, key), slot))
        self._now_listening(w, entry[0].getsockname(), policy, theirs, keep_open=slot < 0)

    def _now_listening(
        self, w: Worker, address: Any, policy: str, handle: Any, keep_open: bool = False
    ) -> None:
        ch = w.process.channel
        assert ch is not None
        w._listened = True
        ch.send_control(("cluster", "listening", address, policy), handle, keep_open=keep_open)
        w.state = "listening"
        self._emit_worker(w, "listening", address)
        if not self.settings["wait_ready"]:
            self._became_ready(w)

    def _load(self, w: Worker) -> Any:
        assert self._board is not None
        return self._board.pointer(w._board, _board.OPEN)

    def _became_ready(self, w: Worker) -> None:
        """``w`` is ready (it listens, or said so): the worker it replaces can go."""
        if w.ready:
            return
        w.ready = True
        while w._unattached:
            key, ours = w._unattached.pop(0)
            entry = self._listeners.get(key)
            if entry is None or entry[1] is None:
                _b.close_native(ours)
                continue
            try:
                w._slots.append((key, entry[1].attach(ours, self._load(w))))
            except OSError as exc:
                sys.stderr.write(f"pyforkd cluster: worker {w.id} cannot be given work: {exc}\n")
        old = self._replaces.pop(w.id, None)
        if old is not None and old.state != "dead":
            old._disconnect(None, let_go=False)  # its replacement serves: the old one drains
        self._systemd_status()

    def _let_go(self, w: Worker) -> None:
        """Disconnect ``w`` on purpose.

        Its hang-up watch spares it (the board says so), and the channel is shut down
        both ways (run() sees the end, as for any worker's).
        """
        if self._board is not None and w._board >= 0:
            self._board.let_go(w._board)
        ch = w.process.channel
        if ch is not None and ch.fileno() >= 0:
            try:
                _b.fd_shutdown(ch.fileno())
            except OSError:
                pass  # (it is gone already: the reap comes)

    def _stop_dispatching(self, w: Worker) -> None:
        while w._unattached:
            _b.close_native(w._unattached.pop()[1])  # it never got a connection through it
        ch = w.process.channel
        for key, slot in w._slots:
            entry = self._listeners.get(key)
            if slot >= 0 and entry is not None and entry[1] is not None:
                entry[1].remove(slot)
            elif slot == -1 and ch is not None and ch.connected:  # shared/reuseport: it stops
                try:
                    ch.send_control(("cluster", "disconnect"))
                except ChannelClosedError:
                    pass
        w._slots.clear()

    def _close_listeners(self) -> None:
        for lsock, rr in self._listeners.values():
            if rr is not None:
                rr.close()
            lsock.close()
        self._listeners.clear()

    def _reap(self, w: Worker) -> None:
        """Its channel closed: tell; once the process is gone, tell and maybe restart.

        A worker may go on after its channel closed (one that disconnected itself finishes
        its script, as in Node): run()'s loop looks at it until it exits.
        """
        self._stop_dispatching(w)
        w.state = "disconnected"
        self._emit_worker(w, "disconnect")
        if w.process.poll() is None:
            self._leaving[w.id] = w
            self._wake()
            return
        self._exited(w)

    def _exited(self, w: Worker) -> None:
        """Its process is gone: 'exit', then a restart unless it was meant to go."""
        self._leaving.pop(w.id, None)
        w.process.wait()
        # A replacement that died before it was ready: the old one stays (and is not
        # recycled again: the next replacement would likely fail the same way).
        replaced = self._replaces.pop(w.id, None)
        if replaced is not None and replaced.state != "dead":
            sys.stderr.write(
                f"pyforkd cluster: worker {w.id}, the replacement of worker {replaced.id}, "
                f"died before it was ready: worker {replaced.id} goes on serving\n"
            )
        w.state = "dead"
        self.workers.pop(w.id, None)
        code = w.process.returncode
        assert code is not None
        exit_code, sig = (code, None) if code >= 0 else (None, signal_name(-code))
        self._emit_worker(w, "exit", exit_code, sig)
        # A worker whose script failed before it ever listened would fail again: a boot
        # error, like exit codes 3 and 4 (its traceback was printed when it came).
        outcome = w.process._outcome
        boot_error = outcome is not None and outcome[0] == "error" and not w._listened
        self._board_release(w)
        if (
            self._stopping
            or w.exited_after_disconnect
            or w._recycling  # its replacement is there already
            or replaced is not None
            or not w._restart_after_kill
            or not self.settings["restart"]
            or exit_code in _NO_RESTART_CODES
            or boot_error
        ):
            self._systemd_status()
            return
        lived = time.monotonic() - w._started
        self._failures = 0 if lived >= _STABLE_UPTIME else self._failures + 1
        if self._failures > self.settings["max_restarts"]:
            self.error = (
                f"workers keep dying young ({self._failures} in a row, the last exit "
                f"{exit_code if sig is None else sig}): the cluster stops"
            )
            self.shutdown()
            return
        # The first death in a row is restarted at once; then the delay grows.
        first = self.settings["restart_delay"]
        delay = min(first * _BACKOFF_FACTOR ** max(0, self._failures - 2), _BACKOFF_MAX)
        if self._failures <= 1:
            delay = 0.0
        self._restarts.append((time.monotonic() + delay, w._env, w.restarts + 1))
        self._restarts.sort(key=lambda r: r[0])

    def _board_release(self, w: Worker) -> None:
        if self._board is not None and w._board >= 0:
            self._board.give_back(w._board)
            w._board = -1

    def _due_restarts(self) -> None:
        now = time.monotonic()
        while self._restarts and self._restarts[0][0] <= now and not self._stopping:
            _, env, restarts = self._restarts.pop(0)
            self.fork(env).restarts = restarts

    def _systemd_status(self) -> None:
        """Tell systemd (when it listens) how many workers are ready; READY=1 once all."""
        if not os.environ.get("NOTIFY_SOCKET") or self._stopping:
            return
        live = [w for w in self.workers.values() if not w.exited_after_disconnect]
        ready = sum(1 for w in live if w.ready)
        state = f"STATUS={ready} of {len(live)} workers ready"
        if live and ready == len(live) and not self._replaces and not self._sd_ready:
            self._sd_ready = True
            state = "READY=1\n" + state
        _systemd.notify(state)

    def reload(self) -> None:
        """Replace every worker, refusing no connection.

        A new worker is started for each; each old one stops taking connections once its
        replacement listens, finishes what it has and exits.  SIGHUP does this in
        :meth:`run`.
        """
        self._request("reload", 0)

    def scale(self, n: int) -> None:
        """Run ``n`` workers: start more, or stop the newest (gracefully).

        SIGTTIN and SIGTTOU add and remove one in :meth:`run`.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"scale() needs a worker count >= 0, not {n!r}")
        self._request("scale-to", n)

    def _request(self, kind: str, n: int) -> None:
        """For run()'s loop (safe from a signal handler or another thread)."""
        self._requests.append((kind, n))
        self._wake()

    def _count(self) -> int:
        """Workers that serve or will (not those on their way out)."""
        return sum(1 for w in self.workers.values() if not w.exited_after_disconnect) + len(
            self._restarts
        )

    def _do_requests(self) -> None:
        while self._requests and not self._stopping:
            kind, n = self._requests.pop(0)
            if kind == "stop":
                self.shutdown(fast=bool(n))
            elif kind == "reload":
                if self._sd_ready:
                    self._sd_ready = False
                    _systemd.notify("RELOADING=1\nSTATUS=reloading")
                for old in [w for w in self.workers.values() if not w.exited_after_disconnect]:
                    if old not in self._replaces.values() and not old._recycling:
                        new = self.fork(old._env)
                        new.restarts = old.restarts
                        self._replaces[new.id] = old
                self._systemd_status()
            else:
                if kind == "scale":  # SIGTTIN / SIGTTOU: one more or one less
                    n = max(1, self._count() + n)
                current = [w for w in self.workers.values() if not w.exited_after_disconnect]
                for _ in range(n - self._count()):
                    self.fork()
                for w in sorted(current, key=lambda w: w.id, reverse=True)[
                    : max(0, len(current) - n)
                ]:
                    w._disconnect(None, let_go=False)  # (a scale-down)

    def shutdown(self, graceful_timeout: float | None = None, *, fast: bool = False) -> None:
        """Stop: no restarts; workers stop taking connections, finish and exit.

        Those still running after ``graceful_timeout`` (default: the setting, 10 s) are
        killed.  ``fast``: SIGTERM every worker now (SIGKILL after ``kill_timeout``).  It
        only starts the stop: :meth:`run` returns once every worker is gone.
        """
        if graceful_timeout is not None:
            _seconds("graceful_timeout", graceful_timeout, allow_none=False)
        if not self._stopping:
            _systemd.notify("STOPPING=1")
        self._stopping = True
        self._restarts.clear()
        self._requests.clear()
        for w in list(self.workers.values()):
            if w.state == "dead":
                continue
            if fast:
                w.exited_after_disconnect = True
                self._terminate(w)
            else:
                w._disconnect(graceful_timeout, let_go=False)
        self._wake()


# ---- in a worker ------------------------------------------------------------------------

_role: dict[str, Any] = {"worker": None}  # the worker's id, in a worker


SELF_EVENTS = ("message", "disconnect", "error")  # cluster.worker.on() in a worker


class _Self:
    """``cluster.worker`` inside a worker, with Node's members.

    ``id``; ``process`` (this process: ``pid``, ``send``, ``disconnect``, ``connected``);
    ``send``/``recv`` to talk to the primary; ``ready()`` and ``heartbeat()``;
    ``disconnect()``, ``kill()``/``destroy()``, ``is_connected()``, ``is_dead()``,
    ``exited_after_disconnect`` and ``on()``, as in Node.
    """

    def __init__(self, wid: int, slot: _board.Slot, timeout: float | None) -> None:
        self.id = wid
        self.slot = slot
        self.timeout = timeout  # the primary's hang limit, or None
        self._left = False
        self.process = _ThisProcess(self)
        self._listeners: weakref.WeakSet[Listener] = weakref.WeakSet()
        self._inbox: _Inbox | None = None  # started by the first on()
        self._start_lock = threading.Lock()

    @property
    def exited_after_disconnect(self) -> bool:
        """True once this worker leaves on purpose.

        By its own ``disconnect()`` or ``kill()``, or the primary's ``worker.disconnect()``.
        """
        return self._left or self.slot.let_go()

    def on(self, event: str, fn: Callable[..., Any]) -> _Self:
        """Call ``fn`` on ``event``, as Node's ``cluster.worker.on()`` in a worker.

        Events: ``"message"`` (the message, and the handle when one came),
        ``"disconnect"`` (the channel to the primary closed: by the primary, by this
        worker, or by the primary's death), ``"error"`` (what a handler raised, or the
        ``FrameError`` of a malformed frame; with no ``"error"`` handler a handler's
        exception is printed).  Handlers run in a thread of pyforkd's, started by the
        first ``on()``; messages go to the ``"message"`` handlers from then on (those
        that came before wait for :meth:`recv`).  Returns ``cluster.worker``.
        """
        if event not in SELF_EVENTS:
            raise ValueError(f"unknown event {event!r}; events are {', '.join(SELF_EVENTS)}")
        if not callable(fn):
            raise TypeError("on() needs a callable")
        with self._start_lock:
            if self._inbox is None:
                inbox = _Inbox(_primary())
                inbox.handlers[event].append(fn)
                self._inbox = inbox
                for listener in list(self._listeners):
                    if isinstance(listener, _SharedListener):
                        listener._watch_primary(inbox.signal.fileno())
                inbox.start()
            else:
                self._inbox.add(event, fn)
        return self

    def send(self, message: Any, handle: Any = None) -> None:
        """Send a message to the primary (its ``"message"`` event)."""
        _primary().send(message, handle)

    def recv(self, timeout: float | None = None, *, with_handle: bool = False) -> Any:
        """Receive a message the primary sent with ``worker.send``.

        Once a ``"message"`` handler is on, only the messages that came before it are
        here; then ``RuntimeError``.
        """
        if self._inbox is None:
            return _primary().recv(timeout, with_handle=with_handle)
        message, handle = self._inbox.take_message(timeout)
        if with_handle:
            return message, handle
        if handle is not None:
            _close_handles(handle)
            warnings.warn(
                "a message came with a handle, which was closed: use "
                "recv(with_handle=True) to take it",
                ResourceWarning,
                stacklevel=2,
            )
        return message

    def ready(self) -> None:
        """Tell the primary this worker is ready (what ``wait_ready`` waits for)."""
        _primary().send_control(("cluster", "ready"))

    def heartbeat(self) -> None:
        """Still alive: long work calls this more often than the cluster's ``timeout``."""
        self.slot.beat()

    def is_connected(self) -> bool:
        """True while the channel to the primary is open (a hang-up is seen at once)."""
        ch = _primary()
        return ch.connected and not _b.fd_hung_up(ch.fileno())

    def is_dead(self) -> bool:
        """False: this worker runs (Node's member, for code shared with the primary)."""
        return False

    def disconnect(self) -> _Self:
        """Leave the cluster, as Node's ``worker.disconnect()`` in a worker.

        The primary is told not to restart this worker; its listeners stop taking
        connections; the channel closes (``"disconnect"`` follows).  The program goes on
        (its connections included) and the worker exits when its script ends, with its
        own status.  Returns it.
        """
        if not self._left:
            self._left = True
            ch = _primary()
            try:
                ch.send_control(("cluster", "leaving"))
            except ChannelClosedError:
                pass  # (the primary is gone: nothing to tell)
            for listener in list(self._listeners):
                listener.close()
            _b.process_unwatch()  # this hang-up is ours: it must not end the worker
            ch.close()
        return self

    def kill(self, signal: Any = None) -> NoReturn:
        """Disconnect and exit 0, as Node's ``worker.kill()`` in a worker.

        In the main thread it raises ``SystemExit(0)``: ``finally`` blocks run, then the
        program's ``atexit`` hooks.  In another thread the hooks run and the process
        ends, its output flushed.  ``signal`` is ignored there, as in Node.
        """
        self.disconnect()
        if threading.current_thread() is threading.main_thread():
            raise SystemExit(0)
        _program_ends()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass  # (a closed stream: nothing left to say)
        os._exit(0)

    destroy = kill

    # ---- what the primary says to this module's listeners --------------------------------

    def control_fileno(self) -> int:
        """Readable when the primary may have said something to this module (a stop)."""
        inbox = self._inbox
        return _primary().fileno() if inbox is None else inbox.signal.fileno()

    def take_control(self, timeout: float | None = None) -> tuple[Any, Any]:
        """The primary's next control message and its handle.

        ``TimeoutError`` when none comes in time, ``ChannelClosedError`` once the channel
        is closed.
        """
        inbox = self._inbox
        if inbox is None:
            return _primary().recv_control(timeout, with_handle=True)
        return inbox.take_control(timeout)

    def primary_spoke(self) -> bool:
        """Whether a control message (or the channel's end) waits, looked at now."""
        inbox = self._inbox
        if inbox is None:
            return bool(_b.fd_wait(_primary().fileno(), _b.POLL_IN, 0))
        return inbox.spoke()

    def primary_selectable(self) -> bool:
        """Whether ``control_fileno()`` can go in a selector (Windows' pipes cannot)."""
        return self._inbox is not None or not _b.WINDOWS

    def ending(self) -> None:
        """The program ends: the close of its channel is no ``"disconnect"`` to tell."""
        inbox = self._inbox
        if inbox is not None:
            inbox.ending = True


class _Inbox:
    """The worker's end of the channel, read by a thread of its own (``cluster.worker.on``).

    That thread is then its only reader: user messages go to the ``"message"`` handlers
    (or wait for ``recv()`` while there is none); the primary's control messages wait for
    this module (``take_control``), and ``signal`` is readable while one waits, so that a
    listener's selector hears a stop.  Nothing runs before a program asks for events, so
    a worker that forks has a single thread.
    """

    def __init__(self, ch: _channel.Channel) -> None:
        self._ch = ch
        self.handlers: dict[str, list[Callable[..., Any]]] = collections.defaultdict(list)
        self._cond = threading.Condition()
        self._messages: collections.deque[tuple[Any, Any]] = collections.deque()
        self._controls: collections.deque[tuple[Any, Any]] = collections.deque()
        self._closed = False
        self.ending = False
        self.signal, self._signal_w = socket.socketpair()
        self.signal.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="pyforkd worker events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, event: str, fn: Callable[..., Any]) -> None:
        with self._cond:
            self.handlers[event].append(fn)

    def _run(self) -> None:
        try:
            while True:
                try:
                    control, message, handle = self._ch.recv_any()
                except FrameError as exc:
                    self._emit("error", exc)
                    return
                except (ChannelClosedError, OSError):
                    return
                with self._cond:
                    if control:
                        if not self._controls:
                            self._signal_w.send(b"!")  # (read back when the last is taken)
                        self._controls.append((message, handle))
                        self._cond.notify_all()
                        continue
                    handlers = list(self.handlers["message"])
                    if not handlers:
                        self._messages.append((message, handle))
                        self._cond.notify_all()
                        continue
                for fn in handlers:
                    self._call(fn, message, *(() if handle is None else (handle,)))
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
                self._signal_w.send(b"!")  # (never read back: the channel stays closed)
            if not self.ending:
                self._emit("disconnect")

    def _emit(self, event: str, *args: Any) -> None:
        with self._cond:
            handlers = list(self.handlers[event])
        for fn in handlers:
            self._call(fn, *args)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            with self._cond:
                on_error = list(self.handlers["error"])
            if not on_error or fn in on_error:  # (an error handler's own error is printed)
                threading.excepthook(
                    threading.ExceptHookArgs([type(exc), exc, exc.__traceback__, self._thread])
                )
                return
            for handler in on_error:
                self._call(handler, exc)

    def spoke(self) -> bool:
        with self._cond:
            return bool(self._controls) or self._closed

    def take_message(self, timeout: float | None) -> tuple[Any, Any]:
        return self._take(self._messages, timeout, "message")

    def take_control(self, timeout: float | None) -> tuple[Any, Any]:
        return self._take(self._controls, timeout, "control message")

    def _take(
        self, queue: collections.deque[tuple[Any, Any]], timeout: float | None, what: str
    ) -> tuple[Any, Any]:
        with self._cond:
            if queue is self._messages and not queue and self.handlers["message"]:
                raise RuntimeError(
                    "messages go to the 'message' handlers (cluster.worker.on): recv() has "
                    "only those that came before the first"
                )
            if not self._cond.wait_for(lambda: queue or self._closed, timeout):
                raise TimeoutError(f"no {what} came in time")
            if not queue:
                raise ChannelClosedError("the peer closed the channel")
            item = queue.popleft()
            if queue is self._controls and not queue:
                try:
                    self.signal.recv(1)
                except BlockingIOError:
                    pass  # (nothing to read back: a close left its byte already read)
            return item


class _ThisProcess:
    """``cluster.worker.process`` in a worker: this process, as Node's ``process``."""

    def __init__(self, me: _Self) -> None:
        self._me = me
        self.pid = os.getpid()

    @property
    def connected(self) -> bool:
        """True while the channel to the primary is open."""
        return self._me.is_connected()

    def send(self, message: Any, handle: Any = None) -> None:
        """Send a message to the primary."""
        self._me.send(message, handle)

    def disconnect(self) -> None:
        """Close the channel to the primary (see ``cluster.worker.disconnect()``)."""
        self._me.disconnect()


def _primary() -> _channel.Channel:
    ch = _worker.parent()
    if ch is None:
        raise RuntimeError("this is not a cluster worker")
    return ch


def ready() -> None:
    """In a worker: tell the primary it is ready (see ``setup_primary(wait_ready=True)``)."""
    me = _role["worker"]
    if me is None:
        raise RuntimeError("ready() is for workers")
    me.ready()


def heartbeat() -> None:
    """In a worker: still alive (resets the hang clock of ``setup_primary(timeout=...)``)."""
    me = _role["worker"]
    if me is None:
        raise RuntimeError("heartbeat() is for workers")
    me.heartbeat()


def _worker_main(
    wid: int, path: str, argv: list[str] | None, env: dict[str, str], cwd: str | None = None
) -> None:
    """In a worker: become one, then run the program's __main__ from the top."""
    # The primary's handlers (stop, reload, scale) came along with a fork: a worker takes
    # these signals the default way (SIGTERM ends it).
    for sig in _PRIMARY_SIGNALS:
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    ch = _worker.parent()
    assert ch is not None
    hello, board = ch.recv_control(with_handle=True)
    _, _, _, timeout, targets = hello
    if targets:  # stdin/stdout/stderr given by the primary (pipes, /dev/null)
        _, ends = ch.recv_control(with_handle=True)
        for end, target in zip(ends, targets):
            os.dup2(end.fileno(), target)
            end.close()
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(line_buffering=True)
    if argv is not None:
        sys.argv[:] = argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    os.environ.update(env)
    os.environ["PYFORKD_WORKER_ID"] = str(wid)
    if cwd is not None:
        os.chdir(cwd)
    me = _Self(wid, _board.Slot(board.detach()), timeout)
    _role["worker"] = me
    # A hang-up while the primary has set the slot's LET_GO is a disconnect, not its death:
    # the worker then finishes its program.  (The slot lives as long as the worker.)
    _b.process_spare_on_hangup(me.slot.let_go_pointer())
    # The primary's atexit hooks came along with a fork; they are not this program's.
    atexit._clear()  # (the stdlib's own reset: atexit has no public one)
    atexit.register(_worker.finish)
    ch.send_control(("cluster", "online"))
    try:
        try:
            runpy.run_path(path, run_name="__main__")
        finally:
            _program_ends()
    except SystemExit as exc:
        code = exc.code
        if code is None or code == 0:
            return
        if isinstance(code, int):
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(code)
        raise


def _close_handles(handle: Any) -> None:
    for h in handle if isinstance(handle, list) else [handle]:
        h.close()


def _program_ends() -> None:
    """A worker's program is over: its ``atexit`` hooks run, as a program's do at exit."""
    me = _role["worker"]
    if me is not None:
        me.ending()
    atexit._run_exitfuncs()  # (it clears them: a second call runs nothing)


_worker_main._pyforkd_no_main = True  # type: ignore[attr-defined]  # runs __main__ itself


def listen(address: Any, type: int = socket.SOCK_STREAM) -> Any:
    """In a worker: a :class:`Listener` for TCP ``address`` (``(host, port)``).

    Every worker that listens there shares it.  ``OSError`` names the address when the
    primary cannot bind it (e.g. ``EADDRINUSE``).  With ``type=socket.SOCK_DGRAM``: the
    UDP socket the primary bound, shared by every worker (``recvfrom``/``sendto``; each
    datagram goes to one of them), whatever the cluster's policy.
    """
    if _role["worker"] is None:
        raise RuntimeError("listen() is for workers: the primary listens for them")
    address = _check_address(address)
    if type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise ValueError("listen() takes type=socket.SOCK_STREAM (TCP) or SOCK_DGRAM (UDP)")
    kind = "udp" if type == socket.SOCK_DGRAM else "tcp"
    me = _role["worker"]
    ch = _primary()
    ch.send_control(("cluster", "listen", address, kind))
    reply, handle = me.take_control()
    if reply[1] == "stopping":  # the cluster stops (or replaced us) before we served
        raise SystemExit(0)
    if reply[1] == "listen-error":
        _, _, err, text, key = reply
        raise OSError(err, f"{text}: cannot listen on {key[0]}:{key[1]} ({kind.upper()})")
    if kind == "udp":
        return handle
    listener: Listener
    if reply[3] == "shared":
        listener = _SharedListener(handle, me)
    elif reply[3] == "reuseport":  # a socket of its own on the same port (the kernel balances)
        listener = _SharedListener(socket.create_server(address, reuse_port=True), me)
    else:
        listener = Listener(handle)
        listener.address = tuple(reply[2])
    me._listeners.add(listener)
    return listener


def _check_address(address: Any) -> tuple[str, int]:
    """``(host, port)`` checked (``TypeError``/``ValueError`` say what is wrong)."""
    if isinstance(address, list):
        address = tuple(address)
    if not (
        isinstance(address, tuple)
        and len(address) == 2
        and isinstance(address[0], str)
        and isinstance(address[1], int)
        and not isinstance(address[1], bool)
    ):
        raise TypeError(f"listen() takes a (host, port) address, not {address!r}")
    if not 0 <= address[1] <= 65535:
        raise ValueError(f"port must be 0-65535, not {address[1]}")
    return address


class _SharedListener(Listener):
    """A worker's Listener under ``"shared"``: it accepts on the listening socket itself.

    It stops (``ChannelClosedError``) when the primary disconnects it.
    """

    def __init__(self, sock: socket.socket, me: _Self) -> None:
        self.socket = self._sock = sock
        self._fd = sock.fileno()
        self.address = sock.getsockname()
        self._lock = threading.Lock()
        self._me = me
        primary = me.control_fileno()
        sock.setblocking(False)  # another worker may take a connection first
        # fileno(): one descriptor readable when a connection waits *or* the primary has
        # something to say (a stop), so that a selector over it never misses the stop.
        self._either: Any = None
        if sys.platform == "linux":
            self._either = select.epoll()
            self._either.register(sock.fileno(), select.EPOLLIN)
            self._either.register(primary, select.EPOLLIN)
        elif sys.platform != "win32" and hasattr(select, "kqueue"):  # macOS, the BSDs
            self._either = select.kqueue()
            self._either.control(
                [
                    select.kevent(sock.fileno(), select.KQ_FILTER_READ),
                    select.kevent(primary, select.KQ_FILTER_READ),
                ],
                0,
            )

    def fileno(self) -> int:
        """Readable when a connection waits or the primary has a message (a stop)."""
        if self._either is not None and not self._either.closed:
            return int(self._either.fileno())
        return self._sock.fileno()

    def _watch_primary(self, fd: int) -> None:
        """The primary is heard through ``fd`` from now on (the worker's events thread)."""
        either = self._either
        if either is None or either.closed:
            return
        old = _primary().fileno()
        if sys.platform == "linux":
            either.unregister(old)
            either.register(fd, select.EPOLLIN)
        else:
            either.control(
                [
                    select.kevent(old, select.KQ_FILTER_READ, select.KQ_EV_DELETE),
                    select.kevent(fd, select.KQ_FILTER_READ),
                ],
                0,
            )

    def close(self) -> None:
        """Stop taking connections."""
        if self._either is not None:
            self._either.close()
        self._sock.close()

    def accept(self, timeout: float | None = None) -> tuple[socket.socket, Any]:
        """The next connection, as ``socket.accept()``; see :meth:`Listener.accept`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        me = self._me
        me.slot.idle()
        if me.primary_spoke():
            self._from_primary()  # raises once the primary said stop
        try:  # the common case under load, without a selector
            return self._take()
        except BlockingIOError:
            if timeout == 0:
                raise TimeoutError("no connection waits") from None
        # (Windows' select() takes sockets only: a pipe to the primary is looked at.)
        polled = not me.primary_selectable()
        with self._lock, selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ, "listen")
            if not polled:
                sel.register(me.control_fileno(), selectors.EVENT_READ, "primary")
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if polled:
                    left = _POLL_SECONDS if left is None else min(left, _POLL_SECONDS)
                events = sel.select(left)
                if polled and me.primary_spoke():
                    self._from_primary()
                if not events and deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError("no connection came in time")
                for key, _ in events:
                    if key.data == "primary":
                        self._from_primary()
                        continue
                    try:
                        return self._take()
                    except BlockingIOError:
                        continue  # another worker took it

    def _take(self) -> tuple[socket.socket, Any]:
        fd, address = self._sock._accept()  # type: ignore[attr-defined, unused-ignore]
        conn = _connection(fd, self._sock.family, self._sock.type)
        if socket.getdefaulttimeout() is None:
            conn.setblocking(True)
        return conn, address

    def _primary_said_stop(self) -> bool:
        """Whether the primary stopped this listener (looked at now, without waiting).

        For the platforms where :meth:`fileno` does not cover the primary (Windows).
        """
        if self._either is not None:
            return False  # fileno() covers the primary: accept() sees its stop
        try:
            if self._me.primary_spoke():
                self._from_primary()
        except ChannelClosedError:
            return True
        return False

    def _from_primary(self) -> None:
        """Read the primary's control messages: a disconnect ends accepting."""
        while True:
            try:
                msg, handle = self._me.take_control(0)
            except TimeoutError:
                return
            except ChannelClosedError:
                raise ChannelClosedError("the primary is gone") from None
            if handle is not None:
                _close_handles(handle)
            if msg == ("cluster", "disconnect"):
                self.close()
                raise ChannelClosedError("the primary stopped this worker's listening")


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
        """Listen through the cluster (instead of binding a socket of its own)."""
        self.socket.close()  # the one socketserver made: never bound
        self.listener = listen(self.server_address)
        if self.listener.socket is not None:  # (Windows "rr": a pipe; the closed one stays)
            self.socket = self.listener.socket
        self.server_address = self.listener.address
        host, port = self.server_address[:2]
        self.server_name = socket.getfqdn(host)  # what http.server.HTTPServer sets
        self.server_port = port

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
        me = _role["worker"]
        if me is not None:
            me.slot.idle()
        said_stop = getattr(self.listener, "_primary_said_stop", None)
        if said_stop is not None and said_stop():
            self._BaseServer__shutdown_request = True  # ends serve_forever
        super().service_actions()  # type: ignore[misc]

    def server_close(self) -> None:
        """Stop taking connections (and, with threads, wait for the requests served)."""
        listener = self.__dict__.get("listener")
        if listener is not None:  # (None: server_bind failed, and socketserver closes)
            listener.close()
        super().server_close()  # type: ignore[misc]


class TCPServer(ServerMixin, socketserver.TCPServer):
    """``socketserver.TCPServer`` whose connections come from the cluster."""


class ThreadingTCPServer(ServerMixin, socketserver.ThreadingTCPServer):
    """``socketserver.ThreadingTCPServer`` whose connections come from the cluster."""


class HTTPServer(ServerMixin, http.server.HTTPServer):
    """``http.server.HTTPServer`` whose connections come from the cluster."""


class ThreadingHTTPServer(ServerMixin, http.server.ThreadingHTTPServer):
    """``http.server.ThreadingHTTPServer`` whose connections come from the cluster."""


_clusters: weakref.WeakSet[Cluster] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked process (a new worker) keeps nothing of its primary's cluster.

    Not the listening sockets (the dispatcher's own descriptors are closed by its C
    at-fork handler), not the workers.
    """
    for c in list(_clusters):
        c._close_listeners()
        c.workers.clear()
        c._restarts.clear()
        if c._board is not None:
            c._board.close()
            c._board = None
    _systemd.forget()


if hasattr(os, "register_at_fork"):  # (Windows has no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)


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

    me = _role["worker"]
    if me is not None and me.timeout:
        # A loop that stops turning (a handler that blocks it) is a hung worker: the beat
        # below stops, and the primary's timeout kills it.
        def beat() -> None:
            if not server._closed.done():
                me.slot.beat()
                loop.call_later(me.timeout / 4, beat)

        beat()
    said_stop = getattr(listener, "_primary_said_stop", None)
    if said_stop is not None and getattr(listener, "_either", None) is None:
        # fileno() does not cover the primary here (Windows): look at it now and then.
        def look() -> None:
            if server._closed.done():
                return
            if said_stop():
                server.close()
            else:
                loop.call_later(_POLL_SECONDS * 5, look)

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


_default = Cluster()


def __getattr__(name: str) -> Any:
    if name in ("is_primary", "is_worker", "workers", "settings"):
        return getattr(_default, name)
    if name == "worker":
        return _role["worker"]
    raise AttributeError(f"module 'pyforkd.cluster' has no attribute {name!r}")


def fork(env: Mapping[str, str] | None = None) -> Worker:
    """Start a worker (the default cluster's :meth:`Cluster.fork`)."""
    return _default.fork(env)


def on(event: str, fn: Callable[..., Any]) -> None:
    """Call ``fn`` on ``event`` (the default cluster's :meth:`Cluster.on`)."""
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
