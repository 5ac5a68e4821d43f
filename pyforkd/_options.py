"""What spawn and the exec family take, checked, and what they give back.

Shared by :mod:`pyforkd.child_process` and :mod:`pyforkd.aio`: every option is checked here
before any process exists (a clear ``TypeError``/``ValueError`` naming it), signals are
named and numbered, and a collected child's output becomes a :class:`CompletedProcess`
(or the ``ExecError``/``MaxBufferError`` Node's ``execFile`` gives).
"""

from __future__ import annotations

import codecs
import contextvars
import io
import os
import re
import signal as _signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, Union

from . import _bindings as _b
from .errors import ExecError, MaxBufferError

StrOrBytesPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
StdioSlot = Union[str, int, None, IO[Any], socket.socket]
Stdio = Union[str, Sequence[StdioSlot], None]
SignalLike = Union[int, str, _signal.Signals]

DEFAULT_MAX_BUFFER = 1024 * 1024  # Node's maxBuffer default for the exec family
KILL_GRACE = 5.0  # seconds a timed-out child gets after kill_signal before SIGKILL

_STDIO_WORDS = ("pipe", "inherit", "ignore")
_SIGNAL_NUMBERS = {s.name: int(s) for s in _signal.Signals}
if _b.WINDOWS:
    # Windows has no signals to send: kill() ends the child (TerminateProcess) and records
    # the signal asked for, so returncode is -signal as on POSIX.  The names Node accepts
    # there keep their POSIX numbers; CTRL_*_EVENT are console events, not signals.
    for _event in ("CTRL_C_EVENT", "CTRL_BREAK_EVENT"):
        _SIGNAL_NUMBERS.pop(_event, None)
    _SIGNAL_NUMBERS.update({"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGKILL": 9, "SIGTERM": 15})
_SIGNAL_NAMES = {number: name for name, number in _SIGNAL_NUMBERS.items()}
SIGKILL = _SIGNAL_NUMBERS["SIGKILL"]


# ---- option checking: every bad input is refused before a process exists ----------------


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def fsencode(value: Any, what: Any) -> bytes:
    """``value`` as a C string; ``what`` names it in errors (formatted only on error)."""
    if type(value) is str:
        data = value.encode(_FS_ENCODING, _FS_ERRORS)
    elif isinstance(value, bytes):
        data = bytes(value)
    elif isinstance(value, os.PathLike):
        data = os.fsencode(os.fspath(value))
    elif isinstance(value, str):
        data = os.fsencode(value)
    else:
        raise TypeError(
            f"{arg_name(what)} must be str, bytes or os.PathLike, not {type(value).__name__}"
        )
    if b"\0" in data:
        raise ValueError(f"{arg_name(what)} contains a NUL byte: {value!r}")
    return data


def arg_name(what: Any) -> str:
    # An int is an index into args; ("env", key) and ("env key", key) name the environment.
    if isinstance(what, int):
        return f"args[{what}]"
    if isinstance(what, tuple):
        return f"env[{what[1]!r}]" if what[0] == "env" else f"env key {what[1]!r}"
    return str(what)


def as_text(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return os.fsdecode(value) if isinstance(value, bytes) else str(value)


def check_args(args: Any) -> list[Any]:
    if args is None:
        return []
    if isinstance(args, (str, bytes)):
        raise TypeError(
            "args must be a sequence of arguments, not a single "
            f"{type(args).__name__}; use [{args!r}] or shell=True"
        )
    try:
        return list(args)
    except TypeError:
        raise TypeError(
            f"args must be a sequence of arguments, not {type(args).__name__}"
        ) from None


def encode_env(env: Mapping[Any, Any]) -> list[bytes]:
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of str to str, not {type(env).__name__}")
    out = []
    for key, value in env.items():
        if not isinstance(key, (str, bytes)):
            raise TypeError(f"env key {key!r} must be str or bytes, not {type(key).__name__}")
        if not isinstance(value, (str, bytes)):
            raise TypeError(f"env[{key!r}] must be str or bytes, not {type(value).__name__}")
        k = fsencode(key, ("env key", key))
        if not k or b"=" in k:
            raise ValueError(f"env key {key!r} must be non-empty and contain no '='")
        out.append(k + b"=" + fsencode(value, ("env", key)))
    return out


def signal_number(sig: SignalLike, what: str = "signal", allow_zero: bool = False) -> int:
    """The number of a signal given as a number, a ``signal.Signals`` or a name.

    Names may omit the ``SIG`` prefix (``"TERM"``).  Anything else raises ``ValueError``
    (``TypeError`` for a value of the wrong type).
    """
    if isinstance(sig, str):
        number = _SIGNAL_NUMBERS.get(sig)
        if number is not None:
            return number
        name = sig.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name not in _SIGNAL_NUMBERS:
            raise ValueError(f"{what}: unknown signal name {sig!r}")
        return _SIGNAL_NUMBERS[name]
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"{what} must be a signal number or name, not {type(sig).__name__}")
    if sig == 0 and allow_zero:
        return 0
    if sig not in _signal.valid_signals() and sig not in _SIGNAL_NAMES:
        raise ValueError(f"{what}: {sig} is not a valid signal number")
    return int(sig)


def signal_name(signum: int) -> str:
    """``"SIGKILL"`` for 9; ``"SIG<n>"`` for numbers without a name (real-time signals)."""
    name = _SIGNAL_NAMES.get(signum)
    if name is not None:
        return name
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def check_target(target: Any) -> None:
    """``fork_worker``'s target: ``TypeError`` unless it is callable."""
    if not callable(target):
        raise TypeError(f"fork_worker needs a callable target, not {type(target).__name__}")


def check_id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 0 or value >= 2**32 - 1:
        raise ValueError(f"{what} must be between 0 and 2**32-2, got {value}")
    return value


def check_fd(fd: int, slot: int) -> int:
    # Whether it is open is checked in C, at no extra cost, which names the slot too.
    if fd < 0:
        raise ValueError(f"stdio[{slot}]: descriptor {fd} is negative")
    if fd > _MAX_FD:
        raise ValueError(f"stdio[{slot}]: {fd} is past the largest descriptor number ({_MAX_FD})")
    return fd


_MAX_FD = 2**31 - 1  # (a C int)


_WORD_SLOTS = {
    # Precomputed for the common forms; slots 0-2 only.
    "pipe": [(_b.STDIO_PIPE, -1)] * 3,
    # What the parent has, closed included, as fork+exec gives.
    "inherit": [(_b.STDIO_INHERIT_SAME, 0), (_b.STDIO_INHERIT_SAME, 1), (_b.STDIO_INHERIT_SAME, 2)],
    "ignore": [(_b.STDIO_IGNORE, -1)] * 3,
}


def stdio_slots(stdio: Stdio) -> list[tuple[int, int]]:
    """Node's stdio option as (kind, fd) pairs, one per child descriptor."""
    if stdio is None:
        return _WORD_SLOTS["pipe"]
    if isinstance(stdio, str):
        if stdio not in _WORD_SLOTS:
            raise ValueError(
                f"stdio: unknown value {stdio!r}; expected one of {', '.join(_STDIO_WORDS)} "
                "or a list with one entry per descriptor"
            )
        return _WORD_SLOTS[stdio]
    if not isinstance(stdio, (list, tuple)):
        raise TypeError(f"stdio must be a str or a list, not {type(stdio).__name__}")
    entries = list(stdio)
    while len(entries) < 3:  # Node pads to three with the default (a pipe)
        entries.append(None)
    slots = []
    for i, entry in enumerate(entries):
        slots.append(stdio_slot(i, entry))
    return slots


IPC_PIPE = object()  # (Windows: the "ipc" slot, a duplex pipe that spawn makes)
# Set by pyforkd.aio around a spawn: on Windows the parent's pipe ends are then opened for
# overlapped I/O (what asyncio's proactor reads and writes).
async_pipes: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pyforkd_async_pipes", default=False
)


def stdio_slot(i: int, entry: Any) -> tuple[int, int]:
    if entry is IPC_PIPE:
        return (_b.STDIO_CHANNEL, -1)
    if entry is None:  # Node's default: pipes for 0-2, nothing above
        return (_b.STDIO_PIPE, -1) if i <= 2 else (_b.STDIO_IGNORE, -1)
    if isinstance(entry, str):
        if entry == "pipe":
            return (_b.STDIO_PIPE, -1)
        if entry == "ignore":
            return (_b.STDIO_IGNORE, -1)
        if entry == "inherit":
            return (_b.STDIO_INHERIT_SAME, i)
        raise ValueError(
            f"stdio[{i}]: unknown value {entry!r}; expected one of "
            f"{', '.join(_STDIO_WORDS)}, a descriptor, a file object or None"
        )
    if isinstance(entry, bool):
        raise TypeError(f"stdio[{i}]: expected a descriptor or a word, not a bool")
    if isinstance(entry, int):
        return (_b.STDIO_INHERIT, check_fd(entry, i))
    fileno = getattr(entry, "fileno", None)
    if fileno is None:
        raise TypeError(
            f"stdio[{i}]: expected 'pipe', 'inherit', 'ignore', None, a descriptor or an "
            f"object with fileno(), not {type(entry).__name__}"
        )
    if getattr(entry, "closed", False) or (isinstance(entry, socket.socket) and entry.fileno() < 0):
        raise ValueError(f"stdio[{i}]: {entry!r} is closed")
    try:
        fd = fileno()
    except (OSError, ValueError) as exc:
        raise ValueError(f"stdio[{i}]: {entry!r} has no usable descriptor ({exc})") from None
    if isinstance(entry, io.BufferedWriter) or hasattr(entry, "flush"):
        try:
            entry.flush()  # what Python buffered must reach the file before the child writes
        except (OSError, ValueError):
            pass
    return (_b.STDIO_INHERIT, check_fd(fd, i))


_CMD_EXE = re.compile(rb"^(?:.*[\\/])?cmd(?:\.exe)?$", re.IGNORECASE)


def shell_command(shell: bool | StrOrBytesPath, line: bytes) -> tuple[bytes, list[bytes], int]:
    """The program, argv and spawn flags that run ``line`` through the shell, as Node does.

    POSIX: ``/bin/sh -c line``.  Windows: ``%ComSpec%`` (cmd.exe) with ``/d /s /c "line"``
    put on the command line as it is (cmd.exe does its own parsing, which no quoting of
    arguments survives); another shell named there gets ``-c line`` quoted as usual.
    """
    if shell is True:
        path = os.fsencode(os.environ.get("COMSPEC", "cmd.exe")) if _b.WINDOWS else b"/bin/sh"
    else:
        path = fsencode(shell, "shell")
    if _b.WINDOWS and _CMD_EXE.match(path):
        return path, [path, b"/d", b"/s", b"/c", b'"' + line + b'"'], _b.SPAWN_VERBATIM
    return path, [path, b"-c", line], 0


class CompletedProcess(subprocess.CompletedProcess):
    """A finished child: ``args``, ``returncode``, ``stdout``, ``stderr`` (as in subprocess).

    Also ``pid``, ``exit_code`` (None when a signal ended it), ``signal_code``
    (``"SIGTERM"`` or None), ``killed`` (pyforkd killed it: timeout or max_buffer),
    ``output`` (Node's ``[None, stdout, stderr]``).
    """

    def __init__(
        self,
        args: Any,
        returncode: int,
        stdout: Any = None,
        stderr: Any = None,
        *,
        pid: int = 0,
        exit_code: int | None = None,
        signal_code: str | None = None,
        killed: bool = False,
    ) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.pid = pid
        self.exit_code = exit_code
        self.signal_code = signal_code
        self.killed = killed

    @property
    def status(self) -> int | None:
        """Node's name for ``exit_code``."""
        return self.exit_code

    @property
    def output(self) -> list[Any]:
        """Node's ``[stdin, stdout, stderr]`` (stdin is always None)."""
        return [None, self.stdout, self.stderr]


# Defined here for the asyncio side too; users know it as pyforkd.child_process's (and pickles
# name it so).
CompletedProcess.__module__ = "pyforkd.child_process"


def decoded_output(data: bytes, encoding: str | None, errors: str, cut: bool, limit: int) -> Any:
    """A stream as handed back: bytes, or text with ``encoding``.

    ``cut``: the child was stopped (timeout, max_buffer), so the text may end inside a
    character: that tail is dropped, not an error.  ``limit`` (> 0 only for the stream
    that went over max_buffer): as Node, at most that many bytes, or characters once
    decoded.
    """
    if encoding is None or encoding == "buffer":
        return data[:limit] if limit else data
    if not cut:
        return data.decode(encoding, errors)
    text = codecs.getincrementaldecoder(encoding)(errors).decode(data)  # (not final)
    return text[:limit] if limit else text


def check_max_buffer(max_buffer: Any) -> int:
    if max_buffer is None:
        return 0
    if isinstance(max_buffer, bool) or not isinstance(max_buffer, int):
        raise TypeError(f"max_buffer must be an int or None, not {type(max_buffer).__name__}")
    if max_buffer <= 0:
        raise ValueError(f"max_buffer must be > 0 (or None for no limit), got {max_buffer}")
    return max_buffer


def check_input(data: Any, encoding: str | None) -> bytes | None:
    if data is None:
        return None
    if isinstance(data, str):
        return data.encode(encoding if encoding and encoding != "buffer" else "utf-8")
    try:
        return bytes(memoryview(data))
    except TypeError:
        raise TypeError(f"input must be bytes-like or str, not {type(data).__name__}") from None


def completed(
    args: list[str],
    child: Any,
    out: bytes,
    err: bytes,
    state: str,
    overflow: int,
    limit: int,
    encoding: str | None,
    errors: str,
) -> CompletedProcess:
    """The CompletedProcess of a reaped child from what its pipes gave (sync and asyncio)."""
    cut = state != "done"
    return CompletedProcess(
        args,
        child.returncode,
        decoded_output(out, encoding, errors, cut, limit if overflow == 1 else 0),
        decoded_output(err, encoding, errors, cut, limit if overflow == 2 else 0),
        pid=child.pid,
        exit_code=child.exit_code,
        signal_code=child.signal_code,
        killed=child.killed,
    )


def raise_for(
    result: CompletedProcess,
    state: str,
    overflow: int,
    max_buffer: Any,
    timeout: float | None,
    cmd: str,
) -> None:
    r = result
    if state == "overflow":
        raise MaxBufferError(
            r.returncode, cmd, r.stdout, r.stderr,
            stream="stdout" if overflow == 1 else "stderr", max_buffer=max_buffer,
            killed=r.killed, signal=r.signal_code, pid=r.pid,
        )  # fmt: skip
    if state == "timeout" and r.killed:
        raise ExecError(
            r.returncode, cmd, r.stdout, r.stderr,
            killed=r.killed, signal=r.signal_code, pid=r.pid, timeout=timeout,
        )  # fmt: skip
    # A child that exited on its own before the timeout is judged by its status, even when
    # a descendant held its pipes past the timeout (as Node).
    if r.returncode != 0:
        raise ExecError(
            r.returncode, cmd, r.stdout, r.stderr,
            killed=r.killed, signal=r.signal_code, pid=r.pid,
        )  # fmt: skip


def cmd_text(parts: Iterable[Any]) -> str:
    """Node's ``err.cmd``: the program and its arguments joined by spaces."""
    return " ".join(as_text(p) for p in parts)
