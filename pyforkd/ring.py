"""Ring: a byte ring in shared memory between two processes, with no copy but your own.

One process sends, the other receives (single producer, single consumer; threads of one
process take turns through the Ring's locks)::

    ring = pyforkd.Ring(capacity=8 << 20)
    ch.send("here is a ring", handle=ring)          # the peer gets a Ring on the same memory
    ring.send(b"bytes")                             # one copy: into the shared memory
    with ring.reserve(4096) as buf:                 # or none: write in place
        fill(buf)
    ring.send_many(list_of_buffers)                 # one wake-up for the whole batch
    # in the peer:
    with ring.recv(timeout=1) as view:              # a read-only view of the shared bytes
        parse(view)                                 # numpy.frombuffer(view) copies nothing

A received record stays in the ring, unavailable to the producer, while a view of it is
alive: at the end of the ``with`` block the view is released (using it afterwards raises
``ValueError``), and if something still holds its buffer (a numpy array made from it),
the record is kept until that is gone, so nothing ever reads memory that was written over.
The memory itself (memfd on Linux, never a name in /dev/shm) goes away with the last
process that maps it.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from . import _bindings as _b
from ._checks import deadline as _deadline
from .errors import ChannelClosedError

__all__ = ["Ring"]

_SLICE_MS = 1000  # a wait is cut into slices this long, so Ctrl-C is seen within a second
_COPIED = (None, None, None)  # in Ring._held: a record already copied out, waiting its turn


def check_capacity(capacity: Any, what: str = "capacity") -> int:
    """The bytes a ring of ``capacity`` maps; ``TypeError``/``ValueError`` naming ``what``."""
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"{what} must be an int, not {type(capacity).__name__}")
    size = _b.ring_size(capacity)
    if size == 0:
        raise ValueError(
            f"{what} must be a power of two of at least {_b.RING_MIN_CAPACITY} bytes, "
            f"not {capacity}"
        )
    return size


class Ring:
    """A shared-memory byte ring of ``capacity`` bytes (a power of two, at least 4096).

    Records of up to ``max_record`` bytes (half the capacity, less 8) go through whole, as
    one contiguous view each.  Send it over a :class:`Channel` as a handle to give the
    peer the same memory.
    """

    def __init__(self, capacity: int = 1 << 20) -> None:
        size = check_capacity(capacity)
        fd = _b.shm_create("pyforkd-ring", size)
        try:
            self._setup(fd, size, capacity)
        except BaseException:
            _b.close_native(fd)
            raise

    @classmethod
    def _from_fd(cls, fd: int) -> Ring:
        """The Ring in the shared memory behind ``fd``, which it owns from then on.

        ``ValueError`` when there is no ring there; ``fd`` then stays the caller's.
        """
        ring = cls.__new__(cls)
        try:
            size = _b.shm_size(fd)
        except PermissionError:
            raise ValueError(
                "a ring's memory must be sealed against shrinking (a peer could truncate it "
                "under the mapping)"
            ) from None
        except OSError as exc:
            raise ValueError(f"the descriptor does not hold shared memory ({exc})") from None
        if size < _b.ring_size(_b.RING_MIN_CAPACITY):
            raise ValueError(f"shared memory of {size} bytes is too small for a ring")
        ring._setup(fd, size, 0)  # (ValueError when it holds no ring; fd stays the caller's)
        return ring

    def _setup(self, fd: int, size: int, create: int) -> None:
        self._fd = -1  # (the caller's until this succeeds)
        self._map: Any = None
        mapped = _b.map_shared(fd, size)
        try:
            self._side = _b.RingSide(mapped, create)
        except BaseException:
            _b.unmap_shared(mapped)
            raise
        self._fd, self._map = fd, mapped
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        # Received records not given back yet: (view, its exporter, slice of _whole).
        self._held: collections.deque[tuple[Any, Any, Any]] = collections.deque()
        self._whole = memoryview(self._map)
        self._peer: Any = None  # a Channel or socket whose hang-up ends a wait

    # ---- properties --------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Bytes of record space."""
        return self._side.capacity

    @property
    def max_record(self) -> int:
        """The largest record, in bytes: half the capacity less the record header."""
        return self._side.max_record

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._map is None or self._fd < 0

    def fileno(self) -> int:
        """The shared memory's descriptor (what goes over a channel)."""
        self._check_open()
        return self._fd

    def watch(self, peer: Any) -> None:
        """Wait no longer once ``peer`` (a Channel or socket to the other process) closes.

        A Ring received over a channel watches that channel already; the side that sent it
        calls this.
        """
        if not callable(getattr(peer, "fileno", None)):
            raise TypeError(f"watch() needs a Channel or a socket, not {type(peer).__name__}")
        self._peer = peer

    # ---- sending -----------------------------------------------------------------------

    def _check_open(self) -> Any:
        if self._map is None or self._fd < 0:
            raise ValueError("the Ring is closed")
        return self._map

    def _check_size(self, size: int) -> None:
        if size > self.max_record:
            raise ValueError(
                f"a record of {size} bytes does not fit in this ring: the largest is "
                f"{self.max_record} bytes (capacity {self.capacity})"
            )

    def _wait(self, what: int, size: int, deadline: float | None, peer: Any = None) -> None:
        """Wait for data or room (GIL released); TimeoutError, ChannelClosedError.

        ``peer`` (a Channel) replaces the watched one for this wait.
        """
        if peer is None:
            peer = self._peer
        while True:
            ms = _SLICE_MS
            if deadline is not None:
                ms = min(ms, max(0, int((deadline - time.monotonic()) * 1000)))
            peer_fd = -1 if peer is None else peer.fileno()
            try:
                ready = self._side.wait(what, size, ms, peer_fd)
            except BrokenPipeError:
                raise ChannelClosedError("the ring's peer is gone") from None
            if ready:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("the ring " + ("has no room" if what == 2 else "is empty"))

    def _reserve(self, size: int, deadline: float | None) -> int:
        side = self._side
        while True:
            offset = side.reserve(size)
            if offset is not None:
                return offset
            side.publish()  # what is staged goes before we wait for room
            self._wait(_b.RING_WAIT_SPACE, size, deadline)

    @staticmethod
    def _bytes_of(data: Any) -> memoryview:
        try:
            view = memoryview(data)
        except TypeError:
            raise TypeError(f"a Ring sends bytes-like objects, not {type(data).__name__}") from None
        return view.cast("B") if view.c_contiguous else memoryview(view.tobytes())

    def send(self, data: Any, timeout: float | None = None) -> None:
        """Copy ``data`` (bytes-like) into the ring as one record; waits while it is full."""
        self.send_many([data], timeout)

    def send_many(self, items: Iterable[Any], timeout: float | None = None) -> None:
        """Send several records, waking the receiver once for all that fit at a time.

        On ``TimeoutError`` the records before the one that found no room were sent.
        """
        deadline = _deadline(timeout)
        views = [self._bytes_of(item) for item in items]
        for view in views:
            self._check_size(view.nbytes)
        with self._send_lock:
            memory = self._check_open()
            side = self._side
            write = side.write
            try:
                for view in views:
                    if write(b"", view):  # one C call: copied and published
                        continue
                    offset = self._reserve(view.nbytes, deadline)
                    memory[offset : offset + view.nbytes] = view
                    side.stage(view.nbytes)
            finally:
                side.publish()

    @contextmanager
    def reserve(self, size: int, timeout: float | None = None) -> Iterator[memoryview]:
        """Room for a record of ``size`` bytes, as a writable view, sent at the block's end.

        An exception inside the block sends nothing.  The view may not be kept: it is
        released when the block ends.
        """
        self._check_size(size)
        deadline = _deadline(timeout)
        with self._send_lock:
            self._check_open()
            offset = self._reserve(size, deadline)
            part = self._whole[offset : offset + size]
            view, exporter = _b.RingSide.record_view(part, writable=True)
            try:
                yield view
            except BaseException:
                self._side.abort()
                raise
            finally:
                try:
                    view.release()
                    kept = sys.getrefcount(exporter) > 2  # the local name, the argument
                except BufferError:
                    kept = True
                del view, exporter
            if kept:
                self._side.abort()
                raise BufferError(
                    "a view of the reserved buffer outlived its block (it could change the "
                    "record after it was sent): nothing was sent"
                )
            part.release()
            self._side.stage(size)
            self._side.publish()

    # ---- receiving ---------------------------------------------------------------------

    def _release_done(self) -> None:
        """Give back, oldest first, every received record whose views are all gone."""
        held = self._held
        done = 0
        while held:
            view, exporter, part = held[0]
            if view is None:  # a record recv_bytes copied out: free already
                held.popleft()
                done += 1
                continue
            try:
                view.release()
            except BufferError:
                break  # something holds the view's buffer: it and all after it wait
            # Anything made from the view (numpy.frombuffer, a slice) refers to the exporter:
            # only the reference in `held` and getrefcount's own argument may remain.
            if sys.getrefcount(exporter) > 3:  # held[0], the local name, the argument
                break
            held.popleft()
            del view, exporter  # the exporter's buffer of `part` goes with it
            part.release()
            done += 1
        if done:
            self._side.release(done)

    def _next_record(self, deadline: float | None, peer: Any = None) -> tuple[int, int]:
        """Wait for the next record (the receive lock is held); its offset and length."""
        self._check_open()
        if self._held:
            self._release_done()
        while True:
            got = self._side.peek()
            if got is not None:
                return got
            self._wait(_b.RING_WAIT_DATA, 0, deadline, peer)

    def _let_go(self, count: int) -> None:
        """The ``count`` records peeked last are done with (they go back in order)."""
        if self._held:  # records go back oldest first: after the held ones
            self._held.extend([_COPIED] * count)
        else:
            self._side.release(count)

    def recv(self, timeout: float | None = None) -> _Received:
        """The next record as a read-only view, for a ``with`` block: valid until it ends.

        Waits for one (``TimeoutError`` after ``timeout``; :class:`ChannelClosedError`
        once a watched peer is gone); :class:`FrameError` when the shared memory is
        corrupted.
        """
        deadline = None if timeout is None else _deadline(timeout)
        with self._recv_lock:
            offset, length = self._next_record(deadline)
            part = self._whole[offset : offset + length]
            view, exporter = _b.RingSide.record_view(part)
            self._held.append((view, exporter, part))
            return _Received(self, view)

    def recv_bytes(self, timeout: float | None = None) -> bytes:
        """The next record, copied out (no view to track: the cheaper call for small ones)."""
        deadline = None if timeout is None else _deadline(timeout)
        with self._recv_lock:
            offset, length = self._next_record(deadline)
            with self._whole[offset : offset + length] as part:
                data = part.tobytes()
            self._let_go(1)
            return data

    def recv_many(self, limit: int = 64, timeout: float | None = None) -> list[bytes]:
        """Up to ``limit`` records that are there now (waiting for the first), copied out.

        The batch counterpart of :meth:`send_many`: one call and one release for all.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, not {limit!r}")
        deadline = None if timeout is None else _deadline(timeout)
        with self._recv_lock:
            offset, length = self._next_record(deadline)
            whole = self._whole
            out = [whole[offset : offset + length].tobytes()]
            if limit > 1:
                out += [whole[o : o + n].tobytes() for o, n in self._side.peek_many(limit - 1)]
            self._let_go(len(out))
            return out

    # ---- the rest ----------------------------------------------------------------------

    def close(self) -> None:
        """Unmap this process's view of the ring and close its descriptor.

        ``BufferError`` while a view of a record is still alive.
        """
        with self._send_lock, self._recv_lock:
            if self._map is None:
                return
            self._release_done()
            if self._held:
                raise BufferError(
                    f"{len(self._held)} received record(s) still have views in use: drop "
                    "them (or copy what you keep) before closing the Ring"
                )
            self._side.detach()
            self._whole.release()
            _b.unmap_shared(self._map)
            self._map = None
            if self._fd >= 0:
                _b.close_native(self._fd)
                self._fd = -1

    def _close_unused(self) -> None:
        """Close; when views of records are still alive, close the descriptor only.

        The mapping then goes with the last of those views.
        """
        try:
            self.close()
        except BufferError:
            if self._fd >= 0:
                _b.close_native(self._fd)
                self._fd = -1

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_map", None) is not None:
            # Views of received records may outlive the Ring: they keep the mapping alive
            # (the mmap object goes with the last of them); the descriptor goes now.
            self._close_unused()

    def __repr__(self) -> str:
        state = "closed" if self._map is None else f"fd={self._fd}"
        return f"<pyforkd.Ring capacity={self.capacity} {state}>"


class _Received:
    """What :meth:`Ring.recv` returns: ``with`` gives the view.

    The block's end lets the record go, once nothing made from the view is alive.
    """

    __slots__ = ("_ring", "_view")

    def __init__(self, ring: Ring, view: memoryview) -> None:
        self._ring = ring
        self._view = view

    def __enter__(self) -> memoryview:
        return self._view

    def __exit__(self, *exc: object) -> None:
        ring = self._ring
        with ring._recv_lock:
            if ring._map is not None:
                ring._release_done()


# ---- pyforkd's own (not in __all__): what channels and handle decoding use of a Ring ----


class RingParts:
    """A Ring's insides that a channel's ring link (_ringlink.py) drives on every message.

    Taken once: each is set when the ring is mapped and never replaced.
    """

    __slots__ = ("close_unused", "held", "let_go", "next_record", "release_done", "side",
                 "wait", "whole")  # fmt: skip

    def __init__(self, ring: Ring) -> None:
        self.side = ring._side
        self.whole = ring._whole
        self.held = ring._held
        self.wait = ring._wait
        self.next_record = ring._next_record
        self.let_go = ring._let_go
        self.release_done = ring._release_done
        self.close_unused = ring._close_unused


def adopt(fd: int) -> Ring:
    """A Ring on the shared memory of descriptor ``fd`` (received as a handle), owning it."""
    return Ring._from_fd(fd)


def watching(ring: Ring) -> bool:
    """Whether ``ring`` already watches a channel (``Ring.watch``)."""
    return ring._peer is not None
