"""Channel: serializations, handles, concurrency, backpressure, limits, malformed input."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import socket
import struct
import sys
import threading

import pytest
from _helpers import ECHO, PY, assert_no_leak, open_fds, posix_only_because
from hypothesis import given, settings
from hypothesis import strategies as st

import pyforkd
from pyforkd import Channel, ChannelClosedError, Fd, FrameError

HEADER = struct.Struct("<2sBBHHQ")  # magic, version, kind, flags, nfds, length


def frame(
    payload: bytes, kind: int = 3, *, magic=b"PF", version=1, flags=0, nfds=0, length=None
) -> bytes:
    size = len(payload) if length is None else length
    return HEADER.pack(magic, version, kind, flags, nfds, size) + payload


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    ca, cb = Channel(a), Channel(b)
    yield ca, cb
    ca.close()
    cb.close()


@pytest.fixture
def raw_pair():
    """A Channel and the plain socket at the other end, to write any bytes at it."""
    a, b = socket.socketpair()
    ch = Channel(a)
    yield ch, b
    ch.close()
    b.close()


# ---- messages -------------------------------------------------------------------------------


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_pickle_round_trip_keeps_types(pair):
    a, b = pair
    msg = {"int": 1, "set": {1, 2}, "bytes": b"\x00\xff", "tuple": (1, "x"), "none": None}
    a.send(msg)
    assert b.recv() == msg


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_json_and_raw_are_decoded_by_the_kind_the_sender_wrote():
    x, y = socket.socketpair()
    j, r = Channel(x, serialization="json"), Channel(y, serialization="raw")
    j.send({"a": [1, 2.5, "é", None, True]})
    assert r.recv() == {"a": [1, 2.5, "é", None, True]}
    r.send(b"raw bytes")
    assert j.recv() == b"raw bytes"
    r.send(memoryview(b"mv"))
    assert j.recv() == b"mv"
    with pytest.raises(TypeError, match="serialization='raw' sends bytes-like"):
        r.send("text")
    with pytest.raises(TypeError, match="as JSON"):
        j.send({"x": object()})
    with pytest.raises(TypeError, match="as JSON"):
        j.send(float("nan"))  # Node dies on NaN: refused here
    j.close()
    r.close()


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_order_is_kept_and_iteration_ends_at_close(pair):
    a, b = pair

    def sender():
        for i in range(10_000):
            a.send(i)
        a.close()

    t = threading.Thread(target=sender)
    t.start()
    assert list(b) == list(range(10_000))
    t.join()
    assert not b.connected


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_unpicklable_message_is_refused_before_anything_is_written(pair):
    a, b = pair
    with pytest.raises(TypeError, match="cannot pickle"):
        a.send(lambda: 1)
    with pytest.raises(TypeError, match="cannot pickle"):
        a.send(threading.Lock())
    a.send("still usable")
    assert b.recv() == "still usable"


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_max_message_size_on_both_sides():
    x, y = socket.socketpair()
    small, big = (
        Channel(x, max_message_size=100, serialization="raw"),
        Channel(y, serialization="raw"),
    )
    with pytest.raises(ValueError, match="over max_message_size"):
        small.send(b"x" * 101)
    big.send(b"y" * 101)
    with pytest.raises(FrameError, match="longer than max_message_size"):
        small.recv()
    assert not small.connected
    big.close()


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_recv_timeout_and_bad_timeouts(pair):
    a, b = pair
    with pytest.raises(TimeoutError):
        b.recv(timeout=0.05)
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        b.recv(timeout=-1)
    a.send("late")
    assert b.recv(timeout=5) == "late"


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_bad_constructor_arguments():
    a, b = socket.socketpair()
    with pytest.raises(ValueError, match="serialization must be"):
        Channel(a, serialization="yaml")
    with pytest.raises(ValueError, match="framing"):
        Channel(a, framing="xml")
    with pytest.raises(ValueError, match="JSON only"):
        Channel(a, framing="node", serialization="pickle")
    with pytest.raises(ValueError, match="max_message_size must be > 0"):
        Channel(a, max_message_size=0)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        pytest.raises(ValueError, match="AF_UNIX SOCK_STREAM"),
    ):
        Channel(tcp)
    a.close()
    b.close()


# ---- handles ----------------------------------------------------------------------------------


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_handles_of_every_kind_arrive_as_the_same_kind(pair, tmp_path):
    a, b = pair
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    path = tmp_path / "f.txt"
    path.write_text("file content")
    f = open(path, encoding="utf-8")  # noqa: SIM115 - sent, then closed by send
    r, w = os.pipe()
    a.send({"n": 4}, handle=[listener, udp, f, Fd(w)])
    msg, (l2, u2, f2, fd2) = b.recv(with_handle=True)
    assert msg == {"n": 4}
    assert isinstance(l2, socket.socket) and l2.getsockname()[1] == port
    assert l2.type == socket.SOCK_STREAM and u2.type == socket.SOCK_DGRAM
    with socket.create_connection(("127.0.0.1", port)) as c:
        conn, _ = l2.accept()  # the received copy really is the listening socket
        conn.close()
        c.close()
    assert f2.read() == "file content"
    assert isinstance(fd2, Fd)
    os.write(fd2.fileno(), b"through the passed pipe")
    assert os.read(r, 100) == b"through the passed pipe"
    # The sender's copies were closed (Node's default)...
    assert listener.fileno() == -1 and udp.fileno() == -1 and f.closed
    for h in (l2, u2, f2, fd2):
        h.close()
    os.close(r)


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_keep_open_leaves_the_senders_copy(pair):
    a, b = pair
    s1, s2 = socket.socketpair()
    a.send("x", handle=s1, keep_open=True)
    _, got = b.recv(with_handle=True)
    assert s1.fileno() >= 0
    got.sendall(b"ping")
    assert s2.recv(4) == b"ping"
    for s in (s1, s2, got):
        s.close()


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_a_handle_not_taken_is_closed_with_a_warning(pair):
    a, b = pair
    r, w = os.pipe()
    before = open_fds()
    a.send("x", handle=Fd(w))
    with pytest.warns(ResourceWarning, match="with_handle=True"):
        assert b.recv() == "x"
    assert open_fds() == before - {w}
    os.close(r)


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_bad_handles_raise_before_writing(pair):
    a, b = pair
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError, match="handle: the socket is closed"):
        a.send("x", handle=s)
    with pytest.raises(TypeError, match=r"can send a socket\.socket"):
        a.send("x", handle=42)
    with pytest.raises(ValueError, match="Fd\\(\\): descriptor -1 is negative"):
        Fd(-1)
    a.send("fine")
    assert b.recv() == "fine"


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_stdlib_recv_fds_receives_what_pyforkd_sends():
    x, y = socket.socketpair()
    ch = Channel(x, serialization="raw")
    r, w = os.pipe()
    ch.send(b"payload", handle=Fd(w))
    data, fds, _flags, _addr = socket.recv_fds(y, 4096, 4)
    assert len(fds) == 1 and data[:2] == b"PF"
    os.write(fds[0], b"ok")
    assert os.read(r, 2) == b"ok"
    for fd in (fds[0], r):
        os.close(fd)
    ch.close()
    y.close()


@posix_only_because("a hand-written peer over a UNIX socket (Windows channels are named pipes)")
def test_pyforkd_receives_what_stdlib_send_fds_sends(raw_pair):
    ch, peer = raw_pair
    r, w = os.pipe()
    described = b"\x00d"  # one handle (not a list): an Fd
    payload = struct.pack("<I", len(described)) + described + pickle.dumps("hi")
    socket.send_fds(peer, [frame(payload, kind=1, flags=1, nfds=1)], [w])
    os.close(w)
    msg, handle = ch.recv(with_handle=True)
    assert msg == "hi" and isinstance(handle, Fd)
    os.write(handle.fileno(), b"!")
    assert os.read(r, 1) == b"!"
    handle.close()
    os.close(r)


# ---- concurrency and backpressure -----------------------------------------------------------


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_sends_from_many_threads_never_interleave(pair):
    a, b = pair
    big = b"x" * 200_000  # several socket buffers: a torn frame would show

    def sender(n):
        for i in range(25):
            a.send((n, i, big))

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    got = [b.recv(timeout=30) for _ in range(200)]
    for t in threads:
        t.join()
    assert sorted((n, i) for n, i, _ in got) == [(n, i) for n in range(8) for i in range(25)]
    assert all(blob == big for _, _, blob in got)
    for n in range(8):  # each thread's messages stay in its order
        assert [i for m, i, _ in got if m == n] == list(range(25))


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_send_blocks_while_the_peer_does_not_read_then_times_out(pair):
    a, b = pair
    sent = 0
    with pytest.raises(TimeoutError, match="not reading"):
        while True:
            a.send(b"x" * 4096, timeout=0.2)
            sent += 1
    assert sent > 0  # it blocked once the buffers were full, instead of growing memory
    assert a.connected  # the timeout hit between messages: the channel stays usable
    assert b.recv(timeout=5) == b"x" * 4096


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_half_written_message_timeout_closes_the_channel(pair):
    a = pair[0]
    with pytest.raises(TimeoutError, match="half-written"):
        a.send(b"y" * (8 << 20), timeout=0.2)
    assert not a.connected
    with pytest.raises(ChannelClosedError):
        a.send("more")


# ---- the peer goes away -----------------------------------------------------------------------


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_send_to_a_closed_peer_raises_channel_closed_not_broken_pipe(pair):
    a, b = pair
    b.close()
    with pytest.raises(ChannelClosedError) as info:
        for _ in range(100):
            a.send("x")
    assert not isinstance(info.value, BrokenPipeError)
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, EOFError)


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_use_after_close(pair):
    a = pair[0]
    a.close()
    a.close()  # twice is fine
    with pytest.raises(ChannelClosedError, match="closed"):
        a.send(1)
    with pytest.raises(ChannelClosedError):
        a.recv()
    assert a.fileno() == -1


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_close_wakes_a_thread_blocked_in_recv(pair):
    a = pair[0]
    errors = []

    def reader():
        try:
            a.recv()
        except ChannelClosedError as exc:
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    t.join(0.1)
    a.close()
    t.join(10)
    assert not t.is_alive() and len(errors) == 1


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_peer_killed_mid_message_raises_channel_closed():
    a, b = socket.socketpair()
    code = (
        "import os, socket, struct, signal\n"
        "s = socket.socket(fileno=3)\n"
        "s.sendall(struct.pack('<2sBBHHQ', b'PF', 1, 3, 0, 0, 1000) + b'partial')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = pyforkd.spawn(PY, ["-c", code], stdio=["ignore", "ignore", "inherit", b])
    b.close()
    ch = Channel(a)
    with pytest.raises(ChannelClosedError, match="in the middle of a message"):
        ch.recv(timeout=30)
    assert child.wait() == -signal.SIGKILL


# ---- malformed input ------------------------------------------------------------------------


@posix_only_because("a hand-written peer over a UNIX socket (Windows channels are named pipes)")
@pytest.mark.parametrize(
    "data, why",
    [
        (b"garbage that is not a frame", "bad magic"),
        (frame(b"x", version=2), "unknown frame version"),
        (frame(b"x", kind=9), "unknown kind"),
        (frame(b"x", flags=0x80), "unknown kind or flags"),
        (frame(b"", length=1 << 40), "longer than max_message_size"),
        (frame(b"\x80\x05bad pickle", kind=1), "cannot decode"),
        (frame(b"{not json", kind=2), "cannot decode"),
    ],
)
def test_malformed_frames_raise_frame_error_and_close(raw_pair, data, why):
    ch, peer = raw_pair
    peer.sendall(data)
    with pytest.raises(FrameError, match=why):
        ch.recv(timeout=10)
    assert not ch.connected
    with pytest.raises(ChannelClosedError):
        ch.recv()


@posix_only_because("a hand-written peer over a UNIX socket (Windows channels are named pipes)")
def test_descriptor_count_mismatch_closes_every_descriptor(raw_pair):
    ch, peer = raw_pair
    before = open_fds()
    r, w = os.pipe()
    # The header declares two descriptors; one comes.
    socket.send_fds(peer, [frame(b"x", nfds=2)], [w])
    os.close(w)
    with pytest.raises(FrameError, match="declares 2 descriptors but 1 came"):
        ch.recv(timeout=10)
    os.close(r)
    assert open_fds() <= before  # the received copy was closed, and so was the channel


@posix_only_because("a hand-written peer over a UNIX socket (Windows channels are named pipes)")
def test_descriptors_go_to_the_frame_that_declares_them_in_a_shared_read(raw_pair):
    # Two frames arrive in one recvmsg; the descriptor came with the second, which declares
    # it: the first, which declares none, must not take it.
    ch, peer = raw_pair
    r, w = os.pipe()
    described = b"\x00d"  # one handle (not a list): an Fd
    payload = struct.pack("<I", len(described)) + described + b"second"
    peer.sendall(frame(b"first"))
    socket.send_fds(peer, [frame(payload, flags=1, nfds=1)], [w])
    os.close(w)
    assert ch.recv(timeout=10, with_handle=True) == (b"first", None)
    msg, handle = ch.recv(timeout=10, with_handle=True)
    assert msg == b"second" and isinstance(handle, Fd)
    handle.close()
    os.close(r)


@posix_only_because("a hand-written peer over a UNIX socket (Windows channels are named pipes)")
def test_descriptors_with_a_frame_that_declares_none(raw_pair):
    ch, peer = raw_pair
    fds_before = open_fds()
    r, w = os.pipe()
    socket.send_fds(peer, [frame(b"x")], [w])
    os.close(w)
    with pytest.raises(FrameError, match="came with a message that declares none"):
        ch.recv(timeout=10)
    os.close(r)
    assert open_fds() <= fds_before


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_frame_error_keeps_the_process_and_fd_count_at_baseline():
    before = open_fds()
    for _ in range(20):
        a, b = socket.socketpair()
        ch = Channel(a)
        r, w = os.pipe()
        socket.send_fds(b, [frame(b"x", nfds=3)], [w, w, r])
        os.close(w)
        os.close(r)
        with pytest.raises(FrameError):
            ch.recv(timeout=10)
        b.close()
    assert open_fds() == before


# ---- Node's json-lines framing ----------------------------------------------------------------


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_node_framing_lines_unicode_straddling_reads_and_internal_messages():
    a, b = socket.socketpair()
    ch = Channel(a, framing="node", serialization="json")
    line = json.dumps({"text": "héllo wörld ✓"}, ensure_ascii=False).encode() + b"\n"
    cut = line.index("✓".encode()) + 1  # inside the 3-byte character
    b.sendall(line[:cut])
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0.1)  # half a line: nothing yet
    b.sendall(line[cut:] + b'{"cmd":"NODE_HANDLE_ACK"}\n[1,2]\n"s"\n')
    assert ch.recv(timeout=5) == {"text": "héllo wörld ✓"}
    assert ch.recv(timeout=5) == [1, 2]  # the internal NODE_ message never showed up
    assert ch.recv(timeout=5) == "s"
    ch.send({"back": "ü"})
    assert b.recv(100) == '{"back":"ü"}\n'.encode()
    ch.close()
    b.close()


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
@pytest.mark.parametrize("bad", [b"\n", b"NaN\n", b"{oops}\n", b"\xff\xfe\n"])
def test_node_framing_invalid_json_is_a_frame_error(bad):
    a, b = socket.socketpair()
    ch = Channel(a, framing="node", serialization="json")
    b.sendall(bad)
    with pytest.raises(FrameError, match=r"not a JSON message|cannot decode"):
        ch.recv(timeout=5)
    b.close()


# ---- properties -------------------------------------------------------------------------------


def _points(data: bytes, cuts: list[int]) -> list[int]:
    return sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})


def _receive_in_pieces(data: bytes, cuts: list[int], **options) -> list:
    """What a Channel receives when the stream comes in exactly these writes.

    Each write is read at once (as far as the socket lets the writer go), so every cut is
    a read boundary for the channel's C reader.
    """
    a, b = socket.socketpair()
    ch = Channel(a, **options)
    b.setblocking(False)
    got = []

    def drain():
        while True:
            try:
                got.append(ch.recv(timeout=0))
            except TimeoutError:
                return

    try:
        points = _points(data, cuts)
        for lo, hi in zip(points, points[1:]):
            piece = memoryview(data)[lo:hi]
            while piece:
                try:
                    piece = piece[b.send(piece) :]
                except BlockingIOError:
                    pass  # the socket is full: the channel reads first
                drain()
        b.shutdown(socket.SHUT_WR)
        with pytest.raises(ChannelClosedError):
            while True:
                got.append(ch.recv(timeout=5))
        return got
    finally:
        ch.close()
        b.close()


def _feed_lines_in_pieces(ch: Channel, data: bytes, cuts: list[int]) -> None:
    """Give a Node channel's line decoder the stream in exactly these reads."""
    points = _points(data, cuts)
    for lo, hi in zip(points, points[1:]):
        ch._decoder.feed(memoryview(bytearray(data[lo:hi])), [])


messages = st.lists(
    st.one_of(
        st.binary(max_size=300),
        st.integers(),
        st.text(max_size=50),
        st.lists(st.integers(), max_size=5),
        # larger than the receive buffer: read into a buffer of its own
        st.integers(min_value=65_000, max_value=150_000).map(lambda n: b"L" * n),
    ),
    max_size=12,
)


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
@settings(max_examples=150, deadline=None)
@given(msgs=messages, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_frames_decode_the_same_under_any_split(msgs, cuts):
    x, y = socket.socketpair()
    sender, capture = Channel(x), y

    def send_all():
        for m in msgs:
            sender.send(m)
        sender.close()

    t = threading.Thread(target=send_all)  # large messages do not fit in the socket buffer
    t.start()
    data = b""
    capture.settimeout(30)
    while chunk := capture.recv(1 << 16):
        data += chunk
    t.join()
    capture.close()
    assert _receive_in_pieces(data, cuts) == msgs


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
@settings(max_examples=150, deadline=None)
@given(
    msgs=st.lists(
        st.one_of(
            st.text(max_size=40),
            st.integers(),
            st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
        ),
        max_size=10,
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_node_lines_decode_the_same_under_any_split(msgs, cuts):
    data = b"".join(json.dumps(m, ensure_ascii=False).encode() + b"\n" for m in msgs)
    a, b = socket.socketpair()
    ch = Channel(a, framing="node", serialization="json")
    _feed_lines_in_pieces(ch, data, cuts)
    assert [obj for obj, _ in ch._decoder.ready] == msgs
    ch.close()
    b.close()


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_bytes_never_crash_the_decoder(data, cuts):
    try:
        _receive_in_pieces(data, cuts, max_message_size=1 << 16)
    except (FrameError, ChannelClosedError):
        pass  # refusing is fine; anything else (a crash, MemoryError) is not


# ---- frames larger than the receive buffer ----------------------------------------------------


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_a_large_frame_with_handles_arrives_whole(pair):
    a, b = pair
    r, w = os.pipe()
    big = os.urandom(3 << 20)
    t = threading.Thread(target=a.send, args=(big,), kwargs={"handle": pyforkd.Fd(w)})
    t.start()
    msg, handle = b.recv(timeout=30, with_handle=True)
    t.join()
    assert msg == big
    with handle:
        os.write(handle.fileno(), b"!")
    assert os.read(r, 1) == b"!"
    os.close(r)
    a.send("small after big")
    assert b.recv(timeout=10) == "small after big"


@posix_only_because("a hand-written peer over a UNIX socket (Windows channels are named pipes)")
def test_peer_gone_in_the_middle_of_a_large_frame(raw_pair):
    ch, peer = raw_pair
    before = open_fds()
    peer.sendall(frame(b"z" * 100_000, length=5_000_000))
    peer.close()
    with pytest.raises(ChannelClosedError, match="middle of a message"):
        ch.recv(timeout=10)
    assert open_fds() <= before


@posix_only_because("a hand-written peer over a UNIX socket (Windows channels are named pipes)")
def test_descriptors_inside_a_large_frame_are_refused(raw_pair):
    ch, peer = raw_pair
    before = open_fds()
    r, w = os.pipe()

    def write():  # more than the socket holds: from a thread
        peer.sendall(frame(b"z" * 400_000, length=900_000))
        socket.send_fds(peer, [b"z" * 10], [w])  # descriptors ride on a frame's first byte only

    t = threading.Thread(target=write)
    t.start()
    with pytest.raises(FrameError, match="middle of a message"):
        while True:
            ch.recv(timeout=10)
    t.join()
    os.close(w)
    os.close(r)
    assert open_fds() <= before


# ---- the handle description codec ---------------------------------------------------------

handle_kinds = st.lists(
    st.sampled_from(["fd", "socket", "rb", "wb", "ab", "r", "w", "r+b"]), min_size=1, max_size=6
)


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
@settings(max_examples=100, deadline=None)
@given(kinds=handle_kinds, many=st.booleans())
def test_handle_descriptions_round_trip(tmp_path_factory, kinds, many):
    many = many or len(kinds) > 1  # (several handles are always sent as a list)
    path = tmp_path_factory.mktemp("h") / "f"
    path.write_bytes(b"")
    before = open_fds()
    made = []
    for k in kinds:
        if k == "fd":
            made.append(Fd(os.open(os.devnull, os.O_RDONLY)))
        elif k == "socket":
            made.append(socket.socket())
        else:
            made.append(open(path, k, encoding=None if "b" in k else "utf-8"))  # noqa: SIM115
    a, b = Channel.pair()
    a.send("m", made if many else made[0], keep_open=True)
    msg, got = b.recv(timeout=10, with_handle=True)
    objs = got if many else [got]
    assert msg == "m" and isinstance(got, list) == many and len(objs) == len(made)
    for x, y in zip(made, objs):
        if isinstance(x, (Fd, socket.socket)):
            assert type(x) is type(y)
        else:  # a file of the same mode, text or binary alike (buffering may differ)
            assert x.mode == y.mode
            assert isinstance(y, io.TextIOBase) == isinstance(x, io.TextIOBase)
            assert getattr(x, "encoding", None) == getattr(y, "encoding", None)
    for h in made + objs:
        h.close()
    a.close()
    b.close()
    assert open_fds() == before


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
@settings(max_examples=300, deadline=None)
@given(description=st.binary(max_size=20), count=st.integers(0, 4), body=st.binary(max_size=4))
def test_arbitrary_handle_descriptions_never_leak(description, count, body):
    """Any description a peer writes: the handles it fits, or a FrameError, never a leak."""
    before = open_fds()
    ours, raw = socket.socketpair()
    ch = Channel(ours, serialization="raw")
    payload = struct.pack("<I", len(description)) + description + body
    header = struct.pack("<2sBBHHQ", b"PF", 1, 3, 1, count, len(payload))
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]
    socket.send_fds(raw, [header + payload], fds) if fds else raw.sendall(header + payload)
    for fd in fds:
        os.close(fd)
    try:
        msg, handle = ch.recv(timeout=10, with_handle=True)
    except FrameError:
        assert not ch.connected
    else:
        assert msg == body
        for h in handle if isinstance(handle, list) else [handle]:
            h.close()
    ch.close()
    raw.close()
    assert open_fds() == before


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_raw_sends_any_buffer_as_its_bytes():
    import array

    a, b = socket.socketpair()
    sender, receiver = Channel(a, serialization="raw"), Channel(b)
    values = [
        bytearray(b"abc"),
        array.array("i", [1, 2]),
        memoryview(b"abcdef")[::2],  # not contiguous: copied
        memoryview(bytearray(300_000)),  # larger than the receive buffer
    ]
    for v in values:
        t = threading.Thread(target=sender.send, args=(v,))  # the large one needs a reader
        t.start()
        assert receiver.recv(timeout=10) == memoryview(v).tobytes()
        t.join()
    with pytest.raises(TypeError, match="bytes-like"):
        sender.send("text")
    sender.send(b"still usable")
    assert receiver.recv(timeout=10) == b"still usable"
    sender.close()
    receiver.close()


# ---- batches: send_many / recv_many -------------------------------------------------------


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_send_many_and_recv_many_keep_order_across_sizes(pair):
    a, b = pair
    big = bytes(range(256)) * 8192  # 2 MiB: written from where it is, between small ones
    msgs = [("small", i) for i in range(500)] + [big] + [{"n": i} for i in range(500)]
    done = threading.Event()
    got = []

    def reader():
        while len(got) < len(msgs):
            batch = b.recv_many(100, timeout=30)
            assert 1 <= len(batch) <= 100
            got.extend(batch)
        done.set()

    t = threading.Thread(target=reader)
    t.start()
    a.send_many(msgs)
    t.join(60)
    assert done.is_set() and got == msgs


@posix_only_because("a hand-written peer over a UNIX socket (Windows channels are named pipes)")
def test_recv_many_takes_every_frame_of_one_write_in_one_call(raw_pair):
    # A peer that is not pyforkd writes 50 frames at once: one call takes all of them,
    # and then waits no more than its timeout for another.
    ch, raw = raw_pair
    raw.sendall(b"".join(frame(b"m%d" % i) for i in range(50)))
    assert ch.recv_many(64, timeout=30) == [b"m%d" % i for i in range(50)]
    with pytest.raises(TimeoutError):
        ch.recv_many(64, timeout=0.05)
    raw.sendall(frame(b"x") + frame(b"y"))
    assert ch.recv_many(1, timeout=30) == [b"x"]  # no more than asked for;
    assert ch.recv_many(timeout=30) == [b"y"]  # the rest waits for the next call


@posix_only_because("a hand-written peer over a UNIX socket (Windows channels are named pipes)")
def test_recv_many_keeps_the_order_of_every_kind_of_frame(raw_pair):
    # Plain frames are decoded in the batch loop, others through the channel's queues, a
    # descriptor-carrying one by its own call: the order is the sender's all the same.
    ch, raw = raw_pair
    r, w = os.pipe()
    control = pickle.dumps("the channel's own")
    head = frame(pickle.dumps(1), kind=1) + frame(b'"two"', kind=2)
    tail = frame(control, kind=4) + frame(b"four") + frame(pickle.dumps(5), kind=1)
    raw.sendall(head + tail)
    with_fd = frame(b"\x02\x00\x00\x00\x00d" + b"six", flags=1, nfds=1)
    socket.send_fds(raw, [with_fd + frame(b"seven")], [w])
    os.close(w)
    got = []
    while len(got) < 6:
        got += ch.recv_many(64, timeout=30, with_handle=True)
    assert [m for m, _ in got] == [1, "two", b"four", 5, b"six", b"seven"]
    assert [type(h).__name__ for _, h in got] == ["NoneType"] * 4 + ["Fd", "NoneType"]
    got[4][1].close()
    assert ch.recv_control(timeout=5) == "the channel's own"
    os.close(r)


@posix_only_because("a hand-written peer over a UNIX socket (Windows channels are named pipes)")
def test_recv_many_refuses_a_batch_with_a_malformed_frame(raw_pair):
    ch, raw = raw_pair
    before = open_fds()
    a, b = socket.socketpair()
    with a, b:
        # good frames, then one that declares a descriptor and brings another frame's
        socket.send_fds(raw, [frame(b"ok") + frame(b"ok2") + frame(b"", nfds=1)], [a.fileno()])
    with pytest.raises(FrameError):
        ch.recv_many(timeout=30)
    assert open_fds() <= before  # the descriptor that came is closed (and the channel)
    with pytest.raises((FrameError, ChannelClosedError)):
        ch.recv_many(timeout=1)  # the channel is closed after garbage


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_send_many_sends_nothing_when_one_message_cannot_go(pair):
    a, b = pair
    with pytest.raises(pickle.PicklingError):
        a.send_many([1, 2, lambda: 3])
    with pytest.raises(TimeoutError):
        b.recv(timeout=0.05)  # nothing was written
    small = Channel.pair(max_message_size=1000)
    with small[0], small[1]:
        with pytest.raises(ValueError, match="max_message_size"):
            small[0].send_many([b"ok", b"x" * 5000])
        small[0].send_many([b"still", b"usable"])
        assert small[1].recv_many(timeout=30) == [b"still", b"usable"]


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_recv_many_with_handles_and_bad_limits(pair, tmp_path):
    a, b = pair
    path = tmp_path / "f"
    path.write_bytes(b"data")
    a.send("plain")
    with open(path, "rb") as f:
        a.send("with a file", handle=f)  # (this side's copy is closed once sent)
    got = []
    while len(got) < 2:
        got += b.recv_many(timeout=30, with_handle=True)
    assert got[0] == ("plain", None)
    assert got[1][0] == "with a file" and got[1][1].read() == b"data"
    got[1][1].close()
    with pytest.raises(ValueError, match="at least 1"):
        b.recv_many(0)


@pytest.mark.parametrize(
    "how",
    [
        "ring",
        pytest.param("node", marks=posix_only_because("a Channel over a UNIX socket")),
        "json",
    ],
)
def test_batches_over_rings_node_lines_and_json(how):
    if how == "node":
        x, y = socket.socketpair()
        a = Channel(x, framing="node", serialization="json")
        b = Channel(y, framing="node", serialization="json")
    elif how == "ring":
        a, b = Channel.pair(ring=1 << 16)
    else:
        a, b = Channel.pair(serialization="json")
    with a, b:
        msgs = [{"i": i, "s": "x" * (i % 50)} for i in range(300)]
        a.send_many(msgs, timeout=30)
        got = []
        while len(got) < len(msgs):
            got += b.recv_many(50, timeout=30)
        assert got == msgs


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
def test_send_many_across_its_run_and_size_limits(pair):
    # Runs of small messages (more than one run's 256 KiB), messages that go alone (16 KiB
    # and more), empty ones: all arrive whole and in order.
    a, b = pair
    sizes = [0, 1, 16383, 16384, 100_000, 5, 262_144, 3] * 3 + [4096] * 200
    msgs = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    got = []
    t = threading.Thread(target=a.send_many, args=(msgs,), kwargs={"timeout": 60})
    t.start()
    while len(got) < len(msgs):
        got += b.recv_many(1000, timeout=30)
    t.join(60)
    assert [len(m) for m in got] == sizes and got == msgs


# ---- the hot path's cost in Python calls ---------------------------------------------------


def _python_calls(run) -> tuple[int, int]:
    """Python-level function calls and C calls (builtins, cffi) made while ``run`` runs."""
    counts = {"call": 0, "c_call": 0}

    def profile(frame, event, arg):
        if event in counts:
            counts[event] += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return counts["call"] - 1, counts["c_call"]  # (less the call of `run` itself)


@pytest.mark.parametrize(
    "serialization,ring,msg",
    [
        ("pickle", None, {"id": 1, "op": "get"}),
        ("raw", None, b"x" * 64),
        pytest.param(
            "pickle",
            1 << 16,
            {"id": 1, "op": "get"},
            marks=posix_only_because("the budget is POSIX's: a Windows ring wait costs more"),
        ),
    ],
    ids=["socket-pickle", "socket-raw", "ring-pickle"],
)
def test_a_plain_message_costs_at_most_three_python_calls_each_way(serialization, ring, msg):
    # The budget: send and recv each at most three Python-level calls per message
    # (the C calls, pickle and the lock are not Python code).  Counted, not timed.
    a, b = Channel.pair(serialization=serialization, ring=ring)
    n = 200
    with a, b:
        a.send(msg), b.recv()  # (first use: the receive buffer is allocated)

        def send_n():
            for _ in range(n):
                a.send(msg)

        def recv_n():
            for _ in range(n):
                b.recv()

        sends, _ = _python_calls(send_n)
        recvs, _ = _python_calls(recv_n)
        assert sends / n <= 3, sends / n
        assert recvs / n <= 3, recvs / n
        a.send_many([msg] * n)
        got: list = []
        batch, _ = _python_calls(lambda: got.extend(b.recv_many(n)))
        assert got == [msg] * n
        # (one per message and the first read; rings: the link's receive and its C call)
        assert batch / n < (2.5 if ring else 1.5), batch / n


@posix_only_because("a Channel over a UNIX socket (Windows channels are named pipes)")
@pytest.mark.parametrize("serialization", ["pickle", "json", "raw"])
def test_the_peer_closing_ends_every_kind_of_channel(serialization):
    a, b = socket.socketpair()
    sender, receiver = (
        Channel(a, serialization=serialization),
        Channel(b, serialization=serialization),
    )
    sender.send(b"last" if serialization == "raw" else "last")
    sender.close()
    assert receiver.recv() in (b"last", "last")
    for _ in range(2):  # the end, and it stays so (a blocking recv, then one with a timeout)
        with pytest.raises(ChannelClosedError):
            receiver.recv()
        with pytest.raises(ChannelClosedError):
            receiver.recv(timeout=5)
    receiver.close()


# ---- every platform: children are this interpreter with inline code --------------------


def echo_child(serialization: str | None = "pickle") -> pyforkd.ChildProcess:
    return pyforkd.spawn(
        PY, ["-c", ECHO], stdio=["ignore", "ignore", "inherit", "ipc"], serialization=serialization
    )


def test_pickled_messages_go_both_ways_in_order():
    child = echo_child()
    messages = [{"n": i, "data": bytes(range(i % 256))} for i in range(100)]
    for m in messages:
        child.send(m)
    assert [child.recv(timeout=60) for _ in messages] == [("echo", m) for m in messages]
    big = bytes(range(256)) * 4096  # a megabyte: many pipe buffers' worth
    child.send(big)
    assert child.recv(timeout=60) == ("echo", big)
    child.disconnect()
    assert child.wait(timeout=60) == 0  # it saw the end of the channel


def test_node_json_framing_by_default():
    child = echo_child(serialization=None)
    child.send({"list": [1, 2.5, "three", None, True]})
    assert child.recv(timeout=60) == ["echo", {"list": [1, 2.5, "three", None, True]}]
    child.disconnect()
    assert child.wait(timeout=60) == 0


def test_a_receive_times_out_and_the_channel_goes_on():
    child = echo_child()
    with pytest.raises(TimeoutError):
        child.recv(timeout=0.2)
    child.send("after")
    assert child.recv(timeout=60) == ("echo", "after")
    child.disconnect()
    assert child.wait(timeout=60) == 0


def test_the_child_ending_closes_the_channel():
    child = pyforkd.spawn(
        PY,
        ["-c", "import pyforkd; pyforkd.parent().send('bye')"],
        stdio=["ignore", "ignore", "inherit", "ipc"],
        serialization="pickle",
    )
    assert child.recv(timeout=60) == "bye"
    assert child.wait(timeout=60) == 0
    with pytest.raises(pyforkd.ChannelClosedError):
        child.recv(timeout=60)
    assert not child.connected
    child.close()


def test_disconnect_wakes_a_thread_blocked_in_a_receive_from_a_child():
    child = echo_child()
    outcome = []

    def blocked() -> None:
        try:
            child.recv()
        except pyforkd.ChannelClosedError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=blocked, daemon=True)
    reader.start()
    reader.join(0.3)
    assert reader.is_alive()  # waiting for a message that does not come
    child.disconnect()
    reader.join(60)
    assert not reader.is_alive()
    assert len(outcome) == 1
    with pytest.raises(pyforkd.ChannelClosedError):
        child.send("too late")
    assert child.wait(timeout=60) == 0


HANDLER = r"""
import os
import pyforkd
ch = pyforkd.parent()
while True:
    try:
        msg, handle = ch.recv(with_handle=True)
    except pyforkd.ChannelClosedError:
        break
    if msg == "socket":
        handle.sendall(b"hello from the child")
        handle.close()
    elif msg == "file":
        handle.write(b"written by the child")
        handle.close()
    elif msg == "many":
        kinds = [type(h).__name__ for h in handle]
        for h in handle:
            h.close()
        ch.send(kinds)
        continue
    elif msg == "back":
        ch.send("returned", handle=handle)
        continue
    elif msg == "ring":
        seen = []
        for _ in range(100):
            with handle.recv(timeout=60) as view:
                seen.append((len(view), view[0], view[-1]))
        ch.send(("ring", seen))
        handle.close()
        continue
    ch.send("done")
"""


def handler_child() -> pyforkd.ChildProcess:
    return pyforkd.spawn(
        PY, ["-c", HANDLER], stdio=["ignore", "ignore", "inherit", "ipc"], serialization="pickle"
    )


def connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    return client, accepted


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(60)
    out = b""
    while chunk := sock.recv(4096):
        out += chunk
    return out


def test_a_socket_sent_to_the_child_is_its_own_and_ours_is_closed():
    child = handler_child()

    def send_one() -> None:
        client, accepted = connected_pair()
        child.send("socket", handle=accepted)
        assert accepted.fileno() == -1  # sent: this side's copy is closed (as in Node)
        assert child.recv(timeout=60) == "done"
        # The child wrote and closed its copy; ours is gone too, so the stream ends.
        assert read_all(client) == b"hello from the child"
        client.close()

    assert_no_leak(send_one)
    child.disconnect()
    assert child.wait(timeout=60) == 0


def test_a_file_sent_to_the_child_is_written_through(tmp_path):
    child = handler_child()
    path = tmp_path / "out.bin"
    with open(path, "wb") as f:
        f.write(b"ours first, ")
        child.send("file", handle=f, keep_open=True)  # flushed before it goes
        assert child.recv(timeout=60) == "done"
        assert not f.closed
    assert path.read_bytes() == b"ours first, written by the child"
    child.disconnect()
    assert child.wait(timeout=60) == 0


def test_several_handles_in_one_message_arrive_as_the_same_kinds(tmp_path):
    child = handler_child()

    def send_three() -> None:
        client, accepted = connected_pair()
        f = open(tmp_path / "x.bin", "wb")  # noqa: SIM115
        fd = os.open(tmp_path / "y.bin", os.O_WRONLY | os.O_CREAT)
        child.send("many", handle=[accepted, f, pyforkd.Fd(fd)])
        assert child.recv(timeout=60) == ["socket", "BufferedWriter", "Fd"]
        assert f.closed
        assert read_all(client) == b""  # every copy of the connection is closed
        client.close()

    assert_no_leak(send_three)
    child.disconnect()
    assert child.wait(timeout=60) == 0


def test_a_handle_comes_back_from_the_child_and_works():
    child = handler_child()
    r, w = os.pipe()
    child.send("back", handle=pyforkd.Fd(w))
    msg, back = child.recv(timeout=60, with_handle=True)
    assert msg == "returned"
    assert isinstance(back, pyforkd.Fd)
    os.write(back.fileno(), b"round trip")
    back.close()
    assert os.read(r, 100) == b"round trip"
    assert os.read(r, 100) == b""  # the child's copy is closed as well
    os.close(r)
    child.disconnect()
    assert child.wait(timeout=60) == 0


def test_a_handle_that_is_not_open_is_refused_before_anything_is_written():
    child = handler_child()
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(ValueError, match=f"descriptor {fd} is not open"):
        child.send("back", handle=pyforkd.Fd(fd))
    child.send("back", handle=pyforkd.Fd(os.open(os.devnull, os.O_RDONLY)))
    msg, back = child.recv(timeout=60, with_handle=True)
    assert msg == "returned"  # the channel goes on, in step
    back.close()
    child.disconnect()
    assert child.wait(timeout=60) == 0


def test_a_ring_sent_to_the_child_shares_its_memory():
    child = handler_child()
    with pyforkd.Ring(1 << 16) as ring:
        ring.watch(child.channel)
        child.send("ring", handle=ring)
        records = [bytes([i]) * (i * 300 + 1) for i in range(100)]  # wraps around many times
        for record in records:
            ring.send(record)
        assert child.recv(timeout=60) == ("ring", [(len(r), r[0], r[-1]) for r in records])
    child.disconnect()
    assert child.wait(timeout=60) == 0


def test_channel_pair_carries_messages_and_handles_within_a_process():
    def through_a_pair() -> None:
        a, b = pyforkd.Channel.pair()
        a.send({"x": 1})
        assert b.recv(timeout=60) == {"x": 1}
        client, accepted = connected_pair()
        b.send("conn", handle=accepted)
        msg, got = a.recv(timeout=60, with_handle=True)
        assert msg == "conn" and isinstance(got, socket.socket)
        got.sendall(b"via the pair")
        got.close()
        assert read_all(client) == b"via the pair"
        client.close()
        a.close()
        with pytest.raises(pyforkd.ChannelClosedError):
            b.recv(timeout=60)
        b.close()

    assert_no_leak(through_a_pair)


def test_channel_pair_over_rings():
    a, b = pyforkd.Channel.pair(ring=1 << 16)
    big = bytes(range(256)) * 1000  # larger than a ring record: it goes in parts

    def send_all() -> None:
        for i in range(50):
            a.send((i, big))

    sender = threading.Thread(target=send_all)
    sender.start()
    assert [b.recv(timeout=60) for _ in range(50)] == [(i, big) for i in range(50)]
    sender.join(60)
    huge = os.urandom(3 << 20)  # over a megabyte: assembled in fresh pages on arrival
    sender = threading.Thread(target=b.send, args=(huge,))
    sender.start()
    assert a.recv(timeout=60) == huge
    sender.join(60)
    a.close()
    b.close()
