"""The ``pyforkd`` command: ``pyforkd run examples/hello_http.py -i N`` serving curl, a
graceful stop on SIGTERM, and clear errors for bad arguments."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import time

import pytest
from _helpers import PY, alive, answering_pid, free_port, posix_only_because, reaped

import pyforkd

pytestmark = posix_only_because("stops by SIGTERM and SIGINT, and curl")
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_bad_arguments_are_explained():
    done = pyforkd.spawn_sync(PY, ["-m", "pyforkd", "run", EXAMPLE, "-i", "0"])
    assert (
        done.returncode == 2 and b"a worker count (or max) must be at least 1, not 0" in done.stderr
    )
    done = pyforkd.spawn_sync(PY, ["-m", "pyforkd", "run", "no/such/script.py"])
    assert done.returncode == 2 and b"no such script: no/such/script.py" in done.stderr
    done = pyforkd.spawn_sync(PY, ["-m", "pyforkd", "run", EXAMPLE, "--policy", "nope"])
    assert done.returncode == 2 and b"invalid choice: 'nope'" in done.stderr
    done = pyforkd.spawn_sync(PY, ["-m", "pyforkd", "run", "--help"])
    assert done.returncode == 0 and b"pyforkd run SCRIPT [-i N|max]" in done.stdout


def control_env(tmp_path):
    return dict(os.environ, PYFORKD_RUNTIME_DIR=str(tmp_path / "run"))


def pyforkd_cmd(tmp_path, *args):
    return pyforkd.spawn_sync(PY, ["-m", "pyforkd", *args], env=control_env(tmp_path), timeout=60)


def start_named(tmp_path, port, name="web", instances="2"):
    env = dict(control_env(tmp_path), PORT=str(port))
    primary = pyforkd.spawn(
        PY,
        ["-m", "pyforkd", "run", EXAMPLE, "-i", instances, "--name", name],
        env=env,
        stdio=["ignore", "pipe", "pipe"],
    )
    deadline = time.monotonic() + 30
    while pyforkd_cmd(tmp_path, "status", "--name", name).returncode != 0:
        assert time.monotonic() < deadline, "the control socket never came"
        time.sleep(0.05)
    return primary


def status_pids(tmp_path, name="web"):
    import json

    done = pyforkd_cmd(tmp_path, "status", "--name", name, "--json")
    assert done.returncode == 0, done.stderr
    return {w["pid"] for w in json.loads(done.stdout)["workers"]}


@pytest.mark.slow
def test_status_scale_reload_and_stop_through_the_control_socket(tmp_path):
    port = free_port()
    primary = start_named(tmp_path, port)
    with reaped(primary):
        sock = tmp_path / "run" / "web.sock"
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        assert oct((tmp_path / "run").stat().st_mode & 0o777) == "0o700"
        curl(port)
        table = pyforkd_cmd(tmp_path, "status").stdout.decode().splitlines()  # the only one
        assert table[0].startswith("web (pid ") and "2 worker(s)" in table[0]
        head = ["ID", "PID", "STATE", "UPTIME", "RESTARTS", "SERVED", "OPEN", "CPU%", "RSS"]
        assert table[1].split() == head
        assert [r.split()[0] for r in table[2:]] == ["1", "2"]
        assert sum(int(r.split()[5]) for r in table[2:]) == 1  # the one curl above
        first = status_pids(tmp_path)
        assert pyforkd_cmd(tmp_path, "scale", "3").returncode == 0
        deadline = time.monotonic() + 30
        while len(status_pids(tmp_path)) != 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert pyforkd_cmd(tmp_path, "reload", "--name", "web").returncode == 0
        while status_pids(tmp_path) & first or len(status_pids(tmp_path)) != 3:
            assert time.monotonic() < deadline + 30, "the reload never finished"
            time.sleep(0.05)
        again = pyforkd_cmd(tmp_path, "run", EXAMPLE, "--name", "web")
        assert again.returncode == 2 and b"a cluster named 'web' runs already" in again.stderr
        assert pyforkd_cmd(tmp_path, "stop").returncode == 0
        assert primary.wait(timeout=30) == 0
    assert not sock.exists()
    assert not any(alive(pid) for pid in first)
    gone = pyforkd_cmd(tmp_path, "status", "--name", "web")
    assert gone.returncode == 1 and b"no cluster named 'web' runs" in gone.stderr


SYSTEM_PY = "/usr/bin/python3"
CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(sys.argv[2].encode() + b"\\n")
except BrokenPipeError:
    pass  # refused before it read a thing: the answer is there all the same
print(s.recv(4096).decode().strip())
"""


@pytest.mark.slow
def test_the_control_socket_refuses_other_users_and_bad_requests():
    # Not under pytest's tmp_path: the other user must be able to reach the socket.
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="pyforkd-test-"))
    port = free_port()
    primary = start_named(tmp_path, port, instances="1")
    with reaped(primary):
        path = str(tmp_path / "run" / "web.sock")

        def ask(request, **options):
            # The system's python: the other user may not reach ours (under /root).
            done = pyforkd.spawn_sync(
                SYSTEM_PY, ["-c", CLIENT, path, request], timeout=60, **options
            )
            assert done.returncode == 0, done.stderr
            return done.stdout.decode()

        # Another user who could reach the socket (as if its modes were loosened by hand):
        # the primary checks the peer's uid itself.
        for p in (tmp_path, tmp_path / "run"):
            os.chmod(p, 0o711)
        os.chmod(path, 0o666)
        assert "uid 65534 may not control this cluster" in ask(
            '{"cmd": "stop"}', uid=65534, gid=65534
        )
        assert "malformed request" in ask("not json")
        assert "malformed request" in ask('["cmd"]')
        assert "unknown command 'explode'" in ask('{"cmd": "explode"}')
        assert "scale needs a worker count 1-1024, not 0" in ask('{"cmd": "scale", "n": 0}')
        assert '"ok": true' in ask('{"cmd": "status"}')  # the primary goes on as before
        curl(port)
        loose = pyforkd_cmd(tmp_path, "stop")  # our own client refuses a loosened directory
        assert loose.returncode == 1 and b"with mode 0700 (it is 0o711" in loose.stderr
        os.chmod(tmp_path / "run", 0o700)
        assert pyforkd_cmd(tmp_path, "stop").returncode == 0
        assert primary.wait(timeout=30) == 0
    err = primary.stderr.read().decode()
    shutil.rmtree(tmp_path)
    assert "control: refused a client of uid 65534" in err
    assert err.count("control: refused") == 5
