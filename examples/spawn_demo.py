"""A short tour of pyforkd's child_process: spawn, exec, exec_file, spawn_sync, asyncio.

Run it with:  python examples/spawn_demo.py
"""

from __future__ import annotations

import asyncio
import sys
import time

import pyforkd


def main() -> None:
    # spawn: returns at once; the child's stdout is a pipe by default.
    with pyforkd.spawn("ls", ["-l", "/"]) as p:
        lines = p.stdout.read().decode().splitlines()
    print(f"spawn('ls', ['-l', '/']) -> returncode {p.returncode}, {len(lines)} lines")

    # exec_file: run to completion, output collected (both streams at once, no deadlock).
    r = pyforkd.exec_file(sys.executable, ["-c", "print('hello from a child')"], encoding="utf-8")
    print(f"exec_file(python) -> {r.stdout.strip()!r}")

    # exec: through /bin/sh, pipes and all.
    r = pyforkd.exec("printf 'a\\nb\\nc\\n' | wc -l", encoding="utf-8")
    print(f"exec('... | wc -l') -> {r.stdout.strip()}")

    # spawn_sync: like Node's spawnSync, never raises for the exit status.
    r = pyforkd.spawn_sync("sh", ["-c", "cat; exit 3"], input=b"fed through stdin")
    print(f"spawn_sync(cat, input=...) -> {r.stdout!r}, returncode {r.returncode}")

    # Errors say what failed, and where.
    try:
        pyforkd.spawn("no-such-program-here")
    except pyforkd.SpawnError as e:
        print(f"missing program -> {type(e).__name__} {e.code} syscall={e.syscall!r}")
    try:
        pyforkd.exec_file("sleep", ["30"], timeout=0.2)
    except pyforkd.ExecError as e:
        print(f"timeout -> killed={e.killed} signal={e.signal}")

    # asyncio: the child's exit is watched through its pidfd, not a SIGCHLD handler.
    async def concurrently() -> list[int]:
        procs = [await pyforkd.aio.spawn("sleep", ["0.2"], stdio="ignore") for _ in range(5)]
        return await asyncio.gather(*(p.wait() for p in procs))

    t0 = time.monotonic()
    codes = asyncio.run(concurrently())
    print(f"aio: 5 x sleep 0.2 awaited together in {time.monotonic() - t0:.2f} s -> {codes}")


if __name__ == "__main__":
    main()
