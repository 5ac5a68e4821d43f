"""pyforkd's WSGI server, through raw sockets: keep-alive, pipelining, chunked and streamed
request bodies, 100-continue, sendfile, response framing, errors, limits, threads, stops."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _helpers import free_port, posix_only_because, stop_gracefully

pytest.importorskip("httptools", reason="the WSGI server parses with httptools")

APPS = Path(__file__).parent / "apps"


class _Shared:
    """What http.client takes for a socket: one buffered reader for every response."""

    def __init__(self, reader):
        self._reader = reader

    def makefile(self, mode, *args, **kwargs):
        return _Unclosed(self._reader)


class _Unclosed:
    """The shared reader, which a response's close() leaves open for the next one."""

    def __init__(self, reader):
        self._reader = reader

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def close(self):
        pass


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes):
        self.sock.sendall(data)

    def response(self):
        r = http.client.HTTPResponse(_Shared(self.reader))
        r.begin()
        body = r.read()
        return r, body

    def closed(self) -> bool:
        return self.reader.read(1) == b""

    def close(self):
        self.reader.close()
        self.sock.close()


def get(path, version="1.1", extra=""):
    return f"GET {path} HTTP/{version}\r\nHost: t\r\n{extra}\r\n".encode()


def start(tmp_path, *args, env=None, app="wsgiapp:app", wait=True):
    """``pyforkd run APP`` from tests/apps on a free port, its output in a log file."""
    port = free_port()
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(300_000))
    log = open(tmp_path / "server.log", "w+")  # noqa: SIM115  (closed by stop())
    p = subprocess.Popen(
        [sys.executable, "-m", "pyforkd", "run", app, "-b", f"127.0.0.1:{port}",
         "--name", f"web{port}", *args],
        cwd=APPS, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, WSGI_TEST_FILE=str(data), **(env or {})),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while wait:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert p.poll() is None and time.monotonic() < deadline, log_text(log)
            time.sleep(0.05)
    return p, port, log, data


def log_text(log):
    log.seek(0)
    return log.read()


def pid_of(port):
    """The pid of the worker that serves a request now."""
    c = Client(port)
    c.send(get("/pid"))
    pid = int(c.response()[1])
    c.close()
    return pid


def served_by(port, not_pid=None):
    """``pid_of(port)``, asked again (for up to 30 s) while it is ``not_pid``."""
    deadline = time.monotonic() + 30
    pid = pid_of(port)
    while pid == not_pid and time.monotonic() < deadline:
        time.sleep(0.1)
        pid = pid_of(port)
    return pid


def stop(p, log):
    stop_gracefully(p)
    assert p.wait(30) == 0, log_text(log)
    text = log_text(log)
    log.close()
    return text


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    p, port, log, data = start(tmp_path_factory.mktemp("wsgi"), "--access-log", "-")
    yield port, log, data
    stop(p, log)


def test_keep_alive_and_pipelining(server):
    port, *_ = server
    c = Client(port)
    c.send(get("/"))
    r, body = c.response()
    assert (r.status, body, r.getheader("Content-Length")) == (200, b"hello", "5")
    c.send(get("/env?a=1") + get("/pid") + get("/"))  # three at once
    bodies = [c.response()[1] for _ in range(3)]
    assert b"QUERY_STRING=a=1" in bodies[0] and bodies[1].isdigit() and bodies[2] == b"hello"
    c.close()


def test_request_bodies_chunked_streamed_and_with_100_continue(server):
    port, *_ = server
    c = Client(port)
    payload = os.urandom(200_000)
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    assert c.response()[1] == payload
    chunks = b"4\r\nab\nc\r\n3\r\nde\n\r\n0\r\n\r\n"
    c.send(b"POST /echo?lines HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    assert c.response()[1] == b"ab\ncde\n"
    c.send(b"POST /echo?small HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789")
    assert c.response()[1] == b"0123456789"
    # Expect: 100-continue: the server asks for the body once the app reads it.
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert c.reader.readline() == b"HTTP/1.1 100 Continue\r\n" and c.reader.readline() == b"\r\n"
    c.send(b"body")
    assert c.response()[1] == b"body"
    # A body the app never reads is read off: the connection goes on.
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nxxxxx" + get("/pid"))
    assert c.response()[1] == b"hello" and c.response()[1].isdigit()
    c.close()


def test_response_framing(server):
    port, _, data = server
    c = Client(port)
    c.send(get("/stream"))
    r, body = c.response()
    assert r.getheader("Transfer-Encoding") == "chunked" and body == b"part0;part1;part2;"
    c.send(get("/file"))
    r, body = c.response()
    assert r.getheader("Content-Length") == "300000" and body == data.read_bytes()
    c.send(b"HEAD /file HTTP/1.1\r\nHost: t\r\n\r\n")
    r = http.client.HTTPResponse(_Shared(c.reader), method="HEAD")
    r.begin()
    assert r.getheader("Content-Length") == "300000" and r.read() == b""
    c.send(get("/write"))
    assert c.response()[1] == b"written;returned"
    c.close()
    # HTTP/1.0 without a length: the body ends with the connection.
    c = Client(port)
    c.send(get("/stream", "1.0"))
    r, body = c.response()
    assert body == b"part0;part1;part2;" and r.getheader("Connection") == "close"
    c.close()
    # HTTP/1.0 asking for keep-alive gets it.
    c = Client(port)
    c.send(get("/", "1.0", "Connection: keep-alive\r\n"))
    r, _ = c.response()
    assert r.getheader("Connection") == "keep-alive"
    c.send(get("/", "1.0", "Connection: keep-alive\r\n"))
    assert c.response()[1] == b"hello"
    c.close()


def test_a_body_shorter_or_longer_than_its_length_ends_the_connection(server):
    port, *_ = server
    for path, want in (("/short", b"abc"), ("/long", b"abc")):
        c = Client(port)
        c.send(get(path))
        head = c.reader.read(4096)
        assert head.endswith(b"\r\n\r\n" + want) and c.closed()
        c.close()


def test_an_app_that_raises_gets_500_and_its_traceback_logged(server):
    port, log, _ = server
    c = Client(port)
    c.send(get("/boom?x=1"))
    r, body = c.response()
    assert r.status == 500 and body == b"Internal Server Error\n"
    assert r.getheader("Connection") == "close" and c.closed()
    c.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # (the traceback and the access log come apart)
        text = log_text(log)
        if "boom in the app" in text and '/boom?x=1 HTTP/1.1" 500' in text:
            break
        time.sleep(0.05)
    text = log_text(log)
    assert 'serving "GET /boom?x=1 HTTP/1.1"' in text and "RuntimeError: boom in the app" in text
    assert '"GET /boom?x=1 HTTP/1.1" 500 22' in text  # the access log's line


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    ],
    ids=["garbage", "bad-length", "big-header", "many-headers", "long-url"],
)
def test_malformed_and_oversized_requests_are_refused(server, raw, status):
    port, *_ = server
    c = Client(port)
    c.send(raw)
    r, _ = c.response()
    assert r.status == status and c.closed()
    c.close()
    c = Client(port)  # and the server goes on
    c.send(get("/"))
    assert c.response()[1] == b"hello"
    c.close()


def test_a_slow_client_does_not_hold_up_the_others(server):
    port, *_ = server
    slow = Client(port)
    slow.send(b"GET / HT")  # and nothing more for now
    fast = Client(port)
    fast.send(get("/"))
    assert fast.response()[1] == b"hello"
    slow.send(b"TP/1.1\r\nHost: t\r\n\r\n")
    assert slow.response()[1] == b"hello"
    fast.close()
    slow.close()


@pytest.mark.slow
def test_threads_serve_requests_at_once(tmp_path):
    p, port, log, _ = start(tmp_path, "--threads", "4")
    try:
        results = []

        def one():
            c = Client(port)
            c.send(get("/slow?1"))
            results.append(c.response()[1])
            c.close()

        started = time.monotonic()
        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [b"slow done"] * 4
        # Four 1 s requests on one worker with 4 threads: together, not one after another.
        assert time.monotonic() - started < 3.5
    finally:
        stop(p, log)


@posix_only_because("a stop by SIGTERM")
@pytest.mark.slow
def test_a_stop_finishes_the_request_in_flight_and_says_close(tmp_path):
    p, port, log, _ = start(tmp_path)
    c = Client(port)
    c.send(get("/slow?1"))
    time.sleep(0.3)  # (the request runs)
    idle = Client(port)  # a keep-alive connection with no request
    p.send_signal(signal.SIGTERM)
    r, body = c.response()
    assert body == b"slow done" and r.getheader("Connection") == "close"
    assert idle.closed()  # closed by the server once it has been idle a moment
    assert p.wait(30) == 0, log_text(log)
    c.close()
    idle.close()


@posix_only_because("a stop by SIGTERM")
def test_an_idle_server_stops_at_once(tmp_path):
    p, _, log, _ = start(tmp_path, "-i", "2")
    started = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0, log_text(log)
    assert time.monotonic() - started < 2.0


@posix_only_because("UNIX-socket addresses")
def test_a_unix_socket_bind(tmp_path):
    path = tmp_path / "web.sock"
    p = subprocess.Popen(
        [sys.executable, "-m", "pyforkd", "run", "wsgiapp:app", "-b", f"unix:{path}",
         "--name", "wsgiunix"],
        cwd=APPS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(get("/env"))
            data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 200 OK") and b"REQUEST_METHOD=GET" in data
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    assert not path.exists()


@pytest.mark.slow
@pytest.mark.parametrize("threads", ["1", "3"])
def test_a_request_over_the_timeout_gets_503_and_the_worker_is_replaced(tmp_path, threads):
    # (the stuck worker is killed a second after its stop: the test does not wait 10 s)
    p, port, log, _ = start(tmp_path, "--timeout", "1", "--threads", threads,
                            "--graceful-timeout", "1")  # fmt: skip
    try:
        c = Client(port)
        c.send(get("/pid"))
        first = int(c.response()[1])
        c.send(get("/slow?0.2"))  # under the limit: served as usual
        assert c.response()[1] == b"slow done"
        c.send(get("/slow?30"))
        r, body = c.response()
        assert r.status == 503 and b"timeout" in body
        assert r.getheader("Connection") == "close" and c.closed()
        c.close()
        assert served_by(port, not_pid=first) != first  # a new worker took over
        text = log_text(log)
        assert 'ran over the timeout (1 s): "GET /slow?30 HTTP/1.1"' in text
        assert "replaced" in text
    finally:
        stop(p, log)
