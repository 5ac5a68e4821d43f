"""pyforkd.aio: asyncio streams, pidfd-driven wait, exec family without blocking the loop."""

from __future__ import annotations

import asyncio
import signal

import pytest
from _helpers import PY, LoopTicks, posix_only

import pyforkd
from pyforkd import aio

pytestmark = posix_only


def run(coro):
    return asyncio.run(coro)


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


def test_wait_does_not_block_the_loop():
    async def main():
        async with LoopTicks() as ticks:
            p = await aio.spawn("sleep", ["0.3"], stdio="ignore")
            assert await p.wait() == 0
        return ticks.count

    assert run(main()) > 0  # the other task ran while the child was awaited


def test_many_concurrent_waits():
    async def main():
        procs = [await aio.spawn("sh", ["-c", f"exit {i}"], stdio="ignore") for i in range(40)]
        return await asyncio.gather(*(p.wait() for p in procs))

    assert run(main()) == list(range(40))


def test_kill_and_signal_code():
    async def main():
        p = await aio.spawn("sleep", ["30"], stdio="ignore")
        assert p.kill("SIGKILL")
        assert await p.wait() == -signal.SIGKILL
        assert p.kill() is False
        return p

    p = run(main())
    assert p.signal_code == "SIGKILL" and p.killed


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
