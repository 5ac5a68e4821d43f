"""ASGI apps on the cluster (uvicorn's protocols fed pyforkd's connections): every policy,
lifespan once per worker, keep-alive, stops that finish requests and say close, a failed
startup that is not restarted, the access log."""

from __future__ import annotations

import signal
import time

import pytest
from _helpers import posix_only_because, stop_gracefully
from test_wsgi import Client, get, log_text, served_by
from test_wsgi import start as start_app

pytest.importorskip("uvicorn", reason="ASGI apps run on uvicorn's protocols")


def start(tmp_path, *args, env=None, wait=True):
    p, port, log, _ = start_app(
        tmp_path, *args, app="asgiapp:app", wait=wait,
        env={"ASGI_TEST_DIR": str(tmp_path), **(env or {})},
    )  # fmt: skip
    return p, port, log


def stop(p, log):
    stop_gracefully(p)
    code = p.wait(30)
    text = log_text(log)
    log.close()
    assert code == 0, text
    return text


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["rr", "shared"])
def test_an_asgi_app_served_with_lifespan_per_worker(tmp_path, policy):
    p, port, log = start(tmp_path, "-i", "2", "--policy", policy, "--access-log", "-")
    c = Client(port)
    c.send(get("/") + get("/pid"))  # keep-alive, two at once
    r, body = c.response()
    assert (r.status, body) == (200, b"hello") and r.getheader("date")
    pid = int(c.response()[1])
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert c.response()[1] == b"abc"
    c.close()
    text = stop(p, log)
    starts = sorted(f.name for f in tmp_path.iterdir() if f.name.startswith("startup."))
    ends = sorted(f.name for f in tmp_path.iterdir() if f.name.startswith("shutdown."))
    assert len(starts) == 2 and [s.replace("startup", "shutdown") for s in starts] == ends
    assert f"startup.{pid}" in starts
    assert '"GET /pid HTTP/1.1" 200 ' in text  # the access log, combined format


@posix_only_because("a stop by SIGTERM mid-request")
@pytest.mark.slow
def test_a_stop_finishes_the_request_and_says_close(tmp_path):
    p, port, log = start(tmp_path)
    c = Client(port)
    c.send(get("/slow"))
    time.sleep(0.3)
    idle = Client(port)
    p.send_signal(signal.SIGTERM)
    r, body = c.response()
    # It is served, and its connection ends after it.  (uvicorn 0.39, the newest for
    # Python 3.9, does not write the close on a response already under way.)
    assert body == b"slow done" and r.getheader("connection") in ("close", None)
    assert c.closed() and idle.closed()
    assert p.wait(30) == 0, log_text(log)
    log.close()
    c.close()
    idle.close()


def test_an_idle_asgi_cluster_stops_at_once(tmp_path):
    p, _, log = start(tmp_path, "-i", "2")
    started = time.monotonic()
    stop(p, log)
    assert time.monotonic() - started < 2.0


def test_a_failed_startup_is_a_boot_error_not_restarted(tmp_path):
    p, _, log = start(tmp_path, env={"ASGI_TEST_FAIL_START": "1"}, wait=False)
    assert p.wait(30) == 1
    text = log_text(log)
    log.close()
    assert "no database" in text and "exit code 3" in text
    assert text.count("exit code 3") == 1  # not restarted


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [
        "/slow?30",
        pytest.param(
            "/block?30",
            marks=posix_only_because(
                "a loop-blocking request's 503 from the watchdog is lost there (seen under wine)"
            ),
        ),
    ],
)
def test_a_request_over_the_timeout_gets_503_and_the_worker_is_replaced(tmp_path, path):
    # An await that never ends, and a handler that blocks the loop: both are answered.
    p, port, log = start(tmp_path, "--timeout", "1", "--graceful-timeout", "1")
    try:
        c = Client(port)
        c.send(get("/pid"))
        first = int(c.response()[1])
        c.send(get(path))
        r, body = c.response()
        assert r.status == 503 and b"timeout" in body and c.closed()
        c.close()
        assert served_by(port, not_pid=first) != first  # a new worker took over
        assert f'ran over the timeout (1 s): "GET {path} HTTP/1.1"' in log_text(log)
    finally:
        stop(p, log)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["rr", "shared"])
def test_websockets_through_the_cluster(tmp_path, policy):
    client = pytest.importorskip("websockets.sync.client", reason="uvicorn's ws needs websockets")
    p, port, log = start(tmp_path, "-i", "2", "--policy", policy)
    try:
        with client.connect(f"ws://127.0.0.1:{port}/echo") as ws:
            ws.send("one")
            pid, text = ws.recv(timeout=30).split(":")
            assert text == "one"
            ws.send("two")
            assert ws.recv(timeout=30) == f"{pid}:two"
    finally:
        stop(p, log)
