"""What a worker accepts is a real TCP socket, under every policy: the right family, type
and proto, TCP_NODELAY set (asyncio and uvicorn look for it), so keep-alive replies written
in two pieces do not stall on Nagle and delayed ACKs."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import textwrap
import time

import pytest
from _helpers import REUSEPORT, free_port, posix_only_because

APP = textwrap.dedent(
    """
    import json, socket, sys
    from pyforkd import cluster

    port, policy = int(sys.argv[1]), sys.argv[2]
    if cluster.is_primary:
        cluster.setup_primary(policy=policy)
        cluster.fork()
        cluster.run()
    else:
        listener = cluster.listen(("127.0.0.1", port))
        print("listening", flush=True)
        while True:
            conn, _ = listener.accept()
            with conn:
                kind = [conn.family == socket.AF_INET, conn.type == socket.SOCK_STREAM,
                        conn.proto == socket.IPPROTO_TCP,
                        conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0]
                while conn.recv(64):  # one small request, one reply in two writes
                    conn.sendall(json.dumps(kind).encode().ljust(40))
                    conn.sendall(b"!")
    """
)


@posix_only_because("the primary stops on SIGTERM (terminate())")
@pytest.mark.slow
@pytest.mark.parametrize(
    "policy",
    [
        "rr",
        "shared",
        REUSEPORT,
    ],
)
def test_accepted_connections_are_tcp_sockets_with_nodelay(tmp_path, policy):
    script = tmp_path / "app.py"
    script.write_text(APP)
    port = free_port()
    primary = subprocess.Popen(
        [sys.executable, str(script), str(port), policy],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert primary.stdout.readline() == "listening\n"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            times = []
            for _ in range(30):
                start = time.perf_counter()
                c.sendall(b"ping")
                reply = b""
                while not reply.endswith(b"!"):
                    reply += c.recv(64)
                times.append(time.perf_counter() - start)
        assert json.loads(reply[:-1]) == [True, True, True, True]
        # A Nagle stall is a delayed ACK: 40 ms on Linux, every reply.  Without one a
        # reply takes well under a millisecond here; the median shrugs off a busy moment.
        assert statistics.median(times) < 0.02, times
    finally:
        primary.terminate()
        assert primary.wait(30) == 0, primary.stderr.read()


WSGIREF = textwrap.dedent(
    """
    import sys
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
    from pyforkd import cluster

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    class Server(cluster.ServerMixin, WSGIServer):
        pass

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["SERVER_NAME"].encode() + b" " + environ["SERVER_PORT"].encode()]

    port = int(sys.argv[1])
    if cluster.is_primary:
        cluster.fork()
        cluster.run()
    else:
        server = Server(("127.0.0.1", port), Quiet)
        server.set_app(app)
        print("listening", flush=True)
        server.serve_forever()
        server.server_close()
    """
)


@posix_only_because("the primary stops on SIGTERM (terminate())")
def test_wsgiref_s_server_takes_the_mixin(tmp_path):
    # wsgiref's server_bind sets up its base environ: the mixin lets it run.
    script = tmp_path / "app.py"
    script.write_text(WSGIREF)
    port = free_port()
    primary = subprocess.Popen(
        [sys.executable, str(script), str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert primary.stdout.readline() == "listening\n"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := c.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.0 200 OK") and reply.endswith(f" {port}".encode())
    finally:
        primary.terminate()
        assert primary.wait(30) == 0, primary.stderr.read()
