"""The minimal Python HTTP responder bench/bench_cluster.py runs behind pyforkd (any
policy): one selectors loop per worker, many connections at once, keep-alive unless the
client says ``Connection: close``.  At exit it prints how many requests it answered (the
benchmark's per-worker split)."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys

from pyforkd import cluster

BODY = b"hello\n"
KEEP = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
count = {"served": 0}
draining = {"on": False}


def report(*_: object) -> None:
    sys.stdout.write(f"served {count['served']}\n")
    sys.stdout.flush()
    os._exit(0)


def answer(conn: socket.socket, buf: bytes) -> tuple[bool, bytes]:
    """Read what the client sent and answer every whole request: (keep it?, what is left)."""
    while True:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True, buf  # wait for more
        except OSError:
            return False, b""
        if not data:
            return False, b""
        buf += data
        while b"\r\n\r\n" in buf:
            head, buf = buf.split(b"\r\n\r\n", 1)
            close = draining["on"] or b"onnection: close" in head or b"onnection: Close" in head
            count["served"] += 1
            try:
                conn.send(CLOSE if close else KEEP)  # small: the socket buffer takes it
            except OSError:
                return False, b""
            if close:
                return False, b""


def main() -> None:
    signal.signal(signal.SIGTERM, report)
    listener = cluster.listen(("127.0.0.1", int(os.environ["PORT"])))
    sel = selectors.DefaultSelector()
    sel.register(listener.fileno(), selectors.EVENT_READ, None)
    pending: dict[int, bytes] = {}  # open connections (registered): what they sent so far

    def done(conn: socket.socket) -> None:
        conn.close()
        if draining["on"] and not pending:
            report()

    while True:
        for key, _ in sel.select():
            if key.data is None:
                while True:
                    try:
                        conn, _ = listener.accept(timeout=0)
                    except TimeoutError:
                        break
                    except ConnectionError:  # the primary stopped us: finish what is open
                        sel.unregister(key.fileobj)
                        draining["on"] = True  # each open connection closes after its answer
                        if not pending:
                            report()
                        break
                    conn.setblocking(False)
                    # The request is usually there already: answer it before any selector
                    # work (a connection that closes then costs no registration at all).
                    keep, rest = answer(conn, b"")
                    if keep:
                        sel.register(conn, selectors.EVENT_READ, conn)
                        pending[conn.fileno()] = rest
                    else:
                        done(conn)
                continue
            conn = key.data
            fd = conn.fileno()
            keep, rest = answer(conn, pending[fd])
            if keep:
                pending[fd] = rest
            else:
                sel.unregister(conn)
                del pending[fd]
                done(conn)


if cluster.is_worker:
    main()
