"""systemd's side of a cluster, played by the test: socket activation (a listening socket
passed as fd 3 with LISTEN_FDS/LISTEN_PID, served though its port is taken) and sd_notify
(READY=1 once the workers listen, RELOADING=1 then READY=1 around a reload, STOPPING=1)."""

from __future__ import annotations

import os
import socket
import time

from _helpers import PY, answering_pid, http_get, posix_only_because, reaped

import pyforkd

pytestmark = posix_only_because("systemd")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "hello_http.py")


def notices(sock, until, limit=30.0):
    """Datagrams from the primary until one holds ``until`` (bounded)."""
    got = []
    deadline = time.monotonic() + limit
    while not any(until in g for g in got):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            raise AssertionError(f"no {until!r} came; got {got}") from None
    return got


def test_socket_activation_and_notify(tmp_path):
    listening = socket.create_server(("127.0.0.1", 0))  # the port is ours: only fd 3 serves
    port = listening.getsockname()[1]
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    env = dict(
        os.environ,
        PORT=str(port),
        LISTEN_FDS="1",
        NOTIFY_SOCKET=str(tmp_path / "notify"),
        PYFORKD_RUNTIME_DIR=str(tmp_path / "run"),
    )
    # LISTEN_PID must be the primary's pid: the shell sets it to its own, then execs.
    cmd = f'LISTEN_PID=$$ exec "{PY}" -m pyforkd run "{EXAMPLE}" -i 2'
    primary = pyforkd.spawn("sh", ["-c", cmd], env=env, stdio=["ignore", "pipe", "pipe", listening])
    listening.close()
    with reaped(primary), notify:
        first = notices(notify, "READY=1")
        assert any("STATUS=2 of 2 workers ready" in g for g in first)
        pids = {answering_pid(http_get(port)) for _ in range(6)}
        assert len(pids) == 2  # both workers serve the activated socket
        primary.kill("SIGHUP")
        reload = notices(notify, "READY=1")
        assert reload[0].startswith("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=")
        primary.kill("SIGTERM")
        assert "STOPPING=1" in notices(notify, "STOPPING=1")[-1]
        assert primary.wait(timeout=30) == 0
    err = primary.stderr.read().decode()
    assert "Traceback" not in err and "in use" not in err
