"""The thin binding layer: one function per C call, and the only module that calls ``lib``.

Each function takes and returns plain Python values.  A negative return from C becomes an
``OSError`` of the builtin subclass for its errno, with ``"<syscall>: <message>"`` as its
text; callers never see raw codes.  Blocking calls release the GIL (cffi does that for
every call) and report an interrupted wait as ``None`` so that the caller can let Python
run its signal handlers (Ctrl-C) and call again.
"""

from __future__ import annotations

import errno as _errno
import functools
import mmap
import os
import select
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ._core import ffi
from ._core import lib as _lib
from .errors import ChannelClosedError, FrameError, SpawnError, oserror_class

lib: Any = _lib

__all__ = [
    "STDIO_CLOSE",
    "STDIO_IGNORE",
    "STDIO_INHERIT",
    "STDIO_INHERIT_SAME",
    "STDIO_PIPE",
    "WINDOWS",
    "Collector",
    "adopt",
    "close_native",
    "describe",
    "err_name",
    "native",
    "process_kill",
    "process_open",
    "process_reap",
    "process_wait",
    "raise_errno",
    "spawn",
    "strerror",
]

STDIO_INHERIT: int = lib.PFD_STDIO_INHERIT
STDIO_PIPE: int = lib.PFD_STDIO_PIPE
STDIO_IGNORE: int = lib.PFD_STDIO_IGNORE
STDIO_CLOSE: int = lib.PFD_STDIO_CLOSE
STDIO_INHERIT_SAME: int = lib.PFD_STDIO_INHERIT_SAME
STDIO_CHANNEL: int = lib.PFD_STDIO_CHANNEL

SPAWN_SETSID: int = lib.PFD_SPAWN_SETSID
SPAWN_SETUID: int = lib.PFD_SPAWN_SETUID
SPAWN_SETGID: int = lib.PFD_SPAWN_SETGID
SPAWN_PDEATHSIG: int = lib.PFD_SPAWN_PDEATHSIG
SPAWN_USE_POSIX_SPAWN: int = lib.PFD_SPAWN_USE_POSIX_SPAWN
SPAWN_USE_FORK_PATH: int = lib.PFD_SPAWN_USE_FORK_PATH
SPAWN_HIDE: int = lib.PFD_SPAWN_HIDE
SPAWN_VERBATIM: int = lib.PFD_SPAWN_VERBATIM
SPAWN_ASYNC_PIPES: int = lib.PFD_SPAWN_ASYNC_PIPES

# On Windows the C core's "descriptors" are the system's HANDLE values, not the C runtime's
# descriptors that os.open and open() use: the three functions below convert at the edge,
# so the rest of the package keeps one vocabulary (an int it owns and closes).
WINDOWS: bool = sys.platform == "win32"

if sys.platform == "win32":
    import _winapi
    import msvcrt

    def native(fd: int) -> int:
        """The system handle behind C runtime descriptor ``fd`` (``OSError`` EBADF)."""
        return int(msvcrt.get_osfhandle(fd))

    def adopt(handle: int, writable: bool) -> int:
        """A C runtime descriptor that takes ``handle`` over (closing it closes the handle).

        The core forgets what it kept for the handle (it no longer sees it closed).  (The
        C runtime keeps no access mode for it: ``writable`` is for POSIX's sake.)
        """
        del writable
        fd = int(msvcrt.open_osfhandle(handle, 0))
        lib.pfd_fd_release(handle)
        return fd

    def take_inherited(fd: int) -> int:
        """The handle behind inherited descriptor ``fd``, made this process's own.

        A copy that children do not inherit; the descriptor (and its handle) is closed.
        """
        this = _winapi.GetCurrentProcess()
        handle = int(
            _winapi.DuplicateHandle(this, native(fd), this, 0, False, _winapi.DUPLICATE_SAME_ACCESS)
        )
        os.close(fd)
        return handle

    def close_native(handle: int) -> None:
        """Close a handle the C core gave out (a pipe end, a process handle).

        What the core keeps for it goes too (pfd_fd_close).
        """
        r = lib.pfd_fd_close(handle)
        if r < 0:
            raise_errno(r, "CloseHandle")

    def dup_native(handle: int) -> int:
        """A second handle to what ``handle`` is, not inherited by children."""
        this = _winapi.GetCurrentProcess()
        try:
            copy = _winapi.DuplicateHandle(
                this, handle, this, 0, False, _winapi.DUPLICATE_SAME_ACCESS
            )
        except OSError as exc:
            code = _errno.EBADF if exc.winerror == 6 else _errno.EINVAL  # INVALID_HANDLE
            raise OSError(code, f"DuplicateHandle: {exc.strerror}") from None
        return int(copy)

    def map_shared(fd: int, size: int) -> Any:
        """A writable buffer over ``size`` bytes of the shared memory behind ``fd``.

        (A view of the section; it is unmapped with the last reference to the buffer, so
        that a memoryview still alive keeps it mapped.)
        """
        out = ffi.new("void **")
        r = lib.pfd_shm_map(fd, size, out)
        if r < 0:
            raise_errno(r, "MapViewOfFile")
        view = ffi.gc(out[0], _unmap_view, size)
        return ffi.buffer(view, size)

    def _unmap_view(view: Any) -> None:
        _lib.pfd_shm_unmap(view, 0)

    def unmap_shared(mapping: Any) -> None:
        """Let go of what :func:`map_shared` gave (the view goes with its last user)."""
        del mapping

    def fresh_pages(size: int) -> mmap.mmap:
        """``size`` bytes of new private memory (zero pages, no zero-filling pass)."""
        return mmap.mmap(-1, size)

    def pipe_readable(fd: int) -> bool:
        """Whether a read of pipe descriptor ``fd`` returns at once (data, or the end)."""
        try:
            available = _winapi.PeekNamedPipe(native(fd), 0)[0]
        except OSError:
            return True  # broken: the writer is gone, a read says so
        return bool(available)

else:

    def native(fd: int) -> int:
        """The descriptor the C core takes for ``fd``: itself, on POSIX."""
        return fd

    def adopt(handle: int, writable: bool) -> int:
        """The descriptor for one the C core gave out: itself, on POSIX."""
        del writable
        return handle

    def close_native(handle: int) -> None:
        """Close a descriptor the C core gave out."""
        os.close(handle)

    def dup_native(handle: int) -> int:
        """A second descriptor for what ``handle`` is (close-on-exec)."""
        return os.dup(handle)

    def map_shared(fd: int, size: int) -> Any:
        """A writable shared mapping of ``size`` bytes of ``fd`` (an ``mmap``)."""
        return mmap.mmap(fd, size)

    def unmap_shared(mapping: Any) -> None:
        """Unmap what :func:`map_shared` gave (``BufferError`` while views of it live)."""
        mapping.close()

    def fresh_pages(size: int) -> mmap.mmap:
        """``size`` bytes of new private memory (zero pages, no zero-filling pass)."""
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def pipe_readable(fd: int) -> bool:
        """Whether a read of pipe descriptor ``fd`` returns at once (data, or the end)."""
        return bool(select.select([fd], [], [], 0)[0])


_CHARS = ffi.typeof("char[]")
_POINTERS = ffi.typeof("char *[]")
_OPTIONS = ffi.typeof("pfd_spawn_options_t *")
_STDIO = ffi.typeof("pfd_stdio_t[]")
_RESULT = ffi.typeof("pfd_spawn_result_t *")
_INT2 = ffi.typeof("int[2]")

# The syscall to name for each step of pfd_spawn; None means the program itself.
_STEP_SYSCALL: dict[int, str | None] = {
    lib.PFD_STEP_RESOLVE: None,
    lib.PFD_STEP_EXEC: None,
    lib.PFD_STEP_PIPE: "pipe",
    lib.PFD_STEP_FORK: "fork",
    lib.PFD_STEP_SETSID: "setsid",
    lib.PFD_STEP_PDEATHSIG: "prctl(PR_SET_PDEATHSIG)",
    lib.PFD_STEP_STDIO: "dup2",
    lib.PFD_STEP_SETGROUPS: "setgroups",
    lib.PFD_STEP_SETGID: "setgid",
    lib.PFD_STEP_SETUID: "setuid",
    lib.PFD_STEP_CHDIR: "chdir",
}
if WINDOWS:
    _STEP_SYSCALL.update(
        {
            lib.PFD_STEP_PIPE: "CreateNamedPipeW",
            lib.PFD_STEP_FORK: "CreateProcessW",
            lib.PFD_STEP_STDIO: "DuplicateHandle",
        }
    )


def err_name(err: int) -> str:
    """The symbolic name of an errno value of either sign (``"ENOENT"``)."""
    return ffi.string(_lib.pfd_err_name(_TO_C.get(abs(err), abs(err)))).decode("ascii")


def strerror(err: int) -> str:
    """The message for an errno value of either sign.

    Its name where the C runtime has no message (Windows' knows only the oldest codes).
    """
    text = ffi.string(_lib.pfd_strerror(_TO_C.get(abs(err), abs(err)))).decode("utf-8", "replace")
    if text.startswith("Unknown error") and err_name(err) != "UNKNOWN":
        return err_name(err)
    return text


def describe(err: int) -> str:
    """An errno value of either sign for a message: its name and its text.

    ``"ENOENT (No such file or directory)"``; the name alone where there is no text.
    """
    name, text = err_name(err), strerror(err)
    if name == "UNKNOWN":
        return text
    return name if text == name else f"{name} ({text})"


# The C core's errno values are its C runtime's.  On Windows Python's errno module differs
# for the socket errors (errno.ETIMEDOUT is WSAETIMEDOUT, 10060, where the C runtime says
# 138): there every -errno the core returns is translated by name into Python's number,
# and back for the messages, so that this module and its callers compare with errno.X.
_TO_C: dict[int, int] = {}
if WINDOWS:
    _TO_PY: dict[int, int] = {}
    for _code in range(1, 256):
        _name = ffi.string(_lib.pfd_err_name(_code)).decode("ascii")
        _py = getattr(_errno, _name, None)
        if _py is not None and _py != _code:
            _TO_PY[_code] = _py
            _TO_C[_py] = _code

    class _TranslatedLib:
        """``lib`` with every negative int return translated into Python's errno."""

        def __getattr__(self, name: str) -> Any:
            value = getattr(_lib, name)
            if callable(value) and name.startswith("pfd_"):
                c_function = value

                def value(*args: Any) -> Any:
                    r = c_function(*args)
                    if type(r) is int and r < 0:
                        return -_TO_PY.get(-r, -r)
                    return r

            setattr(self, name, value)
            return value

    lib = _TranslatedLib()


def raise_errno(err: int, syscall: str, filename: str | None = None) -> NoReturn:
    """Raise the ``OSError`` subclass for ``-err`` as ``"<syscall>: ENAME (<message>)"``."""
    code = -err if err < 0 else err
    raise OSError(code, f"{syscall}: {describe(code)}", filename)


def spawn(
    file: bytes,
    argv: Sequence[bytes],
    envp: Sequence[bytes] | None,
    cwd: bytes | None,
    stdio: Sequence[tuple[int, int]],
    flags: int,
    uid: int,
    gid: int,
    pdeathsig: int,
    *,
    name: str,
    spawnargs: Sequence[str],
    cwd_text: str | None,
    verb: str = "spawn",
) -> tuple[int, list[int]]:
    """Start a program (``pfd_spawn``); return ``(pid, fds)``.

    ``fds[i]`` is the parent's end of slot i when that slot is a pipe, else -1.  Failure
    raises :class:`SpawnError` naming the step that failed (``syscall``) and its path.
    """
    new = ffi.new
    keep = [new(_CHARS, a) for a in argv]
    keep.append(ffi.NULL)
    options = new(_OPTIONS)
    # Every cdata below stays referenced by a local until pfd_spawn has returned.
    c_file = keep[0] if file == argv[0] else new(_CHARS, file)
    options.file = c_file
    options.argv = c_argv = new(_POINTERS, keep)
    if envp is not None:
        env_keep = [new(_CHARS, e) for e in envp]
        env_keep.append(ffi.NULL)
        options.envp = c_envp = new(_POINTERS, env_keep)  # noqa: F841 - kept alive
    if cwd is not None:
        options.cwd = c_cwd = new(_CHARS, cwd)  # noqa: F841 - kept alive
    given = stdio
    if WINDOWS:
        stdio = [_native_slot(i, kind, fd) for i, (kind, fd) in enumerate(stdio)]
    options.stdio = c_stdio = new(_STDIO, stdio)
    options.stdio_count = len(stdio)
    options.flags = flags
    options.uid = uid
    options.gid = gid
    options.pdeathsig = pdeathsig
    result = new(_RESULT)
    err = lib.pfd_spawn(options, result)
    del c_file, c_argv
    if err < 0:
        if result.step == lib.PFD_STEP_STDIO and err == -_errno.EBADF:
            slot = result.slot
            raise ValueError(f"stdio[{slot}]: descriptor {given[slot][1]} is not open")
        _raise_spawn_error(-err, result.step, result.slot, f"{verb} {name}", spawnargs, cwd_text)
    piped = (STDIO_PIPE, STDIO_CHANNEL)
    return result.pid, [c_stdio[i].fd if k in piped else -1 for i, (k, _) in enumerate(stdio)]


def _native_slot(slot: int, kind: int, fd: int) -> tuple[int, int]:
    # Windows: a descriptor given for a slot is passed on as its handle, looked up here
    # (in the C runtime Python uses: the core's own runtime has another descriptor table).
    if kind == STDIO_INHERIT_SAME:
        try:
            handle = native(fd)
        except OSError:
            return STDIO_CLOSE, -1  # what the parent has, closed included
        return (STDIO_INHERIT, handle) if handle >= 0 else (STDIO_CLOSE, -1)
    if kind != STDIO_INHERIT:
        return kind, fd
    try:
        handle = native(fd)
    except OSError:
        handle = -1
    if handle < 0:  # (-2: a standard descriptor of a process without a console)
        raise ValueError(f"stdio[{slot}]: descriptor {fd} is not open")
    return kind, handle


def _raise_spawn_error(
    err: int,
    step: int,
    slot: int,
    what: str,
    spawnargs: Sequence[str],
    cwd: str | None,
) -> NoReturn:
    # what: Node's syscall for the program itself ("spawn ls", "spawnSync ls")
    name = what.split(" ", 1)[1]
    step_syscall = _STEP_SYSCALL.get(step, "spawn")
    path: str | None
    if step == lib.PFD_STEP_BATCH:  # Windows
        syscall, path = what, name
        text = (
            f"{what}: a .bat/.cmd program runs only with shell=True (cmd.exe parses "
            "its command line by rules no argument quoting makes safe: CVE-2024-27980)"
        )
    elif step_syscall is None:
        syscall, path, text = what, name, f"{what}: {describe(err)}"
    elif step == lib.PFD_STEP_CHDIR:
        syscall, path, text = step_syscall, cwd, f"{what}: chdir: {describe(err)}"
    else:
        syscall, path = step_syscall, None
        where = f" (stdio[{slot}])" if slot >= 0 else ""
        text = f"{what}: {syscall}{where}: {describe(err)}"
    cls = oserror_class(SpawnError, err)
    raise cls(err, text, path, syscall=syscall, spawnargs=spawnargs)


def process_open(pid: int) -> int:
    """A descriptor that becomes readable when the child exits, or -1 where there is none."""
    r = lib.pfd_process_open(pid)
    if r == -_errno.ENOSYS:
        return -1
    if r < 0:
        raise_errno(r, "DuplicateHandle" if WINDOWS else "pidfd_open")
    return r


def _waited(r: int, syscall: str) -> bool | None:
    """A C wait's result: True ready, False timed out, None when a signal came first."""
    if r >= 0:
        return r == 1
    if r == -_errno.EINTR:
        return None
    raise_errno(r, syscall)


def process_wait(pid: int, handle: int, timeout_ms: int) -> bool | None:
    """Wait for the child's exit without reaping it: True, False on timeout, None on EINTR."""
    return _waited(lib.pfd_process_wait(pid, handle, timeout_ms), "waitid")


def process_reap(pid: int) -> tuple[int, int] | None:
    """Reap the child if it exited: ``(exit_code, term_signal)`` (-1, N when killed by N)."""
    out = ffi.new(_INT2)
    r = lib.pfd_process_reap(pid, out, out + 1)
    if r < 0:
        raise_errno(r, "waitpid")
    return (out[0], out[1]) if r == 1 else None


def process_kill(pid: int, handle: int, sig: int) -> bool:
    """Send ``sig``; False when the child is already gone (ESRCH)."""
    r = lib.pfd_process_kill(pid, handle, sig)
    if r == -_errno.ESRCH:
        return False
    if r < 0:
        raise_errno(r, "kill")
    return True


# ---- frames and descriptor passing -------------------------------------------------------

FRAME_HEADER_SIZE: int = lib.PFD_FRAME_HEADER_SIZE
FRAME_MAX_FDS: int = lib.PFD_FRAME_MAX_FDS
FRAME_PICKLE: int = lib.PFD_FRAME_PICKLE
FRAME_JSON: int = lib.PFD_FRAME_JSON
FRAME_RAW: int = lib.PFD_FRAME_RAW
FRAME_CONTROL: int = lib.PFD_FRAME_CONTROL
FRAME_RING: int = lib.PFD_FRAME_RING
FRAME_FLAG_HANDLES: int = lib.PFD_FRAME_FLAG_HANDLES
POLL_IN: int = lib.PFD_POLL_IN
POLL_OUT: int = lib.PFD_POLL_OUT
FD_BLOCK: int = lib.PFD_FD_BLOCK

_FRAME_ERRORS = {
    _errno.EBADMSG: "bad magic (not a pyforkd frame)",
    _errno.EPROTO: "unknown frame version",
    _errno.EINVAL: "unknown kind or flags, or too many descriptors",
    _errno.EMSGSIZE: "message longer than max_message_size",
}


class FrameCodec:
    """Encodes frame headers into a buffer kept for the life of one channel's send side.

    Not thread-safe: a channel uses it under its send lock.
    """

    __slots__ = ("_frame", "header", "header_bytes", "max_length")

    def __init__(self, max_length: int) -> None:
        self._frame = ffi.new("pfd_frame_t *")
        self.header = ffi.new("unsigned char[]", FRAME_HEADER_SIZE)
        self.header_bytes = ffi.buffer(self.header)
        self.max_length = max_length

    def encode(self, kind: int, flags: int, nfds: int, length: int) -> None:
        """Write a header into ``self.header``."""
        f = self._frame
        f.kind, f.flags, f.nfds, f.length = kind, flags, nfds, length
        lib.pfd_frame_encode(f, self.header)


def fd_send(
    sock: int, head: memoryview, body: memoryview, fds: Sequence[int], block: bool
) -> int | None:
    """One sendmsg of head + body: bytes sent, None when it would block (or a signal came)."""
    c_fds = ffi.new("int[]", list(fds)) if fds else ffi.NULL
    with ffi.from_buffer(head) as c_head, ffi.from_buffer(body) as c_body:
        r = lib.pfd_fd_send(
            sock, c_head, head.nbytes, c_body, body.nbytes, c_fds, len(fds),
            FD_BLOCK if block else 0,
        )  # fmt: skip
    if r >= 0:
        return r
    if r in (-_errno.EAGAIN, -_errno.EINTR):
        return None
    raise_errno(r, "sendmsg")


_frame_send = lib.pfd_frame_send
# The channel's send hot path for a bytes payload without descriptors calls the C function
# itself: frame_send_bytes(sock, kind, 0, payload, len(payload), NO_C_FDS, 0, FD_BLOCK),
# then frame_send_failed(r) for r < 0.
frame_send_bytes = lib.pfd_frame_send
NO_C_FDS = ffi.NULL


def frame_send_failed(r: int, fds: Sequence[int] = ()) -> None:
    """Raise what a negative frame_send_bytes result means (nothing: a signal came first).

    A handle closed before it went is a ``ValueError`` naming it, as on Windows (the
    kernel refused the whole message: nothing was sent).
    """
    if r not in (-_errno.EAGAIN, -_errno.EINTR):
        _send_error(r, fds)


def _send_error(r: int, fds: Sequence[int]) -> NoReturn:
    if r == -_errno.EBADF:
        for fd in fds:
            try:
                os.fstat(fd)
            except OSError:
                raise ValueError(f"handle: descriptor {fd} is not open (sendmsg: EBADF)") from None
    raise_errno(r, "sendmsg")


def frame_pack(kind: int, payloads: bytes, lengths: list[int]) -> bytearray:
    """Frames of ``kind`` back to back: the i-th holds the next ``lengths[i]`` bytes."""
    out = bytearray(FRAME_HEADER_SIZE * len(lengths) + len(payloads))
    with ffi.from_buffer(out, require_writable=True) as c_out:
        lib.pfd_frame_pack(c_out, kind, payloads, lengths, len(lengths))
    return out


def frame_send(
    sock: int, kind: int, payload: Any, block: bool, flags: int = 0, fds: Sequence[int] = ()
) -> int | None:
    """One sendmsg of a whole frame (header + ``payload``, ``fds`` on its first byte).

    Returns the bytes sent, header included (fewer than all when a signal or a full buffer
    cut it short), or None when nothing could be sent without waiting.
    """
    c_fds = ffi.new("int[]", fds) if fds else ffi.NULL
    mode = FD_BLOCK if block else 0
    if type(payload) is bytes:  # passed to C as it is, no copy, no buffer object
        r = _frame_send(sock, kind, flags, payload, len(payload), c_fds, len(fds), mode)
    else:
        with ffi.from_buffer(payload) as c_payload:
            size = len(c_payload)
            r = _frame_send(sock, kind, flags, c_payload, size, c_fds, len(fds), mode)
    if r >= 0:
        return r
    if r in (-_errno.EAGAIN, -_errno.EINTR):
        return None
    _send_error(r, fds)


class Receiver:
    """A line-framed (Node) channel's reads: a receive buffer and room for descriptors.

    The buffer starts at 64 KiB, allocated on the first receive (a channel that only sends,
    a worker reporting its result, never pays for it), and grows to 256 KiB, what one read
    of a full socket buffer brings, once a read fills it.  ``recv`` returns a view of the
    buffer, valid until the next call.  Not thread-safe: the channel calls it under its
    receive lock.
    """

    __slots__ = ("_buf", "_c_buf", "_c_fds", "_c_nfds", "_grow", "_size", "_view")

    FIRST_SIZE = 1 << 16
    SIZE = 1 << 18  # the most it grows to (a longer line waits in the decoder)

    def __init__(self) -> None:
        self._c_buf: Any = None
        self._size = 0
        self._grow = False
        self._c_fds = ffi.new("int[]", FRAME_MAX_FDS)
        self._c_nfds = ffi.new("int *")

    def _allocate(self, size: int) -> None:
        self._buf = bytearray(size)
        self._c_buf = ffi.from_buffer(self._buf)
        self._view = memoryview(self._buf)
        self._size = size

    def recv(self, sock: int, block: bool) -> tuple[memoryview, list[int] | None] | None:
        """One recvmsg.

        Returns ``(bytes, descriptors)``: bytes empty at EOF; descriptors None when the
        sender attached more than one message may carry (all closed then).  None when
        nothing is there or a signal came first.
        """
        if self._c_buf is None:
            self._allocate(self.FIRST_SIZE)
        elif self._grow:  # the last read filled the buffer: the peer sends a lot
            self._allocate(self.SIZE)  # (the last view, now consumed, was of the old one)
        r = lib.pfd_fd_recv(
            sock, self._c_buf, self._size, self._c_fds, FRAME_MAX_FDS, self._c_nfds,
            FD_BLOCK if block else 0,
        )  # fmt: skip
        if r < 0:
            if r in (-_errno.EAGAIN, -_errno.EINTR):
                return None
            raise_errno(r, "recvmsg")
        self._grow = r == self._size < self.SIZE
        nfds = self._c_nfds[0]
        fds = [] if nfds == 0 else None if nfds < 0 else ffi.unpack(self._c_fds, nfds)
        return self._view[:r], fds


END = (-1, None)  # FrameReader.next: the stream ended
AGAIN = (-2, None)  # FrameReader.next: no frame is whole yet (or a signal came)

_RX_WHY = {
    lib.PFD_RX_FDS_UNCLAIMED: "descriptors came with a message that declares none",
    lib.PFD_RX_FDS_MIDDLE: "descriptors came in the middle of a message",
    lib.PFD_RX_FDS_TOO_MANY: (
        "the peer attached more descriptors than one message may carry; all were closed"
    ),
    lib.PFD_RX_DESC_NONE: "descriptors came without a description",
    lib.PFD_RX_DESC_SHORT: "a message's handle description is empty or runs past the message",
    lib.PFD_RX_DESC_FLAGS: "unknown handle description flags 0x{got:02x}",
    lib.PFD_RX_DESC_KIND: "unknown handle kind {got_byte!r}",
    lib.PFD_RX_DESC_FILE: "a file's mode or encoding is cut short or not ASCII",
    lib.PFD_RX_DESC_FEWER: "{nfds} descriptors came, fewer are described",
    lib.PFD_RX_DESC_MORE: "{nfds} descriptors came, more are described",
    lib.PFD_RX_DESC_LIST: "{nfds} descriptors came, but not as a list",
}
# Bits of a described frame's flags (FrameReader.next's meta >> 8), parsed by C from the
# description: a list was sent; every handle is a plain descriptor (an Fd).
RX_FLAG_MANY: int = lib.PFD_RX_FLAG_MANY
RX_FLAG_ALL_FD: int = lib.PFD_RX_FLAG_ALL_FD


class FrameReader:
    """One channel's receive side for pyforkd frames: the C state machine (frame.c).

    :meth:`next` returns the next whole frame as ``(meta, payload)``: ``meta`` packs its
    kind, flags and descriptor count (``kind | flags << 8 | nfds << 24``); ``payload`` is a
    view of the receive buffer, valid until the next call (decode it at once); the
    descriptors are then :meth:`fds`.  Not thread-safe: the channel calls it under its
    receive lock.
    """

    __slots__ = ("_batch", "_gen", "_next", "_out", "_rx", "_view")

    BATCH = 256  # frames told by one batch() call

    def __init__(self, max_length: int) -> None:
        rx = lib.pfd_rx_new(max_length)
        if rx == ffi.NULL:
            raise MemoryError("cannot allocate a channel's receive state")
        self._rx = ffi.gc(rx, lib.pfd_rx_free)  # (freed by close, or with this object)
        self._out = ffi.new("pfd_rx_frame_t *")
        self._batch = ffi.new("unsigned long long[]", 3 * self.BATCH)
        self._gen = 0
        self._view = memoryview(b"")
        self._next = _rx_next

    def next(self, sock: int, timeout_ms: int) -> tuple[int, Any]:
        """The next whole frame, reading ``sock`` (-1: read nothing) when none is buffered.

        ``timeout_ms`` < 0 waits for one, 0 takes what is there, > 0 waits at most that
        long.  Returns :data:`AGAIN` when none came in time (or a signal came first),
        :data:`END` once the peer closed the stream.  Raises :class:`FrameError` for a
        malformed stream and ``ChannelClosedError`` for one cut in the middle of a frame
        (every descriptor held is closed then), ``OSError`` for a failed ``recvmsg``.
        """
        r = self._next(self._rx, sock, timeout_ms, self._out)
        if r > 0:
            out = self._out
            if r != self._gen:  # the buffer moved (it grew, or gave back a large room)
                size = ffi.new("size_t *")
                self._view = memoryview(ffi.buffer(lib.pfd_rx_buffer(self._rx, size), size[0]))
                self._gen = r
            start = out.start
            return out.meta, self._view[start : start + out.length]
        if r == 0:
            return END
        if r in (-_errno.EAGAIN, -_errno.EINTR):
            return AGAIN
        self._raise(r)

    def _raise(self, r: int) -> NoReturn:
        out = self._out
        if r == -_errno.EBADF:
            raise ChannelClosedError("the channel is closed")
        if r == -_errno.EPROTO and out.why:
            if out.why == lib.PFD_RX_END_MIDDLE:
                raise ChannelClosedError("the peer closed the channel in the middle of a message")
            if out.why == lib.PFD_RX_FDS_COUNT:
                raise FrameError(
                    f"a message declares {(out.meta >> 24) & 0xFF} descriptors but {out.got} "
                    "came with it"
                )
            got = out.got
            raise FrameError(
                _RX_WHY[out.why].format(
                    got=got, got_byte=bytes([got & 0xFF]), nfds=(out.meta >> 24) & 0xFF
                )
            )
        if -r in _FRAME_ERRORS:
            meta = out.meta
            raise FrameError(
                f"bad frame: {_FRAME_ERRORS[-r]} (kind {meta & 0xFF}, {meta >> 24} "
                f"descriptors, length {out.length})"
            )
        if r == -_errno.EPIPE:
            raise FrameError("the channel's stream broke earlier")
        if r == -_errno.ENOMEM:
            raise MemoryError("cannot grow a channel's receive buffer")
        raise_errno(r, "recvmsg")

    def batch(self, limit: int) -> tuple[memoryview, list[int]]:
        """The whole frames buffered already (up to ``limit``) that carry no descriptors.

        Returns the receive buffer's view and three numbers per frame: its meta, payload
        start and length in that view (valid until the next call).  Reads nothing.
        """
        limit = min(limit, self.BATCH)
        n = lib.pfd_rx_batch(self._rx, self._batch, limit)
        # (The view is current: frames are buffered only after a next() that returned one,
        # which saw the buffer's latest move; a batch reads nothing, so moves nothing.)
        return self._view, ffi.unpack(self._batch, 3 * n) if n else []

    def fds(self) -> list[int]:
        """The descriptors of the frame :meth:`next` returned last (now the caller's)."""
        out = self._out
        return ffi.unpack(out.fds, (out.meta >> 24) & 0xFF)

    def fd(self) -> int:
        """The first descriptor of the frame :meth:`next` returned last (now the caller's)."""
        return self._out.fds[0]

    def described(self) -> list[tuple[int, str, str]]:
        """The handles the frame :meth:`next` returned last describes, as C parsed them.

        ``(kind, mode, encoding)`` per descriptor: kind ``ord('d')``, ``'s'``, ``'g'`` or
        ``'f'``; a file's mode and encoding (ASCII, their lengths checked; what they say is
        the caller's to check), empty strings for the other kinds.
        """
        out = self._out
        specs = [(kind, "", "") for kind in ffi.unpack(out.kinds, (out.meta >> 24) & 0xFF)]
        view = self._view
        for i, (kind, _, _) in enumerate(specs):
            if kind == 0x66:  # b"f": a file's mode, then its encoding
                at = out.texts[i]
                texts = []
                for _ in range(2):
                    texts.append(bytes(view[at + 1 : at + 1 + view[at]]).decode("ascii"))
                    at += 1 + view[at]
                specs[i] = (kind, texts[0], texts[1])
        return specs

    def ready(self) -> bool:
        """Whether a whole frame is buffered (:meth:`next` would not read)."""
        return self._rx != ffi.NULL and bool(lib.pfd_rx_ready(self._rx))

    def close(self) -> None:
        """Free the buffer and close every descriptor held (calls after it: closed)."""
        rx, self._rx = self._rx, ffi.NULL
        self._view = memoryview(b"")
        if rx != ffi.NULL:
            ffi.release(rx)


_rx_next = lib.pfd_rx_next
_ring_read = lib.pfd_ring_read
_ring_write = lib.pfd_ring_write


def fd_pair() -> tuple[int, int]:
    """Two connected channel ends (a socketpair; on Windows a duplex named pipe)."""
    out = ffi.new("int[2]")
    r = lib.pfd_fd_pair(out)
    if r < 0:
        raise_errno(r, "CreateNamedPipeW" if WINDOWS else "socketpair")
    return out[0], out[1]


def fd_peer(fd: int, pid: int) -> None:
    """Name the process at the other end of channel ``fd`` (Windows: handles go there)."""
    r = lib.pfd_fd_peer(fd, pid)
    if r < 0:
        raise_errno(r, "pfd_fd_peer")


def fd_shutdown(sock: int) -> None:
    """Shut a channel down both ways: blocked sends and receives in this process return."""
    r = lib.pfd_fd_shutdown(sock)
    if r < 0:
        raise_errno(r, "shutdown")


def fd_hung_up(sock: int) -> bool:
    """Whether the peer of channel ``sock`` hung up (looked at now, without waiting)."""
    return bool(lib.pfd_fd_wait_hangup(sock, 0) == 1)


def fd_wait(sock: int, events: int, timeout_ms: int) -> bool | None:
    """poll(2) one socket: True ready, False timeout, None when a signal came."""
    return _waited(lib.pfd_fd_wait(sock, events, timeout_ms), "poll")


def process_die_with_parent(sig: int, expected_parent: int) -> bool | None:
    """Arm the parent-death signal.

    Returns True; False when the parent is gone already; None where the system has none.
    """
    r = lib.pfd_process_die_with_parent(sig, expected_parent)
    if r == 0:
        return True
    if r == -_errno.ESRCH:
        return False
    if r == -_errno.ENOTSUP:
        return None
    raise_errno(r, "prctl(PR_SET_PDEATHSIG)")


def process_watch_hangup(sock: int) -> None:
    """End this process (SIGKILL) once the peer of channel ``sock`` hangs up.

    A thread of the C core watches, which never needs the GIL: it acts even while the
    program is stuck in a long C call that holds it.
    """
    r = lib.pfd_process_watch_hangup(sock)
    if r < 0:
        raise_errno(r, "pthread_create (hang-up watch)")


def process_unwatch() -> None:
    """Disarm :func:`process_watch_hangup`: this process leaves its channel on purpose."""
    lib.pfd_process_unwatch()


def process_spare_on_hangup(word: Any) -> None:
    """Make the hang-up watch spare this process while the word at ``word`` is non-zero.

    ``word``: a pointer from :func:`words_pointer`, into memory that lives as long as the
    process.
    """
    lib.pfd_process_spare_on_hangup(word)


def socket_nosigpipe(sock: int) -> None:
    """Make sends on ``sock`` never raise SIGPIPE (macOS needs a socket option)."""
    r = lib.pfd_socket_nosigpipe(sock)
    if r < 0:
        raise_errno(r, "setsockopt(SO_NOSIGPIPE)")


class Collector:
    """Feeds a child's stdin and reads its stdout and stderr at once (``pfd_collect_*``).

    It owns the three descriptors it is given and closes them in :meth:`close`.
    """

    __slots__ = ("_c", "_input")

    def __init__(
        self, in_fd: int, data: bytes | None, out_fd: int, err_fd: int, max_buffer: int
    ) -> None:
        c = ffi.new("pfd_collect_t *")
        c.in_fd = in_fd
        self._input = None
        if data:
            self._input = ffi.from_buffer(data)
            c.input = self._input
            c.input_size = len(data)
        c.out_fd[0] = out_fd
        c.out_fd[1] = err_fd
        c.max_buffer = max_buffer
        self._c = c

    def run(self, timeout_ms: int) -> str:
        """Move data: ``"done"``, ``"timeout"``, ``"overflow"`` or ``"interrupted"``."""
        r = lib.pfd_collect_run(self._c, timeout_ms)
        if r == 0:
            return "done"
        if r == -_errno.ETIMEDOUT:
            return "timeout"
        if r == -_errno.ENOBUFS:
            return "overflow"
        if r == -_errno.EINTR:
            return "interrupted"
        raise_errno(r, "poll")

    @property
    def overflow(self) -> int:
        """0, or 1 / 2 when stdout / stderr went over max_buffer."""
        return self._c.overflow

    def output(self, i: int) -> bytes:
        """What stream i (0 stdout, 1 stderr) produced so far."""
        b = self._c.out[i]
        return ffi.unpack(b.data, b.size) if b.size else b""

    def close(self) -> None:
        """Close the descriptors and free the buffers; safe to call twice."""
        lib.pfd_collect_close(self._c)
        self._input = None


# ---- the shared-memory ring ----------------------------------------------------------------

RING_MIN_CAPACITY: int = lib.PFD_RING_MIN_CAPACITY
RING_HEADER_SIZE: int = lib.PFD_RING_HEADER_SIZE
RING_WAIT_DATA: int = lib.PFD_RING_WAIT_DATA
RING_WAIT_SPACE: int = lib.PFD_RING_WAIT_SPACE
RING_WAIT_STALL: int = lib.PFD_RING_WAIT_STALL


class RingStalled(Exception):
    """A wait for room with RING_WAIT_STALL: the consumer holds every record and sleeps."""


def shm_create(name: str, size: int) -> int:
    """A new anonymous shared memory object of ``size`` bytes; its descriptor."""
    r = lib.pfd_shm_create(name.encode(), size)
    if r < 0:
        raise_errno(r, "memfd_create")
    return int(r)


def shm_size(fd: int) -> int:
    """The size of the shared memory behind ``fd``; ``OSError`` when it is not one."""
    r = lib.pfd_shm_size(fd)
    if r == -_errno.EPERM:
        raise_errno(r, "fcntl(F_GET_SEALS): not sealed against shrinking")
    if r < 0:
        raise_errno(r, "fstat")
    return int(r)


def map_detached(fd: int, size: int) -> Any:
    """A writable buffer over ``size`` bytes of the shared memory behind ``fd``.

    Unlike :func:`map_shared` on POSIX (Python's mmap keeps a duplicate descriptor, which a
    forked child would inherit), the mapping holds no descriptor: once ``fd`` is closed,
    nothing in this process's descriptor table leads to the memory.  It is unmapped with
    the last reference to the buffer.
    """
    out = ffi.new("void **")
    r = lib.pfd_shm_map(fd, size, out)
    if r < 0:
        raise_errno(r, "mmap")
    view = ffi.gc(out[0], lambda address: _lib.pfd_shm_unmap(address, size), size)
    return ffi.buffer(view, size)


def words_pointer(buffer: Any) -> Any:
    """A C ``unsigned long long *`` to the start of a writable buffer (the board's slots).

    Valid while the buffer is.
    """
    return ffi.cast("unsigned long long *", ffi.from_buffer(buffer, require_writable=True))


def ring_size(capacity: int) -> int:
    """Bytes a ring of ``capacity`` needs, or 0 when ``capacity`` is not a valid one."""
    if not 0 <= capacity < 1 << 62:
        return 0
    return int(lib.pfd_ring_size(capacity))


def _check_records(r: int, call: str) -> None:
    """Raise for a negative result of a consumer call: corrupted memory is a FrameError."""
    if r == -_errno.EBADMSG:
        raise FrameError("the ring's shared memory holds no valid record (corrupted)")
    if r < 0:
        raise_errno(r, call)


class RingSide:
    """One side of a ring laid out in ``memory`` (a writable buffer), for this process.

    Offsets, not pointers, go in and out, so that the caller can hand out views of its
    own buffer object (which keeps the memory mapped while a view lives).
    """

    __slots__ = (
        "_base", "_c", "_c_batch", "_c_small", "_data", "_lengths", "_mem", "_offsets", "_ptr",
        "_read_lengths", "batch", "small", "write_bytes",
    )  # fmt: skip

    BATCH = 1 << 16  # read_many() copies up to this much
    BATCH_RECORDS = 256

    SMALL = 4096  # records up to this long are copied out by read()

    def __init__(self, memory: Any, create_capacity: int = 0) -> None:
        self._mem = ffi.from_buffer(memory, require_writable=True)
        self._base = int(ffi.cast("uintptr_t", self._mem))
        self._c = ffi.new("pfd_ring_t *")
        self._ptr = ffi.new("unsigned char **")
        if create_capacity:
            r = lib.pfd_ring_init(self._mem, len(self._mem), create_capacity)
            if r < 0:
                raise_errno(r, "ring init")
        r = lib.pfd_ring_attach(self._c, self._mem, len(self._mem))
        if r == -_errno.EBADMSG:
            raise ValueError("the memory does not hold a pyforkd ring (or it is corrupted)")
        if r == -_errno.EPROTO:
            raise ValueError("the ring was laid out by another pyforkd version")
        if r < 0:
            raise_errno(r, "ring attach")
        self._data = RING_HEADER_SIZE  # where the record space starts in `memory`
        self._offsets = ffi.new("unsigned long long[1]")  # for next(): made once
        self._lengths = ffi.new("unsigned long long[1]")
        self._c_small = ffi.new("unsigned char[]", self.SMALL)
        self.small = memoryview(ffi.buffer(self._c_small))  # where read() copies a record
        self._c_batch: Any = None  # where read_many() copies, made at its first use
        self.batch = memoryview(b"")
        self._read_lengths = ffi.new("unsigned long long[]", self.BATCH_RECORDS)
        # write_bytes(head, head_size, body, body_size) for bytes: the send hot path, one C
        # call with no Python frame around it; 0, -EAGAIN (no room now) or -errno as write.
        self.write_bytes = functools.partial(_ring_write, self._c)

    @property
    def capacity(self) -> int:
        return int(self._c.capacity)

    @property
    def max_record(self) -> int:
        return int(lib.pfd_ring_max_record(self._c))

    def _offset(self, ptr: Any) -> int:
        return int(ffi.cast("uintptr_t", ptr)) - self._base

    def reserve(self, size: int) -> int | None:
        """Offset of ``size`` writable bytes, or None when there is no room now."""
        r = lib.pfd_ring_reserve(self._c, size, self._ptr)
        if r == -_errno.EAGAIN:
            return None
        if r < 0:
            raise_errno(r, "ring reserve")
        return self._offset(self._ptr[0])

    def stage(self, size: int) -> None:
        r = lib.pfd_ring_stage(self._c, size)
        if r < 0:
            raise_errno(r, "ring stage")

    def write(self, head: bytes, body: Any) -> bool:
        """Send ``head`` + ``body`` as one record, published; False when there is no room."""
        r = lib.pfd_ring_write(self._c, head, len(head), ffi.from_buffer(body), len(body))
        if r == 0:
            return True
        if r == -_errno.EAGAIN:
            return False
        raise_errno(r, "ring write")

    def write_many(self, data: bytes, lengths: list[int]) -> int:
        """Write records that lie back to back in ``data``: how many went.

        As many as fit now, in order, published at once (one wake-up for them all).
        """
        r = lib.pfd_ring_write_many(self._c, data, lengths, len(lengths))
        if r < 0:
            raise_errno(r, "ring write")
        return r

    def next(self) -> tuple[int, int] | None:
        """:meth:`peek` without pointer arithmetic (the receive hot path)."""
        r = lib.pfd_ring_peek_many(self._c, self._offsets, self._lengths, 1)
        if r == 1:
            return self._data + self._offsets[0], self._lengths[0]
        _check_records(r, "ring peek")
        return None

    def read(self) -> int:
        """Copy the next record to :attr:`small` and give its room back: its length.

        -1 when there is none yet, -2 when it must be peeked instead (longer than
        :attr:`SMALL`, or records are peeked and not released).  One C call: the receive
        hot path.  ``FrameError`` when the shared memory does not hold a valid record.
        """
        r = _ring_read(self._c, self._c_small, self.SMALL)
        if r >= 0:
            return r
        if r == -_errno.EAGAIN:
            return -1
        if r in (-_errno.ENOSPC, -_errno.EBUSY):
            return -2
        _check_records(r, "ring read")
        return -1  # (not reached: _check_records raised)

    def read_many(self, limit: int) -> list[int]:
        """:meth:`read` for a batch: the lengths of up to ``limit`` records it copied.

        They lie back to back in :attr:`batch`; their room is given back at once.  It
        stops after an empty record.  An empty list when there is none, or when the next
        must be peeked (see :meth:`read`).
        """
        if self._c_batch is None:
            self._c_batch = ffi.new("unsigned char[]", self.BATCH)
            self.batch = memoryview(ffi.buffer(self._c_batch))
        limit = min(limit, self.BATCH_RECORDS)
        r = lib.pfd_ring_read_many(self._c, self._c_batch, self.BATCH, self._read_lengths, limit)
        if r > 0:
            return ffi.unpack(self._read_lengths, r)
        if r in (-_errno.EAGAIN, -_errno.ENOSPC, -_errno.EBUSY):
            return []
        _check_records(r, "ring read")
        return []  # (not reached: _check_records raised)

    def stage_empty(self) -> None:
        """Stage an empty record in the room every reserved record leaves after it."""
        r = lib.pfd_ring_stage_empty(self._c)
        if r < 0:
            raise_errno(r, "ring stage")

    def publish(self) -> None:
        lib.pfd_ring_publish(self._c)
        lib.pfd_ring_notify(self._c, RING_WAIT_DATA)

    def abort(self) -> None:
        lib.pfd_ring_abort(self._c)

    def peek(self) -> tuple[int, int] | None:
        """``(offset, length)`` of the next record, or None when there is none yet.

        ``FrameError`` when the shared memory does not hold a valid record.
        """
        c_ptr = ffi.cast("const unsigned char **", self._ptr)
        r = lib.pfd_ring_peek(self._c, c_ptr)
        if r == -_errno.EAGAIN:
            return None
        _check_records(r, "ring peek")
        return self._offset(self._ptr[0]), int(r)

    def peek_many(self, limit: int) -> list[tuple[int, int]]:
        """``(offset, length)`` of up to ``limit`` records (an empty list when none)."""
        offsets = ffi.new("unsigned long long[]", limit)
        lengths = ffi.new("unsigned long long[]", limit)
        r = lib.pfd_ring_peek_many(self._c, offsets, lengths, limit)
        _check_records(r, "ring peek")
        data = int(ffi.cast("uintptr_t", self._c.data)) - self._base
        return [(data + offsets[i], lengths[i]) for i in range(r)]

    def release(self, count: int) -> None:
        _check_records(lib.pfd_ring_release(self._c, count), "ring release")
        lib.pfd_ring_notify(self._c, RING_WAIT_SPACE)

    def wake(self) -> None:
        """Wake the other side if it sleeps on this ring, for data or for room.

        It then looks at the channel's socket, and sees a hang-up at once.
        """
        lib.pfd_ring_notify(self._c, RING_WAIT_DATA)
        lib.pfd_ring_notify(self._c, RING_WAIT_SPACE)

    def wait(self, what: int, size: int, timeout_ms: int, peer_fd: int) -> bool | None:
        """Wait (GIL released): True ready, False timeout, None when a signal came.

        ``BrokenPipeError`` when ``peer_fd`` shows the other side gone; :class:`RingStalled`
        (only with RING_WAIT_STALL) when the consumer holds all the room and sleeps.
        """
        r = lib.pfd_ring_wait(self._c, what, size, timeout_ms, peer_fd)
        if r == -_errno.EDEADLK:
            raise RingStalled
        return _waited(r, "ring wait")

    @staticmethod
    def record_view(part: memoryview, writable: bool = False) -> tuple[memoryview, Any]:
        """A view of ``part`` through an object of its own, and that object.

        Whatever is made from the view (a slice, a numpy array) keeps that object alive, so
        its reference count tells whether the record is still in use; the object keeps
        ``part``, hence the mapping, alive meanwhile.  Read-only unless ``writable``.
        """
        exporter = ffi.buffer(ffi.from_buffer(part, require_writable=writable))
        view = memoryview(exporter)
        return (view if writable else view.toreadonly()), exporter

    def detach(self) -> None:
        """Drop the buffer export (before the memory is unmapped)."""
        if self._mem is not None:
            ffi.release(self._mem)
            self._mem = None


# ---- the cluster's dispatcher --------------------------------------------------------------


class Dispatcher:
    """The C dispatcher thread over ``listen_fd`` (which stays the caller's to close)."""

    __slots__ = ("_d",)

    def __init__(self, listen_fd: int, max_inflight: int = 0) -> None:
        out = ffi.new("pfd_dispatch_t **")
        r = lib.pfd_dispatch_new(out, listen_fd, max_inflight)
        if r < 0:
            raise_errno(r, "dispatcher")
        self._d: Any = out[0]
        r = lib.pfd_dispatch_start(self._d)
        if r < 0:
            lib.pfd_dispatch_free(self._d)
            self._d = None
            raise_errno(r, "pthread_create")

    def add(self, sock: int) -> int:
        """Hand connections to the worker at the other end of ``sock`` (owned from now on)."""
        r = lib.pfd_dispatch_add(self._d, sock)
        if r < 0:
            raise_errno(r, "dispatcher add")
        return int(r)

    def balance(self, least_connections: bool) -> None:
        """Round-robin (False) or least-connections (True)."""
        mode = lib.PFD_DISPATCH_LEAST_CONN if least_connections else lib.PFD_DISPATCH_ROUND_ROBIN
        lib.pfd_dispatch_balance(self._d, mode)

    def load(self, slot: int, counter: Any) -> None:
        """Where ``slot``'s worker counts its open connections (a cffi pointer it keeps)."""
        if lib.pfd_dispatch_load(self._d, slot, counter) < 0:
            raise_errno(-_errno.ENOENT, "dispatcher load")

    def remove(self, slot: int) -> bool:
        """No more connections for ``slot``; its unacknowledged ones go to the others."""
        return bool(lib.pfd_dispatch_remove(self._d, slot) == 0)

    def stats(self, slot: int) -> tuple[int, int, int, int]:
        """See pfd_dispatch_stats (slot -1: the dispatcher's own counters)."""
        out = ffi.new("unsigned long long[4]")
        r = lib.pfd_dispatch_stats(self._d, slot, out)
        if r < 0:
            raise_errno(r, "dispatcher stats")
        return int(out[0]), int(out[1]), int(out[2]), int(out[3])

    def close(self) -> None:
        """Stop the thread; connections not acknowledged and worker sockets are closed."""
        d, self._d = self._d, None
        if d is not None:
            lib.pfd_dispatch_free(d)

    def __del__(self) -> None:
        self.close()


_SEQ = "unsigned long long *"


def dispatch_take(sock: int, block: bool) -> tuple[int, int] | None:
    """A worker's next connection: ``(fd, seq)``, or None (not blocking, or a signal)."""
    seq = ffi.new(_SEQ)
    r = lib.pfd_dispatch_take(sock, seq, FD_BLOCK if block else 0)
    if r in (-_errno.EAGAIN, -_errno.EINTR):
        return None
    if r < 0:
        raise_errno(r, "recvmsg")
    return int(r), int(seq[0])


def dispatch_ack(sock: int, seqs: list[int]) -> None:
    """Tell the dispatcher this worker has the connections ``seqs`` (one send)."""
    r = lib.pfd_dispatch_ack(sock, seqs, len(seqs))
    if r < 0:
        raise_errno(r, "send")
