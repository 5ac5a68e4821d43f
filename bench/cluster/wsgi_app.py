"""The minimal WSGI app gunicorn serves in bench/bench_cluster.py."""

import os


def app(environ, start_response):
    body = f"hello from pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
