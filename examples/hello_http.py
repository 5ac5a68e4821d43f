"""A minimal HTTP responder, run as a cluster.

    pyforkd run examples/hello_http.py -i max      # then: curl http://127.0.0.1:3000/

Each worker runs this file: it listens through the primary (which hands it connections
round-robin) and answers every request with a greeting naming its process.  PORT in the
environment picks another port.
"""

from __future__ import annotations

import os

from pyforkd import cluster


def serve(listener: cluster.Listener) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except ConnectionError:
            return  # the primary stopped giving us connections: finish
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            if not request:
                continue
            body = f"hello from worker {cluster.worker.id} (pid {os.getpid()})\n".encode()
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            conn.sendall(head.encode() + body)


if cluster.is_worker:
    serve(cluster.listen(("127.0.0.1", int(os.environ.get("PORT", "3000")))))
else:
    print("run me with: pyforkd run examples/hello_http.py -i max")
