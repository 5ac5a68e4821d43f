"""pyforkd.aio: asyncio streams, pidfd-driven wait, exec family without blocking the loop."""

from __future__ import annotations

import asyncio
import signal

import pytest
from _helpers import ECHO, PY, LoopTicks, posix_only_because, windows_only_because

import pyforkd
from pyforkd import aio


def run(coro):
    return asyncio.run(coro)


@posix_only_because("POSIX programs (cat)")
def test_spawn_as_context_manager_with_streams():
    async def main():
        async with aio.spawn("cat") as p:
            assert isinstance(p.stdin, asyncio.StreamWriter)
            assert isinstance(p.stdout, asyncio.StreamReader)
            p.stdin.write(b"hello")
            await p.stdin.drain()
            p.stdin.close()
            assert await p.stdout.read() == b"hello"
        return p

    p = run(main())
    assert p.returncode == 0 and p.exit_code == 0 and p.pid > 0


def test_await_spawn_and_wait_for_exit_code():
    async def main():
        p = await aio.spawn(PY, ["-c", "raise SystemExit(5)"], stdio="ignore")
        assert p.stdout is None
        code = await p.wait()
        assert await p.wait() == code  # a second wait gives the same answer
        return code

    assert run(main()) == 5


@posix_only_because("POSIX programs (sleep)")
def test_wait_does_not_block_the_loop():
    async def main():
        async with LoopTicks() as ticks:
            p = await aio.spawn("sleep", ["0.3"], stdio="ignore")
            assert await p.wait() == 0
        return ticks.count

    assert run(main()) > 0  # the other task ran while the child was awaited


@posix_only_because("POSIX programs (sh)")
def test_many_concurrent_waits():
    async def main():
        procs = [await aio.spawn("sh", ["-c", f"exit {i}"], stdio="ignore") for i in range(40)]
        return await asyncio.gather(*(p.wait() for p in procs))

    assert run(main()) == list(range(40))


@posix_only_because("POSIX programs (sleep)")
def test_kill_and_signal_code():
    async def main():
        p = await aio.spawn("sleep", ["30"], stdio="ignore")
        assert p.kill("SIGKILL")
        assert await p.wait() == -signal.SIGKILL
        assert p.kill() is False
        return p

    p = run(main())
    assert p.signal_code == "SIGKILL" and p.killed


@posix_only_because("checks '\n' line ends (Windows prints '\r\n')")
def test_communicate():
    async def main():
        p = await aio.spawn(
            PY,
            [
                "-c",
                "import sys; d = sys.stdin.read(); print(d.upper()); print('e', file=sys.stderr)",
            ],
        )
        return await p.communicate(b"abc")

    assert run(main()) == (b"ABC\n", b"e\n")


@posix_only_because("POSIX programs (cat, echo)")
def test_exec_file_and_exec():
    async def main():
        r1 = await aio.exec_file("echo", ["hi"])
        r2 = await aio.exec("echo $0 | tr a-z A-Z", encoding="utf-8")
        r3 = await aio.exec_file("cat", input=b"in")
        return r1, r2, r3

    r1, r2, r3 = run(main())
    assert isinstance(r1, pyforkd.CompletedProcess) and r1.stdout == b"hi\n"
    assert r2.stdout == "/BIN/SH\n"
    assert r3.stdout == b"in"


@posix_only_because("POSIX programs (sleep, true, yes)")
def test_exec_errors_match_the_sync_family():
    async def main():
        with pytest.raises(pyforkd.ExecError) as info:
            await aio.exec("echo out; exit 4")
        assert info.value.returncode == 4 and info.value.stdout == b"out\n"
        with pytest.raises(pyforkd.ExecError) as info:
            await aio.exec_file("sleep", ["30"], timeout=0.2)
        assert info.value.killed and info.value.signal == "SIGTERM"
        with pytest.raises(pyforkd.MaxBufferError) as info:
            await aio.exec_file("yes", max_buffer=1000)
        assert len(info.value.stdout) == 1000 and info.value.killed
        with pytest.raises(FileNotFoundError):
            await aio.exec_file("pfd-no-such-program")
        with pytest.raises(ValueError, match="timeout"):
            await aio.exec_file("true", timeout=-1)

    run(main())


def test_large_output_both_streams():
    async def main():
        code = (
            "import os; [(os.write(1, b'o' * 65536), os.write(2, b'e' * 65536)) for _ in range(64)]"
        )
        return await aio.exec_file(PY, ["-c", code], max_buffer=None)

    r = run(main())
    assert len(r.stdout) == len(r.stderr) == 64 * 65536


def test_bad_options_raise_before_any_process():
    async def main():
        with pytest.raises(ValueError, match=r"stdio\[1\]: unknown value"):
            await aio.spawn("true", stdio=["pipe", "nope"])
        with pytest.raises(TypeError, match="env"):
            await aio.spawn("true", env={"A": 1})

    run(main())


# ---- every platform: children are this interpreter with inline code --------------------


REVERSE = (
    "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data[::-1]); "
    "sys.stderr.write('read %d' % len(data))"
)


def square(x: int) -> int:
    return x * x


@windows_only_because("asyncio's default loop there is the proactor")
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


@windows_only_because("an extra 'pipe' slot is a duplex file there; POSIX gives a socket")
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
