"""Workers, and the child's side of a channel.

:func:`fork_worker` runs a Python callable in a new process with a connected channel and
returns a :class:`Worker`; :func:`parent`, in any child, is the channel to the process that
started it.

A parent announces a channel the way Node does: ``NODE_CHANNEL_FD`` names the descriptor
and ``NODE_CHANNEL_SERIALIZATION_MODE`` its format.  A pyforkd parent adds
``PYFORKD_CHANNEL=pyforkd:<serialization>`` for its binary frames; without it the parent is
Node (or speaks Node's JSON lines), whichever started us.
"""

from __future__ import annotations

import atexit
import errno
import math
import multiprocessing
import os
import pickle
import runpy
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
import time
import traceback
import types
import weakref
from collections.abc import Callable, Sequence
from multiprocessing import context as mp_context
from multiprocessing.reduction import ForkingPickler
from typing import Any, TypeVar

from . import _bindings as _b
from . import child_process as _cp
from ._options import check_target
from .channel import Channel, Fd, expect_rings, forget, offer_rings, use_rings
from .errors import ChannelClosedError, TimeoutExpired, WorkerError
from .ring import Ring, check_capacity

__all__ = ["Worker", "fork_worker", "parent"]

START_METHODS = ("fork", "spawn", "forkserver")

_VARIABLES = ("NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE", "PYFORKD_CHANNEL")
_lock = threading.Lock()
_state: dict[str, Channel | None] = {}


def parent() -> Channel | None:
    """The :class:`Channel` to our parent, or None when it gave us none.

    The first call takes the channel over: the announcing environment variables are
    removed (our own children must not inherit them) and the descriptor is made
    non-inheritable; later calls return the same Channel.  A Node parent must use the
    default ``'json'`` serialization (``'advanced'`` raises ``ValueError``).
    """
    with _lock:
        if "channel" in _state:
            return _state["channel"]
        found = {name: os.environ.pop(name, None) for name in _VARIABLES}
        _state["channel"] = channel = _open(found) if found["NODE_CHANNEL_FD"] else None
        return channel


def _open(found: dict[str, str | None]) -> Channel:
    text = found["NODE_CHANNEL_FD"] or ""
    try:
        fd = int(text)
    except ValueError:
        raise ValueError(f"NODE_CHANNEL_FD={text!r} is not a descriptor number") from None
    end: Any
    if sys.platform == "win32":
        # The pipe spawn gave this process at that C runtime descriptor (as libuv does).
        try:
            end = _b.take_inherited(fd)
        except OSError:
            raise ValueError(f"NODE_CHANNEL_FD={fd}: that descriptor is not open") from None
    else:
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            raise ValueError(f"NODE_CHANNEL_FD={fd}: that descriptor is not open") from None
        if not stat.S_ISSOCK(mode):
            raise ValueError(f"NODE_CHANNEL_FD={fd}: that descriptor is not a socket")
        os.set_inheritable(fd, False)
        end = socket.socket(fileno=fd)
    ours = found["PYFORKD_CHANNEL"]
    if ours:
        framing, serialization, *options = ours.split(":")
        if (
            framing != "pyforkd"
            or serialization not in ("pickle", "json", "raw")
            or options not in ([], ["ring"])
        ):
            raise ValueError(f"PYFORKD_CHANNEL={ours!r} is not understood")
        channel = Channel(end, framing="pyforkd", serialization=serialization)
        if options:
            expect_rings(channel)  # the parent sends them first
        return channel
    node_mode = found["NODE_CHANNEL_SERIALIZATION_MODE"] or "json"
    if node_mode != "json":
        raise ValueError(
            f"the parent uses serialization {node_mode!r}; pyforkd speaks Node's "
            "'json' serialization (fork with serialization: 'json')"
        )
    return Channel(end, framing="node", serialization="json")


# ---- workers ----------------------------------------------------------------------------------

# Parent-side channels of workers: a process forked later must not keep them open, or the
# workers would not see their parent go away.  Closed (not shut down) in every fork child.
_parent_ends: weakref.WeakSet[Channel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Each on its own: one that fails must not leave the rest open.
    for channel in [*_parent_ends, _state.pop("channel", None)]:
        if channel is not None:
            try:
                forget(channel)
            except OSError:
                pass
    _parent_ends.clear()
    _forkserver._forget()
    for zygote in list(_zygotes):
        zygote._forget()


if hasattr(os, "register_at_fork"):  # (Windows has no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Worker(_cp.ChildProcess):
    """A process running a Python callable: a :class:`ChildProcess` with a result.

    ``result(timeout)`` is the target's return value, or raises :class:`WorkerError` with
    the remote traceback; ``join(timeout)`` waits for the process; ``send``/``recv`` talk to
    the target's :func:`parent` channel.  Closing the channel (``disconnect``) ends it.
    """

    name: str = ""
    daemon: bool = True
    _outcome: tuple[str, Any] | None = None
    _given: tuple[Any, ...] = ()  # what a spawn/forkserver worker was given (kept alive)

    def result(self, timeout: float | None = None) -> Any:
        """The target's return value; ``WorkerError`` if it raised or the worker died."""
        if self._outcome is None:
            try:
                self._outcome = _cp.channel_of(self).recv_control(timeout)
            except ChannelClosedError:
                self._outcome = died(self, self.wait(timeout))
        return unpack(self)

    def join(self, timeout: float | None = None) -> int:
        """Wait for the worker process to exit; return its returncode."""
        return self.wait(timeout)

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<Worker {self.name!r} pid={self.pid} {state}>"


# ---- a worker's outcome (pyforkd's own, not in __all__: aio.Worker and the cluster's
# supervisor keep it too) -------------------------------------------------------------------


def outcome(worker: Worker) -> tuple[str, Any] | None:
    """What the worker's target came to, once known: ("result", value) or ("error", ...)."""
    return worker._outcome


def keep_outcome(worker: Worker, outcome: tuple[str, Any]) -> None:
    """Record ``outcome`` as the worker's (received, or made by :func:`died`)."""
    worker._outcome = outcome


def died(worker: Worker, code: int) -> tuple[str, Any]:
    """The outcome of a worker that ended with ``code`` without sending one."""
    message = (
        f"worker {worker.name!r} (pid {worker.pid}) ended with returncode {code} before "
        "its target returned"
    )
    return "error", ("WorkerExit", message, "", None, code)


def unpack(worker: Worker) -> Any:
    """The worker's result, or its error raised as ``WorkerError``."""
    assert worker._outcome is not None
    kind, value = worker._outcome
    if kind == "result":
        return value
    exc_type, message, remote_tb, exc, code = value
    raise WorkerError(exc_type, message, remote_tb, exc, code)


_RUNS_MAIN = "_pyforkd_no_main"  # (the mark runs_its_own_main sets on a target)
_F = TypeVar("_F", bound=Callable[..., Any])


def runs_its_own_main(target: _F) -> _F:
    """Mark a spawn target that runs ``__main__`` itself: its worker imports none first.

    pyforkd's own (the cluster's worker entry); not in ``__all__``.
    """
    setattr(target, _RUNS_MAIN, True)
    return target


def _describe_exception(exc: BaseException) -> tuple[str, str, str, Any, None]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    name = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    try:
        pickled = pickle.loads(pickle.dumps(exc, protocol=5))
    except Exception:
        pickled = None
    return name, str(exc), tb, pickled, None


def _serve(
    channel: Channel,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    expected_parent: int,
    pdeathsig: bool,
) -> None:
    """The worker's life: watch the parent, run the target, report, exit.  Never returns."""
    code = 1
    try:
        _state["channel"] = channel
        if pdeathsig and _b.process_die_with_parent(signal.SIGKILL, expected_parent) is False:
            os._exit(1)  # the parent died before we could watch it
        # Every platform, any thread the parent forked from, any start method: when the
        # parent's end of the channel closes (its death included), this worker ends too.
        # The C core's thread watches, so a worker stuck in a C call holding the GIL ends.
        _b.process_watch_hangup(channel.fileno())
        try:
            outcome: tuple[str, Any] = ("result", target(*args, **kwargs))
            code = 0
        except BaseException as exc:
            outcome = ("error", _describe_exception(exc))
        try:
            channel.send_control(outcome)
        except TypeError as exc:
            code = 1
            what = getattr(target, "__qualname__", target)
            problem = TypeError(f"the result of {what!r} cannot be sent back: {exc}")
            channel.send_control(("error", _describe_exception(problem)))
    except ChannelClosedError:
        pass
    finally:
        _finish_as_multiprocessing_does()
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:
                pass
        _leave(channel)
        os._exit(code)


def _as_multiprocessing_child() -> None:
    """In a new fork, when multiprocessing is in use: what it does in its own fork children.

    The parent's finalizers and child processes are not this process's (run at exit, they
    would shut the parent's Manager down, or signal its children), and objects that asked
    to be told of a fork (``multiprocessing.util.register_after_fork``) are told.  These
    are the steps of ``multiprocessing.process.BaseProcess._bootstrap``.
    """
    util = sys.modules.get("multiprocessing.util")
    process = sys.modules.get("multiprocessing.process")
    if util is None or process is None:
        return
    util._finalizer_registry.clear()
    process._children = set()  # type: ignore[attr-defined]
    util._run_after_forkers()


def _finish_as_multiprocessing_does() -> None:
    """Run multiprocessing's exit work, as its own children do before ``os._exit``.

    A Queue's items are written by a thread of its own: without this, what the worker put
    last (a log record through a QueueHandler, say) would be lost.  Only when the worker
    uses multiprocessing at all; the function is the one multiprocessing children call.
    """
    util = sys.modules.get("multiprocessing.util")
    finish = getattr(util, "_exit_function", None)
    if finish is not None:
        try:
            finish()
        except Exception:
            pass  # (what it runs is the program's: it cannot stop this exit)


def _leave(channel: Channel) -> None:
    """Hang up on the parent before exiting, so that it knows at once.

    The watch on the channel is disarmed first (the hang-up would kill us), and the
    channel is shut down, not just closed: the watch holds a copy of the socket.  The
    parent may be asleep on a ring, which the close wakes.
    """
    _b.process_unwatch()
    try:
        _b.fd_shutdown(channel.fileno())
    except (OSError, ValueError):
        pass  # (closed already: nothing to hang up)
    channel.close()


def fork_worker(
    target: Callable[..., Any],
    /,
    *args: Any,
    start: str | None = None,
    name: str | None = None,
    daemon: bool = True,
    ring: int | None = None,
    exec_argv: Sequence[str] = (),
    **kwargs: Any,
) -> Worker:
    """Run ``target(*args, **kwargs)`` in a new process; return its :class:`Worker`.

    ``start="fork"`` (the POSIX default; Windows has only ``"spawn"``, its default) forks
    this interpreter through ``os.fork()``, so the target runs with a copy of everything and
    its at-fork hooks run, except the pipes and channels of the other children this process
    started (their descriptors point at /dev/null in the worker: a worker must not keep them
    from seeing EOF); ``start="spawn"`` starts a fresh interpreter that re-imports this
    program's ``__main__`` as ``__mp_main__`` and receives the pickled target (what Windows
    has to do, usable everywhere; a target that cannot be pickled raises ``TypeError``
    before any process starts); ``start="forkserver"`` asks a server process, started once
    from a fresh interpreter that imported this program's ``__main__`` (as ``spawn`` does),
    to fork the worker: as cheap as ``fork`` once the server runs, and safe when this
    process has threads (nothing of this process is copied but what is pickled).  Inside the
    target :func:`parent` is the channel to this process.  The worker dies with this process
    (or when its channel is closed), whichever thread started it.

    ``ring`` (bytes: a power of two, at least 4096) gives the channel a pair of
    shared-memory rings, one per direction: messages then go through shared memory, and
    pickle's out-of-band buffers (numpy arrays, ``pickle.PickleBuffer``) are written
    straight into the ring and received as views of it, so a large array is copied once
    in all (a message larger than half the ring goes in pieces: twice).  A received object
    built on such a view keeps its part of the ring until it is gone; the sender never
    waits on that for good (it goes through the socket meanwhile).  Handles still travel
    on the socket, in order with the rest.

    ``exec_argv``: options for the new interpreter (``["-X", "dev"]``), with
    ``start="spawn"`` only (a fork runs in this interpreter, with its options).
    """
    check_target(target)
    if _importing_main.is_set():
        raise RuntimeError(
            "fork_worker() was called while a worker was importing this program's __main__ "
            "(start='spawn' and 'forkserver' re-import it): start workers under "
            "`if __name__ == '__main__':`"
        )
    method = ("spawn" if sys.platform == "win32" else "fork") if start is None else start
    if method not in START_METHODS:
        raise ValueError(f"start must be one of {', '.join(START_METHODS)}, not {start!r}")
    if method != "spawn" and sys.platform == "win32":
        raise NotImplementedError(
            f"fork_worker(start={method!r}) is not available on Windows: it has no fork "
            "(start='spawn' is the method there, and the default)"
        )
    label = name if name is not None else getattr(target, "__qualname__", "worker")
    main_thread = threading.current_thread() is threading.main_thread()
    if ring is not None:
        check_capacity(ring, "ring")
    options = _check_exec_argv(exec_argv)
    if options and method != "spawn":
        raise ValueError(
            f"exec_argv needs start='spawn': a {method!r} worker runs in an interpreter that "
            "is already started"
        )
    if method == "fork":
        worker = _start_fork(target, args, kwargs, main_thread, ring)
    elif method == "spawn":
        worker = _start_spawn(target, args, kwargs, main_thread, ring, options)
    else:
        worker = _forkserver.start(*_pickled(target, args, kwargs, method), ring)
        worker.args = [getattr(target, "__qualname__", repr(target))]
    worker.name = label
    worker.daemon = daemon
    if method != "fork":
        # What was pickled stays alive with the worker, as a multiprocessing.Process keeps
        # its args: a Lock or Queue made for it alone (a named semaphore) would otherwise
        # be unlinked here before the worker opens it.
        worker._given = (target, args, kwargs)
    if not daemon:
        _non_daemons.add(worker)
    return worker


def _check_exec_argv(exec_argv: Any) -> tuple[str, ...]:
    if isinstance(exec_argv, (str, bytes)) or not all(isinstance(a, str) for a in exec_argv):
        raise TypeError(f"exec_argv must be a list of str, not {exec_argv!r}")
    return tuple(exec_argv)


def _start_fork(
    target: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    main_thread: bool,
    ring: int | None,
    serve: bool = True,
) -> Worker:
    """Fork a worker.

    ``serve=False``: the child runs ``target(channel)`` itself instead of the worker's life
    around it (what a zygote does).
    """
    # No other thread's spawn or fork runs meanwhile: this fork would copy that child's
    # descriptors (and that child's would copy these), hiding a death from its parent.
    with _cp.fork_guard.forking():
        parent_end, child_end = socket.socketpair()
        # Both Channel objects are made before the fork: the child then runs no set-up code of
        # its own (in a forked CPython every object touched first costs a page copy).
        ours, theirs = Channel(parent_end), Channel(child_end)
        if ring is not None:
            try:
                down, up = Ring(ring), Ring(ring)  # mapped now, so both processes have them
            except BaseException:
                ours.close()
                theirs.close()
                raise
            use_rings(ours, down, up)
            use_rings(theirs, up, down)
        me = os.getpid()
        try:
            pid = os.fork()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        if pid == 0:  # the worker: never returns into the caller
            try:
                forget(ours)
                _cp.release_in_fork_child()
                _as_multiprocessing_child()
                if serve:
                    _serve(theirs, target, args, kwargs, me, main_thread)
                else:
                    target(theirs)
            finally:
                os._exit(1)
        forget(theirs)
        worker = Worker(pid, [getattr(target, "__qualname__", repr(target))], [])
        worker.channel = ours
        _parent_ends.add(ours)
        return worker


def _main_info() -> dict[str, Any]:
    """How the spawned interpreter finds this program's __main__ (as multiprocessing does)."""
    main = sys.modules.get("__main__")
    info: dict[str, Any] = {"sys_path": list(sys.path), "main_path": None, "main_name": None}
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        if spec.name != "__main__" and not spec.name.endswith(".__main__"):
            info["main_name"] = spec.name
    else:
        path = getattr(main, "__file__", None)
        if path and os.path.exists(path):
            info["main_path"] = os.path.abspath(path)
    return info


class _Starting:
    """The process being started, as multiprocessing's objects see it while pickled for it.

    They ask ``context.get_spawning_popen()`` for it: a Queue for its pipes, a Connection
    for its descriptor.  Their descriptors are collected here and travel with the payload;
    in the worker each is an :class:`_InheritedFd` that hands out the one received there.
    """

    def __init__(self) -> None:
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        if _b.WINDOWS:
            raise TypeError(
                "multiprocessing objects with handles (a Queue, a Connection) cannot be "
                "given to a spawned pyforkd worker on Windows"
            )
        self.fds.append(fd)
        return len(self.fds) - 1

    def DupFd(self, index: int) -> _InheritedFd:  # (multiprocessing's name for it)
        return _InheritedFd(index)


class _InheritedFd:
    """In a spawned worker: a descriptor that came with the payload (see :class:`_Starting`)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def detach(self) -> int:
        return _inherited_fds[self.index]


_inherited_fds: list[int] = []  # in a spawned worker: the descriptors its payload came with


def _pickled(
    target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], method: str
) -> tuple[bytes, list[int]]:
    """The payload of a spawn or forkserver worker, and the descriptors it takes along.

    Pickled as multiprocessing pickles for a process it starts, so its Queues, Locks and
    Manager proxies can be given to the worker, as to a ``multiprocessing.Process``.
    """
    starting = _Starting()
    mp_context.set_spawning_popen(starting)  # type: ignore[arg-type]
    try:
        # (multiprocessing's pickler: its reducers are for Connections, sockets, ...)
        return bytes(ForkingPickler.dumps((target, args, kwargs), protocol=5)), starting.fds
    except Exception as exc:
        raise TypeError(
            f"start={method!r} needs a picklable target and arguments: "
            f"{getattr(target, '__qualname__', target)!r} cannot be pickled ({exc})"
        ) from None
    finally:
        mp_context.set_spawning_popen(None)


def _take_inherited(handles: list[Any]) -> None:
    """In a new worker: the descriptors its payload came with, for :class:`_InheritedFd`."""
    _inherited_fds[:] = [h.detach() for h in handles]


def _spawn_interpreter(
    entry: str,
    info: dict[str, Any],
    main_thread: bool,
    ring: int | None = None,
    exec_argv: tuple[str, ...] = (),
) -> Worker:
    """A fresh interpreter running ``pyforkd.worker.<entry>()``, its bootstrap sent."""
    ipc = _cp.IpcPlan.from_stdio(["inherit", "inherit", "inherit", "ipc"], "pickle", ring)
    assert ipc is not None
    try:
        cmd = _cp.Command(
            sys.executable,
            [*exec_argv, "-c", f"from pyforkd.worker import {entry}; {entry}()"],
            cwd=None,
            env=ipc.environment(None),
            argv0=None,
            shell=False,
            detached=False,
            uid=None,
            gid=None,
        )
    except BaseException:
        ipc.abandon()  # its sockets and rings go, and the fork guard is left
        raise
    worker: Worker = _cp.launch(
        cmd,
        ipc.stdio,
        ipc,
        signal.SIGTERM,
        None,
        # (Windows: the Job Object every child is in ends it with this process instead.)
        pdeathsig=_cp.SIGKILL if main_thread and not _b.WINDOWS else 0,
        cls=Worker,
    )
    assert worker.channel is not None
    _parent_ends.add(worker.channel)
    main = _main_info() if info.pop("import_main", True) else {"main_path": None, "main_name": None}
    info.update(
        main,
        sys_path=list(sys.path),
        parent=os.getpid(),
        pdeathsig=main_thread and not _b.WINDOWS,
        # (so that Manager proxies and Listeners work there, as in multiprocessing's children)
        authkey=bytes(multiprocessing.current_process().authkey),
    )
    try:
        worker.channel.send_control(("bootstrap", info))
    except ChannelClosedError:
        pass  # it died at once: result() will say how
    return worker


def _start_spawn(
    target: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    main_thread: bool,
    ring: int | None,
    exec_argv: tuple[str, ...] = (),
) -> Worker:
    payload, fds = _pickled(target, args, kwargs, "spawn")
    # A target that marks itself so (the cluster's worker entry, which runs the script as
    # __main__ itself) needs no __main__ imported first.
    info = {
        "payload": payload,
        "fds": len(fds),
        "import_main": not getattr(target, _RUNS_MAIN, False),
    }
    worker = _spawn_interpreter("_spawn_main", info, main_thread, ring, exec_argv)
    if fds:
        try:  # (the first message the worker reads, before its target runs)
            copies: list[Any] = [Fd(os.dup(fd)) for fd in fds]  # (the send closes these)
            assert worker.channel is not None
            worker.channel.send(("fds", len(fds)), handle=copies)
        except ChannelClosedError:
            pass  # it died at once: result() will say how
    worker.args = [getattr(target, "__qualname__", repr(target))]
    return worker


def _bootstrap(entry: str) -> tuple[Channel, dict[str, Any]]:
    """In a spawned interpreter: take the channel, read the bootstrap, import __main__.

    A __main__ that fails to import is reported to the parent as the outcome, then we exit.
    """
    channel = parent()
    if channel is None:
        raise SystemExit(f"pyforkd {entry}: started without a channel")
    kind, info = channel.recv_control()
    if kind != "bootstrap":
        raise SystemExit(f"pyforkd {entry}: unexpected first message {kind!r}")
    sys.path[:] = info["sys_path"]
    multiprocessing.current_process().authkey = info["authkey"]
    try:
        if info["main_name"]:
            _install_main(info["main_name"], None)
        elif info["main_path"]:
            _install_main(None, info["main_path"])
    except BaseException as exc:
        channel.send_control(("error", _describe_exception(exc)))
        os._exit(1)
    return channel, info


def _run_pickled(channel: Channel, payload: bytes, parent_pid: int) -> None:
    """Unpickle the target (reporting failure as its outcome) and serve it.  Never returns."""
    try:
        target, args, kwargs = pickle.loads(payload)
    except BaseException as exc:
        channel.send_control(("error", _describe_exception(exc)))
        os._exit(1)
    _serve(channel, target, args, kwargs, parent_pid, False)


def _spawn_main() -> None:
    """Entry point of a spawned worker interpreter (``python -c ...``)."""
    channel, info = _bootstrap("worker")
    if info.get("fds"):
        _, handles = channel.recv(with_handle=True)
        _take_inherited(handles if isinstance(handles, list) else [handles])
    _run_pickled(channel, info["payload"], info["parent"])


# ---- forkserver ---------------------------------------------------------------------------
#
# The server is a spawned interpreter (bootstrapped like a spawn worker) that only forks.
# Per request the parent sends, over the server's channel, the pickled target and two
# descriptors: the worker's end of its new channel, and the write end of a status socket.
# The server forks; the worker serves the target on that channel; the server answers with
# the pid and a pidfd (so the parent can signal it without a pid-reuse race), reaps the
# worker when it exits and writes its exit code (4 bytes) into the status socket, which is
# how the parent, not being the worker's parent, learns it.

_STATUS = struct.Struct("<i")


class _ServedWorker(Worker):
    """A forkserver's worker: its exit code arrives over a status socket, not waitpid.

    Should the server die first, the status socket ends empty: the worker is then awaited
    through its pidfd, and waiting raises ``ChildProcessError`` once it has exited (its
    exit code went with the server).
    """

    def __init__(self, pid: int, args: list[str], status: socket.socket, pidfd: int) -> None:
        super().__init__(pid, args, [])
        self._status: socket.socket | None = status
        self._handle = pidfd  # ChildProcess.kill signals through it; closed once reaped

    def _reap_locked(self) -> bool:
        if self.returncode is not None:
            return True
        sock = self._status
        if sock is not None:
            try:
                data = sock.recv(_STATUS.size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            self._status = None
            sock.close()
            if len(data) == _STATUS.size:
                (code,) = _STATUS.unpack(data)
                if code < 0:
                    self.exit_code, self.signal_code = None, _cp.signal_name(-code)
                else:
                    self.exit_code = code
                self.returncode = code
                self._release_handle_locked()
                return True
        # The server is gone: all that can still be known is when the worker ends.
        if self._handle >= 0 and not _b.fd_wait(self._handle, _b.POLL_IN, 0):
            return False
        raise ChildProcessError(
            errno.ECHILD,
            f"worker {self.pid}: the fork server ended before it; its exit status is lost",
        )

    def _acquire_exit_handle(self) -> int:
        return self._status.fileno() if self._status is not None else self._handle

    def _release_exit_handle(self, handle: int) -> None:
        pass  # both stay ours until the worker is reaped (or this object goes)

    def _block_until_exit(self) -> None:
        handle = self._acquire_exit_handle()
        while self.returncode is None and handle >= 0:
            if _b.fd_wait(handle, _b.POLL_IN, -1):
                return

    def _wait_until(self, deadline: float, timeout: float) -> None:
        handle = self._acquire_exit_handle()
        while self.returncode is None and handle >= 0:
            left = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            if _b.fd_wait(handle, _b.POLL_IN, left):
                return
            if time.monotonic() >= deadline:
                raise TimeoutExpired(self.args, timeout)

    def __del__(self) -> None:
        # The server reaps the worker whatever happens here: only our descriptors to close.
        status = getattr(self, "_status", None)
        if status is not None:
            status.close()
        handle = getattr(self, "_handle", -1)
        if handle >= 0:
            os.close(handle)
            self._handle = -1


class _ForkServerClient:
    """The fork server of this process: started on first use, asked for one worker at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: Worker | None = None

    def _launch(self) -> Worker:
        """Start the server process (it says "ready" on its channel)."""
        main_thread = threading.current_thread() is threading.main_thread()
        server = _spawn_interpreter("_forkserver_main", {}, main_thread)
        server.args = ["pyforkd-forkserver"]
        return server

    def _ensure(self) -> Worker:
        server = self._server
        if server is not None and server.connected:
            return server
        if server is not None:
            server.close()
            server.wait()
        server = self._launch()
        try:
            kind, value = _cp.channel_of(server).recv_control()
        except ChannelClosedError:
            kind, value = "error", ("WorkerExit", "the fork server died at start", "", None, None)
        if kind != "ready":
            server.close()
            server.wait()
            name, message, remote_tb, exc, _ = value
            raise WorkerError(
                name, f"the pyforkd fork server could not start: {message}", remote_tb, exc, None
            )
        self._server = server
        return server

    def start(self, payload: bytes, fds: list[int], ring: int | None) -> Worker:
        """A worker of the server's running ``payload``; ``fds`` go along (copies)."""
        rings = (Ring(ring), Ring(ring)) if ring is not None else None
        parent_end, child_end = socket.socketpair()
        status_r, status_w = socket.socketpair()
        request = ("fork", payload, os.getpid(), rings is not None)
        try:
            with self._lock, _cp.fork_guard.opening():  # (until the ends are sent)
                server = self._ensure()
                # (copies of fds: a send closes what it sent, and those stay the caller's)
                handles = [child_end, status_w, *(Fd(os.dup(fd)) for fd in fds)]
                try:
                    server.send(request, handle=handles)
                except ChannelClosedError:
                    # The server died since the last request (nothing was written, so
                    # nothing was started): a new one takes it.
                    server = self._ensure()
                    server.send(request, handle=handles)
                (kind, pid), handle = server.recv(with_handle=True)
        except BaseException:
            for s in (parent_end, child_end, status_r, status_w, *(rings or ())):
                s.close()
            raise
        if kind == "failed":  # fork() failed in the server: pid is (errno, message)
            for s in (parent_end, status_r, *(rings or ())):
                s.close()
            _b.raise_errno(pid[0], "fork (in the pyforkd fork server)")
        if kind != "forked":
            raise RuntimeError(f"the pyforkd fork server answered {kind!r}")
        pidfd = handle.detach() if isinstance(handle, Fd) else -1
        worker = _ServedWorker(pid, ["worker"], status_r, pidfd)
        worker.channel = Channel(parent_end)
        if rings is not None:
            offer_rings(worker.channel, *rings)
        _parent_ends.add(worker.channel)
        return worker

    def stop(self) -> None:
        """Close the server's channel (it exits) and reap it."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            try:
                server.wait(10)
            except TimeoutExpired:
                server.kill("SIGKILL")
                server.wait()

    def _forget(self) -> None:
        """In a forked child: the server belongs to the parent."""
        self._server = None


_forkserver = _ForkServerClient()


class Zygote(_ForkServerClient):
    """A fork of this process that forks workers of one kind, on request (POSIX).

    ``Zygote(target, *args)`` forks it now; ``zygote.fork(*extra)`` returns a
    :class:`Worker` running ``target(*args, *extra)``, as :func:`fork_worker` would.

    Made where this process runs no thread of pyforkd's (a Pool before its reader threads,
    a cluster before its control and dispatcher threads), it is where later workers come
    from: a replacement is forked from the zygote, never from a process whose threads may
    hold locks (CPython 3.12+ warns of that; a lock held at a fork stays held in the child).
    Each worker runs ``target(*args, *extra)`` with this process's memory as it was when the
    zygote was made; ``extra`` travels pickled.  Closed with :meth:`stop` (its workers live
    on).
    """

    def __init__(self, target: Callable[..., Any], *args: Any) -> None:
        if sys.platform == "win32":
            raise NotImplementedError(
                "a Zygote is a fork, and Windows has no fork: start workers with "
                "fork_worker(start='spawn')"
            )
        check_target(target)
        super().__init__()
        self._target = target
        self._args = args
        _zygotes.add(self)
        with self._lock:
            self._server = self._ensure()  # now, while the process is as the caller says

    def _launch(self) -> Worker:
        target, args = self._target, self._args
        main_thread = threading.current_thread() is threading.main_thread()

        def run(channel: Channel, payload: bytes, parent_pid: int) -> None:
            extra = pickle.loads(payload)
            _serve(channel, target, (*args, *extra), {}, parent_pid, False)

        def serve_forks(channel: Channel) -> None:
            if main_thread:  # (else the channel's end is its only sign: it is never stuck)
                _b.process_die_with_parent(signal.SIGKILL, parent_pid)
            _serve_forks(channel, run)

        parent_pid = os.getpid()
        server = _start_fork(serve_forks, (), {}, False, None, serve=False)
        server.args = ["pyforkd-zygote"]
        return server

    def fork(self, *extra: Any, ring: int | None = None, name: str = "worker") -> Worker:
        """A new worker running ``target(*args, *extra)``; ``extra`` must pickle."""
        try:
            payload = pickle.dumps(extra, protocol=5)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise TypeError(f"a zygote's worker arguments cannot be pickled: {exc}") from None
        worker = self.start(payload, [], ring)
        worker.args = [name]
        worker.name = name
        return worker


_zygotes: weakref.WeakSet[Zygote] = weakref.WeakSet()


def threads_alive() -> bool:
    """Whether a thread of pyforkd's runs in this process now (all are named "pyforkd...")."""
    me = threading.current_thread()
    return any(t is not me and t.name.startswith("pyforkd") for t in threading.enumerate())


def _forkserver_main() -> None:
    """Entry point of the fork server interpreter.  Ends when the parent's channel closes."""
    channel, _ = _bootstrap("fork server")
    _serve_forks(channel, _run_pickled)


def _serve_forks(channel: Channel, run: Callable[[Channel, bytes, int], None]) -> None:
    """A fork server's life: fork a worker per request, which ``run``s; report; exit.

    ``run(channel, payload, parent_pid)`` serves the worker's channel and never returns.
    Ends (``os._exit``) when the parent's channel closes.
    """
    channel.send_control(("ready", os.getpid()))
    # A signal to the whole process group (Ctrl-C; systemd's or timeout's SIGTERM) is for
    # the process that made this server to decide on: the server outlives it, so that the
    # exit status of each worker still reaches that process.  Its workers get them as usual.
    group_signals = {
        sig: signal.getsignal(sig)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    }
    for sig in group_signals:
        signal.signal(sig, signal.SIG_IGN)
    statuses: dict[int, socket.socket] = {}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    selector = selectors.DefaultSelector()
    selector.register(channel.fileno(), selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)

    def fork_one(payload: bytes, parent_pid: int, rings: bool, handles: list[Any]) -> None:
        worker_end, status, *inherited = handles
        theirs = Channel(worker_end)  # made before the fork: see _start_fork
        if rings:
            expect_rings(theirs)  # the parent sends them on the worker's channel
        try:
            pid = os.fork()
        except OSError as exc:
            theirs.close()
            status.close()
            for handle in inherited:
                handle.close()
            channel.send(("failed", (exc.errno, exc.strerror)))
            return
        if pid == 0:  # the worker: drop everything of the server's, then serve
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for sig, handler in group_signals.items():
                    # (as the process had it; None: set outside Python, the default then)
                    signal.signal(sig, signal.SIG_DFL if handler is None else handler)
                selector.close()
                os.close(wake_r)
                os.close(wake_w)
                for other in statuses.values():
                    other.close()
                status.close()
                _as_multiprocessing_child()
                _take_inherited(inherited)
                run(theirs, payload, parent_pid)
            finally:
                os._exit(1)
        forget(theirs)
        for handle in inherited:
            handle.close()  # (the worker has them)
        statuses[pid] = status
        pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else -1
        channel.send(("forked", pid), handle=Fd(pidfd) if pidfd >= 0 else None)

    def reap() -> None:
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            status = statuses.pop(pid, None)
            if status is not None:
                try:
                    status.send(_STATUS.pack(os.waitstatus_to_exitcode(wstatus)))
                except OSError:
                    pass  # the parent dropped the worker's object: nobody to tell
                status.close()

    try:
        while True:
            for key, _ in selector.select():
                if key.fd == wake_r:
                    while True:
                        try:
                            if not os.read(wake_r, 512):
                                break
                        except BlockingIOError:
                            break
                    reap()
                    continue
                while True:  # every request already read, then back to waiting
                    try:
                        (kind, payload, parent_pid, rings), handles = channel.recv(
                            0, with_handle=True
                        )
                    except TimeoutError:
                        break
                    if kind == "fork":
                        fork_one(payload, parent_pid, rings, handles)
    except ChannelClosedError:
        pass  # the parent is gone or done with us; workers watch their own channels
    os._exit(0)


_importing_main = threading.Event()  # set while a spawned interpreter imports __main__


def _install_main(name: str | None, path: str | None) -> None:
    """Run the parent's __main__ as __mp_main__, so pickled __main__.x names resolve."""
    module = types.ModuleType("__mp_main__")
    _importing_main.set()
    try:
        if name is not None:
            content = runpy.run_module(name, run_name="__mp_main__", alter_sys=True)
        else:
            assert path is not None
            content = runpy.run_path(path, run_name="__mp_main__")
    finally:
        _importing_main.clear()
    module.__dict__.update(content)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


_non_daemons: weakref.WeakSet[Worker] = weakref.WeakSet()


def _join_non_daemons() -> None:
    for worker in list(_non_daemons):
        try:
            worker.wait()
        except ChildProcessError:
            pass


def finish() -> None:
    """Wait for the non-daemon workers, then stop the fork server: at interpreter exit.

    Registered with ``atexit``; a program that clears its hooks (a cluster worker clears
    those of its primary) registers it again.
    """
    _join_non_daemons()
    _forkserver.stop()


atexit.register(finish)
