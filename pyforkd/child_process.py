"""Node.js's ``child_process`` for Python: spawn, spawn_sync, exec, exec_file and friends.

The C core starts the child (``posix_spawn`` or vfork, constant cost whatever the parent's
size), waits for it on a pidfd with the GIL released, and collects output in one poll loop.
This module validates every option before any process exists and gives the result the
shape Python users know from ``subprocess``: :class:`ChildProcess` (``wait``, ``poll``,
``kill``, context manager) and :class:`CompletedProcess`.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import inspect
import io
import math
import os
import signal as _signal
import socket
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from . import _bindings as _b
from ._checks import check_encoding as _check_encoding
from ._checks import check_timeout as _check_timeout
from ._options import (
    DEFAULT_MAX_BUFFER,
    IPC_PIPE,
    KILL_GRACE,
    SIGKILL,
    CompletedProcess,
    SignalLike,
    Stdio,
    StrOrBytesPath,
    as_text,
    async_pipes,
    check_args,
    check_id,
    check_input,
    check_max_buffer,
    cmd_text,
    completed,
    encode_env,
    fsencode,
    raise_for,
    shell_command,
    signal_name,
    signal_number,
    stdio_slots,
)
from .channel import Channel, offer_rings
from .channel import forget as forget_channel
from .errors import SpawnError, TimeoutExpired
from .ring import Ring

__all__ = [
    "ChildProcess",
    "CompletedProcess",
    "exec",
    "exec_file",
    "exec_file_sync",
    "exec_sync",
    "fork",
    "spawn",
    "spawn_sync",
]
# Command, IpcPlan, launch and release_in_fork_child are pyforkd's own, shared with
# worker.py (fork_worker starts its processes through them): not in __all__, not documented.


class Command:
    """A checked, encoded command line and environment, ready for ``_bindings.spawn``."""

    __slots__ = (
        "argv",
        "cwd",
        "cwd_text",
        "envp",
        "file",
        "flags",
        "gid",
        "name",
        "spawnargs",
        "uid",
        "verb",
    )

    def __init__(
        self,
        command: StrOrBytesPath,
        args: Any,
        *,
        cwd: StrOrBytesPath | None,
        env: Mapping[Any, Any] | None,
        argv0: StrOrBytesPath | None,
        shell: bool | StrOrBytesPath,
        detached: bool,
        uid: int | None,
        gid: int | None,
        windows_hide: bool = False,
        verb: str = "spawn",
    ) -> None:
        arglist = check_args(args)
        self.verb = verb  # Node's syscall word: "spawn", or "spawnSync" for the sync forms
        file = fsencode(command, "command")
        if not file:
            raise ValueError("command must not be empty")
        argv = [file]
        argv += [fsencode(a, n) for n, a in enumerate(arglist)]
        flags = 0
        if shell:
            file, argv, flags = shell_command(shell, b" ".join(argv))
            self.spawnargs = [os.fsdecode(a) for a in argv]
        elif type(command) is str and all(type(a) is str for a in arglist):
            self.spawnargs = [command, *arglist]  # as given: no decoding round trip
        else:
            self.spawnargs = [os.fsdecode(a) for a in argv]
        if argv0 is not None:
            argv[0] = fsencode(argv0, "argv0")
        self.file = file
        self.name = self.spawnargs[0]
        self.argv = argv
        self.envp = None if env is None else encode_env(env)
        if cwd is not None and not isinstance(cwd, (bool, int)) and not os.fspath(cwd):
            cwd = None  # "" is no directory: as Node, it means "this process's"
        self.cwd = None if cwd is None else fsencode(cwd, "cwd")
        self.cwd_text = None if cwd is None else as_text(cwd)
        flags |= _b.SPAWN_SETSID if detached else 0
        flags |= _b.SPAWN_HIDE if windows_hide else 0
        flags |= _b.SPAWN_ASYNC_PIPES if async_pipes.get() else 0
        self.uid = self.gid = -1
        if _b.WINDOWS and (uid is not None or gid is not None):
            raise SpawnError(
                errno.ENOTSUP,
                f"{verb} {self.name}: uid and gid are not supported on Windows (it has no "
                "user or group ids to switch to)",
                self.name,
                syscall=f"{verb} {self.name}",
                spawnargs=self.spawnargs[1:],
            )
        if uid is not None:
            self.uid = check_id(uid, "uid")
            flags |= _b.SPAWN_SETUID
        if gid is not None:
            self.gid = check_id(gid, "gid")
            flags |= _b.SPAWN_SETGID
        self.flags = flags

    def start(
        self, slots: Sequence[tuple[int, int]], extra_flags: int = 0, pdeathsig: int = 0
    ) -> tuple[int, list[int]]:
        _reap_abandoned()
        return _b.spawn(
            self.file,
            self.argv,
            self.envp,
            self.cwd,
            slots,
            self.flags | extra_flags,
            self.uid,
            self.gid,
            pdeathsig,
            name=self.name,
            verb=self.verb,
            spawnargs=self.spawnargs[1:],  # (a SpawnError's, as Node's: the arguments only)
            cwd_text=self.cwd_text,
        )


# ---- children that were dropped while running are reaped later -------------------------

_abandoned: list[int] = []
_abandoned_lock = threading.Lock()


def _reap_abandoned() -> None:
    if not _abandoned:
        return
    with _abandoned_lock:
        for pid in list(_abandoned):
            try:
                done = _b.process_reap(pid) is not None
            except ChildProcessError:
                done = True
            if done:
                _abandoned.remove(pid)


# ---- the timeout watchdog of spawn(timeout=...) -----------------------------------------


class _ForkGuard:
    """Keeps a fork of this interpreter from copying descriptors meant for another child.

    A spawn holds the child's ends of its pipes and channel in this process until the
    child has them; a ``fork_worker`` fork in another thread meanwhile would give its
    worker a copy, and the first child's death (or EOF) would never be seen.  Spawns run
    side by side inside :meth:`opening`; a fork waits for them in :meth:`forking` (and
    spawns wait for the fork).  A plain ``os.fork()`` from another thread is not covered,
    as with ``subprocess``.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:  # (also in a forked child: the other threads are gone)
        self._cond = threading.Condition(threading.Lock())
        self._open = 0
        self._forking = False

    def enter(self) -> None:
        """Before making descriptors for a child (:meth:`leave` once it has them)."""
        with self._cond:
            while self._forking:
                self._cond.wait()
            self._open += 1

    def leave(self) -> None:
        with self._cond:
            self._open -= 1
            if not self._open:
                self._cond.notify_all()

    @contextlib.contextmanager
    def opening(self) -> Iterator[None]:
        """Around making descriptors for a child and handing them over."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @contextlib.contextmanager
    def forking(self) -> Iterator[None]:
        """Around making a forked child's descriptors, the fork and closing them here."""
        with self._cond:
            while self._forking or self._open:
                self._cond.wait()
            self._forking = True
        try:
            yield
        finally:
            with self._cond:
                self._forking = False
                self._cond.notify_all()


fork_guard = _ForkGuard()
if hasattr(os, "register_at_fork"):  # (Windows has no fork)
    os.register_at_fork(after_in_child=fork_guard._reset)


class _Watchdog:
    """One daemon thread that kills children whose spawn ``timeout`` has passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # Strong references, on purpose: a child whose ChildProcess was dropped must still be
        # killed at its deadline (fire-and-forget with a safety timeout, as in Node).  Each
        # entry holds its child in a one-item list that the child empties when it is reaped
        # (ChildProcess._reap_locked): an ended child is not kept until its deadline.
        self._heap: list[tuple[float, int, list[ChildProcess | None]]] = []
        self._thread: threading.Thread | None = None
        self._seq = 0

    def add(self, child: ChildProcess, timeout: float) -> None:
        with self._cond:
            self._seq += 1
            holder: list[ChildProcess | None] = [child]
            child._deadline_holder = holder
            heapq.heappush(self._heap, (time.monotonic() + timeout, self._seq, holder))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="pyforkd-timeouts", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def released(self) -> None:
        """A watched child ended: the thread may have nothing left to watch."""
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        # The thread ends as soon as no running child is left to watch: a process forks
        # its workers with no thread of pyforkd's alive (CPython 3.12+ warns otherwise).
        while True:
            with self._cond:
                heap = self._heap
                if any(entry[2][0] is None for entry in heap):
                    heap[:] = [entry for entry in heap if entry[2][0] is not None]
                    heapq.heapify(heap)
                if not heap:
                    self._thread = None
                    return
                deadline, _, holder = heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                child = holder[0]
            if child is not None:
                child._time_out()


_watchdog = _Watchdog()


# ---- ChildProcess ---------------------------------------------------------------------------


_children: weakref.WeakSet[ChildProcess] = weakref.WeakSet()  # for live_pids()


def release_in_fork_child() -> None:
    """In a worker that fork_worker forked: let go of this process's other children.

    The fork copied the parent's ends of their pipes and channels; a worker holding them
    would keep a child from ever seeing EOF on its stdin, or its channel's end, for as long
    as the worker lives (a spawned worker, like a Node one, never has them).  Each pipe
    descriptor is pointed at /dev/null in place (dup2), so that the objects wrapping it in
    this copy of the program stay valid and, when they close or flush, touch nothing of the
    parent's; each channel is forgotten the way a forked channel is.
    """
    if sys.platform == "win32":
        return  # (no fork there)
    try:
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return  # nothing to point them at: they stay (as they were before this existed)
    try:
        for child in list(_children):
            child._release_pipes(devnull)
    finally:
        os.close(devnull)


def live_pids() -> set[int]:
    """Pids of this process's pyforkd children not reaped yet (a PID 1 leaves them be)."""
    return {c.pid for c in list(_children) if c.returncode is None}


class ChildProcess:
    """A child process started by :func:`spawn`: its pid, its pipes, and its fate.

    ``stdin``, ``stdout`` and ``stderr`` are binary files (text when ``encoding`` was
    given), or None when that slot is not a pipe; ``stdio`` lists every slot, with a
    ``socket.socket`` for pipes at slots 3 and up.  The child is reaped by :meth:`wait`,
    :meth:`poll`, the ``with`` block's end, or garbage collection once it has exited, so
    no zombie outlives the object.
    """

    def __init__(
        self,
        pid: int,
        args: list[str],
        fds: Sequence[int],
        *,
        encoding: str | None = None,
        errors: str = "strict",
        kill_signal: int = _signal.SIGTERM,
    ) -> None:
        self.pid: int = pid
        _children.add(self)
        self.args: list[str] = args
        self.spawnargs: list[str] = args
        self.returncode: int | None = None
        self.exit_code: int | None = None
        self.signal_code: str | None = None
        self.killed: bool = False
        self._kill_signal = kill_signal
        self._encoding = None if encoding == "buffer" else encoding
        self._errors = errors
        self._fds = list(fds)
        self._files: list[Any] = [None] * len(self._fds)
        self._lock = threading.Lock()
        self._handle = -2  # -2: not opened yet; -1: the system has none or it was closed
        self._handle_users = 0  # waiters polling the handle now; it is closed only at 0
        self._exit_event: threading.Event | None = None
        self._deadline_holder: list[ChildProcess | None] | None = None  # (the watchdog's)
        self.channel: Channel | None = None  # set by fork() and by spawn() with "ipc"

    # -- the pipes, made into file objects only when asked for --

    def _file(self, i: int) -> Any:
        f = self._files[i] if i < len(self._files) else None
        if f is not None or i >= len(self._fds) or self._fds[i] < 0:
            return f
        with self._lock:  # two threads must not wrap one descriptor twice
            if self._fds[i] < 0:
                return self._files[i]
            fd, self._fds[i] = self._fds[i], -1
        if i > 2 and _b.WINDOWS:
            # A duplex pipe (Windows has no socketpair to give a child): read and write.
            f = open(_b.adopt(fd, True), "r+b", buffering=0)  # noqa: SIM115
        elif i > 2:
            f = socket.socket(fileno=fd)
        elif i == 0:
            f = open(_b.adopt(fd, True), "wb")  # noqa: SIM115 - the child process owns it
            if self._encoding:
                f = io.TextIOWrapper(f, self._encoding, self._errors, write_through=True)
        else:
            f = open(_b.adopt(fd, False), "rb")  # noqa: SIM115
            if self._encoding:
                f = io.TextIOWrapper(f, self._encoding, self._errors)
        self._files[i] = f
        return f

    @property
    def stdin(self) -> Any:
        """The child's stdin as a writable file, or None when it is not a pipe."""
        return self._file(0)

    @property
    def stdout(self) -> Any:
        """The child's stdout as a readable file, or None when it is not a pipe."""
        return self._file(1)

    @property
    def stderr(self) -> Any:
        """The child's stderr as a readable file, or None when it is not a pipe."""
        return self._file(2)

    @property
    def stdio(self) -> list[Any]:
        """Every slot: a file (0-2) or socket (3 and up) for pipes, None for the rest.

        (On Windows a pipe above slot 2 is a duplex pipe: an unbuffered binary file, open
        for reading and writing.)
        """
        return [self._file(i) for i in range(len(self._fds))]

    def _release_pipes(self, devnull: int) -> None:
        """Point this child's pipes at ``devnull``: see release_in_fork_child.

        Only ever in a forked worker: the lock is not taken, since a thread of the parent
        may have held it at the fork.
        """
        fds = [fd for fd in self._fds if fd >= 0]
        for f in self._files:
            if f is not None:
                try:
                    fds.append(f.fileno())
                except (OSError, ValueError):
                    pass  # closed already: nothing of the parent's is held
        for fd in fds:
            try:
                os.dup2(devnull, fd, inheritable=False)
            except OSError:
                pass  # not open in this process (closed by the parent's other threads)
        if self.channel is not None:
            forget_channel(self.channel)

    def _take_fds(self) -> list[int]:
        """Hand the raw pipe descriptors to another owner (the exec family, asyncio)."""
        fds, self._fds = self._fds, [-1] * len(self._fds)
        return fds

    # -- exit status --

    def _reap_locked(self) -> bool:
        if self.returncode is not None:
            return True
        try:
            status = _b.process_reap(self.pid)
        except ChildProcessError as exc:
            raise ChildProcessError(
                exc.errno,
                f"waitpid: child {self.pid} was reaped by someone else (a SIGCHLD handler or "
                "a waitpid(-1) loop in this process); its exit status is lost",
            ) from None
        if status is None:
            return False
        code, sig = status
        if sig:
            self.exit_code, self.signal_code, self.returncode = None, signal_name(sig), -sig
        else:
            self.exit_code, self.returncode = code, code
        self._release_handle_locked()
        if self._deadline_holder is not None:
            self._deadline_holder[0] = None  # the watchdog lets go of an ended child
            self._deadline_holder = None
            _watchdog.released()
        return True

    def _release_handle_locked(self) -> None:
        if self._handle_users == 0 and self.returncode is not None:
            if self._handle >= 0:
                _b.close_native(self._handle)
            self._handle = -1

    def poll(self) -> int | None:
        """The return code if the child has exited (reaping it), else None."""
        if self.returncode is None:
            with self._lock:
                self._reap_locked()
        return self.returncode

    def _acquire_handle(self) -> int:
        """The pidfd, kept open until the matching _release_handle; -1 if there is none."""
        with self._lock:
            # Opened on first use only: a zombie keeps its pid, so opening late is race-free.
            if self._handle == -2:
                self._handle = _b.process_open(self.pid) if self.returncode is None else -1
            if self._handle >= 0:
                self._handle_users += 1
            return self._handle

    def _release_handle(self, handle: int) -> None:
        if handle < 0:
            return
        with self._lock:
            self._handle_users -= 1
            self._release_handle_locked()

    def _acquire_exit_handle(self) -> int:
        """A descriptor that becomes readable when the child has exited, or -1 (asyncio)."""
        return self._acquire_handle()

    def _release_exit_handle(self, handle: int) -> None:
        self._release_handle(handle)

    def _block_until_exit(self) -> None:
        """Block (GIL released) until the child has exited; it may stay unreaped."""
        while self.returncode is None:
            try:
                if _b.process_wait(self.pid, -1, -1):
                    return
                # None: a signal came and its Python handler ran; wait on.
            except ChildProcessError:
                with self._lock:  # another thread's wait reaped it first
                    if self.returncode is not None:
                        return
                    self._reap_locked()  # raises the "reaped by someone else" error
                raise

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit and return its ``returncode``.

        ``returncode`` is the exit status, or ``-N`` when signal N ended the child.  With a
        ``timeout`` (seconds) raise :class:`pyforkd.TimeoutExpired` when it runs out; the
        child keeps running.  Waiting releases the GIL and never polls on a timer.
        """
        timeout = _check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            # Again after a spurious wake-up (another thread's wait saw the exit first).
            if deadline is None:
                self._block_until_exit()
            else:
                assert timeout is not None
                self._wait_until(deadline, timeout)
            with self._lock:
                self._reap_locked()
        return self.returncode

    def _wait_until(self, deadline: float, timeout: float) -> None:
        if self._exit_event is None:
            handle = self._acquire_handle()
            try:
                if self.returncode is not None:
                    return
                self._wait_timed(handle, deadline, timeout)
                return
            except OSError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
            finally:
                self._release_handle(handle)
            # No pidfd (Linux before 5.3): one thread does the blocking wait.
            with self._lock:
                if self._exit_event is None:
                    self._exit_event = threading.Event()
                    threading.Thread(
                        target=self._wait_thread, daemon=True, name=f"pyforkd-wait-{self.pid}"
                    ).start()
        if not self._exit_event.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutExpired(self.args, timeout)

    def _wait_timed(self, handle: int, deadline: float, timeout: float) -> None:
        while self.returncode is None:
            left = deadline - time.monotonic()
            done = _b.process_wait(self.pid, handle, max(0, math.ceil(left * 1000)))
            if done:
                return
            if done is False and time.monotonic() >= deadline:
                raise TimeoutExpired(self.args, timeout)

    def _wait_thread(self) -> None:
        self._block_until_exit()
        assert self._exit_event is not None
        self._exit_event.set()

    def kill(self, sig: SignalLike = _signal.SIGTERM) -> bool:
        """Send ``sig`` (number or name, default SIGTERM); False if the child already exited.

        Never signals a stranger: the pid is reaped only under the same lock, so it cannot
        have been recycled.
        """
        signum = signal_number(sig, "kill signal", allow_zero=True)
        with self._lock:
            if self._reap_locked():
                return False
            handle = self._handle if self._handle >= 0 else -1
            sent = _b.process_kill(self.pid, handle, signum)
        if sent and signum != 0:
            self.killed = True
        return sent

    def _time_out(self) -> None:
        self.kill(self._kill_signal)

    # -- the IPC channel (fork, or spawn with "ipc" in stdio) --

    def _channel(self) -> Channel:
        if self.channel is None:
            raise ValueError(
                "this child has no IPC channel: start it with pyforkd.fork() or with 'ipc' in stdio"
            )
        return self.channel

    def send(
        self,
        message: Any,
        handle: Any = None,
        *,
        keep_open: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Send a message (and handles) to the child: see :meth:`Channel.send`."""
        channel = self.channel or self._channel()  # (the first: no call on the hot path)
        channel.send(message, handle, keep_open=keep_open, timeout=timeout)

    def recv(self, timeout: float | None = None, *, with_handle: bool = False) -> Any:
        """Receive a message from the child: see :meth:`Channel.recv`."""
        channel = self.channel or self._channel()
        return channel.recv(timeout, with_handle=with_handle)

    def __iter__(self) -> Iterator[Any]:
        """The child's messages until it closes its end of the channel."""
        return iter(self._channel())

    def disconnect(self) -> None:
        """Close the channel (the child sees it end); the child itself is not signalled."""
        self._channel().close()

    @property
    def connected(self) -> bool:
        """True while the IPC channel is open on both sides."""
        return self.channel is not None and self.channel.connected

    # -- closing --

    def _close_pipes(self) -> None:
        # Readers first, so that a child blocked writing to a full pipe gets EPIPE instead of
        # deadlocking a wait that follows; stdin (flushed) after, so that the child sees EOF.
        order = [i for i in range(len(self._files)) if i != 0] + [0] if self._files else []
        for i in order:
            f = self._files[i]
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass  # a child that stopped reading: what was buffered is dropped
                self._files[i] = None
        for i, fd in enumerate(self._fds):
            if fd >= 0:
                _b.close_native(fd)
                self._fds[i] = -1

    def close(self) -> None:
        """Close every pipe and the channel to the child (it does not wait; see :meth:`wait`)."""
        self._close_pipes()
        if self.channel is not None:
            self.channel.close()

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.wait()

    def __del__(self) -> None:
        fds = getattr(self, "_fds", ())
        for fd in fds:
            if fd >= 0:
                try:
                    _b.close_native(fd)
                except OSError:
                    pass
        if getattr(self, "returncode", 0) is not None:
            return
        try:
            if self._reap_locked():
                return
        except (OSError, AttributeError):
            return
        if self._handle >= 0 and self._handle_users == 0:
            try:
                _b.close_native(self._handle)
            except OSError:
                pass
        with _abandoned_lock:
            _abandoned.append(self.pid)
        warnings.warn(
            f"pyforkd: child {self.pid} {self.args!r} is still running; it will be "
            "reaped when it exits",
            ResourceWarning,
            stacklevel=2,
        )

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<ChildProcess pid={self.pid} {state} args={self.args!r}>"


# ---- spawn ---------------------------------------------------------------------------------


def spawn(
    command: StrOrBytesPath,
    args: Iterable[StrOrBytesPath] | None = None,
    *,
    cwd: StrOrBytesPath | None = None,
    env: Mapping[str, str] | None = None,
    argv0: StrOrBytesPath | None = None,
    stdio: Stdio = "pipe",
    detached: bool = False,
    uid: int | None = None,
    gid: int | None = None,
    shell: bool | StrOrBytesPath = False,
    timeout: float | None = None,
    kill_signal: SignalLike = "SIGTERM",
    encoding: str | None = None,
    errors: str = "strict",
    windows_hide: bool = False,
    serialization: str | None = None,
    ring: int | None = None,
) -> ChildProcess:
    """Start ``command`` with ``args`` and return at once with a :class:`ChildProcess`.

    Like Node's ``child_process.spawn``: the program is searched in ``env["PATH"]`` (the
    parent's PATH when ``env`` is None); ``stdio`` is ``"pipe"`` (default), ``"inherit"``,
    ``"ignore"`` or a list with one entry per child descriptor (those words, None, an int
    descriptor, or a file/socket); ``detached`` starts a new session; ``timeout`` (seconds)
    kills the child with ``kill_signal`` when it runs out.  The child gets exactly the
    descriptors named in ``stdio``, an empty signal mask and default signal dispositions.
    ``windows_hide`` is accepted everywhere and only matters on Windows.

    One ``"ipc"`` entry in a ``stdio`` list gives the child an IPC channel at that slot,
    announced the way Node does (``NODE_CHANNEL_FD``); ``serialization`` picks its format:
    ``"json"`` (the default: Node's own JSON lines, for Node children), or ``"pickle"`` /
    ``"raw"`` (pyforkd frames, for children that call :func:`pyforkd.parent`).  With
    ``ring`` (a capacity in bytes: a power of two, at least 4096) such a channel carries
    its messages through a pair of shared-memory rings (see :class:`pyforkd.Ring`).

    Raises :class:`SpawnError` (an ``OSError`` such as ``FileNotFoundError``) when the
    program cannot be started, naming the failing step in ``.syscall``; ``ValueError`` /
    ``TypeError`` for bad options, before any process exists.
    """
    ipc = IpcPlan.from_stdio(stdio, serialization, ring)
    try:
        if ipc is not None:
            stdio, env = ipc.stdio, ipc.environment(env)
        cmd = Command(
            command,
            args,
            cwd=cwd,
            env=env,
            argv0=argv0,
            shell=shell,
            detached=detached,
            uid=uid,
            gid=gid,
            windows_hide=windows_hide,
        )
        timeout = _check_timeout(timeout)
        kill_sig = signal_number(kill_signal, "kill_signal")
        _check_encoding(encoding, errors)
    except BaseException:
        if ipc is not None:
            ipc.abandon()  # nothing started: its sockets and rings go now
        raise
    return launch(cmd, stdio, ipc, kill_sig, timeout, encoding=encoding, errors=errors)


def launch(
    cmd: Command,
    stdio: Stdio,
    ipc: IpcPlan | None,
    kill_signal: int,
    timeout: float | None,
    *,
    encoding: str | None = None,
    errors: str = "strict",
    pdeathsig: int = 0,
    cls: type[ChildProcess] = ChildProcess,
) -> Any:
    """Start a checked command; shared by spawn, fork and fork_worker."""
    try:
        slots = stdio_slots(stdio)
        with fork_guard.opening():  # (its pipes are open here until the child has them)
            pid, fds = cmd.start(slots, _b.SPAWN_PDEATHSIG if pdeathsig else 0, pdeathsig)
    except BaseException:
        if ipc is not None:
            ipc.abandon()
        raise
    channel = ipc.connect(fds) if ipc is not None else None  # (the fork guard is left here)
    child = cls(pid, cmd.spawnargs, fds, encoding=encoding, errors=errors, kill_signal=kill_signal)
    if channel is not None:
        child.channel = channel
    if timeout is not None:
        _watchdog.add(child, timeout)
    return child


class IpcPlan:
    """The channel of a child being started: a socketpair, one end at the "ipc" slot."""

    def __init__(
        self, stdio: list[Any], slot: int, framing: str, serialization: str, ring: int | None
    ) -> None:
        self.framing = framing
        self.serialization = serialization
        self.slot = slot
        # The rings are made before the child starts: failing then leaves nothing behind.
        self.rings = (Ring(ring), Ring(ring)) if ring is not None else None
        stdio = list(stdio)
        self.parent_end: socket.socket | None = None
        self.child_end: socket.socket | None = None
        if _b.WINDOWS:
            # spawn makes the duplex overlapped named pipe; connect() takes our end.
            stdio[slot] = IPC_PIPE
            self.stdio = stdio
            return
        fork_guard.enter()  # until the child has its end (connect or abandon)
        try:
            self.parent_end, self.child_end = socket.socketpair()
        except BaseException:
            fork_guard.leave()
            self._close_rings()
            raise
        stdio[slot] = self.child_end.fileno()
        self.stdio = stdio

    @classmethod
    def from_stdio(
        cls, stdio: Any, serialization: str | None, ring: int | None = None
    ) -> IpcPlan | None:
        plan = cls._from_stdio(stdio, serialization, ring)
        if plan is None and ring is not None:
            raise ValueError("ring is for the IPC channel: add 'ipc' to stdio")
        return plan

    @classmethod
    def _from_stdio(cls, stdio: Any, serialization: str | None, ring: int | None) -> IpcPlan | None:
        if not isinstance(stdio, (list, tuple)):
            if stdio == "ipc":
                raise ValueError(
                    "stdio: 'ipc' goes in a list, e.g. ['pipe', 'pipe', 'pipe', 'ipc']"
                )
            if serialization is not None:
                raise ValueError("serialization is for the IPC channel: add 'ipc' to stdio")
            return None
        slots = [i for i, entry in enumerate(stdio) if isinstance(entry, str) and entry == "ipc"]
        if not slots:
            if serialization is not None:
                raise ValueError("serialization is for the IPC channel: add 'ipc' to stdio")
            return None
        if len(slots) > 1:
            raise ValueError(f"stdio: one 'ipc' at most, found {len(slots)}")
        if slots[0] <= 2:
            raise ValueError(f"stdio[{slots[0]}]: the IPC channel needs a slot of 3 or more")
        ser = "json" if serialization is None else serialization
        if ser not in ("json", "pickle", "raw"):
            raise ValueError(f"serialization must be 'json', 'pickle' or 'raw', not {ser!r}")
        if ring is not None and ser == "json":
            raise ValueError(
                "ring needs pyforkd framing: serialization 'pickle' or 'raw' (Node's JSON "
                "lines have no rings)"
            )
        return cls(list(stdio), slots[0], "node" if ser == "json" else "pyforkd", ser, ring)

    def environment(self, env: Mapping[Any, Any] | None) -> dict[Any, Any]:
        """The child's environment: ``env`` (or ours) with the channel announced in it."""
        out: dict[Any, Any] = dict(os.environ if env is None else env)
        for key in ("NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE", "PYFORKD_CHANNEL"):
            out.pop(key, None)
        out["NODE_CHANNEL_FD"] = str(self.slot)
        out["NODE_CHANNEL_SERIALIZATION_MODE"] = "json"
        if self.framing == "pyforkd":
            rings = ":ring" if self.rings is not None else ""
            out["PYFORKD_CHANNEL"] = f"pyforkd:{self.serialization}{rings}"
        return out

    def connect(self, fds: list[int]) -> Channel:
        """After the spawn: our end becomes the Channel, the child's end is closed here.

        On Windows our end is the pipe spawn made at the slot, taken out of ``fds``.
        """
        if self.parent_end is None:
            handle = fds[self.slot]
            fds[self.slot] = -1
            try:
                channel = Channel(handle, framing=self.framing, serialization=self.serialization)
            except BaseException:
                _b.close_native(handle)  # (the child sees its channel end)
                self._close_rings()
                raise
        else:
            try:
                assert self.child_end is not None
                self.child_end.close()
            finally:
                fork_guard.leave()
            channel = Channel(
                self.parent_end, framing=self.framing, serialization=self.serialization
            )
        if self.rings is not None:
            offer_rings(channel, *self.rings)
        return channel

    def abandon(self) -> None:
        if self.parent_end is not None:
            try:
                assert self.child_end is not None
                self.child_end.close()
            finally:
                fork_guard.leave()
            self.parent_end.close()
        self._close_rings()

    def _close_rings(self) -> None:
        for ring in self.rings or ():
            ring.close()


def _is_node(exec_path: str, module_path: str) -> bool:
    name = os.path.basename(exec_path).lower()
    return name.startswith(("node", "nodejs")) or module_path.endswith((".js", ".mjs", ".cjs"))


def fork(
    module_path: StrOrBytesPath,
    args: Iterable[StrOrBytesPath] = (),
    *,
    exec_path: StrOrBytesPath | None = None,
    exec_argv: Iterable[StrOrBytesPath] = (),
    silent: bool = False,
    stdio: Stdio = None,
    serialization: str | None = None,
    cwd: StrOrBytesPath | None = None,
    env: Mapping[str, str] | None = None,
    detached: bool = False,
    timeout: float | None = None,
    kill_signal: SignalLike = "SIGTERM",
    uid: int | None = None,
    gid: int | None = None,
    ring: int | None = None,
) -> ChildProcess:
    """Start a Python (or Node) script with an IPC channel, as Node's ``child_process.fork``.

    The child runs ``exec_path`` (this interpreter by default, or e.g. ``"node"``) with
    ``exec_argv``, the script and ``args``.  Its stdin/stdout/stderr are ours (``silent``:
    pipes to us; or give ``stdio`` with one ``"ipc"`` entry); the channel sits at slot 3 and
    is announced as Node does, so ``process.send`` works in a Node child and
    :func:`pyforkd.parent` in a Python one.  ``serialization``: ``"pickle"`` (the default
    for Python children), ``"raw"``, or ``"json"`` (Node's own lines; the only choice, and
    the default, for a Node child, recognized by its ``exec_path`` or a ``.js`` script).
    ``ring`` (bytes: a power of two, at least 4096) gives a Python child's channel a pair
    of shared-memory rings: messages, large numpy arrays and bytes above all, then travel
    through shared memory (see :func:`pyforkd.fork_worker`).
    Returns the :class:`ChildProcess`, with ``send``, ``recv``, iteration, ``disconnect``
    and ``connected``.  The child is not killed when the channel closes, as in Node.
    """
    script = as_text(module_path)
    runner = sys.executable if exec_path is None else as_text(exec_path)
    node = _is_node(runner, script)
    if serialization is None:
        serialization = "json" if node else "pickle"
    elif node and serialization != "json":
        raise ValueError(
            f"a Node child speaks JSON lines only, not serialization={serialization!r}"
        )
    if stdio is None:
        stdio = (
            ["pipe", "pipe", "pipe", "ipc"] if silent else ["inherit", "inherit", "inherit", "ipc"]
        )
    elif silent:
        raise ValueError("give either silent or stdio, not both")
    if not (isinstance(stdio, (list, tuple)) and "ipc" in stdio):
        raise ValueError("fork: stdio must be a list with one 'ipc' entry")
    argv = [*check_args(exec_argv), module_path, *check_args(args)]
    return spawn(
        runner,
        argv,
        stdio=stdio,
        serialization=serialization,
        cwd=cwd,
        env=env,
        detached=detached,
        timeout=timeout,
        kill_signal=kill_signal,
        uid=uid,
        gid=gid,
        ring=ring,
    )


# ---- the synchronous family ------------------------------------------------------------------


def _ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


def _run_collect(
    child: ChildProcess, collector: _b.Collector, deadline: float | None, kill_signal: int
) -> str:
    """Drive the collector to the end, killing the child on timeout or overflow.

    Returns why it stopped: ``"done"``, ``"timeout"`` or ``"overflow"``.
    """
    while True:
        left = -1 if deadline is None else _ms(deadline - time.monotonic())
        state = collector.run(left)
        if state == "interrupted":
            continue
        if state == "done":
            return state
        child.kill(kill_signal)
        _wait_or_escalate(child)
        # What the child wrote before dying is still in the pipes: take it, but do not wait
        # for EOF, which a grandchild holding the pipe might never give.
        while collector.run(0) == "interrupted":
            pass
        return state


def _wait_or_escalate(child: ChildProcess) -> None:
    try:
        child.wait(KILL_GRACE)
    except TimeoutExpired:
        warnings.warn(
            f"pyforkd: child {child.pid} {child.args!r} ignored its kill signal for "
            f"{KILL_GRACE:g} s; sending SIGKILL (pass kill_signal='SIGKILL' to skip the wait)",
            RuntimeWarning,
            stacklevel=4,
        )
        child.kill(SIGKILL)
        child.wait()


def _collect(
    command: StrOrBytesPath,
    args: Any,
    *,
    stdio: Stdio,
    input: Any,
    timeout: Any,
    max_buffer: Any,
    kill_signal: SignalLike,
    encoding: str | None,
    errors: str,
    verb: str,
    **spawn_options: Any,
) -> tuple[CompletedProcess, str, int]:
    _check_encoding(encoding, errors)
    cmd = Command(command, args, verb=verb, **spawn_options)
    timeout = _check_timeout(timeout)
    limit = check_max_buffer(max_buffer)
    kill_sig = signal_number(kill_signal, "kill_signal")
    data = check_input(input, encoding)
    slots = list(stdio_slots(stdio))
    if data is not None and slots[0][0] != _b.STDIO_PIPE:
        raise ValueError("input needs stdio[0] to be 'pipe'")
    if data is None and slots[0][0] == _b.STDIO_PIPE:
        slots[0] = (_b.STDIO_IGNORE, -1)  # nothing to write: the child reads /dev/null
    pid, fds = cmd.start(slots)
    child = ChildProcess(pid, cmd.spawnargs, fds, kill_signal=kill_sig)
    extra = child._take_fds()
    collector = _b.Collector(extra[0], data, extra[1], extra[2], limit)
    for fd in extra[3:]:
        if fd >= 0:
            _b.close_native(fd)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        state = _run_collect(child, collector, deadline, kill_sig)
        out, err = collector.output(0), collector.output(1)
        overflow = collector.overflow
    except BaseException:
        # An exception (Ctrl-C) cut the collection short: the child must not outlive it.
        if child.poll() is None:
            child.kill(kill_sig)
            _wait_or_escalate(child)
        raise
    finally:
        collector.close()
    if state == "done":
        # The pipes reached EOF; the child may still be on its way out (or may have closed
        # them early and go on running): wait for it within what is left of the timeout.
        try:
            child.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except TimeoutExpired:
            state = "timeout"
            child.kill(kill_sig)
            _wait_or_escalate(child)
    child.wait()
    result = completed(cmd.spawnargs, child, out, err, state, overflow, limit, encoding, errors)
    return result, state, overflow


def spawn_sync(
    command: StrOrBytesPath,
    args: Iterable[StrOrBytesPath] | None = None,
    *,
    input: Any = None,
    cwd: StrOrBytesPath | None = None,
    env: Mapping[str, str] | None = None,
    argv0: StrOrBytesPath | None = None,
    stdio: Stdio = "pipe",
    detached: bool = False,
    uid: int | None = None,
    gid: int | None = None,
    shell: bool | StrOrBytesPath = False,
    timeout: float | None = None,
    kill_signal: SignalLike = "SIGTERM",
    max_buffer: int | None = DEFAULT_MAX_BUFFER,
    encoding: str | None = None,
    errors: str = "strict",
    windows_hide: bool = False,
) -> CompletedProcess:
    """Run ``command`` to completion and return a :class:`CompletedProcess` (Node's spawnSync).

    It never raises for the child's exit status or a timeout: look at ``returncode``,
    ``killed`` and ``signal_code``.  ``input`` (bytes or str) is written to the child's
    stdin; without it the child's stdin is /dev/null.  stdout and stderr are read at once,
    so neither can fill up and deadlock.  A stream over ``max_buffer`` bytes (None: no
    limit) kills the child and raises :class:`MaxBufferError` with what was read.
    """
    result, state, overflow = _collect(
        command,
        args,
        stdio=stdio,
        input=input,
        timeout=timeout,
        max_buffer=max_buffer,
        kill_signal=kill_signal,
        encoding=encoding,
        errors=errors,
        verb="spawnSync",
        cwd=cwd,
        env=env,
        argv0=argv0,
        detached=detached,
        uid=uid,
        gid=gid,
        shell=shell,
        windows_hide=windows_hide,
    )
    if state == "overflow":
        raise_for(result, state, overflow, max_buffer, timeout, cmd_text(result.args))
    return result


def exec_file(
    file: StrOrBytesPath,
    args: Iterable[StrOrBytesPath] | None = None,
    *,
    input: Any = None,
    cwd: StrOrBytesPath | None = None,
    env: Mapping[str, str] | None = None,
    argv0: StrOrBytesPath | None = None,
    detached: bool = False,
    uid: int | None = None,
    gid: int | None = None,
    shell: bool | StrOrBytesPath = False,
    timeout: float | None = None,
    kill_signal: SignalLike = "SIGTERM",
    max_buffer: int | None = DEFAULT_MAX_BUFFER,
    encoding: str | None = None,
    errors: str = "strict",
    windows_hide: bool = False,
) -> CompletedProcess:
    """Run a program without a shell and return its :class:`CompletedProcess`.

    Raises :class:`ExecError` (a ``subprocess.CalledProcessError``) when the program exits
    non-zero, is killed by a signal, or runs past ``timeout`` seconds (it is then killed
    with ``kill_signal``; ``killed`` is True); :class:`MaxBufferError` when stdout or stderr
    goes over ``max_buffer`` bytes (default 1 MiB as in Node; None for no limit).  That
    stream is cut at ``max_buffer`` bytes, or characters with an ``encoding``, as in Node.
    Output is bytes unless ``encoding`` is given.  A program that exits 0 succeeds, even
    when a process it started holds its output open past the timeout.  The error's
    ``cmd`` is Node's: the file and its arguments joined by spaces (a ``SpawnError``
    carries it too).
    """
    return _exec(
        file,
        args,
        "spawn",
        {
            "input": input,
            "cwd": cwd,
            "env": env,
            "argv0": argv0,
            "detached": detached,
            "uid": uid,
            "gid": gid,
            "shell": shell,
            "timeout": timeout,
            "kill_signal": kill_signal,
            "max_buffer": max_buffer,
            "encoding": encoding,
            "errors": errors,
            "windows_hide": windows_hide,
        },
    )


def _exec(file: Any, args: Any, verb: str, options: dict[str, Any]) -> CompletedProcess:
    """exec_file, exec and their sync forms: run, collect, raise as Node's execFile."""
    arglist = check_args(args)
    cmd = cmd_text([file, *arglist])  # (exec's: the command itself)
    options = {**_EXEC_DEFAULTS, **options}
    timeout = _check_timeout(options.pop("timeout"))
    max_buffer = options["max_buffer"]
    try:
        result, state, overflow = _collect(
            file, arglist, stdio="pipe", timeout=timeout, verb=verb, **options
        )
    except SpawnError as err:
        err.cmd = cmd
        raise
    raise_for(result, state, overflow, max_buffer, timeout, cmd)
    return result


def _exec_options(function: str, options: dict[str, Any]) -> dict[str, Any]:
    """Refuses what exec_file does not take, naming the function that was called."""
    for key in options:
        if key not in _EXEC_DEFAULTS:
            raise TypeError(f"{function}() got an unexpected keyword argument {key!r}")
    return options


def exec(
    command: str | bytes,
    *,
    shell: bool | StrOrBytesPath = True,
    **options: Any,
) -> CompletedProcess:
    """Run ``command`` through the shell (``/bin/sh -c``) and return a CompletedProcess.

    Same options, result and errors as :func:`exec_file`; ``shell`` may name another shell.
    The error's ``cmd`` is the command, as in Node.
    """
    return _exec_command("exec", "spawn", command, shell, options)


def _exec_command(
    function: str, verb: str, command: Any, shell: Any, options: dict[str, Any]
) -> CompletedProcess:
    if not isinstance(command, (str, bytes)):
        raise TypeError(f"command must be a str, not {type(command).__name__}")
    options = _exec_options(function, options)
    options["shell"] = shell or True
    return _exec(command, None, verb, options)


def exec_file_sync(
    file: StrOrBytesPath, args: Iterable[StrOrBytesPath] | None = None, **options: Any
) -> Any:
    """Like :func:`exec_file` but return only stdout, as Node's ``execFileSync`` does.

    A program that cannot start raises ``SpawnError`` with ``syscall`` ``"spawnSync X"``.
    """
    return _exec(file, args, "spawnSync", _exec_options("exec_file_sync", options)).stdout


def exec_sync(command: str | bytes, *, shell: bool | StrOrBytesPath = True, **options: Any) -> Any:
    """Like :func:`exec` but return only stdout, as Node's ``execSync`` does."""
    return _exec_command("exec_sync", "spawnSync", command, shell, options).stdout


# exec_file's options and defaults: the sync forms and exec take the same, by name.
_EXEC_DEFAULTS: dict[str, Any] = {
    name: p.default
    for name, p in inspect.signature(exec_file).parameters.items()
    if p.kind is p.KEYWORD_ONLY
}


# ---- pyforkd's own (not in __all__): a child's parts for worker.py, pool.py and aio.py ----


def channel_of(child: ChildProcess) -> Channel:
    """``child``'s IPC channel; ``ValueError`` when it has none."""
    return child._channel()


def take_fds(child: ChildProcess) -> list[int]:
    """Hand ``child``'s raw pipe descriptors to another owner (asyncio)."""
    return child._take_fds()


def acquire_exit_handle(child: ChildProcess) -> int:
    """A descriptor that becomes readable when ``child`` has exited, or -1."""
    return child._acquire_exit_handle()


def release_exit_handle(child: ChildProcess, handle: int) -> None:
    """Give back what acquire_exit_handle gave."""
    child._release_exit_handle(handle)
