"""The primary's supervision, through the ``pyforkd run`` command: a hung worker killed and
replaced, a worker that never listens killed after the ready timeout, recycling after
max_requests and max_memory, least-connections, wait_ready gating a reload, UDP, spawn-
started workers, log prefixes, a port in use, a fast stop, and PID 1 reaping strays."""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import threading
import time

import pytest
from _helpers import (
    PY,
    alive,
    answering_pid,
    free_port,
    http_get,
    linux_only_because,
    posix_only_because,
    reaped,
    run_on_a_taken_port,
)

import pyforkd

pytestmark = posix_only_because("POSIX signals (stops by SIGTERM, hung workers SIGKILLed) and fork")

APP = textwrap.dedent(
    """
    import os, socket, sys, threading, time
    from pyforkd import cluster

    held = []

    def handle(conn):
        with conn:
            request = b""
            while b"\\r\\n\\r\\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            path = request.split(b" ")[1].decode()
            if path == "/hang":
                time.sleep(1000)
            if path == "/grow":
                held.append(b"x" * (200 << 20))
            body = f"{os.getpid()}\\n".encode()
            conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close"
                         b"\\r\\n\\r\\n%s" % (len(body), body))
            if path == "/hold":
                conn.recv(1)  # until the client closes

    print("worker up", flush=True)
    if os.environ.get("NEVER_LISTEN"):
        time.sleep(1000)
    if os.environ.get("UDP"):
        sock = cluster.listen(("127.0.0.1", int(os.environ["PORT"])), socket.SOCK_DGRAM)
        while True:
            data, peer = sock.recvfrom(100)
            sock.sendto(data + b" %d" % os.getpid(), peer)
    listener = cluster.listen(("127.0.0.1", int(os.environ["PORT"])))
    if os.environ.get("READY_FILE"):
        while not os.path.exists(os.environ["READY_FILE"]):
            time.sleep(0.01)
        cluster.ready()
    while True:
        try:
            conn, _ = listener.accept()
        except ConnectionError:
            break
        if os.environ.get("THREADS"):
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
        else:
            handle(conn)
    """
)


def start(tmp_path, *flags, **env):
    """``pyforkd run app.py FLAGS`` on a free port: ``(the primary, the port)``."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    port = free_port()
    env = dict(os.environ, PORT=str(port), PYFORKD_RUNTIME_DIR=str(tmp_path / "run"), **env)
    primary = pyforkd.spawn(
        PY,
        ["-m", "pyforkd", "run", str(script), *flags],
        env=env,
        stdio=["ignore", "pipe", "pipe"],
    )
    return primary, port


def get(port, path="/", wait=30.0):
    """The answering worker's pid (retrying, bounded, while nothing listens yet)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            return int(data.split(b"\r\n\r\n", 1)[1])
        except (ConnectionRefusedError, IndexError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def hang(port):
    """A request that hangs its worker (in a thread of ours: it ends when that worker dies)."""

    def run():
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                s.recv(4096)
            except OSError:
                pass  # reset by the kill: what the client of a hung worker sees

    t = threading.Thread(target=run)
    t.start()
    return t


def wait_until(condition, what, limit=30.0):
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def finish(primary, sig="SIGTERM", code=0):
    """Stop the primary; its (stdout, stderr)."""
    primary.kill(sig)
    assert primary.wait(timeout=60) == code
    return primary.stdout.read().decode(), primary.stderr.read().decode()


@pytest.mark.slow
def test_a_hung_worker_is_killed_and_replaced(tmp_path):
    primary, port = start(tmp_path, "-i", "1", "--timeout", "1")
    with reaped(primary):
        first = get(port)
        hanging = hang(port)
        wait_until(lambda: not alive(first), "the hung worker is killed")
        second = get(port)  # its replacement serves
        hanging.join()
        assert second != first
        out, err = finish(primary)
    assert f"worker 1 (pid {first}) hung: busy for over 1 s (the timeout): killed" in err
    assert out.count("[worker ") == 2 and "[worker 2] worker up" in out  # prefixed lines


def test_a_worker_that_never_listens_is_killed_after_the_ready_timeout(tmp_path):
    primary, _ = start(tmp_path, "-i", "1", "--ready-timeout", "0.5", NEVER_LISTEN="1")
    with reaped(primary):
        assert primary.wait(timeout=60) == 1  # nothing was restarted: the cluster ends
    err = primary.stderr.read().decode()
    assert "not ready after 0.5 s (it never listened): killed" in err
    assert "no workers are left" in err
    assert err.count("killed") == 1


def test_max_requests_recycles_workers_without_refusing_a_request(tmp_path):
    primary, port = start(tmp_path, "-i", "1", "--max-requests", "5")
    with reaped(primary):
        pids = [get(port)]
        for _ in range(20_000):  # (bounded) until the third worker answers
            pids.append(get(port, wait=0))  # every one is answered: get raises otherwise
            if len(set(pids)) == 3:
                break
        _out, err = finish(primary)
    assert len(set(pids)) == 3
    assert "connections (max_requests): replaced" in err
    assert not any(alive(pid) for pid in pids)


@pytest.mark.slow
def test_max_memory_replaces_a_worker_that_grew(tmp_path):
    primary, port = start(tmp_path, "-i", "1", "--max-memory", "100M")
    with reaped(primary):
        fat = get(port, "/grow")
        wait_until(lambda: not alive(fat), "the worker over max_memory is replaced")
        assert get(port) != fat
        _out, err = finish(primary)
    assert f"worker 1 (pid {fat}) uses 2" in err and "(max_memory 100 MiB): replaced" in err


@pytest.mark.parametrize("balance", ["least-connections", "round-robin"])
def test_least_connections_avoids_the_busier_worker(tmp_path, balance):
    primary, port = start(tmp_path, "-i", "2", "--balance", balance, THREADS="1")
    with reaped(primary):
        wait_until(lambda: len({get(port) for _ in range(4)}) == 2, "both workers serve")
        holds = []
        for _ in range(3):  # three connections kept open: 2 on one worker, 1 on the other
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            holds.append((s, int(s.recv(4096).split(b"\r\n\r\n", 1)[1])))
        counts = {pid: sum(1 for _, p in holds if p == pid) for _, pid in holds}
        assert sorted(counts.values()) == [1, 2]
        lighter = min(counts, key=counts.__getitem__)
        answers = [get(port) for _ in range(10)]
        for s, _ in holds:
            s.close()
        finish(primary)
    if balance == "least-connections":
        assert answers == [lighter] * 10
    else:
        assert set(answers) == set(counts)  # in turn, whatever each has open


@pytest.mark.slow
def test_wait_ready_keeps_the_old_worker_until_the_new_one_is_ready(tmp_path):
    ready = tmp_path / "ready"
    ready.touch()
    primary, port = start(tmp_path, "-i", "1", "--wait-ready", READY_FILE=str(ready))
    with reaped(primary):
        old = get(port)
        ready.unlink()
        primary.kill("SIGHUP")
        wait_until(lambda: "2" in _workers(tmp_path), "the new worker starts")
        time.sleep(0.5)  # the new one listens, but is not ready: the old one still serves
        assert {get(port) for _ in range(6)} == {old}
        ready.touch()
        wait_until(lambda: not alive(old), "the old worker drains once the new one is ready")
        assert get(port) != old
        finish(primary)


def _workers(tmp_path):
    done = pyforkd.spawn_sync(
        PY,
        ["-m", "pyforkd", "status", "--json"],
        env=dict(os.environ, PYFORKD_RUNTIME_DIR=str(tmp_path / "run")),
    )
    if done.returncode != 0:
        return ""
    import json

    return " ".join(str(w["id"]) for w in json.loads(done.stdout)["workers"])


def test_udp_is_shared_by_the_workers(tmp_path):
    primary, port = start(tmp_path, "-i", "2", UDP="1")
    with reaped(primary), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        pids = set()
        deadline = time.monotonic() + 30
        while len(pids) < 1 or (time.monotonic() < deadline and len(pids) < 2):
            s.sendto(b"ping", ("127.0.0.1", port))
            try:
                data, _ = s.recvfrom(100)
            except socket.timeout:  # (TimeoutError from Python 3.10 on)
                continue  # not bound yet
            word, pid = data.split()
            assert word == b"ping"
            pids.add(int(pid))
        _out, err = finish(primary)
    assert "ended" not in err  # the stop took them down as asked, no failure
    assert not any(alive(pid) for pid in pids)


def test_spawn_started_workers_serve(tmp_path):
    primary, port = start(tmp_path, "-i", "2", "--start", "spawn")
    with reaped(primary):
        wait_until(lambda: len({get(port) for _ in range(4)}) == 2, "both workers serve")
        pids = {get(port) for _ in range(4)}
        out, err = finish(primary)
    assert "Traceback" not in err and out.count("worker up") == 2
    assert not any(alive(pid) for pid in pids)


def test_a_port_in_use_is_named(tmp_path):
    code, err, port = run_on_a_taken_port(tmp_path, APP)
    assert code == 1
    assert f"EADDRINUSE (Address already in use): cannot listen on 127.0.0.1:{port}" in err
    assert err.count("Traceback") == 1  # reported once: a boot error is not restarted


def test_sigint_stops_at_once_where_sigterm_would_wait(tmp_path):
    primary, port = start(tmp_path, "-i", "1", "--graceful-timeout", "600")
    with reaped(primary):
        pid = get(port)
        hanging = hang(port)
        wait_until(lambda: _busy(tmp_path), "the request is in progress")
        primary.kill("SIGINT")  # a graceful stop would wait 600 s for /hang
        assert primary.wait(timeout=30) == 0
        hanging.join()
    assert not alive(pid)


def _busy(tmp_path):
    done = pyforkd.spawn_sync(
        PY,
        ["-m", "pyforkd", "status", "--json"],
        env=dict(os.environ, PYFORKD_RUNTIME_DIR=str(tmp_path / "run")),
    )
    return done.returncode == 0 and b'"open": 1' in done.stdout


STRAY = textwrap.dedent(
    """
    import os, sys, time
    from pyforkd import cluster

    if os.fork() == 0:          # a child whose own child outlives it: an orphan
        if os.fork() == 0:
            time.sleep(0.3)
            os._exit(0)
        os._exit(0)
    listener = cluster.listen(("127.0.0.1", int(os.environ["PORT"])))
    while True:
        try:
            conn, _ = listener.accept()
        except ConnectionError:
            break
        conn.close()
    """
)


@linux_only_because("PID namespaces (unshare --pid) and /proc/<pid>/task/<pid>/children")
def test_as_pid_1_the_primary_reaps_orphans(tmp_path):
    script = tmp_path / "stray.py"
    script.write_text(STRAY)
    env = dict(os.environ, PORT=str(free_port()), PYFORKD_RUNTIME_DIR=str(tmp_path / "run"))
    outer = pyforkd.spawn(
        "unshare",
        ["--pid", "--fork", "--mount-proc", PY, "-m", "pyforkd", "run", str(script)],
        env=env,
        stdio=["ignore", "pipe", "pipe"],
    )
    with reaped(outer):
        primary = _child_of(outer.pid)  # pid 1 inside, this pid outside
        wait_until(lambda: len(_children(primary)) >= 2, "the orphan reaches pid 1")
        wait_until(
            lambda: not _zombies(primary) and len(_children(primary)) == 1,
            "pid 1 reaps the orphan (only the worker is left)",
        )
        os.kill(primary, signal.SIGTERM)
        assert outer.wait(timeout=60) == 0


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def _zombies(pid):
    found = []
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rindex(b")") + 2 :].split()[0] == b"Z":
            found.append(child)
    return found


def _child_of(pid):
    kids: list[int] = []
    wait_until(lambda: bool(kids.extend(_children(pid)) or kids), "unshare's child starts")
    return kids[0]


@pytest.mark.slow
@pytest.mark.parametrize("example", ["hello_http.py", "hello_socketserver.py", "hello_asyncio.py"])
def test_an_idle_worker_is_not_taken_for_a_hung_one(tmp_path, example):
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", example)
    port = free_port()
    env = dict(os.environ, PORT=str(port), PYFORKD_RUNTIME_DIR=str(tmp_path / "run"))
    primary = pyforkd.spawn(
        PY,
        ["-m", "pyforkd", "run", script, "--timeout", "0.3"],
        env=env,
        stdio=["ignore", "pipe", "pipe"],
    )
    with reaped(primary):
        first = answering_pid(http_get(port))
        time.sleep(1.5)  # five timeouts of doing nothing after a request
        assert answering_pid(http_get(port)) == first
        _, err = finish(primary)
    assert "hung" not in err
