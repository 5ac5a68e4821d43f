"""A WSGI server for cluster workers: HTTP/1.1 parsed by llhttp (httptools).

Keep-alive and pipelining, chunked request bodies, a streaming ``wsgi.input`` (with
``Expect: 100-continue``), ``wsgi.file_wrapper`` over ``sendfile``, and the framing of
each response decided here: the app's ``Content-Length`` when it gives one (a body that
falls short closes the connection), a computed one for a single-piece body, else chunked
(HTTP/1.1) or close-delimited (HTTP/1.0).  One thread serves, or ``threads`` do: a
selector watches the listener and the idle connections; a connection with a request is
served by one thread at a time.  A request that raises is answered 500 and logged with
its traceback (logger ``pyforkd.wsgi``).  When the primary stops the worker, it stops
accepting, answers each connection's next request with ``Connection: close``, and returns
once every connection is done.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import logging
import os
import selectors
import socket
import stat
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import ChannelClosedError
from . import _worker_side
from ._log import access_line

httptools: Any
try:
    import httptools
except ImportError:  # (said when a server is made)
    httptools = None

__all__ = ["FileWrapper", "WSGIServer"]

log = logging.getLogger("pyforkd.wsgi")

MAX_HEAD_BYTES = 64 * 1024  # request line and headers, together
MAX_HEADERS = 100
DRAIN_BYTES = 1 << 20  # an unread request body up to this is read off; more closes
READ_SIZE = 64 * 1024
IO_TIMEOUT = 60.0  # a client that neither sends nor takes for this long is dropped
KEEPALIVE = 5.0  # an idle keep-alive connection is closed after this
STOP_IDLE = 0.5  # while stopping: a connection idle this long is closed
# RFC 9110 hop-by-hop headers: the server's to write (an app's Connection: close counts).
_HOP = frozenset(
    b"connection keep-alive proxy-authenticate proxy-authorization te trailers "
    b"transfer-encoding upgrade".split()
)
_NO_BODY = frozenset({204, 304})


def _reason(status: str) -> tuple[int, bytes]:
    """``"200 OK"`` as (200, b"200 OK"); ValueError for anything else."""
    code = int(status[:3]) if len(status) >= 3 and status[:3].isdigit() else -1
    if code < 100 or (len(status) > 3 and status[3] != " "):
        raise ValueError(f"a WSGI status is '200 OK', not {status!r}")
    return code, status.encode("latin-1")


class _Date:
    """The ``Date`` header, made once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = (
                b"Date: "
                + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
                + b"\r\n"
            )
        return self._value


_date = _Date()


class _BadRequest(Exception):
    def __init__(self, status: bytes, text: str) -> None:
        super().__init__(text)
        self.status = status


class _Request:
    __slots__ = (
        "body",
        "complete",
        "continue_sent",
        "expects_continue",
        "head_bytes",
        "head_done",
        "headers",
        "keep_alive",
        "method",
        "upgrade",
        "url",
        "version",
    )  # fmt: skip

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: collections.deque[bytes] = collections.deque()
        self.complete = False
        self.head_done = False
        self.head_bytes = 0
        self.continue_sent = False
        self.expects_continue = False
        self.upgrade = False
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True


def _line(r: _Request) -> str:
    """The request line, for the log."""
    return f"{r.method.decode('latin-1')} {r.url.decode('latin-1')} HTTP/{r.version}"


class _Conn:
    """One client connection: its parser, the requests parsed so far, its socket."""

    def __init__(self, sock: socket.socket, peer: Any) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.peer = peer if isinstance(peer, tuple) else ("", 0)
        self.requests: collections.deque[_Request] = collections.deque()
        self.current: _Request | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.eof = False
        self.idle_since = time.monotonic()
        self.busy = False
        self.watched = False  # in the server's selector

    # -- httptools callbacks (during feed) --
    def on_message_begin(self) -> None:
        self.current = _Request()
        self.requests.append(self.current)

    def on_url(self, url: bytes) -> None:
        r = self.current
        assert r is not None
        r.url += url
        r.head_bytes += len(url)
        if r.head_bytes > MAX_HEAD_BYTES:
            raise _BadRequest(b"414 URI Too Long", "the request line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.current
        assert r is not None
        r.head_bytes += len(name) + len(value) + 4
        if r.head_bytes > MAX_HEAD_BYTES or len(r.headers) >= MAX_HEADERS:
            raise _BadRequest(
                b"431 Request Header Fields Too Large", "the request's headers are too large"
            )
        r.headers.append((name, value))

    def on_headers_complete(self) -> None:
        r = self.current
        assert r is not None
        p = self.parser
        r.method = p.get_method()
        r.version = p.get_http_version()
        r.keep_alive = p.should_keep_alive()
        r.head_done = True
        for name, value in r.headers:
            if len(name) == 6 and name.lower() == b"expect":
                r.expects_continue = value.lower() == b"100-continue"

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body.append(body)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True

    # -- reading --
    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An upgrade (websocket) is not WSGI's: the request is served as it is, and
            # the connection ends after it.
            r = self.current
            if r is not None:
                r.upgrade = r.complete = r.head_done = True
                r.keep_alive = False
        except httptools.HttpParserError as exc:
            ours = exc.__context__  # (what a callback of ours raised, wrapped by httptools)
            if isinstance(ours, _BadRequest):
                raise ours from None
            raise _BadRequest(b"400 Bad Request", f"a malformed request: {exc}") from None

    def read_some(self, wait: bool) -> bool:
        """Read what the socket has (waiting for it with ``wait``); False at its end."""
        while True:
            try:
                data = self.sock.recv(READ_SIZE)
            except BlockingIOError:
                if not wait:
                    return True
                _wait(self.sock, selectors.EVENT_READ)
                continue
            except (ConnectionError, TimeoutError):
                data = b""
            if not data:
                self.eof = True
                return False
            self.feed(data)
            return True

    def send(self, data: Any) -> None:
        """All of ``data``, waiting while the client's window is full."""
        view = memoryview(data)
        sock = self.sock
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                _wait(sock, selectors.EVENT_WRITE)
                continue
            view = view[sent:]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _wait(sock: socket.socket, event: int) -> None:
    """Until ``sock`` is ready for ``event``; ``TimeoutError`` after IO_TIMEOUT."""
    with selectors.DefaultSelector() as sel:
        sel.register(sock, event)
        if not sel.select(IO_TIMEOUT):
            raise TimeoutError("the client neither sent nor took anything for 60 s")


class _Input(io.RawIOBase):
    """``wsgi.input``: the request body, read from the socket as the app asks."""

    def __init__(self, conn: _Conn, request: _Request) -> None:
        super().__init__()
        self._conn = conn
        self._r = request
        self._pending = b""

    def readable(self) -> bool:
        return True

    def _more(self) -> bool:
        """One more piece of the body into _pending; False at its end."""
        r = self._r
        while not r.body:
            if r.complete or self._conn.eof:
                return False
            if r.expects_continue and not r.continue_sent:
                r.continue_sent = True
                self._conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._conn.read_some(wait=True)
        self._pending += r.body.popleft()
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._more():
                pass
            out, self._pending = self._pending, b""
            return out
        while len(self._pending) < size and self._more():
            pass
        out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        while True:
            at = self._pending.find(b"\n")
            if at >= 0 and (limit < 0 or at < limit):
                return self.read(at + 1)
            if 0 <= limit <= len(self._pending) or not self._more():
                return self.read(limit)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def drain(self, budget: int) -> bool:
        """Read off what the app left of the body; False when more than ``budget`` is."""
        r = self._r
        left = budget - len(self._pending)
        self._pending = b""
        while left >= 0:
            while r.body:
                left -= len(r.body.popleft())
            if r.complete:
                return left >= 0
            if self._conn.eof or not self._conn.read_some(wait=True):
                return False
        return False


class FileWrapper:
    """``wsgi.file_wrapper``: a file sent with ``sendfile`` when it is a regular one."""

    def __init__(self, filelike: Any, blksize: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        while True:
            data = self.filelike.read(self.blksize)
            if not data:
                return
            yield data


class _Response:
    """One response: status and headers kept until the first byte of the body."""

    __slots__ = (
        "chunked",
        "code",
        "conn",
        "exc",
        "head_only",
        "headers",
        "keep",
        "length",
        "lock",
        "request",
        "sent",
        "server",
        "status",
        "timed_out",
        "written",
    )  # fmt: skip

    def __init__(
        self, conn: _Conn, request: _Request, keep: bool, server: Any = None, lock: Any = None
    ) -> None:
        self.server = server  # (a stop while the app runs: this response says close)
        self.lock = lock  # with a timeout: the watchdog may answer first (see _head)
        self.timed_out = False
        self.conn = conn
        self.request = request
        self.status = b""
        self.code = 0
        self.headers: list[tuple[str, str]] = []
        self.length: int | None = None  # the app's Content-Length
        self.sent = False
        self.chunked = False
        self.keep = keep
        self.written = 0
        self.head_only = request.method == b"HEAD"
        self.exc: Any = None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.code:
            raise AssertionError("start_response() called twice without exc_info")
        if not isinstance(status, str):
            raise TypeError(f"a WSGI status is a str, not {type(status).__name__}")
        self.code, self.status = _reason(status)
        self.length = None
        kept = []
        for name, value in headers:
            if not (isinstance(name, str) and isinstance(value, str)):
                raise TypeError(f"WSGI headers are (str, str) pairs, not {(name, value)!r}")
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ValueError(f"a header cannot hold a line break: {name!r}")
            low = name.lower()
            if low == "content-length":
                self.length = int(value)
                if self.length < 0:
                    raise ValueError(f"a negative Content-Length: {value!r}")
                continue
            if low.encode() in _HOP:
                if low == "connection" and "close" in value.lower():
                    self.keep = False
                continue
            kept.append((name, value))
        self.headers = kept
        return self.write

    def _head(self, body_length: int | None) -> bytes:
        """The status line and headers, now that the framing is known."""
        r = self.request
        if self.server is not None and self.server.stopping:
            self.keep = False
        if self.length is None and body_length is not None:
            self.length = body_length
        bodiless = self.code in _NO_BODY or self.code < 200
        if bodiless:
            self.length = None
        elif self.length is None:
            if r.version == "1.1":
                self.chunked = not self.head_only
            else:
                self.keep = False  # HTTP/1.0: the end of the body is the connection's end
        out = [b"HTTP/1.1 ", self.status, b"\r\n", _date.get()]
        for name, value in self.headers:
            out += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        if self.length is not None:
            out += [b"Content-Length: ", str(self.length).encode(), b"\r\n"]
        elif self.chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        if not self.keep:
            out.append(b"Connection: close\r\n")
        elif r.version == "1.0":
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        if self.lock is None:
            self.sent = True
        else:
            with self.lock:
                if self.timed_out:  # the watchdog answered 503 and closed the connection
                    raise TimeoutError("the request ran over the timeout")
                self.sent = True
        return b"".join(out)

    def write(self, data: bytes) -> None:
        """The body, a piece at a time (the legacy ``write()`` of start_response too)."""
        if not self.code:
            raise AssertionError("write() before start_response()")
        head = b"" if self.sent else self._head(None)
        if self.head_only or self.code in _NO_BODY:
            if head:
                self.conn.send(head)
            return
        if self.length is not None:
            room = self.length - self.written
            if len(data) > room:
                data = data[:room]  # (more than the app's Content-Length: not sent)
                self.keep = False
        self.written += len(data)
        if self.chunked:
            if data:
                self.conn.send(b"%s%x\r\n%s\r\n" % (head, len(data), data))
            elif head:
                self.conn.send(head)
        elif head or data:
            self.conn.send(head + data if head else data)

    def sendfile(self, f: Any) -> bool:
        """Send the rest of a regular file with ``os.sendfile``; False when it is not one."""
        try:
            fd = f.fileno()
            st = os.fstat(fd)
            offset = f.tell()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return False
        if not stat.S_ISREG(st.st_mode) or self.chunked:
            return False
        size = max(0, st.st_size - offset)
        if self.length is None:
            self.length = size
        if not hasattr(os, "sendfile"):
            return False  # (Windows: the body goes by reads, its length known all the same)
        count = min(size, self.length - self.written)
        if not self.sent:
            self.conn.send(self._head(None))
        if self.head_only:
            return True
        sock = self.conn.sock
        while count > 0:
            try:
                sent = os.sendfile(sock.fileno(), fd, offset, count)
            except BlockingIOError:
                _wait(sock, selectors.EVENT_WRITE)
                continue
            if sent == 0:
                break  # the file shrank
            offset += sent
            count -= sent
            self.written += sent
        return True

    def finish(self) -> None:
        """The end of the body; keep is False when the connection cannot carry another."""
        if not self.sent:
            self.conn.send(self._head(0 if self.length is None else None))
        if self.chunked:
            self.conn.send(b"0\r\n\r\n")
        elif (
            self.length is not None
            and self.written < self.length
            and not (self.head_only or self.code in _NO_BODY)
        ):
            self.keep = False  # shorter than it said: the client sees it end


class WSGIServer:
    """Serve ``app`` on a cluster ``Listener`` (or several) in this worker.

    ``threads``: how many requests run at once (1: in this thread).  :meth:`serve` returns
    when the primary stops the worker (or :meth:`stop` is called) and every connection is
    done.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        listeners: Iterable[Any],
        threads: int = 1,
        *,
        script_name: str = "",
        access_log: Callable[[str], None] | None = None,
    ) -> None:
        if httptools is None:
            raise RuntimeError(
                "the WSGI server parses HTTP with httptools: pip install 'pyforkd[wsgi]'"
            )
        if not callable(app):
            raise TypeError(f"a WSGI app is a callable, not {type(app).__name__}")
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, not {threads!r}")
        self.app = app
        self.listeners = list(listeners)
        self.threads = threads
        self.script_name = script_name
        self.access_log = access_log
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._conns: set[_Conn] = set()
        self._back: collections.deque[_Conn] = collections.deque()  # served, to watch again
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._base = self._base_environ()
        me = _worker_side.current()
        # The cluster's timeout, per request: a watchdog answers 503 to one that runs
        # longer, and has this worker replaced.
        self.timeout: float | None = me.timeout if me is not None else None
        self._flights: dict[int, tuple[float, str, _Response]] = {}

    def _base_environ(self) -> dict[str, Any]:
        first = self.listeners[0].address if self.listeners else None
        if isinstance(first, tuple):
            name, port = str(first[0]), str(first[1])
        else:
            name, port = (first or "localhost"), ""
        return {
            "SCRIPT_NAME": self.script_name,
            "SERVER_NAME": name,
            "SERVER_PORT": port,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": self.threads > 1,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
        }

    @property
    def stopping(self) -> bool:
        """True once the server stops (it answers with ``Connection: close`` from then)."""
        return self._stopping

    def stop(self) -> None:
        """Stop accepting; finish what is in flight, then :meth:`serve` returns."""
        self._stopping = True
        try:
            self._wake_w.send(b"!")
        except (BlockingIOError, OSError):
            pass  # (a byte is there already, or the server is done)

    def serve(self) -> None:
        """Serve until stopped (see the class)."""
        me = _worker_side.current()
        if me is not None:
            me.on("stopping", self.stop)
        sel = self._sel
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        for listener in self.listeners:
            sel.register(listener.fileno(), selectors.EVENT_READ, listener)
        if self.threads > 1:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.threads, thread_name_prefix="pyforkd wsgi"
            )
        slot = me.slot if me is not None else None
        stopped_at = 0.0
        done = threading.Event()
        if self.timeout:
            threading.Thread(
                target=self._watch, args=(done,), name="pyforkd wsgi watchdog", daemon=True
            ).start()
        try:
            while True:
                if self._stopping and not stopped_at:
                    stopped_at = time.monotonic()
                    self._stop_accepting()
                if self._stopping and not self._conns:
                    return
                if slot is not None:
                    slot.idle()
                events = sel.select(0.5 if self._stopping else 1.0)
                for key, _ in events:
                    data = key.data
                    if data is None:
                        self._woken()
                    elif isinstance(data, _Conn):
                        self._ready(data)
                    else:
                        self._accept(data)
                self._sweep()
        finally:
            done.set()
            self._stop_accepting()
            for conn in list(self._conns):
                self._drop(conn)
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _watch(self, done: threading.Event) -> None:
        """The watchdog: the worker is alive (its beat), and no request runs too long."""
        timeout = self.timeout
        assert timeout
        me = _worker_side.current()
        while not done.wait(min(1.0, timeout / 4)):
            if me is not None:
                me.slot.beat()  # (the primary kills a worker whose beat stops: GIL held)
            now = time.monotonic()
            for started, line, response in list(self._flights.values()):
                if now - started > timeout and not response.timed_out:
                    self._time_out(line, response)

    def _time_out(self, line: str, response: _Response) -> None:
        assert response.lock is not None and self.timeout is not None
        with response.lock:
            response.timed_out = True
            unsent = not response.sent
        _worker_side.timed_out(response.conn.sock, unsent, line, self.timeout)

    def _stop_accepting(self) -> None:
        for listener in self.listeners:
            try:
                self._sel.unregister(listener.fileno())
            except (KeyError, ValueError, OSError):
                pass
            listener.close()
        self.listeners = []

    def _woken(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._back:
            conn = self._back.popleft()
            conn.busy = False
            if conn.sock.fileno() < 0:
                self._conns.discard(conn)
            elif conn.requests and conn.requests[0].head_done:
                self._ready(conn)  # (pipelined requests left: served again at once)
            else:
                self._watch_conn(conn)

    def _accept(self, listener: Any) -> None:
        try:  # a burst at a time, then the connections already open
            burst = listener.accept_many(64)
        except ChannelClosedError:  # the primary stopped this worker's listening
            self._stopping = True
            return
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            return
        for sock, peer in burst:
            conn = _Conn(sock, peer)
            self._conns.add(conn)
            # A client sends its request with the connection: it is most often here
            # already, and then served without a turn of the selector.
            self._ready(conn)

    def _ready(self, conn: _Conn) -> None:
        """``conn`` has bytes (or pipelined requests): serve it, here or in a thread."""
        if self._pool is None:
            if not self._serve_conn(conn):
                self._drop(conn)
            elif not conn.watched:
                self._watch_conn(conn)
            return
        self._unwatch(conn)
        conn.busy = True
        self._pool.submit(self._in_thread, conn)

    def _watch_conn(self, conn: _Conn) -> None:
        self._sel.register(conn.sock, selectors.EVENT_READ, conn)
        conn.watched = True

    def _unwatch(self, conn: _Conn) -> None:
        if conn.watched:  # (asking the selector about one it never had costs a repr)
            conn.watched = False
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass  # (closed already)

    def _in_thread(self, conn: _Conn) -> None:
        if not self._serve_conn(conn):
            conn.close()
        self._back.append(conn)
        try:
            self._wake_w.send(b"!")
        except (BlockingIOError, OSError):
            pass

    def _drop(self, conn: _Conn) -> None:
        self._unwatch(conn)
        conn.close()
        self._conns.discard(conn)

    def _sweep(self) -> None:
        """Close connections idle too long (sooner while stopping)."""
        idle = STOP_IDLE if self._stopping else KEEPALIVE
        now = time.monotonic()
        for conn in list(self._conns):
            # (one that sent part of a request has IO_TIMEOUT to send the rest)
            limit = IO_TIMEOUT if conn.requests else idle
            if not conn.busy and now - conn.idle_since > limit:
                self._drop(conn)

    def _serve_conn(self, conn: _Conn) -> bool:
        """Read what came and serve every whole request; False when the connection ends."""
        try:
            waiting = not conn.requests or not conn.requests[0].head_done
            if waiting and not conn.read_some(wait=False) and not conn.requests:
                return False
            me = _worker_side.current()
            while conn.requests and conn.requests[0].head_done:
                request = conn.requests[0]
                if me is not None:
                    me.slot.beat()
                keep = self._handle(conn, request)
                conn.requests.popleft()
                conn.idle_since = time.monotonic()
                if not keep or conn.eof:
                    return False
            return not conn.eof
        except _BadRequest as exc:
            self._refuse(conn, exc.status, str(exc))
            return False
        except (OSError, TimeoutError):
            return False  # the client went away, or stalled

    def _refuse(self, conn: _Conn, status: bytes, text: str) -> None:
        body = text.encode() + b"\n"
        try:
            conn.send(
                b"HTTP/1.1 %s\r\n%sContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (status, _date.get(), len(body), body)
            )
        except OSError:
            pass

    def _environ(self, conn: _Conn, r: _Request) -> dict[str, Any]:
        env = dict(self._base)
        url = r.url
        if url[:1] != b"/" and url != b"*":  # absolute-form (a proxy's)
            parsed = httptools.parse_url(url)
            url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
        path, _, query = url.partition(b"?")
        if b"%" in path:
            path = urllib.parse.unquote_to_bytes(path)
        env["REQUEST_METHOD"] = r.method.decode("latin-1")
        env["PATH_INFO"] = path.decode("latin-1")
        env["QUERY_STRING"] = query.decode("latin-1")
        env["SERVER_PROTOCOL"] = "HTTP/" + r.version
        env["REMOTE_ADDR"] = str(conn.peer[0]) if conn.peer else ""
        env["REMOTE_PORT"] = str(conn.peer[1]) if len(conn.peer) > 1 else ""
        for name, value in r.headers:
            key = name.decode("latin-1").upper()
            if "_" in key:
                continue  # (a header spelt with _ would pass for one spelt with -)
            text = value.decode("latin-1")
            if key == "CONTENT-TYPE":
                env["CONTENT_TYPE"] = text
            elif key == "CONTENT-LENGTH":
                env["CONTENT_LENGTH"] = text
            else:
                key = "HTTP_" + key.replace("-", "_")
                env[key] = env[key] + "," + text if key in env else text
        return env

    def _handle(self, conn: _Conn, r: _Request) -> bool:
        """Run the app for ``r`` and answer it; whether the connection stays open."""
        env = self._environ(conn, r)
        body = _Input(conn, r)
        env["wsgi.input"] = body
        keep = r.keep_alive and not self._stopping and not r.upgrade
        timed = self.timeout is not None
        response = _Response(conn, r, keep, self, threading.Lock() if timed else None)
        if timed:
            self._flights[id(response)] = (time.monotonic(), _line(r), response)
        result: Any = None
        try:
            result = self.app(env, response.start_response)
            self._send_result(response, result)
        except (OSError, TimeoutError):
            raise  # the client went away (or the watchdog ended it): nothing to answer
        except Exception:
            if response.timed_out:
                return False
            log.exception('an error in the app, serving "%s"', _line(r))
            if response.sent:
                return False  # (a part of the body went out: the client sees it cut)
            response = _Response(conn, r, False)
            response.start_response(
                "500 Internal Server Error",
                [("Content-Type", "text/plain"), ("Content-Length", "22")],
            )
            response.write(b"Internal Server Error\n")
            response.finish()
        finally:
            if timed:
                self._flights.pop(id(response), None)
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("an error closing the app's response")
        if self.access_log is not None:
            self._log_access(env, r, response)
        if response.keep and not r.complete:
            response.keep = body.drain(DRAIN_BYTES)
        return response.keep

    def _send_result(self, response: _Response, result: Any) -> None:
        if isinstance(result, FileWrapper) and response.code and response.sendfile(result.filelike):
            response.finish()
            return
        if isinstance(result, (list, tuple)) and len(result) == 1 and not response.sent:
            data = result[0]
            if response.length is None and response.code:
                response.length = len(data)  # one piece: its length is known
            response.write(data)
        else:
            for data in result:
                if data:
                    response.write(data)
        if not response.code:
            raise AssertionError("the app returned without calling start_response()")
        response.finish()

    def _log_access(self, env: dict[str, Any], r: _Request, response: _Response) -> None:
        self.access_log(  # type: ignore[misc]
            access_line(
                env["REMOTE_ADDR"],
                _line(r),
                response.code,
                response.written,
                env.get("HTTP_REFERER", "-"),
                env.get("HTTP_USER_AGENT", "-"),
            )
        )


def serve(app: Callable[..., Any], listeners: Iterable[Any], threads: int = 1, **kw: Any) -> None:
    """In a worker: serve WSGI ``app`` on ``listeners`` until the primary stops it."""
    WSGIServer(app, listeners, threads, **kw).serve()
