"""The standard library's http.server, run as a cluster.

    pyforkd run examples/hello_socketserver.py -i max   # then: curl http://127.0.0.1:3000/

``cluster.ThreadingHTTPServer`` is ``http.server.ThreadingHTTPServer`` taking its
connections from the primary (any policy): the handler below is plain ``http.server``
code.  ``serve_forever()`` returns when the primary stops giving this worker connections
(a reload, a scale-down, a stop); ``server_close()`` waits for the requests in progress.
PORT in the environment picks another port.
"""

from __future__ import annotations

import http.server
import os

from pyforkd import cluster


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:
        body = f"hello from worker {cluster.worker.id} (pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: one line per request costs more than the answer


if cluster.is_worker:
    address = ("127.0.0.1", int(os.environ.get("PORT", "3000")))
    with cluster.ThreadingHTTPServer(address, Hello) as server:
        server.serve_forever()
else:
    print("run me with: pyforkd run examples/hello_socketserver.py -i max")
