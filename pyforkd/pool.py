"""Pool: a ``concurrent.futures.Executor`` over pyforkd workers and their rings.

    with pyforkd.Pool(workers=4) as pool:
        fut = pool.submit(score, item)                  # a concurrent.futures.Future
        for r in pool.map(score, items): ...            # ordered; adaptive batching
        for r in pool.imap_unordered(score, items): ... # as they finish

Each worker is a :func:`pyforkd.fork_worker` with a pair of shared-memory rings (``ring``
bytes each way): tasks and results are pickled with protocol 5, so numpy arrays and other
out-of-band buffers are written straight into the ring (one copy).  A worker runs one
message at a time, a batch of tasks, and the pool gives work only to a worker with none:
a long task never holds short ones behind it while another worker is free.  Batches grow
with the queue (one wake-up for many small tasks).

A worker that dies (a segfault, ``os._exit``, the OOM killer) fails only the task it was
running, with :class:`WorkerCrashedError` naming its exit code or signal; it is replaced
and the pool goes on.  A worker sends its answers at least every millisecond, so when it
dies with several unanswered, each of those runs again alone to find the one: a task
that finished in the worker's last millisecond runs twice.  A task's exception comes
back with its remote traceback attached as ``__cause__``, as in ``ProcessPoolExecutor``.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import itertools
import logging
import multiprocessing
import os
import pickle
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any, cast

from . import worker as _worker
from .channel import ring_link
from .child_process import channel_of
from .errors import ChannelClosedError, PicklingError, PyforkdError

__all__ = ["Pool", "PoolBrokenError", "WorkerCrashedError"]

_BALANCES = ("least-loaded", "round-robin")
_MAX_BATCH = 256  # tasks in one message, at most
_MAX_BATCH_BYTES = 16 << 20  # and their pickles' bytes, at most (unless one task is bigger)
_RR_DEPTH = 2  # round-robin: batches a worker holds (the one it runs and the next)
_INIT_FAILURES = 3  # failed worker starts in a row (initializer raising): the pool breaks
_MAX_CHUNK = 16384  # items in one of map()'s tasks, at most
_FLUSH_SECONDS = 0.001  # a worker sends its answers at least this often
_CHUNK_SECONDS = 0.02  # map()'s adaptive chunks aim at this much work each


# Set when the interpreter starts to exit: pools then finish what was submitted (as
# ProcessPoolExecutor does) and take nothing new.
_exiting = threading.Event()
_live: weakref.WeakSet[Pool] = weakref.WeakSet()


def _finish_at_exit() -> None:
    _exiting.set()
    for pool in list(_live):
        pool.shutdown(wait=True)


# Before atexit's hooks (as concurrent.futures does), so that a submit() from one of them
# is refused instead of accepted into a pool nobody waits for; atexit where it is missing.
getattr(threading, "_register_atexit", atexit.register)(_finish_at_exit)


# Each worker's ring size per direction: 16 MiB.
DEFAULT_RING: int | None = 16 << 20


class WorkerCrashedError(PyforkdError, BrokenProcessPool):
    """The worker running this task died (``exitcode``: its exit code, or -signal).

    Also raised, with ``exitcode`` None and the error as ``__cause__``, when the task's
    arguments did not unpickle in the worker or its result did not unpickle here.  A
    ``concurrent.futures.process.BrokenProcessPool``, which drop-in code catches; unlike
    ``ProcessPoolExecutor``'s, the pool itself lives on: only this task failed, and a new
    worker takes the others.
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class PoolBrokenError(PyforkdError, BrokenProcessPool):
    """The pool cannot run tasks any more (its workers keep failing to start).

    Also a ``concurrent.futures.process.BrokenProcessPool``.
    """


class _RemoteTraceback(Exception):
    """The worker's traceback, as the ``__cause__`` of a task's exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class _Task:
    """A submitted call, pickled at once: the pool holds no reference to its objects."""

    __slots__ = ("buffers", "dropped", "future", "payload", "running", "size", "suspect", "tid")

    def __init__(self, tid: int, future: cf.Future[Any], payload: bytes, buffers: list) -> None:
        self.tid = tid
        self.size = len(payload) + sum(memoryview(b).nbytes for b in buffers)
        self.future = future
        self.dropped = False  # cancelled while it was being sent: it runs, nobody waits
        self.running = False  # its future says so (it was sent once; it may come back)
        self.suspect = False  # its worker died before answering it: it runs alone
        self.payload = payload  # pickle.dumps((fn, args, kwargs)), its out-of-band buffers:
        self.buffers = buffers  # kept until answered (a task whose worker died runs again)


class _Slot:
    """One worker place: the process there now, its batch in flight, its counters."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: _worker.Worker | None = None
        self.batch: collections.deque[_Task] = collections.deque()  # sent, not answered (in order)
        self.ends: collections.deque[int] = collections.deque()  # the last task id of each batch
        self.done = 0
        self.restarts = 0
        self.sent = 0  # tasks given to the current process (max_tasks_per_worker)
        self.retiring = False
        self.init_error: str | None = None  # its initializer's traceback, if it raised
        self.reader: threading.Thread | None = None


def _default_start() -> str:
    """The start method of a Pool made without one.

    Windows: spawn.  CPython 3.14+: multiprocessing's default (forkserver on Linux, spawn
    on macOS).  Before: fork, unless a thread of pyforkd's runs here now (another pool's
    readers, say), where a fork could copy a lock that thread holds: then forkserver.
    """
    if sys.platform == "win32":
        return "spawn"
    if sys.version_info >= (3, 14):
        method = multiprocessing.get_context().get_start_method()
        if method in _worker.START_METHODS:
            return method
    return "forkserver" if _worker.threads_alive() else "fork"


class Pool(cf.Executor):
    """A pool of ``workers`` processes (default: one per CPU) running submitted callables.

    ``start``: ``"fork"``, ``"spawn"`` or ``"forkserver"`` (see :func:`pyforkd.fork_worker`);
    by default fork on POSIX (multiprocessing's default from CPython 3.14), but forkserver
    while another thread of pyforkd's runs here (another pool's, say), and spawn on
    Windows.  A fork pool forks its first workers before its threads start, and later ones
    (replacements) from a zygote forked with them: no fork happens while a thread of the
    pool's runs.  ``balance``: ``"least-loaded"`` (the default: only an
    idle worker gets a batch, so a slow task never holds others back while a worker is
    free) or ``"round-robin"`` (batches go to the workers in turn without waiting for them
    to be idle: each holds the batch it runs and the next, so it never waits for the
    parent between batches, but a slow task delays the ones queued behind it).  ``ring``: each
    worker's ring size in bytes per direction (a power of two; 16 MiB by default; None: the
    channel only).  ``initializer(*initargs)`` runs in each worker
    first; a pool whose workers fail it ``3`` times in a row is broken
    (:class:`PoolBrokenError` on every waiting future).  ``max_tasks_per_worker``: a worker
    that ran that many tasks is replaced.  ``restart``: replace workers that die (else the
    pool shrinks).  Work still pending when the interpreter exits is finished first, as
    ``ProcessPoolExecutor`` does.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        start: str | None = None,
        balance: str = "least-loaded",
        ring: int | None = DEFAULT_RING,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        restart: bool = True,
    ) -> None:
        if workers is None:
            workers = os.cpu_count() or 1
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a count >= 1, not {workers!r}")
        if balance not in _BALANCES:
            raise ValueError(f"balance must be 'least-loaded' or 'round-robin', not {balance!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable")
        if max_tasks_per_worker is not None and (
            isinstance(max_tasks_per_worker, bool)
            or not isinstance(max_tasks_per_worker, int)
            or max_tasks_per_worker < 1
        ):
            raise ValueError(
                f"max_tasks_per_worker must be a count >= 1, not {max_tasks_per_worker!r}"
            )
        if start not in (None, *_worker.START_METHODS):
            raise ValueError(f"start must be one of {', '.join(_worker.START_METHODS)}")
        self._start = start
        self._balance = balance
        self._ring = ring
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks = max_tasks_per_worker
        self._restart = restart
        self._lock = threading.Lock()
        self._queue: collections.deque[_Task] = collections.deque()
        self._ids = itertools.count()
        self._shutdown = False
        self._stopping = False  # the workers were told to stop
        self._broken: str | None = None
        self._init_failures = 0
        self._launching = 0  # replacements being started now (by readers, outside the lock)
        self._next = 0  # round-robin: where the search for an idle worker starts
        self._slots = [_Slot(i) for i in range(workers)]
        _live.add(self)
        # Forked workers come from this process while it runs no thread of the pool's: the
        # first ones now, before their reader threads start, and every later one (a
        # replacement) from a zygote forked now too.
        if start is None:
            self._start = start = _default_start()
        forking = start == "fork"
        self._zygote: _worker.Zygote | None = None
        try:
            for slot in self._slots:
                self._launch(slot, read=False)
            if forking:
                self._zygote = _worker.Zygote(_serve, self._initializer, self._initargs)
            for slot in self._slots:
                self._read_from(slot)
        except BaseException:
            self.shutdown(wait=True, cancel_futures=True)
            self._stop_zygote()
            raise

    @property
    def workers(self) -> int:
        """How many worker places the pool has."""
        return len(self._slots)

    # ---- submitting -------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker; its ``Future``.

        ``RuntimeError`` after :meth:`shutdown`; a function or argument that cannot be
        pickled fails that future only (``TypeError`` / ``PicklingError``).
        """
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {type(fn).__name__}")
        future: cf.Future[Any] = cf.Future()
        buffers: list[pickle.PickleBuffer] = []
        error: PicklingError | None = None
        try:
            payload = pickle.dumps((fn, args, kwargs), protocol=5, buffer_callback=buffers.append)
        except Exception as exc:
            payload, error = b"", _pickle_failure(exc)
        with self._lock:
            if _exiting.is_set():
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._broken is not None:
                raise PoolBrokenError(self._broken)
            if error is not None:
                future.set_exception(error)
                return future
            self._queue.append(_Task(next(self._ids), future, payload, buffers))
            self._dispatch()
        return future

    def _dispatch(self) -> None:
        """Give batches to the workers that can take one (under the lock).

        least-loaded: idle workers only.  round-robin: each worker in turn, up to
        ``_RR_DEPTH`` batches unanswered.
        """
        n = len(self._slots)
        depth = _RR_DEPTH if self._balance == "round-robin" else 1
        for k in range(n):
            if not self._queue:
                return
            slot = self._slots[(self._next + k) % n]
            if len(slot.ends) >= depth or slot.process is None or slot.retiring:
                continue
            if self._max_tasks is not None and slot.sent >= self._max_tasks:
                continue  # it retires once its batch is answered
            if self._balance == "round-robin":
                self._next = (slot.index + 1) % n
            self._send_batch(slot)

    def _send_batch(self, slot: _Slot) -> None:
        # A share of the queue per worker alive, busy or not: an idle worker that took it
        # all would leave a worker that frees up soon after with nothing (map's chunks
        # are each a good part of the work).
        takers = sum(1 for s in self._slots if s.process is not None)
        size = max(1, min(_MAX_BATCH, len(self._queue) // max(1, takers)))
        if self._max_tasks is not None:
            size = min(size, self._max_tasks - slot.sent)
        batch: list[_Task] = []
        nbytes = 0
        while self._queue and len(batch) < size:
            task = self._queue[0]
            if task.suspect and batch:
                break  # a suspect runs alone: its own batch
            nbytes += task.size
            if batch and nbytes > _MAX_BATCH_BYTES:
                break  # (big arguments: fewer at a time, each message within bounds)
            self._queue.popleft()
            if task.running or not task.future.cancelled():
                batch.append(task)
                if task.suspect:
                    break
        if not batch:
            return
        process = slot.process
        assert process is not None
        try:
            process.send(("run", [(t.tid, t.payload, t.buffers) for t in batch]))
        except ChannelClosedError:
            self._queue.extendleft(reversed(batch))
            return  # it died: its reader thread replaces it
        except ValueError as exc:  # over the channel's max_message_size: a task too big
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:
                for task in batch:
                    task.suspect = True  # each alone: the one too big fails by itself
                self._queue.extendleft(reversed(batch))
                self._send_batch(slot)
            return
        for task in batch:
            if not task.running:
                task.running = True
                task.dropped = not task.future.set_running_or_notify_cancel()
        slot.batch.extend(batch)
        slot.ends.append(batch[-1].tid)
        slot.sent += len(batch)

    # ---- the workers --------------------------------------------------------------------

    def _launch(self, slot: _Slot, read: bool = True) -> None:
        """Start a worker in ``slot``, and (``read``) the thread that reads its answers."""
        name = f"pool worker {slot.index}"
        if self._zygote is not None:
            process = self._zygote.fork(ring=self._ring, name=name)
        else:
            process = _worker.fork_worker(
                _serve,
                self._initializer,
                self._initargs,
                start=self._start,
                ring=self._ring,
                name=name,
            )
        with self._lock:
            slot.process = process
            slot.sent = 0
            slot.retiring = False
        if read:
            self._read_from(slot)

    def _read_from(self, slot: _Slot) -> None:
        """Start the thread that reads the answers of the worker in ``slot``."""
        with self._lock:
            process = slot.process
            if process is None:
                return
            reader = threading.Thread(
                target=self._read, args=(slot, process), name="pyforkd pool reader", daemon=True
            )
            slot.reader = reader
            reader.start()  # (under the lock: shutdown() may join it as soon as it is there)
            if self._stopping:  # the pool wound down while this one started
                _stop(process)

    def _stop_zygote(self) -> None:
        zygote, self._zygote = self._zygote, None
        if zygote is not None:
            zygote.stop()

    def _read(self, slot: _Slot, process: _worker.Worker) -> None:
        """In a thread per worker: its answers, until it ends.

        A worker sends its answers at least every millisecond (a slower task's at once),
        in order; see :meth:`_ended` for what a death means for the ones not answered.
        """
        try:
            link = ring_link(channel_of(process))
        except ChannelClosedError:
            link = None  # (the loop below sees the end)
        if link is not None:
            # Results are kept as long as their futures: built on views of the ring, the
            # first one kept would stop the ring there; each is copied out instead.
            link.copy_out = True
        while True:
            try:
                kind, value = process.recv()
            except (ChannelClosedError, OSError):
                break
            except Exception as exc:
                # The worker's own message did not decode (each result travels pickled on
                # its own, so this is not a result's fault): its tasks fail with that error
                # and the worker is replaced (no later answer can be trusted).
                with self._lock:
                    for task in slot.batch:
                        if not task.dropped:
                            task.future.set_exception(exc)
                    slot.batch.clear()
                    slot.ends.clear()
                process.kill("SIGKILL")
                continue
            if kind == "init-error":
                self._init_failed(slot, value)
                break
            if kind == "ready":
                with self._lock:
                    self._init_failures = 0
                    self._dispatch()
                continue
            self._take_answers(slot, process.pid, value)
            del value  # (nothing of a task's is held while the next answers are awaited)
        self._ended(slot, process)

    def _take_answers(
        self, slot: _Slot, pid: int, answers: list[tuple[int, int, Any, Any]]
    ) -> None:
        """Resolve the futures of a worker's answers, each result unpickled on its own."""
        outcomes = [
            (tid, *_outcome(status, data, bufs, pid)) for tid, status, data, bufs in answers
        ]
        with self._lock:
            for tid, ok, value in outcomes:
                task = slot.batch.popleft()
                assert task.tid == tid, "a worker answered out of order"
                if tid == slot.ends[0]:
                    slot.ends.popleft()
                if not task.dropped:  # (cancelled while it was being sent: nobody waits)
                    if ok:
                        task.future.set_result(value)
                    else:
                        task.future.set_exception(value)
            slot.done += len(outcomes)
            self._answered(slot)

    def _answered(self, slot: _Slot) -> None:
        if not slot.batch:
            self._after_batch(slot)
        elif len(slot.ends) < _RR_DEPTH and self._balance == "round-robin":
            self._dispatch()  # a batch ended: room for the next

    def _after_batch(self, slot: _Slot) -> None:
        """Under the lock: retire a worker at its quota, then give out more work."""
        if self._max_tasks is not None and slot.sent >= self._max_tasks and not slot.retiring:
            slot.retiring = True
            assert slot.process is not None
            _stop(slot.process)  # it ends; _ended replaces it
        self._dispatch()
        self._stop_when_idle()

    def _init_failed(self, slot: _Slot, text: str) -> None:
        with self._lock:
            slot.init_error = text
            self._init_failures += 1
            if self._init_failures >= _INIT_FAILURES and self._broken is None:
                self._broken = (
                    f"the pool's workers keep failing to start ({self._init_failures} in a "
                    f"row); the initializer raised:\n{text}"
                )

    def _ended(self, slot: _Slot, process: _worker.Worker) -> None:
        """The worker's channel closed: reap it, fail what it ran, maybe replace it."""
        try:
            code = process.wait(timeout=10)
        except PyforkdError:
            process.kill("SIGKILL")
            code = process.wait()
        with self._lock:
            lost, slot.batch = list(slot.batch), collections.deque()
            # Only the batch it was running (up to its first batch end) can hold the task
            # that killed it; a round-robin worker's next batch never began.
            first = slot.ends[0] if slot.ends else None
            slot.ends.clear()
            cut = next((i + 1 for i, t in enumerate(lost) if t.tid == first), len(lost))
            self._queue.extendleft(reversed(lost[cut:]))
            lost = lost[:cut]
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            if slot.init_error is not None:
                why = f"failed to start: its initializer raised:\n{slot.init_error}"
            else:
                why = f"running this task died ({how})"
            error = WorkerCrashedError(f"the worker (pid {process.pid}) {why}", code)
            if slot.init_error is None and len(lost) > 1 and not lost[0].suspect:
                # Answers go at least every millisecond, so the task that killed the worker
                # is among the unanswered ones, but which one is not known: each runs
                # again, alone (a task that finished in that last millisecond runs twice).
                for task in lost:
                    task.suspect = True
                self._queue.extendleft(reversed(lost))
                lost = []
            else:
                # It ran alone or first (or the worker never started): it is the one that
                # fails; the others never began and wait for another worker.
                self._queue.extendleft(reversed(lost[1:]))
                lost = lost[:1]
            for task in lost:
                if not task.dropped:
                    task.future.set_exception(error)
            slot.init_error = None
            slot.process = None
            # Replaced while work is left, after shutdown() too (a worker retired at its
            # max_tasks_per_worker, or one that died with tasks still queued).
            again = (
                self._broken is None
                and (self._restart or slot.retiring)
                and not self._stopping
                and (not self._shutdown or bool(self._queue))
            )
            if again:
                self._launching += 1  # (no "every worker is gone" while one is starting)
            if self._broken is not None:
                self._fail_queue(PoolBrokenError(self._broken))
        if again:
            retired = slot.retiring  # (_launch resets it)
            try:
                self._launch(slot)
            except Exception as exc:
                with self._lock:
                    self._broken = f"a replacement worker could not start: {exc}"
                    self._fail_queue(PoolBrokenError(self._broken))
            else:
                if not retired:
                    slot.restarts += 1
        with self._lock:
            if again:
                self._launching -= 1
            over = (
                not any(s.process is not None for s in self._slots)
                and not again
                and not self._launching
            )
            if over:
                if not self._shutdown and self._broken is None:
                    self._broken = "every worker of the pool is gone (restart=False)"
                self._fail_queue(PoolBrokenError(self._broken or "the pool is shut down"))
            self._dispatch()
            self._stop_when_idle()
        if over:
            # Every worker it made is reaped (their exit codes came through it): it can go.
            self._stop_zygote()

    def _fail_queue(self, exc: BaseException) -> None:
        while self._queue:
            task = self._queue.popleft()
            if task.running:
                if not task.dropped:
                    task.future.set_exception(exc)
            elif task.future.set_running_or_notify_cancel():
                task.future.set_exception(exc)

    # ---- map -----------------------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """``fn`` over the items of ``iterables`` in order, as ``Executor.map``.

        The input is read and submitted now, as ``Executor.map`` does, in chunks of
        ``chunksize`` items per task (by default about four chunks per worker).  With
        ``buffersize`` (CPython 3.14's name and meaning) it is read lazily instead: at most
        that many chunks are submitted ahead of the results taken, and by default the
        chunk size adapts so that each task does about 20 ms of work.  ``TimeoutError``
        when a result is not there ``timeout`` seconds after the call.  A result handed
        out is not kept by the iterator.
        """
        if buffersize is not None and (
            isinstance(buffersize, bool) or not isinstance(buffersize, int) or buffersize < 1
        ):
            raise ValueError(f"buffersize must be a count >= 1 or None, not {buffersize!r}")
        star = len(iterables) != 1  # (one iterable: items as they are, mapped in C)
        items = iter(iterables[0]) if not star else zip(*iterables)
        return self._mapped(fn, items, timeout, chunksize, True, star, buffersize)

    def imap_unordered(
        self, fn: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None
    ) -> Iterator[Any]:
        """``fn`` over ``iterable``'s items, each result as soon as it is there.

        The input is read lazily, a bounded window ahead of the results taken.
        """
        return self._mapped(fn, iter(iterable), None, chunksize, False, False, 4 * self.workers)

    def _mapped(
        self,
        fn: Callable[..., Any],
        items: Iterator[Any],
        timeout: float | None,
        chunksize: int | None,
        ordered: bool,
        star: bool,
        window: int | None,
    ) -> Iterator[Any]:
        """The map family: ``window`` chunks ahead at most, or (None) everything now."""
        if chunksize is not None and (
            isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
        ):
            raise ValueError(f"chunksize must be a count >= 1, not {chunksize!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        pending: collections.deque[cf.Future[Any]] = collections.deque()
        adapt = chunksize is None and window is not None
        if window is None:  # everything now, as Executor.map
            listed = list(items)
            size = chunksize or max(1, min(_MAX_CHUNK, -(-len(listed) // (4 * self.workers))))
            for i in range(0, len(listed), size):
                pending.append(self.submit(_run_chunk, fn, listed[i : i + size], star))
            del listed
            source: Iterator[Any] = iter(())
        else:
            size = chunksize or 1
            source = items
        exhausted = window is None

        def refill() -> None:
            nonlocal exhausted
            while not exhausted and window is not None and len(pending) < window:
                chunk = list(itertools.islice(source, size))
                if not chunk:
                    exhausted = True
                    return
                pending.append(self.submit(_run_chunk, fn, chunk, star))

        def chunks() -> Generator[Iterator[Any], None, None]:
            nonlocal size
            try:
                refill()
                while pending:
                    if ordered:
                        future = pending.popleft()
                    else:
                        done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                        future = done.pop()
                        pending.remove(future)
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    values, error, spent = future.result(left)
                    del future
                    if adapt and values:
                        per_item = spent / max(1, len(values) + (error is not None))
                        size = max(1, min(_MAX_CHUNK, int(_CHUNK_SECONDS / max(per_item, 1e-8))))
                    refill()
                    # Handed out by popping (C's loop still, and no comparison of the
                    # items): the list keeps no result once it is out.
                    values.reverse()
                    yield itertools.starmap(values.pop, itertools.repeat((), len(values)))
                    del values
                    if error is not None:
                        raise _with_cause(error)
            finally:
                for future in pending:
                    future.cancel()

        return _Results(chunks())

    # ---- the end -------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; the workers stop once the queue is done.

        ``cancel_futures``: cancel what has not started.  ``wait``: return once every
        worker has exited (else at once; the workers finish the queue in the background).
        """
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                kept = [t for t in self._queue if t.running]  # sent once: they cannot be
                for task in self._queue:
                    task.future.cancel()
                self._queue.clear()
                self._queue.extend(kept)
            self._stop_when_idle()
        if wait:
            for slot in self._slots:
                joined = None
                while True:
                    with self._lock:  # (a reader is set and started under the lock)
                        reader = slot.reader
                    if reader is None or reader is joined:
                        break
                    reader.join()  # then its replacement, if one started meanwhile
                    joined = reader

    def _stop_when_idle(self) -> None:
        """Under the lock: once shut down with nothing queued or running, stop the workers."""
        if not self._shutdown or self._stopping or self._queue:
            return
        if any(s.batch for s in self._slots):
            return
        self._stopping = True  # a worker started after this is stopped at once
        for slot in self._slots:
            if slot.process is not None:
                _stop(slot.process)

    def stats(self) -> list[dict[str, int]]:
        """Per worker place: ``pid`` (0 while none runs), ``done``, ``in_flight``, ``restarts``."""
        with self._lock:
            return [
                {
                    "pid": s.process.pid if s.process is not None else 0,
                    "done": s.done,
                    "in_flight": len(s.batch),
                    "restarts": s.restarts,
                }
                for s in self._slots
            ]


class _Results(itertools.chain[Any]):
    """map()'s iterator, with ``close()`` as a generator has (it cancels what is ahead).

    The chunks' items are handed out by C: a generator's yield per item costs the caller
    more than a worker spends on a trivial task.
    """

    _chunks: Generator[Iterator[Any], None, None]

    def __new__(cls, chunks: Generator[Iterator[Any], None, None]) -> _Results:
        self = cast(_Results, super().from_iterable(chunks))
        self._chunks = chunks
        return self

    def close(self) -> None:
        """Stop: the chunks submitted ahead are cancelled; nothing more comes."""
        self._chunks.close()
        collections.deque(self, maxlen=0)  # drops the rest of the chunk at hand


def _with_cause(value: tuple[BaseException, str]) -> BaseException:
    exc, text = value
    exc.__cause__ = _RemoteTraceback(text)
    return exc


def _run_chunk(fn: Callable[..., Any], chunk: list[Any], star: bool) -> Any:
    """One task of map(): ``fn`` over a chunk (``star``: items are argument tuples).

    Returns (results, the first error or None, seconds spent).  The loop is C's (``map``
    into ``list.extend``, which keeps what it appended when ``fn`` raises).
    """
    out: list[Any] = []
    t0 = time.perf_counter()
    try:
        out.extend(itertools.starmap(fn, chunk) if star else map(fn, chunk))
    except BaseException as exc:
        return out, _describe(exc), time.perf_counter() - t0
    return out, None, time.perf_counter() - t0


def _describe(exc: BaseException) -> tuple[BaseException, str]:
    """An exception and its traceback's text, in a form that pickles."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if _pickle_error(exc) is not None:
        exc = RuntimeError(f"{type(exc).__qualname__}: {exc} (the exception could not be pickled)")
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    return exc, text


def _serve(initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
    """A pool worker: run batches until the pool closes the channel."""
    ch = _worker.parent()
    assert ch is not None
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            # Logged where ProcessPoolExecutor logs it, and told to the pool.
            logging.getLogger("concurrent.futures").critical(
                "Exception in initializer:", exc_info=True
            )
            ch.send(("init-error", _describe(exc)[1]))
            return
    ch.send(("ready", None))
    while True:
        try:
            kind, batch = ch.recv()
        except ChannelClosedError:
            return
        if kind == "stop":
            return
        answers: list[tuple[int, int, Any, Any]] = []
        last = time.perf_counter()
        for tid, payload, buffers in batch:
            answers.append((tid, *_run_task(payload, buffers)))
            now = time.perf_counter()
            if now - last >= _FLUSH_SECONDS:  # a slow task's answer goes at once
                ch.send(("done", answers))
                answers = []
                last = now
        del batch  # (a task's arguments are not kept until the next batch)
        if answers:
            ch.send(("done", answers))


# How a task ended, in a worker's answer: a result, an exception, or arguments that could not
# be unpickled there.  The data is pickled on its own, so a bad one spoils nothing else.
_RESULT, _RAISED, _NOT_UNPICKLED = 0, 1, 2


def _run_task(payload: bytes, buffers: list[Any]) -> tuple[int, bytes, list[Any]]:
    """Unpickle a task, run it, pickle what came of it.

    Anything short of the process dying is the task's outcome, ``SystemExit`` and
    ``KeyboardInterrupt`` included (raised by the task, or by its result's pickling).
    """
    try:
        fn, args, kwargs = pickle.loads(payload, buffers=buffers)
    except BaseException as exc:
        return (_NOT_UNPICKLED, *_pickled(_describe(exc)))
    try:
        status, value = _RESULT, fn(*args, **kwargs)
    except BaseException as exc:
        status, value = _RAISED, _describe(exc)
    del fn, args, kwargs
    try:
        return (status, *_pickled(value))
    except BaseException as exc:
        return (_RAISED, *_pickled(_describe(exc)))


def _pickled(value: Any) -> tuple[bytes, list[Any]]:
    buffers: list[Any] = []
    return pickle.dumps(value, protocol=5, buffer_callback=buffers.append), buffers


def _outcome(status: int, data: bytes, buffers: list[Any], pid: int) -> tuple[bool, Any]:
    """(ok, the result or the exception) of an answer, unpickled here.

    A result that does not unpickle here (or exits while it does) fails its task alone.
    """
    try:
        value = pickle.loads(data, buffers=buffers)
    except BaseException as exc:
        error = WorkerCrashedError(
            f"the result of this task could not be unpickled here: {type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return False, error
    if status == _RESULT:
        return True, value
    if status == _RAISED:
        return False, _with_cause(value)
    cause, text = value
    error = WorkerCrashedError(
        f"the worker (pid {pid}) could not unpickle this task: {type(cause).__name__}: {cause}"
    )
    error.__cause__ = _RemoteTraceback(text)
    return False, error


def _pickle_failure(exc: Exception) -> PicklingError:
    error = PicklingError(f"cannot pickle this task: {exc}")
    error.__cause__ = exc
    return error


def _pickle_error(obj: Any) -> Exception | None:
    """Why ``obj`` cannot be pickled (a :class:`PicklingError`), or None when it can."""
    try:
        pickle.dumps(obj, protocol=5)
    except Exception as exc:
        return PicklingError(f"cannot pickle this message: {exc}")
    return None


def _stop(process: _worker.Worker) -> None:
    """Ask a worker to end (after the batch it runs, if any)."""
    try:
        process.send(("stop", None))
    except ChannelClosedError:
        pass  # it is gone already: its reader sees to it
