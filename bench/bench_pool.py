"""Pool benchmark: pyforkd.Pool against ProcessPoolExecutor, multiprocessing.Pool and loky,
2 workers each, in one process run; prints a table of medians and ratios.

    python3 bench/bench_pool.py [--quick]

Workloads (each timed from the first submission to the last result, pools started and
warmed first): 100 000 trivial tasks (``x + 1``) submitted one by one, and through ``map``
(default and tuned chunk sizes); 10 000 tasks of 1 ms each (compared with the ideal,
tasks x 1 ms / workers); 200 tasks each taking and returning a 4 MB numpy array.  Needs
numpy and loky (``pip install -e '.[bench]' loky``); a peer that is missing is left out
and said so.  --quick: a tenth of the tasks.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import multiprocessing.pool
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import pyforkd

WORKERS = 2


def add_one(x: int) -> int:
    return x + 1


def one_ms(x: int) -> int:
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    return x


def double(a: np.ndarray) -> np.ndarray:
    return a * 2


def pools() -> dict[str, Callable[[], Any]]:
    ctx = mp.get_context("fork")
    out: dict[str, Callable[[], Any]] = {
        "pyforkd Pool": lambda: pyforkd.Pool(workers=WORKERS),
        "ProcessPoolExecutor": lambda: cf.ProcessPoolExecutor(WORKERS, mp_context=ctx),
        "multiprocessing.Pool": lambda: ctx.Pool(WORKERS),
    }
    try:
        import loky  # type: ignore[import-untyped]

        out["loky"] = lambda: loky.get_reusable_executor(max_workers=WORKERS, reuse=False)
    except ImportError:
        print("(loky: not installed, left out)")
    return out


def submit_all(pool: Any, fn: Callable[..., Any], items: list[Any]) -> list[Any]:
    if isinstance(pool, multiprocessing.pool.Pool):
        results = [pool.apply_async(fn, (x,)) for x in items]
        return [r.get() for r in results]
    futures = [pool.submit(fn, x) for x in items]
    return [f.result() for f in futures]


def map_all(
    pool: Any, fn: Callable[..., Any], items: list[Any], chunksize: int | None
) -> list[Any]:
    if isinstance(pool, multiprocessing.pool.Pool):
        if chunksize is None:
            return pool.map(fn, items)
        return list(pool.imap_unordered(fn, items, chunksize))
    if chunksize is None and not isinstance(pool, pyforkd.Pool):
        return list(pool.map(fn, items))  # the executors' default: chunksize 1
    return list(pool.map(fn, items, chunksize=chunksize))


def close(pool: Any) -> None:
    if isinstance(pool, multiprocessing.pool.Pool):
        pool.close()
        pool.join()
    else:
        pool.shutdown(wait=True)


def timed(make: Callable[[], Any], work: Callable[[Any], list[Any]], reps: int) -> float:
    """Median seconds of ``work(pool)`` over ``reps`` runs, on one warmed pool."""
    pool = make()
    try:
        work(pool)  # warm: workers up, modules imported
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            work(pool)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        close(pool)


def idle_shutdown(make: Callable[[], Any], reps: int) -> float:
    """Median seconds of shutting down a warmed, idle pool (a new pool each time)."""
    times = []
    for _ in range(reps):
        pool = make()
        submit_all(pool, add_one, [1] * WORKERS)
        t0 = time.perf_counter()
        close(pool)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the tasks")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    makers = pools()
    # First, while this process is small: a worker's exit costs the kernel time in
    # proportion to the memory it shares with its parent (800 MB of arrays below).
    idle = {name: idle_shutdown(make, 5) for name, make in makers.items()}
    trivial = list(range(100_000 // scale))
    slow = list(range(10_000 // scale))
    arrays = [np.full(500_000, i, dtype=np.float64) for i in range(200 // scale)]  # 4 MB each
    reps = 3
    tuned = max(1, len(trivial) // (WORKERS * 4))
    rows: list[tuple[str, dict[str, float]]] = []
    workloads: list[tuple[str, Callable[[Any], list[Any]]]] = [
        (
            f"{len(trivial):,} x+1, submit",
            lambda p: submit_all(p, add_one, trivial),
        ),
        (
            f"{len(trivial):,} x+1, map (default chunks)",
            lambda p: map_all(p, add_one, trivial, None),
        ),
        (
            f"{len(trivial):,} x+1, map (chunksize {tuned:,})",
            lambda p: map_all(p, add_one, trivial, tuned),
        ),
        (
            f"{len(slow):,} x 1 ms, map (default chunks)",
            lambda p: map_all(p, one_ms, slow, None),
        ),
        (
            f"{len(arrays)} x 4 MB numpy round trips, map chunksize 1",
            lambda p: map_all(p, double, arrays, 1),
        ),
    ]
    for label, work in workloads:
        times = {name: timed(make, work, reps) for name, make in makers.items()}
        rows.append((label, times))
    rows.append(("idle pool's shutdown (medians of 5)", idle))
    names = list(makers)
    print(f"\n{WORKERS} workers each, medians of {reps} ({os.cpu_count()} CPUs); seconds:\n")
    print("| workload | " + " | ".join(names) + " | pyforkd vs best peer |")
    print("|---|" + "---|" * len(names) + "---|")
    for label, times in rows:
        peers = [t for n, t in times.items() if n != "pyforkd Pool"]
        best = min(peers)
        cells = " | ".join(f"{times[n]:.3f}" for n in names)
        print(f"| {label} | {cells} | {best / times['pyforkd Pool']:.2f}x |")
    ideal = len(slow) * 0.001 / WORKERS
    one_ms_row = rows[3][1]["pyforkd Pool"]
    ratio = one_ms_row / ideal
    print(f"\n1 ms tasks: pyforkd {one_ms_row:.3f} s = {ratio:.3f}x the ideal {ideal:.3f} s")
    sub = rows[0][1]
    print(
        f"submit: pyforkd {sub['ProcessPoolExecutor'] / sub['pyforkd Pool']:.2f}x "
        "ProcessPoolExecutor (target >= 5x)"
    )
    trivial_map = min(rows[1][1]["pyforkd Pool"], rows[2][1]["pyforkd Pool"])
    best_map = min(rows[1][1]["multiprocessing.Pool"], rows[2][1]["ProcessPoolExecutor"])
    print(
        f"map: pyforkd (best of its two rows) {best_map / trivial_map:.2f}x the best of "
        "multiprocessing.Pool.map and ProcessPoolExecutor.map(tuned) (target >= 1.5x)"
    )
    arr = rows[4][1]
    print(
        f"4 MB arrays: pyforkd {arr['ProcessPoolExecutor'] / arr['pyforkd Pool']:.2f}x "
        "ProcessPoolExecutor (target >= 2x)"
    )
    idle = rows[5][1]["pyforkd Pool"]
    print(f"idle shutdown: pyforkd {idle * 1000:.1f} ms (target <= 10 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
