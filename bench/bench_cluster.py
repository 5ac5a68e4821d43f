"""Cluster benchmark: the same minimal Python responder (bench/cluster/responder.py) behind
pyforkd's policies, Node's cluster (RR and SCHED_NONE) with an equivalent JS responder, and
gunicorn (sync workers, a minimal WSGI app), measured by wrk on 127.0.0.1 in one process
run; prints tables of medians and ratios.

    python3 bench/bench_cluster.py [--quick]

Every server runs 2 workers; wrk runs ``-t2 -c64 --latency``, servers taking turns, three
times each (medians):

1. a new connection per request (``Connection: close``) and keep-alive: requests/s, p99
   latency, and the per-worker split of requests (fairness = max/min; from the workers'
   own counts, printed when they stop; gunicorn does not say);
2. reload under load: ``pyforkd reload`` (SIGHUP) twice during one wrk run: socket errors
   and non-2xx answers;
3. a worker SIGKILLed every second under load (pyforkd and Node, whose primary forks a
   replacement): failed requests, and for pyforkd how long until the replacement listens.

Needs ``wrk`` (Debian: apt-get install wrk), ``node`` and ``gunicorn`` (pip); a peer that is
missing is left out and said so.  Bounded: every wrk run lasts ``-d`` seconds (5, or 2
with --quick; 10 and 4 for the reload and kill runs).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from _wrk import during_load, free_port, wait_listening, wrk

from pyforkd.cluster import control as _control

HERE = os.path.dirname(os.path.abspath(__file__))
RESPONDER = os.path.join(HERE, "cluster", "responder.py")
RUNTIME = tempfile.mkdtemp(prefix="pyforkd-bench-")
os.environ["PYFORKD_RUNTIME_DIR"] = RUNTIME  # the control sockets, ours and the servers'


def pyforkd_cmd(*flags: str) -> list[str]:
    return [sys.executable, "-m", "pyforkd", "run", RESPONDER, "-i", "2", "--name", "bench", *flags]


def servers() -> dict[str, list[str] | None]:
    out: dict[str, list[str] | None] = {
        "pyforkd rr": pyforkd_cmd(),
        "pyforkd rr least-conn": pyforkd_cmd("--balance", "least-connections"),
        "pyforkd shared": pyforkd_cmd("--policy", "shared"),
        "pyforkd reuseport": pyforkd_cmd("--policy", "reuseport"),
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
            "127.0.0.1:PORT",
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


class Server:
    """One server on a free port, for one measurement."""

    def __init__(self, name: str, cmd: list[str]) -> None:
        self.name = name
        self.port = free_port()
        cmd = [c.replace("PORT", str(self.port)) if c.startswith("127.0.0.1:") else c for c in cmd]
        env = dict(os.environ, PORT=str(self.port), WORKERS="2")
        env["NODE_CLUSTER_SCHED_POLICY"] = "none" if "SCHED_NONE" in name else "rr"
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        wait_listening(self.port)
        time.sleep(0.5)  # every worker up

    def hup(self) -> None:
        """A reload."""
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> list[int]:
        """Stop it; each worker's count of requests answered (empty when it does not say)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return [int(n) for n in re.findall(r"served (\d+)", out)]


def throughput(todo: dict[str, list[str]], seconds: int, reps: int, close: bool) -> None:
    runs: dict[str, list[tuple[dict[str, float], float]]] = {name: [] for name in todo}
    for _ in range(reps):
        for name, cmd in todo.items():
            server = Server(name, cmd)
            try:
                result = wrk(server.port, seconds, close)
            finally:
                split = server.stop()
            fair = max(split) / min(split) if len(split) == 2 and min(split) else float("nan")
            runs[name].append((result, fair))
    mode = "new connection per request" if close else "keep-alive"
    print(
        f"\n{mode}, 2 workers, wrk -t2 -c64 -d{seconds}s, medians of {reps} "
        f"({os.cpu_count()} CPUs):\n"
    )
    print(
        "| server | requests/s | p99 ms | fairness max/min | vs pyforkd reuseport "
        "| vs pyforkd shared | vs Node RR | vs gunicorn |"
    )
    print("|---|---|---|---|---|---|---|---|")
    med = {n: statistics.median(r["rate"] for r, _ in v) for n, v in runs.items()}
    p99 = {n: statistics.median(r["p99"] for r, _ in v) for n, v in runs.items()}
    fair = {n: statistics.median(f for _, f in v) for n, v in runs.items()}

    def ratio(n: str, peer: str) -> str:
        return f"{med[n] / med[peer]:.2f}x" if peer in med else "-"

    for n in runs:
        f = "-" if fair[n] != fair[n] else f"{fair[n]:.2f}"
        print(
            f"| {n} | {med[n]:,.0f} | {p99[n]:.1f} | {f} | {ratio(n, 'pyforkd reuseport')} | "
            f"{ratio(n, 'pyforkd shared')} | {ratio(n, 'Node cluster RR')} | "
            f"{ratio(n, 'gunicorn sync')} |"
        )


def ready_pids() -> set[int]:
    """The ready workers of the pyforkd server running now (through its control socket)."""
    answer = _control.request("bench", {"cmd": "status"})
    return {w["pid"] for w in answer["workers"] if w["ready"]}


def under_load(
    name: str, cmd: list[str], seconds: int, close: bool, action: str
) -> tuple[dict[str, float], list[float]]:
    """One wrk run during which ``action`` (reload / kill) happens; wrk's counts, and the
    times (ms) until replacements were ready (pyforkd kills)."""
    server = Server(name, cmd)
    waits: list[float] = []
    try:
        if action == "reload":
            at = [seconds / 3, 2 * seconds / 3]
            result = during_load(server.port, seconds, close, at, server.hup)
        else:
            at = [float(k) for k in range(1, seconds)]
            result = during_load(
                server.port, seconds, close, at, lambda: waits.extend(kill_one(server, name))
            )
    finally:
        server.stop()
    return result, waits


def kill_one(server: Server, name: str) -> list[float]:
    if name.startswith("pyforkd"):
        before = ready_pids()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5:
            now = ready_pids()
            if len(now - before) == 1 and victim not in now:
                return [(time.monotonic() - t0) * 1000]
            time.sleep(0.001)
        return [float("nan")]
    with open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children") as f:
        kids = [int(p) for p in f.read().split()]
    if kids:
        os.kill(min(kids), signal.SIGKILL)
    return []


def faults(todo: dict[str, list[str]], seconds: int) -> None:
    print(f"\nreload twice during one wrk -t2 -c64 -d{seconds}s run (2 workers):\n")
    print("| server | mode | requests | socket errors | non-2xx |")
    print("|---|---|---|---|---|")
    for name, cmd in todo.items():
        if not name.startswith("pyforkd") or "least" in name:
            continue
        for close in (True, False):
            r, _ = under_load(name, cmd, seconds, close, "reload")
            mode = "close" if close else "keep-alive"
            counts = f"{r['requests']:,.0f} | {r['errors']:.0f} | {r['non2xx']:.0f}"
            print(f"| {name} | {mode} | {counts} |")
    print(f"\na worker SIGKILLed every second during one wrk -t2 -c64 -d{seconds}s run:\n")
    print("| server | requests | failed (errors + non-2xx) | replacement ready ms (median, max) |")
    print("|---|---|---|---|")
    for name, cmd in todo.items():
        if "least" in name or "gunicorn" in name:
            continue
        # The kills are ours, not a crash loop: pyforkd may restart them all.
        flags = (
            ["--max-restarts", "1000", "--restart-delay", "0"] if name.startswith("pyforkd") else []
        )
        r, waits = under_load(name, [*cmd, *flags], seconds, True, "kill")
        spread = f"{statistics.median(waits):.0f}, {max(waits):.0f}" if waits else "-"
        failed = r["errors"] + r["non2xx"]
        print(f"| {name} | {r['requests']:,.0f} | {failed:.0f} | {spread} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)")
        return 1
    seconds, reps, long = (2, 3, 4) if args.quick else (5, 3, 10)
    todo: dict[str, list[str]] = {}
    for name, cmd in servers().items():
        if cmd is None:
            print(f"({name}: not installed, left out)")
        else:
            todo[name] = cmd
    throughput(todo, seconds, reps, close=True)
    throughput({n: c for n, c in todo.items() if "gunicorn" not in n}, seconds, reps, close=False)
    print(
        "\n(gunicorn's sync workers close every connection: no keep-alive row.)\n"
        "targets: rr >= 0.9x shared, >= 4x Node cluster RR and gunicorn sync (new connection"
        " per request); keep-alive: every policy >= 0.9x reuseport; fairness <= 1.1"
    )
    faults(todo, long)
    shutil.rmtree(RUNTIME, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
