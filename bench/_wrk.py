"""What the web benchmarks share: free ports, waiting for a server, running wrk."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any


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


def wrk_args(seconds: int, close: bool, connections: int = 64) -> list[str]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if close:
        args += ["-H", "Connection: close"]
    return args


def wrk(port: int, seconds: int, close: bool, path: str = "/") -> dict[str, float]:
    run = subprocess.run(
        [*wrk_args(seconds, close), f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    return parse_wrk(run.stdout)


def parse_wrk(text: str) -> dict[str, float]:
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    total = re.search(r"(\d+) requests in", text)
    return {
        "rate": rate,
        "p99": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
        "errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "requests": float(total.group(1)) if total else 0.0,
    }


def during_load(
    port: int, seconds: int, close: bool, at: list[float], act: Callable[[], Any]
) -> dict[str, float]:
    """One wrk run during which ``act()`` happens ``at`` these seconds; wrk's counts."""
    load = subprocess.Popen(
        [*wrk_args(seconds, close), f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE,
        text=True,
    )
    start = time.monotonic()
    for when in at:
        time.sleep(max(0.0, start + when - time.monotonic()))
        act()
    out, _ = load.communicate(timeout=seconds + 60)
    return parse_wrk(out)
