"""The exception hierarchy.

Every pyforkd exception derives from :class:`PyforkdError` and also from the builtin or
standard-library exception that means the same thing, so code that already catches
``OSError``, ``FileNotFoundError``, ``subprocess.CalledProcessError`` or
``subprocess.TimeoutExpired`` keeps working.  An OS error is raised as the builtin subclass
that matches its errno (``SpawnError`` for ENOENT is also a ``FileNotFoundError``).
"""

from __future__ import annotations

import errno as _errno
import pickle
import subprocess
from collections.abc import Sequence
from typing import Any

__all__ = [
    "ChannelClosedError",
    "ExecError",
    "FrameError",
    "MaxBufferError",
    "PicklingError",
    "PyforkdError",
    "SpawnError",
    "TimeoutExpired",
    "WorkerError",
]


class PyforkdError(Exception):
    """Base class of every exception pyforkd raises on its own account."""


class SpawnError(PyforkdError, OSError):
    """A child process could not be started.

    Attributes: ``errno`` and ``code`` (its name, ``"ENOENT"``), ``syscall`` (the step that
    failed: ``"spawn ls"`` for the program itself, ``"chdir"`` for the cwd, ...), ``path``
    (the program, or the cwd when changing into it failed), ``spawnargs`` (the arguments
    without the program, as Node's ``err.spawnargs``), and from the exec family ``cmd``
    (Node's: the command line, else None).
    The instance is also of the builtin class for its errno, e.g. ``FileNotFoundError``.
    """

    def __init__(
        self,
        errno: int,
        strerror: str,
        filename: str | None = None,
        *,
        syscall: str = "",
        spawnargs: Sequence[str] = (),
    ) -> None:
        super().__init__(errno, strerror, filename)
        self.code: str = _errno.errorcode.get(errno, "UNKNOWN")
        self.syscall: str = syscall
        self.path: str | None = filename
        self.spawnargs: list[str] = list(spawnargs)
        self.cmd: str | None = None

    def __reduce__(self) -> Any:
        return (
            _rebuild_spawn_error,
            (self.errno, self.strerror, self.filename, self.syscall, self.spawnargs, self.cmd),
        )


def _rebuild_spawn_error(
    err: int,
    strerror: str,
    filename: str | None,
    syscall: str,
    spawnargs: list[str],
    cmd: str | None = None,
) -> SpawnError:
    error = oserror_class(SpawnError, err)(
        err, strerror, filename, syscall=syscall, spawnargs=spawnargs
    )
    error.cmd = cmd
    return error


_OSERROR_CLASSES: dict[tuple[type, int], type] = {}


def oserror_class(base: type, err: int) -> type:
    """``base`` combined with the builtin ``OSError`` subclass for ``err``.

    ``oserror_class(SpawnError, errno.ENOENT)`` is a class that is both a ``SpawnError``
    and a ``FileNotFoundError``; errnos without a builtin subclass give ``base`` itself.
    """
    key = (base, err)
    cls = _OSERROR_CLASSES.get(key)
    if cls is None:
        builtin = type(OSError(err, ""))
        if builtin is OSError:
            cls = base
        else:
            cls = type(base.__name__, (base, builtin), {"__module__": base.__module__})
            cls.__qualname__ = base.__qualname__
        _OSERROR_CLASSES[key] = cls
    return cls


class ExecError(PyforkdError, subprocess.CalledProcessError):
    """A command run by the exec family failed: non-zero exit, a signal, or a timeout.

    Besides ``returncode``, ``cmd``, ``stdout`` and ``stderr`` (as in
    ``subprocess.CalledProcessError``) it carries Node's fields: ``code`` (the exit code, or
    None when a signal ended the child), ``signal`` (``"SIGTERM"`` or None), ``killed``
    (True when pyforkd killed it, after a timeout or max_buffer), and ``pid``.
    """

    def __init__(
        self,
        returncode: int,
        cmd: Any,
        output: Any = None,
        stderr: Any = None,
        *,
        killed: bool = False,
        signal: str | None = None,
        pid: int | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(returncode, cmd, output, stderr)
        self.code: int | str | None = returncode if returncode >= 0 else None
        self.signal: str | None = signal
        self.killed: bool = killed
        self.pid: int | None = pid
        self.timeout: float | None = timeout

    def __str__(self) -> str:
        if self.timeout is not None and self.killed:
            return (
                f"Command {self.cmd!r} timed out after {self.timeout:g} seconds "
                f"and was killed with {self.signal}"
            )
        return super().__str__()

    def __reduce__(self) -> Any:
        return (
            _rebuild_exec_error,
            (type(self), self.returncode, self.cmd, self.stdout, self.stderr, self.__dict__),
        )


def _rebuild_exec_error(
    cls: type[ExecError],
    returncode: int,
    cmd: Any,
    stdout: Any,
    stderr: Any,
    state: dict[str, Any],
) -> ExecError:
    err = cls.__new__(cls)
    subprocess.CalledProcessError.__init__(err, returncode, cmd, stdout, stderr)
    err.__dict__.update(state)
    return err


class MaxBufferError(ExecError):
    """A stream went over ``max_buffer``: the child was killed.

    ``stdout`` and ``stderr`` hold what was read; the stream that went over is cut at
    ``max_buffer`` bytes, or characters once decoded with an ``encoding`` (as in Node);
    ``code`` is Node's ``"ERR_CHILD_PROCESS_STDIO_MAXBUFFER"`` (``returncode`` has the status);
    ``stream`` names the stream that went over (``"stdout"`` or ``"stderr"``).
    """

    def __init__(
        self,
        returncode: int,
        cmd: Any,
        output: Any = None,
        stderr: Any = None,
        *,
        stream: str = "stdout",
        max_buffer: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(returncode, cmd, output, stderr, **kwargs)
        self.code = "ERR_CHILD_PROCESS_STDIO_MAXBUFFER"
        self.stream: str = stream
        self.max_buffer: int = max_buffer

    def __str__(self) -> str:
        return f"Command {self.cmd!r}: {self.stream} went over max_buffer ({self.max_buffer} bytes)"


class TimeoutExpired(PyforkdError, subprocess.TimeoutExpired, TimeoutError):
    """``wait(timeout)`` ran out before the child exited; the child is left running.

    It is a ``subprocess.TimeoutExpired`` and a builtin ``TimeoutError``.
    """

    def __init__(self, cmd: Any, timeout: float) -> None:
        subprocess.TimeoutExpired.__init__(self, cmd, timeout)
        self.args = (cmd, timeout)

    def __str__(self) -> str:
        return subprocess.TimeoutExpired.__str__(self)

    def __reduce__(self) -> Any:
        return (type(self), (self.cmd, self.timeout))


class ChannelClosedError(PyforkdError, ConnectionError, EOFError):
    """The channel is closed: by this side, or by the peer (which may have died).

    Also a ``ConnectionError`` and an ``EOFError`` (what ``multiprocessing`` raises), never
    a ``BrokenPipeError``.
    """


class FrameError(PyforkdError, ValueError):
    """The peer sent something malformed.

    A bad frame header, a length over the limit, a descriptor count that does not match,
    undecodable data, or invalid JSON from Node.  The channel is closed when this is
    raised, and every descriptor that came with the bad data is closed.
    """


class PicklingError(PyforkdError, TypeError, pickle.PicklingError):
    """A message, argument or result cannot be pickled.

    Also a ``TypeError`` and a ``pickle.PicklingError`` (what ``ProcessPoolExecutor``
    raises), so code written for either catches it.  Nothing was sent.
    """


class WorkerError(PyforkdError, RuntimeError):
    """A worker's target raised, or the worker died before returning.

    ``exc_type`` is the remote exception's qualified type name, ``exc_message`` its text,
    ``remote_traceback`` the formatted traceback from the worker, ``exception`` the remote
    exception itself when it could be pickled (else None), ``exitcode`` the worker's
    return code when it died without an answer.
    """

    def __init__(
        self,
        exc_type: str,
        exc_message: str,
        remote_traceback: str = "",
        exception: BaseException | None = None,
        exitcode: int | None = None,
    ) -> None:
        super().__init__(exc_type, exc_message)
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.remote_traceback = remote_traceback
        self.exception = exception
        self.exitcode = exitcode

    def __str__(self) -> str:
        text = f"{self.exc_type}: {self.exc_message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback (most recent call last):\n" + self.remote_traceback
        return text

    def __reduce__(self) -> Any:
        return (
            type(self),
            (self.exc_type, self.exc_message, self.remote_traceback, self.exception, self.exitcode),
        )
