"""pyforkd.aio on Windows, under asyncio's default (proactor) loop: the parent's pipe ends
are opened for overlapped I/O there (PFD_SPAWN_ASYNC_PIPES) and read and written by the
proactor; waits and channel waits run in threads, in slices."""

from __future__ import annotations

import asyncio
import sys

import pytest
from _winhelpers import ECHO

import pyforkd
from pyforkd import aio

PY = sys.executable
REVERSE = (
    "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data[::-1]); "
    "sys.stderr.write('read %d' % len(data))"
)


def square(x: int) -> int:
    return x * x


def test_the_default_loop_is_the_proactor():
    async def main():
        return asyncio.get_running_loop()

    assert isinstance(asyncio.run(main()), asyncio.ProactorEventLoop)


def test_spawn_streams_a_megabyte_both_ways():
    data = bytes(range(256)) * 4096

    async def main():
        async with aio.spawn(PY, ["-c", REVERSE]) as p:
            p.stdin.write(data)
            await p.stdin.drain()
            p.stdin.close()
            out, err = await asyncio.gather(p.stdout.read(), p.stderr.read())
        return out, err, p.returncode

    out, err, code = asyncio.run(main())
    assert out == data[::-1]
    assert err == f"read {len(data)}".encode()
    assert code == 0


def test_exec_file_collects_and_its_errors_match_the_sync_family():
    async def main():
        r = await aio.exec_file(PY, ["-c", "import sys; sys.stdout.buffer.write(b'hi')"])
        assert r.stdout == b"hi" and r.returncode == 0
        with pytest.raises(pyforkd.ExecError) as info:
            await aio.exec_file(PY, ["-c", "import sys; print('out'); sys.exit(4)"])
        assert info.value.returncode == 4 and info.value.stdout.strip() == b"out"
        with pytest.raises(pyforkd.ExecError) as info:
            await aio.exec_file(PY, ["-c", "import time; time.sleep(60)"], timeout=0.5)
        assert info.value.killed and info.value.signal == "SIGTERM"
        with pytest.raises(FileNotFoundError):
            await aio.exec_file("pfd-no-such-program")

    asyncio.run(main())


def test_a_wait_leaves_the_loop_free():
    async def main():
        code = "import sys; sys.stdin.read()"
        p = await aio.spawn(PY, ["-c", code], stdio=["pipe", "ignore", "ignore"])
        waiter = asyncio.ensure_future(p.wait())
        await asyncio.sleep(0.1)
        assert not waiter.done()  # the child waits for the end of its stdin
        p.stdin.close()  # which this loop can give it only because the wait does not block
        return await asyncio.wait_for(waiter, 60)

    assert asyncio.run(main()) == 0


def test_an_async_channel_to_a_child(tmp_path):
    script = tmp_path / "echo.py"
    script.write_text(ECHO)

    async def main():
        p = await aio.fork(str(script), serialization="pickle")
        big = bytes(range(256)) * 4096  # a megabyte: many pipe buffers' worth
        for message in ({"n": 1}, big, [None, 2.5]):
            await p.send(message)
            assert await p.recv(timeout=60) == ("echo", message)
        with pytest.raises(TimeoutError):
            await p.recv(timeout=0.2)
        waiting = asyncio.ensure_future(p.recv())
        await asyncio.sleep(0.2)
        waiting.cancel()  # a cancelled receive loses nothing
        await p.send("after")
        assert await p.recv(timeout=60) == ("echo", "after")
        p.disconnect()
        return await p.wait()

    assert asyncio.run(main()) == 0


def test_fork_worker_from_asyncio():
    async def main():
        w = await aio.fork_worker(square, 9)
        return await w.result(timeout=60), await w.join(timeout=60)

    assert asyncio.run(main()) == (81, 0)


def test_a_pipe_above_slot_2_is_the_duplex_file_spawn_gives():
    code = "import os; os.write(3, os.read(3, 100).upper())"

    async def main():
        stdio = ["ignore", "ignore", "ignore", "pipe"]
        async with aio.spawn(PY, ["-c", code], stdio=stdio) as p:
            f = p.stdio[3]
            await asyncio.to_thread(f.write, b"both ways")
            answer = await asyncio.to_thread(f.read, 100)
        return answer, f.closed, p.returncode

    assert asyncio.run(main()) == (b"BOTH WAYS", True, 0)
