"""A hostile peer on the other end of a Channel: bytes and descriptors written by hand.

Nothing here uses pyforkd's encoder to make what the channel receives: frames are packed
with ``struct`` from the layout in csrc/common/frame.c, descriptors go with
``socket.send_fds``.  Every test asserts what docs/trust.md promises: a ``FrameError`` (or a
refusal), the channel closed afterwards, and descriptors and memory back where they were.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import socket
import struct
import tempfile
import threading

import pytest
from _helpers import open_fds, posix_only_because, rss_bytes

import pyforkd
from pyforkd import ChannelClosedError, FrameError

HEADER = struct.Struct("<2sBBHHQ")  # magic, version, kind, flags, descriptor count, length
PICKLE, JSON, RAW, CONTROL, RING = 1, 2, 3, 4, 5
HANDLES = 1

pytestmark = posix_only_because("hand-written peers over AF_UNIX with SCM_RIGHTS")


def frame(kind: int, payload: bytes, flags: int = 0, nfds: int = 0, length: int = -1) -> bytes:
    size = len(payload) if length < 0 else length
    return HEADER.pack(b"PF", 1, kind, flags, nfds, size) + payload


def described(desc: bytes, body: bytes = b"") -> bytes:
    """A payload whose handle description is ``desc`` (u32 length + bytes)."""
    return struct.pack("<I", len(desc)) + desc + body


class Peer:
    """The channel under test, and the raw socket at its other end."""

    def __init__(self, **options: object) -> None:
        ours, self.raw = socket.socketpair()
        self.channel = pyforkd.Channel(ours, **options)

    def send(self, data: bytes, fds: list[int] | None = None) -> None:
        if fds:
            socket.send_fds(self.raw, [data], fds)
        else:
            self.raw.sendall(data)

    def close(self) -> None:
        self.channel.close()
        self.raw.close()


@pytest.fixture
def peer():
    gc.collect()
    before = open_fds()
    p = Peer()
    yield p
    p.close()
    gc.collect()
    assert open_fds() == before, f"descriptors leaked: {sorted(open_fds() - before)}"


def scratch_fds(n: int) -> list[int]:
    """n fresh descriptors to send (closed here after the send: the peer has copies)."""
    fds = []
    for _ in range(n):
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    return fds


def send_and_close(p: Peer, data: bytes, n: int) -> None:
    fds = scratch_fds(n)
    try:
        p.send(data, fds)
    finally:
        for fd in fds:
            os.close(fd)


def assert_refused(p: Peer, match: str = "") -> None:
    """The next recv raises FrameError; the channel is closed after it."""
    with pytest.raises(FrameError, match=match):
        p.channel.recv(timeout=5, with_handle=True)
    assert not p.channel.connected
    with pytest.raises(ChannelClosedError):
        p.channel.recv(timeout=0)


# ---- memory: a header cannot make the receiver allocate what never arrives ---------------


def test_a_huge_declared_length_allocates_only_what_arrives():
    p = Peer(max_message_size=1 << 30)
    try:
        # Warm up the receive path so its own buffers are counted in the baseline.
        p.send(frame(RAW, b"x"))
        assert p.channel.recv(timeout=5) == b"x"
        before = rss_bytes()
        p.send(frame(RAW, b"y" * 4096, length=900 << 20))
        with pytest.raises(TimeoutError):
            p.channel.recv(timeout=0.2)
        grown = rss_bytes() - before
        assert grown < 16 << 20, f"RSS grew by {grown >> 20} MiB for a 4 KiB partial frame"
        p.raw.close()
        with pytest.raises(ChannelClosedError, match="middle of a message"):
            p.channel.recv(timeout=5)
    finally:
        p.close()


def test_a_large_frame_still_arrives_whole_in_pieces():
    p = Peer()
    try:
        body = os.urandom(3 << 20)
        data = frame(RAW, body)
        t = threading.Thread(
            target=lambda: [p.send(data[i : i + 65521]) for i in range(0, len(data), 65521)]
        )
        t.start()
        assert p.channel.recv(timeout=30) == body
        t.join()
    finally:
        p.close()


# ---- descriptors: a peer cannot park them in the receiver ---------------------------------


def test_descriptors_sent_after_a_frame_began_are_refused(peer):
    # The frame declares one descriptor and brings it; the rest never comes.  Every further
    # batch of descriptors would be parked until the frame completed: refused at once.
    send_and_close(peer, frame(RAW, b"\x00" * 10, flags=HANDLES, nfds=1, length=1000), 1)
    with pytest.raises(TimeoutError):
        peer.channel.recv(timeout=0.1)
    send_and_close(peer, b"\x00" * 10, 1)
    assert_refused(peer, "descriptors")


def test_a_peer_cannot_park_descriptors_up_to_the_limit(peer):
    # The old attack: a header declaring none, and descriptors with every later chunk.
    peer.send(frame(RAW, b"", length=1 << 20))
    with pytest.raises(TimeoutError):
        peer.channel.recv(timeout=0.05)
    refused = False
    for _ in range(50):
        try:
            send_and_close(peer, b"\x00" * 8, 8)
        except OSError:
            break  # the channel closed its end: the peer cannot send any more
        try:
            peer.channel.recv(timeout=0.05)
        except TimeoutError:
            continue
        except FrameError:
            refused = True
            break
    assert refused
    assert not peer.channel.connected


def test_descriptors_with_a_frame_declaring_none_are_refused(peer):
    send_and_close(peer, frame(RAW, b"abc"), 2)
    assert_refused(peer, "declares none")


def test_a_declared_count_that_does_not_match_is_refused(peer):
    send_and_close(peer, frame(RAW, described(b"\x01dd"), flags=HANDLES, nfds=3), 2)
    assert_refused(peer, "declares 3 descriptors but 2 came")


# ---- handle descriptions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("desc", "nfds", "why"),
    [
        (b"", 1, "description is empty"),
        (b"\x00f\x00\x00", 1, "mode"),  # an empty file mode
        (b"\x00f\x02rz\x00", 1, "mode"),  # an invalid one
        (b"\x00f\x01r\x05rot13", 1, "text encoding"),  # a codec, but not a text one
        (b"\x00f\x01r\x07nothere", 1, "encoding"),
        (b"\x00f\x01r\x05", 1, "cut short"),
        (b"\x00dd", 2, "a list"),  # several descriptors, the list bit clear
        (b"\x00q", 1, "unknown handle kind"),
        (b"\x81d", 1, "flags"),  # unknown description flags
        (b"\x00d", 2, "fewer are described"),
        (b"\x01ddd", 2, "more are described"),
    ],
)
def test_a_malformed_handle_description_is_refused_and_closes_every_descriptor(
    peer, desc, nfds, why
):
    send_and_close(peer, frame(RAW, described(desc, b"body"), flags=HANDLES, nfds=nfds), nfds)
    assert_refused(peer, why)


def test_a_description_longer_than_the_frame_is_refused(peer):
    payload = struct.pack("<I", 1 << 30) + b"\x00d"
    send_and_close(peer, frame(RAW, payload, flags=HANDLES, nfds=1), 1)
    assert_refused(peer, "runs past")


def test_a_payload_too_short_for_its_description_length_is_refused(peer):
    send_and_close(peer, frame(RAW, b"\x01", flags=HANDLES, nfds=1), 1)
    assert_refused(peer, "runs past")


def test_a_directory_described_as_a_file_is_refused(peer):
    fd = os.open(tempfile.gettempdir(), os.O_RDONLY)
    try:
        peer.send(frame(RAW, described(b"\x00f\x01r\x00"), flags=HANDLES, nfds=1), [fd])
    finally:
        os.close(fd)
    assert_refused(peer, "directory")


def test_a_non_socket_described_as_a_socket_is_refused(peer):
    send_and_close(peer, frame(RAW, described(b"\x00s"), flags=HANDLES, nfds=1), 1)
    assert_refused(peer, "socket")


def test_a_good_file_description_still_works(peer):
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        data = frame(RAW, described(b"\x00f\x01w\x05utf-8", b"hi"), flags=HANDLES, nfds=1)
        peer.send(data, [fd])
    finally:
        os.close(fd)
    msg, handle = peer.channel.recv(timeout=5, with_handle=True)
    assert msg == b"hi"
    assert handle.mode == "w" and handle.encoding == "utf-8"
    handle.close()


# ---- malformed payloads: always FrameError, and nothing after it is delivered ---------------


MALFORMED = {
    "JSON not closed": (frame(JSON, b"[" * 100_000 + b"]" * 99_999), "Expecting"),
    "NaN": (frame(JSON, b'{"a": NaN}'), "NaN"),
    "not UTF-8": (frame(JSON, b"\xff\xfe"), "decode"),
    "garbage pickle": (frame(PICKLE, b"\x80\x05garbage"), "decode"),
    "deep pickle": (frame(PICKLE, b"(" * 200_000 + b"."), "decode"),
    "pickle without STOP": (frame(PICKLE, b"\x80\x05K\x01"), "decode"),
    "ring record without rings": (frame(RING, b"abc"), "ring"),
    "unknown kind": (frame(9, b""), "bad frame"),
    "unknown version": (b"PF\x02" + b"\x00" * 13, "bad frame"),
    "bad magic": (b"XX" + b"\x00" * 14, "bad frame"),
    "unknown flag": (HEADER.pack(b"PF", 1, RAW, 2, 0, 0), "bad frame"),
    "too many descriptors": (HEADER.pack(b"PF", 1, RAW, 0, 300, 0), "bad frame"),
    "length 2**63": (HEADER.pack(b"PF", 1, RAW, 0, 0, 1 << 63), "bad frame"),
}


@pytest.mark.parametrize(("data", "why"), MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_frame_is_a_frame_error_and_ends_the_channel(peer, data, why):
    peer.send(data + frame(RAW, b"after"))
    assert_refused(peer, why)


def test_json_nested_deeper_than_the_c_stack_is_read_as_node_reads_it(peer):
    # Node's JSON.parse takes any depth; so does the channel, with a stack of its own.
    depth = 100_000
    peer.send(frame(JSON, b"[" * depth + b"0" + b"]" * depth) + frame(RAW, b"after"))
    msg = peer.channel.recv(timeout=10)
    for _ in range(depth):
        (msg,) = msg
    assert msg == 0
    assert peer.channel.recv(timeout=10) == b"after"


# ---- a JSON channel never unpickles -------------------------------------------------------


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("kind", [PICKLE, CONTROL])
def test_a_json_channel_refuses_pickles(tmp_path, kind):
    target = str(tmp_path / "made-by-the-peer")
    p = Peer(serialization="json")
    try:
        p.send(frame(kind, pickle.dumps(_Evil(target), protocol=5)))
        if kind == PICKLE:
            assert_refused(p, "pickle")
        else:
            with pytest.raises(FrameError, match="pickle"):
                p.channel.recv_control(timeout=5)
        assert not os.path.exists(target)
    finally:
        p.close()


def test_a_raw_channel_refuses_pickles(tmp_path):
    target = str(tmp_path / "made-by-the-peer")
    p = Peer(serialization="raw")
    try:
        p.send(frame(PICKLE, pickle.dumps(_Evil(target), protocol=5)))
        assert_refused(p, "pickle")
        assert not os.path.exists(target)
    finally:
        p.close()


def test_a_json_channel_still_takes_json_and_raw():
    p = Peer(serialization="json")
    try:
        p.send(frame(JSON, json.dumps({"a": [1, 2]}).encode()) + frame(RAW, b"r"))
        assert p.channel.recv(timeout=5) == {"a": [1, 2]}
        assert p.channel.recv(timeout=5) == b"r"
    finally:
        p.close()


# ---- Node framing --------------------------------------------------------------------------


class _CountingBuffer(bytearray):
    """A receive buffer that counts the bytes its newline searches look at."""

    scanned = 0

    def find(self, sub, start=0, *rest):  # (the decoder's only search)
        _CountingBuffer.scanned += len(self) - start
        return super().find(sub, start, *rest)


def test_an_unterminated_node_line_is_searched_once():
    # 4 MiB in 4 KiB reads with no newline: a search from the start on every read would
    # look at 2 GiB; each byte is looked at once.
    p = Peer(framing="node", serialization="json", max_message_size=64 << 20)
    p.channel._decoder.pending = _CountingBuffer()
    _CountingBuffer.scanned = 0
    try:
        for _ in range(1024):
            p.raw.sendall(b"x" * 4096)
            with pytest.raises(TimeoutError):
                p.channel.recv(timeout=0)
        assert _CountingBuffer.scanned <= 2 * 4096 * 1024
        p.raw.sendall(b"\n")
        with pytest.raises(FrameError):  # "xxx...": not JSON
            p.channel.recv(timeout=5)
    finally:
        p.close()


def test_node_queries_that_are_never_read_do_not_hang_recv():
    # The peer asks NODE_SOCKET_GET_COUNT over and over and never reads the answers: the
    # channel's answers fill the socket.  recv(timeout) still returns in time.
    p = Peer(framing="node", serialization="json")
    p.raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    query = json.dumps({"cmd": "NODE_SOCKET_GET_COUNT", "key": "k" * 200}).encode() + b"\n"
    result: list[BaseException] = []

    def flood():
        try:
            for _ in range(20000):
                p.raw.sendall(query)
        except OSError:
            pass

    def receive():
        try:
            p.channel.recv(timeout=1)
        except BaseException as exc:
            result.append(exc)

    f = threading.Thread(target=flood, daemon=True)
    f.start()
    r = threading.Thread(target=receive, daemon=True)
    r.start()
    r.join(30)
    try:
        assert not r.is_alive(), "recv(timeout=1) hung on a peer that never reads"
        assert isinstance(result[0], (TimeoutError, FrameError)), result
    finally:
        p.close()
        f.join(5)


# ---- closing one end after a fork ------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_closing_a_pair_end_in_the_parent_leaves_the_childs_copy_working():
    here, there = pyforkd.Channel.pair()
    pid = os.fork()
    if pid == 0:  # the child keeps `there`, waits for the parent to let go of it, sends
        code = 1
        try:
            here._forget()
            assert there.recv(timeout=10) == "go"
            there.send("hello from the child")
            code = 0
        finally:
            os._exit(code)
    try:
        there.close()  # what a parent does with the child's end, routinely
        here.send("go")
        assert here.recv(timeout=10) == "hello from the child"
    finally:
        _, status = os.waitpid(pid, 0)
        here.close()
    assert os.waitstatus_to_exitcode(status) == 0


# ---- a ring channel after a FrameError ------------------------------------------------------


def test_a_ring_channel_is_closed_for_good_after_a_frame_error():
    here, there = pyforkd.Channel.pair(ring=1 << 16)
    try:
        there.send("first")
        there.send("second")
        assert here.recv(timeout=5) == "first"
        # The peer writes garbage on the socket (raw), then a record lands in the ring.
        os.write(there.fileno(), b"garbage garbage!")
        here._ring_link().rx_on_ring = False  # the receiver reads the socket next
        with pytest.raises(FrameError):
            here.recv(timeout=5)
        assert not here.connected
        with pytest.raises(ChannelClosedError):
            here.recv(timeout=0)
    finally:
        here.close()
        there.close()


# ---- rings: memory that arrives must be sealed -------------------------------------------------


def _memfd(size: int, seal: bool) -> int:
    import fcntl

    fd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd is Linux's")
def test_an_unsealed_ring_is_refused(peer):
    fd = _memfd(1 << 16, seal=False)
    try:
        peer.send(frame(RAW, described(b"\x00g"), flags=HANDLES, nfds=1), [fd])
    finally:
        os.close(fd)
    assert_refused(peer, "sealed")


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd is Linux's")
def test_a_ring_too_small_for_its_header_is_refused(peer):
    fd = _memfd(64, seal=True)
    try:
        peer.send(frame(RAW, described(b"\x00g"), flags=HANDLES, nfds=1), [fd])
    finally:
        os.close(fd)
    assert_refused(peer, "ring")


def test_a_ring_from_pyforkd_cannot_be_shrunk_by_its_receiver():
    ring = pyforkd.Ring(1 << 16)
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(ring.fileno(), 4096)
    finally:
        ring.close()


def test_messages_piling_up_unread_are_bounded():
    # The peer sends messages while this side waits for something else (a worker's result
    # comes as a control message): what piles up is bounded, then the channel ends.
    p = Peer(max_message_size=1 << 16)
    payload = frame(RAW, b"z" * (1 << 16))
    stop = threading.Event()

    def flood():
        try:
            while not stop.is_set():
                p.raw.sendall(payload)
        except OSError:
            pass  # the channel closed its end

    t = threading.Thread(target=flood)
    t.start()
    try:
        before = rss_bytes()
        with pytest.raises(FrameError, match="not received yet"):
            p.channel.recv_control(timeout=60)
        grown = rss_bytes() - before
        assert grown < 160 << 20, f"RSS grew by {grown >> 20} MiB"
        assert not p.channel.connected
    finally:
        stop.set()
        p.close()
        t.join(10)
