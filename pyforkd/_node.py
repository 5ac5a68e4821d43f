"""Node.js's side of a channel: its ``'json'`` line framing and its handle messages.

One compact JSON document per line.  Node's own messages (``cmd`` starting ``NODE_``)
never reach the user: the channel acts on them.  A socket handed over comes as a
``NODE_HANDLE`` line with one descriptor beside it.
"""

from __future__ import annotations

import collections
import os
import socket
import stat
from typing import Any

from . import _json
from ._wire import MAX_HELD_FDS, Decoder, Fd, close_fds, fail, reason
from .errors import FrameError

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
        try:
            self.pending += chunk
            self._decode_lines()
        except FrameError:
            self.discard()
            raise
        except Exception as exc:  # whatever a payload made the decoders raise
            self.discard()
            raise FrameError(f"cannot decode a message: {reason(exc)}") from None

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
