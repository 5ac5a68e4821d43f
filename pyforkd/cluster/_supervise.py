"""The primary: its workers, their events, restarts, reloads and stops."""

from __future__ import annotations

import collections
import errno
import os
import random
import runpy
import selectors
import signal as _signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

try:
    import psutil  # type: ignore[import-untyped]  # optional: where there is no /proc
except ImportError:
    psutil = None

from .. import _bindings as _b
from .. import channel as _channel
from .. import worker as _worker
from ..child_process import live_pids, signal_name
from ..errors import ChannelClosedError, FrameError
from . import _address, _board, _log, _procstat, _systemd, _worker_side
from . import _protocol as P
from ._handoff import RoundRobin, handoff_pair
from ._settings import (
    BACKOFF_FACTOR,
    BACKOFF_MAX,
    DEFAULTS,
    EVENTS,
    NO_RESTART_CODES,
    POLL_SECONDS,
    STABLE_UPTIME,
    WORKER_EVENTS,
    check_setting,
    seconds,
)
from ._worker_side import worker_main

# ---- the cluster --------------------------------------------------------------------------


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # pyforkd/


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
                # (through the primary: its prefix, or its log file, which SIGUSR1 reopens)
                piped = settings["log_prefix"] or (i == 2 and settings["log_file"])
                if mode == "inherit" and i > 0 and piped:
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


_Malformed = P.Malformed  # (what a worker sent that is not the protocol)


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
        self._told_stop = False  # it was sent STOP
        self._hears_stop = False  # it has code that hears STOP: no SIGTERM for it
        self._status_lost = False  # it ended after its fork server: no status
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
        finish: it gets SIGTERM at once, unless it hears the stop itself (``"stopping"``).
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
        elif not listening and not self._hears_stop:
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
        return self.process.returncode is not None or self._status_lost

    def __repr__(self) -> str:
        return f"<cluster.Worker id={self.id} pid={self.process.pid} {self.state}>"


def _ended(w: Worker) -> bool:
    """Whether ``w``'s process is gone.

    Its status is lost when its fork server ended first (SIGKILLed by another hand).
    """
    try:
        return w.process.poll() is not None
    except ChildProcessError:
        w._status_lost = True
        return True


class Cluster:
    """A primary and its workers; the ``cluster`` module's functions use a default one."""

    def __init__(self) -> None:
        self.workers: dict[int, Worker] = {}
        self._adopted: dict[Any, socket.socket] = {}  # listening sockets given by adopt()
        self._foreign: set[int] = set()  # their descriptors: their files are not ours
        self.settings: dict[str, Any] = dict(DEFAULTS)
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
        return _worker_side.current() is None

    @property
    def is_worker(self) -> bool:
        """True in a worker the primary forked."""
        return _worker_side.current() is not None

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
        with ``[worker N]`` in front.  ``log_file`` (a path): the primary's stderr, and its
        workers' (through the primary), goes to that file from now on; SIGUSR1 opens it
        again (after logrotate moved it), then goes to the workers.  ``umask``: for the
        UNIX sockets the primary makes.
        """
        checked = {key: check_setting(key, value) for key, value in settings.items()}
        if checked.get("log_file") is not None:
            _log.log_to(checked["log_file"])  # (OSError says why it cannot be)
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

    def adopt(self, sock: socket.socket) -> Any:
        """Serve ``sock``, a listening socket made elsewhere (``fd://N``, a test's).

        Returns the address that workers ``listen()`` on to share it.
        """
        if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM:
            raise TypeError("adopt() takes a listening stream socket")
        name = sock.getsockname()
        key = name if isinstance(name, str) else _address.check((name[0], name[1]))
        self._adopted[key] = sock
        self._foreign.add(sock.fileno())
        return key

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
            self._zygote = _worker.Zygote(worker_main)
        plan = _Stdio(st)
        try:
            wid = self._next_id
            extra = {str(k): str(v) for k, v in (env or {}).items()}
            where = (wid, os.path.abspath(path), argv, extra, st["cwd"])
            if self._zygote is not None and forking:
                process = self._zygote.fork(*where, name=f"worker {wid}")
            else:
                process = _worker.fork_worker(
                    worker_main,
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
        hello = P.encode(P.Hello(slot, self.settings["timeout"], plan.targets))
        ch = process.channel
        assert ch is not None
        try:
            ch.send_control(hello, board_fd)
            if plan.targets:
                ends = [_channel.Fd(fd) for fd in plan.given]
                ch.send_control(P.encode(P.Stdio()), ends, keep_open=True)
        except ChannelClosedError:
            pass  # it died already: run() reaps it
        finally:
            board_fd.close()  # (closed once sent; here when it was not)
            plan.close_given()  # the worker has its own copies
        w.stdin, w.stdout, w.stderr = plan.files()
        for r, stream in plan.prefixed:
            prefix = f"[worker {wid}] " if self.settings["log_prefix"] else ""
            w._logs.append(_LogPipe(r, prefix, stream))
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
                "SIGUSR1": self._reopen_and_forward,
                "SIGUSR2": self._forward,
            }
            for name, fn in handlers.items():
                sig = getattr(_signal, name, None)
                if sig is not None:  # (Windows has SIGTERM, SIGINT and SIGBREAK)
                    previous[sig] = _signal.signal(sig, fn)
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        # Windows' select() takes sockets only: the channels' and logs' pipes are looked
        # at in turn instead, every POLL_SECONDS at most.
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
                    timeout = POLL_SECONDS if timeout is None else min(timeout, POLL_SECONDS)
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

    def _reopen_and_forward(self, sig: int, frame: Any = None) -> None:
        _log.reopen()  # (for logrotate: nothing without a log file)
        self._forward(sig, frame)

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
            if _ended(w):
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
                    rss = _procstat.rss(w.process.pid)
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
        _log.say(f"worker {w.id} (pid {w.process.pid}) {why}: killed")
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
        _log.say(f"worker {w.id} (pid {w.process.pid}) {why}: replaced")
        new = self.fork(w._env)
        new.restarts = w.restarts
        self._replaces[new.id] = w

    def _reap_strays(self) -> None:
        """As PID 1: wait for orphans the kernel gave us (not our own children)."""
        if not sys.platform.startswith("linux"):
            return  # (a PID 1 of ours is a Linux container's; macOS's os has no waitid)
        ours = {w.process.pid for w in self.workers.values()} | live_pids()
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
            cpu_now = _procstat.cpu_seconds(pid)
            cpu = None
            if cpu_now is not None:
                then, used = w._cpu_sample or (w._started, 0.0)
                cpu = 100.0 * (cpu_now - used) / max(now - then, 1e-6)
                w._cpu_sample = (now, cpu_now)
            try:
                rss: int | None = _procstat.rss(pid)
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
                    try:
                        self._control(w, msg, handle)
                    except ChannelClosedError:
                        # The answer found the worker gone (it asked, then ended): its end is
                        # handled as any closed channel's.
                        return False
                else:
                    self._message(w, msg, handle)
        except (FrameError, _Malformed) as exc:
            w._why = f"sent a malformed message ({exc})"
            _log.say(f"worker {w.id} (pid {w.process.pid}) {w._why}: killed")
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
            _log.say(
                f"{self._dropped} message(s) from workers dropped: there is "
                "no 'message' handler (cluster.on('message', fn) takes them)"
            )
            self._dropped = 0

    def _control(self, w: Worker, msg: Any, handle: Any) -> None:
        """Act on one of the worker's own messages (``_Malformed`` when it is not one)."""
        if not isinstance(msg, tuple) or not msg:
            raise _Malformed(f"a control message of type {type(msg).__name__}")
        if not P.is_ours(msg):
            # The worker's outcome (its script ended): keep it, say why if it failed.
            if msg[0] == "result" and len(msg) == 2:
                _worker.keep_outcome(w.process, msg)
                return
            if not (
                msg[0] == "error"
                and len(msg) == 2
                and isinstance(msg[1], tuple)
                and len(msg[1]) == 5
                and isinstance(msg[1][2], str)
            ):
                raise _Malformed(f"an outcome {str(msg)[:80]!r}")
            _worker.keep_outcome(w.process, msg)
            remote_tb = _user_frames(msg[1][2])
            _log.say(f"worker {w.id} failed:\n{remote_tb}")
            return
        m = P.from_worker(msg)
        if isinstance(m, P.Online):
            w.state = "online"
            self._emit_worker(w, "online")
        elif isinstance(m, P.Listen):
            self._listen_for(w, m.address, m.kind)
        elif isinstance(m, P.Ready):
            self._became_ready(w)
        elif isinstance(m, P.Leaving):
            w.exited_after_disconnect = True  # it disconnected itself: no restart
        elif isinstance(m, P.HearsStop):
            w._hears_stop = True
        elif not (w._recycling or w.exited_after_disconnect or self._stopping):
            self._recycle(w, m.why)  # (ReplaceMe: its watchdog saw a request run too long)

    def _listen_for(self, w: Worker, key: _address.Address, kind: str) -> None:
        ch = w.process.channel
        assert ch is not None
        if self._stopping or w.exited_after_disconnect:
            # Asked to stop before it listened: it has nothing to finish, it just ends.
            ch.send_control(P.encode(P.Stopping()))
            return
        policy = "shared" if kind == "udp" else self.settings["policy"]
        if policy == "reuseport":  # the worker binds its own socket: nothing to share here
            if isinstance(key, str) or key[1] == 0:  # (0: each worker's own port)
                text = "policy 'reuseport' needs a fixed TCP port"
                ch.send_control(P.encode(P.ListenError(errno.EINVAL, text, key)))
                return
            w._slots.append((key, -1))
            self._now_listening(w, key, policy, None)
            return
        try:
            if (kind, key) not in self._listeners:
                if kind == "udp":
                    sock = _systemd.matching(key, socket.SOCK_DGRAM) or _address.bind(
                        key, socket.SOCK_DGRAM, self.settings["umask"]
                    )
                else:
                    sock = (
                        self._adopted.pop(key, None)
                        or _systemd.matching(key)
                        or _address.bind(key, umask=self.settings["umask"])
                    )
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
            if exc.errno and exc.strerror and exc.strerror != os.strerror(exc.errno):
                text += f" ({exc.strerror})"  # a reason of pyforkd's: "not a socket"
            ch.send_control(P.encode(P.ListenError(exc.errno or errno.EINVAL, text, key)))
            return
        w._slots.append(((kind, key), slot))
        self._now_listening(w, entry[0].getsockname(), policy, theirs, keep_open=slot < 0)

    def _now_listening(
        self, w: Worker, address: Any, policy: str, handle: Any, keep_open: bool = False
    ) -> None:
        ch = w.process.channel
        assert ch is not None
        w._listened = True
        ch.send_control(P.encode(P.Listening(address, policy)), handle, keep_open=keep_open)
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
                _log.say(f"worker {w.id} cannot be given work: {exc}")
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
        w._slots.clear()
        if not w._told_stop and ch is not None and ch.connected:
            # Its shared listeners stop on it, and so does code that asked for "stopping".
            w._told_stop = True
            try:
                ch.send_control(P.encode(P.Stop()))
            except ChannelClosedError:
                pass

    def _close_listeners(self, primary: bool = True) -> None:
        """Close the listening sockets; the primary removes its UNIX sockets' files."""
        for lsock, rr in self._listeners.values():
            if rr is not None:
                rr.close()
            if primary and not _systemd.activated(lsock) and lsock.fileno() not in self._foreign:
                _address.unlink(lsock)
            lsock.close()
        self._listeners.clear()
        for lsock in self._adopted.values():
            lsock.close()
        self._adopted.clear()
        self._foreign.clear()

    def _reap(self, w: Worker) -> None:
        """Its channel closed: tell; once the process is gone, tell and maybe restart.

        A worker may go on after its channel closed (one that disconnected itself finishes
        its script, as in Node): run()'s loop looks at it until it exits.
        """
        self._stop_dispatching(w)
        w.state = "disconnected"
        self._emit_worker(w, "disconnect")
        if not _ended(w):
            self._leaving[w.id] = w
            self._wake()
            return
        self._exited(w)

    def _exited(self, w: Worker) -> None:
        """Its process is gone: 'exit', then a restart unless it was meant to go."""
        self._leaving.pop(w.id, None)
        try:
            w.process.wait()
        except ChildProcessError:
            w._status_lost = True  # (its fork server died first: see _ended)
        # A replacement that died before it was ready: the old one stays (and is not
        # recycled again: the next replacement would likely fail the same way).
        replaced = self._replaces.pop(w.id, None)
        if replaced is not None and replaced.state != "dead":
            _log.say(
                f"worker {w.id}, the replacement of worker {replaced.id}, "
                f"died before it was ready: worker {replaced.id} goes on serving"
            )
        w.state = "dead"
        self.workers.pop(w.id, None)
        code = w.process.returncode
        if code is None:  # lost: 'exit' says neither a code nor a signal
            exit_code, sig = None, None
        else:
            exit_code, sig = (code, None) if code >= 0 else (None, signal_name(-code))
        self._emit_worker(w, "exit", exit_code, sig)
        # A worker whose script failed before it ever listened would fail again: a boot
        # error, like exit codes 3 and 4 (its traceback was printed when it came).
        outcome = _worker.outcome(w.process)
        boot_error = outcome is not None and outcome[0] == "error" and not w._listened
        self._board_release(w)
        if (
            self._stopping
            or w.exited_after_disconnect
            or w._recycling  # its replacement is there already
            or replaced is not None
            or not w._restart_after_kill
            or not self.settings["restart"]
            or exit_code in NO_RESTART_CODES
            or boot_error
        ):
            self._systemd_status()
            return
        lived = time.monotonic() - w._started
        self._failures = 0 if lived >= STABLE_UPTIME else self._failures + 1
        if self._failures > self.settings["max_restarts"]:
            self.error = (
                f"workers keep dying young ({self._failures} in a row, the last exit "
                f"{exit_code if sig is None else sig}): the cluster stops"
            )
            self.shutdown()
            return
        # The first death in a row is restarted at once; then the delay grows.
        first = self.settings["restart_delay"]
        delay = min(first * BACKOFF_FACTOR ** max(0, self._failures - 2), BACKOFF_MAX)
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

    def request_stop(self, fast: bool = False) -> None:
        """Ask :meth:`run`'s loop to stop the cluster, as SIGTERM (``fast``: SIGINT) does.

        Safe from another thread or a signal handler; :meth:`shutdown` is for the loop's own.
        """
        self._request("stop", 1 if fast else 0)

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
            seconds("graceful_timeout", graceful_timeout, allow_none=False)
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


_clusters: weakref.WeakSet[Cluster] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked process (a new worker) keeps nothing of its primary's cluster.

    Not the listening sockets (the dispatcher's own descriptors are closed by its C
    at-fork handler), not the workers.
    """
    for c in list(_clusters):
        c._close_listeners(primary=False)
        c.workers.clear()
        c._restarts.clear()
        if c._board is not None:
            c._board.close()
            c._board = None
    _systemd.forget()


if hasattr(os, "register_at_fork"):  # (Windows has no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)
