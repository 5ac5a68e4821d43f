"""A WSGI app for the server's tests: each path shows one behaviour."""

import os
import sys
import time


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/echo":  # the body, read as the app pleases
        how = environ.get("QUERY_STRING", "")
        stream = environ["wsgi.input"]
        if how == "lines":
            body = b"".join(stream)
        elif how == "small":
            parts = []
            while True:
                part = stream.read(3)
                if not part:
                    break
                parts.append(part)
            body = b"".join(parts)
        else:
            body = stream.read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    if path == "/env":
        keys = (
            "REQUEST_METHOD",
            "PATH_INFO",
            "QUERY_STRING",
            "SERVER_PROTOCOL",
            "CONTENT_TYPE",
            "HTTP_X_ONE",
            "SCRIPT_NAME",
            "REMOTE_ADDR",
        )
        text = "\n".join(f"{k}={environ.get(k, '')}" for k in keys)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [text.encode("latin-1")]
    if path == "/stream":  # no Content-Length: chunked (1.1) or close-delimited (1.0)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"part%d;" % i for i in range(3))
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(os.environ["WSGI_TEST_FILE"], "rb"))
    if path == "/short":  # says 10, gives 3
        start_response("200 OK", [("Content-Length", "10")])
        return [b"abc"]
    if path == "/long":  # says 3, gives 10
        start_response("200 OK", [("Content-Length", "3")])
        return [b"abcdefghij"]
    if path == "/boom":
        raise RuntimeError("boom in the app")
    if path == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or 1))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slow done"]
    if path == "/pid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    if path == "/write":  # the legacy write() callable
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written;")
        return [b"returned"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    sys.stdout.flush()
    return [b"hello"]
