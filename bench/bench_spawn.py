"""Spawn-and-reap of /bin/true: pyforkd against subprocess, os.posix_spawn, os.fork+execv and
the C limit, with the parent holding 0, 1 and 4 GiB of touched memory; and
exec_file("echo") against subprocess.run(capture_output=True).

This machine is shared and noisy, so the methods are not timed one after the other: every
round calls each method once, in turn, and each call is timed on its own; the medians of
those per-call times are compared.  The C references (bench/c/spawn_ref.c: vfork+exec,
posix_spawn, fork+exec, and pfd_spawn itself) are called the same way through ctypes, so
drift in the machine's load falls on every method alike.  The parent sizes are visited in
blocks, several times over.  bench/c/spawn_bench is also run once as a stand-alone C
process, for reference.

    python bench/bench_spawn.py            # full run (a few minutes)
    python bench/bench_spawn.py --quick    # fewer rounds, sizes 0 and 1 GiB
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
from pyforkd import _bindings

HERE = Path(__file__).resolve().parent
TRUE = "/bin/true"
BTRUE = TRUE.encode()


def build_c() -> tuple[ctypes.CDLL, Path]:
    subprocess.run(["make", "-s", "-C", str(HERE / "c")], check=True)
    lib = ctypes.CDLL(str(HERE / "c" / "build" / "libspawnref.so"))
    for name in ("ref_vfork_exec", "ref_fork_exec", "ref_posix_spawn"):
        getattr(lib, name).argtypes = [ctypes.c_char_p]
    lib.ref_pfd_spawn.argtypes = [ctypes.c_char_p, ctypes.c_uint]
    return lib, HERE / "c" / "build" / "spawn_bench"


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


Method = tuple[Callable[[], object], int]  # (call, run it every n-th round)


def methods_for(lib: ctypes.CDLL, gib: int) -> dict[str, Method]:
    # fork copies the page tables: with a big parent a call costs tens of ms, so it runs
    # in every 20th round only.
    fork_every = 1 if gib == 0 else 20
    methods: dict[str, Method] = {
        "pyforkd.spawn": (m_pyforkd, 1),
        "subprocess.Popen": (m_popen, 1),
        "os.posix_spawn": (m_os_posix_spawn, 1),
        "os.fork+execv": (m_os_fork_execv, fork_every),
        "C vfork+exec": (lambda: lib.ref_vfork_exec(BTRUE), 1),
        "C posix_spawn": (lambda: lib.ref_posix_spawn(BTRUE), 1),
        "C fork+exec": (lambda: lib.ref_fork_exec(BTRUE), fork_every),
        "C pfd_spawn (default: vfork path)": (lambda: lib.ref_pfd_spawn(BTRUE, 0), 1),
        "C pfd_spawn (posix_spawn)": (
            lambda: lib.ref_pfd_spawn(BTRUE, _bindings.SPAWN_USE_POSIX_SPAWN),
            1,
        ),
    }
    if gib == 0:
        methods["pyforkd.spawn (3 pipes)"] = (m_pyforkd_pipes, 1)
        methods["subprocess.Popen (3 pipes)"] = (m_popen_pipes, 1)
        methods["pyforkd.exec_file(echo)"] = (m_exec_file_echo, 1)
        methods["subprocess.run(echo, capture)"] = (m_subprocess_run_echo, 1)
    return methods


def run_rounds(methods: dict[str, Method], rounds: int, samples: dict[str, list[float]]) -> None:
    clock = time.perf_counter
    for i in range(rounds):
        for name, (fn, every) in methods.items():
            if i % every:
                continue
            t0 = clock()
            fn()
            samples.setdefault(name, []).append((clock() - t0) * 1e6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds; 0 and 1 GiB")
    ap.add_argument("--blocks", type=int, default=None, help="passes over the sizes")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per size per pass")
    args = ap.parse_args()
    blocks = args.blocks or (2 if args.quick else 4)
    rounds = args.rounds or (40 if args.quick else 100)
    sizes = [0, 1] if args.quick else [0, 1, 4]
    lib, standalone = build_c()

    samples: dict[int, dict[str, list[float]]] = {g: {} for g in sizes}
    run_rounds(methods_for(lib, 0), 2, {})  # warm-up: imports, page cache, first calls
    for _ in range(blocks):
        for gib in sizes:
            ballast = touch(gib << 30)
            run_rounds(methods_for(lib, gib), rounds, samples[gib])
            del ballast
    med = {g: {n: statistics.median(v) for n, v in samples[g].items()} for g in sizes}
    counts = {n: len(v) for n, v in samples[0].items()}

    print(
        f"spawn+reap of {TRUE}, median of per-call times, methods alternating call by call "
        f"({blocks} passes x {rounds} rounds per size; Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs)\n"
    )
    print("| method | " + " | ".join(f"{g} GiB parent (µs)" for g in sizes) + " | calls |")
    print("|" + "---|" * (len(sizes) + 2))
    for n in med[0]:
        cells = [f"{med[g][n]:.0f}" if n in med[g] else "" for g in sizes]
        print(f"| {n} | " + " | ".join(cells) + f" | {counts[n]} |")

    def ratio(a: str, b: str, gib: int = 0) -> str:
        return f"{med[gib][a] / med[gib][b]:.2f}x"

    rows = [
        ("pyforkd.spawn / C vfork+exec", ratio("pyforkd.spawn", "C vfork+exec"), "<= 1.10x"),
        (
            "pyforkd.spawn / subprocess.Popen",
            ratio("pyforkd.spawn", "subprocess.Popen"),
            "<= 0.90x",
        ),
        ("pyforkd.spawn / os.posix_spawn", ratio("pyforkd.spawn", "os.posix_spawn"), ""),
        (
            "pyforkd.spawn (3 pipes) / Popen (3 pipes)",
            ratio("pyforkd.spawn (3 pipes)", "subprocess.Popen (3 pipes)"),
            "",
        ),
        (
            "exec_file(echo) / subprocess.run(capture_output)",
            ratio("pyforkd.exec_file(echo)", "subprocess.run(echo, capture)"),
            "<= 0.80x",
        ),
        (
            "C pfd_spawn (vfork path) / C vfork+exec",
            ratio("C pfd_spawn (default: vfork path)", "C vfork+exec"),
            "",
        ),
        (
            "C pfd_spawn (posix_spawn) / C vfork+exec",
            ratio("C pfd_spawn (posix_spawn)", "C vfork+exec"),
            "",
        ),
        ("C posix_spawn / C vfork+exec", ratio("C posix_spawn", "C vfork+exec"), ""),
    ]
    for gib in sizes[1:]:
        for n, target in (
            ("pyforkd.spawn", "<= 1.10x"),
            ("subprocess.Popen", ""),
            ("C vfork+exec", ""),
            ("os.fork+execv", "(grows)"),
        ):
            rows.append((f"{n} at {gib} GiB / at 0 GiB", f"{med[gib][n] / med[0][n]:.2f}x", target))
    print("\n| comparison (same run) | ratio | target |\n|---|---|---|")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")

    out = subprocess.run(
        [str(standalone), "--count", "200", "--reps", "5"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    print("\nfor reference, bench/c/spawn_bench as its own C process (median of 5 x 200):\n")
    print("| C method | µs |\n|---|---|")
    for line in out.splitlines():
        name, value = line.split()
        print(f"| {name} | {float(value):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
