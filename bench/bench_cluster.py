"""Cluster benchmark: the same tiny HTTP responder behind pyforkd (3 policies), Node's
cluster (RR and SCHED_NONE) and gunicorn (sync workers), measured by wrk on 127.0.0.1 in
one process run; prints a table of medians and ratios.

    python3 bench/bench_cluster.py [--quick]

pyforkd runs each of its policies (rr, shared, reuseport).  Every server runs 2 workers;
wrk runs ``-t2 -c64 -d5s --latency`` (``-d2s`` with --quick) with ``Connection: close``
(a new connection per request), three times each, servers taking turns.  Needs ``wrk``
(Debian: apt-get install wrk), ``node`` and ``gunicorn`` (pip); a peer that is missing is
left out and said so.  Not measured yet: keep-alive (pyforkd's example closes every
connection), per-worker fairness, reload and worker kills under load.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLE = os.path.join(ROOT, "examples", "hello_http.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def servers(port: int) -> dict[str, list[str] | None]:
    py = sys.executable
    out: dict[str, list[str] | None] = {
        "pyforkd rr": [py, "-m", "pyforkd", "run", EXAMPLE, "-i", "2"],
        "pyforkd shared": [py, "-m", "pyforkd", "run", EXAMPLE, "-i", "2", "--policy", "shared"],
        "pyforkd reuseport": [
            *[py, "-m", "pyforkd", "run", EXAMPLE, "-i", "2", "--policy", "reuseport"]
        ],
    }
    node = shutil.which("node")
    js = os.path.join(HERE, "cluster", "node_cluster.js")
    out["Node cluster RR"] = [node, js] if node else None
    out["Node cluster SCHED_NONE"] = [node, js] if node else None
    gunicorn = shutil.which("gunicorn")
    out["gunicorn sync"] = (
        [
            gunicorn,
            "-w",
            "2",
            "-k",
            "sync",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "error",
            "--chdir",
            os.path.join(HERE, "cluster"),
            "wsgi_app:app",
        ]
        if gunicorn
        else None
    )
    return out


def measure(name: str, cmd: list[str], seconds: int) -> tuple[float, float]:
    """Requests/s and p99 latency (ms) of one wrk run against a fresh server."""
    port = free_port()
    cmd = [f"127.0.0.1:{port}" if c.startswith("127.0.0.1:") else c for c in cmd]
    env = dict(os.environ, PORT=str(port), WORKERS="2")
    env["NODE_CLUSTER_SCHED_POLICY"] = "none" if "SCHED_NONE" in name else "rr"
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        time.sleep(0.3)  # every worker up
        run = subprocess.run(
            [
                "wrk",
                "-t2",
                "-c64",
                f"-d{seconds}s",
                "--latency",
                "-H",
                "Connection: close",
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", run.stdout).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", run.stdout)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    return rate, latency


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)")
        return 1
    seconds, reps = (2, 3) if args.quick else (5, 3)
    todo = servers(0)
    for name, cmd in list(todo.items()):
        if cmd is None:
            print(f"({name}: not installed, left out)")
            del todo[name]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in todo}
    for _ in range(reps):
        for name, cmd in todo.items():
            runs[name].append(measure(name, cmd, seconds))  # type: ignore[arg-type]
    print(
        f"\nnew connection per request, 2 workers, wrk -t2 -c64 -d{seconds}s, medians of {reps} "
        f"({os.cpu_count()} CPUs):\n"
    )
    print("| server | requests/s | p99 ms | vs pyforkd shared | vs Node RR | vs gunicorn |")
    print("|---|---|---|---|---|---|")
    med = {n: statistics.median(r for r, _ in v) for n, v in runs.items()}
    p99 = {n: statistics.median(p for _, p in v) for n, v in runs.items()}

    def ratio(n: str, peer: str) -> str:
        return f"{med[n] / med[peer]:.2f}x" if peer in med else "-"

    for n in runs:
        print(
            f"| {n} | {med[n]:,.0f} | {p99[n]:.1f} | {ratio(n, 'pyforkd shared')} | "
            f"{ratio(n, 'Node cluster RR')} | {ratio(n, 'gunicorn sync')} |"
        )
    print(
        "\ntargets: pyforkd rr >= 0.9x pyforkd shared, >= 4x Node cluster RR, >= 4x gunicorn sync"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
