"""Ring benchmark: pyforkd.Ring against multiprocessing.Pipe, multiprocessing.Queue and the
pyforkd socket Channel, in one process run; prints tables of medians and ratios.

    python3 bench/bench_ring.py [--quick]

One-way throughput: a forked consumer takes every message (the Ring as a view, without a
copy; the others as bytes), then answers; the time runs from the first send to that
answer.  64-byte messages go through the Ring in batches of 64 (``send_many``).  Round
trip: 64 B there and back.  The faster-fifo, pyzmq and shared_memory peers of the issue are
not in this first version.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable

import pyforkd
from pyforkd import Channel, Ring

SIZES = [64, 4096, 65536, 1 << 20, 16 << 20]


def forked(fn: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    return pid


def ring_rate(size: int, count: int, copy: bool = False, many: bool = False) -> float:
    ring = Ring(max(1 << 16, 1 << (2 * size + 64).bit_length()))
    done_r, done_w = socket.socketpair()

    def consume() -> None:
        got = 0
        while got < count:
            if many:
                got += len(ring.recv_many(256))
                continue
            if copy:
                ring.recv_bytes()
            else:
                with ring.recv():
                    pass
            got += 1
        done_w.send(b"!")

    pid = forked(consume)
    data = b"y" * size
    t0 = time.perf_counter()
    if size <= 64:
        batch = [data] * 64
        for _ in range(count // 64):
            ring.send_many(batch)
    else:
        for _ in range(count):
            ring.send(data)
    done_r.recv(1)
    rate = count / (time.perf_counter() - t0)
    os.waitpid(pid, 0)
    done_r.close()
    done_w.close()
    ring.close()
    return rate


def pipe_rate(size: int, count: int) -> float:
    a, b = mp.Pipe()

    def consume() -> None:
        for _ in range(count):
            b.recv_bytes()
        b.send_bytes(b"!")

    pid = forked(consume)
    data = b"y" * size
    t0 = time.perf_counter()
    for _ in range(count):
        a.send_bytes(data)
    a.recv_bytes()
    rate = count / (time.perf_counter() - t0)
    os.waitpid(pid, 0)
    a.close()
    b.close()
    return rate


def queue_rate(size: int, count: int) -> float:
    q = mp.get_context("fork").Queue()
    done_r, done_w = mp.Pipe(duplex=False)

    def consume() -> None:
        for _ in range(count):
            q.get()
        done_w.send_bytes(b"!")

    pid = forked(consume)
    data = b"y" * size
    t0 = time.perf_counter()
    for _ in range(count):
        q.put(data)
    done_r.recv_bytes()
    rate = count / (time.perf_counter() - t0)
    os.waitpid(pid, 0)
    q.close()
    q.join_thread()
    return rate


def channel_rate(size: int, count: int) -> float:
    a, b = socket.socketpair()

    def consume() -> None:
        ch = Channel(b, serialization="raw")
        for _ in range(count):
            ch.recv()
        ch.send(b"!")

    pid = forked(consume)
    b.close()
    ch = Channel(a, serialization="raw")
    data = b"y" * size
    t0 = time.perf_counter()
    for _ in range(count):
        ch.send(data)
    ch.recv()
    rate = count / (time.perf_counter() - t0)
    os.waitpid(pid, 0)
    ch.close()
    return rate


def ring_round_trip(n: int) -> float:
    there, back = Ring(1 << 16), Ring(1 << 16)

    def echo() -> None:
        for _ in range(n):
            with there.recv() as view:
                back.send(view)

    pid = forked(echo)
    msg = b"x" * 64
    t0 = time.perf_counter()
    for _ in range(n):
        there.send(msg)
        with back.recv():
            pass
    us = (time.perf_counter() - t0) / n * 1e6
    os.waitpid(pid, 0)
    there.close()
    back.close()
    return us


def pipe_round_trip(n: int) -> float:
    a, b = mp.Pipe()

    def echo() -> None:
        for _ in range(n):
            b.send_bytes(b.recv_bytes())

    pid = forked(echo)
    msg = b"x" * 64
    t0 = time.perf_counter()
    for _ in range(n):
        a.send_bytes(msg)
        a.recv_bytes()
    us = (time.perf_counter() - t0) / n * 1e6
    os.waitpid(pid, 0)
    return us


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer and shorter repetitions")
    args = ap.parse_args()
    reps = 3 if args.quick else 5
    budget = (64 if args.quick else 256) << 20  # bytes per measurement
    print(
        f"Ring benchmarks (Python {sys.version.split()[0]}, pyforkd {pyforkd.__version__}, "
        f"{os.cpu_count()} CPUs; medians of {reps})\n"
    )
    print("one-way throughput, messages per second (higher is better):\n")
    methods = {
        "pyforkd Ring (views)": ring_rate,
        "pyforkd Ring (recv_bytes)": lambda size, count: ring_rate(size, count, copy=True),
        "pyforkd Ring (recv_many)": lambda size, count: ring_rate(size, count, many=True),
        "mp.Pipe send_bytes": pipe_rate,
        "mp.Queue put/get": queue_rate,
        "pyforkd Channel raw": channel_rate,
    }
    table: dict[str, dict[int, float]] = {m: {} for m in methods}
    for size in SIZES:
        count = max(8, min(500_000, budget // size))
        if size <= 64:
            count = count // 64 * 64  # whole batches of send_many
        runs: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(reps):
            for name, fn in methods.items():
                runs[name].append(fn(size, count))
        for name in methods:
            table[name][size] = statistics.median(runs[name])
    print("| method | " + " | ".join(f"{s:,} B" for s in SIZES) + " |")
    print("|---|" + "---|" * len(SIZES))
    for name in methods:
        print(f"| {name} | " + " | ".join(f"{table[name][s]:,.0f}" for s in SIZES) + " |")
    ratio = [table["pyforkd Ring (views)"][s] / table["mp.Pipe send_bytes"][s] for s in SIZES]
    print("| Ring / mp.Pipe | " + " | ".join(f"{r:.2f}x" for r in ratio) + " |")
    q = table["pyforkd Ring (recv_many)"][64] / table["mp.Queue put/get"][64]
    print(
        "\n| ratio | value | target |\n|---|---|---|\n"
        f"| 1 MiB: Ring / mp.Pipe | {ratio[3]:.2f}x | >= 4x |\n"
        f"| 16 MiB: Ring / mp.Pipe | {ratio[4]:.2f}x | >= 4x |\n"
        f"| 64 B (send_many, recv_many): Ring / mp.Queue | {q:.1f}x | >= 30x |"
    )
    n = 5000 if args.quick else 20000
    rt = [(ring_round_trip(n), pipe_round_trip(n)) for _ in range(reps)]
    ring_us = statistics.median(r for r, _ in rt)
    pipe_us = statistics.median(p for _, p in rt)
    print(
        f"\nround trip, 64 B: Ring {ring_us:.1f} µs, mp.Pipe {pipe_us:.1f} µs: "
        f"{ring_us / pipe_us:.2f}x (target <= 0.3x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
