"""Spawn-and-reap of /bin/true: pyforkd against subprocess, os.posix_spawn, os.fork+execv and
the C limit (bench/c/spawn_bench.c), with the parent holding 0, 1 and 4 GiB of touched
memory; and exec_file("echo") against subprocess.run(capture_output=True).

Every method runs in this one process run, round-robin within each repetition, and each
repetition visits every parent size, so that the machine's drifting load falls on all of
them alike.  Reported: the median of the
repetitions, in microseconds per spawn+reap, and ratios to the peers.

    python bench/bench_spawn.py            # full run (a few minutes)
    python bench/bench_spawn.py --quick    # fewer repetitions, sizes 0 and 1 GiB
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyforkd

HERE = Path(__file__).resolve().parent
TRUE = "/bin/true"


def build_c_bench() -> Path:
    subprocess.run(["make", "-s", "-C", str(HERE / "c"), "build/spawn_bench"], check=True)
    return HERE / "c" / "build" / "spawn_bench"


def touch(size: int) -> mmap.mmap | None:
    if not size:
        return None
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(m)), 1, size)
    return m


def m_pyforkd() -> None:
    pyforkd.spawn(TRUE, stdio="inherit").wait()


def m_popen() -> None:
    subprocess.Popen([TRUE]).wait()


def m_pyforkd_pipes() -> None:
    with pyforkd.spawn(TRUE) as p:
        p.wait()


def m_popen_pipes() -> None:
    with subprocess.Popen(
        [TRUE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as p:
        p.wait()


def m_os_posix_spawn() -> None:
    os.waitpid(os.posix_spawn(TRUE, [TRUE], os.environ), 0)


def m_os_fork_execv() -> None:
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(TRUE, [TRUE])
        finally:
            os._exit(127)
    os.waitpid(pid, 0)


def m_exec_file_echo() -> None:
    pyforkd.exec_file("echo", ["hi"])


def m_subprocess_run_echo() -> None:
    subprocess.run(["echo", "hi"], capture_output=True, check=True)


def measure_once(methods: dict[str, tuple[Callable[[], None], int]]) -> dict[str, float]:
    out = {}
    for name, (fn, count) in methods.items():
        t0 = time.perf_counter()
        for _ in range(count):
            fn()
        out[name] = (time.perf_counter() - t0) / count * 1e6
    return out


def run_c(binary: Path, count: int, reps: int, mem_mib: int) -> dict[str, float]:
    out = subprocess.run(
        [str(binary), "--count", str(count), "--reps", str(reps), "--mem-mib", str(mem_mib)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions; 0 and 1 GiB")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--count", type=int, default=None, help="spawns per repetition")
    args = ap.parse_args()
    reps = args.reps or (5 if args.quick else 9)
    count = args.count or (100 if args.quick else 200)
    sizes = [0, 1] if args.quick else [0, 1, 4]
    binary = build_c_bench()

    # Each repetition visits every parent size in turn (the ballast is made and dropped each
    # time), so that drift in the machine's load falls on all sizes alike, not on one.
    samples: dict[int, dict[str, list[float]]] = {g: {} for g in sizes}
    for rep in range(reps + 1):  # repetition 0 warms up and is not counted
        for gib in sizes:
            ballast = touch(gib << 30)
            # fork copies the page tables: at 4 GiB a call costs tens of ms, so fewer calls.
            fork_count = count if gib == 0 else max(10, count // 10)
            methods = {
                "pyforkd.spawn": (m_pyforkd, count),
                "subprocess.Popen": (m_popen, count),
                "os.posix_spawn": (m_os_posix_spawn, count),
                "os.fork+execv": (m_os_fork_execv, fork_count),
            }
            if gib == 0:
                methods["pyforkd.spawn (3 pipes)"] = (m_pyforkd_pipes, count)
                methods["subprocess.Popen (3 pipes)"] = (m_popen_pipes, count)
                methods["pyforkd.exec_file(echo)"] = (m_exec_file_echo, count)
                methods["subprocess.run(echo, capture)"] = (m_subprocess_run_echo, count)
            row = measure_once(methods if rep else {k: (f, 1) for k, (f, _) in methods.items()})
            row.update(run_c(binary, fork_count if gib else count, 1, gib << 10))
            del ballast
            if rep:
                for name, value in row.items():
                    samples[gib].setdefault(name, []).append(value)
    results = {g: {n: statistics.median(v) for n, v in samples[g].items()} for g in sizes}

    base = results[0]
    names = [n for n in base if not n.startswith("c_")] + [n for n in base if n.startswith("c_")]
    head = "| method | " + " | ".join(f"{g} GiB parent (µs)" for g in sizes) + " |"
    print(
        f"spawn+reap of {TRUE}: median of {reps} repetitions x {count} calls "
        f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)\n"
    )
    print(head)
    print("|" + "---|" * (len(sizes) + 1))
    for n in names:
        cells = [f"{results[g][n]:.0f}" if n in results[g] else "" for g in sizes]
        print(f"| {n} | " + " | ".join(cells) + " |")

    def ratio(a: str, b: str, gib: int = 0) -> str:
        return f"{results[gib][a] / results[gib][b]:.2f}x"

    print("\nratios (lower is better for pyforkd):\n")
    print("| comparison | ratio | target |")
    print("|---|---|---|")
    print(f"| pyforkd.spawn / C vfork+exec | {ratio('pyforkd.spawn', 'c_vfork_exec')} | <= 1.10x |")
    print(f"| pyforkd.spawn / C posix_spawn | {ratio('pyforkd.spawn', 'c_posix_spawn')} | |")
    print(f"| C pfd_spawn (vfork path) / C vfork+exec | {ratio('c_pfd_spawn', 'c_vfork_exec')} | |")
    print(
        "| C pfd_spawn (posix_spawn) / C vfork+exec | "
        f"{ratio('c_pfd_spawn_posix_spawn', 'c_vfork_exec')} | |"
    )
    print(
        f"| pyforkd.spawn / subprocess.Popen | {ratio('pyforkd.spawn', 'subprocess.Popen')} "
        "| <= 0.90x |"
    )
    print(f"| pyforkd.spawn / os.posix_spawn | {ratio('pyforkd.spawn', 'os.posix_spawn')} | |")
    print(
        "| pyforkd.spawn (3 pipes) / Popen (3 pipes) | "
        f"{ratio('pyforkd.spawn (3 pipes)', 'subprocess.Popen (3 pipes)')} | |"
    )
    print(
        "| exec_file(echo) / subprocess.run(capture_output) | "
        f"{ratio('pyforkd.exec_file(echo)', 'subprocess.run(echo, capture)')} | <= 0.80x |"
    )
    for gib in sizes[1:]:
        grow = results[gib]["pyforkd.spawn"] / results[0]["pyforkd.spawn"]
        fork_grow = results[gib]["os.fork+execv"] / results[0]["os.fork+execv"]
        print(f"| pyforkd.spawn at {gib} GiB / at 0 GiB | {grow:.2f}x | <= 1.10x |")
        print(f"| os.fork+execv at {gib} GiB / at 0 GiB | {fork_grow:.2f}x | (grows) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
