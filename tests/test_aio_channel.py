"""pyforkd.aio channels: fork, fork_worker, await send/recv, async for, backpressure."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import textwrap
import time

import pytest
from _helpers import LoopTicks, posix_only_because

import pyforkd
from pyforkd import ChannelClosedError, WorkerError, aio

NODE = shutil.which("node")


def run(coro):
    return asyncio.run(coro)


def add(a, b):
    return a + b


def boom():
    raise KeyError("nope")


def echo():
    ch = pyforkd.parent()
    for msg in ch:
        ch.send(msg)


def ready_then_sleep():
    pyforkd.parent().send("ready")
    while True:
        time.sleep(1)


def count_to(n):
    ch = pyforkd.parent()
    for i in range(n):
        ch.send(i)


@pytest.mark.slow
@pytest.mark.parametrize(
    "start",
    [
        pytest.param("fork", marks=posix_only_because("Windows has no fork")),
        "spawn",
        pytest.param("forkserver", marks=posix_only_because("Windows has no fork")),
    ],
)
def test_fork_worker_result_join_and_remote_errors(start):
    async def main():
        w = await aio.fork_worker(add, 2, 3, start=start)
        assert isinstance(w, aio.Worker)
        assert await w.result(timeout=60) == 5
        assert await w.join(timeout=60) == 0
        bad = await aio.fork_worker(boom, start=start)
        with pytest.raises(WorkerError, match="KeyError"):
            await bad.result(timeout=60)
        assert await bad.join(timeout=60) == 1

    run(main())


def test_send_recv_and_async_for_keep_order():
    async def main():
        w = await aio.fork_worker(count_to, 500)
        got = [m async for m in w]  # ends when the worker's channel closes
        assert got == list(range(500))
        assert await w.join(timeout=30) == 0
        e = await aio.fork_worker(echo)
        for value in ({"a": [1, 2]}, "text", b"\x00" * 100_000):
            await e.send(value)
            assert await e.recv(timeout=30) == value
        with pytest.raises(TimeoutError):
            await e.recv(timeout=0.1)
        e.disconnect()
        # The worker ends: its loop sees the channel close (0), or its watch kills it first.
        assert await e.join(timeout=30) in (0, -9)  # (-9: SIGKILL, on Windows too)
        with pytest.raises(ChannelClosedError):
            await e.send("after")

    run(main())


@posix_only_because("under wine the sender never stalls on a named pipe nobody reads: hangs")
def test_send_waits_for_the_peer_without_blocking_the_loop():
    async def main():
        w = await aio.fork_worker(ready_then_sleep)  # it never reads
        assert await w.recv(timeout=30) == "ready"
        sent = 0
        async with LoopTicks() as ticks:
            with pytest.raises(TimeoutError, match="not reading"):
                for _ in range(1000):  # far more than the socket buffers hold
                    await w.send(b"y" * 4096, timeout=0.3)
                    sent += 1
        assert 0 < sent < 1000
        assert ticks.count >= 10  # the loop kept running while send waited
        assert w.connected  # nothing of the refused message was written
        w.disconnect()
        assert await w.join(timeout=30) == -signal.SIGKILL

    run(main())


def test_async_channel_in_the_child_and_handles(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(
        textwrap.dedent(
            """
            import asyncio, pyforkd
            from pyforkd import aio

            async def main():
                ch = aio.AsyncChannel(pyforkd.parent())
                async for msg in ch:
                    if msg == "sock":
                        _, sock = await ch.recv(with_handle=True)
                        sock.sendall(b"from the child")
                        sock.close()
                        continue
                    await ch.send({"echo": msg})

            asyncio.run(main())
            """
        )
    )

    async def main():
        p = await aio.fork(str(child))
        assert isinstance(p.channel, aio.AsyncChannel)
        await p.send("hello")
        assert await p.recv(timeout=30) == {"echo": "hello"}
        a, b = socket.socketpair()
        await p.send("sock")
        await p.send("the socket", handle=b)
        assert b.fileno() == -1  # ours was closed once sent
        a.settimeout(30)
        assert a.recv(100) == b"from the child"
        a.close()
        p.disconnect()
        assert await p.wait() == 0

    run(main())


@pytest.mark.skipif(NODE is None, reason="Node.js (node) is not installed")
def test_aio_fork_of_a_node_child_with_a_socket(tmp_path):
    js = tmp_path / "child.js"
    js.write_text(
        "process.on('message', (m, h) => { if (h) h.end('node ' + m); "
        "process.send({ got: m, handle: !!h }); });"
    )

    async def main():
        p = await aio.fork(str(js), exec_path=NODE)
        a, b = socket.socketpair()
        await p.send("one", handle=b)  # Node's ACK protocol runs beside the loop
        await p.send("two")
        assert await p.recv(timeout=30) == {"got": "one", "handle": True}
        assert await p.recv(timeout=30) == {"got": "two", "handle": False}
        a.settimeout(30)
        assert a.recv(100) == b"node one"
        a.close()
        p.disconnect()
        assert await p.wait() == 0

    run(main())


def test_async_channel_wants_a_channel():
    with pytest.raises(TypeError, match=r"wraps a pyforkd\.Channel"):
        aio.AsyncChannel(socket.socketpair)  # type: ignore[arg-type]


@posix_only_because("Windows has no fork (a fork server)")
def test_a_forkserver_worker_whose_server_died_is_still_awaited():
    async def main():
        w = await aio.fork_worker(ready_then_sleep, start="forkserver")
        assert await w.recv(timeout=60) == "ready"
        server = pyforkd.worker._forkserver._server
        server.kill("SIGKILL")
        assert server.wait(timeout=10) == -signal.SIGKILL
        waiting = asyncio.ensure_future(w.wait())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # the worker still runs: nothing to report yet
        w.disconnect()  # now it ends; its exit code went with the server
        with pytest.raises(ChildProcessError, match="exit status is lost"):
            await asyncio.wait_for(waiting, 30)

    run(main())


def test_batches_over_asyncio_keep_order():
    async def main():
        a, b = pyforkd.Channel.pair()
        x, y = aio.AsyncChannel(a), aio.AsyncChannel(b)
        msgs = [{"i": i} for i in range(3000)]  # more than the socket buffers hold at once
        got = []
        # (the receiver runs on the loop while the sender's thread waits for room)
        sender = asyncio.ensure_future(x.send_many(msgs, timeout=30))
        while len(got) < len(msgs):
            batch = await y.recv_many(500, timeout=30)
            assert 1 <= len(batch) <= 500
            got += batch
        await sender
        assert got == msgs
        with pytest.raises(TimeoutError):
            await y.recv_many(timeout=0.05)
        with pytest.raises(ValueError, match="at least 1"):
            await y.recv_many(0)
        a.close()
        with pytest.raises(ChannelClosedError):
            await y.recv_many(timeout=30)
        b.close()

    run(main())
