"""The IPC channel on Windows: spawn with "ipc", a duplex overlapped named pipe carrying
libuv's frames (what a Node peer reads), pyforkd's pickle/raw frames or Node's JSON lines
inside, against a real child (this interpreter calling pyforkd.parent())."""

from __future__ import annotations

import os
import socket
import sys
import threading

import pytest
from _winhelpers import ECHO, assert_no_handle_leak

import pyforkd

PY = sys.executable


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


def test_close_wakes_a_thread_blocked_in_recv():
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

    assert_no_handle_leak(send_one)
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

    assert_no_handle_leak(send_three)
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

    assert_no_handle_leak(through_a_pair)


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
