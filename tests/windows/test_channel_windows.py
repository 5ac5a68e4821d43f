"""The IPC channel on Windows: spawn with "ipc", a duplex overlapped named pipe carrying
libuv's frames (what a Node peer reads), pyforkd's pickle/raw frames or Node's JSON lines
inside, against a real child (this interpreter calling pyforkd.parent())."""

from __future__ import annotations

import gc
import sys
import threading

import pytest
from _winhelpers import handle_count

import pyforkd

PY = sys.executable
ECHO = r"""
import pyforkd
ch = pyforkd.parent()
while True:
    try:
        message = ch.recv()
    except pyforkd.ChannelClosedError:
        break
    ch.send(("echo", message))
"""


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


def test_sending_a_handle_is_refused_by_name():
    child = echo_child()
    with pytest.raises(NotImplementedError, match="sending handles"):
        child.send("x", handle=pyforkd.Fd(0))
    child.disconnect()
    assert child.wait(timeout=60) == 0


def test_channels_leak_no_handle():
    def round_trip() -> None:
        child = echo_child()
        child.send(1)
        assert child.recv(timeout=60) == ("echo", 1)
        child.disconnect()
        assert child.wait(timeout=60) == 0

    round_trip()
    gc.collect()  # (a Channel is in a reference cycle with its decoder: the collector frees it)
    before = handle_count()
    for _ in range(8):
        round_trip()
    gc.collect()
    assert handle_count() <= before
