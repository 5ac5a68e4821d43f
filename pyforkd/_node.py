"""Node.js's side of a channel: its ``'json'`` line framing and its handle messages.

One compact JSON document per line.  Node's own messages (``cmd`` starting ``NODE_``)
never reach the user: the channel acts on them.  A socket handed over comes as a
``NODE_HANDLE`` line with one descriptor beside it.
"""

from __future__ import annotations

import _socket
import collections
import json
import os
import socket
import stat
import threading
import time
import warnings
import weakref
from typing import TYPE_CHECKING, Any

from . import _json
from ._wire import MAX_HELD_FDS, Decoder, Fd, close_fds, close_handle, fail
from .errors import ChannelClosedError, FrameError

if TYPE_CHECKING:  # (the channel builds on this module: no import of it at run time)
    from .channel import SocketPort

_PREFIX = "NODE_"
MAX_RETRANSMISSIONS = 3  # Node's MAX_HANDLE_RETRANSMISSIONS
MAX_ANSWERS = 4096  # answers to a Node peer's queries that wait for it to read
SOCKET_TYPES = ("net.Socket", "net.Server", "net.Native", "dgram.Socket", "dgram.Native")


def is_internal(obj: Any) -> bool:
    """Node's isInternal: an object whose ``cmd`` is ``NODE_`` and something more."""
    if not isinstance(obj, dict):
        return False
    cmd = obj.get("cmd")
    return isinstance(cmd, str) and len(cmd) > len(_PREFIX) and cmd.startswith(_PREFIX)


def handle_fields(handle: Any) -> tuple[int, dict[str, Any]]:
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


class PendingHandle:
    """A handle sent to a Node peer, kept until its NODE_HANDLE_ACK."""

    __slots__ = ("fd", "handle", "line", "nacked", "retransmissions")

    def __init__(self, line: bytes, fd: int, handle: Any) -> None:
        self.line = line
        self.fd = fd
        self.handle = handle  # closed at the ACK (None when the sender keeps it open)
        self.retransmissions = 0
        self.nacked = False


class LineDecoder(Decoder):
    """The decoder for Node's framing: one JSON document per line.

    ``feed`` takes each recvmsg's bytes and descriptors in order, however the stream was
    split.  Descriptors go with the line whose first byte came in the same read (Node
    writes a handle's line in one write, and the kernel ends a read right after it).
    """

    def __init__(self, max_length: int, allow_pickle: bool) -> None:
        super().__init__(max_length, allow_pickle)
        self.pending = bytearray()  # bytes of a line not whole yet
        self.pending_start = 0  # stream offset of pending[0]
        self.stream_pos = 0  # stream offset of the next byte to arrive
        self.line_scanned = 0  # how much of ``pending`` has no newline
        self.fd_batches: collections.deque[tuple[int, int, list[int]]] = collections.deque()

    def feed(self, chunk: Any, fds: list[int] | None) -> None:
        """Take one recvmsg's bytes and descriptors (None: truncated, already closed)."""
        start = self.stream_pos
        self.stream_pos += len(chunk)
        if self.ready or self.control:
            self._count_backlog(len(chunk))
        if fds is None:
            self.discard()
            fail("the peer attached more descriptors than one message may carry; all were closed")
        if fds:
            self.fd_batches.append((start, self.stream_pos, fds))
        self.pending += chunk
        self.guarded(self._decode_lines)

    @property
    def partial(self) -> bool:
        """Whether a line or descriptors wait for the rest of their message."""
        return bool(self.pending or self.fd_batches)

    def discard(self) -> None:
        """Close every descriptor held, delivered or not, and forget pending bytes."""
        while self.fd_batches:
            close_fds(self.fd_batches.popleft()[2])
        super().discard()
        self.pending.clear()
        self.line_scanned = 0

    def _check_unclaimed(self) -> None:
        """Refuse descriptors that no line can claim, as soon as they come.

        Once every whole line is decoded, the one batch that may wait is the one that came
        with the first byte of the partial line: a peer cannot park descriptors here by
        never finishing a line.
        """
        for start, end, _ in self.fd_batches:
            if end <= self.pending_start:
                fail("descriptors came with a message that declares none")
            if start > self.pending_start:
                fail("descriptors came in the middle of a message")

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
            fail(f"a line longer than max_message_size ({self.max_length}) bytes")

    def _deliver_node(self, line: bytes, line_start: int) -> None:
        try:
            obj = _json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"not a JSON message: {exc}") from None
        if not is_internal(obj):
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
        if len(fds) != 1 or kind not in SOCKET_TYPES:
            count = len(fds)
            close_fds(fds)
            fail(f"a NODE_HANDLE of type {kind!r} came with {count} descriptors")
        if self.held_fds >= MAX_HELD_FDS:
            close_fds(fds)
            fail(f"the peer sent more than {MAX_HELD_FDS} handles that are not received yet")
        key = obj.get("key")
        handle = self.node_socket()(fds[0], key if isinstance(key, str) else None)
        self.node_internal.append(("answer", {"cmd": "NODE_HANDLE_ACK"}))
        msg = obj.get("msg")
        if is_internal(msg):  # Node cluster traffic: not for the user either
            handle.close()
            return
        self.ready.append((msg, handle))
        self.held_fds += 1


class NodeSide:
    """Node's protocol on one line-framed channel: handles and their ACKs, its questions.

    A handle goes as a ``NODE_HANDLE`` line with its descriptor; every later send waits for
    its ACK (Node keeps the order of messages so), a NACK sends it again.  Node asks how
    many handed-over sockets are still open, and to be told when none is.  What this does
    on the socket goes through ``port`` (``channel.SocketPort``).
    """

    def __init__(self, port: SocketPort) -> None:
        self.port = port
        self.pending: PendingHandle | None = None  # the handle awaiting its ACK
        self.acked = threading.Event()
        self.lock = threading.Lock()
        self.open: dict[str, int] = {}  # handed-over sockets open, per Node server key
        self.notify: set[str] = set()  # keys whose last close the peer wants to hear of
        self.answers: collections.deque[bytes] = collections.deque()  # lines not sent yet

    def send(self, obj: Any, handles: list[Any], keep_open: bool, deadline: float | None) -> None:
        """Send a JSON line; with a handle, Node's NODE_HANDLE wrapping and ACK protocol.

        Like Node, a send made while an earlier handle awaits its ACK waits for that ACK
        (message order is kept); unlike Node, it waits with a bound (``timeout``).
        """
        fd = -1
        if handles:
            if len(handles) > 1:
                raise ValueError("a Node peer takes one handle per message")
            fd, fields = handle_fields(handles[0])
            obj = {"cmd": "NODE_HANDLE", **fields, "msg": obj}
        line = self.port.encode(obj)[1] + b"\n"
        self.port.check_size(len(line) - 1)
        self.write_lines(line, fd, None if keep_open or fd < 0 else handles[0], deadline)

    def write_lines(self, lines: bytes, fd: int, handle: Any, deadline: float | None) -> None:
        """Write whole JSON lines (``fd``: a descriptor on the first byte, for NODE_HANDLE).

        After any handle sent before has its ACK: Node keeps the order of messages so.
        """
        port = self.port
        while True:
            with port.send_lock:
                port.check_open()
                pending = self.pending
                if pending is None:
                    port.write(b"", lines, [fd] if fd >= 0 else [], deadline)
                    if fd >= 0:
                        self.acked.clear()
                        self.pending = PendingHandle(lines, fd, handle)
                    return
                if pending.nacked:
                    self._retransmit(pending)
            self._await_ack(deadline)

    def _await_ack(self, deadline: float | None) -> None:
        """Read until the pending handle's ACK, or let the thread that reads do it."""
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError("send timed out: the Node peer has not acknowledged a handle")
        slice_end = time.monotonic() + 0.05
        if deadline is not None:
            slice_end = min(slice_end, deadline)
        port = self.port
        if not port.recv_lock.acquire(timeout=0.05):
            self.acked.wait(0.05)  # another thread is reading: it will see the ACK
            return
        try:
            pending = self.pending
            if pending is None or pending.nacked:
                return
            if port.eof:
                raise ChannelClosedError("the peer closed the channel")
            try:
                port.receive(slice_end)
            except TimeoutError:
                pass  # this slice is over; the sender checks its own deadline
        finally:
            port.recv_lock.release()

    def _retransmit(self, pending: PendingHandle) -> None:
        """Send a NACKed handle again (the send lock is held)."""
        pending.nacked = False
        self.port.write(b"", pending.line, [pending.fd], None)

    def act(
        self, queue: collections.deque[tuple[str, dict[str, Any]]], deadline: float | None
    ) -> None:
        """Act on Node's internal messages that the last read decoded (``queue``).

        The answers go out by ``deadline`` (the receive's) as far as the peer reads them;
        the rest wait for the next receive.  A peer that keeps asking and never reads
        cannot make this side hold more than a bounded number of answers.
        """
        while queue:
            direction, msg = queue.popleft()
            cmd, key = msg["cmd"], msg.get("key")
            if direction == "answer":
                self._answer(msg)
            elif cmd in ("NODE_HANDLE_ACK", "NODE_HANDLE_NACK"):
                self._reply(cmd == "NODE_HANDLE_ACK")
            elif cmd == "NODE_SOCKET_GET_COUNT" and isinstance(key, str):
                with self.lock:
                    count = self.open.get(key, 0)
                self._answer({"cmd": "NODE_SOCKET_COUNT", "key": key, "count": count})
            elif cmd == "NODE_SOCKET_NOTIFY_CLOSE" and isinstance(key, str):
                with self.lock:
                    empty = not self.open.get(key)
                    if not empty:
                        self.notify.add(key)
                if empty:
                    self._answer({"cmd": "NODE_SOCKET_ALL_CLOSED", "key": key})
            # anything else (NODE_CLUSTER, NODE_DEBUG_ENABLED, ...) is not for this channel
        if len(self.answers) > MAX_ANSWERS:
            self.port.discard()
            raise FrameError(
                f"the Node peer asked more than {MAX_ANSWERS} questions without reading the answers"
            )
        self.flush(deadline)

    def _reply(self, acked: bool) -> None:
        """The peer's ACK or NACK for the pending handle."""
        pending = self.pending
        if pending is None:
            return
        port = self.port
        if not acked and pending.retransmissions < MAX_RETRANSMISSIONS:
            pending.retransmissions += 1
            pending.nacked = True
            if port.send_lock.acquire(blocking=False):  # else the waiting sender resends
                try:
                    if pending.nacked and not port.closed:
                        self._retransmit(pending)
                finally:
                    port.send_lock.release()
            return
        if not acked:
            warnings.warn(
                "a handle did not reach the Node peer after "
                f"{MAX_RETRANSMISSIONS} retransmissions; it was closed",
                RuntimeWarning,
                stacklevel=2,
            )
        self.pending = None
        self.acked.set()
        close_handle(pending.handle)

    def _answer(self, msg: dict[str, Any]) -> None:
        """Queue one of the channel's own lines.

        The next flush sends it, never behind a pending handle.
        """
        self.answers.append(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def flush(self, deadline: float | None) -> None:
        """Send the queued answers, waiting until ``deadline`` at most (None: no limit).

        What the peer has no room for stays queued.
        """
        answers = self.answers
        port = self.port
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not answers or not port.send_lock.acquire(timeout=wait):
            return
        try:
            while answers:
                if port.closed or port.eof:
                    answers.clear()  # as Node: an answer the peer can no longer read is dropped
                    return
                try:
                    port.write(b"", answers[0], [], deadline)
                except ChannelClosedError:
                    answers.clear()  # the peer left meanwhile: nobody to answer
                    return
                except TimeoutError:
                    return  # the peer reads nothing (a half-written line closed the channel)
                answers.popleft()
        finally:
            port.send_lock.release()

    def make_socket(self, fd: int, key: str | None) -> socket.socket:
        """The socket object for a descriptor a Node peer sent (blocking, like accept())."""
        try:
            sock = _NodeSocket(fileno=fd) if key is not None else socket.socket(fileno=fd)
        except OSError as exc:
            close_fds([fd])
            raise ValueError(f"a NODE_HANDLE descriptor is not a socket ({exc})") from None
        sock.setblocking(True)
        if isinstance(sock, _NodeSocket) and key is not None:
            sock.track(self, key)
        return sock

    def socket_opened(self, key: str) -> None:
        """A socket of Node server ``key`` was handed over."""
        with self.lock:
            self.open[key] = self.open.get(key, 0) + 1

    def socket_closed(self, key: str) -> None:
        """A socket of Node server ``key`` was closed: the peer may want to hear of it."""
        with self.lock:
            left = self.open.get(key, 1) - 1
            self.open[key] = left
            notify = left <= 0 and key in self.notify
            if notify:
                self.notify.discard(key)
        if notify:
            self._answer({"cmd": "NODE_SOCKET_ALL_CLOSED", "key": key})
            self.flush(time.monotonic())  # (no wait here: the next receive sends it)

    def close(self) -> None:
        """The channel closed: the pending handle goes, senders waiting for it return."""
        pending, self.pending = self.pending, None
        if pending is not None:
            close_handle(pending.handle)
        self.acked.set()


class _NodeSocket(socket.socket):
    """A socket a Node server handed over: the Node side is told when it closes.

    (Node's ``server.close()`` and ``server.getConnections()`` ask the receiving process
    how many of its connections are still open.)
    """

    _pfd_gone: Any = None

    def track(self, side: NodeSide, key: str) -> None:
        """Count this socket as open for ``key`` until it is closed or detached."""
        side.socket_opened(key)
        self._pfd_gone = weakref.finalize(self, _node_socket_gone, weakref.ref(side), key)

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


def _node_socket_gone(side_ref: Any, key: str) -> None:
    side = side_ref()
    if side is not None:
        side.socket_closed(key)
