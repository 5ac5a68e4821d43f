"""The cluster on Windows: spawned workers (start="spawn", the only way there) that share
the primary's listening socket (policy "shared", the default there) or take connections
from the primary's C dispatcher over their pipes ("rr"), real HTTP through them, a killed
worker replaced, a graceful stop that lets every worker finish, and `pyforkd run` whose
workers die with it."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import pytest
from _helpers import answering_pid, free_port, http_get
from _winhelpers import alive

import pyforkd
from pyforkd import cluster

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELLO = os.path.join(ROOT, "examples", "hello_http.py")
SOCKETSERVER = os.path.join(ROOT, "examples", "hello_socketserver.py")


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
