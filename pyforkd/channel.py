"""Channel: messages and handles between two processes over a connected socket.

Two framings share one class:

- ``"pyforkd"`` binary frames (default between pyforkd processes): a 16-byte header
  (``csrc/common/frame.c``) and the payload, pickled (protocol 5), JSON or raw bytes.
  Sockets, files and :class:`Fd` descriptors ride beside the bytes (SCM_RIGHTS) and arrive
  as objects of the same kind.
- ``"node"``: Node.js's ``'json'`` IPC framing, one compact JSON document per line, so that
  a Node parent or child is the other end.

Every send either writes the whole message or raises before writing anything (a message
that cannot be encoded, is too large, or whose handle is closed); sends from several
threads never interleave; ``send`` blocks while the peer's buffer is full (``timeout``
bounds that).  Anything malformed from the peer raises :class:`FrameError`, closes every
descriptor that came with it and closes the channel; a vanished peer raises
:class:`ChannelClosedError`.  Nothing raises ``BrokenPipeError`` or ``SIGPIPE``.
"""

from __future__ import annotations

import _socket
import collections
import io
import json
import math
import os
import pickle
import socket
import stat
import struct
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import Any, NoReturn, Union

if sys.platform != "win32":
    import resource

from . import _bindings as _b
from . import _json
from ._checks import check_encoding as _check_encoding
from ._checks import deadline as _deadline
from .errors import ChannelClosedError, FrameError, PicklingError
from .ring import Ring

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "Channel", "Fd"]

DEFAULT_MAX_MESSAGE_SIZE = 256 << 20
_SERIALIZATIONS = ("pickle", "json", "raw")
_FRAMINGS = ("pyforkd", "node")
_KIND = {"pickle": _b.FRAME_PICKLE, "json": _b.FRAME_JSON, "raw": _b.FRAME_RAW}
_META_LEN = struct.Struct("<I")
_NO_FDS: list[Any] = []  # shared, never modified
_BIG_FRAME = 1 << 18  # frames larger than this (the receive buffer) get a buffer of their own
_BIG_FIRST = 1 << 20  # which starts this large and doubles as the bytes come, up to the frame
_BIG_KEEP = 16 << 20  # and such a buffer up to this size is kept for the next one


def _held_fds_limit() -> int:
    """How many received descriptors a channel holds unread before it refuses more.

    A quarter of this process's descriptor limit (and never fewer than one message may
    carry): a peer must not be able to use up the descriptors the program needs.
    """
    if sys.platform == "win32":
        soft = 2048  # (no RLIMIT_NOFILE: the C runtime's limit is of this order)
    else:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < 0:  # RLIM_INFINITY
            soft = 1 << 18
    return max(_b.FRAME_MAX_FDS, min(soft // 4, 1 << 16))


_MAX_HELD_FDS = _held_fds_limit()


class Fd:
    """A raw file descriptor to send as a handle: ``channel.send(msg, handle=Fd(n))``.

    The receiver gets an ``Fd`` of its own copy.  An ``Fd`` owns its descriptor: ``close()``
    (or the ``with`` block) closes it; ``detach()`` gives the number up without closing.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"Fd() takes a descriptor number, not {type(fd).__name__}")
        if fd < 0:
            raise ValueError(f"Fd(): descriptor {fd} is negative")
        self._fd = fd

    def fileno(self) -> int:
        """The descriptor number; ``ValueError`` once closed or detached."""
        if self._fd < 0:
            raise ValueError("Fd is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        """True once closed or detached."""
        return self._fd < 0

    def detach(self) -> int:
        """Give up ownership and return the number (the caller closes it)."""
        fd, self._fd = self.fileno(), -1
        return fd

    def close(self) -> None:
        """Close the descriptor (a second call does nothing)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Fd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Fd({self._fd})" if self._fd >= 0 else "Fd(closed)"


Handle = Union[socket.socket, io.IOBase, Fd, Ring]


# How the handles of a frame are described (frame flag HANDLES): the payload starts with a
# u32 length and that many bytes: u8 flags (bit 0: a list was sent, not one handle), then per
# descriptor, in order, a kind byte: b"d" pyforkd.Fd, b"s" socket.socket, b"g" a
# pyforkd.Ring (its shared memory), b"f" a file, followed for a file by its mode and its
# encoding (u8 length + ASCII each; encoding empty for a binary file).
_KIND_FD, _KIND_SOCKET, _KIND_RING, _KIND_FILE = 0x64, 0x73, 0x67, 0x66  # b"d" b"s" b"g" b"f"


def _describe(handles: list[Any], many: bool) -> tuple[list[int], bytes]:
    """The descriptors of ``handles`` and their description (see above)."""
    fds: list[int] = []
    out = bytearray(b"\x01" if many else b"\x00")
    for i, handle in enumerate(handles):
        where = f"handle[{i}]" if len(handles) > 1 else "handle"
        if isinstance(handle, Fd):
            fds.append(_native_of(handle.fileno(), where))
            out.append(_KIND_FD)
            continue
        if isinstance(handle, socket.socket):
            if handle.fileno() < 0:
                raise ValueError(f"{where}: the socket is closed")
            fds.append(handle.fileno())
            out.append(_KIND_SOCKET)
            continue
        if isinstance(handle, Ring):
            if handle.closed:
                raise ValueError(f"{where}: the Ring is closed")
            fds.append(handle.fileno())
            out.append(_KIND_RING)
            continue
        if not (isinstance(handle, io.IOBase) or hasattr(handle, "fileno")):
            raise TypeError(
                f"{where}: can send a socket.socket, a file object or pyforkd.Fd, not "
                f"{type(handle).__name__}"
            )
        if getattr(handle, "closed", False):
            raise ValueError(f"{where}: {handle!r} is closed")
        try:
            fds.append(_native_of(handle.fileno(), where))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{where}: {handle!r} has no descriptor ({exc})") from None
        if hasattr(handle, "flush"):
            handle.flush()  # what Python buffered belongs before the receiver's writes
        mode = str(getattr(handle, "mode", "rb"))
        binary = "b" in mode or not isinstance(handle, io.TextIOBase)
        encoding = "" if binary else str(getattr(handle, "encoding", "") or "")
        out.append(_KIND_FILE)
        for text in (mode, encoding):
            data = text.encode("ascii")
            if len(data) > 255:
                raise ValueError(f"{where}: mode or encoding name too long ({text!r})")
            out.append(len(data))
            out += data
    return fds, bytes(out)


def _native_of(fd: int, where: str) -> int:
    """What the C core sends for descriptor ``fd``: itself; on Windows the handle behind it.

    ``ValueError`` naming ``where`` when it is not open.
    """
    try:
        return _b.native(fd)
    except OSError as exc:
        raise ValueError(f"{where}: descriptor {fd} is not open ({exc.strerror})") from None


def _adopted(handle: int, writable: bool) -> int:
    """A descriptor of this process for a received ``handle`` (Windows: the C runtime's).

    The handle is closed when that fails.
    """
    try:
        return _b.adopt(handle, writable)
    except OSError:
        _b.close_native(handle)
        raise


_FILE_MODE_CHARS = frozenset("rwaxbt+")


def _check_file_mode(mode: str) -> None:
    """``ValueError`` unless ``mode`` is one ``open()`` takes (one of r/w/a/x, then b|t, +)."""
    chars = set(mode)
    if (
        not mode
        or len(chars) != len(mode)
        or not chars <= _FILE_MODE_CHARS
        or len(chars & set("rwax")) != 1
        or {"b", "t"} <= chars
    ):
        raise ValueError(f"a file's mode {mode!r} is not one open() takes")


def _parse_description(desc: bytes, count: int) -> tuple[bool, list[tuple[int, str, str]]]:
    """``(many, [(kind, mode, encoding), ...])`` from a handle description.

    Every field is checked before anything is acted on: ``ValueError`` says what is wrong.
    """
    if not desc:
        raise ValueError("empty handle description")
    if desc[0] & ~1:
        raise ValueError(f"unknown handle description flags 0x{desc[0]:02x}")
    many, pos = bool(desc[0] & 1), 1
    specs: list[tuple[int, str, str]] = []
    while pos < len(desc):
        kind = desc[pos]
        pos += 1
        mode = encoding = ""
        if kind == _KIND_FILE:
            texts = []
            for _ in range(2):
                n = desc[pos] if pos < len(desc) else -1
                if n < 0 or pos + 1 + n > len(desc):
                    raise ValueError("a file's description is cut short")
                try:
                    texts.append(desc[pos + 1 : pos + 1 + n].decode("ascii"))
                except UnicodeDecodeError:
                    raise ValueError("a file's mode or encoding is not ASCII") from None
                pos += 1 + n
            mode, encoding = texts
            _check_file_mode(mode)
            if encoding:
                if "b" in mode:
                    raise ValueError(f"a binary file (mode {mode!r}) has no encoding")
                _check_encoding(encoding, what="a file's encoding")
        elif kind not in (_KIND_FD, _KIND_SOCKET, _KIND_RING):
            raise ValueError(f"unknown handle kind {kind!r}")
        specs.append((kind, mode, encoding))
    if len(specs) < count:
        raise ValueError(f"{count} descriptors came, fewer are described")
    if len(specs) > count:
        raise ValueError(f"{count} descriptors came, more are described")
    if not many and count != 1:
        raise ValueError(f"{count} descriptors came, but not as a list")
    return many, specs


def _open_received(fd: int, mode: str, encoding: str) -> Any:
    """A file object over a received descriptor, which it owns from then on.

    Built layer by layer, as ``open()`` does, so that whichever layer fails, the descriptor
    is closed exactly once.  ``ValueError`` when the descriptor cannot be such a file.
    """
    problem: OSError | None = None
    try:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    except OSError as exc:
        is_dir, problem = False, exc
    if is_dir or problem is not None:
        os.close(fd)
        why = "is a directory" if is_dir else f"cannot be used ({problem})"
        raise ValueError(f"a descriptor described as a file {why}")
    raw_mode = mode.replace("b", "").replace("t", "").replace("x", "w")
    try:
        raw = io.FileIO(fd, raw_mode, closefd=True)
    except BaseException:
        os.close(fd)  # (FileIO leaves a descriptor it was given open when it fails)
        raise
    try:
        if "b" in mode and mode[0] == "a" and "+" not in mode:
            return raw  # unbuffered: appends from several processes stay whole
        if "+" in raw_mode:
            if not raw.seekable():
                raise ValueError(f"a file opened {mode!r} must be seekable; this one is not")
            buffered: Any = io.BufferedRandom(raw)
        elif raw_mode[0] == "r":
            buffered = io.BufferedReader(raw)
        else:
            buffered = io.BufferedWriter(raw)
        if "b" in mode:
            return buffered
        text = io.TextIOWrapper(buffered, encoding=encoding or None)
        # What open() reports as the mode, and what a later send describes.
        text.mode = mode  # type: ignore[misc]
        return text
    except BaseException:
        raw.close()
        raise


def _rebuild(fds: list[int], description: Any) -> tuple[list[Any], bool]:
    """Objects for received descriptors as described; they own the descriptors.

    ``ValueError`` for a description that does not match (nothing is left open: the
    descriptors not yet made into objects are the caller's to close, the objects made
    are closed here).
    """
    many, specs = _parse_description(bytes(description), len(fds))
    made: list[Any] = []
    try:
        for i, (kind, mode, encoding) in enumerate(specs):
            fd = fds[i]
            if kind == _KIND_FD:
                fds[i] = -1  # (adopted: closed through the Fd from here on)
                made.append(Fd(_adopted(fd, True)))
            elif kind == _KIND_SOCKET:
                try:
                    made.append(socket.socket(fileno=fd))
                except OSError as exc:
                    why = f"a descriptor described as a socket is not one ({exc})"
                    raise ValueError(why) from None
                fds[i] = -1
            elif kind == _KIND_RING:
                made.append(Ring._from_fd(fd))
                fds[i] = -1
            else:
                fds[i] = -1
                made.append(
                    _open_received(_adopted(fd, mode[0] != "r" or "+" in mode), mode, encoding)
                )
    except BaseException:
        _close_handle(made)
        raise
    fds.clear()
    return made, many


_NODE_PREFIX = "NODE_"
_NODE_MAX_RETRANSMISSIONS = 3  # Node's MAX_HANDLE_RETRANSMISSIONS
_NODE_MAX_ANSWERS = 4096  # answers to a Node peer's queries that wait for it to read
_NODE_SOCKET_TYPES = ("net.Socket", "net.Server", "net.Native", "dgram.Socket", "dgram.Native")


def _is_node_internal(obj: Any) -> bool:
    """Node's isInternal: an object whose ``cmd`` is ``NODE_`` and something more."""
    if not isinstance(obj, dict):
        return False
    cmd = obj.get("cmd")
    return isinstance(cmd, str) and len(cmd) > len(_NODE_PREFIX) and cmd.startswith(_NODE_PREFIX)


def _node_handle_fields(handle: Any) -> tuple[int, dict[str, Any]]:
    """The descriptor and NODE_HANDLE fields for a handle sent to a Node peer.

    Node takes sockets only (a file or a tty descriptor makes it abort), so anything else
    is refused here, before a byte is written.
    """
    if isinstance(handle, socket.socket):
        fd = handle.fileno()
        if fd < 0:
            raise ValueError("handle: the socket is closed")
        sock_type, family = handle.type, handle.family
        listening = bool(handle.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    elif isinstance(handle, Fd):
        fd = handle.fileno()
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ValueError(f"a Node peer accepts only sockets as handles; {handle!r} is not one")
        probe = socket.socket(fileno=fd)  # only to ask; the descriptor stays the Fd's
        try:
            sock_type, family = probe.type, probe.family
            listening = bool(probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        finally:
            probe.detach()
    else:
        raise ValueError(
            f"a Node peer accepts only sockets as handles (a {type(handle).__name__} would "
            "abort it)"
        )
    if sock_type == socket.SOCK_STREAM and family in (
        socket.AF_INET,
        socket.AF_INET6,
        getattr(socket, "AF_UNIX", None),  # (Python on Windows has no AF_UNIX)
    ):
        return fd, {"type": "net.Server" if listening else "net.Socket"}
    if sock_type == socket.SOCK_DGRAM and family in (socket.AF_INET, socket.AF_INET6):
        udp = "udp4" if family == socket.AF_INET else "udp6"
        return fd, {"type": "dgram.Socket", "dgramType": udp}
    raise ValueError(
        "a Node peer accepts TCP, Unix stream and UDP sockets only, not a "
        f"{socket.AddressFamily(family).name}/{socket.SocketKind(sock_type).name} socket"
    )


class _NodeSocket(socket.socket):
    """A socket a Node server handed over: the Node side is told when it closes.

    (Node's ``server.close()`` and ``server.getConnections()`` ask the receiving process
    how many of its connections are still open.)
    """

    _pfd_gone: Any = None

    def _track(self, channel: Channel, key: str) -> None:
        channel._node_socket_opened(key)
        self._pfd_gone = weakref.finalize(self, _node_socket_gone, weakref.ref(channel), key)

    def _real_close(self, _ss: Any = _socket.socket) -> None:  # what close() ends in
        try:
            _ss.close(self)
        finally:
            if self._pfd_gone is not None:
                self._pfd_gone()

    def detach(self) -> int:
        """Give the descriptor up; for Node's count, the connection is closed here."""
        fd = super().detach()
        if self._pfd_gone is not None:
            self._pfd_gone()
        return fd


def _node_socket_gone(channel_ref: Any, key: str) -> None:
    channel = channel_ref()
    if channel is not None:
        channel._node_socket_closed(key)


class _PendingHandle:
    """A handle sent to a Node peer, kept until its NODE_HANDLE_ACK."""

    __slots__ = ("fd", "handle", "line", "nacked", "retransmissions")

    def __init__(self, line: bytes, fd: int, handle: Any) -> None:
        self.line = line
        self.fd = fd
        self.handle = handle  # closed at the ACK (None when the sender keeps it open)
        self.retransmissions = 0
        self.nacked = False


def _fail(why: str) -> NoReturn:
    raise FrameError(why)


def _reason(exc: BaseException) -> str:
    """What a decoder's exception says, for a FrameError (its type when it says nothing)."""
    text = str(exc)
    if isinstance(exc, RecursionError):
        return f"nested too deeply ({text})"
    return text if text else type(exc).__name__


def _close_fds(fds: list[int]) -> None:
    """Close received descriptors (Windows: handles) no object took over."""
    for fd in fds:
        if fd >= 0:
            try:
                _b.close_native(fd)
            except OSError:
                pass  # (not ours to close any more: nothing to give back)
    fds.clear()


class _Decoder:
    """Turns a received byte stream and its descriptor batches into messages.

    ``feed`` takes each recvmsg's bytes and descriptors in order, however the stream was
    split, and appends whole messages to ``ready``.  Anything malformed raises
    :class:`FrameError` after every descriptor held here is closed.  It does no I/O.
    """

    def __init__(self, framing: str, scan: Any, max_length: int, allow_pickle: bool) -> None:
        self.framing = framing
        self.allow_pickle = allow_pickle  # a channel unpickles only when its owner chose pickle
        self.line_scanned = 0  # Node framing: how much of ``pending`` has no newline
        self.held_fds = 0  # descriptors in ``ready`` and ``control``, not yet taken
        # Bytes received while decoded messages waited (see _count_backlog).
        self.backlog = 0
        self.max_unread = 4 * max_length + (64 << 20)
        self.scan = scan  # Receiver.scan: the C frame header check
        self.max_length = max_length
        self.pending = bytearray()  # bytes of a message not whole yet
        self.pending_start = 0  # stream offset of pending[0]
        self.stream_pos = 0  # stream offset of the next byte to arrive
        self.fd_batches: collections.deque[tuple[int, int, list[int]]] = collections.deque()
        # A frame larger than the receive buffer is read straight into one of its own size.
        self.big: bytearray | None = None
        self.big_fill = 0
        self.big_total = 0
        self.spare: bytearray | None = None  # the last large frame's buffer, to use again
        self.big_frame = (0, 0, 0)  # its kind, flags, descriptor count
        self.ready: collections.deque[tuple[Any, Any]] = collections.deque()
        self.control: collections.deque[Any] = collections.deque()  # the channel's own
        # Node framing: internal messages for the channel to act on, and the socket maker
        # ("got", message) for Node's own messages, ("answer", message) for replies to send
        self.node_internal: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        # WeakMethod of (fd, key) -> socket.socket, set by the Channel
        self.node_socket: Any = None
        self.rings = False  # whether FRAME_RING frames are expected (a channel over rings)
        self.ring_setup: list[Any] | None = None  # the rings a set-up frame brought

    def feed(self, chunk: Any, fds: list[int] | None, scan_chunk: Any = None) -> None:
        """Take one recvmsg's bytes and descriptors (None: truncated, already closed).

        ``scan_chunk(offset, size)``, when given, scans frame headers in ``chunk`` itself:
        whole frames are then decoded straight from it, and only a partial one is copied.
        """
        start = self.stream_pos
        self.stream_pos += len(chunk)
        if self.ready or self.control:
            self._count_backlog(len(chunk))
        if fds is None:
            self.discard()
            _fail("the peer attached more descriptors than one message may carry; all were closed")
        if fds:
            self.fd_batches.append((start, self.stream_pos, fds))
        try:
            if self.framing == "node":
                self.pending += chunk
                self._decode_lines()
            elif scan_chunk is not None:
                # A frame begun in an earlier read takes only the bytes it lacks; the frames
                # after it are decoded straight from this read.
                used = self._complete_pending(chunk) if self.pending else 0
                if not self.pending:
                    if used:
                        base = used
                        scan = lambda off, size: scan_chunk(base + off, size)  # noqa: E731
                        used += self._decode_frames(chunk[used:], scan, start + used)
                    else:
                        used = self._decode_frames(chunk, scan_chunk, start)
                    if used < len(chunk):
                        self.pending += chunk[used:]
                    self.pending_start = start + used
                if self.fd_batches:
                    self._check_unclaimed()
            else:
                self.pending += chunk
                used = self._decode_frames(self.pending, self._scan_pending, self.pending_start)
                if used:
                    del self.pending[:used]
                    self.pending_start += used
                if self.fd_batches:
                    self._check_unclaimed()
            if self.framing == "pyforkd" and len(self.pending) >= _b.FRAME_HEADER_SIZE:
                self._start_big()
        except FrameError:
            self.discard()
            raise
        except Exception as exc:  # whatever a payload made the decoders raise
            self.discard()
            raise FrameError(f"cannot decode a message: {_reason(exc)}") from None

    def _complete_pending(self, chunk: Any) -> int:
        """Move from ``chunk`` what the partial frame in ``pending`` lacks, at most.

        The frame is decoded once whole.  Returns how many bytes of ``chunk`` were taken.
        """
        pending = self.pending
        taken = 0
        if len(pending) < _b.FRAME_HEADER_SIZE:
            taken = min(_b.FRAME_HEADER_SIZE - len(pending), len(chunk))
            pending += chunk[:taken]
            if len(pending) < _b.FRAME_HEADER_SIZE:
                return taken
        _, _, _, _, length = self._scan_pending(0, len(pending))  # refuses a bad header
        total = _b.FRAME_HEADER_SIZE + length
        more = min(total - len(pending), len(chunk) - taken)
        pending += chunk[taken : taken + more]
        taken += more
        if len(pending) == total:
            self._decode_frames(pending, self._scan_pending, self.pending_start)
            pending.clear()
            self.pending_start += total
        return taken

    def _start_big(self) -> None:
        """When the partial frame in ``pending`` is large, give it a buffer of its own."""
        _, kind, flags, nfds, length = self._scan_pending(0, len(self.pending))
        total = _b.FRAME_HEADER_SIZE + length
        if total <= _BIG_FRAME:
            return
        # A buffer kept from an earlier large frame is used again: a fresh one costs a page
        # fault per 4 KiB, which for large frames is most of the receive time.  A new one
        # grows as the bytes come: a header alone must not make this process allocate.
        spare, self.spare = self.spare, None
        if spare is not None and len(spare) >= total:
            self.big = spare
        else:
            self.big = bytearray(min(total, max(_BIG_FIRST, 2 * len(self.pending))))
        self.big[: len(self.pending)] = self.pending
        self.big_fill = len(self.pending)
        self.big_total = total
        self.big_frame = (kind, flags, nfds)
        self.pending.clear()  # pending_start stays at the frame's first byte

    def big_room(self) -> memoryview | None:
        """Room for the part of a large frame still to come; None when none is awaited."""
        big = self.big
        if big is None:
            return None
        if self.big_fill == len(big):  # what came so far fills it: twice the size
            big.extend(bytes(min(self.big_total, 2 * len(big)) - len(big)))
        return memoryview(big)[self.big_fill : self.big_total]

    def feed_big(self, count: int, fds: list[int] | None) -> None:
        """``count`` bytes arrived in :meth:`big_room`, with ``fds`` (which must be none)."""
        self.stream_pos += count
        if self.ready or self.control:
            self._count_backlog(count)
        if fds or fds is None:
            _close_fds(fds or [])
            self.discard()
            _fail("descriptors came in the middle of a frame")
        self.big_fill += count
        buf, total = self.big, self.big_total
        assert buf is not None
        if self.big_fill < total:
            return
        self.big = None
        kind, flags, nfds = self.big_frame
        start = self.pending_start
        self.pending_start = start + total
        try:
            fds = self._take_fds(start, nfds) if nfds else []
            with memoryview(buf) as whole, whole[_b.FRAME_HEADER_SIZE : total] as payload:
                self._deliver(kind, flags, payload, fds)
        except FrameError:
            self.discard()
            raise
        except Exception as exc:
            self.discard()
            raise FrameError(f"cannot decode a message: {_reason(exc)}") from None
        if len(buf) <= _BIG_KEEP:
            self.spare = buf

    def _scan_pending(self, offset: int, size: int) -> tuple[int, int, int, int, int]:
        result: tuple[int, int, int, int, int] = self.scan(self.pending, offset, size)
        return result

    def discard(self) -> None:
        """Close every descriptor held, delivered or not, and forget pending bytes."""
        while self.fd_batches:
            _close_fds(self.fd_batches.popleft()[2])
        while self.ready:
            _close_handle(self.ready.popleft()[1])
        # Control messages stay (a worker's outcome is read after its channel broke); their
        # handles go.
        for i, (obj, handle) in enumerate(self.control):
            if handle is not None:
                _close_handle(handle)
                self.control[i] = (obj, None)
        self.pending.clear()
        self.line_scanned = 0
        self.big = self.spare = None
        self.held_fds = 0
        self.backlog = 0

    def pop(self, queue: collections.deque[tuple[Any, Any]]) -> tuple[Any, Any]:
        """The first message of ``queue`` (``ready`` or ``control``) and its handle."""
        obj, handle = queue.popleft()
        if handle is not None:
            self.held_fds -= len(handle) if isinstance(handle, list) else 1
        self.backlog = 0  # (the receiver takes its messages: nothing piles up unseen)
        return obj, handle

    def _count_backlog(self, size: int) -> None:
        """``size`` bytes came while decoded messages wait: bound what piles up that way.

        A receiver reads only when the queue it takes from is empty, so messages pile up
        only in the other queue while it waits (user messages while it waits for a control
        one, or the reverse): bytes read with no message taken in between are counted.
        """
        self.backlog += size
        if self.backlog > self.max_unread:
            self.discard()
            _fail(
                f"the peer sent more than {self.max_unread} bytes of messages that are not "
                "received yet"
            )

    def _take_fds(self, pos: int, nfds: int) -> list[int]:
        """The descriptors of the message whose first byte is at stream offset ``pos``.

        A sender attaches descriptors to a message's first byte, and the kernel ends a
        recvmsg right after the message that carries them: so they came with the chunk
        that holds ``pos``, and belong to the message in it that declares them.  One that
        declares none never takes any; a count that does not match is an error.
        """
        batches = self.fd_batches
        if not nfds:
            return []
        if batches and batches[0][0] <= pos < batches[0][1]:
            got = batches.popleft()[2]
            if len(got) == nfds:
                return got
            count = len(got)
            _close_fds(got)
        else:
            count = 0
        _fail(f"a message declares {nfds} descriptors but {count} came with it")

    def _check_unclaimed(self) -> None:
        """Refuse descriptors that no message can claim, as soon as they come.

        Once every whole message is decoded, the one batch that may wait is the one that
        came with the first byte of the partial message.  Any other is refused at once:
        a peer cannot park descriptors here by never finishing a message.
        """
        for start, end, _ in self.fd_batches:
            if end <= self.pending_start:
                _fail("descriptors came with a message that declares none")
            if start > self.pending_start:
                _fail("descriptors came in the middle of a message")

    def _decode_frames(self, buf: Any, scan: Any, base: int) -> int:
        """Deliver every whole frame in ``buf`` (at stream offset ``base``); bytes used."""
        off = 0
        end = len(buf)
        direct = isinstance(buf, memoryview)  # the receive buffer: slices are not copies
        while off < end:
            try:
                total, kind, flags, nfds, _ = scan(off, end - off)
            except ValueError as exc:
                _fail(f"bad frame: {exc}")
            if not total:
                break
            fds = self._take_fds(base + off, nfds) if nfds else []
            first = off + _b.FRAME_HEADER_SIZE
            off += total
            self._deliver(kind, flags, buf[first:off] if direct else bytes(buf[first:off]), fds)
        return off

    def _deliver(self, kind: int, flags: int, payload: Any, fds: list[int]) -> None:
        """Decode one frame's payload (bytes, or a view valid only during this call)."""
        if kind in (_b.FRAME_PICKLE, _b.FRAME_CONTROL) and not self.allow_pickle:
            _close_fds(fds)
            raise ValueError(
                "a pickle came, and this channel does not unpickle (its "
                "serialization is not 'pickle')"
            )
        if not flags and not fds:  # the common case: a plain message
            if kind == _b.FRAME_PICKLE:
                self.ready.append((pickle.loads(payload), None))
            elif kind == _b.FRAME_RAW:
                self.ready.append((bytes(payload), None))
            elif kind == _b.FRAME_JSON:
                self.ready.append((_json.loads(bytes(payload)), None))
            elif kind == _b.FRAME_RING:
                if not self.rings:
                    raise ValueError("a ring record came on a channel without rings")
                # A record sent over the socket (its own buffer: objects may be built on
                # it), or, empty, the sign that records go back to the ring.
                item = _ringlink.RECORD(bytearray(payload)) if payload else _ringlink.BACK
                self.ready.append((item, None))
            else:  # CONTROL: the channel's own traffic (a worker's result)
                self.control.append((pickle.loads(payload), None))
            return
        handle: Any = None
        try:
            if not flags & _b.FRAME_FLAG_HANDLES:
                raise ValueError("descriptors came without a description")
            if self.held_fds + len(fds) > _MAX_HELD_FDS:
                raise ValueError(
                    f"the peer sent more than {_MAX_HELD_FDS} descriptors that are not received yet"
                )
            if len(payload) < _META_LEN.size:
                raise ValueError("a frame with handles is too short for their description")
            (size,) = _META_LEN.unpack_from(payload)
            if 4 + size > len(payload):
                raise ValueError("the handle description runs past the frame")
            handles, many = _rebuild(fds, payload[4 : 4 + size])
            payload = payload[4 + size :]
            handle = handles if many else handles[0]
            if kind == _b.FRAME_RING:  # set-up: the rings, ours to read first
                if not self.rings or self.ring_setup is not None or payload or not many:
                    raise ValueError("an unexpected ring set-up")
                if len(handles) != 2 or not all(isinstance(h, Ring) for h in handles):
                    raise ValueError("a ring set-up needs two rings")
                self.ring_setup = handles
                return
            if kind == _b.FRAME_CONTROL:  # the channel's own, with handles
                self.control.append((pickle.loads(payload), handle))
                self.held_fds += len(handles)
                return
            if kind == _b.FRAME_PICKLE:
                obj = pickle.loads(payload)
            elif kind == _b.FRAME_JSON:
                obj = _json.loads(bytes(payload))
            else:
                obj = bytes(payload)
        except BaseException:
            _close_fds(fds)
            _close_handle(handle)
            raise
        self.ready.append((obj, handle))
        self.held_fds += len(handles)

    def _decode_lines(self) -> None:
        buf = self.pending
        off = 0
        search = self.line_scanned  # (what was searched before holds no newline)
        while True:
            nl = buf.find(b"\n", search)
            if nl < 0:
                break
            line_start = self.pending_start + off
            line = bytes(buf[off:nl])
            off = search = nl + 1
            self._deliver_node(line, line_start)
        if off:
            del buf[:off]
            self.pending_start += off
        self.line_scanned = len(buf)
        self._check_unclaimed()
        if len(buf) > self.max_length:
            _fail(f"a line longer than max_message_size ({self.max_length}) bytes")

    def _deliver_node(self, line: bytes, line_start: int) -> None:
        try:
            obj = _json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"not a JSON message: {exc}") from None
        if not _is_node_internal(obj):
            self.ready.append((obj, None))
            return
        # Node's own traffic never reaches the user: the channel acts on it.
        if obj["cmd"] != "NODE_HANDLE":
            self.node_internal.append(("got", obj))
            return
        batches = self.fd_batches
        if not (batches and batches[0][0] <= line_start < batches[0][1]):
            # no descriptor came with it (MSG_CTRUNC): Node sends it again
            self.node_internal.append(("answer", {"cmd": "NODE_HANDLE_NACK"}))
            return
        fds = batches.popleft()[2]
        kind = obj.get("type")
        if len(fds) != 1 or kind not in _NODE_SOCKET_TYPES:
            count = len(fds)
            _close_fds(fds)
            _fail(f"a NODE_HANDLE of type {kind!r} came with {count} descriptors")
        if self.held_fds >= _MAX_HELD_FDS:
            _close_fds(fds)
            _fail(f"the peer sent more than {_MAX_HELD_FDS} handles that are not received yet")
        key = obj.get("key")
        handle = self.node_socket()(fds[0], key if isinstance(key, str) else None)
        self.node_internal.append(("answer", {"cmd": "NODE_HANDLE_ACK"}))
        msg = obj.get("msg")
        if _is_node_internal(msg):  # Node cluster traffic: not for the user either
            handle.close()
            return
        self.ready.append((msg, handle))
        self.held_fds += 1


class Channel:
    """A message channel over a connected ``AF_UNIX`` stream socket (or its descriptor).

    ``serialization`` is how :meth:`send` encodes (``"pickle"``, ``"json"`` or ``"raw"``
    bytes).  What arrives is decoded by the kind the sender wrote, except that only a
    ``"pickle"`` channel unpickles: a pickle on any other is a :class:`FrameError`.
    ``framing="node"`` speaks Node's JSON-lines IPC instead (``serialization`` must then
    be ``"json"``).  Messages over ``max_message_size`` bytes are refused on both sides.
    The channel owns the socket.
    """

    def __init__(
        self,
        sock: socket.socket | int,
        *,
        serialization: str = "pickle",
        framing: str = "pyforkd",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if serialization not in _SERIALIZATIONS:
            raise ValueError(
                f"serialization must be one of {', '.join(_SERIALIZATIONS)}, not {serialization!r}"
            )
        if framing not in _FRAMINGS:
            raise ValueError(f"framing must be 'pyforkd' or 'node', not {framing!r}")
        if framing == "node" and serialization != "json":
            raise ValueError("framing='node' carries JSON only: use serialization='json'")
        if isinstance(max_message_size, bool) or not isinstance(max_message_size, int):
            raise TypeError("max_message_size must be an int")
        if max_message_size <= 0:
            raise ValueError(f"max_message_size must be > 0, got {max_message_size}")
        self._sock: socket.socket | None = None
        if sys.platform == "win32":
            # A duplex overlapped named pipe (what spawn makes for "ipc"), as a handle.
            if isinstance(sock, bool) or not isinstance(sock, int):
                raise TypeError(
                    f"on Windows a Channel takes a pipe handle, not {type(sock).__name__}"
                )
            self._fd = sock
        else:
            if isinstance(sock, int) and not isinstance(sock, bool):
                sock = socket.socket(fileno=sock)
            if not isinstance(sock, socket.socket):
                raise TypeError(
                    f"Channel needs a socket or a descriptor, not {type(sock).__name__}"
                )
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError("a Channel needs a connected AF_UNIX SOCK_STREAM socket")
            sock.setblocking(True)  # sends and receives choose per call whether to wait
            _b.socket_nosigpipe(sock.fileno())
            self._sock = sock
            self._fd = sock.fileno()
            # A channel dropped in a reference cycle (a Worker kept by an exception's
            # traceback, say) is collected with its socket, in no set order: the socket
            # could be finalized first and warn "unclosed".  The garbage collector runs
            # weakref callbacks before any finalizer, so this closes it first.  (Not at
            # interpreter exit: a daemon thread may still be blocked on the socket then.)
            weakref.finalize(self, sock.close).atexit = False
        self.serialization = serialization
        self.framing = framing
        self.max_message_size = max_message_size
        # Re-entrant: a send that times out half-written closes the channel from inside.
        self._send_lock = threading.RLock()
        self._recv_lock = threading.RLock()
        self._send_codec = _b.FrameCodec(max_message_size)
        self._receiver = _b.Receiver(max_message_size)
        self._decoder = _Decoder(
            framing, self._receiver.scan, max_message_size, serialization == "pickle"
        )
        # A weak reference: the channel owns the decoder, and a cycle between them would
        # leave the socket to the garbage collector, which may finalize it first (unclosed).
        self._decoder.node_socket = weakref.WeakMethod(self._make_node_socket)
        self._scan_received = self._receiver.scan_received
        self._eof = False
        self._closed = False
        self._closed_fd = False  # (Windows: the pipe handle was closed)
        # Node framing: the handle awaiting its ACK (every later send waits for it), and
        # the open sockets per Node server key, which the Node side may ask about.
        self._node_pending: _PendingHandle | None = None
        self._node_acked = threading.Event()
        self._node_lock = threading.Lock()
        self._node_open: dict[str, int] = {}
        self._node_notify: set[str] = set()
        self._node_answers: collections.deque[bytes] = collections.deque()  # unsent lines
        # A channel over rings: its Link (pyforkd/_ringlink.py), or _AWAITING_RINGS until
        # the set-up frame brings them; None for a socket-only channel.
        self._link: Any = None

    @classmethod
    def pair(
        cls,
        *,
        ring: int | None = None,
        serialization: str = "pickle",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> tuple[Channel, Channel]:
        """Two connected channels (a new socketpair; a duplex pipe on Windows).

        E.g. to keep one across a fork, or to hand one end to a child.

        With ``ring`` (bytes: a power of two, at least 4096) they also share a pair of
        rings, made now, through which their messages go (see :func:`fork_worker`).
        """
        rings = (Ring(ring), Ring(ring)) if ring is not None else None
        options: dict[str, Any] = {
            "serialization": serialization,
            "max_message_size": max_message_size,
        }
        made: list[Channel] = []
        ends: tuple[int, ...] = ()
        try:
            ends = _b.fd_pair()
            for fd in ends:
                made.append(cls(fd, **options))
        except BaseException:
            for ch in made:
                ch.close()
            for fd in ends[len(made) :]:
                _b.close_native(fd)
            for r in rings or ():
                r.close()
            raise
        here, there = made
        if rings is not None:
            # Each end maps the memory on its own, so that closing one leaves the other's.
            down, up = rings
            theirs: list[Ring] = []
            try:
                for shared in (up, down):
                    fd = _b.dup_native(shared.fileno())
                    try:
                        theirs.append(Ring._from_fd(fd))
                    except BaseException:
                        _b.close_native(fd)
                        raise
            except BaseException:
                for r in (*theirs, down, up):
                    r.close()
                here.close()
                there.close()
                raise
            here._use_rings(down, up)
            there._use_rings(theirs[0], theirs[1])
        return here, there

    # ---- sending -------------------------------------------------------------------------

    def _encode(self, obj: Any) -> tuple[int, Any]:
        """The frame kind and payload (bytes, or a byte view of a contiguous raw buffer)."""
        ser = self.serialization
        if ser == "raw":
            if type(obj) is bytes:
                return _b.FRAME_RAW, obj
            try:
                view = memoryview(obj)
            except TypeError:
                raise TypeError(
                    f"serialization='raw' sends bytes-like objects, not {type(obj).__name__}"
                ) from None
            # Sent from where it is (the caller's buffer must not change until send
            # returns); a buffer that is not contiguous is copied.
            return _b.FRAME_RAW, (view.cast("B") if view.c_contiguous else view.tobytes())
        if ser == "json" or self.framing == "node":
            try:
                return _b.FRAME_JSON, _json.dumps(obj)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"cannot send this message as JSON: {exc}") from None
        try:
            return _b.FRAME_PICKLE, pickle.dumps(obj, protocol=5)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise PicklingError(f"cannot pickle this message: {exc}") from None

    def send(
        self,
        obj: Any,
        handle: Handle | list[Handle] | tuple[Handle, ...] | None = None,
        *,
        keep_open: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Send one message, with an optional handle (or a list of handles).

        Handles are ``socket.socket`` (any family or type), file objects and :class:`Fd`;
        the peer receives objects of the same kind.  Unless ``keep_open``, this side's copy
        of each handle is closed once sent (as in Node).  Blocks while the peer's buffer is
        full; after ``timeout`` seconds raises ``TimeoutError`` (a message caught half-way
        cannot be taken back: the channel is then closed).  Raises ``TypeError`` for a
        message that cannot be encoded and ``ValueError`` for one over
        ``max_message_size``, before writing anything; ``ChannelClosedError`` once the
        peer is gone.
        """
        if self._link is not None:
            self._check_open()  # (a FrameError closes a ring channel and leaves its link)
            deadline = _deadline(timeout)
            self._ring_link(deadline).send(obj, handle, keep_open, deadline)
            return
        if timeout is None and self.framing == "pyforkd":
            # The hot path: no deadline, so one blocking C call writes the whole frame.
            if handle is None:
                kind, body = self._encode(obj)
                flags, fds, handles = 0, _NO_FDS, _NO_FDS
                if len(body) > self.max_message_size:
                    self._check_size(len(body))
            else:
                handles = _handle_list(handle)
                kind, flags, body, fds = self._frame_parts(obj, handle, handles)
            with self._send_lock:
                if self._closed:
                    raise ChannelClosedError("the channel is closed")
                try:
                    sent = _b.frame_send(self._fd, kind, body, True, flags, fds)
                except (BrokenPipeError, ConnectionResetError):
                    self._eof = True
                    raise ChannelClosedError("the peer closed the channel") from None
                if sent != len(body) + _b.FRAME_HEADER_SIZE:  # cut short (signal): the rest
                    self._send_codec.encode(kind, flags, len(fds), len(body))
                    header = memoryview(self._send_codec.header_bytes)
                    done = sent or 0
                    k = min(done, _b.FRAME_HEADER_SIZE)
                    rest = [] if done else list(fds)  # descriptors ride on the first byte
                    self._write(header[k:], memoryview(body)[done - k :], rest, None)
            if handles and not keep_open:
                _close_sent(handles)
            return
        deadline = _deadline(timeout)
        self._check_open()
        handles = _handle_list(handle)
        if self.framing == "node":
            self._send_node(obj, handles, keep_open, deadline)
            return
        head, body, fds = self._prepare(obj, handle, handles)
        with self._send_lock:
            self._check_open()
            self._write(head, body, fds, deadline)
        if not keep_open:
            _close_sent(handles)

    def _frame_parts(
        self, obj: Any, handle: Any, handles: list[Any]
    ) -> tuple[int, int, bytes, list[int]]:
        """A frame's kind, flags, payload and descriptors.

        ``TypeError``/``ValueError`` when the message or a handle cannot be sent (nothing
        is written then).
        """
        kind, body = self._encode(obj)
        flags, body, fds = _attach(body, handle, handles)
        self._check_size(len(body))
        return kind, flags, body, fds

    def _prepare(self, obj: Any, handle: Any, handles: list[Any]) -> tuple[bytes, bytes, list[int]]:
        """One pyforkd frame, header encoded, with its descriptors; nothing written yet."""
        kind, flags, body, fds = self._frame_parts(obj, handle, handles)
        with self._send_lock:  # the codec's buffer is shared with the other senders
            self._send_codec.encode(kind, flags, len(fds), len(body))
            head = bytes(self._send_codec.header_bytes)
        return head, body, fds

    def _check_size(self, size: int) -> None:
        if size > self.max_message_size:
            raise ValueError(
                f"message of {size} bytes is over max_message_size ({self.max_message_size})"
            )

    # ---- Node's handle protocol ----------------------------------------------------------

    def _send_node(
        self, obj: Any, handles: list[Any], keep_open: bool, deadline: float | None
    ) -> None:
        """Send a JSON line; with a handle, Node's NODE_HANDLE wrapping and ACK protocol.

        Like Node, a send made while an earlier handle awaits its ACK waits for that ACK
        (message order is kept); unlike Node, it waits with a bound (``timeout``).
        """
        fd = -1
        if handles:
            if len(handles) > 1:
                raise ValueError("a Node peer takes one handle per message")
            fd, fields = _node_handle_fields(handles[0])
            obj = {"cmd": "NODE_HANDLE", **fields, "msg": obj}
        line = self._encode(obj)[1] + b"\n"
        self._check_size(len(line) - 1)
        while True:
            with self._send_lock:
                self._check_open()
                pending = self._node_pending
                if pending is None:
                    self._write(b"", line, [fd] if fd >= 0 else [], deadline)
                    if fd >= 0:
                        self._node_acked.clear()
                        self._node_pending = _PendingHandle(
                            line, fd, None if keep_open else handles[0]
                        )
                    return
                if pending.nacked:
                    self._node_retransmit(pending)
            self._await_node_ack(deadline)

    def _await_node_ack(self, deadline: float | None) -> None:
        """Read until the pending handle's ACK, or let the thread that reads do it."""
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError("send timed out: the Node peer has not acknowledged a handle")
        slice_end = time.monotonic() + 0.05
        if deadline is not None:
            slice_end = min(slice_end, deadline)
        if not self._recv_lock.acquire(timeout=0.05):
            self._node_acked.wait(0.05)  # another thread is reading: it will see the ACK
            return
        try:
            pending = self._node_pending
            if pending is None or pending.nacked:
                return
            if self._eof:
                raise ChannelClosedError("the peer closed the channel")
            try:
                self._receive(slice_end)
            except TimeoutError:
                pass  # this slice is over; the sender checks its own deadline
        finally:
            self._recv_lock.release()

    def _node_retransmit(self, pending: _PendingHandle) -> None:
        """Send a NACKed handle again (the send lock is held)."""
        pending.nacked = False
        self._write(b"", pending.line, [pending.fd], None)

    def _node_internal(self, deadline: float | None) -> None:
        """Act on Node's internal messages that the last read decoded.

        The answers go out by ``deadline`` (the receive's) as far as the peer reads them;
        the rest wait for the next receive.  A peer that keeps asking and never reads
        cannot make this side hold more than a bounded number of answers.
        """
        queue = self._decoder.node_internal
        while queue:
            direction, msg = queue.popleft()
            cmd, key = msg["cmd"], msg.get("key")
            if direction == "answer":
                self._node_write(msg)
            elif cmd in ("NODE_HANDLE_ACK", "NODE_HANDLE_NACK"):
                self._node_handle_reply(cmd == "NODE_HANDLE_ACK")
            elif cmd == "NODE_SOCKET_GET_COUNT" and isinstance(key, str):
                with self._node_lock:
                    count = self._node_open.get(key, 0)
                self._node_write({"cmd": "NODE_SOCKET_COUNT", "key": key, "count": count})
            elif cmd == "NODE_SOCKET_NOTIFY_CLOSE" and isinstance(key, str):
                with self._node_lock:
                    empty = not self._node_open.get(key)
                    if not empty:
                        self._node_notify.add(key)
                if empty:
                    self._node_write({"cmd": "NODE_SOCKET_ALL_CLOSED", "key": key})
            # anything else (NODE_CLUSTER, NODE_DEBUG_ENABLED, ...) is not for this channel
        if len(self._node_answers) > _NODE_MAX_ANSWERS:
            self._discard()
            raise FrameError(
                f"the Node peer asked more than {_NODE_MAX_ANSWERS} questions without reading "
                "the answers"
            )
        self._node_flush(deadline)

    def _node_handle_reply(self, acked: bool) -> None:
        """The peer's ACK or NACK for the pending handle."""
        pending = self._node_pending
        if pending is None:
            return
        if not acked and pending.retransmissions < _NODE_MAX_RETRANSMISSIONS:
            pending.retransmissions += 1
            pending.nacked = True
            if self._send_lock.acquire(blocking=False):  # else the waiting sender resends
                try:
                    if pending.nacked and not self._closed:
                        self._node_retransmit(pending)
                finally:
                    self._send_lock.release()
            return
        if not acked:
            warnings.warn(
                "a handle did not reach the Node peer after "
                f"{_NODE_MAX_RETRANSMISSIONS} retransmissions; it was closed",
                RuntimeWarning,
                stacklevel=2,
            )
        self._node_pending = None
        self._node_acked.set()
        _close_handle(pending.handle)

    def _node_write(self, msg: dict[str, Any]) -> None:
        """Queue one of the channel's own lines.

        The next flush sends it, never behind a pending handle.
        """
        self._node_answers.append(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def _node_flush(self, deadline: float | None) -> None:
        """Send the queued answers, waiting until ``deadline`` at most (None: no limit).

        What the peer has no room for stays queued.
        """
        answers = self._node_answers
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not answers or not self._send_lock.acquire(timeout=wait):
            return
        try:
            while answers:
                if self._closed or self._eof:
                    answers.clear()  # as Node: an answer the peer can no longer read is dropped
                    return
                try:
                    self._write(b"", answers[0], [], deadline)
                except ChannelClosedError:
                    answers.clear()  # the peer left meanwhile: nobody to answer
                    return
                except TimeoutError:
                    return  # the peer reads nothing (a half-written line closed the channel)
                answers.popleft()
        finally:
            self._send_lock.release()

    def _make_node_socket(self, fd: int, key: str | None) -> socket.socket:
        """The socket object for a descriptor a Node peer sent (blocking, like accept())."""
        try:
            sock = _NodeSocket(fileno=fd) if key is not None else socket.socket(fileno=fd)
        except OSError as exc:
            _b.close_native(fd)
            raise ValueError(f"a NODE_HANDLE descriptor is not a socket ({exc})") from None
        sock.setblocking(True)
        if isinstance(sock, _NodeSocket) and key is not None:
            sock._track(self, key)
        return sock

    def _node_socket_opened(self, key: str) -> None:
        with self._node_lock:
            self._node_open[key] = self._node_open.get(key, 0) + 1

    def _node_socket_closed(self, key: str) -> None:
        with self._node_lock:
            left = self._node_open.get(key, 1) - 1
            self._node_open[key] = left
            notify = left <= 0 and key in self._node_notify
            if notify:
                self._node_notify.discard(key)
        if notify:
            self._node_write({"cmd": "NODE_SOCKET_ALL_CLOSED", "key": key})
            self._node_flush(time.monotonic())  # (no wait here: the next receive sends it)

    def send_control(self, obj: Any, handle: Any = None, *, keep_open: bool = False) -> None:
        """Send one of the channel's own messages (pickled), kept apart from user messages.

        ``handle`` (as for :meth:`send`) goes with it; this side's copy is closed once sent
        unless ``keep_open``.
        """
        if self.framing != "pyforkd":
            raise ValueError("control messages need pyforkd framing")
        try:
            body = pickle.dumps(obj, protocol=5)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise PicklingError(f"cannot pickle this message: {exc}") from None
        handles = _handle_list(handle)
        flags, body, fds = _attach(body, handle, handles)
        with self._send_lock:
            self._check_open()
            self._send_codec.encode(_b.FRAME_CONTROL, flags, len(fds), len(body))
            self._write(bytes(self._send_codec.header_bytes), body, fds, None)
        if not keep_open:
            _close_sent(handles)

    def recv_control(self, timeout: float | None = None, *, with_handle: bool = False) -> Any:
        """Receive the next control message; user messages that come first stay queued.

        With ``with_handle=True``: ``(message, handle)``.
        """
        deadline = _deadline(timeout)
        with self._recv_lock:
            obj, handle = self._next_of(self._decoder.control, deadline)
        if with_handle:
            return obj, handle
        _close_handle(handle)
        return obj

    def _forget(self) -> None:
        """In a forked child: close this process's copy without touching the socket.

        (``close`` would shut the socket down, which the parent still uses.)
        """
        self._closed = True
        self._link = None  # its rings may be shared with a channel of this process
        sock, self._sock = self._sock, None
        if sock is not None:
            os.close(sock.detach())

    def _write(self, head: Any, body: Any, fds: list[int], deadline: float | None) -> None:
        """Write head + body entirely (descriptors on the first byte); the send lock is held."""
        for sent_any in self._write_steps(head, body, fds, deadline is None):
            if deadline is None:
                continue  # a signal cut a blocking send short; its handler has run
            if not self._wait(_b.POLL_OUT, deadline):
                self._timed_out(sent_any)

    def _write_steps(self, head: Any, body: Any, fds: list[int], block: bool) -> Iterator[bool]:
        """Write head + body; yield (whether any byte went yet) whenever it must wait.

        The caller waits for the socket to take more (a poll, or the asyncio loop) and
        resumes the generator, or gives up (``_timed_out``).
        """
        head_view, body_view = memoryview(head), memoryview(body)
        sent_any = False
        while head_view.nbytes or body_view.nbytes:
            try:
                n = _b.fd_send(self._fd, head_view, body_view, fds, block)
            except (BrokenPipeError, ConnectionResetError):
                self._eof = True
                raise ChannelClosedError("the peer closed the channel") from None
            if n is None:
                yield sent_any
                continue
            sent_any = True
            fds = []  # they went with the first byte
            k = min(n, head_view.nbytes)
            head_view, body_view = head_view[k:], body_view[n - k :]

    def _timed_out(self, sent_any: bool) -> NoReturn:
        if sent_any:
            self.close()
            raise TimeoutError(
                "send timed out with the message half-written; the channel is closed"
            )
        raise TimeoutError("send timed out: the peer is not reading")

    def _wait(self, events: int, deadline: float | None) -> bool:
        """Wait for the socket (GIL released); False when the deadline passed."""
        while True:
            ms = -1 if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))
            ready = _b.fd_wait(self._fd, events, ms)
            if ready:
                return True
            if ready is False and deadline is not None and time.monotonic() >= deadline:
                return False

    # ---- receiving -------------------------------------------------------------------------

    def recv(self, timeout: float | None = None, *, with_handle: bool = False) -> Any:
        """Receive one message; with ``with_handle=True`` return ``(message, handle)``.

        ``handle`` is None, one object, or a list (when a list was sent).  Raises
        ``TimeoutError`` after ``timeout`` seconds, :class:`ChannelClosedError` once the peer
        has closed and every message before that was received, :class:`FrameError` for
        anything malformed (the channel is then closed, no descriptor kept).
        """
        deadline = None if timeout is None else _deadline(timeout)
        with self._recv_lock:
            if self._link is not None:
                self._check_open()
                obj, handle = self._ring_link(deadline).recv(deadline)
            else:
                obj, handle = self._pop_ready(deadline)
        if handle is not None:
            self._watch_rings(handle)
        if with_handle:
            return obj, handle
        if handle is not None:
            for h in handle if isinstance(handle, list) else [handle]:
                h.close()
            warnings.warn(
                "a message came with a handle, which was closed: use "
                "recv(with_handle=True) to take it",
                ResourceWarning,
                stacklevel=2,
            )
        return obj

    def recv_any(self, timeout: float | None = None) -> tuple[bool, Any, Any]:
        """The next of the channel's own messages or of the others, whichever is there.

        Returns ``(control, message, handle)``: ``control`` is True for one of the
        channel's own (:meth:`send_control`).  It reads only when neither kind is queued,
        so a supervisor that takes both as they come never lets one kind pile up while it
        waits for the other.  ``TimeoutError``, :class:`ChannelClosedError` and
        :class:`FrameError` as for :meth:`recv`.  Not for a channel over rings.
        """
        if self._link is not None:
            raise ValueError("recv_any() reads the socket only: this channel has rings")
        deadline = None if timeout is None else _deadline(timeout)
        decoder = self._decoder
        with self._recv_lock:
            while not (decoder.control or decoder.ready):
                self._check_open()
                if self._eof:
                    raise ChannelClosedError("the peer closed the channel")
                self._receive(deadline)
            if decoder.control:
                return (True, *decoder.pop(decoder.control))
            obj, handle = decoder.pop(decoder.ready)
        if handle is not None:
            self._watch_rings(handle)
        return False, obj, handle

    def _watch_rings(self, handle: Any) -> None:
        """A received ring's peer is the process at the other end of this channel."""
        for h in handle if isinstance(handle, list) else [handle]:
            if isinstance(h, Ring) and h._peer is None:
                h.watch(self)

    def _pop_ready(self, deadline: float | None) -> tuple[Any, Any]:
        """The next decoded message and its handle, reading the socket until one is whole."""
        return self._next_of(self._decoder.ready, deadline)

    def _next_of(self, queue: Any, deadline: float | None) -> Any:
        """The first of ``queue`` (user messages or control ones), reading until it has one."""
        while not queue:
            self._check_open()
            if self._eof:
                raise ChannelClosedError("the peer closed the channel")
            self._receive(deadline)
        return self._decoder.pop(queue)

    # ---- rings ---------------------------------------------------------------------------

    def _use_rings(self, tx: Ring, rx: Ring) -> None:
        """Send through ``tx`` and receive through ``rx`` from now on (no message yet)."""
        self._decoder.rings = True
        self._link = _ringlink.make(self, tx, rx)

    def _offer_rings(self, tx: Ring, rx: Ring) -> None:
        """Use ``tx``/``rx`` and send them to the peer as the first frame on the socket.

        A peer already gone is left for the first send or recv to find.
        """
        self._use_rings(tx, rx)
        flags, body, fds = _attach(b"", [tx, rx], [tx, rx])
        with self._send_lock:
            self._send_codec.encode(_b.FRAME_RING, flags, len(fds), len(body))
            try:
                self._write(bytes(self._send_codec.header_bytes), body, fds, None)
            except ChannelClosedError:
                pass  # the child died at once: its first send or recv says so

    def _expect_rings(self) -> None:
        """The peer sends this channel's rings as its first frame (see _offer_rings)."""
        self._decoder.rings = True
        self._link = _AWAITING_RINGS

    def _ring_link(self, deadline: float | None = None) -> Any:
        """The Link, once the peer's set-up frame has come (read here if need be)."""
        link = self._link
        if link is not _AWAITING_RINGS:
            return link
        with self._recv_lock:
            while self._link is _AWAITING_RINGS:
                if self._closed:
                    raise ChannelClosedError("the channel is closed")
                if self._eof:
                    raise ChannelClosedError("the peer closed the channel before its rings came")
                self._receive(deadline)
        if self._link is None:
            raise ChannelClosedError("the channel is closed")
        return self._link

    def _receive(self, deadline: float | None) -> None:
        """One recvmsg (after waiting for the deadline if there is one); feeds the decoder."""
        if deadline is not None and not self._wait(_b.POLL_IN, deadline):
            raise TimeoutError("recv timed out")
        decoder = self._decoder
        room = None if decoder.big is None else decoder.big_room()
        got: tuple[Any, list[int] | None] | None
        chunk: Any  # the bytes received, or their count when received into the big frame
        try:
            if room is not None:
                with room:
                    got = self._receiver.recv_into(self._fd, room, deadline is None)
            else:
                got = self._receiver.recv(self._fd, deadline is None)
        except ConnectionResetError:
            got = (0 if room is not None else memoryview(b""), [])
        if got is None:
            return  # a signal came (its handler ran) or a spurious wake-up
        chunk, fds = got
        if not chunk and fds is not None:
            self._eof = True
            if decoder.pending or decoder.fd_batches or decoder.big is not None or fds:
                _close_fds(fds)
                self._discard()
                raise ChannelClosedError("the peer closed the channel in the middle of a message")
            return
        try:
            if room is not None:
                decoder.feed_big(chunk, fds)
            else:
                decoder.feed(chunk, fds, self._scan_received)
        except FrameError:
            self._discard()
            raise
        if decoder.ring_setup is not None and self._link is _AWAITING_RINGS:
            rx, tx = decoder.ring_setup  # the peer's first ring is the one it writes
            self._link = _ringlink.make(self, tx, rx)
        if decoder.node_internal or self._node_answers:
            self._node_internal(deadline)

    def _discard(self) -> None:
        self._decoder.discard()
        self._close_socket()

    # ---- the rest ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        """Messages until the peer closes the channel."""
        while True:
            try:
                yield self.recv()
            except ChannelClosedError:
                return

    @property
    def connected(self) -> bool:
        """False once either side closed the channel."""
        if self._closed or self._eof:
            return False
        link = self._link
        return link is None or link is _AWAITING_RINGS or not link.peer_gone

    def fileno(self) -> int:
        """The channel's socket descriptor (-1 once closed)."""
        return -1 if self._closed else self._fd

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosedError("the channel is closed")

    def _close_socket(self) -> None:
        if _b.WINDOWS and not self._closed_fd:
            self._closed_fd = True
            _b.close_native(self._fd)
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Close the channel: the peer sees it end; threads blocked in send/recv return."""
        if self._closed:
            return
        self._closed = True
        # A shutdown wakes a thread of this process blocked on the socket, and reaches
        # every process that shares it too (a child forked with its copy): so only when
        # such a thread is there.
        if self._in_use():
            sock = self._sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # (not connected any more: nothing of it to wake)
            elif _b.WINDOWS and not self._closed_fd:
                _b.fd_shutdown(self._fd)  # (the same for the pipe: blocked threads return)
        with self._send_lock, self._recv_lock:
            self._decoder.discard()
            self._close_socket()
            link, self._link = self._link, None
            if link is not None and link is not _AWAITING_RINGS:
                link.close()
            pending, self._node_pending = self._node_pending, None
            if pending is not None:
                _close_handle(pending.handle)
            self._node_acked.set()

    disconnect = close

    def _in_use(self) -> bool:
        """Whether another thread is sending or receiving on this channel now."""
        for lock in (self._recv_lock, self._send_lock):
            if not lock.acquire(blocking=False):
                return True
            lock.release()
        return False

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed"
        return f"<Channel fd={self.fileno()} {self.framing}/{self.serialization} {state}>"


_AWAITING_RINGS = object()  # Channel._link until the peer's ring set-up frame comes


def _close_sent(handles: list[Any]) -> None:
    """After a send, this side's copies go, as in Node.

    A Ring stays open: both ends use its memory (close it when done).
    """
    for h in handles:
        if not isinstance(h, Ring):
            h.close()


def _attach(body: Any, handle: Any, handles: list[Any]) -> tuple[int, Any, list[int]]:
    """A payload with its handles described in front: ``(frame flags, payload, fds)``.

    ``TypeError``/``ValueError`` for a handle that cannot be sent (nothing is written).
    """
    if not handles:
        return 0, body, []
    if len(handles) > _b.FRAME_MAX_FDS:
        raise ValueError(f"at most {_b.FRAME_MAX_FDS} handles fit in one message")
    fds, described = _describe(handles, isinstance(handle, (list, tuple)))
    return _b.FRAME_FLAG_HANDLES, _META_LEN.pack(len(described)) + described + body, fds


def _handle_list(handle: Any) -> list[Any]:
    """``send``'s handle argument as a list (None: empty; a list or tuple: its items)."""
    if handle is None:
        return []
    return list(handle) if isinstance(handle, (list, tuple)) else [handle]


def _close_handle(handle: Any) -> None:
    if handle is None:
        return
    for h in handle if isinstance(handle, list) else [handle]:
        try:
            h.close()
        except OSError:
            pass


from . import _ringlink  # noqa: E402  (it builds on this module)
