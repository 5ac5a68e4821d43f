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
import os
import pickle
import runpy
import signal
import socket
import stat
import sys
import threading
import traceback
import types
import weakref
from collections.abc import Callable
from typing import Any

from . import _bindings as _b
from . import child_process as _cp
from .channel import Channel
from .errors import ChannelClosedError, WorkerError

__all__ = ["Worker", "fork_worker", "parent"]

START_METHODS = ("fork", "spawn")

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
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise ValueError(f"NODE_CHANNEL_FD={fd}: that descriptor is not open") from None
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"NODE_CHANNEL_FD={fd}: that descriptor is not a socket")
    os.set_inheritable(fd, False)
    ours = found["PYFORKD_CHANNEL"]
    if ours:
        framing, _, serialization = ours.partition(":")
        if framing != "pyforkd" or serialization not in ("pickle", "json", "raw"):
            raise ValueError(f"PYFORKD_CHANNEL={ours!r} is not understood")
        return Channel(socket.socket(fileno=fd), framing="pyforkd", serialization=serialization)
    node_mode = found["NODE_CHANNEL_SERIALIZATION_MODE"] or "json"
    if node_mode != "json":
        raise ValueError(
            f"the parent uses serialization {node_mode!r}; pyforkd speaks Node's "
            "'json' serialization (fork with serialization: 'json')"
        )
    return Channel(socket.socket(fileno=fd), framing="node", serialization="json")


# ---- workers ----------------------------------------------------------------------------------

# Parent-side channels of workers: a process forked later must not keep them open, or the
# workers would not see their parent go away.  Closed (not shut down) in every fork child.
_parent_ends: weakref.WeakSet[Channel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Each on its own: one that fails must not leave the rest open.
    for channel in [*_parent_ends, _state.pop("channel", None)]:
        if channel is not None:
            try:
                channel._forget()
            except OSError:
                pass
    _parent_ends.clear()


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

    def result(self, timeout: float | None = None) -> Any:
        """The target's return value; ``WorkerError`` if it raised or the worker died."""
        if self._outcome is None:
            try:
                self._outcome = self._channel().recv_control(timeout)
            except ChannelClosedError:
                code = self.wait(timeout)
                self._outcome = (
                    "error",
                    (
                        "WorkerExit",
                        f"worker {self.name!r} (pid "
                        f"{self.pid}) ended with returncode {code} before its "
                        "target returned",
                        "",
                        None,
                        code,
                    ),
                )
        kind, value = self._outcome
        if kind == "result":
            return value
        exc_type, message, remote_tb, exc, code = value
        raise WorkerError(exc_type, message, remote_tb, exc, code)

    def join(self, timeout: float | None = None) -> int:
        """Wait for the worker process to exit; return its returncode."""
        return self.wait(timeout)

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<Worker {self.name!r} pid={self.pid} {state}>"


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
        # Every platform, any thread the parent forked from: when the parent's end of the
        # channel closes (its death included), this worker ends too.
        threading.Thread(
            target=_die_on_hangup,
            args=(channel.fileno(),),
            daemon=True,
            name="pyforkd-parent-watch",
        ).start()
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
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:
                pass
        os._exit(code)


def _die_on_hangup(fd: int) -> None:
    while True:
        try:
            gone = _b.fd_wait_hangup(fd, -1)
        except OSError:
            gone = True  # the descriptor is gone: so is the channel
        if gone:
            os.kill(os.getpid(), signal.SIGKILL)


def _check_target(target: Any) -> None:
    if not callable(target):
        raise TypeError(f"fork_worker needs a callable target, not {type(target).__name__}")


def fork_worker(
    target: Callable[..., Any],
    /,
    *args: Any,
    start: str | None = None,
    name: str | None = None,
    daemon: bool = True,
    **kwargs: Any,
) -> Worker:
    """Run ``target(*args, **kwargs)`` in a new process; return its :class:`Worker`.

    ``start="fork"`` (the POSIX default) forks this interpreter through ``os.fork()``, so
    the target runs with a copy of everything and its at-fork hooks run; ``start="spawn"``
    starts a fresh interpreter that re-imports this program's ``__main__`` as
    ``__mp_main__`` and receives the pickled target (what Windows has to do, usable
    everywhere; a target that cannot be pickled raises ``TypeError`` before any process
    starts).  Inside the target :func:`parent` is the channel to this process.  The worker
    dies with this process (or when its channel is closed), whichever thread started it.
    """
    _check_target(target)
    method = "fork" if start is None else start
    if method not in START_METHODS:
        raise ValueError(f"start must be one of {', '.join(START_METHODS)}, not {start!r}")
    label = name if name is not None else getattr(target, "__qualname__", "worker")
    main_thread = threading.current_thread() is threading.main_thread()
    if method == "fork":
        worker = _start_fork(target, args, kwargs, main_thread)
    else:
        worker = _start_spawn(target, args, kwargs, main_thread)
    worker.name = label
    worker.daemon = daemon
    if not daemon:
        _non_daemons.add(worker)
    return worker


def _start_fork(
    target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], main_thread: bool
) -> Worker:
    parent_end, child_end = socket.socketpair()
    me = os.getpid()
    try:
        pid = os.fork()
    except BaseException:
        parent_end.close()
        child_end.close()
        raise
    if pid == 0:  # the worker: never returns into the caller
        try:
            os.close(parent_end.detach())
            _serve(Channel(child_end), target, args, kwargs, me, main_thread)
        finally:
            os._exit(1)
    child_end.close()
    worker = Worker(pid, [getattr(target, "__qualname__", repr(target))], [])
    worker.channel = Channel(parent_end)
    _parent_ends.add(worker.channel)
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


def _start_spawn(
    target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], main_thread: bool
) -> Worker:
    try:
        payload = pickle.dumps((target, args, kwargs), protocol=5)
    except Exception as exc:
        raise TypeError(
            f"start='spawn' needs a picklable target and arguments: "
            f"{getattr(target, '__qualname__', target)!r} cannot be pickled ({exc})"
        ) from None
    ipc = _cp._IpcPlan.from_stdio(["inherit", "inherit", "inherit", "ipc"], "pickle")
    assert ipc is not None
    cmd = _cp._Command(
        sys.executable,
        ["-c", "from pyforkd.worker import _spawn_main; _spawn_main()"],
        cwd=None,
        env=ipc.environment(None),
        argv0=None,
        shell=False,
        detached=False,
        uid=None,
        gid=None,
    )
    worker: Worker = _cp._launch(
        cmd,
        ipc.stdio,
        ipc,
        signal.SIGTERM,
        None,
        pdeathsig=signal.SIGKILL if main_thread else 0,
        cls=Worker,
    )
    assert worker.channel is not None
    _parent_ends.add(worker.channel)
    worker.args = [getattr(target, "__qualname__", repr(target))]
    info = _main_info()
    info.update(payload=payload, parent=os.getpid(), pdeathsig=main_thread)
    try:
        worker.channel.send_control(("bootstrap", info))
    except ChannelClosedError:
        pass  # it died at once: result() will say how
    return worker


def _spawn_main() -> None:
    """Entry point of a spawned worker interpreter (``python -c ...``)."""
    channel = parent()
    if channel is None:
        raise SystemExit("pyforkd worker: started without a channel")
    kind, info = channel.recv_control()
    if kind != "bootstrap":
        raise SystemExit(f"pyforkd worker: unexpected first message {kind!r}")
    sys.path[:] = info["sys_path"]
    if info["main_name"]:
        _install_main(info["main_name"], None)
    elif info["main_path"]:
        _install_main(None, info["main_path"])
    try:
        target, args, kwargs = pickle.loads(info["payload"])
    except BaseException as exc:
        channel.send_control(("error", _describe_exception(exc)))
        os._exit(1)
    _serve(channel, target, args, kwargs, info["parent"], False)


def _install_main(name: str | None, path: str | None) -> None:
    """Run the parent's __main__ as __mp_main__, so pickled __main__.x names resolve."""
    module = types.ModuleType("__mp_main__")
    if name is not None:
        content = runpy.run_module(name, run_name="__mp_main__", alter_sys=True)
    else:
        assert path is not None
        content = runpy.run_path(path, run_name="__mp_main__")
    module.__dict__.update(content)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


_non_daemons: weakref.WeakSet[Worker] = weakref.WeakSet()


def _join_non_daemons() -> None:
    for worker in list(_non_daemons):
        try:
            worker.wait()
        except ChildProcessError:
            pass


atexit.register(_join_non_daemons)
