"""The rings under a Channel: how messages travel when a channel has them.

A channel made with ``ring=SIZE`` (``fork_worker``, ``fork``) has one :class:`Ring` per
direction beside its socket.  Messages go as ring records; handles, and the channel's own
control traffic, keep to the socket.

A record holds one message::

    u8 kind, u8 0, u16 n, u32 body length
    n x (u64 offset, u64 length)       pickle's out-of-band buffers, from the record's start
    body                               pickle, JSON or the raw bytes
    buffers                            each at a multiple of 64 in memory

so pickle protocol 5 writes a large buffer (a numpy array, a PickleBuffer) straight into
the ring, and the receiver's object is built on a view of it: one copy in all.  A message
larger than the ring's largest record is a head record (kind CHUNKED and the u64 size of
the message) followed by records holding the message's bytes in order.

Where the records go.  In the ring, until the sender has a message with handles, or finds
the ring full while the receiver sleeps holding every record (it keeps objects built on
views of them): it then writes an empty record (a ring always has room for one) and sends
what follows on the socket, records as FRAME_RING frames, until it finds room in the ring
again and says so with an empty FRAME_RING frame.  The receiver follows the same switches,
so order holds across both ways, and a receiver that keeps views cannot stop its sender
for good.  Rings are set up by the side that makes them: created before a fork, or sent
as the first frame on the socket (FRAME_RING with the two rings as handles).
"""

from __future__ import annotations

import errno as _errno
import pickle
import struct
from typing import TYPE_CHECKING, Any

from . import _bindings as _b
from . import _json
from ._wire import BACK, RECORD, close_sent, handle_list, reason
from .errors import ChannelClosedError, FrameError, PicklingError
from .ring import Ring, RingParts

if TYPE_CHECKING:  # (the channel builds on this module: no import of it at run time)
    from .channel import SocketPort

__all__ = ["BACK", "RECORD", "Link", "make"]

_PICKLE, _JSON, _RAW = _b.FRAME_PICKLE, _b.FRAME_JSON, _b.FRAME_RAW  # as in frames
_BYTEARRAY, _CHUNKED = 8, 9  # kinds of records only
_HEAD = struct.Struct("<BBHI")
_SPAN = struct.Struct("<QQ")
_SIZE = struct.Struct("<Q")
_ALIGN = 64
_OUT_OF_BAND_MIN = 2048  # smaller pickle buffers stay inside the body
_MAPPED_MIN = 1 << 20  # a chunked message at least this large is assembled in fresh pages
_NOTHING = object()  # a record that completes no message


# ---- the record layout -------------------------------------------------------------------


class _Message:
    """An outgoing message: its kind, body and out-of-band buffers (byte views)."""

    __slots__ = ("body", "buffers", "fixed", "kind", "upper")

    def __init__(self, kind: int, body: Any, buffers: list[memoryview]) -> None:
        self.kind = kind
        self.body = body
        self.buffers = buffers
        self.fixed = _HEAD.size + _SPAN.size * len(buffers) + len(body)
        # Padding depends on where the record lands: this is the most it can take.
        self.upper = self.fixed + sum(b.nbytes + _ALIGN - 1 for b in buffers)

    def pieces(self, base: int) -> tuple[list[tuple[int, Any]], int]:
        """``(position, bytes)`` pieces of the record, placed at address ``base`` mod 64."""
        n = len(self.buffers)
        head = bytearray(_HEAD.size + _SPAN.size * n)
        _HEAD.pack_into(head, 0, self.kind, 0, n, len(self.body))
        pieces: list[tuple[int, Any]] = [(0, head), (len(head), self.body)]
        pos = self.fixed
        for i, buf in enumerate(self.buffers):
            pos += -(base + pos) % _ALIGN
            _SPAN.pack_into(head, _HEAD.size + _SPAN.size * i, pos, buf.nbytes)
            pieces.append((pos, buf))
            pos += buf.nbytes
        return pieces, pos


def encode(obj: Any) -> _Message:
    """The layout of ``obj`` pickled (as a channel with ``serialization="pickle"`` sends it)."""
    return _Message(*_pickled(obj))


def encode_parts(port: SocketPort, obj: Any) -> tuple[int, Any, list[memoryview]]:
    """The kind, body and out-of-band buffers of the message a channel sends for ``obj``.

    ``TypeError`` when it cannot be encoded.
    """
    if port.serialization == "pickle":
        return _pickled(obj)
    kind, body = port.encode(obj)  # JSON or raw bytes: the frame kinds are ours too
    return kind, body, []


def _pickled(obj: Any) -> tuple[int, Any, list[memoryview]]:
    if type(obj) is bytes:
        return _RAW, obj, []
    if type(obj) is bytearray:
        return _BYTEARRAY, memoryview(obj), []
    buffers: list[memoryview] = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: it goes in the body
            return True
        if raw.nbytes < _OUT_OF_BAND_MIN:
            return True
        buffers.append(raw)
        return False

    try:
        body = pickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise PicklingError(f"cannot pickle this message: {exc}") from None
    return _PICKLE, body, buffers


def decode(data: memoryview, allow_pickle: bool = True) -> Any:
    """The message in a whole record (``FrameError`` when it is malformed).

    Out-of-band buffers are slices of ``data``: the object is built on them.  A pickle is
    refused unless ``allow_pickle`` (the channel's serialization is pickle).
    """
    size = len(data)
    if size < _HEAD.size:
        raise FrameError(f"a ring record of {size} bytes is shorter than its header")
    kind, _, n, length = _HEAD.unpack_from(data)
    start = _HEAD.size + _SPAN.size * n
    end = start + length
    if end > size:
        raise FrameError(f"a ring record of {size} bytes declares {end} bytes of message")
    body = data[start:end]
    if kind == _PICKLE and not allow_pickle:
        raise FrameError(
            "a pickle came, and this channel does not unpickle (its serialization is not 'pickle')"
        )
    try:
        if kind == _PICKLE:
            if not n:
                return pickle.loads(body)
            buffers = []
            for i in range(n):
                offset, count = _SPAN.unpack_from(data, _HEAD.size + _SPAN.size * i)
                if offset < end or offset + count > size:
                    raise FrameError("a ring record's buffer lies outside it")
                buffers.append(data[offset : offset + count])
            return pickle.loads(body, buffers=buffers)
        if n:
            raise FrameError("only pickled messages carry buffers")
        if kind == _RAW:
            return bytes(body)
        if kind == _BYTEARRAY:
            return bytearray(body)
        if kind == _JSON:
            return _json.loads(bytes(body))
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(f"cannot decode a message: {exc}") from None
    raise FrameError(f"a ring record of unknown kind {kind}")


def _cut(pieces: list[tuple[int, Any]], start: int, count: int) -> list[tuple[int, Any]]:
    """The parts of ``pieces`` in [start, start + count), positioned from ``start``."""
    out = []
    end = start + count
    for pos, data in pieces:
        view = memoryview(data)
        lo, hi = max(pos, start), min(pos + view.nbytes, end)
        if lo < hi:
            out.append((lo - start, view[lo - pos : hi - pos]))
    return out


# ---- the link ----------------------------------------------------------------------------


class Link:
    """The rings of one Channel: ``tx`` this side writes, ``rx`` it reads.

    Every method runs with the channel's send lock (sending) or receive lock (receiving)
    held: the channel's locks are the rings' locks.  What it does on the channel's socket
    goes through ``port`` (``channel.SocketPort``).
    """

    def __init__(self, port: SocketPort, tx: Ring, rx: Ring) -> None:
        self.port = port
        self.tx = tx
        self.rx = rx
        self.txp = RingParts(tx)  # (what the hot paths drive of each ring, taken once)
        self.rxp = RingParts(rx)
        self.allow_pickle = port.serialization == "pickle"
        self.send_lock = port.send_lock  # (the channel's locks are the rings' locks)
        self.open = True  # until close(), under both locks: the rings are mapped
        # Bodies up to this size go by the send hot path: one record, within both limits.
        self.small_body = min(tx.max_record, port.max_message_size) - _HEAD.size
        self.peer_gone = False  # a wait on a ring saw the peer hang up
        self.tx_on_ring = True  # where our next record goes
        self.rx_on_ring = True  # where the peer's next record comes from
        self.copy_out = False  # build received objects on a copy, never on views of rx
        # A chunked message being received: its buffer, a view of it, and bytes so far.
        self.whole: Any = None
        self.whole_view: memoryview | None = None
        self.filled = 0
        # Records of at most this much go in one piece: a quarter of the ring, so that
        # the receiver copies one out while the sender writes the next.
        self.chunk = min(tx.max_record, tx.capacity // 4)

    # ---- sending -----------------------------------------------------------------------

    def send(self, obj: Any, handle: Any, keep_open: bool, deadline: float | None) -> None:
        if handle is None and self.allow_pickle:
            kind, body, buffers = _pickled(obj)
            if not buffers and type(body) is bytes and len(body) <= self.small_body:
                # The hot path: one C call copies and publishes the record when there is room.
                with self.send_lock:
                    if not self.open:
                        raise ChannelClosedError("the channel is closed")
                    if self.tx_on_ring:
                        r = self.txp.side.write_bytes(
                            _HEAD.pack(kind, 0, 0, len(body)), _HEAD.size, body, len(body)
                        )
                        if not r:
                            return
                        if r != -_errno.EAGAIN:
                            _b.raise_errno(r, "ring write")
            self._send_parts(kind, body, buffers, deadline)
            return
        port = self.port
        if handle is not None:  # descriptors go on the socket, after what went before
            handles = handle_list(handle)
            kind, flags, body, fds = port.frame_parts(obj, handle, handles)
            with self.send_lock:
                port.check_open()
                self._leave_ring()
                port.write(port.header(kind, flags, len(fds), len(body)), body, fds, deadline)
            if not keep_open:
                close_sent(handles)
            return
        kind, body, buffers = encode_parts(port, obj)
        self._send_parts(kind, body, buffers, deadline)

    def send_many(self, items: list[Any], deadline: float | None) -> None:
        """Send messages without handles, in order; all are encoded before any goes.

        Small ones go as one batch of records (one C call writes as many as fit, published
        at once); the rest, and what did not fit, one by one as :meth:`send` does.
        """
        port = self.port
        parts = [encode_parts(port, obj) for obj in items]
        for _, body, buffers in parts:
            upper = _Message(0, body, buffers).upper if buffers else len(body) + _HEAD.size
            if upper > port.max_message_size:
                port.check_size(upper)
        i = 0
        while i < len(parts):
            j = i
            while j < len(parts) and not parts[j][2] and len(parts[j][1]) <= self.small_body:
                j += 1
            if j > i:
                records = [_HEAD.pack(k, 0, 0, len(b)) + b for k, b, _ in parts[i:j]]
                with self.send_lock:
                    if not self.open:
                        raise ChannelClosedError("the channel is closed")
                    done = 0
                    if self.tx_on_ring:
                        done = self.txp.side.write_many(
                            b"".join(records), [len(r) for r in records]
                        )
                i += done
                if i < j:  # (the ring is full: this one waits for room, the rest go next)
                    self._send_parts(*parts[i], deadline)
                    i += 1
                continue
            self._send_parts(*parts[i], deadline)
            i += 1

    def _send_parts(self, kind: int, body: Any, buffers: list[Any], deadline: float | None) -> None:
        """Send an encoded message without handles: a record, or a chunked message."""
        port = self.port
        if not buffers and len(body) + _HEAD.size <= self.tx.max_record:
            # One record in one piece: one C call copies and publishes it when there is room.
            if len(body) + _HEAD.size > port.max_message_size:
                port.check_size(len(body) + _HEAD.size)
            head = _HEAD.pack(kind, 0, 0, len(body))
            with self.send_lock:
                port.check_open()
                if self.tx_on_ring and self.txp.side.write(head, body):
                    return
                self._put(
                    lambda base: ([(0, head), (_HEAD.size, body)], len(head) + len(body)),
                    len(head) + len(body),
                    deadline,
                )
            return
        msg = _Message(kind, body, buffers)
        port.check_size(msg.upper)
        with self.send_lock:
            port.check_open()
            if msg.upper <= self.tx.max_record:
                self._put(msg.pieces, msg.upper, deadline)
                return
            pieces, size = msg.pieces(0)
            head = _HEAD.pack(_CHUNKED, 0, 0, _SIZE.size) + _SIZE.pack(size)
            self._put(lambda base: ([(0, head)], len(head)), len(head), deadline)
            done = 0
            try:
                while done < size:
                    count = min(self.chunk, size - done)
                    part = _cut(pieces, done, count)
                    self._put(lambda base, p=part, c=count: (p, c), count, deadline)
                    done += count
            except TimeoutError:
                port.close()
                raise TimeoutError(
                    "send timed out with the message half-written; the channel is closed"
                ) from None

    def _put(self, layout: Any, upper: int, deadline: float | None) -> None:
        """Send one record of at most ``upper`` bytes; ``layout(base)`` gives its pieces."""
        offset = self._room(upper, deadline)
        if offset is None:
            pieces, size = layout(0)
            self._socket_record(pieces, size, deadline)
            return
        side = self.txp.side
        try:
            pieces, size = layout(offset)
            whole = self.txp.whole
            for pos, data in pieces:
                at = offset + pos
                whole[at : at + len(data)] = data
        except BaseException:
            side.abort()
            raise
        side.stage(size)
        side.publish()

    def _room(self, upper: int, deadline: float | None) -> int | None:
        """Reserve ``upper`` bytes in the ring: their offset, or None to use the socket."""
        side = self.txp.side
        if not self.tx_on_ring:  # back to the ring once it has room
            offset = side.reserve(upper)
            if offset is None:
                return None
            try:
                self._socket_record([], 0, deadline)  # an empty record frame: "back"
            except BaseException:
                side.abort()
                raise
            self.tx_on_ring = True
            return offset
        while True:
            offset = side.reserve(upper)
            if offset is not None:
                return offset
            side.publish()
            try:
                self.txp.wait(_b.RING_WAIT_SPACE | _b.RING_WAIT_STALL, upper, deadline, self.port)
            except _b.RingStalled:
                self._leave_ring()
                return None
            except TimeoutError:
                raise TimeoutError("send timed out: the peer is not reading") from None
            except ChannelClosedError:
                self.peer_gone = True
                raise ChannelClosedError("the peer closed the channel") from None

    def _leave_ring(self) -> None:
        """What follows goes on the socket: an empty record tells the receiver."""
        if self.tx_on_ring:
            side = self.txp.side
            side.stage_empty()
            side.publish()
            self.tx_on_ring = False

    def _socket_record(
        self, pieces: list[tuple[int, Any]], size: int, deadline: float | None
    ) -> None:
        """One record as a FRAME_RING frame (gaps between pieces are zeros)."""
        port = self.port
        parts: list[Any] = [port.header(_b.FRAME_RING, 0, 0, size)]
        pos = 0
        for at, data in pieces:
            if at > pos:
                parts.append(bytes(at - pos))
            parts.append(data)
            pos = at + len(data)
        if size > pos:
            parts.append(bytes(size - pos))
        port.write(parts[0], parts[1] if len(parts) > 1 else b"", [], deadline)
        try:
            for part in parts[2:]:
                port.write(b"", part, [], deadline)
        except TimeoutError:
            port.close()
            raise TimeoutError(
                "send timed out with the message half-written; the channel is closed"
            ) from None

    # ---- receiving ---------------------------------------------------------------------

    def recv(self, deadline: float | None) -> tuple[Any, Any]:
        """The next message and its handle."""
        rxp = self.rxp
        while self.rx_on_ring and self.whole is None and not rxp.held:
            # The hot path: one C call copies a small record out and gives its room back.
            side = rxp.side
            n = side.read()
            if n < 0:
                break  # none yet (wait for one), or a large one (peeked below)
            if not n:  # the sender went to the socket
                self.rx_on_ring = False
                break
            small = side.small
            if n >= _HEAD.size:
                kind, _, count, body = _HEAD.unpack_from(small)
                if not count and _HEAD.size + body <= n:
                    if kind == _PICKLE and self.allow_pickle:
                        try:
                            return pickle.loads(small[_HEAD.size : _HEAD.size + body]), None
                        except Exception as exc:
                            self._corrupt(f"cannot decode a message: {reason(exc)}")
                    if kind == _RAW:
                        return bytes(small[_HEAD.size : _HEAD.size + body]), None
            # Anything else from its own copy (an object may be built on it).
            obj = self._take(memoryview(bytearray(small[:n])))
            if obj is not _NOTHING:
                return obj, None
        while True:
            if self.rx_on_ring:
                obj = self._from_ring(deadline)
            else:
                item, handle = self.port.pop(deadline)
                if item is BACK:
                    self.rx_on_ring = True
                    continue
                if type(item) is not RECORD:
                    if self.whole is not None:
                        self._corrupt("a message came in the middle of another")
                    return item, handle
                obj = self._take(memoryview(item.data))
            if obj is not _NOTHING:
                return obj, None

    def recv_ready(self, got: list[tuple[Any, Any]], limit: int) -> None:
        """Append to ``got`` the messages whose records are in the ring now, up to ``limit``.

        One C call copies a batch of records out and gives their room back; plain ones are
        decoded here.  It stops where a record must be peeked, or the sender went to the
        socket (the next receive takes it from there).
        """
        rxp = self.rxp
        while len(got) < limit and self.rx_on_ring and not rxp.held:
            side = rxp.side
            lengths = side.read_many(limit - len(got))
            if not lengths:
                return
            batch = side.batch
            pos = 0
            for n in lengths:
                record = batch[pos : pos + n]
                pos += n
                if not n:  # the sender went to the socket (the last of the batch)
                    self.rx_on_ring = False
                    return
                if self.whole is None and n >= _HEAD.size:
                    kind, _, count, body = _HEAD.unpack_from(record)
                    if not count and _HEAD.size + body <= n:
                        if kind == _PICKLE and self.allow_pickle:
                            try:
                                got.append(
                                    (pickle.loads(record[_HEAD.size : _HEAD.size + body]), None)
                                )
                            except Exception as exc:
                                self._corrupt(f"cannot decode a message: {reason(exc)}")
                            continue
                        if kind == _RAW:
                            got.append((bytes(record[_HEAD.size : _HEAD.size + body]), None))
                            continue
                obj = self._take(memoryview(bytearray(record)))  # (its own copy, as recv's)
                if obj is not _NOTHING:
                    got.append((obj, None))

    def _from_ring(self, deadline: float | None) -> Any:
        rxp = self.rxp
        side = rxp.side
        if not rxp.held and self.whole is None:
            # The hot path: a record already there, pickled without buffers.
            try:
                got = side.next()
            except FrameError as exc:
                self._corrupt(str(exc))
            if got is not None:
                offset, length = got
                whole = rxp.whole
                if length >= _HEAD.size:
                    kind, _, n, body = _HEAD.unpack_from(whole, offset)
                    if (
                        kind == _PICKLE
                        and not n
                        and _HEAD.size + body <= length
                        and (self.allow_pickle)
                    ):
                        start = offset + _HEAD.size
                        try:
                            obj = pickle.loads(whole[start : start + body])
                        except Exception as exc:
                            self._corrupt(f"cannot decode a message: {exc}")
                        side.release(1)
                        return obj
                return self._record(offset, length)
        try:
            offset, length = rxp.next_record(deadline, self.port)
        except ChannelClosedError:
            self.peer_gone = True
            if self.whole is not None:
                self._drop_partial()
                raise ChannelClosedError(
                    "the peer closed the channel in the middle of a message"
                ) from None
            raise ChannelClosedError("the peer closed the channel") from None
        except TimeoutError:
            raise TimeoutError("recv timed out") from None
        except FrameError as exc:
            self._corrupt(str(exc))
        return self._record(offset, length)

    def _record(self, offset: int, length: int) -> Any:
        """The record peeked at ``offset``: a message, or _NOTHING."""
        rxp = self.rxp
        whole = rxp.whole
        if not length:  # the sender went to the socket
            rxp.let_go(1)
            self.rx_on_ring = False
            return _NOTHING
        if self.whole is None and length >= _HEAD.size:
            kind, _, n, _ = _HEAD.unpack_from(whole, offset)
            if not n and kind != _CHUNKED:
                # The common case: decoded (copied) at once, and the record goes back.
                with whole[offset : offset + length] as data:
                    obj = self._decoded(data)
                rxp.let_go(1)
                return obj
            if n and self.copy_out:
                # The receiver keeps what it gets for long (a pool's results): a held view
                # would stop the ring at that record, so the record is copied out.
                copy = bytearray(length)
                copy[:] = whole[offset : offset + length]
                rxp.let_go(1)
                return self._decoded(memoryview(copy))
            if n:  # the object will be built on views of the record: it stays held
                part = whole[offset : offset + length]
                view, exporter = _b.RingSide.record_view(part, writable=True)
                rxp.held.append((view, exporter, part))
                return self._decoded(view)
        with whole[offset : offset + length] as data:
            obj = self._take(data)
        rxp.let_go(1)
        return obj

    def _decoded(self, data: memoryview) -> Any:
        """The message in a whole record; the channel closes on a malformed one."""
        try:
            return decode(data, self.allow_pickle)
        except FrameError as exc:
            self._corrupt(str(exc))

    def _take(self, data: memoryview) -> Any:
        """A record outside the fast path: a chunked message's head or part, or a whole one.

        (One that came over the socket is its own buffer, which the object may keep.)
        """
        if self.whole is not None:
            view = self.whole_view
            assert view is not None
            end = self.filled + len(data)
            if end > len(view):
                self._corrupt("a chunked message runs past its declared size")
            view[self.filled : end] = data
            self.filled = end
            if end < len(view):
                return _NOTHING
            self.whole = self.whole_view = None  # the view keeps the buffer
            return self._decoded(view)
        if len(data) >= _HEAD.size and data[0] == _CHUNKED:
            if len(data) != _HEAD.size + _SIZE.size:
                self._corrupt("a chunked message's head record has the wrong size")
            (size,) = _SIZE.unpack_from(data, _HEAD.size)
            limit = self.port.max_message_size
            if not 0 < size <= limit:
                self._corrupt(f"a message of {size} bytes (max_message_size is {limit})")
            # Fresh private pages for a large one (no zero-filling pass before the copy).
            if size >= _MAPPED_MIN:
                self.whole = _b.fresh_pages(size)
            else:
                self.whole = bytearray(size)
            self.whole_view = memoryview(self.whole)
            self.filled = 0
            return _NOTHING
        return self._decoded(data)

    def _drop_partial(self) -> None:
        self.whole = self.whole_view = None
        self.filled = 0

    def _corrupt(self, why: str) -> Any:
        """A malformed record: the channel is closed (as for a malformed frame)."""
        self._drop_partial()
        self.port.discard()
        raise FrameError(why)

    # ---- the rest ----------------------------------------------------------------------

    def wait_readable(self, timeout_ms: int) -> bool:
        """Wait, taking nothing, until there is something to receive; False on timeout.

        Something: a record in the ring, or socket data while records come over it.
        """
        port = self.port
        with port.recv_lock:  # the rings stay mapped meanwhile (close takes this lock)
            if port.closed:
                return True  # the next recv says so
            if not self.rx_on_ring or port.buffered():
                return port.buffered() or bool(_b.fd_wait(port.fd, _b.POLL_IN, timeout_ms))
            rxp = self.rxp
            if rxp.held:
                rxp.release_done()
            try:
                return bool(rxp.side.wait(_b.RING_WAIT_DATA, 0, timeout_ms, port.fd))
            except BrokenPipeError:
                return True  # the next recv says the peer is gone

    def close(self) -> None:
        """Unmap both rings (a ring whose records still have views goes with the last).

        The channel's socket is closed by then: a peer asleep on a ring is woken to see
        that now, not at its next look at the socket (every 100 ms).
        """
        self.open = False
        self._drop_partial()
        for ring, parts in ((self.tx, self.txp), (self.rx, self.rxp)):
            if not ring.closed:
                parts.side.wake()
            parts.close_unused()


def make(port: SocketPort, tx: Ring, rx: Ring) -> Link:
    """A Link for the channel of ``port``; refuses rings that are not usable as a pair."""
    if tx is rx:
        raise ValueError("a channel needs two rings, one per direction")
    return Link(port, tx, rx)
