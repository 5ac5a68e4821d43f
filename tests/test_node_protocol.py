"""Node's handle protocol state machine (ACK, NACK, hold-back), driven byte by byte.

The far end here is a plain socket that this test reads and writes as Node would; the
real Node binary is the peer in test_node_handles.py.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import warnings

import pytest
from _helpers import open_fds, posix_only_because
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyforkd
from pyforkd import Channel

pytestmark = posix_only_because("Node's handle passing over UNIX sockets")


class NodeLike:
    """The far end of a node-framed channel: reads lines (+ descriptors), writes lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.fds: list[int] = []

    def line(self, timeout: float = 10) -> dict:
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, 4)
            if not data:
                raise EOFError
            self.buf += data
            self.fds += fds
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def nothing_for(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except socket.timeout:  # (TimeoutError from Python 3.10 on)
            return True
        return not data and not self.buf

    def write(self, obj: dict, fds: list[int] = ()) -> None:
        data = json.dumps(obj).encode() + b"\n"
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    ch = Channel(a, serialization="json", framing="node")
    peer = NodeLike(b)
    yield ch, peer
    ch.close()
    peer.close_fds()
    b.close()


def test_later_messages_wait_for_the_ack_and_nack_retransmits(pair):
    ch, peer = pair
    x, y = socket.socketpair()
    ch.send("with handle", handle=x)
    assert peer.line() == {"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": "with handle"}
    assert len(peer.fds) == 1
    later = threading.Thread(target=ch.send, args=("later",))
    later.start()
    assert peer.nothing_for(0.3)  # held back: no ACK yet
    assert x.fileno() >= 0  # our copy stays open until the ACK
    peer.close_fds()
    peer.write({"cmd": "NODE_HANDLE_NACK"})  # "no descriptor came": send it again
    assert peer.line()["msg"] == "with handle"
    assert len(peer.fds) == 1
    peer.write({"cmd": "NODE_HANDLE_ACK"})
    assert peer.line() == "later"
    later.join(10)
    assert x.fileno() == -1  # closed at the ACK
    y.close()


def test_a_send_waiting_for_an_ack_times_out(pair):
    ch, peer = pair
    x, y = socket.socketpair()
    with y:
        ch.send("h", handle=x, keep_open=True)
        peer.line()
        with pytest.raises(TimeoutError, match="not acknowledged"):
            ch.send("next", timeout=0.2)
        peer.write({"cmd": "NODE_HANDLE_ACK"})
        ch.send("next", timeout=10)
        assert peer.line() == "next"
        assert x.fileno() >= 0  # keep_open: ours to close
        x.close()


def test_three_nacks_give_up_with_a_warning(pair):
    ch, peer = pair
    x, y = socket.socketpair()
    ch.send("h", handle=x)
    peer.line()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The channel reads the replies while a later send waits for them.
        later = threading.Thread(target=ch.send, args=("after",))
        later.start()
        for _ in range(3):
            peer.write({"cmd": "NODE_HANDLE_NACK"})
            assert peer.line()["cmd"] == "NODE_HANDLE"
        peer.write({"cmd": "NODE_HANDLE_NACK"})
        assert peer.line() == "after"
        later.join(10)
    assert [str(w.message) for w in caught if w.category is RuntimeWarning] == [
        "a handle did not reach the Node peer after 3 retransmissions; it was closed"
    ]
    assert x.fileno() == -1
    y.close()


def test_a_node_handle_without_a_descriptor_is_nacked_and_with_one_acked(pair):
    ch, peer = pair
    peer.write({"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": "lost"})
    peer.write("sync")
    assert ch.recv(timeout=10) == "sync"  # the one without a descriptor never shows up
    x, y = socket.socketpair()
    peer.write({"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": "here"}, [y.fileno()])
    y.close()
    msg, sock = ch.recv(timeout=10, with_handle=True)
    assert msg == "here"
    assert peer.line() == {"cmd": "NODE_HANDLE_NACK"}
    assert peer.line() == {"cmd": "NODE_HANDLE_ACK"}
    sock.sendall(b"works")
    assert x.recv(5) == b"works"
    sock.close()
    x.close()
    peer.write({"cmd": "NODE_SOCKET_GET_COUNT", "key": "k"})
    peer.write({"cmd": "NODE_DEBUG_ENABLED"})
    peer.write("end")
    assert ch.recv(timeout=10) == "end"  # internal messages never reach the user
    assert peer.line() == {"cmd": "NODE_SOCKET_COUNT", "key": "k", "count": 0}


def test_a_node_handle_of_an_unknown_type_is_a_frame_error(pair):
    ch, peer = pair
    base, ours = open_fds(), ch.fileno()
    x, y = socket.socketpair()
    peer.write({"cmd": "NODE_HANDLE", "type": "fs.File", "msg": 1}, [y.fileno()])
    x.close()
    y.close()
    with pytest.raises(pyforkd.FrameError, match=r"fs\.File"):
        ch.recv(timeout=10)
    assert not ch.connected
    assert open_fds() == base - {ours}  # the channel and the descriptor that came: closed


def test_get_count_and_notify_close_follow_keyed_sockets(pair):
    ch, peer = pair
    socks = []
    for i in range(2):
        x, y = socket.socketpair()
        peer.write(
            {"cmd": "NODE_HANDLE", "type": "net.Socket", "key": "srv", "msg": i}, [y.fileno()]
        )
        y.close()
        socks.append(x)
    got = [ch.recv(timeout=10, with_handle=True) for _ in range(2)]
    assert [m for m, _ in got] == [0, 1]
    peer.write({"cmd": "NODE_SOCKET_GET_COUNT", "key": "srv"})
    peer.write({"cmd": "NODE_SOCKET_NOTIFY_CLOSE", "key": "srv"})
    peer.write("sync")
    assert ch.recv(timeout=10) == "sync"
    assert [peer.line()["cmd"] for _ in range(2)] == ["NODE_HANDLE_ACK"] * 2
    assert peer.line() == {"cmd": "NODE_SOCKET_COUNT", "key": "srv", "count": 2}
    got[0][1].close()
    assert peer.nothing_for(0.2)  # one is still open
    dup = os.dup(got[1][1].detach())  # given up: counts as closed for Node
    assert peer.line() == {"cmd": "NODE_SOCKET_ALL_CLOSED", "key": "srv"}
    os.close(dup)
    for s in socks:
        s.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=st.lists(st.tuples(st.booleans(), st.integers(0, 4)), min_size=1, max_size=8))
def test_any_mix_of_handles_and_nacks_keeps_order_and_leaks_nothing(plan):
    """Messages with and without handles, each handle NACKed 0-4 times, from one thread."""
    base = open_fds()
    a, b = socket.socketpair()
    ch = Channel(a, serialization="json", framing="node")
    peer = NodeLike(b)
    seen: list = []

    def node() -> None:
        for i, (with_handle, nacks) in enumerate(plan):
            msg = peer.line()
            if not with_handle:
                seen.append(msg)
                continue
            for _ in range(nacks):
                peer.close_fds()
                peer.write({"cmd": "NODE_HANDLE_NACK"})
                if _ >= 3:
                    break  # the fourth NACK ends it: no more copies come
                assert peer.line()["msg"] == i
            seen.append(msg["msg"])
            peer.close_fds()
            if nacks <= 3:
                peer.write({"cmd": "NODE_HANDLE_ACK"})
        seen.append(peer.line())

    t = threading.Thread(target=node)
    t.start()
    kept = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, (with_handle, _) in enumerate(plan):
            if with_handle:
                x, y = socket.socketpair()
                kept.append(y)
                ch.send(i, handle=x)
            else:
                ch.send(i)
        ch.send("end", timeout=10)
        warned = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    t.join(10)
    assert seen == [*range(len(plan)), "end"]
    assert len(warned) == sum(1 for h, n in plan if h and n == 4)
    ch.close()
    for y in kept:
        y.close()
    b.close()
    assert open_fds() == base
