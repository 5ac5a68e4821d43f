"""The cluster end to end: a script run as a primary with forked workers that re-run it,
real HTTP through the round-robin policy, events in Node's order, a killed worker
restarted, a graceful stop on SIGTERM, and nothing left behind."""

from __future__ import annotations

import json
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
    posix_only_because,
    reaped,
    windows_only_because,
)

import pyforkd
from pyforkd import cluster

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


@posix_only_because("the cluster's forked workers, stopped by POSIX signals")
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


@posix_only_because("the cluster's forked workers, stopped by POSIX signals")
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


@posix_only_because("the cluster's forked workers, stopped by POSIX signals")
def test_workers_die_with_a_killed_primary(tmp_path):
    primary, port = start_primary(tmp_path)
    with reaped(primary):
        workers = both_workers(port)
        primary.kill("SIGKILL")
        assert primary.wait(timeout=30) == -signal.SIGKILL
        wait_until(lambda: not any(alive(pid) for pid in workers), "no orphan is left")


@posix_only_because("the cluster's forked workers, stopped by POSIX signals")
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


@posix_only_because("the cluster's forked workers")
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


# ---- every platform: children are this interpreter with inline code --------------------


HELLO = os.path.join(EXAMPLE, "hello_http.py")
SOCKETSERVER = os.path.join(EXAMPLE, "hello_socketserver.py")


@windows_only_because("the defaults there: no fork, no SO_REUSEPORT balancing")
def test_the_windows_defaults_and_what_is_refused():
    c = cluster.Cluster()
    assert c.settings["policy"] == "shared" and c.settings["start"] == "spawn"
    with pytest.raises(ValueError, match="no fork"):
        c.setup_primary(start="fork")
    with pytest.raises(ValueError, match="kernel balances"):
        c.setup_primary(policy="reuseport")


def test_spawned_workers_serve_a_shared_port_are_replaced_and_stop_gracefully():
    port = free_port()
    c = cluster.Cluster()
    c.setup_primary(exec=HELLO, graceful_timeout=30)
    events: list[tuple] = []
    c.on("listening", lambda w, address: events.append(("listening", w.id, address[1])))
    c.on("exit", lambda w, code, sig: events.append(("exit", w.id, code, sig)))
    first = [c.fork(env={"PORT": str(port)}) for _ in range(2)]
    runner = threading.Thread(target=c.run)
    runner.start()
    try:
        pids = {w.process.pid for w in first}
        for _ in range(10):
            assert answering_pid(http_get(port, wait=60)) in pids
        deadline = time.monotonic() + 60
        while sum(e[0] == "listening" for e in events) < 2:
            assert time.monotonic() < deadline, events
            time.sleep(0.05)
        assert sorted(e[1:] for e in events if e[0] == "listening") == [(1, port), (2, port)]

        first[0].process.kill()  # (TerminateProcess): the cluster restarts it
        deadline = time.monotonic() + 60
        while len(c.workers) < 2 or 3 not in c.workers:
            assert time.monotonic() < deadline, (events, c.workers)
            time.sleep(0.05)
        assert ("exit", 1, None, "SIGTERM") in events
        while sum(e[0] == "listening" for e in events) < 3:
            assert time.monotonic() < deadline, events
            time.sleep(0.05)
        now = {w.process.pid for w in c.workers.values()}
        for _ in range(10):
            assert answering_pid(http_get(port, wait=60)) in now
    finally:
        c.shutdown()
        runner.join(120)
    assert not runner.is_alive()
    assert c.error is None
    # Stopped gracefully: every worker finished on its own (exit code 0), none was killed.
    exits = {e[1]: e[2:] for e in events if e[0] == "exit"}
    assert exits == {1: (None, "SIGTERM"), 2: (0, None), 3: (0, None)}
    assert not any(alive(pid) for pid in now)


def test_pyforkd_run_serves_and_its_workers_die_with_it():
    port = free_port()
    primary = pyforkd.spawn(
        PY,
        ["-m", "pyforkd", "run", HELLO, "-i", "2"],
        env=dict(os.environ, PORT=str(port)),
        stdio=["ignore", "ignore", "pipe"],
    )
    try:
        pid = answering_pid(http_get(port, wait=60))
        assert pid != primary.pid and alive(pid)
    finally:
        primary.kill()  # its job object goes with it, and the workers in it
        primary.wait(timeout=60)
        primary.close()
    deadline = time.monotonic() + 60
    while alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} outlived its primary"
        time.sleep(0.05)


@pytest.mark.parametrize("script", [HELLO, SOCKETSERVER], ids=["accept", "socketserver"])
def test_round_robin_hands_connections_to_each_worker_in_turn(script):
    port = free_port()
    c = cluster.Cluster()
    c.setup_primary(exec=script, policy="rr", graceful_timeout=30)
    listening: list[int] = []
    c.on("listening", lambda w, address: listening.append(w.id))
    workers = [c.fork(env={"PORT": str(port)}) for _ in range(2)]
    runner = threading.Thread(target=c.run)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while len(listening) < 2:  # (a connection before then goes to the one listening)
            assert time.monotonic() < deadline, listening
            time.sleep(0.05)
        answers = [answering_pid(http_get(port, wait=60)) for _ in range(10)]
        pids = [w.process.pid for w in workers]
        assert set(answers) == set(pids)  # the dispatcher gave each of them work
        assert all(a != b for a, b in zip(answers, answers[1:]))  # in turn
    finally:
        c.shutdown()
        runner.join(120)
    assert not runner.is_alive()
    assert c.error is None
    assert all(w.process.returncode == 0 for w in workers)  # each finished on its own


@windows_only_because("the control channel is a named pipe there (POSIX: test_cli.py)")
def test_pyforkd_status_scale_reload_and_stop_over_the_control_pipe(tmp_path):
    port = free_port()
    env = dict(os.environ, PORT=str(port), PYFORKD_RUNTIME_DIR=str(tmp_path))
    name = f"wintest{port}"
    primary = pyforkd.spawn(
        PY,
        ["-m", "pyforkd", "run", HELLO, "-i", "1", "--name", name],
        env=env,
        stdio=["ignore", "ignore", "pipe"],
    )

    def ctl(*args: str) -> bytes:
        return pyforkd.exec_file(
            PY, ["-m", "pyforkd", *args, "--name", name], env=env, timeout=60
        ).stdout

    def workers() -> list[tuple[int, str]]:
        status = json.loads(ctl("status", "--json"))
        assert status["pid"] == primary.pid
        return sorted((w["id"], w["state"]) for w in status["workers"])

    def until(wanted: list[tuple[int, str]]) -> None:
        deadline = time.monotonic() + 60
        while (now := workers()) != wanted:
            assert time.monotonic() < deadline, now
            time.sleep(0.1)

    try:
        http_get(port, wait=60)
        assert (tmp_path / f"{name}.pipe").exists()  # what says it runs
        until([(1, "listening")])
        ctl("scale", "2")
        until([(1, "listening"), (2, "listening")])
        ctl("reload")  # new workers first, then the old ones drain and go
        until([(3, "listening"), (4, "listening")])
        assert answering_pid(http_get(port, wait=60)) != primary.pid
        ctl("stop")
        assert primary.wait(timeout=120) == 0
        assert not (tmp_path / f"{name}.pipe").exists()
        with pytest.raises(pyforkd.ExecError) as info:
            ctl("status")
        assert b"no cluster named" in info.value.stderr
    finally:
        if primary.returncode is None:
            primary.kill()
            primary.wait(timeout=60)
        primary.close()
