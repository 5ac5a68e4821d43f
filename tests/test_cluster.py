"""The cluster end to end: a script run as a primary with forked workers that re-run it,
real HTTP through the round-robin policy, events in Node's order, a killed worker
restarted, a graceful stop on SIGTERM, and nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import sys
import textwrap
import threading
import time

import pytest
from _helpers import (
    PY,
    REUSEPORT,
    alive,
    answering_pid,
    free_port,
    http_get,
    posix_only,
    reaped,
)

import pyforkd

pytestmark = posix_only

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
SCRIPT = textwrap.dedent(
    f"""
    import os
    import runpy

    from pyforkd import cluster

    if cluster.is_primary:
        def log(*parts):
            print(*parts, flush=True)

        cluster.on("fork", lambda w: log("fork", w.id))
        cluster.on("online", lambda w: log("online", w.id))
        cluster.on("listening", lambda w, address: log("listening", w.id, address[1]))
        cluster.on("exit", lambda w, code, sig: log("exit", w.id, code, sig))
        cluster.setup_primary(policy=os.environ.get("POLICY", "rr"))
        for _ in range(2):
            cluster.fork()
        cluster.run()
        log("stopped")
    else:
        runpy.run_path({os.path.join(EXAMPLE, "hello_http.py")!r}, run_name="__main__")
    """
)


def get(port):
    return answering_pid(http_get(port))


def both_workers(port):
    """The two workers' pids, once both answer (the second may still be starting)."""
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"only {seen} answered"
        seen.add(get(port))
    return seen


def start_primary(tmp_path, **env):
    """SCRIPT run as a cluster primary on a free port: ``(its ChildProcess, the port)``."""
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    port = free_port()
    env = dict(os.environ, PORT=str(port), **env)
    return pyforkd.spawn(PY, [str(script)], env=env, stdio=["ignore", "pipe", "inherit"]), port


def test_a_cluster_serves_restarts_and_stops(tmp_path):
    primary, port = start_primary(tmp_path)
    with reaped(primary):
        first = both_workers(port)
        assert len({get(port) for _ in range(20)} | first) == 2  # only those two answer
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        pids = set()
        while time.monotonic() < deadline:  # a replacement comes (after a short back-off)
            pids = {get(port) for _ in range(6)}
            if len(pids) == 2 and victim not in pids:
                break
        assert len(pids) == 2 and victim not in pids and pids & first
        primary.kill("SIGTERM")
        assert primary.wait(timeout=30) == 0
    out = primary.stdout.read().decode().split("\n")
    assert out[:2] == ["fork 1", "fork 2"]  # forked before run(); then each comes up
    for wid in (1, 2, 3):
        assert out.index(f"fork {wid}") < out.index(f"online {wid}")
        assert out.index(f"online {wid}") < out.index(f"listening {wid} {port}")
    exits = [line for line in out if line.startswith("exit ")]
    assert len(exits) == 3
    assert sum(line.endswith(" None SIGKILL") for line in exits) == 1  # the one we killed
    assert sum(line.endswith(" 0 None") for line in exits) == 2  # the rest ended cleanly
    assert "fork 3" in out and "online 3" in out and f"listening 3 {port}" in out
    assert out[-2] == "stopped"
    for pid in first | pids:
        assert not alive(pid)  # no orphan


BOOT_ERROR = textwrap.dedent(
    """
    from pyforkd import cluster

    if cluster.is_primary:
        cluster.fork()
        cluster.run()
    else:
        raise RuntimeError("this app cannot start")
    """
)


def test_a_worker_failing_at_start_is_reported_and_not_restarted(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text(BOOT_ERROR)
    done = pyforkd.spawn_sync(PY, [str(script)], timeout=60)
    err = done.stderr.decode()
    assert "worker 1 failed" in err and "RuntimeError: this app cannot start" in err
    report = err[err.index("worker 1 failed") : err.index("this app cannot start")]
    assert f'File "{script}", line 8, in <module>' in report  # the script's own frame ...
    assert "runpy" not in report and "pyforkd/" not in report  # ... not those that ran it
    assert report.index("Traceback") < report.index(str(script))
    assert "no workers are left" in err  # the primary stops, no crash loop
    assert done.returncode == 1


def test_reuseport_is_refused_where_the_kernel_does_not_balance_it(monkeypatch):
    from pyforkd.cluster import Cluster

    monkeypatch.setattr(sys, "platform", "darwin")  # (read at the check: a Mac's answer)
    with pytest.raises(ValueError, match=r"kernel balances .*use 'rr' or 'shared'"):
        Cluster().setup_primary(policy="reuseport")


def test_listen_is_for_workers_and_events_are_checked():
    from pyforkd import cluster

    with pytest.raises(RuntimeError, match="listen\\(\\) is for workers"):
        cluster.listen(("127.0.0.1", 0))
    with pytest.raises(ValueError, match="unknown event 'bogus'"):
        cluster.on("bogus", print)
    with pytest.raises(ValueError, match="policy must be 'rr', 'shared' or 'reuseport'"):
        cluster.setup_primary(policy="nope")
    bad = [
        ({"balance": "random"}, ValueError, "balance must be 'round-robin' or 'least-conn"),
        ({"timeout": -1}, ValueError, "timeout must be positive, not -1"),
        ({"timeout": "soon"}, TypeError, "timeout must be a number of seconds, not 'soon'"),
        ({"max_memory": "lots"}, ValueError, "not a memory size: 'lots'"),
        ({"max_requests": -5}, ValueError, "max_requests must be a count >= 0, not -5"),
        ({"start": "vfork"}, ValueError, "start must be 'fork' or 'spawn', not 'vfork'"),
        ({"wait_ready": 1}, TypeError, "wait_ready must be a bool, not 1"),
        ({"workers": 4}, TypeError, "unknown setting 'workers'"),
    ]
    before = dict(cluster.settings)
    for settings, error, text in bad:
        with pytest.raises(error, match=re.escape(text)):
            cluster.setup_primary(policy="shared", **settings)
    assert cluster.settings == before  # a bad setting changes nothing
    assert cluster.parse_size("300M") == 300 << 20
    assert cluster.parse_size("1.5GiB") == 3 << 29
    assert cluster.parse_size(4096) == 4096
    assert cluster.is_primary and not cluster.is_worker and cluster.worker is None


def wait_until(condition, what, limit=30.0):
    """Poll ``condition`` (bounded); fail naming ``what`` if it never holds."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def test_reload_and_scale_under_load_refuse_nothing(tmp_path):
    primary, port = start_primary(tmp_path)
    with reaped(primary):
        old = both_workers(port)
        answers: list[int] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def load():  # one client after another, for as long as the test needs (bounded)
            for _ in range(100_000):
                if stop.is_set():
                    return
                try:
                    answers.append(get(port))
                except Exception as exc:  # a refused or broken request is what we count
                    errors.append(exc)

        t = threading.Thread(target=load)
        t.start()
        try:
            primary.kill("SIGHUP")
            wait_until(lambda: len(set(answers[-20:]) - old) == 2, "two new workers answer")
            wait_until(lambda: not any(alive(pid) for pid in old), "the old workers exit")
            new = set(answers[-20:])
            primary.kill("SIGTTIN")
            wait_until(lambda: set(answers) - old - new, "a third worker answers")
            third = set(answers) - old - new
            primary.kill("SIGTTOU")
            wait_until(lambda: not any(alive(pid) for pid in third), "the newest one exits")
        finally:
            stop.set()
            t.join()
        assert errors == []  # no request failed across the reload and the scaling
        primary.kill("SIGTERM")
        assert primary.wait(timeout=30) == 0
    exits = [x for x in primary.stdout.read().decode().split("\n") if x.startswith("exit")]
    assert not [x for x in exits if x.endswith("SIGKILL")], exits  # nobody had to be killed


def test_workers_die_with_a_killed_primary(tmp_path):
    primary, port = start_primary(tmp_path)
    with reaped(primary):
        workers = both_workers(port)
        primary.kill("SIGKILL")
        assert primary.wait(timeout=30) == -signal.SIGKILL
        wait_until(lambda: not any(alive(pid) for pid in workers), "no orphan is left")


@pytest.mark.parametrize(
    "policy",
    [
        "shared",
        REUSEPORT,
    ],
)
def test_other_policies_serve_and_stop_gracefully(tmp_path, policy):
    primary, port = start_primary(tmp_path, POLICY=policy)
    with reaped(primary):
        pids = both_workers(port)  # both serve (so both stop gracefully below)
        pids |= {get(port) for _ in range(20)}
        primary.kill("SIGTERM")
        assert primary.wait(timeout=30) == 0
    out = primary.stdout.read().decode().split("\n")
    exits = sorted(line for line in out if line.startswith("exit "))
    assert exits == ["exit 1 0 None", "exit 2 0 None"]  # both stopped cleanly, not killed
    assert not any(alive(pid) for pid in pids)


CRASHING = textwrap.dedent(
    """
    import os
    from pyforkd import cluster

    if cluster.is_primary:
        cluster.setup_primary(restart_delay=0.01, max_restarts=3)
        cluster.on("exit", lambda w, code, sig: print("exit", w.id, code, flush=True))
        cluster.fork()
        cluster.run()
    else:
        cluster.listen(("127.0.0.1", int(os.environ["PORT"])))
        os._exit(1)  # it served, then died: an app error, restarted until it is a loop
    """
)


def test_a_crash_loop_stops_the_cluster(tmp_path):
    script = tmp_path / "crashing.py"
    script.write_text(CRASHING)
    env = dict(os.environ, PORT=str(free_port()))
    done = pyforkd.spawn_sync(PY, [str(script)], env=env, timeout=60)
    assert done.returncode == 1
    assert "workers keep dying young (4 in a row, the last exit 1): the cluster stops" in (
        done.stderr.decode()
    )
    assert done.stdout.decode().split("\n")[:-1] == [
        f"exit {i} 1" for i in range(1, 5)
    ]  # 3 restarts
