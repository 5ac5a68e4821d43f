"""The byte level of a channel: frames' payloads, handle descriptions, the decoder.

No I/O here.  A sender describes the handles it attaches (:func:`attach`); a receiver's
:class:`Decoder` takes each whole frame the C reader splits from the stream, with its
descriptors, and queues messages with their handles rebuilt (:func:`rebuild`).  Anything
malformed raises :class:`FrameError` once every descriptor held is closed.  Node's line
framing is in ``_node.py``, the Channel that does the I/O in ``channel.py``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import socket
import stat
import struct
import sys
from typing import Any, NoReturn, Union

if sys.platform != "win32":
    import resource

from . import _bindings as _b
from . import _json
from ._checks import check_encoding as _check_encoding
from .errors import FrameError
from .ring import Ring
from .ring import adopt as adopt_ring

KIND = {"pickle": _b.FRAME_PICKLE, "json": _b.FRAME_JSON, "raw": _b.FRAME_RAW}

META_LEN = struct.Struct("<I")
NO_FDS: list[Any] = []  # shared, never modified


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


MAX_HELD_FDS = _held_fds_limit()


class Fd:
    """A raw file descriptor to send as a handle: ``channel.send(msg, handle=Fd(n))``.

    The receiver gets an ``Fd`` of its own copy.  An ``Fd`` owns its descriptor: ``close()``
    (or the ``with`` block) closes it; ``detach()`` gives the number up without closing.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        if type(fd) is int and fd >= 0:  # (the common case first: a receiver makes many)
            self._fd = fd
            return
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


def fd_objects(fds: list[int]) -> list[Fd]:
    """``Fd`` objects for received descriptors (numbers from the kernel: nothing to check)."""
    new = object.__new__
    out = []
    for fd in fds:
        h = new(Fd)
        h._fd = fd
        out.append(h)
    return out


# How the handles of a frame are described (frame flag HANDLES): the payload starts with a
# u32 length and that many bytes: u8 flags (bit 0: a list was sent, not one handle), then per
# descriptor, in order, a kind byte: b"d" pyforkd.Fd, b"s" socket.socket, b"g" a
# pyforkd.Ring (its shared memory), b"f" a file, followed for a file by its mode and its
# encoding (u8 length + ASCII each; encoding empty for a binary file).
_KIND_FD, _KIND_SOCKET, _KIND_RING, _KIND_FILE = 0x64, 0x73, 0x67, 0x66  # b"d" b"s" b"g" b"f"
# What describe() writes in front of a message for one Fd: both sides' hot path for it
# (Unix: there a descriptor is its own number in every process, nothing to convert).
ONE_FD = struct.pack("<IBB", 2, 0, _KIND_FD) if sys.platform != "win32" else None


def describe(handles: list[Any], many: bool) -> tuple[list[int], bytes]:
    """The descriptors of ``handles`` and their description (see above)."""
    if ONE_FD is not None and all(type(h) is Fd for h in handles):
        # Only Fds (Unix: their numbers are what goes): no per-handle work.
        numbers = [h._fd for h in handles]
        if min(numbers) < 0:
            i = numbers.index(min(numbers))
            raise ValueError(f"{f'handle[{i}]' if len(handles) > 1 else 'handle'}: Fd is closed")
        return numbers, (b"\x01" if many else b"\x00") + b"d" * len(numbers)
    fds: list[int] = []
    out = bytearray(b"\x01" if many else b"\x00")
    for i, handle in enumerate(handles):
        where = f"handle[{i}]" if len(handles) > 1 else "handle"
        if isinstance(handle, Fd):
            fds.append(native_of(handle.fileno(), where))
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
            fds.append(native_of(handle.fileno(), where))
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


def native_of(fd: int, where: str) -> int:
    """What the C core sends for descriptor ``fd``: itself; on Windows the handle behind it.

    ``ValueError`` naming ``where`` when it is not open.
    """
    try:
        return _b.native(fd)
    except OSError as exc:
        raise ValueError(f"{where}: descriptor {fd} is not open ({exc.strerror})") from None


def adopted(handle: int, writable: bool) -> int:
    """A descriptor of this process for a received ``handle`` (Windows: the C runtime's).

    The handle is closed when that fails.
    """
    try:
        return _b.adopt(handle, writable)
    except OSError:
        _b.close_native(handle)
        raise


_FILE_MODE_CHARS = frozenset("rwaxbt+")


def check_file_mode(mode: str) -> None:
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


def check_described(specs: list[tuple[int, str, str]]) -> None:
    """Check what a description says of files (C checked its layout): ``ValueError``."""
    for kind, mode, encoding in specs:
        if kind == _KIND_FILE:
            check_file_mode(mode)
            if encoding:
                if "b" in mode:
                    raise ValueError(f"a binary file (mode {mode!r}) has no encoding")
                _check_encoding(encoding, what="a file's encoding")


def open_received(fd: int, mode: str, encoding: str) -> Any:
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


def rebuild(fds: list[int], specs: list[tuple[int, str, str]]) -> list[Any]:
    """Objects for received descriptors as described; they own the descriptors.

    ``specs`` is what ``FrameReader.described`` gives.  ``ValueError`` for a description
    that does not fit (nothing is left open: the descriptors not yet made into objects are
    the caller's to close, the objects made are closed here).
    """
    check_described(specs)
    made: list[Any] = []
    try:
        for i, (kind, mode, encoding) in enumerate(specs):
            fd = fds[i]
            if kind == _KIND_FD:
                fds[i] = -1  # (adopted: closed through the Fd from here on)
                made.append(Fd(adopted(fd, True)))
            elif kind == _KIND_SOCKET:
                try:
                    made.append(socket.socket(fileno=fd))
                except OSError as exc:
                    why = f"a descriptor described as a socket is not one ({exc})"
                    raise ValueError(why) from None
                fds[i] = -1
            elif kind == _KIND_RING:
                made.append(adopt_ring(fd))
                fds[i] = -1
            else:
                fds[i] = -1
                made.append(
                    open_received(adopted(fd, mode[0] != "r" or "+" in mode), mode, encoding)
                )
    except BaseException:
        close_handle(made)
        raise
    fds.clear()
    return made


def fail(why: str) -> NoReturn:
    raise FrameError(why)


def reason(exc: BaseException) -> str:
    """What a decoder's exception says, for a FrameError (its type when it says nothing)."""
    text = str(exc)
    if isinstance(exc, RecursionError):
        return f"nested too deeply ({text})"
    return text if text else type(exc).__name__


def close_fds(fds: list[int]) -> None:
    """Close received descriptors (Windows: handles) no object took over."""
    for fd in fds:
        if fd >= 0:
            try:
                _b.close_native(fd)
            except OSError:
                pass  # (not ours to close any more: nothing to give back)
    fds.clear()


class Decoder:
    """Turns whole frames into messages, queued for a channel's receivers.

    :meth:`take` decodes one frame that the C reader (``_bindings.FrameReader``) handed
    out and appends it to ``ready`` (the user's) or ``control`` (the channel's own).
    Anything malformed raises :class:`FrameError` after every descriptor held here is
    closed.  It does no I/O.
    """

    def __init__(self, max_length: int, allow_pickle: bool) -> None:
        self.allow_pickle = allow_pickle  # a channel unpickles only when its owner chose pickle
        self.held_fds = 0  # descriptors in ``ready`` and ``control``, not yet taken
        # Bytes received while decoded messages waited (see _count_backlog).
        self.backlog = 0
        self.max_unread = 4 * max_length + (64 << 20)
        self.max_length = max_length
        self.ready: collections.deque[tuple[Any, Any]] = collections.deque()
        self.control: collections.deque[Any] = collections.deque()  # the channel's own
        # Node framing: internal messages for the channel to act on, and the socket maker
        # ("got", message) for Node's own messages, ("answer", message) for replies to send
        self.node_internal: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        # WeakMethod of (fd, key) -> socket.socket, set by the Channel
        self.node_socket: Any = None
        self.rings = False  # whether FRAME_RING frames are expected (a channel over rings)
        self.ring_setup: list[Any] | None = None  # the rings a set-up frame brought

    def take(self, meta: int, payload: Any, reader: Any) -> None:
        """Decode one frame: ``meta`` and ``payload`` as ``FrameReader.next`` gives them.

        ``reader`` (the ``FrameReader``) gives its descriptors and their description; the
        payload is valid during this call only.
        """
        if self.ready or self.control:
            self._count_backlog(_b.FRAME_HEADER_SIZE + len(payload))
        self.guarded(self._deliver, meta, payload, reader)

    def guarded(self, step: Any, *args: Any) -> None:
        """``step(*args)``; whatever it raises closes every descriptor held here first.

        A payload's decoder may raise anything: that becomes a :class:`FrameError`.
        """
        try:
            step(*args)
        except FrameError:
            self.discard()
            raise
        except Exception as exc:
            self.discard()
            raise FrameError(f"cannot decode a message: {reason(exc)}") from None

    def discard(self) -> None:
        """Close every descriptor held, delivered or not."""
        while self.ready:
            close_handle(self.ready.popleft()[1])
        # Control messages stay (a worker's outcome is read after its channel broke); their
        # handles go.
        for i, (obj, handle) in enumerate(self.control):
            if handle is not None:
                close_handle(handle)
                self.control[i] = (obj, None)
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
            fail(
                f"the peer sent more than {self.max_unread} bytes of messages that are not "
                "received yet"
            )

    def _deliver(self, meta: int, payload: Any, reader: Any) -> None:
        """Decode one frame's payload (bytes, or a view valid only during this call)."""
        kind, flags = meta & 0xFF, (meta >> 8) & 0xFFFF
        if kind in (_b.FRAME_PICKLE, _b.FRAME_CONTROL) and not self.allow_pickle:
            if meta >> 24:
                close_fds(reader.fds())
            raise ValueError(
                "a pickle came, and this channel does not unpickle (its "
                "serialization is not 'pickle')"
            )
        if not flags:  # the common case: a plain message (C refused undescribed descriptors)
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
                item = RECORD(bytearray(payload)) if payload else BACK
                self.ready.append((item, None))
            else:  # CONTROL: the channel's own traffic (a worker's result)
                self.control.append((pickle.loads(payload), None))
            return
        # Handles, described (C parsed the description; the payload is the message after it).
        fds = reader.fds() if meta >> 24 else []
        handle: Any = None
        try:
            if self.held_fds + len(fds) > MAX_HELD_FDS:
                raise ValueError(
                    f"the peer sent more than {MAX_HELD_FDS} descriptors that are not received yet"
                )
            if ONE_FD is not None and flags & _b.RX_FLAG_ALL_FD:
                handles: list[Any] = fd_objects(fds)  # (Unix: nothing to convert)
                fds.clear()
            else:
                handles = rebuild(fds, reader.described())
            handle = handles if flags & _b.RX_FLAG_MANY else handles[0]
            if kind == _b.FRAME_RING:  # set-up: the rings, ours to read first
                if self.ring_setup is not None or not self.rings or payload or len(handles) != 2:
                    raise ValueError("an unexpected ring set-up")
                if not (flags & _b.RX_FLAG_MANY and all(isinstance(h, Ring) for h in handles)):
                    raise ValueError("a ring set-up needs two rings")
                self.ring_setup = handles
                return
            if kind == _b.FRAME_CONTROL:  # the channel's own, with handles
                self.control.append((pickle.loads(payload), handle))
                self.held_fds += len(handles)
                return
            obj = _decode_message(kind, payload)
        except BaseException:
            close_fds(fds)
            close_handle(handle)
            raise
        self.ready.append((obj, handle))
        self.held_fds += len(handles)


def _decode_message(kind: int, payload: Any) -> Any:
    """A user message's payload decoded by its frame kind (pickle, JSON or raw bytes)."""
    if kind == _b.FRAME_PICKLE:
        return pickle.loads(payload)
    if kind == _b.FRAME_JSON:
        return _json.loads(bytes(payload))
    return bytes(payload)


def close_sent(handles: list[Any]) -> None:
    """After a send, this side's copies go, as in Node.

    A Ring stays open: both ends use its memory (close it when done).
    """
    for h in handles:
        if not isinstance(h, Ring):
            h.close()


def attach(body: Any, handle: Any, handles: list[Any]) -> tuple[int, Any, list[int]]:
    """A payload with its handles described in front: ``(frame flags, payload, fds)``.

    ``TypeError``/``ValueError`` for a handle that cannot be sent (nothing is written).
    """
    if not handles:
        return 0, body, []
    if len(handles) > _b.FRAME_MAX_FDS:
        raise ValueError(f"at most {_b.FRAME_MAX_FDS} handles fit in one message")
    fds, described = describe(handles, isinstance(handle, (list, tuple)))
    return _b.FRAME_FLAG_HANDLES, META_LEN.pack(len(described)) + described + body, fds


def handle_list(handle: Any) -> list[Any]:
    """``send``'s handle argument as a list (None: empty; a list or tuple: its items)."""
    if handle is None:
        return []
    return list(handle) if isinstance(handle, (list, tuple)) else [handle]


def close_handle(handle: Any) -> None:
    if handle is None:
        return
    for h in handle if isinstance(handle, list) else [handle]:
        try:
            h.close()
        except OSError:
            pass  # (closed already, or not ours any more: nothing else to give back)


class RECORD:
    """In a channel's ready queue: a ring record that came over the socket."""

    __slots__ = ("data",)

    def __init__(self, data: bytearray) -> None:
        self.data = data


BACK = object()  # in a channel's ready queue: the records go back to the ring
