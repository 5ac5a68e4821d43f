"""Ring benchmark: pyforkd.Ring against multiprocessing.Pipe, multiprocessing.Queue and the
pyforkd socket Channel, in one process run; prints tables of medians and ratios.

    python3 bench/bench_ring.py [--quick]

One-way throughput: a forked consumer takes every message (the Ring as a view, without a
copy; the others as bytes), then answers; the time runs from the first send to that
answer.  64-byte messages go through the Ring in batches of 64 (``send_many``).  Peers:
multiprocessing Pipe and Queue, faster-fifo and pyzmq PAIR (from PyPI: ``pip install
faster-fifo pyzmq``; a peer that is not installed is left out and said so),
multiprocessing.shared_memory with a Pipe to say "your turn", and pyforkd's channels
(socket only, and over rings: ``fork_worker(..., ring=N)``).  Round trip: 64 B there and
back.  numpy: a 100 MB array to a worker and back, pyforkd channel over rings against
multiprocessing.Pipe (pickling) and the socket channel.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

import pyforkd
from pyforkd import Channel, Ring

try:
    import faster_fifo
except ImportError:
    faster_fifo = None
try:
    import zmq
except ImportError:
    zmq = None

SIZES = [64, 4096, 65536, 1 << 20, 16 << 20]


def forked(fn: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    return pid


def one_way(
    consume: Callable[[], None],
    send: Callable[[bytes], object],
    size: int,
    count: int,
    send_batch: Callable[[list[bytes]], object] | None = None,
) -> float:
    """Messages per second: a forked ``consume`` takes ``count`` messages, then says so.

    64-byte messages go through ``send_batch`` 64 at a time when there is one.
    """
    done_r, done_w = socket.socketpair()

    def child() -> None:
        consume()
        done_w.send(b"!")

    pid = forked(child)
    data = b"y" * size
    t0 = time.perf_counter()
    if size <= 64 and send_batch is not None:
        batch = [data] * 64
        for _ in range(count // 64):
            send_batch(batch)
    else:
        for _ in range(count):
            send(data)
    done_r.recv(1)
    rate = count / (time.perf_counter() - t0)
    os.waitpid(pid, 0)
    done_r.close()
    done_w.close()
    return rate


def ring_rate(size: int, count: int, copy: bool = False, many: bool = False) -> float:
    ring = Ring(max(1 << 16, 1 << (2 * size + 64).bit_length()))

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

    rate = one_way(consume, ring.send, size, count, ring.send_many)
    ring.close()
    return rate


def pipe_rate(size: int, count: int) -> float:
    a, b = mp.Pipe()

    def consume() -> None:
        for _ in range(count):
            b.recv_bytes()

    rate = one_way(consume, a.send_bytes, size, count)
    a.close()
    b.close()
    return rate


def queue_rate(size: int, count: int) -> float:
    q = mp.get_context("fork").Queue()

    def consume() -> None:
        for _ in range(count):
            q.get()

    rate = one_way(consume, q.put, size, count)
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


def fifo_rate(size: int, count: int) -> float:
    q = faster_fifo.Queue(max(1 << 20, 4 * size + 1024))

    def consume() -> None:
        got = 0
        while got < count:
            got += len(q.get_many(max_messages_to_get=256))

    return one_way(consume, q.put, size, count, q.put_many)


def zmq_rate(size: int, count: int) -> float:
    address = f"ipc:///tmp/pyforkd-bench-{os.getpid()}"

    def consume() -> None:
        ctx = zmq.Context()
        s = ctx.socket(zmq.PAIR)
        s.connect(address)
        for _ in range(count):
            s.recv(copy=False)
        s.send(b"!")
        s.close()
        ctx.term()

    ctx = zmq.Context()
    s = ctx.socket(zmq.PAIR)
    s.bind(address)
    pid = forked(consume)
    data = b"y" * size
    t0 = time.perf_counter()
    for _ in range(count):
        s.send(data, copy=size < 65536)
    s.recv()
    rate = count / (time.perf_counter() - t0)
    os.waitpid(pid, 0)
    s.close()
    ctx.term()
    return rate


def shm_rate(size: int, count: int) -> float:
    """multiprocessing.shared_memory for the bytes, a Pipe to hand the block over and back."""
    from multiprocessing import shared_memory

    block = shared_memory.SharedMemory(create=True, size=size)
    a, b = mp.Pipe()

    def consume() -> None:
        view = block.buf
        for _ in range(count):
            n = b.recv_bytes()
            bytes(view[: int(n)])  # what a consumer does with it: here, take a copy
            b.send_bytes(b"k")
        b.send_bytes(b"!")

    pid = forked(consume)
    data = b"y" * size
    n = str(size).encode()
    t0 = time.perf_counter()
    for _ in range(count):
        block.buf[:size] = data
        a.send_bytes(n)
        a.recv_bytes()
    a.recv_bytes()
    rate = count / (time.perf_counter() - t0)
    os.waitpid(pid, 0)
    block.close()
    block.unlink()
    return rate


def _drain(count: int) -> None:
    ch = pyforkd.parent()
    assert ch is not None
    for _ in range(count):
        ch.recv()
    ch.send(b"!")


def ring_channel_rate(size: int, count: int) -> float:
    w = pyforkd.fork_worker(_drain, count, ring=max(1 << 16, 1 << (4 * size).bit_length()))
    data = b"y" * size
    t0 = time.perf_counter()
    for _ in range(count):
        w.send(data)
    w.recv()
    rate = count / (time.perf_counter() - t0)
    w.join()
    return rate


def _echo() -> None:
    ch = pyforkd.parent()
    assert ch is not None
    for msg in ch:
        ch.send(msg)


def channel_round_trip(n: int, ring: int | None) -> float:
    w = pyforkd.fork_worker(_echo, ring=ring)
    msg = b"x" * 64
    t0 = time.perf_counter()
    for _ in range(n):
        w.send(msg)
        w.recv()
    us = (time.perf_counter() - t0) / n * 1e6
    w.channel.close()
    w.join()
    return us


def _pipe_echo(conn: mp.connection.Connection) -> None:
    while True:
        msg = conn.recv()
        if msg is None:
            return
        conn.send(msg)


def numpy_round_trips(reps: int) -> dict[str, float]:
    """Milliseconds for a 100 MB float64 array to a worker and back (median)."""
    big = np.random.default_rng(0).random(100_000_000 // 8)
    ring = pyforkd.fork_worker(_echo, ring=64 << 20)
    sock = pyforkd.fork_worker(_echo)
    a, b = mp.Pipe()
    p = mp.get_context("fork").Process(target=_pipe_echo, args=(b,))
    p.start()
    peers: dict[str, Callable[[], object]] = {
        "pyforkd fork_worker(ring=64 MiB)": lambda: (ring.send(big), ring.recv())[1],
        "pyforkd fork_worker (socket)": lambda: (sock.send(big), sock.recv())[1],
        "mp.Pipe send/recv (pickle)": lambda: (a.send(big), a.recv())[1],
    }
    runs: dict[str, list[float]] = {name: [] for name in peers}
    for _ in range(reps):
        for name, trip in peers.items():
            t0 = time.perf_counter()
            back = trip()
            runs[name].append((time.perf_counter() - t0) * 1000)
            assert isinstance(back, np.ndarray) and back.shape == big.shape
            del back
    for w in (ring, sock):
        w.channel.close()
        w.join()
    a.send(None)
    p.join()
    return {name: statistics.median(v) for name, v in runs.items()}


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


def _hog() -> None:
    while True:
        pass


def loaded(n: int, reps: int) -> None:
    """The 64 B round trips again, with a CPU hog on every core (a busy machine)."""
    hogs = [forked(_hog) for _ in range(os.cpu_count() or 1)]
    try:
        rt = [
            (channel_round_trip(n, 1 << 20), channel_round_trip(n, None), pipe_round_trip(n))
            for _ in range(reps)
        ]
    finally:
        for pid in hogs:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    ring_us, sock_us, pipe_us = (statistics.median(r[i] for r in rt) for i in range(3))
    print(
        f"\nround trip, 64 B, with a CPU hog on each of the {len(hogs)} cores (µs, lower is "
        "better):\n\n| method | µs | / mp.Pipe | target |\n|---|---|---|---|\n"
        f"| pyforkd fork_worker(ring=) send/recv | {ring_us:.1f} | {ring_us / pipe_us:.2f}x | "
        f"<= 1.0x, and <= the socket channel |\n"
        f"| pyforkd fork_worker (socket) send/recv | {sock_us:.1f} | {sock_us / pipe_us:.2f}x | |\n"
        f"| mp.Pipe send_bytes/recv_bytes | {pipe_us:.1f} | 1.00x | |"
    )


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
        "pyforkd fork_worker(ring=) send/recv": ring_channel_rate,
        "mp.Pipe send_bytes": pipe_rate,
        "mp.Queue put/get": queue_rate,
        "mp.shared_memory + Pipe": shm_rate,
        "pyforkd Channel raw (socket)": channel_rate,
    }
    if faster_fifo is not None:
        methods["faster-fifo put_many/get_many"] = fifo_rate
    else:
        print("(faster-fifo is not installed: its row is left out)")
    if zmq is not None:
        methods["pyzmq PAIR (ipc://)"] = zmq_rate
    else:
        print("(pyzmq is not installed: its row is left out)")
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
    lines = [
        f"| 1 MiB: Ring / mp.Pipe | {ratio[3]:.2f}x | >= 4x |",
        f"| 16 MiB: Ring / mp.Pipe | {ratio[4]:.2f}x | >= 4x |",
        f"| 64 B (send_many, recv_many): Ring / mp.Queue | {q:.1f}x | >= 30x |",
    ]
    if zmq is not None:
        z = table["pyforkd Ring (recv_many)"][64] / table["pyzmq PAIR (ipc://)"][64]
        lines.append(f"| 64 B (send_many, recv_many): Ring / pyzmq PAIR | {z:.1f}x | >= 5x |")
    print("\n| ratio | value | target |\n|---|---|---|\n" + "\n".join(lines))
    n = 5000 if args.quick else 20000
    rt = [
        (ring_round_trip(n), channel_round_trip(n, 1 << 20), pipe_round_trip(n))
        for _ in range(reps)
    ]
    ring_us = statistics.median(r[0] for r in rt)
    chan_us = statistics.median(r[1] for r in rt)
    pipe_us = statistics.median(r[2] for r in rt)
    print(
        "\nround trip, 64 B (µs, lower is better):\n\n| method | µs | / mp.Pipe | target |\n"
        f"|---|---|---|---|\n| pyforkd Ring send/recv | {ring_us:.1f} | "
        f"{ring_us / pipe_us:.2f}x | <= 0.3x |\n| pyforkd fork_worker(ring=) send/recv | "
        f"{chan_us:.1f} | {chan_us / pipe_us:.2f}x | <= 0.3x |\n"
        f"| mp.Pipe send_bytes/recv_bytes | {pipe_us:.1f} | 1.00x | |"
    )
    loaded(2000 if args.quick else 5000, reps)
    trips = numpy_round_trips(3 if args.quick else 5)
    pipe_ms = trips["mp.Pipe send/recv (pickle)"]
    print(
        "\n100 MB numpy array to a worker and back (ms, lower is better):\n\n"
        "| method | ms | speed-up over mp.Pipe | target |\n|---|---|---|---|"
    )
    for name, ms in trips.items():
        target = ">= 3x" if "ring" in name else ""
        print(f"| {name} | {ms:.0f} | {pipe_ms / ms:.2f}x | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
