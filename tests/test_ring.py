"""pyforkd.Ring: records through shared memory, views and their lifetime, numpy without a
copy, a Ring passed to a worker over a channel, peer death, corrupted memory."""

from __future__ import annotations

import collections
import mmap
import os
import signal
import socket

import pytest
from _helpers import WINDOWS, open_fds, posix_only_because
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import pyforkd
from pyforkd import ChannelClosedError, FrameError, Ring
from pyforkd._bindings import RING_HEADER_SIZE

HEADER = RING_HEADER_SIZE  # the shared header before the record space


def test_capacity_and_sizes_are_checked():
    for bad in (1000, 2048, 0, -4096):
        with pytest.raises(ValueError, match=f"power of two of at least 4096 bytes, not {bad}"):
            Ring(bad)
    with pytest.raises(TypeError, match="capacity must be an int"):
        Ring("big")  # type: ignore[arg-type]
    with Ring(4096) as ring:
        assert ring.capacity == 4096 and ring.max_record == 2040
        with pytest.raises(ValueError, match=r"2041 bytes does not fit.*largest is 2040 bytes"):
            ring.send(b"x" * 2041)
        with pytest.raises(TypeError, match="bytes-like"):
            ring.send("text")


def test_send_recv_batches_and_reserve(fd_baseline):
    with Ring(1 << 16) as ring:
        ring.send(b"one")
        ring.send_many([b"two", bytearray(b"three"), memoryview(b"abcdef")[::2]])
        with ring.reserve(5) as buf:
            buf[:] = b"built"
        with pytest.raises(RuntimeError), ring.reserve(3) as buf:
            buf[:] = b"bad"
            raise RuntimeError("nothing is sent")
        got = [ring.recv_bytes(timeout=1) for _ in range(2)] + ring.recv_many(10, timeout=1)
        assert got == [b"one", b"two", b"three", b"ace", b"built"]
        for bad in (0, -1, True, 2.5):
            with pytest.raises(ValueError, match="limit must be a positive int"):
                ring.recv_many(bad)
        with pytest.raises(TimeoutError, match="empty"):
            ring.recv_bytes(timeout=0.05)


def test_views_die_with_their_block():
    with Ring(1 << 16) as ring:
        ring.send(b"payload")
        with ring.recv() as view:
            assert view.readonly and bytes(view) == b"payload"
        with pytest.raises(ValueError, match="released"):
            bytes(view)
        with ring.reserve(4) as buf:
            pass
        with pytest.raises(ValueError, match="released"):
            buf[0] = 1


def test_numpy_arrays_use_the_ring_memory_and_hold_their_record(np):
    ring = Ring(1 << 16)
    data = np.arange(1000, dtype=np.int64)
    ring.send(data)
    with ring.recv() as view:
        arr = np.frombuffer(view, dtype=np.int64)
    assert np.array_equal(arr, data)
    # No copy: the array reads the shared memory itself (the first record's payload sits
    # after the ring's header and the record's own 8 bytes), as another mapping shows.
    first = HEADER + 8
    with mmap.mmap(ring.fileno(), HEADER + (1 << 16)) as raw:
        raw[first : first + 8] = (-5).to_bytes(8, "little", signed=True)
    assert arr[0] == -5
    data[0] = -5
    # While the array lives its record stays: the producer cannot write over it.
    for _ in range(3):
        ring.send(b"y" * 16000)
    with pytest.raises(TimeoutError, match="no room"):
        ring.send(b"y" * 16000, timeout=0.05)
    assert np.array_equal(arr, data)
    with pytest.raises(BufferError, match="still have views"):
        ring.close()
    assert ring.recv_bytes() == b"y" * 16000  # copied out, but freed only after the array's
    with pytest.raises(TimeoutError, match="no room"):
        ring.send(b"y" * 16000, timeout=0.05)
    del arr, view
    assert ring.recv_bytes() == b"y" * 16000  # now both went back
    ring.send(b"y" * 16000, timeout=1)
    for _ in range(2):
        ring.recv_bytes()
    ring.close()


def consume_from_a_ring(n):
    import numpy as np  # (run in a worker, where the test's fixture is not)

    ch = pyforkd.parent()
    _, ring = ch.recv(with_handle=True)  # it watches this channel from now on
    total = 0
    for _ in range(n):
        with ring.recv(timeout=30) as view:
            total += int(np.frombuffer(view, dtype=np.uint8).sum())
    last = ring.recv_bytes(timeout=30)
    ring.close()
    return total, last


@pytest.mark.parametrize(
    "start", [pytest.param("fork", marks=posix_only_because("Windows has no fork")), "spawn"]
)
def test_a_ring_passed_to_a_worker(start, np):  # (np: the worker reads with numpy)
    ring = Ring(1 << 16)
    w = pyforkd.fork_worker(consume_from_a_ring, 500, start=start)
    w.send("your ring", handle=ring)  # a Ring stays open here: both ends use it
    assert not ring.closed
    expected = 0
    for i in range(500):
        chunk = bytes([i % 7]) * (i % 300 + 1)
        expected += sum(chunk)
        ring.send(chunk, timeout=30)
    ring.send(b"end", timeout=30)
    assert w.result(timeout=60) == (expected, b"end")
    assert w.join(timeout=60) == 0
    ring.close()


def sleep_after_ready():
    pyforkd.parent().send("ready")
    signal.pause()


@posix_only_because("a Channel over a UNIX socket")
def test_a_received_ring_watches_its_channel():
    x, y = socket.socketpair()
    here, there = pyforkd.Channel(x), pyforkd.Channel(y)
    ring = Ring(1 << 16)
    here.send("ring", handle=ring)
    _, received = there.recv(timeout=10, with_handle=True)
    here.close()  # the sending side goes away
    with pytest.raises(ChannelClosedError, match="peer is gone"):  # not TimeoutError
        received.recv_bytes(timeout=30)
    received.close()
    there.close()
    ring.close()
    with Ring(4096) as other, pytest.raises(TypeError, match="needs a Channel or a socket"):
        other.watch(3)


def test_a_dead_peer_ends_the_wait():
    ring = Ring(1 << 16)
    w = pyforkd.fork_worker(sleep_after_ready)
    assert w.recv(timeout=30) == "ready"
    w.send("ring", handle=ring)
    ring.watch(w.channel)
    w.kill("SIGKILL")
    assert w.wait(timeout=10) == -9  # (SIGKILL, on Windows too)
    with pytest.raises(ChannelClosedError, match="peer is gone"):
        ring.recv_bytes(timeout=30)
    ring.close()


@posix_only_because("mmap of a descriptor (Windows maps a section by its handle)")
def test_corrupted_shared_memory_is_a_frame_error():
    ring = Ring(4096)
    ring.send(b"fine")
    with mmap.mmap(ring.fileno(), 4096 + HEADER) as raw:
        raw[HEADER : HEADER + 4] = (100_000).to_bytes(4, "little")  # a length past the ring
    with pytest.raises(FrameError, match="corrupted"):
        ring.recv_bytes()
    ring.close()
    fd = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(ValueError, match="does not hold shared memory"):
        Ring._from_fd(fd)
    os.close(fd)  # a refused descriptor stays the caller's


class RingModel(RuleBasedStateMachine):
    """reserve/commit, send_many and recv against a deque of what must come out."""

    def __init__(self) -> None:
        super().__init__()
        self.before = open_fds()
        self.ring = Ring(4096)
        self.model: collections.deque[bytes] = collections.deque()

    @rule(data=st.binary(max_size=700))
    def send(self, data):
        try:
            self.ring.send(data, timeout=0)
        except TimeoutError:
            return  # full: nothing was written
        self.model.append(data)

    @rule(items=st.lists(st.binary(max_size=300), max_size=6))
    def send_many(self, items):
        try:
            self.ring.send_many(items, timeout=0)
        except TimeoutError:
            # The ones that fitted before it filled were sent: find out how many.
            pass
        else:
            self.model.extend(items)
            return
        got = []
        while True:
            try:
                got.append(self.ring.recv_bytes(timeout=0))
            except TimeoutError:
                break
        expected = list(self.model)
        assert got[: len(expected)] == expected
        extra = got[len(expected) :]
        assert extra == items[: len(extra)]
        self.model.clear()

    @rule(size=st.integers(0, 500), fill=st.integers(0, 255))
    def reserve(self, size, fill):
        try:
            with self.ring.reserve(size, timeout=0) as buf:
                buf[:] = bytes([fill]) * size
        except TimeoutError:
            return
        self.model.append(bytes([fill]) * size)

    @rule()
    def recv(self):
        if not self.model:
            with pytest.raises(TimeoutError):
                self.ring.recv_bytes(timeout=0)
            return
        assert self.ring.recv_bytes(timeout=0) == self.model.popleft()

    @rule(limit=st.integers(1, 10))
    def recv_many(self, limit):
        if not self.model:
            with pytest.raises(TimeoutError):
                self.ring.recv_many(limit, timeout=0)
            return
        want = [self.model.popleft() for _ in range(min(limit, len(self.model)))]
        assert self.ring.recv_many(limit, timeout=0) == want

    @invariant()
    def never_more_than_capacity(self):
        assert sum(len(m) + 8 for m in self.model) <= self.ring.capacity

    def teardown(self) -> None:
        self.ring.close()
        if not WINDOWS:  # (there hypothesis's own handles come and go between examples;
            # fd_baseline in test_send_recv_batches_and_reserve counts a ring's there)
            assert open_fds() == self.before


TestRingModel = RingModel.TestCase
TestRingModel.pytestmark = [pytest.mark.slow]
TestRingModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_a_view_kept_past_a_reservation_sends_nothing():
    with Ring(1 << 16) as ring:
        with pytest.raises(BufferError, match="nothing was sent"), ring.reserve(8) as buf:
            kept = buf[:4]  # would let the record change after it went out
            buf[:] = b"12345678"
        del kept
        with pytest.raises(TimeoutError):
            ring.recv_bytes(timeout=0)
        with ring.reserve(8) as buf:  # and the ring works on
            buf[:] = b"abcdefgh"
        assert ring.recv_bytes(timeout=1) == b"abcdefgh"
