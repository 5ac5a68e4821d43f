r"""A running cluster's control socket: ``pyforkd status | reload | scale N | stop``.

(On Windows, where Python has no AF_UNIX, a named pipe of the user's instead:
``\\.\pipe\pyforkd-<user>-<name>``, whose default security admits only its creator,
administrators and SYSTEM to write; each request and answer is one message of
``multiprocessing.connection`` there, and ``<name>.pipe`` in the runtime directory,
``%LOCALAPPDATA%\pyforkd``, says which clusters run.)

The primary listens on ``<runtime dir>/<name>.sock`` (an AF_UNIX stream socket, mode
0600, in a 0700 directory of the user's: ``$XDG_RUNTIME_DIR/pyforkd``, else
``/tmp/pyforkd-<uid>``; ``PYFORKD_RUNTIME_DIR`` overrides).  A client sends one JSON line,
``{"cmd": "status" | "reload" | "scale" | "stop", ...}``, and reads one JSON line back,
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.  The primary also checks the
client's uid (``SO_PEERCRED``, ``LOCAL_PEERCRED`` on macOS): only its own user and root
are served; others, and malformed requests, are refused and logged, and the primary goes
on as before.  One thread serves up to 32 clients at once; each has 5 s in all to send
its request (64 KiB at most) and take the answer, so a client that drips bytes or never
reads holds up no other.

Without ``XDG_RUNTIME_DIR``, ``/tmp/pyforkd-<uid>`` is used when it is this user's (or
can be made), else ``~/.cache/pyforkd/run``: another user who made the /tmp one first
cannot keep a cluster from starting.  ``pyforkd status`` looks in the same place.
"""

from __future__ import annotations

import abc
import errno
import json
import os
import selectors
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

if sys.platform == "win32":
    from multiprocessing.connection import Client as _PipeClient
    from multiprocessing.connection import Listener as _PipeListener

__all__ = ["ControlError", "ControlServer", "request", "runtime_dir", "socket_path"]

_MAX_REQUEST = 65536
_CLIENT_TIMEOUT = 5.0
_MAX_CLIENTS = 32
# Python offers no AF_UNIX on Windows: a named pipe serves there, with a file of this
# suffix in the runtime directory saying it runs.
_SUFFIX = ".pipe" if sys.platform == "win32" else ".sock"


class ControlError(Exception):
    """A control request that could not be made or was refused (the message says why)."""


def runtime_dir(create: bool = False) -> str:
    """The directory of control sockets (made 0700 when ``create``; checked to be ours)."""
    path = os.environ.get("PYFORKD_RUNTIME_DIR")
    if sys.platform == "win32":  # a directory of the user's profile: the user's permissions
        path = path or os.path.join(os.environ.get("LOCALAPPDATA", ""), "pyforkd")
        if create:
            os.makedirs(path, exist_ok=True)
        return path
    if path:
        return _own_dir(path, create)
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return _own_dir(os.path.join(base, "pyforkd"), create)
    shared = f"/tmp/pyforkd-{os.geteuid()}"
    try:
        return _own_dir(shared, create)
    except ControlError:
        # Another user made it first (/tmp is everybody's): this user's home is not.
        home = os.path.expanduser("~")
        if not home or home == "~":
            raise
        return _own_dir(os.path.join(home, ".cache", "pyforkd", "run"), create, parents=True)


def _own_dir(path: str, create: bool, parents: bool = False) -> str:
    """``path``, checked to be a directory of this user's that no one else may enter."""
    if sys.platform == "win32":
        raise AssertionError("the profile's directory is used there")
    if create:
        try:
            if parents:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # checked just below, as one found there is
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise ControlError(
            f"{path} must be a directory of uid {os.geteuid()} with mode 0700 (it is "
            f"{'not a directory' if not stat.S_ISDIR(st.st_mode) else oct(st.st_mode & 0o777)}"
            f", uid {st.st_uid}): refusing to use it"
        )
    return path


def socket_path(name: str) -> str:
    """Where the cluster called ``name`` listens (on Windows: the file saying it runs)."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or len(name) > 64:
        raise ValueError(
            f"a cluster name is 1-64 characters, no '/', '\\' or leading '.': {name!r}"
        )
    return os.path.join(runtime_dir(), name + _SUFFIX)


def peer_uid(sock: socket.socket) -> tuple[int, int]:
    """``(uid, pid)`` of the process at the other end of a Unix socket (pid -1: unknown)."""
    if hasattr(socket, "SO_PEERCRED"):
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", raw)
        return uid, pid
    # macOS: LOCAL_PEERCRED (level 0) gives a struct xucred {u_int version; uid_t uid; ...}.
    raw = sock.getsockopt(0, 0x001, 76)
    return struct.unpack_from("2I", raw)[1], -1


def pipe_address(name: str) -> str:
    """Windows: the named pipe of the cluster called ``name`` (of this user's)."""
    user = os.environ.get("USERNAME", "user")
    return f"\\\\.\\pipe\\pyforkd-{user}-{name}"


class _Server(abc.ABC):
    """The primary's control channel, served by a thread of its own until :meth:`close`.

    What both transports share: the requests checked and answered, the stop.
    """

    def __init__(self, cluster: Any, name: str, say: Callable[[str], None] | None = None) -> None:
        self.name = name
        self._say = say  # the primary's log (pyforkd.cluster.say); else plain stderr
        self.path = socket_path(name)
        self._cluster = cluster
        runtime_dir(create=True)
        self._listen()
        self._thread = threading.Thread(target=self._serve, name="pyforkd control", daemon=True)
        _servers.add(self)

    def start(self) -> None:
        """Serve, from a thread of its own (after the primary's first forks)."""
        self._thread.start()

    @abc.abstractmethod
    def _listen(self) -> None:
        """Open the channel; ``ControlError`` when a live primary holds the name."""

    @abc.abstractmethod
    def _serve(self) -> None:
        """The thread: take clients one at a time, until told to stop."""

    @abc.abstractmethod
    def _wake_to_stop(self) -> bool:
        """Tell the serving thread to end; False when it was told already."""

    @abc.abstractmethod
    def _forget(self) -> None:
        """Close the channel's descriptors (nothing in the file system)."""

    def _respond(self, data: bytes) -> dict[str, Any]:
        """The answer to one request as received (checked: size, JSON, a 'cmd')."""
        if len(data) > _MAX_REQUEST:
            self._log("refused a request over 64 KiB")
            return {"ok": False, "error": "request too large"}
        try:
            req = json.loads(data)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ValueError("not an object with a 'cmd' string")
        except RecursionError:
            self._log("refused a request nested too deeply")
            return {"ok": False, "error": "malformed request: nested too deeply"}
        except ValueError as exc:
            self._log(f"refused a malformed request ({exc}): {data[:80]!r}")
            return {"ok": False, "error": f"malformed request: {exc}"}
        return self._answer(req)

    def _answer(self, req: dict[str, Any]) -> dict[str, Any]:
        c = self._cluster
        cmd = req["cmd"]
        if cmd == "ping":
            return {"ok": True, "pid": os.getpid()}
        if cmd == "status":
            return {
                "ok": True,
                "name": self.name,
                "pid": os.getpid(),
                "policy": c.settings["policy"],
                "workers": c.status(),
            }
        if cmd == "reload":
            c.reload()
            return {"ok": True}
        if cmd == "scale":
            n = req.get("n")
            if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= 1024:
                self._log(f"refused scale to {n!r}")
                return {"ok": False, "error": f"scale needs a worker count 1-1024, not {n!r}"}
            c.scale(n)
            return {"ok": True}
        if cmd == "stop":
            c.request_stop(fast=bool(req.get("fast")))
            return {"ok": True}
        self._log(f"refused an unknown command {cmd!r}")
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _log(self, text: str) -> None:
        if self._say is not None:
            self._say(f"control: {text} (cluster {self.name!r})")
            return
        sys.stderr.write(f"pyforkd {self.name}: control: {text}\n")
        sys.stderr.flush()

    def close(self) -> None:
        """Stop serving and remove the socket (on Windows the file saying it runs)."""
        if not self._wake_to_stop():
            return
        if self._thread.ident is not None:  # (started)
            self._thread.join()
        self._forget()
        _servers.discard(self)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass  # removed by hand already


if sys.platform != "win32":

    class _SocketServer(_Server):
        """Unix: an AF_UNIX stream socket, a JSON line each way (see the top of this module)."""

        def _listen(self) -> None:
            if os.path.exists(self.path):
                try:
                    request(self.name, {"cmd": "ping"}, timeout=2)
                except ControlError:
                    os.unlink(self.path)  # left by a primary that died: nobody answers it
                else:
                    raise ControlError(
                        f"a cluster named {self.name!r} runs already (its control socket is "
                        f"{self.path}): stop it, or give this one another --name"
                    )
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                self._sock.bind(self.path)
            except OSError:
                self._sock.close()
                raise
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            self._sock.listen(16)
            self._stop_r, self._stop_w = os.pipe()

        def _serve(self) -> None:
            """Clients at once, each with a deadline: one that drips holds up no other."""
            sel = selectors.DefaultSelector()
            sel.register(self._sock, selectors.EVENT_READ, None)
            sel.register(self._stop_r, selectors.EVENT_READ, "stop")
            clients: dict[socket.socket, _Client] = {}
            try:
                while True:
                    now = time.monotonic()
                    for late in [c for c in clients.values() if c.deadline <= now]:
                        self._log(
                            f"dropped a client (pid {late.pid}) that took over "
                            f"{_CLIENT_TIMEOUT:g} s"
                        )
                        self._drop(sel, clients, late)
                    soonest = min((c.deadline for c in clients.values()), default=None)
                    wait = None if soonest is None else max(0.0, soonest - now)
                    for key, events in sel.select(wait):
                        if key.data == "stop":
                            return
                        if key.data is None:
                            self._accept(sel, clients)
                        else:
                            self._step(sel, clients, key.data, events)
            finally:
                for c in list(clients.values()):
                    self._drop(sel, clients, c)
                sel.close()

        def _accept(self, sel: selectors.BaseSelector, clients: dict[Any, _Client]) -> None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # the client left before we took it
            if len(clients) >= _MAX_CLIENTS:
                self._log(f"refused a client: {_MAX_CLIENTS} are being served")
                with conn:
                    conn.setblocking(False)
                    try:  # (a fresh socket has room for this much)
                        _reply(conn, {"ok": False, "error": "busy: try again"})
                    except OSError:
                        pass  # it left already
                return
            conn.setblocking(False)
            try:
                uid, pid = peer_uid(conn)
            except OSError:
                conn.close()
                return
            client = _Client(conn, pid)
            clients[conn] = client
            if uid not in (os.geteuid(), 0):
                self._log(f"refused a client of uid {uid} (pid {pid}): not this user's")
                client.answer({"ok": False, "error": f"uid {uid} may not control this cluster"})
                sel.register(conn, selectors.EVENT_WRITE, client)
            else:
                sel.register(conn, selectors.EVENT_READ, client)

        def _step(
            self,
            sel: selectors.BaseSelector,
            clients: dict[Any, _Client],
            client: _Client,
            events: int,
        ) -> None:
            """Read more of a request, or write more of its answer."""
            try:
                if events & selectors.EVENT_WRITE:
                    if client.flush():
                        self._drop(sel, clients, client)
                    return
                line = client.read()
                if line is None:
                    return  # not whole yet
                if not line:  # it left without asking (pyforkd status probing: not a request)
                    self._drop(sel, clients, client)
                    return
                try:
                    answer = self._respond(line)
                except Exception as exc:  # a bug here must not end the control thread
                    self._log(f"a request failed: {type(exc).__name__}: {exc}")
                    answer = {"ok": False, "error": f"the request failed: {exc}"}
                client.answer(answer)
                sel.modify(client.conn, selectors.EVENT_WRITE, client)
            except OSError as exc:
                self._log(f"a client's request failed: {exc}")
                self._drop(sel, clients, client)

        def _drop(
            self, sel: selectors.BaseSelector, clients: dict[Any, _Client], client: _Client
        ) -> None:
            clients.pop(client.conn, None)
            try:
                sel.unregister(client.conn)
            except (KeyError, ValueError):
                pass  # (never registered)
            client.conn.close()

        def _wake_to_stop(self) -> bool:
            if self._stop_w < 0:
                return False
            os.write(self._stop_w, b"x")
            return True

        def _forget(self) -> None:  # (also a forked child's part: the socket stays the primary's)
            self._sock.close()
            for fd in (self._stop_r, self._stop_w):
                if fd >= 0:
                    os.close(fd)
            self._stop_r = self._stop_w = -1

    ControlServer = _SocketServer


class _Client:
    """One control client: its request as it comes, then its answer as it goes."""

    def __init__(self, conn: socket.socket, pid: int) -> None:
        self.conn = conn
        self.pid = pid
        self.deadline = time.monotonic() + _CLIENT_TIMEOUT
        self.data = bytearray()
        self.out = memoryview(b"")

    def read(self) -> bytes | None:
        """The request once it is whole (a newline, the end, or over the limit); else None."""
        try:
            chunk = self.conn.recv(65536)
        except BlockingIOError:
            return None
        self.data += chunk
        if chunk and b"\n" not in chunk and len(self.data) <= _MAX_REQUEST:
            return None
        return bytes(self.data)

    def answer(self, obj: dict[str, Any]) -> None:
        self.out = memoryview(json.dumps(obj).encode() + b"\n")

    def flush(self) -> bool:
        """Write what the client takes of the answer; True once all of it went."""
        try:
            n = self.conn.send(self.out)
        except BlockingIOError:
            return False
        self.out = self.out[n:]
        return not self.out


def _read_line(sock: socket.socket, limit: int = _MAX_REQUEST) -> bytes:
    """Bytes up to a newline or the end (more than ``limit``: stops there, longer)."""
    data = b""
    while not data.endswith(b"\n") and len(data) <= limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _reply(conn: socket.socket, obj: dict[str, Any]) -> None:
    conn.sendall(json.dumps(obj).encode() + b"\n")


def request(name: str | None, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send ``req`` to the cluster ``name`` (None: the only one running); its answer.

    ``ControlError`` says what went wrong: no such cluster, several to choose from, a
    refusal, no answer in ``timeout``.
    """
    if name is None:
        name = _only_cluster()
    if sys.platform == "win32":
        return _pipe_request(name, req, timeout)
    path = socket_path(name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no cluster named {name!r} runs (nothing at {path})") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (it is another user's)") from None
        try:
            sock.sendall(json.dumps(req).encode() + b"\n")
            data = _read_line(sock, limit=1 << 24)
        except socket.timeout:  # (TimeoutError from Python 3.10 on)
            raise ControlError(f"the cluster {name!r} did not answer in {timeout:g} s") from None
        except OSError as exc:
            name_ = errno.errorcode.get(exc.errno or 0, "?")
            raise ControlError(f"talking to {path} failed: {name_} ({exc.strerror})") from None
    return _checked_answer(name, data)


def running() -> list[str]:
    """The names of this user's clusters that run now.

    A control socket left by a primary that was killed (nothing accepts on it) is removed.
    """
    where = runtime_dir()
    try:
        names = sorted(n[: -len(_SUFFIX)] for n in os.listdir(where) if n.endswith(_SUFFIX))
    except FileNotFoundError:
        return []
    if sys.platform == "win32":
        return names  # (a pipe's marker goes with its primary's session)
    alive = []
    for name in names:
        path = socket_path(name)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                try:
                    os.unlink(path)  # (this user's own directory: a stale socket of its own)
                except OSError:
                    pass
                continue
            except OSError:
                continue  # (gone meanwhile)
        alive.append(name)
    return alive


def _only_cluster() -> str:
    where = runtime_dir()
    names = running()
    if len(names) == 1:
        return names[0]
    if not names:
        raise ControlError(f"no cluster is running (nothing in {where})")
    raise ControlError(f"several clusters run ({', '.join(names)}): say which with --name")


def _checked_answer(name: str, data: bytes) -> dict[str, Any]:
    """A primary's answer, or ``ControlError`` saying what was wrong with it."""
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"the cluster {name!r} answered no JSON: {data[:80]!r}") from None
    if not answer.get("ok"):
        raise ControlError(f"the cluster {name!r} refused: {answer.get('error')}")
    return dict(answer)


if sys.platform == "win32":

    class _PipeServer(_Server):
        """Windows: a named pipe, a message each way (see the top of this module)."""

        def _listen(self) -> None:
            self.address = pipe_address(self.name)
            try:
                request(self.name, {"cmd": "ping"}, timeout=2)
            except ControlError:
                pass  # nobody answers there: the name is free
            else:
                raise ControlError(
                    f"a cluster named {self.name!r} runs already (its control pipe is "
                    f"{self.address}): stop it, or give this one another --name"
                )
            self._listener = _PipeListener(self.address, family="AF_PIPE")
            with open(self.path, "w", encoding="ascii") as marker:
                marker.write(f"{os.getpid()}\n")
            self._stopping = False

        def _serve(self) -> None:
            while True:
                try:
                    conn = self._listener.accept()
                except OSError:
                    if self._stopping:
                        return
                    continue  # the client left before we took it
                with conn:
                    if self._stopping:
                        return
                    try:
                        if not conn.poll(_CLIENT_TIMEOUT):
                            raise OSError(errno.ETIMEDOUT, "no request in time")
                        data = conn.recv_bytes(_MAX_REQUEST + 1)
                        conn.send_bytes(json.dumps(self._respond(data)).encode())
                    except (OSError, EOFError, ValueError) as exc:
                        self._log(f"a client's request failed: {exc}")

        def _wake_to_stop(self) -> bool:
            if self._stopping:
                return False
            self._stopping = True
            try:
                _PipeClient(self.address, family="AF_PIPE").close()  # wakes the accept()
            except OSError:
                pass  # the thread is not waiting there
            return True

        def _forget(self) -> None:
            self._listener.close()

    ControlServer = _PipeServer

    def _pipe_request(name: str, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Windows: one request over the cluster's named pipe."""
        address = pipe_address(name)
        try:
            conn = _PipeClient(address, family="AF_PIPE")
        except FileNotFoundError:
            raise ControlError(f"no cluster named {name!r} runs (nothing at {address})") from None
        except OSError as exc:
            raise ControlError(f"talking to {address} failed: {exc}") from None
        with conn:
            try:
                conn.send_bytes(json.dumps(req).encode())
                if not conn.poll(timeout):
                    raise ControlError(f"the cluster {name!r} did not answer in {timeout:g} s")
                data = conn.recv_bytes(1 << 24)
            except (OSError, EOFError) as exc:
                raise ControlError(f"talking to {address} failed: {exc}") from None
        return _checked_answer(name, data)


_servers: set[_Server] = set()


def _after_fork_in_child() -> None:
    for server in list(_servers):
        server._forget()
    _servers.clear()


if hasattr(os, "register_at_fork"):  # (Windows has no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)
