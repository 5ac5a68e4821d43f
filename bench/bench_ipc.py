"""IPC: pyforkd channels against multiprocessing, a plain socketpair, Node and C.

Measured in one process run, the methods alternating within each repetition; medians of
the repetitions, and ratios to the peers:

- round trip of a 64-byte message (raw bytes) and of a small dict (pickled);
- one-way throughput of 64 B, 4 KiB, 64 KiB and 1 MiB messages;
- descriptors passed per second, 1, 8 and 64 per message, against socket.send_fds,
  multiprocessing.reduction.send_handle and the C reference (bench/c/fdpass_bench.c);
- worker start to first message: fork_worker fork/spawn against multiprocessing's
  fork/spawn/forkserver contexts.

    python bench/bench_ipc.py            # full run (about two minutes)
    python bench/bench_ipc.py --quick
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from multiprocessing import reduction
from pathlib import Path

import pyforkd
from pyforkd import Channel, Fd

HERE = Path(__file__).resolve().parent
LEN = struct.Struct("<I")
SMALL_DICT = {"id": 12345, "op": "get", "key": "user:42", "ok": True}


# ---- peers: each runs in a forked child and serves one socket until it closes ---------------


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def serve_channel_echo(sock: socket.socket, serialization: str) -> None:
    ch = Channel(sock, serialization=serialization)
    for msg in ch:
        ch.send(msg)


def serve_pipe_echo(conn, use_bytes: bool) -> None:
    try:
        while True:
            if use_bytes:
                conn.send_bytes(conn.recv_bytes())
            else:
                conn.send(conn.recv())
    except EOFError:
        pass


def serve_socket_echo(sock: socket.socket) -> None:
    try:
        while True:
            (n,) = LEN.unpack(_recv_exact(sock, 4))
            sock.sendall(LEN.pack(n) + _recv_exact(sock, n))
    except EOFError:
        pass


def forked(fn: Callable[..., None], serves: object, *args: object) -> int:
    """Run fn(serves, *args) in a forked child that keeps only ``serves`` (and stdio) open,
    so that each peer sees EOF as soon as the parent closes its end."""
    pid = os.fork()
    if pid == 0:
        try:
            keep = {0, 1, 2, serves.fileno()}  # type: ignore[attr-defined]
            for name in os.listdir("/proc/self/fd"):
                if int(name) not in keep:
                    try:
                        os.close(int(name))
                    except OSError:
                        pass
            fn(serves, *args)
        finally:
            os._exit(0)
    return pid


# ---- round trips ----------------------------------------------------------------------------


def round_trips(n: int, reps: int) -> dict[str, float]:
    payload = b"x" * 64
    setups = {}

    a, b = socket.socketpair()
    pid = forked(serve_channel_echo, b, "raw")
    b.close()
    raw = Channel(a, serialization="raw")
    setups["pyforkd Channel raw, 64 B"] = (lambda: (raw.send(payload), raw.recv()), pid, raw)

    a, b = socket.socketpair()
    pid = forked(serve_channel_echo, b, "pickle")
    b.close()
    pk = Channel(a)
    setups["pyforkd Channel pickle, small dict"] = (
        lambda: (pk.send(SMALL_DICT), pk.recv()),
        pid,
        pk,
    )

    p1, c1 = mp.Pipe()
    pid = forked(serve_pipe_echo, c1, True)
    c1.close()
    setups["mp.Pipe send_bytes, 64 B"] = (
        lambda: (p1.send_bytes(payload), p1.recv_bytes()),
        pid,
        p1,
    )

    p2, c2 = mp.Pipe()
    pid = forked(serve_pipe_echo, c2, False)
    c2.close()
    setups["mp.Pipe send, small dict"] = (lambda: (p2.send(SMALL_DICT), p2.recv()), pid, p2)

    a, b = socket.socketpair()
    pid = forked(serve_socket_echo, b)
    b.close()
    framed = LEN.pack(64) + payload

    def sock_rt() -> None:
        a.sendall(framed)
        _recv_exact(a, 4 + 64)

    setups["socketpair + length prefix, 64 B"] = (sock_rt, pid, a)

    samples: dict[str, list[float]] = {k: [] for k in setups}
    for fn, _, _ in setups.values():
        for _ in range(200):
            fn()
    for _ in range(reps):
        for name, (fn, _, _) in setups.items():
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n * 1e6)
    # Every child inherited the parent ends made before it: close them all, then reap, or
    # the first child would wait for an EOF that its younger siblings hold back.
    for _, _, end in setups.values():
        end.close()
    for _, pid, _ in setups.values():
        os.waitpid(pid, 0)
    out = {k: statistics.median(v) for k, v in samples.items()}
    node = node_round_trip(n)
    if node is not None:
        out["Node fork + process.send (json), small object"] = node
    return out


def _run_node(node: str, code: str) -> float:
    """Run a Node script and return the number it prints."""
    with tempfile.NamedTemporaryFile("w", suffix=".js", delete=False) as f:
        f.write(code)
    try:
        out = subprocess.run(
            [node, f.name], capture_output=True, text=True, timeout=300, check=True
        )
        return float(out.stdout.strip())
    finally:
        os.unlink(f.name)


def node_round_trip(n: int) -> float | None:
    node = shutil.which("node")
    if node is None:
        return None
    code = textwrap.dedent(f"""
        const {{ fork }} = require('child_process');
        if (process.argv[2] === 'child') {{
          process.on('message', (m) => process.send(m));
        }} else {{
          const c = fork(__filename, ['child']);
          const msg = {{ id: 12345, op: 'get', key: 'user:42', ok: true }};
          let i = 0, t0 = 0; const n = {n};
          c.on('message', () => {{
            if (++i === 200) t0 = process.hrtime.bigint();
            if (i === 200 + n) {{
              console.log(Number(process.hrtime.bigint() - t0) / 1000 / n);
              c.disconnect(); return;
            }}
            c.send(msg);
          }});
          c.send(msg);
        }}
    """)
    return _run_node(node, code)


# ---- throughput -------------------------------------------------------------------------------


def sink_channel(sock: socket.socket, count: int, serialization: str = "raw") -> None:
    ch = Channel(sock, serialization=serialization)
    for _ in range(count):
        ch.recv()
    ch.send(b"done")


def sink_channel_many(sock: socket.socket, count: int) -> None:
    ch = Channel(sock, serialization="raw")
    got = 0
    while got < count:
        got += len(ch.recv_many(256))
    ch.send(b"done")


def sink_pipe(conn, count: int) -> None:
    for _ in range(count):
        conn.recv_bytes()
    conn.send_bytes(b"done")


def sink_queue(q, done, count: int) -> None:
    for _ in range(count):
        q.get()
    done.send_bytes(b"done")


def sink_socket(sock: socket.socket, count: int) -> None:
    for _ in range(count):
        (n,) = LEN.unpack(_recv_exact(sock, 4))
        _recv_exact(sock, n)
    sock.sendall(b"done")


def throughput(size: int, total_bytes: int) -> dict[str, float]:
    """Messages per second, one way, for `size`-byte messages."""
    count = max(200, min(200_000, total_bytes // size))
    data = b"y" * size
    out = {}

    a, b = socket.socketpair()
    pid = forked(sink_channel, b, count)
    b.close()
    ch = Channel(a, serialization="raw")
    t0 = time.perf_counter()
    for _ in range(count):
        ch.send(data)
    ch.recv()
    out["pyforkd Channel raw"] = count / (time.perf_counter() - t0)
    ch.close()
    os.waitpid(pid, 0)

    a, b = socket.socketpair()
    pid = forked(sink_channel_many, b, count)
    b.close()
    ch = Channel(a, serialization="raw")
    batch = [data] * 256
    t0 = time.perf_counter()
    for _ in range(count // 256):
        ch.send_many(batch)
    ch.send_many([data] * (count % 256))
    ch.recv()
    out["pyforkd Channel raw send_many/recv_many (256)"] = count / (time.perf_counter() - t0)
    ch.close()
    os.waitpid(pid, 0)

    a, b = socket.socketpair()
    pid = forked(sink_channel, b, count, "pickle")
    b.close()
    ch = Channel(a)  # pickle: the bytes object inside the message is pickled in-band
    t0 = time.perf_counter()
    for _ in range(count):
        ch.send(data)
    ch.recv()
    out["pyforkd Channel pickle"] = count / (time.perf_counter() - t0)
    ch.close()
    os.waitpid(pid, 0)

    p, c = mp.Pipe()
    pid = forked(sink_pipe, c, count)
    c.close()
    t0 = time.perf_counter()
    for _ in range(count):
        p.send_bytes(data)
    p.recv_bytes()
    out["mp.Pipe send_bytes"] = count / (time.perf_counter() - t0)
    p.close()
    os.waitpid(pid, 0)

    q = mp.get_context("fork").Queue()
    done_r, done_w = mp.Pipe(duplex=False)
    pid = os.fork()
    if pid == 0:
        try:
            sink_queue(q, done_w, count)
        finally:
            os._exit(0)
    t0 = time.perf_counter()
    for _ in range(count):
        q.put(data)
    done_r.recv_bytes()
    out["mp.Queue put/get"] = count / (time.perf_counter() - t0)
    q.close()
    q.join_thread()
    os.waitpid(pid, 0)

    a, b = socket.socketpair()
    pid = forked(sink_socket, b, count)
    b.close()
    framed = LEN.pack(size) + data
    t0 = time.perf_counter()
    for _ in range(count):
        a.sendall(framed)
    _recv_exact(a, 4)
    out["socketpair + length prefix"] = count / (time.perf_counter() - t0)
    a.close()
    os.waitpid(pid, 0)
    node = node_throughput(size, count)
    if node is not None:
        out["Node process.send (json string)"] = node
    return out


def node_throughput(size: int, count: int) -> float | None:
    """Node parent to Node child, ``count`` JSON strings of ``size`` characters, one way."""
    node = shutil.which("node")
    if node is None:
        return None
    code = textwrap.dedent(f"""
        const {{ fork }} = require('child_process');
        const n = {count};
        if (process.argv[2] === 'child') {{
          let got = 0;
          process.on('message', () => {{ if (++got === n) process.send('done'); }});
        }} else {{
          const c = fork(__filename, ['child']);
          const msg = 'y'.repeat({size});
          const t0 = process.hrtime.bigint();
          c.on('message', () => {{
            console.log(n / (Number(process.hrtime.bigint() - t0) / 1e9));
            c.disconnect();
          }});
          let i = 0;
          (function pump() {{  // honour backpressure, or Node queues everything in memory
            while (i < n) {{ i++; if (!c.send(msg)) {{ setImmediate(pump); return; }} }}
          }})();
        }}
    """)
    return _run_node(node, code)


# ---- descriptor passing ---------------------------------------------------------------------


def sink_handles(sock: socket.socket, kind: str) -> None:
    if kind == "pyforkd":
        ch = Channel(sock, serialization="raw")
        try:
            while True:
                _, handles = ch.recv(with_handle=True)
                for h in handles if isinstance(handles, list) else [handles]:
                    h.close()
        except pyforkd.ChannelClosedError:
            return
    while True:
        try:
            if kind == "mp.reduction":
                fd = reduction.recv_handle(sock)
                os.close(fd)
                continue
            data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 64)
        except (EOFError, OSError, RuntimeError):
            return
        if not data:
            return
        for fd in fds:
            os.close(fd)


def fd_rate(kind: str, per: int, seconds: float) -> float:
    a, b = socket.socketpair()
    pid = forked(sink_handles, b, kind)
    b.close()
    sent = 0
    t0 = time.perf_counter()
    if kind == "pyforkd":
        ch = Channel(a, serialization="raw")
        handles = [Fd(0) for _ in range(per)]
        handle = handles[0] if per == 1 else handles  # (one descriptor: a lone Fd, not a list)
        while time.perf_counter() - t0 < seconds:
            for _ in range(64):
                ch.send(b"x", handle=handle, keep_open=True)
            sent += 64 * per
        for h in handles:
            h.detach()  # stdin is not ours to close
        ch.close()
    elif kind == "mp.reduction":
        while time.perf_counter() - t0 < seconds:
            for _ in range(64):
                reduction.send_handle(a, 0, pid)
            sent += 64
        a.close()
    else:
        fds = [0] * per
        while time.perf_counter() - t0 < seconds:
            for _ in range(64):
                socket.send_fds(a, [b"x"], fds)
            sent += 64 * per
        a.close()
    rate = sent / (time.perf_counter() - t0)
    os.waitpid(pid, 0)
    return rate


def c_fd_rate(per: int, seconds: float) -> float:
    subprocess.run(["make", "-s", "-C", str(HERE / "c")], check=True)
    out = subprocess.run(
        [
            str(HERE / "c" / "build" / "fdpass_bench"),
            "--per-message",
            str(per),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.split()[1])


# ---- worker start to first message ------------------------------------------------------------


def _hello_pyforkd() -> None:
    pyforkd.parent().send("hi")


def _hello_mp(conn) -> None:
    conn.send("hi")


def worker_start(method: str) -> float:
    t0 = time.perf_counter()
    if method.startswith("pyforkd"):
        w = pyforkd.fork_worker(_hello_pyforkd, start=method.split()[1])
        w.recv(timeout=60)
        elapsed = time.perf_counter() - t0
        w.result(timeout=60)
        w.join()
    else:
        ctx = mp.get_context(method.split()[1])
        r, wconn = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_hello_mp, args=(wconn,))
        p.start()
        r.recv()
        elapsed = time.perf_counter() - t0
        p.join()
    return elapsed * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer and shorter repetitions")
    ap.add_argument(
        "--only",
        action="append",
        choices=["latency", "throughput", "fds", "start"],
        help="run only this part (repeatable)",
    )
    args = ap.parse_args()

    def want(part: str) -> bool:
        return not args.only or part in args.only

    reps = 3 if args.quick else 7
    n = 2000 if args.quick else 5000

    print(
        f"IPC benchmarks (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; medians "
        f"of {reps} repetitions)\n"
    )
    if want("latency"):
        rt = round_trips(n, reps)
        print(f"round trip, µs (lower is better), {n} per repetition:\n")
        print("| method | µs |\n|---|---|")
        for k, v in rt.items():
            print(f"| {k} | {v:.1f} |")
        print(
            f"\n| ratio | value | target |\n|---|---|---|\n"
            f"| raw 64 B: pyforkd / mp.Pipe send_bytes | "
            f"{rt['pyforkd Channel raw, 64 B'] / rt['mp.Pipe send_bytes, 64 B']:.2f}x "
            f"| <= 0.80x |\n"
            f"| small dict: pyforkd pickle / mp.Pipe send | "
            f"{rt['pyforkd Channel pickle, small dict'] / rt['mp.Pipe send, small dict']:.2f}x"
            f" | <= 0.70x |"
        )

    if want("throughput"):
        print("\none-way throughput, messages per second (higher is better):\n")
        sizes = [64, 4096, 65536, 1 << 20]
        table = {
            s: [throughput(s, (8 if args.quick else 32) << 20) for _ in range(reps)] for s in sizes
        }
        names = list(table[64][0])
        print("| method | " + " | ".join(f"{s} B" for s in sizes) + " |")
        print("|---|" + "---|" * len(sizes))
        med = {s: {k: statistics.median(r[k] for r in table[s]) for k in names} for s in sizes}
        for k in names:
            print(f"| {k} | " + " | ".join(f"{med[s][k]:,.0f}" for s in sizes) + " |")
        print(
            "| pyforkd / mp.Pipe | "
            + " | ".join(
                f"{med[s]['pyforkd Channel raw'] / med[s]['mp.Pipe send_bytes']:.2f}x"
                for s in sizes
            )
            + " |  (target >= 1.5x at 64 B and 4 KiB)"
        )

    if want("fds"):
        print("\ndescriptors passed per second (higher is better):\n")
        secs = 0.3 if args.quick else 1.0
        print(
            "| per message | pyforkd Channel | socket.send_fds | mp.reduction.send_handle | C "
            "sendmsg | pyforkd / C |\n|---|---|---|---|---|---|"
        )
        for per in (1, 8, 64):
            ours = statistics.median(fd_rate("pyforkd", per, secs) for _ in range(3))
            std = statistics.median(fd_rate("send_fds", per, secs) for _ in range(3))
            red = (
                statistics.median(fd_rate("mp.reduction", 1, secs) for _ in range(3))
                if per == 1
                else float("nan")
            )
            c = statistics.median(c_fd_rate(per, secs) for _ in range(3))
            red_text = f"{red:,.0f}" if per == 1 else "(one per call)"
            print(
                f"| {per} | {ours:,.0f} | {std:,.0f} | {red_text} | {c:,.0f} | "
                f"{ours / c:.2f}x (target >= 0.8x) |"
            )

    if want("start"):
        print("\nworker start to first message, ms (lower is better):\n")
        methods = [
            "pyforkd fork",
            "pyforkd spawn",
            "pyforkd forkserver",
            "mp fork",
            "mp spawn",
            "mp forkserver",
        ]
        starts: dict[str, list[float]] = {m: [] for m in methods}
        for m in methods:
            worker_start(m)  # warm: imports, the forkserver process itself
        for _ in range(reps):
            for m in methods:
                starts[m].append(worker_start(m))
        print("| method | ms |\n|---|---|")
        st = {m: statistics.median(v) for m, v in starts.items()}
        for m in methods:
            print(f"| {m} | {st[m]:.2f} |")
        print(
            f"\n| ratio | value | target |\n|---|---|---|\n"
            f"| fork: pyforkd / mp | {st['pyforkd fork'] / st['mp fork']:.2f}x | <= 0.75x |\n"
            f"| spawn: pyforkd / mp | {st['pyforkd spawn'] / st['mp spawn']:.2f}x | <= 0.80x |\n"
            f"| forkserver: pyforkd / mp | {st['pyforkd forkserver'] / st['mp forkserver']:.2f}x "
            f"| <= 0.50x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
