"""Hostile workers and control clients against a running cluster.

A worker that writes garbage on its channel, or floods a primary that has no ``message``
handler; a control client that nests, drips or never reads.  Each test asserts that the
primary and the other workers live on, that ``status`` still answers, and what the
primary holds afterwards (descriptors, memory).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import textwrap
import threading
import time

import pytest
from _helpers import (
    PY,
    ROOT_USER,
    alive,
    free_port,
    http_get,
    linux_only_because,
    open_fds,
    posix_only_because,
    reaped,
    rss_bytes,
    run_on_a_taken_port,
)

import pyforkd
from pyforkd.cluster import control as _control

pytestmark = posix_only_because("hostile clients on the AF_UNIX control socket; stops by SIGTERM")

APP = textwrap.dedent(
    """
    import os, sys, time
    import pyforkd
    from pyforkd import cluster

    me = cluster.worker.id
    for i in range(int(os.environ.get("FLOOD_FIRST", "0"))):
        cluster.worker.send(i)  # its listen request comes behind these, in the same reads
    leave = os.environ.get("ASK_AND_LEAVE")
    if me == 1 and leave and not os.path.exists(leave):
        # Its first run asks to listen, written by hand, and hangs up before the answer
        # (alive a while longer, so that the primary reads the request first).
        open(leave, "w").close()
        from pyforkd.cluster import _protocol as P
        address = ("127.0.0.1", int(os.environ["PORT"]))
        pyforkd.parent().send_control(P.encode(P.Listen(address, "tcp")))
        pyforkd.parent().close()
        time.sleep(1)
        os._exit(0)
    listener = cluster.listen(("127.0.0.1", int(os.environ["PORT"])))
    if me == 1 and os.environ.get("GARBAGE"):
        # The channel to the primary, written to without pyforkd's encoder.
        os.write(pyforkd.parent().fileno(), b"\\x00garbage garbage!!")
    if me == 1 and os.environ.get("SCRIBBLE"):
        # Every board memory this worker can reach, its own descriptors and the primary's:
        # each slot marked busy since boot, as a hung worker's would be.
        import mmap, struct
        found = []
        for where in ("/proc/self/fd", f"/proc/{os.getppid()}/fd"):
            for name in os.listdir(where):
                try:
                    if "pyforkd-board" not in os.readlink(f"{where}/{name}"):
                        continue
                    fd = os.open(f"{where}/{name}", os.O_RDWR)
                except OSError:
                    continue
                with mmap.mmap(fd, 64) as m:
                    m[:8] = struct.pack("<Q", 1)
                os.close(fd)
                found.append(f"{where}/{name}")
        with open("/proc/self/maps") as f:
            mapped = [line for line in f if "pyforkd-board" in line]
        with open(os.environ["SCRIBBLE"], "w") as f:
            f.write(f"{len(found)} {len(mapped)}")
    if me == 1 and os.environ.get("FLOOD"):
        for i in range(int(os.environ["FLOOD"])):
            cluster.worker.send({"i": i, "pad": "x" * 1000})
        open(os.environ["FLOOD_DONE"], "w").close()
    while True:
        try:
            conn, _ = listener.accept()
        except ConnectionError:
            break
        with conn:
            conn.recv(4096)
            body = f"{os.getpid()}\\n".encode()
            conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close"
                         b"\\r\\n\\r\\n%s" % (len(body), body))
    """
)


def status(env: dict[str, str], name: str) -> dict:
    done = pyforkd.spawn_sync(
        PY, ["-m", "pyforkd", "status", "--name", name, "--json"], env=env, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def start(tmp_path, workers: int, **extra: str):
    script = tmp_path / "app.py"
    script.write_text(APP)
    port = free_port()
    env = dict(os.environ, PORT=str(port), PYFORKD_RUNTIME_DIR=str(tmp_path / "run"), **extra)
    primary = pyforkd.spawn(
        PY,
        ["-m", "pyforkd", "run", str(script), "-i", str(workers), "--name", "h", "--timeout", "1"],
        env=env,
        stdio=["ignore", "pipe", "pipe"],
    )
    deadline = time.monotonic() + 30
    while True:
        done = pyforkd.spawn_sync(
            PY, ["-m", "pyforkd", "status", "--name", "h", "--json"], env=env, timeout=30
        )
        if done.returncode == 0 and len(json.loads(done.stdout)["workers"]) == workers:
            break
        assert time.monotonic() < deadline, "the cluster never came up"
        time.sleep(0.05)
    return primary, env, port


def test_a_worker_that_hangs_up_after_asking_to_listen_leaves_the_primary_serving(tmp_path):
    asked = tmp_path / "asked"
    primary, env, port = start(tmp_path, 2, ASK_AND_LEAVE=str(asked))
    with reaped(primary):
        assert asked.exists()  # the first worker 1 asked and left; a new one serves
        live = {w["pid"] for w in status(env, "h")["workers"]}
        assert int(http_get(port)) in live
        primary.kill("SIGTERM")
        assert primary.wait(timeout=30) == 0
    assert "Traceback" not in primary.stderr.read().decode()


def test_a_worker_writing_garbage_is_killed_and_the_others_live_on(tmp_path):
    primary, env, port = start(tmp_path, 3, GARBAGE="1")
    with reaped(primary):
        deadline = time.monotonic() + 30
        while True:
            rows = status(env, "h")["workers"]
            if rows and 1 not in {w["id"] for w in rows} and len(rows) == 3:
                break  # worker 1 is gone and was replaced
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        others = {w["pid"] for w in rows if w["id"] in (2, 3)}
        assert len(others) == 2 and all(alive(p) for p in others)
        live = {w["pid"] for w in status(env, "h")["workers"]}
        assert int(http_get(port)) in live
        primary.kill("SIGTERM")
        assert primary.wait(timeout=30) == 0
    err = primary.stderr.read().decode()
    assert "worker 1" in err and "malformed" in err
    assert "Traceback" not in err


@pytest.mark.slow
@linux_only_because("the worker looks for memory through /proc/<pid>/fd and /proc/self/maps")
def test_a_worker_reaches_no_board_slot_but_its_own(tmp_path):
    report = tmp_path / "scribbled"
    primary, env, _ = start(tmp_path, 3, SCRIBBLE=str(report))
    with reaped(primary):
        deadline = time.monotonic() + 30
        while not report.exists() or not report.read_text():
            assert time.monotonic() < deadline, "the hostile worker never reported"
            time.sleep(0.05)
        others = {w["pid"] for w in status(env, "h")["workers"] if w["id"] in (2, 3)}
        time.sleep(3)  # (test code: past the 1 s hang timeout, were their slots written)
        rows = status(env, "h")["workers"]
        assert others <= {w["pid"] for w in rows}, "a worker was killed through its slot"
        primary.kill("SIGTERM")
        assert primary.wait(timeout=30) == 0
    # Its own slot only: no descriptor (the mapping keeps none) and one mapping.
    assert report.read_text() == "0 1"
    assert "hung" not in primary.stderr.read().decode().replace("worker 1 ", "")


def test_a_request_behind_a_flood_of_messages_is_answered(tmp_path):
    primary, env, port = start(tmp_path, 1, FLOOD_FIRST="30000")
    with reaped(primary):
        deadline = time.monotonic() + 30
        while True:
            try:
                pid = int(http_get(port))
                break
            except OSError:
                assert time.monotonic() < deadline, "the worker never got to listen"
                time.sleep(0.05)
        assert pid in {w["pid"] for w in status(env, "h")["workers"]}
        primary.kill("SIGTERM")
        assert primary.wait(timeout=30) == 0


@pytest.mark.slow
def test_a_primary_without_a_message_handler_drops_a_flood(tmp_path):
    done = tmp_path / "flooded"
    primary, env, _ = start(tmp_path, 2, FLOOD="60000", FLOOD_DONE=str(done))
    with reaped(primary):
        before = rss_bytes(primary.pid)
        deadline = time.monotonic() + 60
        while not done.exists():
            assert time.monotonic() < deadline, "the worker never finished its flood"
            time.sleep(0.1)
        assert status(env, "h")["workers"]  # served meanwhile
        grown = rss_bytes(primary.pid) - before
        # 60,000 messages of 1 KiB: kept, they would be ~100 MiB of dicts.
        assert grown < 24 << 20, f"the primary grew by {grown >> 20} MiB"
        primary.kill("SIGTERM")
        assert primary.wait(timeout=30) == 0
    err = primary.stderr.read().decode()
    assert "no 'message' handler" in err
    assert err.count("no 'message' handler") <= 5  # rate-limited


# ---- the control socket, served in this process over a stand-in cluster ----------------------


class _Cluster:
    settings = {"policy": "rr"}  # noqa: RUF012

    def status(self):
        return [{"id": 1}]


@pytest.fixture
def control(monkeypatch, tmp_path):
    monkeypatch.setenv("PYFORKD_RUNTIME_DIR", str(tmp_path / "run"))
    before = open_fds()
    server = _control.ControlServer(_Cluster(), "hostile")
    server.start()
    yield server
    server.close()
    assert open_fds() == before


def ask(path: str, data: bytes, timeout: float = 10) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data)
        got = b""
        while not got.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return json.loads(got)


def test_a_deeply_nested_request_is_refused_and_the_server_lives_on(control, capfd):
    answer = ask(control.path, b"[" * 32000 + b"]" * 32000 + b"\n")
    assert answer["ok"] is False and "malformed" in answer["error"]
    nested = ask(control.path, b'{"cmd": "status", "x": ' + b"[" * 30000 + b"]" * 30000 + b"}\n")
    assert nested["ok"] is False
    assert ask(control.path, b'{"cmd": "status"}\n')["ok"] is True


@pytest.mark.slow
def test_a_dripping_client_holds_up_no_other(control, capfd):
    drip = socket.socket(socket.AF_UNIX)
    drip.connect(control.path)
    stop = threading.Event()

    def dripping():
        try:
            while not stop.wait(0.2):
                drip.send(b" ")
        except OSError:
            pass  # dropped by the server: what it should do in the end

    t = threading.Thread(target=dripping)
    t.start()
    try:
        time.sleep(0.3)  # (test code: the dripper is being served first)
        assert ask(control.path, b'{"cmd": "status"}\n', timeout=2)["ok"] is True
        # The dripper is dropped after the client deadline, whatever it keeps sending.
        drip.settimeout(20)
        assert drip.recv(100) == b""
    finally:
        stop.set()
        t.join()
        drip.close()
    assert "took over" in capfd.readouterr().err


def test_clients_past_the_limit_are_refused_and_the_rest_served(control, capfd):
    idle = []
    try:
        for _ in range(40):
            s = socket.socket(socket.AF_UNIX)
            s.connect(control.path)
            idle.append(s)
        time.sleep(0.3)  # (test code: let the server take them)
        for s in idle:
            s.close()
        idle.clear()
        deadline = time.monotonic() + 10  # (until the server has seen them go)
        while True:
            try:
                if ask(control.path, b'{"cmd": "status"}\n')["ok"]:
                    break
            except ConnectionResetError:
                pass  # refused while the 32 slots were still taken
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        for s in idle:
            s.close()
    assert "are being served" in capfd.readouterr().err


def test_a_request_over_64_kib_is_refused(control, capfd):
    answer = ask(control.path, b'{"cmd": "status", "x": "' + b"y" * (1 << 17) + b'"}\n')
    assert answer == {"ok": False, "error": "request too large"}


# ---- the runtime directory ---------------------------------------------------------------------

SQUATTED = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("control", sys.argv[1])
control = importlib.util.module_from_spec(spec)
spec.loader.exec_module(control)
print(control.runtime_dir(create=True))
"""


@pytest.mark.skipif(not ROOT_USER, reason="squatting as another user needs root")
def test_another_user_squatting_the_tmp_directory_does_not_stop_a_cluster():
    victim = 65534  # nobody
    squat = f"/tmp/pyforkd-{victim}"
    if os.path.exists(squat):
        pytest.skip(f"{squat} exists already on this machine")
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyforkd-squat-"))
    try:
        os.mkdir(squat, 0o700)  # root's, not the victim's
        home = work / "home"
        home.mkdir()
        os.chown(home, victim, victim)
        os.chmod(work, 0o755)
        module = work / "control.py"
        shutil.copy(_control.__file__, module)
        env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR",)}
        env.pop("PYFORKD_RUNTIME_DIR", None)
        env["HOME"] = str(home)
        done = pyforkd.spawn_sync(
            "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
            ["-c", SQUATTED, str(module)],
            uid=victim,
            gid=victim,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        got = done.stdout.decode().strip()
        assert got == str(home / ".cache" / "pyforkd" / "run")
        assert oct(os.stat(got).st_mode & 0o777) == "0o700"
    finally:
        os.rmdir(squat)
        shutil.rmtree(work)


HTTP_APP = """
import http.server, os
from pyforkd import cluster

server = cluster.ThreadingHTTPServer(
    ("127.0.0.1", int(os.environ["PORT"])), http.server.BaseHTTPRequestHandler
)
server.serve_forever()
"""


def test_a_worker_server_that_cannot_listen_names_the_real_error(tmp_path):
    code, err, port = run_on_a_taken_port(tmp_path, HTTP_APP)
    assert code == 1
    assert f"EADDRINUSE (Address already in use): cannot listen on 127.0.0.1:{port}" in err
    assert "AttributeError" not in err


EVERY_MESSAGE = """
import sys, time
from pyforkd import cluster

N = int(sys.argv[1])
if cluster.is_primary:
    got = []

    def on_message(worker, msg):
        got.append(msg)
        if len(got) == 1:
            time.sleep(0.5)  # the rest piles up meanwhile: more than one turn takes
        if len(got) == N:
            print("all", got == list(range(N)), flush=True)
            cluster.shutdown()

    cluster.on("message", on_message)
    cluster.fork()
    cluster.run()
else:
    for i in range(N):
        cluster.worker.send(i)
    time.sleep(60)  # quiet from here on: nothing else wakes the primary
"""


def test_every_message_of_a_burst_reaches_the_handler(tmp_path):
    script = tmp_path / "primary.py"
    script.write_text(EVERY_MESSAGE)
    done = pyforkd.spawn_sync(PY, [str(script), "20000"], timeout=60)
    assert done.stdout.decode().split() == ["all", "True"], done.stderr.decode()[-2000:]
