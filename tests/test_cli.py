"""The ``pyforkd`` command: ``pyforkd run examples/hello_http.py -i N`` serving curl, a
graceful stop on SIGTERM, and clear errors for bad arguments."""

from __future__ import annotations

import os
import time

import pytest
from _helpers import PY, alive, answering_pid, free_port, linux_only, reaped

import pyforkd

pytestmark = linux_only
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "hello_http.py")


def curl(port):
    """curl's answer, retrying (bounded) until the cluster listens."""
    deadline = time.monotonic() + 30
    while True:
        done = pyforkd.spawn_sync("curl", ["-sS", "--max-time", "10", f"http://127.0.0.1:{port}/"])
        if done.returncode == 0:
            return done.stdout.decode()
        assert time.monotonic() < deadline, done.stderr
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("example", "policy"),
    [("hello_http.py", "rr"), ("hello_asyncio.py", "rr"), ("hello_asyncio.py", "shared")],
)
def test_pyforkd_run_serves_curl_and_stops_on_sigterm(example, policy):
    port = free_port()
    env = dict(os.environ, PORT=str(port))
    script = os.path.join(ROOT, "examples", example)
    primary = pyforkd.spawn(
        PY,
        ["-m", "pyforkd", "run", script, "-i", "2", "--policy", policy],
        env=env,
        stdio=["ignore", "pipe", "pipe"],
    )
    with reaped(primary):
        answers = [curl(port) for _ in range(6)]
        deadline = time.monotonic() + 30
        while {a.split()[3] for a in answers} != {"1", "2"}:  # both workers answer
            assert time.monotonic() < deadline, answers  # ("shared": the kernel picks)
            answers.append(curl(port))
        pids = {answering_pid(a.encode()) for a in answers}
        primary.kill("SIGTERM")
        assert primary.wait(timeout=30) == 0
    err = primary.stderr.read().decode()
    assert "2 worker(s) running" in err
    assert "ended" not in err and "Traceback" not in err  # a graceful stop, no error
    assert not any(alive(pid) for pid in pids)


def test_bad_arguments_are_explained():
    done = pyforkd.spawn_sync(PY, ["-m", "pyforkd", "run", EXAMPLE, "-i", "0"])
    assert done.returncode == 2 and b"-i must be at least 1" in done.stderr
    done = pyforkd.spawn_sync(PY, ["-m", "pyforkd", "run", "no/such/script.py"])
    assert done.returncode == 2 and b"no such script: no/such/script.py" in done.stderr
    done = pyforkd.spawn_sync(PY, ["-m", "pyforkd", "run", EXAMPLE, "--policy", "nope"])
    assert done.returncode == 2 and b"invalid choice: 'nope'" in done.stderr
    done = pyforkd.spawn_sync(PY, ["-m", "pyforkd", "run", "--help"])
    assert done.returncode == 0 and b"pyforkd run SCRIPT [-i N|max]" in done.stdout
