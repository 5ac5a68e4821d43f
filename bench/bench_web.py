"""Web apps on pyforkd's cluster against gunicorn and uvicorn, side by side in one run.

    python3 bench/bench_web.py [--quick]

Flask and Django "hello" (WSGI) and FastAPI "hello" (ASGI) from bench/web/, 2 workers per
server: ``pyforkd run APP -i 2`` (rr, the default, and shared) against ``gunicorn -w 2``
(sync, and gthread with 4 threads) for WSGI, and ``uvicorn --workers 2`` and gunicorn with
uvicorn's worker for ASGI.
wrk ``-t2 -c64``, servers taking turns, medians of 3 runs: a new connection per request
(``Connection: close``) and keep-alive.  Then reloads under load: ``pyforkd reload``
(SIGHUP) twice during one wrk run, and the same HUP to gunicorn and uvicorn, counting
socket errors and non-2xx answers.

Needs wrk (Debian: apt-get install wrk) and pip's flask, django, fastapi, gunicorn,
uvicorn and uvicorn-worker; a peer that is missing is left out and said so.  Bounded: each
wrk run lasts 5 s (2 with --quick; 8 and 4 for the reloads).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from _wrk import during_load, free_port, wait_listening, wrk

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "web")
RUNTIME = tempfile.mkdtemp(prefix="pyforkd-bench-")
os.environ["PYFORKD_RUNTIME_DIR"] = RUNTIME  # (the control sockets of pyforkd's servers)

# app -> (module:attr, interface)
APPS_OF = {
    "Flask": ("flask_app:app", "wsgi", "flask"),
    "Django": ("django_app:app", "wsgi", "django"),
    "FastAPI": ("fastapi_app:app", "asgi", "fastapi"),
}


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def servers(app: str) -> dict[str, list[str] | None]:
    """The commands serving ``app`` (PORT stands for the port), None for a missing peer."""
    spec, kind, _ = APPS_OF[app]
    bind = "127.0.0.1:PORT"
    pyforkd = [sys.executable, "-m", "pyforkd", "run", spec, "-i", "2", "-b", bind,
               "--name", "bench"]  # fmt: skip
    out: dict[str, list[str] | None] = {
        "pyforkd": pyforkd,  # (rr, the default)
        "pyforkd shared": [*pyforkd, "--policy", "shared"],
    }
    gunicorn = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", bind, "--log-level", "error"]
    if kind == "wsgi":
        ok = have("gunicorn")
        out["gunicorn sync"] = [*gunicorn, "-k", "sync", spec] if ok else None
        out["gunicorn gthread"] = (
            [*gunicorn, "-k", "gthread", "--threads", "4", spec] if ok else None
        )
    else:
        out["uvicorn --workers 2"] = (
            [sys.executable, "-m", "uvicorn", "--workers", "2", "--host", "127.0.0.1",
             "--port", "PORT", "--log-level", "error", "--no-access-log", spec]
            if have("uvicorn") else None
        )  # fmt: skip
        ok = have("gunicorn") and have("uvicorn_worker")
        out["gunicorn + UvicornWorker"] = (
            [*gunicorn, "-k", "uvicorn_worker.UvicornWorker", spec] if ok else None
        )
    return out


class Server:
    """One server on a free port, for one measurement."""

    def __init__(self, cmd: list[str]) -> None:
        self.port = free_port()
        cmd = [c.replace("PORT", str(self.port)) for c in cmd]
        self.proc = subprocess.Popen(
            cmd, cwd=APPS, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        wait_listening(self.port)
        # Every worker up and warm before the measure: a worker still starting would leave
        # the keep-alive connections of the whole run to the other one.
        time.sleep(1.0)
        wrk(self.port, 2, close=True)

    def hup(self) -> None:
        """A reload."""
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def throughput(app: str, todo: dict[str, list[str]], seconds: int, reps: int) -> None:
    for close in (True, False):
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in todo}
        for _ in range(reps):
            for name, cmd in todo.items():
                server = Server(cmd)
                try:
                    runs[name].append(wrk(server.port, seconds, close))
                finally:
                    server.stop()
        mode = "a new connection per request" if close else "keep-alive"
        print(f"\n{app}, {mode}: 2 workers, wrk -t2 -c64 -d{seconds}s, medians of {reps}\n")
        peers = [n for n in todo if not n.startswith("pyforkd")]
        print("| server | requests/s | p99 ms | errors | " + " | ".join(f"vs {p}" for p in peers))
        print("|---" * (4 + len(peers)) + "|")
        med = {n: statistics.median(r["rate"] for r in v) for n, v in runs.items()}
        p99 = {n: statistics.median(r["p99"] for r in v) for n, v in runs.items()}
        errs = {n: sum(r["errors"] + r["non2xx"] for r in v) for n, v in runs.items()}
        for n in todo:
            ratios = " | ".join(f"{med[n] / med[p]:.2f}x" for p in peers)
            print(f"| {n} | {med[n]:,.0f} | {p99[n]:.1f} | {errs[n]:.0f} | {ratios}")


def reloads(app: str, todo: dict[str, list[str]], seconds: int) -> None:
    print(f"\n{app}: SIGHUP (a reload) twice during one wrk -t2 -c64 -d{seconds}s run\n")
    print("| server | mode | requests | socket errors | non-2xx |")
    print("|---|---|---|---|---|")
    for name, cmd in todo.items():
        for close in (True, False):
            server = Server(cmd)
            try:
                at = [seconds / 3, 2 * seconds / 3]
                r = during_load(server.port, seconds, close, at, server.hup)
            finally:
                server.stop()
            mode = "close" if close else "keep-alive"
            counts = f"{r['requests']:,.0f} | {r['errors']:.0f} | {r['non2xx']:.0f}"
            print(f"| {name} | {mode} | {counts} |")


def idle_stop(app: str) -> None:
    cmd = servers(app)["pyforkd"]
    assert cmd is not None
    times = []
    for _ in range(3):
        server = Server(cmd)
        start = time.monotonic()
        server.stop()
        times.append(time.monotonic() - start)
    print(f"\n{app}: an idle pyforkd cluster stops (SIGTERM to exit) in "
          f"{statistics.median(times) * 1000:.0f} ms (median of 3)")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument("--apps", default="Flask,Django,FastAPI", help="which apps (comma list)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)")
        return 1
    seconds, reps, long = (2, 3, 4) if args.quick else (4, 5, 8)
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for app in args.apps.split(","):
        if not have(APPS_OF[app][2]):
            print(f"\n({app}: not installed, left out)")
            continue
        todo: dict[str, list[str]] = {}
        for name, cmd in servers(app).items():
            if cmd is None:
                print(f"({app} on {name}: not installed, left out)")
            else:
                todo[name] = cmd
        throughput(app, todo, seconds, reps)
        reloads(app, todo, long)
        if APPS_OF[app][1] == "asgi":
            idle_stop(app)
    shutil.rmtree(RUNTIME, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
