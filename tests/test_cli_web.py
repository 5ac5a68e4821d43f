"""``pyforkd run`` for web apps as operations use it: a config file (its own, or
pyproject.toml's [tool.pyforkd]), a log file with timestamps reopened on SIGUSR1,
``pyforkd status`` of every cluster, and socket activation by systemd."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from _helpers import free_port, posix_only_because
from test_wsgi import APPS, Client, get

pytest.importorskip("httptools", reason="the WSGI server parses with httptools")
pytestmark = posix_only_because("SIGUSR1 reopens the log; systemd socket activation")


def run(args, cwd=APPS, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "pyforkd", "run", *args], cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )  # fmt: skip


def wait_port(port, p):
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)


def finish(p):
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    return out, err


def test_a_config_file_by_the_flags_names(tmp_path):
    port = free_port()
    cfg = tmp_path / "pyforkd.toml"
    cfg.write_text(
        f'app = "wsgiapp:app"\nbind = ["127.0.0.1:{port}"]\ninstances = 2\n'
        f'threads = 2\naccess-log = "-"\nname = "cfg{port}"\n'
    )
    p = run(["-c", str(cfg)])
    wait_port(port, p)
    c = Client(port)
    c.send(get("/env"))
    assert b"REQUEST_METHOD=GET" in c.response()[1]
    c.close()
    out, err = finish(p)
    assert '"GET /env HTTP/1.1" 200' in out  # the access log, to stdout
    assert "2 worker(s) running wsgiapp:app" in err


def test_pyproject_s_tool_table_and_flags_that_win(tmp_path):
    shutil.copy(APPS / "wsgiapp.py", tmp_path)
    port, other = free_port(), free_port()
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "x"\n\n[tool.pyforkd]\napp = "wsgiapp:app"\n'
        f'bind = ["127.0.0.1:{other}"]\nname = "pp{port}"\n'
    )
    p = run(["-b", f"127.0.0.1:{port}"], cwd=tmp_path)  # the flag wins over the file
    wait_port(port, p)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", other), timeout=2).close()
    finish(p)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('app = "wsgiapp:app"\nnope = 1\n', "unknown setting 'nope'"),
        ('app = "wsgiapp:app"\ninstances = "x"\n', "instances = 'x'"),
        ('app = "wsgiapp:app"\npolicy = "fast"\n', "one of rr, shared, reuseport"),
        ('app = "wsgiapp:app"\nbind = ["nowhere"]\n', "HOST:PORT"),
        ("app = [", "not TOML"),
    ],
)
def test_a_bad_config_is_refused_naming_the_setting(tmp_path, text, said):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    p = run(["-c", str(cfg)])
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2 and said in err and str(cfg) in err


@pytest.mark.slow
def test_the_log_file_has_timestamps_and_reopens_on_sigusr1(tmp_path):
    port = free_port()
    log = tmp_path / "app.log"
    p = run(["wsgiapp:app", "-b", f"127.0.0.1:{port}", "--log-file", str(log),
             "--name", f"log{port}"])  # fmt: skip
    wait_port(port, p)
    c = Client(port)
    c.send(get("/boom?first"))
    c.response()
    c.close()
    time.sleep(0.5)
    first = log.read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} pyforkd: 1 worker", first, re.M)
    assert "GET /boom?first" in first  # a worker's stderr: through the primary, to the file
    log.rename(tmp_path / "app.log.1")  # logrotate
    p.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    c = Client(port)
    c.send(get("/boom?second"))
    c.response()
    c.close()
    time.sleep(0.5)
    finish(p)
    assert "GET /boom?second" in log.read_text()
    assert "second" not in (tmp_path / "app.log.1").read_text()


def test_status_lists_every_cluster(tmp_path):
    procs = []
    try:
        for name in ("one", "two"):
            port = free_port()
            p = run(["wsgiapp:app", "-b", f"127.0.0.1:{port}", "--name", f"st-{name}"])
            wait_port(port, p)
            procs.append(p)
        done = subprocess.run(
            [sys.executable, "-m", "pyforkd", "status"], capture_output=True, text=True,
            timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "st-one (pid" in done.stdout and "st-two (pid" in done.stdout
    finally:
        for p in procs:
            finish(p)


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
)
def test_socket_activation_by_systemd(tmp_path):
    # systemd-socket-activate binds, then starts pyforkd with the socket as descriptor 3.
    port = free_port()
    p = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}",
         *(["-E", "PYTHONPATH"] if "PYTHONPATH" in os.environ else []), sys.executable, "-m",
         "pyforkd", "run", "wsgiapp:app", "-b", "fd://3", "-i", "2", "--name", f"sd{port}"],
        cwd=APPS, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_port(port, p)  # (the first connection starts pyforkd)
        c = Client(port)
        c.send(get("/env"))
        assert b"REQUEST_METHOD=GET" in c.response()[1]
        c.close()
    finally:
        finish(p)


SERVE = """
import os, sys
from pyforkd import cluster

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]

if __name__ == "__main__":
    cluster.serve(app, bind=["127.0.0.1:%d" % int(sys.argv[1])], workers=2, threads=2)
"""


def test_cluster_serve_from_a_script(tmp_path):
    script = tmp_path / "serve.py"
    script.write_text(SERVE)
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, str(script), str(port)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_port(port, p)
    seen = set()
    for _ in range(20):
        c = Client(port)
        c.send(get("/"))
        seen.add(int(c.response()[1]))
        c.close()
    assert len(seen) == 2 and p.pid not in seen  # two workers serve, the primary does not
    finish(p)


def test_a_project_s_pyproject_without_a_pyforkd_table_is_left_alone(tmp_path):
    # (not even read as TOML: on Python 3.9 without tomli, or half-written, it is no matter)
    shutil.copy(APPS / "wsgiapp.py", tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project\nname = ")
    port = free_port()
    p = run(["wsgiapp:app", "-b", f"127.0.0.1:{port}", "--name", f"np{port}"], cwd=tmp_path)
    wait_port(port, p)
    finish(p)
