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

import bisect
import itertools
import math
import os
import pickle
import socket
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

from . import _bindings as _b
from . import _json, _node, _ringlink
from ._checks import deadline as _deadline
from ._wire import (
    KIND,
    NO_FDS,
    ONE_FD,
    Decoder,
    Fd,
    Handle,
    attach,
    close_fds,
    close_handle,
    close_sent,
    fd_objects,
    handle_list,
    reason,
)
from .errors import ChannelClosedError, FrameError, PicklingError
from .ring import Ring, watching
from .ring import adopt as adopt_ring

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "Channel", "Fd"]

DEFAULT_MAX_MESSAGE_SIZE = 256 << 20
_RUN_BYTES = 1 << 18  # send_many writes small messages in runs of up to this size
_ALONE_BYTES = 1 << 14  # and larger ones one write each (copying them costs more)
_SERIALIZATIONS = ("pickle", "json", "raw")
_FRAMINGS = ("pyforkd", "node")


_PICKLE = _b.FRAME_PICKLE
_send_bytes, _NO_C_FDS, _BLOCK = _b.frame_send_bytes, _b.NO_C_FDS, _b.FD_BLOCK
_NO_META = -3  # FrameReader.next's meta is >= 0 for a frame, -1 at the end, -2 for none yet


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
        # Frames are split from the stream in C (FrameReader); Node's lines in the decoder.
        self._reader: _b.FrameReader | None = None
        self._receiver: _b.Receiver | None = None
        self._decoder: Decoder
        if framing == "node":
            self._receiver = _b.Receiver()
            self._decoder = _node.LineDecoder(max_message_size, False)
        else:
            self._reader = _b.FrameReader(max_message_size)
            self._decoder = Decoder(max_message_size, serialization == "pickle")
        # What recv decodes inline: a plain pickle (on a pickle channel) or raw frame.
        # (_NO_META where a hot path does not apply: no frame's meta, nor END or AGAIN's)
        self._plain_pickle = _b.FRAME_PICKLE if serialization == "pickle" else _NO_META
        # A message with one Fd, or a list of Fds: recv's other hot paths (pickle and raw
        # channels on Unix, where a received number is ours as it is).
        kind = {"pickle": _b.FRAME_PICKLE, "raw": _b.FRAME_RAW}.get(serialization, -1)
        fast = kind > 0 and ONE_FD is not None
        self._one_fd = (
            kind | (_b.FRAME_FLAG_HANDLES | _b.RX_FLAG_ALL_FD) << 8 | 1 << 24 if fast else _NO_META
        )
        self._fd_list = (
            kind | (_b.FRAME_FLAG_HANDLES | _b.RX_FLAG_ALL_FD | _b.RX_FLAG_MANY) << 8
            if fast
            else _NO_META
        )
        self._eof = False
        self._closed = False
        self._closed_fd = False  # (Windows: the pipe handle was closed)
        # Node framing: Node's protocol (handles and their ACKs, its questions).
        self._node: _node.NodeSide | None = None
        if framing == "node":
            self._node = _node.NodeSide(SocketPort(self))
            # A weak reference: the decoder is the channel's, and a cycle would leave the
            # socket to the garbage collector, which may finalize it first (unclosed).
            self._decoder.node_socket = weakref.WeakMethod(self._node.make_socket)
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
                        theirs.append(adopt_ring(fd))
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
            raise _unpicklable(exc) from None

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
        link = self._link
        if link is not None:
            if self._closed:  # (a FrameError closes a ring channel and leaves its link)
                raise ChannelClosedError("the channel is closed")
            deadline = None if timeout is None else _deadline(timeout)
            if link is _AWAITING_RINGS:
                link = self._ring_link(deadline)
            link.send(obj, handle, keep_open, deadline)
            return
        if timeout is None and self.framing == "pyforkd":
            # The hot path: no deadline, so one blocking C call writes the whole frame.
            if handle is None:
                if self._plain_pickle > 0:  # (a pickle channel: encoded here, one call less)
                    try:
                        kind, body = _PICKLE, pickle.dumps(obj, protocol=5)
                    except (pickle.PicklingError, TypeError, AttributeError) as exc:
                        raise _unpicklable(exc) from None
                else:
                    kind, body = self._encode(obj)
                flags, fds, handles = 0, NO_FDS, NO_FDS
                if len(body) > self.max_message_size:
                    self._check_size(len(body))
            elif type(handle) is Fd and ONE_FD is not None:
                # One Fd (the common handle): its description is known in advance.
                fds, handles = [handle.fileno()], [handle]
                if self._plain_pickle > 0:
                    try:
                        kind, body = _PICKLE, ONE_FD + pickle.dumps(obj, protocol=5)
                    except (pickle.PicklingError, TypeError, AttributeError) as exc:
                        raise _unpicklable(exc) from None
                elif type(obj) is bytes and self._one_fd & 0xFF == _b.FRAME_RAW:
                    kind, body = _b.FRAME_RAW, ONE_FD + obj
                else:
                    kind, body = self._encode(obj)
                    body = ONE_FD + body  # (a copy: a raw buffer's bytes go behind it)
                flags = _b.FRAME_FLAG_HANDLES
                if len(body) > self.max_message_size:
                    self._check_size(len(body))
            else:
                handles = handle_list(handle)
                kind, flags, body, fds = self._frame_parts(obj, handle, handles)
            with self._send_lock:
                if self._closed:
                    raise ChannelClosedError("the channel is closed")
                try:
                    if type(body) is not bytes or len(fds) > 1:
                        sent = _b.frame_send(self._fd, kind, body, True, flags, fds)
                    else:  # (one C call: bytes, and a list of one descriptor, go as they are)
                        sent = _send_bytes(
                            self._fd,
                            kind,
                            flags,
                            body,
                            len(body),
                            fds or _NO_C_FDS,
                            len(fds),
                            _BLOCK,
                        )
                        if sent < 0:
                            _b.frame_send_failed(sent, fds)  # (it raises, unless a signal came)
                            sent = None
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
                close_sent(handles)
            return
        deadline = _deadline(timeout)
        self._check_open()
        handles = handle_list(handle)
        if self.framing == "node":
            assert self._node is not None
            self._node.send(obj, handles, keep_open, deadline)
            return
        head, body, fds = self._prepare(obj, handle, handles)
        with self._send_lock:
            self._check_open()
            self._write(head, body, fds, deadline)
        if not keep_open:
            close_sent(handles)

    def send_many(self, msgs: Iterable[Any], *, timeout: float | None = None) -> None:
        """Send every message of ``msgs`` (without handles), in order, as :meth:`send` would.

        Every message is encoded before a byte is written: one that cannot be, or is over
        ``max_message_size``, raises ``TypeError``/``ValueError`` and none is sent.  Over a
        socket they go in as few system calls as fit (one for a batch of small messages).
        ``timeout`` bounds the whole batch; a batch caught half-way closes the channel.
        """
        items = list(msgs)
        link = self._link
        if link is not None:
            if self._closed:
                raise ChannelClosedError("the channel is closed")
            deadline = _deadline(timeout)
            if link is _AWAITING_RINGS:
                link = self._ring_link(deadline)
            link.send_many(items, deadline)
            return
        if self.framing == "node":
            lines = []
            for obj in items:
                line = self._encode(obj)[1]
                self._check_size(len(line))
                lines.append(line + b"\n")
            deadline = _deadline(timeout)
            assert self._node is not None
            for chunk in _batches(lines):
                self._node.write_lines(chunk, -1, None, deadline)
            return
        if not items:
            return
        kind = KIND[self.serialization]
        bodies = self._encode_batch(items)
        lengths = [len(body) for body in bodies]
        biggest = max(lengths)
        if biggest > self.max_message_size:
            self._check_size(biggest)
        ends = list(itertools.accumulate(lengths))
        codec = self._send_codec
        deadline = _deadline(timeout)
        with self._send_lock:
            self._check_open()
            i = 0
            while i < len(bodies):
                if lengths[i] >= _ALONE_BYTES:  # a large one goes from where it is: no copy
                    codec.encode(kind, 0, 0, lengths[i])
                    self._write(bytes(codec.header_bytes), bodies[i], [], deadline)
                    i += 1
                    continue
                # Small ones, a run of up to _RUN_BYTES: framed by one C call, one write.
                done = ends[i] - lengths[i]
                j = max(i + 1, bisect.bisect_right(ends, done + _RUN_BYTES, i))
                packed = _b.frame_pack(kind, b"".join(bodies[i:j]), lengths[i:j])
                self._write(packed, b"", [], deadline)
                i = j

    def _encode_batch(self, items: list[Any]) -> list[Any]:
        """The payloads of ``items``, as :meth:`_encode` makes them (one kind: the channel's)."""
        if self.serialization == "pickle":
            try:
                return [pickle.dumps(obj, protocol=5) for obj in items]
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                raise PicklingError(f"cannot pickle this message: {exc}") from None
        if self.serialization == "raw" and all(type(obj) is bytes for obj in items):
            return items
        return [self._encode(obj)[1] for obj in items]

    def _frame_parts(
        self, obj: Any, handle: Any, handles: list[Any]
    ) -> tuple[int, int, bytes, list[int]]:
        """A frame's kind, flags, payload and descriptors.

        ``TypeError``/``ValueError`` when the message or a handle cannot be sent (nothing
        is written then).
        """
        kind, body = self._encode(obj)
        flags, body, fds = attach(body, handle, handles)
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
        handles = handle_list(handle)
        flags, body, fds = attach(body, handle, handles)
        with self._send_lock:
            self._check_open()
            self._send_codec.encode(_b.FRAME_CONTROL, flags, len(fds), len(body))
            self._write(bytes(self._send_codec.header_bytes), body, fds, None)
        if not keep_open:
            close_sent(handles)

    def recv_control(self, timeout: float | None = None, *, with_handle: bool = False) -> Any:
        """Receive the next control message; user messages that come first stay queued.

        With ``with_handle=True``: ``(message, handle)``.
        """
        deadline = _deadline(timeout)
        with self._recv_lock:
            obj, handle = self._next_of(self._decoder.control, deadline)
        if with_handle:
            return obj, handle
        close_handle(handle)
        return obj

    def _forget(self) -> None:
        """In a forked child: close this process's copy without touching the socket.

        (``close`` would shut the socket down, which the parent still uses.)
        """
        self._closed = True
        self._link = None  # its rings may be shared with a channel of this process
        if self._reader is not None:
            self._reader.close()
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
        with self._recv_lock:
            reader = self._reader
            if timeout is None and self._link is None and reader is not None:
                if not self._decoder.ready:
                    # The hot path: one C call hands out the next frame, a plain one is
                    # decoded here, anything else goes through the decoder's queues.
                    try:
                        meta, payload = reader.next(self._fd, -1)
                    except (FrameError, ChannelClosedError):
                        self._discard()
                        raise
                    try:
                        if meta == self._plain_pickle:
                            obj = pickle.loads(payload)
                            return (obj, None) if with_handle else obj
                        if meta == _b.FRAME_RAW:
                            obj = bytes(payload)
                            return (obj, None) if with_handle else obj
                    except Exception as exc:
                        self._undecodable(exc)
                    one = meta == self._one_fd
                    if one or meta & 0xFFFFFF == self._fd_list:
                        handle = Fd(reader.fd()) if one else fd_objects(reader.fds())
                        try:
                            obj = (
                                pickle.loads(payload) if meta & 0xFF == _PICKLE else bytes(payload)
                            )
                        except Exception as exc:
                            close_handle(handle)
                            self._undecodable(exc)
                        if with_handle:
                            return obj, handle
                    else:
                        self._take(meta, payload)
                        obj, handle = self._pop_ready(None)
                else:
                    obj, handle = self._pop_ready(None)
            elif self._link is not None:
                deadline = None if timeout is None else _deadline(timeout)
                if self._closed:
                    raise ChannelClosedError("the channel is closed")
                link = self._link
                if link is _AWAITING_RINGS:
                    link = self._ring_link(deadline)
                obj, handle = link.recv(deadline)
            else:
                obj, handle = self._pop_ready(_deadline(timeout))
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

    def recv_many(
        self, limit: int = 64, timeout: float | None = None, *, with_handle: bool = False
    ) -> list[Any]:
        """Up to ``limit`` messages: the next, and those that came with it (no more wait).

        The first is waited for as :meth:`recv` does.  One read brings every message the
        peer's writes put in the socket by then.  With ``with_handle=True`` each item is
        ``(message, handle)``.  Exceptions as for :meth:`recv` (only before the first).
        """
        if limit < 1:
            raise ValueError(f"recv_many() takes at least 1 message, not {limit}")
        deadline = None if timeout is None else _deadline(timeout)
        decoder = self._decoder
        reader = self._reader
        with self._recv_lock:
            if self._link is not None:
                got = [self.recv(timeout, with_handle=True)]
                if not self._closed:
                    self._link.recv_ready(got, limit)  # (a batch out of the ring at once)
                while len(got) < limit and not self._closed:
                    try:
                        # (a deadline already passed: what is there now, no wait)
                        got.append(self._link.recv(0.0))
                    except (TimeoutError, ChannelClosedError):
                        break  # (a record still on its way, or the end: the next call says so)
                    if got[-1][1] is not None:
                        self._watch_rings(got[-1][1])
                return self._without_handles(got, with_handle)
            got = [self._pop_ready(deadline)]
            ready = decoder.ready
            while len(got) < limit:
                if ready:
                    got.append(decoder.pop(ready))
                    continue
                if reader is None or self._closed:
                    break
                # What the last read brought: frames already whole in the reader's buffer,
                # told by one C call; plain ones are decoded here.
                view, info = reader.batch(limit - len(got))
                pickled = self._plain_pickle
                try:
                    for i in range(0, len(info), 3):
                        meta, start = info[i], info[i + 1]
                        payload = view[start : start + info[i + 2]]
                        if meta == pickled:
                            got.append((pickle.loads(payload), None))
                        elif meta == _b.FRAME_RAW:
                            got.append((bytes(payload), None))
                        else:  # (through the queues; taken from them at once, in order)
                            self._take(meta, payload)
                            if ready:
                                got.append(decoder.pop(ready))
                except FrameError:
                    raise
                except Exception as exc:
                    self._undecodable(exc)
                if info:
                    continue
                meta, payload = reader.next(-1, 0)  # (one with descriptors, or none)
                if meta < 0:
                    break
                self._take(meta, payload)
        for _, handle in got:
            if handle is not None:
                self._watch_rings(handle)
        return self._without_handles(got, with_handle)

    @staticmethod
    def _without_handles(got: list[tuple[Any, Any]], with_handle: bool) -> list[Any]:
        """``got`` as recv_many returns it: handles closed (with a warning) unless wanted."""
        if with_handle:
            return got
        out = []
        for obj, handle in got:
            if handle is not None:
                close_handle(handle)
                warnings.warn(
                    "a message came with a handle, which was closed: use "
                    "recv_many(with_handle=True) to take it",
                    ResourceWarning,
                    stacklevel=3,
                )
            out.append(obj)
        return out

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
            if isinstance(h, Ring) and not watching(h):
                h.watch(self)

    def _buffered(self) -> bool:
        """Whether a message is here already (decoded, or whole in the reader's buffer)."""
        return bool(self._decoder.ready) or (self._reader is not None and self._reader.ready())

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
        self._link = _ringlink.make(SocketPort(self), tx, rx)

    def _offer_rings(self, tx: Ring, rx: Ring) -> None:
        """Use ``tx``/``rx`` and send them to the peer as the first frame on the socket.

        A peer already gone is left for the first send or recv to find.
        """
        self._use_rings(tx, rx)
        flags, body, fds = attach(b"", [tx, rx], [tx, rx])
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
        """Take one frame from the reader, which reads when it has none (up to the deadline).

        (A Node channel: one recvmsg for its line decoder.)
        """
        reader = self._reader
        if reader is None:
            self._receive_lines(deadline)
            return
        ms = -1 if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))
        try:
            meta, payload = reader.next(self._fd, ms)
        except (FrameError, ChannelClosedError):
            self._discard()
            raise
        if meta == -2 and deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError("recv timed out")
        self._take(meta, payload)

    def _take(self, meta: int, payload: Any) -> None:
        """Queue the frame the reader handed out (``meta`` < 0: none; -1: the end)."""
        if meta < 0:
            if meta == -1:
                self._eof = True
            return
        decoder = self._decoder
        try:
            decoder.take(meta, payload, self._reader)
        except FrameError:
            self._discard()
            raise
        if decoder.ring_setup is not None and self._link is _AWAITING_RINGS:
            rx, tx = decoder.ring_setup  # the peer's first ring is the one it writes
            self._link = _ringlink.make(SocketPort(self), tx, rx)

    def _undecodable(self, exc: BaseException) -> NoReturn:
        """A payload the decoders refused: the channel closes, as for a malformed frame."""
        self._discard()
        raise FrameError(f"cannot decode a message: {reason(exc)}") from None

    def _receive_lines(self, deadline: float | None) -> None:
        """One recvmsg (after waiting for the deadline if there is one); feeds the lines."""
        if deadline is not None and not self._wait(_b.POLL_IN, deadline):
            raise TimeoutError("recv timed out")
        decoder = self._decoder
        assert isinstance(decoder, _node.LineDecoder) and self._receiver is not None
        got: tuple[Any, list[int] | None] | None
        try:
            got = self._receiver.recv(self._fd, deadline is None)
        except ConnectionResetError:
            got = (memoryview(b""), [])
        if got is None:
            return  # a signal came (its handler ran) or a spurious wake-up
        chunk, fds = got
        if not chunk and fds is not None:
            self._eof = True
            if decoder.partial or fds:
                close_fds(fds)
                self._discard()
                raise ChannelClosedError("the peer closed the channel in the middle of a message")
            return
        try:
            decoder.feed(chunk, fds)
        except FrameError:
            self._discard()
            raise
        node = self._node
        if node is not None and (decoder.node_internal or node.answers):
            node.act(decoder.node_internal, deadline)

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
        if self._reader is not None:
            self._reader.close()  # (with the descriptors it held)
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
            if self._node is not None:
                self._node.close()

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


class SocketPort:
    """A channel's socket side, as the modules that drive it use it.

    (``_ringlink.Link``, ``_node.NodeSide`` and ``aio.AsyncChannel``.)  They write on the
    socket through this and take from it what came.  It holds the channel weakly: the
    channel owns the first two, and a cycle would leave the channel's socket to the
    garbage collector.
    """

    __slots__ = ("_channel", "fd", "max_message_size", "recv_lock", "send_lock", "serialization")

    def __init__(self, channel: Channel) -> None:
        self._channel = weakref.ref(channel)
        self.fd = channel._fd
        self.send_lock = channel._send_lock
        self.recv_lock = channel._recv_lock
        self.max_message_size = channel.max_message_size
        self.serialization = channel.serialization

    def _alive(self) -> Channel:
        channel = self._channel()
        if channel is None:
            raise ChannelClosedError("the channel of these rings is gone")
        return channel

    @property
    def closed(self) -> bool:
        """Whether the channel is closed (or gone)."""
        channel = self._channel()
        return channel is None or channel._closed

    def fileno(self) -> int:
        """The channel's socket: a ring wait watches it for the peer's hang-up."""
        return self.fd

    def check_open(self) -> None:
        """``ChannelClosedError`` once the channel is closed."""
        self._alive()._check_open()

    def check_size(self, size: int) -> None:
        """``ValueError`` for a message of ``size`` bytes over ``max_message_size``."""
        self._alive()._check_size(size)

    def encode(self, obj: Any) -> tuple[int, Any]:
        """The frame kind and payload the channel sends for ``obj``."""
        return self._alive()._encode(obj)

    def frame_parts(
        self, obj: Any, handle: Any, handles: list[Any]
    ) -> tuple[int, int, Any, list[int]]:
        """Kind, flags, payload and descriptors of ``obj`` sent with ``handle``."""
        return self._alive()._frame_parts(obj, handle, handles)

    def header(self, kind: int, flags: int, nfds: int, length: int) -> bytes:
        """A frame header (the send lock is held)."""
        codec = self._alive()._send_codec
        codec.encode(kind, flags, nfds, length)
        return bytes(codec.header_bytes)

    def write(self, head: Any, body: Any, fds: list[int], deadline: float | None) -> None:
        """Write head + body on the socket, descriptors on the first byte (send lock held)."""
        self._alive()._write(head, body, fds, deadline)

    def prepare(self, obj: Any, handle: Any, handles: list[Any]) -> tuple[bytes, bytes, list[int]]:
        """One whole pyforkd frame for ``obj``: header, payload, descriptors (nothing sent)."""
        return self._alive()._prepare(obj, handle, handles)

    def write_steps(self, head: Any, body: Any, fds: list[int]) -> Iterator[bool]:
        """Write without blocking; each item says the socket is full (whether any went).

        The caller waits for the socket to take more, then goes on (send lock held).
        """
        return self._alive()._write_steps(head, body, fds, False)

    def timed_out(self, sent_any: bool) -> NoReturn:
        """Raise a send's ``TimeoutError`` (half a message sent: the channel closes)."""
        self._alive()._timed_out(sent_any)

    @property
    def over_rings(self) -> bool:
        """Whether messages go through rings (or are about to: the set-up is awaited)."""
        channel = self._channel()
        return channel is not None and channel._link is not None

    @property
    def node(self) -> Any:
        """Node's protocol side (``_node.NodeSide``) of a channel to Node, else None."""
        channel = self._channel()
        return None if channel is None else channel._node

    def ring_link(self, deadline: float | None) -> Any:
        """The ring link (waiting for the rings' set-up until ``deadline``)."""
        return self._alive()._ring_link(deadline)

    @property
    def eof(self) -> bool:
        """Whether the peer closed the channel (or it is gone)."""
        channel = self._channel()
        return channel is None or channel._eof

    def receive(self, deadline: float | None) -> None:
        """Read the socket once (receive lock held): what comes is decoded and acted on."""
        self._alive()._receive(deadline)

    def pop(self, deadline: float | None) -> tuple[Any, Any]:
        """The next item that came on the socket and its handle (receive lock held)."""
        return self._alive()._pop_ready(deadline)

    def buffered(self) -> bool:
        """Whether something from the socket is here already."""
        channel = self._channel()
        return channel is not None and channel._buffered()

    def discard(self) -> None:
        """Close the channel's socket and drop what it holds (a malformed record came)."""
        self._alive()._discard()

    def close(self) -> None:
        """Close the channel."""
        channel = self._channel()
        if channel is not None:
            channel.close()


def _unpicklable(exc: BaseException) -> PicklingError:
    return PicklingError(f"cannot pickle this message: {exc}")


def _batches(pieces: list[bytes]) -> Iterator[bytes]:
    """``pieces`` joined into runs of about ``_RUN_BYTES`` (one write each)."""
    run: list[bytes] = []
    size = 0
    for piece in pieces:
        run.append(piece)
        size += len(piece)
        if size >= _RUN_BYTES:
            yield b"".join(run)
            run, size = [], 0
    if run:
        yield b"".join(run)


_AWAITING_RINGS = object()  # Channel._link until the peer's ring set-up frame comes


# ---- pyforkd's own (not in __all__): what the modules that make channels set up ----------


def forget(channel: Channel) -> None:
    """In a forked child: drop this process's copy of ``channel``, leaving the socket be."""
    channel._forget()


def use_rings(channel: Channel, tx: Ring, rx: Ring) -> None:
    """``channel`` sends through ``tx`` and receives through ``rx`` from now on."""
    channel._use_rings(tx, rx)


def offer_rings(channel: Channel, tx: Ring, rx: Ring) -> None:
    """Use ``tx``/``rx`` and send them to the peer as the first frame on the socket."""
    channel._offer_rings(tx, rx)


def expect_rings(channel: Channel) -> None:
    """The peer sends ``channel``'s rings as its first frame."""
    channel._expect_rings()


def ring_link(channel: Channel) -> Any:
    """``channel``'s ring link, once the peer's set-up frame has come."""
    return channel._ring_link()
