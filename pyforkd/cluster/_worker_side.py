"""In a worker: ``cluster.worker``, ``listen()``, and what the primary says to it."""

from __future__ import annotations

import atexit
import collections
import email.utils
import logging
import os
import runpy
import select
import selectors
import signal as _signal
import socket
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

try:
    import psutil  # type: ignore[import-untyped]  # optional: where there is no /proc
except ImportError:
    psutil = None

from .. import _bindings as _b
from .. import channel as _channel
from .. import worker as _worker
from ..errors import ChannelClosedError, FrameError
from . import _address, _board
from . import _protocol as P
from ._handoff import Kind, Listener, connection, nodelay
from ._settings import POLL_SECONDS, PRIMARY_SIGNALS

_log = logging.getLogger("pyforkd.cluster")

# ---- in a worker ------------------------------------------------------------------------

_role: dict[str, Any] = {"worker": None}  # cluster.worker, in a worker
STOP = P.encode(P.Stop())  # (compared as it comes: the events thread and listeners)


def current() -> _Self | None:
    """``cluster.worker`` in a worker; None in a primary."""
    return _role["worker"]


SELF_EVENTS = ("message", "disconnect", "error", "stopping")  # cluster.worker.on()


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
        self._replace_asked = False
        self.process = _ThisProcess(self)
        self._listeners: weakref.WeakSet[Listener] = weakref.WeakSet()
        self._inbox: _Inbox | None = None  # started by the first on()
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()

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
        exception is printed), ``"stopping"`` (the primary stops this worker: a stop, a
        reload, a scale-down or a recycle; finish what is in flight and exit; see
        :attr:`stopping`).  Handlers run in a thread of pyforkd's, started by the
        first ``on()``; messages go to the ``"message"`` handlers from then on (those
        that came before wait for :meth:`recv`).  A ``"disconnect"`` handler added after
        the channel closed is called at once.  Returns ``cluster.worker``.
        """
        if event not in SELF_EVENTS:
            raise ValueError(f"unknown event {event!r}; events are {', '.join(SELF_EVENTS)}")
        if not callable(fn):
            raise TypeError("on() needs a callable")
        with self._start_lock:
            if self._inbox is None:
                self._start_events((event, fn))
                return self
        self._inbox.add(event, fn)
        return self

    @property
    def stopping(self) -> threading.Event:
        """Set when the primary stops this worker (the ``"stopping"`` event).

        A server that pyforkd did not write looks at it, or waits on it, to stop
        accepting, finish what it has and exit.  The first use starts the events thread.
        """
        with self._start_lock:
            if self._inbox is None:
                self._start_events(None)
        return self._stopping

    def _start_events(self, first: tuple[str, Callable[..., Any]] | None) -> None:
        """Start the events thread, ``first`` handler in (so it misses nothing); locked."""
        inbox = _Inbox(_primary(), self._stopping)
        if first is not None:
            inbox.handlers[first[0]].append(first[1])
        self._inbox = inbox
        for listener in list(self._listeners):
            if isinstance(listener, _SharedListener):
                listener._watch_primary(inbox.signal.fileno())
        inbox.start()
        try:  # so that a stop waits for this worker instead of sending it SIGTERM
            _primary().send_control(P.encode(P.HearsStop()))
        except ChannelClosedError:
            pass  # (the primary is gone: "disconnect" says so)

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
        _primary().send_control(P.encode(P.Ready()))

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
                ch.send_control(P.encode(P.Leaving()))
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

    def replace_me(self, why: str) -> None:
        """Ask the primary for a replacement: it forks one, then stops this worker.

        Asked once: later calls (another request timed out meanwhile) do nothing.
        """
        if self._replace_asked:
            return
        self._replace_asked = True
        try:
            _primary().send_control(P.encode(P.ReplaceMe(why)))
        except ChannelClosedError:
            pass  # (the primary is gone: this worker ends with it)

    def stop_heard(self) -> None:
        """The primary's stop was read here, not by the events thread: it is set."""
        self._stopping.set()

    def ending(self) -> None:
        """The program ends: the close of its channel is no ``"disconnect"`` to tell."""
        inbox = self._inbox
        if inbox is not None:
            inbox.ending = True


def timed_out(sock: socket.socket | None, answer: bool, line: str, timeout: float) -> None:
    """A request ran over the cluster's ``timeout``: end it and have this worker replaced.

    ``answer``: nothing of the response went out yet, so the client gets a 503.  The
    connection is shut down (what the app writes later goes nowhere); the log names
    ``line``, the request line.
    """
    if sock is not None:
        if answer:
            body = b"the request ran over the server's timeout\n"
            date = email.utils.formatdate(usegmt=True)
            head = (
                f"HTTP/1.1 503 Service Unavailable\r\nDate: {date}\r\n"
                f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            try:
                sock.send(head.encode() + body)
            except OSError:
                pass  # (the client is gone, or its window full: it sees the end)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # (the client closed it first: it is ended either way)
    _log.error(
        'a request ran over the timeout (%g s): "%s"; this worker is replaced', timeout, line
    )
    me = current()
    if me is not None:
        me.replace_me(f'a request ran over the timeout ({timeout:g} s): "{line}"')


class _Inbox:
    """The worker's end of the channel, read by a thread of its own (``cluster.worker.on``).

    That thread is then its only reader: user messages go to the ``"message"`` handlers
    (or wait for ``recv()`` while there is none); the primary's control messages wait for
    this module (``take_control``), and ``signal`` is readable while one waits, so that a
    listener's selector hears a stop.  Nothing runs before a program asks for events, so
    a worker that forks has a single thread.
    """

    def __init__(self, ch: _channel.Channel, stopping: threading.Event) -> None:
        self._ch = ch
        self._stopping = stopping
        self.handlers: dict[str, list[Callable[..., Any]]] = collections.defaultdict(list)
        self._cond = threading.Condition()
        self._messages: collections.deque[tuple[Any, Any]] = collections.deque()
        self._controls: collections.deque[tuple[Any, Any]] = collections.deque()
        self._closed = False
        self._said_disconnect = False  # "disconnect" was emitted
        self.ending = False
        self.signal, self._signal_w = socket.socketpair()
        self.signal.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="pyforkd worker events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, event: str, fn: Callable[..., Any]) -> None:
        with self._cond:
            self.handlers[event].append(fn)
            late = (event == "disconnect" and self._said_disconnect) or (
                event == "stopping" and self._stopping.is_set()
            )
        if late:  # (one added after the fact hears of it at once, as a Future's would)
            self._call(fn)

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
                if control:
                    with self._cond:
                        if not self._controls:
                            self._signal_w.send(b"!")  # (read back when the last is taken)
                        self._controls.append((message, handle))
                        self._cond.notify_all()
                    if message == STOP and not self._stopping.is_set():
                        self._stopping.set()
                        self._emit("stopping")
                    continue
                with self._cond:
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
                self._said_disconnect = not self.ending
                handlers = list(self.handlers["disconnect"]) if self._said_disconnect else []
            for fn in handlers:
                self._call(fn)

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


@_worker.runs_its_own_main  # (it runs the script as __main__ itself)
def worker_main(
    wid: int, path: str, argv: list[str] | None, env: dict[str, str], cwd: str | None = None
) -> None:
    """In a worker: become one, then run the program's __main__ from the top."""
    # The primary's handlers (stop, reload, scale) came along with a fork: a worker takes
    # these signals the default way (SIGTERM ends it).
    for sig in PRIMARY_SIGNALS:
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    ch = _worker.parent()
    assert ch is not None
    raw, board = ch.recv_control(with_handle=True)
    hello = P.from_primary(raw)
    assert isinstance(hello, P.Hello)
    timeout, targets = hello.timeout, hello.targets
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
    ch.send_control(P.encode(P.Online()))
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


def listen(address: Any, type: int = socket.SOCK_STREAM) -> Any:
    """In a worker: a :class:`Listener` for ``address``.

    ``(host, port)`` for TCP (IPv6 when the host has a colon: ``("::1", 8000)``), or a
    path (``str``) for a UNIX socket; the primary binds it, and every worker that listens
    there shares it.  ``OSError`` names the address when the primary cannot bind it (e.g.
    ``EADDRINUSE``).  With ``type=socket.SOCK_DGRAM``: the datagram socket the primary
    bound, shared by every worker (``recvfrom``/``sendto``; each datagram goes to one of
    them), whatever the cluster's policy.
    """
    if _role["worker"] is None:
        raise RuntimeError("listen() is for workers: the primary listens for them")
    address = _address.check(address)
    if type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise ValueError("listen() takes type=socket.SOCK_STREAM (TCP) or SOCK_DGRAM (UDP)")
    kind = "udp" if type == socket.SOCK_DGRAM else "tcp"
    me = _role["worker"]
    ch = _primary()
    ch.send_control(P.encode(P.Listen(address, kind)))
    raw, handle = me.take_control()
    while raw == STOP:  # told to stop before the answer: Stopping follows
        me.stop_heard()
        raw, handle = me.take_control()
    reply = P.from_primary(raw)
    if isinstance(reply, P.Stopping):  # the cluster stops (or replaced us) before we served
        raise SystemExit(0)
    if isinstance(reply, P.ListenError):
        what = _address.describe(reply.address) + (" (UDP)" if kind == "udp" else "")
        raise OSError(reply.errno, f"{reply.text}: cannot listen on {what}")
    if not isinstance(reply, P.Listening):
        raise P.Malformed(f"the primary answered a listen request with {raw!r}")
    if kind == "udp":
        return handle
    listener: Listener
    if reply.policy == "shared":
        listener = _SharedListener(handle, me)
    elif reply.policy == "reuseport":  # a socket of its own on the same port (the kernel balances)
        fam = _address.family(address)
        sock = nodelay(socket.create_server(address, family=fam, reuse_port=True))
        listener = _SharedListener(sock, me)
    else:
        listener = Listener(handle)
        listener.address = reply.address if isinstance(reply.address, str) else tuple(reply.address)
        listener.slot = me.slot
    me._listeners.add(listener)
    return listener


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
        self.slot = me.slot
        self._kind: Kind | None = None
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
        elif sys.platform != "win32":  # (kqueue: macOS, the BSDs)
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
                    left = POLL_SECONDS if left is None else min(left, POLL_SECONDS)
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

    def accept_many(self, limit: int = 64) -> list[tuple[socket.socket, Any]]:
        """Up to ``limit`` connections that wait now, without waiting (``[]``: none).

        :class:`ChannelClosedError` once the primary said stop (after those taken before).
        """
        got: list[tuple[socket.socket, Any]] = []
        while len(got) < limit:
            try:
                got.append(self.accept(timeout=0))
            except TimeoutError:
                break
            except ChannelClosedError:
                if not got:
                    raise
                break
        return got

    def _take(self) -> tuple[socket.socket, Any]:
        fd, address = self._sock._accept()  # type: ignore[attr-defined, unused-ignore]
        try:
            conn, self._kind = connection(fd, self._kind, self.slot)
        except OSError:
            os.close(fd)
            raise
        if socket.getdefaulttimeout() is None:
            conn.setblocking(True)
        return conn, address

    def listening_socket(self) -> socket.socket:
        """The listening socket, for a server that accepts by itself.

        It stops the worker's share of the port only when that server closes it: hear the
        stop with ``cluster.on("stopping", fn)``.
        """
        return self._sock

    @property
    def covers_primary(self) -> bool:
        """Whether :meth:`fileno` is readable when the primary says stop (not on Windows)."""
        return self._either is not None

    def primary_said_stop(self) -> bool:
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
            if msg == STOP:
                self._me.stop_heard()
                self.close()
                raise ChannelClosedError("the primary stopped this worker's listening")
