"""The cluster: a primary that shares a port across workers and restarts them.

In progress (see the open issue): the primary, ``fork`` workers, the ``"rr"`` policy
(a C dispatcher thread, no GIL, hands every connection over and keeps its copy until
the worker has it: a worker that dies loses none), events, restarts with back-off and
a crash-loop stop.  The Node-style use::

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
cluster: workers stop taking connections, finish, and exit.
"""

from __future__ import annotations

import asyncio
import collections
import os
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

from . import _bindings as _b
from . import worker as _worker
from .child_process import signal_name
from .errors import ChannelClosedError, TimeoutExpired

__all__ = [
    "EVENTS",
    "AsyncServer",
    "Cluster",
    "Listener",
    "RoundRobin",
    "Worker",
    "fork",
    "listen",
    "on",
    "reload",
    "run",
    "scale",
    "setup_primary",
    "shutdown",
    "start_server",
]

EVENTS = ("fork", "online", "listening", "message", "disconnect", "exit", "setup")
_NO_RESTART_CODES = (3, 4)  # a worker's "boot or app error: do not restart me"
_BACKOFF_FIRST, _BACKOFF_FACTOR, _BACKOFF_MAX = 0.1, 1.5, 15.0  # seconds
_STABLE_UPTIME = 30.0  # a worker that lived this long resets the back-off
_CRASH_LOOP = 10  # restarts in a row of workers that died young: the cluster stops
_POLICIES = ("rr", "shared", "reuseport")
_PRIMARY_SIGNALS = (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGTTIN, _signal.SIGTTOU)


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
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if deadline is not None:
                    left = max(0, int((deadline - time.monotonic()) * 1000))
                    if _b.fd_wait(fd, _b.POLL_IN, left) is False:
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


# ---- the cluster --------------------------------------------------------------------------


class Worker:
    """A worker as the primary sees it.

    ``id``, ``process`` (a :class:`pyforkd.Worker`), ``state`` (``"none"``, ``"online"``,
    ``"listening"``, ``"disconnected"``, ``"dead"``), ``send``/``recv`` to talk to it,
    ``disconnect()``, ``kill()``.
    """

    def __init__(self, cluster: Cluster, wid: int, process: _worker.Worker) -> None:
        self.id = wid
        self.process = process
        self.state = "none"
        self.exited_after_disconnect = False
        self._cluster = cluster
        self._slots: list[tuple[Any, int]] = []  # (address, dispatcher slot)
        self._listened = False
        self._started = time.monotonic()
        self._env: dict[str, str] | None = None

    def send(self, message: Any, handle: Any = None, **options: Any) -> None:
        """Send a message to the worker (it reads it with ``pyforkd.parent().recv()``)."""
        self.process.send(message, handle, **options)

    def recv(self, timeout: float | None = None, **options: Any) -> Any:
        """Receive a message from the worker (when no ``"message"`` handler takes them)."""
        return self.process.recv(timeout, **options)

    def disconnect(self) -> None:
        """Stop giving it connections; it finishes those it has and exits."""
        self.exited_after_disconnect = True
        listening = bool(self._slots)
        self._cluster._stop_dispatching(self)  # its accept() ends: it finishes and exits
        if not listening and self.state != "dead":
            self.process.kill("SIGTERM")  # it listens to nothing: nothing to drain

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
        self.settings: dict[str, Any] = {"policy": "rr", "restart": True}
        self._handlers: dict[str, list[Callable[..., Any]]] = collections.defaultdict(list)
        self._next_id = 1
        # Per address: the listening socket, and its dispatcher once a worker uses "rr".
        self._listeners: dict[Any, list[Any]] = {}
        self._stopping = False
        self._failures = 0  # workers in a row that died young
        self._restarts: list[tuple[float, dict[str, str] | None]] = []  # (when, env)
        self._requests: list[tuple[str, int]] = []  # reload / scale, done by run()'s loop
        self._replaces: dict[int, Worker] = {}  # a reload's new worker id -> the old one
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.error: str | None = None  # why the cluster stopped by itself, if it did
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

        ``exec``: the script workers run (default: this program's ``__main__``), with
        ``args`` as its ``sys.argv[1:]``; ``policy``: ``"rr"`` (the primary hands each
        connection to a worker), ``"shared"`` (workers accept on the primary's listening
        socket) or ``"reuseport"`` (each worker binds its own ``SO_REUSEPORT`` socket; a
        worker that stops drops what waits in its own accept queue); ``restart`` (bool).
        """
        for key, value in settings.items():
            if key == "policy" and value not in _POLICIES:
                raise ValueError(f"policy must be 'rr', 'shared' or 'reuseport', not {value!r}")
            if key == "policy" and value == "reuseport" and not hasattr(socket, "SO_REUSEPORT"):
                raise ValueError("policy 'reuseport' needs SO_REUSEPORT, which this OS lacks")
            if key == "restart" and not isinstance(value, bool):
                raise TypeError("restart must be a bool")
            if key == "exec" and not (isinstance(value, str) and os.path.isfile(value)):
                raise ValueError(f"exec must name a script file, not {value!r}")
            if key == "args" and not (
                isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value)
            ):
                raise TypeError("args must be a list of str")
            if key not in ("policy", "restart", "exec", "args"):
                raise TypeError(f"setup_primary() got an unknown setting {key!r}")
        self.settings.update(settings)
        self._emit("setup", dict(self.settings))

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

    def fork(self, env: Mapping[str, str] | None = None) -> Worker:
        """Start a worker: a fork of this process that runs ``__main__`` from the top."""
        if self.is_worker:
            raise RuntimeError("fork() is for the primary (this is a worker)")
        path = self.settings.get("exec")
        argv = None
        if path is not None:
            argv = [path, *self.settings.get("args", ())]
        else:
            path = getattr(sys.modules.get("__main__"), "__file__", None)
            if not path:
                raise RuntimeError(
                    "a cluster needs a script for its workers: run one, or setup_primary(exec=...)"
                )
        wid = self._next_id
        self._next_id += 1
        extra = {str(k): str(v) for k, v in (env or {}).items()}
        process = _worker.fork_worker(
            _worker_main, wid, os.path.abspath(path), argv, extra, name=f"worker {wid}"
        )
        w = Worker(self, wid, process)
        w._env = extra
        self.workers[wid] = w
        self._emit("fork", w)
        self._wake()
        return w

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"!")
        except OSError:
            pass  # full: a wake-up is pending already

    # ---- the primary's loop ---------------------------------------------------------

    def run(self) -> None:
        """Supervise until :meth:`shutdown` (or SIGTERM/SIGINT) and every worker is gone.

        Raises ``RuntimeError`` when workers keep dying young (a crash loop).
        """
        if self.is_worker:
            raise RuntimeError("run() is for the primary (this is a worker)")
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (_signal.SIGTERM, _signal.SIGINT):
                previous[sig] = _signal.signal(sig, lambda *_: self.shutdown())
            previous[_signal.SIGHUP] = _signal.signal(_signal.SIGHUP, lambda *_: self.reload())
            previous[_signal.SIGTTIN] = _signal.signal(
                _signal.SIGTTIN, lambda *_: self.scale(self._count() + 1)
            )
            previous[_signal.SIGTTOU] = _signal.signal(
                _signal.SIGTTOU, lambda *_: self.scale(max(1, self._count() - 1))
            )
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        watched: dict[int, Worker] = {}
        try:
            while True:
                for w in list(self.workers.values()):
                    ch = w.process.channel
                    if w.id not in watched and ch is not None and ch.fileno() >= 0:
                        sel.register(ch.fileno(), selectors.EVENT_READ, w)
                        watched[w.id] = w
                if not self.workers and not self._restarts:
                    if not self._stopping and self.error is None:
                        self.error = "no workers are left, and none is to be restarted"
                    break
                timeout = None
                if self._restarts:
                    timeout = max(0.0, self._restarts[0][0] - time.monotonic())
                for key, _ in sel.select(timeout):
                    if key.data is None:
                        try:
                            while self._wake_r.recv(512):
                                pass  # drain: one wake-up covers them all
                        except BlockingIOError:
                            pass  # drained
                        continue
                    w = key.data
                    if not self._service(w):
                        sel.unregister(key.fileobj)
                        del watched[w.id]
                        self._reap(w)
                self._due_restarts()
                self._do_requests()
        finally:
            sel.close()
            for sig, handler in previous.items():
                _signal.signal(sig, handler)
            self._close_listeners()
        if self.error:
            raise RuntimeError(self.error)

    def _service(self, w: Worker) -> bool:
        """Read what the worker sent; False once its channel has closed."""
        ch = w.process.channel
        assert ch is not None
        while True:
            try:
                msg, handle = ch.recv_control(0, with_handle=True)
            except TimeoutError:
                break
            except ChannelClosedError:
                return False
            self._control(w, msg, handle)
        ready = ch._decoder.ready
        while ready and self._handlers.get("message"):
            msg, handle = ready.popleft()
            if handle is None:
                self._emit("message", w, msg)
            else:
                self._emit("message", w, msg, handle)
        return ch.connected

    def _control(self, w: Worker, msg: Any, handle: Any) -> None:
        if not (isinstance(msg, tuple) and msg and msg[0] == "cluster"):
            # The worker's outcome (its script ended): keep it, say why if it failed.
            w.process._outcome = msg
            if msg[0] == "error":
                remote_tb = msg[1][2]
                sys.stderr.write(f"pyforkd cluster: worker {w.id} failed:\n{remote_tb}")
            return
        kind = msg[1]
        if kind == "online":
            w.state = "online"
            self._emit("online", w)
        elif kind == "listen":
            self._listen_for(w, msg[2])

    def _listen_for(self, w: Worker, address: Any) -> None:
        ch = w.process.channel
        assert ch is not None
        key = tuple(address) if isinstance(address, list) else address
        if self._stopping or w.exited_after_disconnect:
            # Asked to stop before it listened: it has nothing to finish, it just ends.
            ch.send_control(("cluster", "stopping"))
            return
        policy = self.settings["policy"]
        if policy == "reuseport":  # the worker binds its own socket: nothing to share here
            w._slots.append((key, -1))
            w._listened = True
            ch.send_control(("cluster", "listening", key, policy))
            w.state = "listening"
            self._emit("listening", w, key)
            self._replace_done(w)
            return
        try:
            if key not in self._listeners:
                self._listeners[key] = [socket.create_server(key), None]
            entry = self._listeners[key]
            if policy == "rr":
                if entry[1] is None:
                    entry[1] = RoundRobin(entry[0])
                slot, theirs = entry[1].connect()
            else:  # "shared": the worker accepts on the listening socket itself
                slot, theirs = -1, entry[0]
        except OSError as exc:
            ch.send_control(("cluster", "listen-error", exc.errno, exc.strerror, key))
            return
        w._slots.append((key, slot))
        w._listened = True
        address = entry[0].getsockname()
        ch.send_control(("cluster", "listening", address, policy), theirs, keep_open=slot < 0)
        w.state = "listening"
        self._emit("listening", w, address)
        self._replace_done(w)

    def _replace_done(self, w: Worker) -> None:
        """``w`` listens: the worker a reload started it for can go."""
        old = self._replaces.pop(w.id, None)
        if old is not None and old.state != "dead":
            old.disconnect()  # its replacement serves now: the old one drains and exits

    def _stop_dispatching(self, w: Worker) -> None:
        ch = w.process.channel
        for key, slot in w._slots:
            entry = self._listeners.get(key)
            if slot >= 0 and entry is not None and entry[1] is not None:
                entry[1].remove(slot)
            elif slot < 0 and ch is not None and ch.connected:  # shared/reuseport: it stops
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
        """Its channel closed: wait for the process, tell, and maybe start another."""
        self._stop_dispatching(w)
        self._replaces.pop(w.id, None)  # a replacement that died: the old one stays
        w.state = "disconnected"
        self._emit("disconnect", w)
        try:
            w.process.wait(5)
        except TimeoutExpired:
            w.process.kill("SIGKILL")
            w.process.wait()
        w.state = "dead"
        self.workers.pop(w.id, None)
        code = w.process.returncode
        assert code is not None
        exit_code, sig = (code, None) if code >= 0 else (None, signal_name(-code))
        self._emit("exit", w, exit_code, sig)
        # A worker whose script failed before it ever listened would fail again: a boot
        # error, like exit codes 3 and 4 (its traceback was printed when it came).
        outcome = w.process._outcome
        boot_error = outcome is not None and outcome[0] == "error" and not w._listened
        if (
            self._stopping
            or w.exited_after_disconnect
            or not self.settings["restart"]
            or exit_code in _NO_RESTART_CODES
            or boot_error
        ):
            return
        lived = time.monotonic() - w._started
        self._failures = 0 if lived >= _STABLE_UPTIME else self._failures + 1
        if self._failures > _CRASH_LOOP:
            self.error = (
                f"workers keep dying young ({self._failures} in a row, the last exit "
                f"{exit_code if sig is None else sig}): the cluster stops"
            )
            self.shutdown()
            return
        delay = min(_BACKOFF_FIRST * _BACKOFF_FACTOR ** max(0, self._failures - 1), _BACKOFF_MAX)
        if lived >= _STABLE_UPTIME:
            delay = 0.0
        self._restarts.append((time.monotonic() + delay, w._env))
        self._restarts.sort(key=lambda r: r[0])

    def _due_restarts(self) -> None:
        now = time.monotonic()
        while self._restarts and self._restarts[0][0] <= now and not self._stopping:
            _, env = self._restarts.pop(0)
            self.fork(env)

    def reload(self) -> None:
        """Replace every worker, refusing no connection.

        A new worker is started for each; each old one stops taking connections once its
        replacement listens, finishes what it has and exits.  SIGHUP does this in
        :meth:`run`.
        """
        self._requests.append(("reload", 0))
        self._wake()

    def scale(self, n: int) -> None:
        """Run ``n`` workers: start more, or stop the newest (gracefully).

        SIGTTIN and SIGTTOU add and remove one in :meth:`run`.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"scale() needs a worker count >= 0, not {n!r}")
        self._requests.append(("scale", n))
        self._wake()

    def _count(self) -> int:
        """Workers that serve or will (not those on their way out)."""
        return sum(1 for w in self.workers.values() if not w.exited_after_disconnect) + len(
            self._restarts
        )

    def _do_requests(self) -> None:
        while self._requests and not self._stopping:
            kind, n = self._requests.pop(0)
            if kind == "reload":
                for old in [w for w in self.workers.values() if not w.exited_after_disconnect]:
                    if old not in self._replaces.values():
                        self._replaces[self.fork(old._env).id] = old
            else:
                current = [w for w in self.workers.values() if not w.exited_after_disconnect]
                for _ in range(n - self._count()):
                    self.fork()
                for w in sorted(current, key=lambda w: w.id, reverse=True)[
                    : max(0, len(current) - n)
                ]:
                    w.disconnect()

    def shutdown(self, graceful_timeout: float = 10.0) -> None:
        """Stop: no restarts; workers stop taking connections, finish and exit.

        Those still running after ``graceful_timeout`` are killed.  It only starts the
        stop (a signal handler may call it): :meth:`run` returns once every worker is gone.
        """
        self._stopping = True
        self._restarts.clear()
        self._requests.clear()
        for w in list(self.workers.values()):
            if w.state != "dead":
                w.disconnect()
        deadline = time.monotonic() + graceful_timeout
        threading.Thread(target=self._kill_late, args=(deadline,), daemon=True).start()
        self._wake()

    def _kill_late(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not any(w.process.returncode is None for w in list(self.workers.values())):
                return
            time.sleep(0.05)
        for w in list(self.workers.values()):
            if w.process.returncode is None:
                w.process.kill("SIGKILL")


# ---- in a worker ------------------------------------------------------------------------

_role: dict[str, Any] = {"worker": None}  # the worker's id, in a worker


class _Self:
    """``cluster.worker`` inside a worker: its ``id``; ``send``/``recv`` to the primary."""

    def __init__(self, wid: int) -> None:
        self.id = wid

    def send(self, message: Any, handle: Any = None) -> None:
        """Send a message to the primary (its ``"message"`` event)."""
        ch = _worker.parent()
        assert ch is not None
        ch.send(message, handle)

    def recv(self, timeout: float | None = None) -> Any:
        """Receive a message the primary sent with ``worker.send``."""
        ch = _worker.parent()
        assert ch is not None
        return ch.recv(timeout)


def _worker_main(wid: int, path: str, argv: list[str] | None, env: dict[str, str]) -> None:
    """In a forked worker: become one, then run the program's __main__ from the top."""
    if argv is not None:
        sys.argv[:] = argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    # The primary's handlers (stop, reload, scale) came along with the fork: a worker
    # takes these signals the default way (SIGTERM ends it).
    for sig in _PRIMARY_SIGNALS:
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    os.environ.update(env)
    os.environ["PYFORKD_WORKER_ID"] = str(wid)
    _role["worker"] = _Self(wid)
    ch = _worker.parent()
    assert ch is not None
    ch.send_control(("cluster", "online"))
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None or code == 0:
            return
        if isinstance(code, int):
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(code)
        raise


def listen(address: Any) -> Listener:
    """In a worker: a :class:`Listener` for TCP ``address`` (``(host, port)``).

    Every worker that listens there shares it.  ``OSError`` names the address when the
    primary cannot bind it (e.g. ``EADDRINUSE``).
    """
    if _role["worker"] is None:
        raise RuntimeError("listen() is for workers: the primary listens for them")
    ch = _worker.parent()
    assert ch is not None
    ch.send_control(("cluster", "listen", address))
    reply, handle = ch.recv_control(with_handle=True)
    if reply[1] == "stopping":  # the cluster stops (or replaced us) before we served
        raise SystemExit(0)
    if reply[1] == "listen-error":
        _, _, err, text, key = reply
        raise OSError(err, f"{text}: cannot listen on {key[0]}:{key[1]}")
    if reply[3] == "shared":
        return _SharedListener(handle, ch)
    if reply[3] == "reuseport":  # a socket of its own on the same port (the kernel balances)
        return _SharedListener(socket.create_server(tuple(address), reuse_port=True), ch)
    return Listener(handle)


class _SharedListener(Listener):
    """A worker's Listener under ``"shared"``: it accepts on the listening socket itself.

    It stops (``ChannelClosedError``) when the primary disconnects it.
    """

    def __init__(self, sock: socket.socket, channel: Any) -> None:
        self.socket = sock
        self._lock = threading.Lock()
        self._channel = channel
        sock.setblocking(False)  # another worker may take a connection first

    def accept(self, timeout: float | None = None) -> tuple[socket.socket, Any]:
        """The next connection, as ``socket.accept()``; see :meth:`Listener.accept`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock, selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ, "listen")
            sel.register(self._channel.fileno(), selectors.EVENT_READ, "primary")
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                events = sel.select(left)
                if not events and deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError("no connection came in time")
                for key, _ in events:
                    if key.data == "primary":
                        self._from_primary()
                        continue
                    try:
                        conn, address = self.socket.accept()
                    except BlockingIOError:
                        continue  # another worker took it
                    conn.setblocking(True)
                    return conn, address

    def _from_primary(self) -> None:
        """Read the primary's control messages: a disconnect ends accepting."""
        while True:
            try:
                msg = self._channel.recv_control(0)
            except TimeoutError:
                return
            except ChannelClosedError:
                raise ChannelClosedError("the primary is gone") from None
            if msg == ("cluster", "disconnect"):
                self.socket.close()
                raise ChannelClosedError("the primary stopped this worker's listening")


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


os.register_at_fork(after_in_child=_after_fork_in_child)


async def start_server(
    client_connected_cb: Callable[[Any, Any], Any], address: Any, **options: Any
) -> AsyncServer:
    """In a worker, under asyncio: serve ``address`` like ``asyncio.start_server``.

    Each connection the primary gives this worker becomes an ``(asyncio.StreamReader,
    asyncio.StreamWriter)`` pair passed to ``client_connected_cb`` (a coroutine function
    or a plain one); ``options`` go to ``asyncio.open_connection`` (e.g. ``limit``).
    """
    listener = listen(address)
    loop = asyncio.get_running_loop()
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

    server._fds.append(listener.fileno())
    if isinstance(listener, _SharedListener):  # the primary's disconnect comes this way
        server._fds.append(listener._channel.fileno())
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


def shutdown(graceful_timeout: float = 10.0) -> None:
    """Stop the default cluster (see :meth:`Cluster.shutdown`)."""
    _default.shutdown(graceful_timeout)
