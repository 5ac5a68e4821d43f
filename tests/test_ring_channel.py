"""Channels over rings: fork_worker / fork / spawn / Channel.pair with ring=N.

Messages go through shared memory, numpy arrays arrive as views of it, messages larger
than the ring go in pieces, handles keep their place, a receiver that keeps every view
never blocks its sender, and peer death, corruption and bad sizes end in clear errors.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import pickle
import signal
import socket
import sys
import textwrap
import threading

import pytest
from _helpers import PY, open_fds, posix_only_because, zombie_children
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pyforkd
from pyforkd import Channel, ChannelClosedError, Fd, FrameError, _ringlink
from pyforkd._bindings import RING_HEADER_SIZE

np = pytest.importorskip("numpy", reason="numpy arrays travel here (wine cannot load numpy)")

pytestmark = posix_only_because(
    "not checked on Windows: its messages are numpy arrays, which wine cannot load"
)
START_METHODS = ["fork", "spawn", "forkserver"]


def ring_mappings() -> int | None:
    """How many ring mappings this process has (Linux: /proc/self/maps).

    None elsewhere: macOS names no mapping, so the comparisons of this count hold there
    trivially; the descriptor counts beside them still hold the rings to account.
    """
    if not sys.platform.startswith("linux"):
        return None
    with open("/proc/self/maps") as f:
        return sum("pyforkd-ring" in line for line in f)


def address_range(ring: pyforkd.Ring) -> tuple[int, int]:
    """Where a Ring's shared memory is mapped in this process."""
    probe = np.frombuffer(ring._map, dtype=np.uint8)
    start = probe.__array_interface__["data"][0]
    size = probe.nbytes
    del probe
    return start, start + size


def inside(arr: np.ndarray, ring: pyforkd.Ring) -> bool:
    lo, hi = address_range(ring)
    first = arr.__array_interface__["data"][0]
    return lo <= first and first + arr.nbytes <= hi


def echo():
    ch = pyforkd.parent()
    for msg in ch:
        ch.send(msg)


# ---- in one process: Channel.pair ---------------------------------------------------------


def test_pair_carries_every_kind_of_message(fd_baseline):
    maps = ring_mappings()
    a, b = Channel.pair(ring=1 << 18)  # room for all of them at once
    messages = [
        {"a": 1, "b": [1.5, None, "x"]},
        b"raw bytes",
        bytearray(b"a bytearray"),
        np.arange(10, dtype=np.int16),  # small: inside the pickle
        np.arange(5000, dtype=np.float64).reshape(50, 100),  # large: a buffer in the ring
        np.asfortranarray(np.ones((64, 64))),
        np.arange(3000, dtype=np.int32)[::2],  # not contiguous: pickled inside
        pickle.PickleBuffer(bytearray(b"z" * 5000)),
        "",
        b"",
    ]
    for m in messages:
        a.send(m)
    for m in messages:
        got = b.recv(timeout=5)
        if isinstance(m, np.ndarray):
            assert got.dtype == m.dtype and np.array_equal(got, m)
            if m.flags.c_contiguous or m.flags.f_contiguous:  # else it comes contiguous
                assert got.flags.f_contiguous == m.flags.f_contiguous
        elif isinstance(m, pickle.PickleBuffer):
            assert bytes(got) == b"z" * 5000
        else:
            assert type(got) is type(m) and got == m
    del got
    a.close()
    b.close()
    gc.collect()
    assert ring_mappings() == maps


@pytest.mark.parametrize("serialization", ["json", "raw"])
def test_pair_with_other_serializations(serialization, fd_baseline):
    a, b = Channel.pair(ring=1 << 14, serialization=serialization)
    sent = {"k": [1, 2, "é"]} if serialization == "json" else b"\x00\xff" * 3000
    a.send(sent)
    b.send(sent)
    assert b.recv(timeout=5) == sent and a.recv(timeout=5) == sent
    a.close()
    b.close()


def test_a_large_array_is_a_writable_view_of_the_ring_and_holds_its_record():
    a, b = Channel.pair(ring=1 << 16)
    data = np.arange(3000, dtype=np.int64)  # 24 KB: most of the largest record
    a.send(data)
    got = b.recv(timeout=5)
    rx = b._link.rx
    assert inside(got, rx)  # built on the shared memory: no copy on this side
    assert got.flags.writeable
    got[0] = -1  # the record is the receiver's until it lets go
    # While `got` lives its record stays: messages after it fill the rest, and none of
    # them is written over it (the sender waits, or goes through the socket).
    small = [np.full(600, i, dtype=np.int64) for i in range(40)]
    t = threading.Thread(target=lambda: [a.send(s) for s in small])
    t.start()
    for s in small:
        assert np.array_equal(b.recv(timeout=10), s)
    t.join()
    assert got[0] == -1 and np.array_equal(got[1:], data[1:])
    del got
    gc.collect()
    a.close()
    b.close()


def test_a_message_larger_than_the_ring_goes_in_pieces():
    a, b = Channel.pair(ring=1 << 14)  # largest record: 8 KiB less a header
    big = np.random.default_rng(1).random(100_000)  # 800 KB
    text = "x" * 50_000  # a large pickle body, no buffers
    t = threading.Thread(target=lambda: (a.send(big), a.send(text), a.send({"after": 1})))
    t.start()
    got = b.recv(timeout=30)
    assert np.array_equal(got, big) and got.flags.writeable
    assert not inside(got, b._link.rx)  # assembled outside the ring
    assert b.recv(timeout=30) == text
    assert b.recv(timeout=30) == {"after": 1}
    t.join()
    a.close()
    b.close()


def test_handles_keep_their_place_among_ring_messages(fd_baseline):
    a, b = Channel.pair(ring=1 << 17)  # room for all of them at once
    order = []
    for i in range(30):
        if i % 4 == 1:
            x, y = socket.socketpair()
            y.sendall(b"sock %d" % i)
            y.close()
            a.send(("with a socket", i), handle=x)
        else:
            a.send(("plain", i, b"p" * (i * 97)))
        order.append(i)
    for i in order:
        msg, handle = b.recv(timeout=5, with_handle=True)
        assert msg[1] == i
        if handle is not None:
            assert msg[0] == "with a socket" and handle.recv(100) == b"sock %d" % i
            handle.close()
        else:
            assert msg[2] == b"p" * (i * 97)
    a.close()
    b.close()


def test_max_message_size_still_decides():
    a, b = Channel.pair(ring=1 << 16, max_message_size=10_000)
    with pytest.raises(ValueError, match="over max_message_size"):
        a.send(np.zeros(20_000, dtype=np.uint8))
    a.send(b"fits")
    assert b.recv(timeout=5) == b"fits"
    a.close()
    b.close()


def test_a_corrupted_record_is_a_frame_error_and_closes_the_channel():
    a, b = Channel.pair(ring=1 << 14)
    a.send({"bad": True})
    # The first record of a fresh ring starts after the ring's header and its own 8 bytes;
    # its message header now claims a body far past the record's end.
    first = RING_HEADER_SIZE + 8
    b._link.rx._whole[first + 4 : first + 8] = (10**6).to_bytes(4, "little")
    with pytest.raises(FrameError, match="declares"):
        b.recv(timeout=5)
    assert not b.connected
    a.close()
    b.close()


def test_a_full_ring_times_out_cleanly():
    a, b = Channel.pair(ring=1 << 12)
    sent = 0
    with pytest.raises(TimeoutError, match="not reading"):
        while True:
            a.send(b"x" * 1000, timeout=0.05)
            sent += 1
    assert a.connected  # nothing half-written
    for _ in range(sent):
        assert b.recv(timeout=5) == b"x" * 1000
    a.send(b"on")
    assert b.recv(timeout=5) == b"on"
    a.close()
    b.close()


def test_bad_ring_sizes_are_refused_before_anything_starts():
    before = len(zombie_children())
    for bad in (1000, 2048, 0):
        with pytest.raises(ValueError, match=f"power of two of at least 4096 bytes, not {bad}"):
            pyforkd.fork_worker(echo, ring=bad)
    with pytest.raises(TypeError, match="ring must be an int"):
        pyforkd.fork_worker(echo, ring="big")
    with pytest.raises(ValueError, match="power of two"):
        Channel.pair(ring=5000)
    with pytest.raises(ValueError, match="add 'ipc' to stdio"):
        pyforkd.spawn(PY, ["-c", "pass"], ring=1 << 16)
    with pytest.raises(ValueError, match="ring needs pyforkd framing"):
        pyforkd.fork("child.js", exec_path="node", ring=1 << 16)
    assert len(zombie_children()) == before


# ---- across processes -------------------------------------------------------------------


@pytest.mark.parametrize("start", START_METHODS)
def test_worker_round_trips_through_rings(start):
    w = pyforkd.fork_worker(echo, ring=1 << 16, start=start)
    arrays = [np.arange(n, dtype=np.float32) for n in (3, 3000, 40_000)]  # the last: pieces
    for arr in arrays:
        w.send(arr)
    w.send({"done": True})
    for arr in arrays:
        assert np.array_equal(w.recv(timeout=30), arr)
    assert w.recv(timeout=30) == {"done": True}
    w.channel.close()
    w.wait(timeout=30)


def keep_everything(count):
    ch = pyforkd.parent()
    kept = [ch.recv() for _ in range(count)]
    return [int(k[0]) for k in kept], sum(float(k.sum()) for k in kept)


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_receiver_that_keeps_every_array_never_blocks_its_sender(start):
    # 200 arrays of 32 KiB through a 64 KiB ring, every one kept alive by the receiver.
    w = pyforkd.fork_worker(keep_everything, 200, ring=1 << 16, start=start)
    total = 0.0
    for i in range(200):
        a = np.full(4096, i, dtype=np.float64)
        total += float(a.sum())
        w.send(a, timeout=60)
    firsts, got_total = w.result(timeout=60)
    assert firsts == list(range(200)) and got_total == total
    w.join(timeout=30)


def send_forever():
    ch = pyforkd.parent()
    ch.send("started")
    ch.send(np.zeros(1 << 20, dtype=np.uint8))  # 1 MiB through a 16 KiB ring: in pieces


def test_a_peer_killed_in_the_middle_of_a_message():
    w = pyforkd.fork_worker(send_forever, ring=1 << 14)
    assert w.recv(timeout=30) == "started"
    # The worker writes the head record and the first pieces, then waits for room: kill
    # it once the ring holds them unread (the published tail, bytes 64-72 of its header,
    # past the consumer's head, bytes 128-136; they may be there before we look).
    shared = w.channel._link.rx._whole
    for _ in range(3000):
        tail = int.from_bytes(shared[64:72], "little")
        if tail - int.from_bytes(shared[128:136], "little") > 1024:
            break
        threading.Event().wait(0.01)
    else:
        raise AssertionError("the worker never wrote the first pieces into the ring")
    w.kill("SIGKILL")
    assert w.wait(timeout=30) == -signal.SIGKILL
    with pytest.raises(ChannelClosedError, match="middle of a message"):
        w.recv(timeout=30)
    assert not w.connected
    with pytest.raises(ChannelClosedError):
        w.recv(timeout=30)  # and so on, not a hang


def sleep_forever():
    pyforkd.parent().send("ready")
    signal.pause()


def test_a_sender_waiting_for_room_sees_its_peer_die():
    w = pyforkd.fork_worker(sleep_forever, ring=1 << 12)
    assert w.recv(timeout=30) == "ready"
    threading.Timer(0.3, w.kill, ["SIGKILL"]).start()
    with pytest.raises(ChannelClosedError):
        for _ in range(100):  # the ring (4 KiB) fills, then the send waits for room
            w.send(b"x" * 1500)
    w.wait(timeout=30)


SCRIPT = textwrap.dedent(
    """
    import sys
    import pyforkd

    ch = pyforkd.parent()
    for msg in ch:
        ch.send(f"{type(msg).__name__} {len(msg)}".encode())
    """
)


@pytest.mark.parametrize("serialization", ["pickle", "raw"])
def test_fork_a_script_with_rings(tmp_path, serialization):
    script = tmp_path / "child.py"
    script.write_text(SCRIPT)
    c = pyforkd.fork(str(script), serialization=serialization, ring=1 << 16)
    c.send(b"x" * 100_000)  # larger than the ring's largest record
    c.send(b"y" * 10)
    assert c.recv(timeout=30) == b"bytes 100000"
    assert c.recv(timeout=30) == b"bytes 10"
    c.disconnect()
    assert c.wait(timeout=30) == 0


def test_asyncio_worker_with_rings():
    async def main():
        w = await pyforkd.aio.fork_worker(echo, ring=1 << 16)
        arr = np.arange(100_000, dtype=np.int64)  # in pieces both ways
        await w.send(arr)
        await w.send("second")
        # A cancelled wait takes nothing: the message is there for the next recv.
        got = await w.channel.recv(timeout=30)
        assert np.array_equal(got, arr)
        assert await w.channel.recv(timeout=30) == "second"
        # A cancelled wait takes nothing: what comes next is there for the next recv.
        cancelled = asyncio.ensure_future(w.channel.recv())
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await w.send("third")
        assert await w.channel.recv(timeout=30) == "third"
        w.channel.close()
        await w.join(30)

    asyncio.run(main())


# ---- properties ---------------------------------------------------------------------------

arrays = st.builds(
    lambda n, dtype, seed: np.random.default_rng(seed).integers(0, 100, n).astype(dtype),
    st.integers(0, 3000),
    st.sampled_from([np.uint8, np.int32, np.float64, np.complex128]),
    st.integers(0, 2**16),
)
messages = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=200),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=5),
    arrays,
    st.lists(arrays, max_size=3),
)


def same(x, y):
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y)
    if isinstance(x, list):
        return isinstance(y, list) and len(x) == len(y) and all(map(same, x, y))
    return type(x) is type(y) and x == y


@settings(max_examples=200, deadline=None)
@given(msg=messages, base=st.integers(0, 63))
def test_layout_round_trips_and_aligns_buffers(msg, base):
    out = _ringlink.encode(msg)
    pieces, size = out.pieces(base)
    assert size <= out.upper
    record = bytearray(size)
    spans = []
    for pos, data in pieces:
        n = memoryview(data).nbytes
        record[pos : pos + n] = data
        spans.append((pos, pos + n))
    for (_, end), (start, _) in zip(sorted(spans), sorted(spans)[1:]):
        assert end <= start  # pieces never overlap
    for pos, _ in pieces[2:]:
        assert (base + pos) % 64 == 0  # out-of-band buffers sit on 64-byte boundaries
    assert same(msg, _ringlink.decode(memoryview(record)))


@settings(max_examples=300, deadline=None)
@given(msg=messages, flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255))))
def test_a_corrupted_layout_only_ever_raises_frame_error(msg, flips):
    out = _ringlink.encode(msg)
    pieces, size = out.pieces(0)
    record = bytearray(size)
    for pos, data in pieces:
        record[pos : pos + memoryview(data).nbytes] = data
    for where, value in flips:
        if record:
            record[where % len(record)] = value
    try:
        _ringlink.decode(memoryview(record))
    except FrameError:
        pass


class RingChannelModel(RuleBasedStateMachine):
    """Sends (through the ring, or with a handle through the socket) and receives, some
    received arrays kept: everything arrives once, in order, and kept arrays never change."""

    def __init__(self) -> None:
        super().__init__()
        self.before = open_fds()
        self.a, self.b = Channel.pair(ring=1 << 13)
        self.model: collections.deque[tuple[object, bool]] = collections.deque()
        self.kept: list[tuple[np.ndarray, np.ndarray]] = []
        self.n = 0

    @rule(size=st.integers(0, 400))
    def send_array(self, size):
        # Up to 3.2 KB: out of band, and within one record (a larger message goes in pieces,
        # which a sender without a reader cannot finish).
        arr = np.full(size, self.n % 251, dtype=np.float64)
        self.n += 1
        try:
            self.a.send(arr, timeout=0)
        except TimeoutError:
            assert self.a.connected  # nothing half-written
            return
        self.model.append((arr, False))

    @rule(data=st.binary(max_size=500))
    def send_bytes(self, data):
        try:
            self.a.send(data, timeout=0)
        except TimeoutError:
            assert self.a.connected
            return
        self.model.append((data, False))

    @precondition(lambda self: len(self.model) < 20)
    @rule()
    def send_with_handle(self):
        fd = os.open(os.devnull, os.O_RDONLY)
        self.a.send(("fd", self.n), handle=Fd(fd), timeout=5)
        self.model.append((("fd", self.n), True))
        self.n += 1

    @rule(keep=st.booleans())
    def recv(self, keep):
        if not self.model:
            with pytest.raises(TimeoutError):
                self.b.recv(timeout=0)
            return
        want, has_handle = self.model.popleft()
        got, handle = self.b.recv(timeout=5, with_handle=True)
        assert same(want, got)
        assert (handle is not None) == has_handle
        if handle is not None:
            handle.close()
        if keep and isinstance(got, np.ndarray):
            self.kept.append((got, want))

    @rule()
    def drop_kept(self):
        self.kept.clear()

    @invariant()
    def kept_arrays_never_change(self):
        for got, want in self.kept:
            assert np.array_equal(got, want)

    def teardown(self) -> None:
        self.kept.clear()
        self.a.close()
        self.b.close()
        gc.collect()
        assert open_fds() == self.before


TestRingChannelModel = RingChannelModel.TestCase
TestRingChannelModel.pytestmark = [pytest.mark.slow]
TestRingChannelModel.settings = settings(
    max_examples=50,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


action = st.one_of(
    st.tuples(st.just("array"), st.integers(0, 3000)),  # up to 24 KB: some in pieces
    st.tuples(st.just("bytes"), st.integers(0, 9000)),
    st.tuples(st.just("handle"), st.just(0)),
)


@settings(max_examples=25, deadline=None)
@given(actions=st.lists(action, max_size=60), keep=st.lists(st.booleans(), max_size=60))
def test_a_threaded_sender_and_a_receiver_that_keeps_some(actions, keep):
    """Through a small ring: pieces, the socket for handles and for a receiver that keeps
    arrays, and back; everything arrives once, in order, and kept arrays never change."""
    a, b = Channel.pair(ring=1 << 13)
    sent = []
    for i, (kind, size) in enumerate(actions):
        if kind == "array":
            sent.append(np.full(size, i % 251, dtype=np.float64))
        elif kind == "bytes":
            sent.append(bytes([i % 256]) * size)
        else:
            sent.append(("handle", i))

    def send_all():
        for msg in sent:
            if isinstance(msg, tuple):
                a.send(msg, handle=Fd(os.open(os.devnull, os.O_RDONLY)))
            else:
                a.send(msg)

    t = threading.Thread(target=send_all)
    t.start()
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    for i, want in enumerate(sent):
        got, handle = b.recv(timeout=30, with_handle=True)
        assert same(want, got)
        assert (handle is not None) == isinstance(want, tuple)
        if handle is not None:
            handle.close()
        if isinstance(got, np.ndarray) and i < len(keep) and keep[i]:
            kept.append((got, want))
        for k, w in kept:
            assert np.array_equal(k, w)
    t.join()
    kept.clear()
    a.close()
    b.close()


@pytest.mark.slow
def test_the_ring_example_runs():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = pyforkd.exec_file(PY, [os.path.join(root, "examples", "ring_numpy.py")], timeout=120)
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 2 and "ring=64 MiB" in lines[0] and "socket only" in lines[1]


def test_send_many_over_rings_keeps_order_and_encodes_everything_first():
    # Small messages go as batches of records; a batch larger than the ring waits for room
    # (the receiver reads meanwhile); large and out-of-band ones go one by one, in order.
    a, b = pyforkd.Channel.pair(ring=1 << 16)
    with a, b:
        with pytest.raises(pyforkd.PicklingError):
            a.send_many([1, 2, lambda: 3, 4])  # (a lambda does not pickle)
        b_msgs = [i for i in range(3000)] + [b"L" * 200_000] + [bytearray(b"x" * 5000), "end"]
        got: list = []
        reader = threading.Thread(target=lambda: got.extend(b.recv() for _ in b_msgs))
        reader.start()
        a.send_many(b_msgs, timeout=60)
        reader.join(60)
        assert got == b_msgs  # and nothing of the refused batch came before them
