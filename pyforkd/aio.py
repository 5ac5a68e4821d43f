"""asyncio counterparts of :mod:`pyforkd.child_process`.

``spawn`` starts the child exactly as the synchronous one does (same checks, same C call),
then hands its pipes to the running loop as ``asyncio.StreamReader`` / ``StreamWriter``.
Waiting is driven by the child's pidfd registered with the loop (Linux; a helper thread
elsewhere), so no SIGCHLD handler and no child watcher is involved.  On Windows it runs
under asyncio's default proactor loop (the pipes are made for overlapped I/O)::

    async with pyforkd.aio.spawn("cat") as p:
        p.stdin.write(b"hi"); await p.stdin.drain(); p.stdin.close()
        print(await p.stdout.read())
    r = await pyforkd.aio.exec_file("git", ["status"], timeout=5)

Channels work the same way: :func:`fork` and :func:`fork_worker` give a :class:`Process`
whose ``channel`` is an :class:`AsyncChannel` (``await send``, ``await recv``,
``async for``); ``AsyncChannel(pyforkd.parent())`` is the child's side.  Use a channel
from the loop or from threads, not both at once from the loop's own thread.
"""

from __future__ import annotations

import asyncio
import io
import signal as _signal
import socket
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping
from typing import Any, TypeVar

from . import _bindings as _b
from . import child_process as _cp
from . import worker as _worker
from ._checks import check_timeout
from ._checks import deadline as _deadline
from ._options import (
    DEFAULT_MAX_BUFFER,
    KILL_GRACE,
    SIGKILL,
    CompletedProcess,
    SignalLike,
    Stdio,
    StrOrBytesPath,
    async_pipes,
    check_args,
    check_input,
    check_max_buffer,
    check_target,
    cmd_text,
    completed,
    raise_for,
    signal_number,
)
from ._wire import close_sent, handle_list
from .channel import Channel, SocketPort
from .child_process import ChildProcess
from .errors import ChannelClosedError, SpawnError

if sys.platform == "win32":
    from asyncio import windows_utils

__all__ = ["AsyncChannel", "Process", "Worker", "exec", "exec_file", "fork", "fork_worker", "spawn"]

_STREAM_LIMIT = 2**16
_DRAIN_AFTER_KILL = 0.1  # seconds
_RING_SLICE_MS = 100  # a cancelled wait on a ring leaves its thread within this
# Windows: the proactor loop watches no descriptor (add_reader), so a channel's pipe is
# waited on in a thread, in slices (a cancelled wait leaves its thread within one), and
# sends go through a thread (a pipe write there completes only once the reader has read).


_P = TypeVar("_P", bound=asyncio.BaseProtocol)


def _returning(protocol: _P) -> Callable[[], _P]:
    """A protocol factory that gives this one protocol (bound now, not late)."""
    return lambda: protocol


class _WriteProtocol(asyncio.streams.FlowControlMixin):
    """Flow control for a child's stdin, with the close waiter StreamWriter wants."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._closed = loop.create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._closed.done():
            self._closed.set_result(None)

    def _get_close_waiter(self, stream: object) -> asyncio.Future[None]:
        return self._closed


async def _in_slices(wait: Callable[[int], Any], deadline: float | None) -> bool:
    """``wait(ms)`` in a thread, a slice at a time, until it is true; False at ``deadline``.

    Nothing is taken in the thread: a cancelled wait loses nothing, and its thread is
    gone within a slice.
    """
    while True:
        ms = _RING_SLICE_MS
        if deadline is not None:
            ms = min(ms, max(0, int((deadline - time.monotonic()) * 1000)))
        if await asyncio.to_thread(wait, ms):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


class AsyncChannel:
    """A :class:`pyforkd.Channel` driven by the running asyncio loop.

    ``await send(...)`` waits (without blocking the loop) while the peer's buffer is full;
    ``await recv()`` waits for a message; ``async for msg in channel`` until the peer
    closes.  Arguments, results and errors are those of the synchronous Channel.
    """

    def __init__(self, channel: Channel) -> None:
        if not isinstance(channel, Channel):
            raise TypeError(f"AsyncChannel wraps a pyforkd.Channel, not {type(channel).__name__}")
        self.channel = channel
        self._port = SocketPort(channel)  # (the channel's socket side, for sends and waits)
        self._send_lock = asyncio.Lock()
        self._recv_lock = asyncio.Lock()

    async def _ready(self, write: bool, deadline: float | None) -> bool:
        """Wait until the socket can be read (or written); False once ``deadline`` passed."""
        fd = self.channel.fileno()
        if fd < 0:
            raise ChannelClosedError("the channel is closed")
        if _b.WINDOWS:
            events = _b.POLL_OUT if write else _b.POLL_IN
            return await _in_slices(lambda ms: _b.fd_wait(fd, events, ms), deadline)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(True)

        (loop.add_writer if write else loop.add_reader)(fd, wake)
        try:
            if deadline is None:
                return await ready
            try:
                return await asyncio.wait_for(ready, max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return False
        finally:
            (loop.remove_writer if write else loop.remove_reader)(fd)

    async def send(
        self,
        obj: Any,
        handle: Any = None,
        *,
        keep_open: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Send one message (and handles): see :meth:`pyforkd.Channel.send`."""
        ch = self.channel
        deadline = _deadline(timeout)
        if _b.WINDOWS:  # (see _RING_SLICE_MS): a send, once begun, completes
            async with self._send_lock:
                await asyncio.to_thread(ch.send, obj, handle, keep_open=keep_open, timeout=timeout)
            return
        port = self._port
        if port.over_rings:
            # A channel over rings waits on shared memory, which the loop cannot watch: a
            # thread sends (a send, once begun, completes even if this task is cancelled).
            async with self._send_lock:
                await asyncio.to_thread(ch.send, obj, handle, keep_open=keep_open, timeout=timeout)
            return
        node = port.node
        if node is not None and (handle is not None or node.pending is not None):
            # Node's handle protocol waits for an ACK that another read may bring: a thread.
            await asyncio.to_thread(ch.send, obj, handle, keep_open=keep_open, timeout=timeout)
            return
        handles = handle_list(handle)
        fds: list[int] = []
        if ch.framing == "node":
            head, body = b"", port.encode(obj)[1] + b"\n"
            port.check_size(len(body) - 1)
        else:
            head, body, fds = port.prepare(obj, handle, handles)
        async with self._send_lock:
            # The thread lock too, held across waits, so that frames never interleave with
            # a thread's sends; taken without blocking the loop.
            while not port.send_lock.acquire(blocking=False):
                await asyncio.sleep(0.001)
            try:
                port.check_open()
                for sent_any in port.write_steps(head, body, fds):
                    if not await self._ready(True, deadline):
                        port.timed_out(sent_any)
            finally:
                port.send_lock.release()
        if not keep_open:
            close_sent(handles)

    async def recv(self, timeout: float | None = None, *, with_handle: bool = False) -> Any:
        """Receive one message: see :meth:`pyforkd.Channel.recv`."""
        return await self._take(lambda: self.channel.recv(0, with_handle=with_handle), timeout)

    async def send_many(self, msgs: Iterable[Any], *, timeout: float | None = None) -> None:
        """Send a batch: see :meth:`pyforkd.Channel.send_many`.

        In a thread (one hop per batch), so that the loop runs while the peer is full; a
        batch, once begun, completes even if this task is cancelled.
        """
        items = list(msgs)
        async with self._send_lock:
            await asyncio.to_thread(self.channel.send_many, items, timeout=timeout)

    async def recv_many(
        self, limit: int = 64, timeout: float | None = None, *, with_handle: bool = False
    ) -> list[Any]:
        """The next messages: see :meth:`pyforkd.Channel.recv_many`."""
        if limit < 1:
            raise ValueError(f"recv_many() takes at least 1 message, not {limit}")
        return await self._take(
            lambda: self.channel.recv_many(limit, 0, with_handle=with_handle), timeout
        )

    async def recv_control(self, timeout: float | None = None) -> Any:
        """The next control message (a worker's result)."""
        return await self._take(lambda: self.channel.recv_control(0), timeout)

    async def _take(self, attempt: Callable[[], Any], timeout: float | None) -> Any:
        deadline = _deadline(timeout)
        async with self._recv_lock:
            while True:
                try:
                    return attempt()  # a message already here, or one non-blocking read
                except TimeoutError:
                    pass  # nothing whole yet: wait until the socket has more
                if self._port.over_rings:
                    ready = await self._ring_ready(deadline)
                else:
                    ready = await self._ready(False, deadline)
                if not ready:
                    raise TimeoutError("recv timed out")

    async def _ring_ready(self, deadline: float | None) -> bool:
        """Wait until a channel over rings has something to read (in a thread)."""
        return await _in_slices(self._port.ring_link(deadline).wait_readable, deadline)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            try:
                yield await self.recv()
            except ChannelClosedError:
                return

    @property
    def connected(self) -> bool:
        """False once either side closed the channel."""
        return self.channel.connected

    def fileno(self) -> int:
        """The channel's socket descriptor (-1 once closed)."""
        return self.channel.fileno()

    def close(self) -> None:
        """Close the channel (the peer sees it end)."""
        self.channel.close()

    disconnect = close

    def __repr__(self) -> str:
        return f"<pyforkd.aio.AsyncChannel {self.channel!r}>"


class Process:
    """A child started by :func:`spawn`, seen from asyncio.

    ``stdin`` is an ``asyncio.StreamWriter``, ``stdout`` / ``stderr`` are
    ``asyncio.StreamReader`` (or None when not piped); ``stdio`` lists every slot, with a
    ``socket.socket`` for pipes at slots 3 and up.  ``returncode``, ``exit_code``,
    ``signal_code`` and ``killed`` read through to the underlying :class:`ChildProcess`.
    """

    def __init__(self, child: ChildProcess, loop: asyncio.AbstractEventLoop) -> None:
        self._child = child
        self._loop = loop
        self._exited: asyncio.Future[int] | None = None
        self._watching = -1
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self.stdio: list[Any] = []
        self._transports: list[asyncio.BaseTransport] = []
        #: The IPC channel (:func:`fork`, :func:`fork_worker`, ``"ipc"`` in stdio), or None.
        self.channel: AsyncChannel | None = (
            AsyncChannel(child.channel) if child.channel is not None else None
        )

    def _channel(self) -> AsyncChannel:
        if self.channel is None:
            raise ValueError("this child has no IPC channel: start it with aio.fork()")
        return self.channel

    async def send(self, message: Any, handle: Any = None, **options: Any) -> None:
        """Send a message to the child: see :meth:`AsyncChannel.send`."""
        await self._channel().send(message, handle, **options)

    async def recv(self, timeout: float | None = None, *, with_handle: bool = False) -> Any:
        """Receive a message from the child: see :meth:`AsyncChannel.recv`."""
        return await self._channel().recv(timeout, with_handle=with_handle)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._channel().__aiter__()

    def disconnect(self) -> None:
        """Close the channel to the child."""
        self._channel().close()

    @property
    def connected(self) -> bool:
        """True while the channel is open on both sides."""
        return self.channel is not None and self.channel.connected

    async def _connect(self, fds: list[int], limit: int) -> None:
        loop = self._loop
        try:
            for i, fd in enumerate(fds):
                if fd < 0:
                    self.stdio.append(None)
                    continue
                fds[i] = -1  # from here on owned by its transport or socket
                if i > 2 and _b.WINDOWS:  # what pyforkd.spawn gives there: a duplex pipe
                    self.stdio.append(open(_b.adopt(fd, True), "r+b", buffering=0))  # noqa: SIM115
                elif i > 2:
                    self.stdio.append(socket.socket(fileno=fd))
                elif i == 0:
                    pipe = _pipe(fd, "wb")
                    wtransport, protocol = await loop.connect_write_pipe(
                        lambda: _WriteProtocol(loop), pipe
                    )
                    self._transports.append(wtransport)
                    self.stdin = asyncio.StreamWriter(wtransport, protocol, None, loop)
                    self.stdio.append(self.stdin)
                else:
                    reader = asyncio.StreamReader(limit=limit, loop=loop)
                    protocol_r = asyncio.StreamReaderProtocol(reader, loop=loop)
                    pipe = _pipe(fd, "rb")
                    rtransport, _ = await loop.connect_read_pipe(_returning(protocol_r), pipe)
                    self._transports.append(rtransport)
                    self.stdio.append(reader)
                    if i == 1:
                        self.stdout = reader
                    else:
                        self.stderr = reader
        finally:
            for fd in fds:
                if fd >= 0:
                    _b.close_native(fd)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._child.pid

    @property
    def args(self) -> list[str]:
        """The child's argv as started (after shell wrapping)."""
        return self._child.args

    @property
    def returncode(self) -> int | None:
        """Exit status, ``-N`` when signal N ended it, None while it runs."""
        return self._child.returncode

    @property
    def exit_code(self) -> int | None:
        """The exit status, or None (still running, or ended by a signal)."""
        return self._child.exit_code

    @property
    def signal_code(self) -> str | None:
        """The name of the signal that ended the child (``"SIGTERM"``), or None."""
        return self._child.signal_code

    @property
    def killed(self) -> bool:
        """True once :meth:`kill` (or a timeout) delivered a signal."""
        return self._child.killed

    def kill(self, sig: SignalLike = _signal.SIGTERM) -> bool:
        """Send ``sig``; False when the child already exited (see ChildProcess.kill)."""
        return self._child.kill(sig)

    def poll(self) -> int | None:
        """The return code if the child exited (reaping it), else None; never blocks."""
        return self._child.poll()

    async def wait(self) -> int:
        """Wait for the child to exit without blocking the loop; return its returncode."""
        if self._child.poll() is not None:
            return self._child.returncode  # type: ignore[return-value]
        if self._exited is None:
            self._exited = self._loop.create_future()
            # (Windows: the proactor watches no handle with add_reader: a thread waits.)
            handle = -1 if _b.WINDOWS else _cp.acquire_exit_handle(self._child)
            if handle >= 0 and self._child.returncode is None:
                self._watching = handle
                self._loop.add_reader(handle, self._on_exit)
            else:
                _cp.release_exit_handle(self._child, handle)
                # No pidfd (macOS, old Linux, Windows): one thread does the blocking wait.
                task = self._loop.create_task(asyncio.to_thread(self._child.wait))
                task.add_done_callback(lambda _t: self._on_exit())
        return await asyncio.shield(self._exited)

    def _on_exit(self) -> None:
        handle = self._watching
        if handle >= 0:  # unregistered before poll() may close it (a forkserver's status)
            self._loop.remove_reader(handle)
        exited = self._exited
        try:
            code = self._child.poll()
        except OSError as exc:  # the exit status is lost (a forkserver worker's server died)
            self._watching = -1
            if exited is not None and not exited.done():
                exited.set_exception(exc)
            return
        if code is None:  # a spurious wake-up, or what says "exited" changed: watch again
            if handle >= 0:
                _cp.release_exit_handle(self._child, handle)
            self._watching = _cp.acquire_exit_handle(self._child)
            if self._watching >= 0:
                self._loop.add_reader(self._watching, self._on_exit)
            return
        if handle >= 0:
            _cp.release_exit_handle(self._child, handle)
            self._watching = -1
        if exited is not None and not exited.done():
            exited.set_result(code)

    async def communicate(self, input: bytes | None = None) -> tuple[bytes | None, bytes | None]:
        """Write ``input`` (then close stdin), read stdout and stderr to EOF, wait."""

        async def read(stream: asyncio.StreamReader | None) -> bytes | None:
            return None if stream is None else await stream.read()

        _, out, err = await asyncio.gather(
            _feed(self.stdin, input), read(self.stdout), read(self.stderr)
        )
        await self.wait()
        return out, err

    def _close_transports(self) -> None:
        for t in self._transports:
            t.close()
        for s in self.stdio:
            if isinstance(s, (socket.socket, io.RawIOBase)):  # (slots above 2)
                s.close()

    async def __aenter__(self) -> Process:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.stdin is not None:
            self.stdin.close()
        try:
            await self.wait()
        finally:
            self._close_transports()

    def __repr__(self) -> str:
        return f"<pyforkd.aio.Process pid={self.pid} returncode={self.returncode}>"


async def _feed(stdin: asyncio.StreamWriter | None, data: bytes | None) -> None:
    """Write ``data`` to a child's stdin, then close it (the child sees EOF)."""
    if stdin is None:
        return
    try:
        if data:
            stdin.write(data)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child stopped reading: the rest is dropped, as in a shell pipeline
    finally:
        stdin.close()


def _pipe(fd: int, mode: str) -> Any:
    """What the loop's pipe transports take for a pipe end (they own it from then on).

    A file; on Windows the handle itself (opened for overlapped I/O: the spawn asked for
    PFD_SPAWN_ASYNC_PIPES), which the proactor reads and writes.
    """
    if sys.platform == "win32":
        return windows_utils.PipeHandle(fd)
    return open(fd, mode, buffering=0)  # (the transport owns it)


class _Spawning:
    """What :func:`spawn` returns: await it, or use it directly in ``async with``."""

    def __init__(self, start: Any) -> None:
        self._start = start
        self._process: Process | None = None

    def __await__(self) -> Generator[Any, None, Process]:
        return self._start().__await__()

    async def __aenter__(self) -> Process:
        self._process = await self._start()
        return self._process

    async def __aexit__(self, *exc: object) -> None:
        assert self._process is not None
        await self._process.__aexit__(*exc)


def spawn(
    command: StrOrBytesPath,
    args: Iterable[StrOrBytesPath] | None = None,
    *,
    stdio: Stdio = "pipe",
    limit: int = _STREAM_LIMIT,
    **options: Any,
) -> _Spawning:
    """Start a child like :func:`pyforkd.spawn`, with asyncio streams for its pipes.

    ``await aio.spawn(...)`` gives a :class:`Process`; ``async with aio.spawn(...) as p``
    also closes stdin and waits for the child at the end of the block.  ``limit`` is the
    StreamReader buffer limit.  Every option of the synchronous spawn is accepted and
    checked the same way, before any process exists.
    """

    async def start() -> Process:
        token = async_pipes.set(True)
        try:
            child = _cp.spawn(command, args, stdio=stdio, **options)
        finally:
            async_pipes.reset(token)
        return await _wrap(child, limit)

    return _Spawning(start)


async def _wrap(child: ChildProcess, limit: int) -> Process:
    """A started child as a :class:`Process`, its pipes handed to the running loop."""
    proc = Process(child, asyncio.get_running_loop())
    try:
        await proc._connect(_cp.take_fds(child), limit)
    except BaseException:
        child.kill(SIGKILL)
        await proc.wait()
        proc._close_transports()
        child.close()
        raise
    return proc


async def _finish(proc: Process, kill_signal: int) -> None:
    """Kill the child with ``kill_signal``, give it KILL_GRACE seconds, then SIGKILL."""
    proc.kill(kill_signal)
    try:
        await asyncio.wait_for(proc.wait(), KILL_GRACE)
    except asyncio.TimeoutError:
        warnings.warn(
            f"pyforkd: child {proc.pid} {proc.args!r} ignored its kill signal for "
            f"{KILL_GRACE:g} s; sending SIGKILL",
            RuntimeWarning,
            stacklevel=3,
        )
        proc.kill(SIGKILL)
        await proc.wait()


class _Overflow(Exception):
    def __init__(self, stream: int) -> None:
        super().__init__(stream)
        self.stream = stream


async def exec_file(
    file: StrOrBytesPath,
    args: Iterable[StrOrBytesPath] | None = None,
    *,
    input: Any = None,
    timeout: float | None = None,
    max_buffer: int | None = DEFAULT_MAX_BUFFER,
    kill_signal: SignalLike = "SIGTERM",
    encoding: str | None = None,
    errors: str = "strict",
    cwd: StrOrBytesPath | None = None,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> CompletedProcess:
    """Run a program to completion without blocking the loop (see :func:`pyforkd.exec_file`).

    Same result and errors: :class:`ExecError` for a non-zero exit, a signal or a timeout,
    :class:`MaxBufferError` when a stream goes over ``max_buffer``.
    """
    arglist = check_args(args)
    cmd = cmd_text([file, *arglist])
    timeout = check_timeout(timeout)
    limit = check_max_buffer(max_buffer)
    kill_sig = signal_number(kill_signal, "kill_signal")
    data = check_input(input, encoding)
    stdin = "pipe" if data is not None else "ignore"
    try:
        proc = await spawn(
            file, arglist, stdio=[stdin, "pipe", "pipe"], cwd=cwd, env=env, **options
        )
    except SpawnError as failed:
        failed.cmd = cmd
        raise
    chunks: list[list[bytes]] = [[], []]

    async def drain(i: int, stream: asyncio.StreamReader) -> None:
        size = 0
        while True:
            chunk = await stream.read(1 << 16)
            if not chunk:
                return
            size += len(chunk)
            chunks[i].append(chunk)  # (the read that goes over is kept whole: cut later)
            if limit and size > limit:
                raise _Overflow(i + 1)

    assert proc.stdout is not None and proc.stderr is not None
    state, overflow = "done", 0
    work = asyncio.gather(_feed(proc.stdin, data), drain(0, proc.stdout), drain(1, proc.stderr))
    try:
        await asyncio.wait_for(asyncio.shield(work), timeout)
        await asyncio.wait_for(proc.wait(), None if timeout is None else timeout)
    except asyncio.TimeoutError:
        state = "timeout"
    except _Overflow as exc:
        state, overflow = "overflow", exc.stream
    finally:
        if proc.returncode is None and proc.poll() is None:
            await _finish(proc, kill_sig)
            # What the child wrote before it died is still on its way through the pipes:
            # take it, but do not wait for an EOF that a grandchild holding them may delay.
            await asyncio.wait({work}, timeout=_DRAIN_AFTER_KILL)
        work.cancel()
        try:
            await work
        except (asyncio.CancelledError, _Overflow):
            pass
        proc._close_transports()
    out, errout = b"".join(chunks[0]), b"".join(chunks[1])
    assert proc.returncode is not None  # _finish or the wait above reaped it
    result = completed(proc.args, proc, out, errout, state, overflow, limit, encoding, errors)
    raise_for(result, state, overflow, max_buffer, timeout, cmd)
    return result


async def exec(
    command: str | bytes,
    *,
    shell: bool | StrOrBytesPath = True,
    **options: Any,
) -> CompletedProcess:
    """Run ``command`` through the shell without blocking the loop (see :func:`pyforkd.exec`)."""
    if not isinstance(command, (str, bytes)):
        raise TypeError(f"command must be a str, not {type(command).__name__}")
    return await exec_file(command, None, shell=shell or True, **options)


async def fork(
    module_path: StrOrBytesPath,
    args: Iterable[StrOrBytesPath] = (),
    *,
    limit: int = _STREAM_LIMIT,
    **options: Any,
) -> Process:
    """Start a script with an IPC channel, like :func:`pyforkd.fork`; its ``channel`` is async.

    ``await p.send(msg)``, ``await p.recv()``, ``async for msg in p``; with ``silent=True``
    the child's stdout and stderr are ``asyncio.StreamReader`` objects.
    """
    token = async_pipes.set(True)
    try:
        child = _cp.fork(module_path, args, **options)
    finally:
        async_pipes.reset(token)
    return await _wrap(child, limit)


class Worker(Process):
    """A :func:`fork_worker` worker seen from asyncio: ``await result()``, ``await join()``."""

    _child: _worker.Worker

    @property
    def name(self) -> str:
        """The worker's name (its target's by default)."""
        return self._child.name

    async def result(self, timeout: float | None = None) -> Any:
        """The target's return value; :class:`WorkerError` if it raised or the worker died."""
        w = self._child
        if _worker.outcome(w) is None:
            try:
                got = await self._channel().recv_control(timeout)
            except ChannelClosedError:
                got = _worker.died(w, await asyncio.wait_for(self.wait(), timeout))
            _worker.keep_outcome(w, got)
        return _worker.unpack(w)

    async def join(self, timeout: float | None = None) -> int:
        """Wait for the worker process to exit; return its returncode."""
        return await asyncio.wait_for(self.wait(), timeout)

    def __repr__(self) -> str:
        return f"<pyforkd.aio.Worker {self.name!r} pid={self.pid} returncode={self.returncode}>"


async def fork_worker(
    target: Callable[..., Any],
    /,
    *args: Any,
    start: str | None = None,
    name: str | None = None,
    daemon: bool = True,
    ring: int | None = None,
    **kwargs: Any,
) -> Worker:
    """Run ``target(*args, **kwargs)`` in a new process, like :func:`pyforkd.fork_worker`.

    ``start="fork"`` forks from the loop's thread at once; ``"spawn"`` and ``"forkserver"``
    start (or reach) their interpreter from a helper thread, so the loop never waits on
    an interpreter's start-up.  With ``ring``, sends and waits for messages run in a
    helper thread (shared memory is nothing the loop can watch).
    """
    loop = asyncio.get_running_loop()
    options: dict[str, Any] = {"start": start, "name": name, "daemon": daemon, "ring": ring}
    if start in (None, "fork"):
        w = _worker.fork_worker(target, *args, **options, **kwargs)
    else:
        check_target(target)
        w = await asyncio.to_thread(_worker.fork_worker, target, *args, **options, **kwargs)
    return Worker(w, loop)
