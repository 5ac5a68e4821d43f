"""pyforkd.Pool: the concurrent.futures Executor contract (result, exception with its remote
traceback, cancel, as_completed, wait, map with timeout, shutdown variants), crash isolation
(a task that kills its worker fails alone), recycling, an idle worker getting the next task
while another runs a long one, initializer failures, asyncio's run_in_executor, arrays
through the rings, and no process left behind."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import faulthandler
import os
import pickle
import signal
import sys
import threading
import time

import pytest
from _helpers import alive, posix_only_because, zombie_children
from hypothesis import given, settings
from hypothesis import strategies as st

import pyforkd
from pyforkd.pool import Pool, PoolBrokenError, WorkerCrashedError

BrokenProcessPool = cf.process.BrokenProcessPool


def add_one(x):
    return x + 1


def fail(text):
    raise ValueError(text)


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def die(code):
    os._exit(code)


def die_every_100th(i):
    if i % 100 == 99:
        os._exit(1)
    return i * 2


def segfault():
    faulthandler.disable()  # (pytest's, inherited by the fork: no dump on the console)
    os.kill(os.getpid(), signal.SIGSEGV)


def double(a):
    return a * 2


def touch_file(path):
    with open(path, "w"):
        pass


def pid():
    return os.getpid()


def init_fails():
    raise RuntimeError("no database here")


def init_sets(value):
    os.environ["POOL_INIT"] = value


def read_init():
    return os.environ.get("POOL_INIT")


def wait_for_file(path):
    while not os.path.exists(path):
        time.sleep(0.005)
    return "released"


@pytest.fixture
def pool():
    with Pool(workers=2) as p:
        yield p


def test_submit_result_exception_and_remote_traceback(pool):
    assert pool.submit(add_one, 41).result(timeout=30) == 42
    fut = pool.submit(fail, "bad input 7")
    with pytest.raises(ValueError, match="bad input 7") as info:
        fut.result(timeout=30)
    cause = info.value.__cause__
    assert cause is not None and "in fail\n    raise ValueError(text)" in str(cause)
    assert pool.submit(pow, 2, 10).result(timeout=30) == 1024  # builtins travel too
    assert pool.workers == 2


def test_unpicklable_function_or_argument_fails_that_future_only(pool):
    good = [pool.submit(add_one, i) for i in range(20)]
    bad = pool.submit(add_one, threading.Lock())
    lam = pool.submit(lambda: 1)
    # As ProcessPoolExecutor's (a pickle.PicklingError), and a TypeError as before.
    for future in (bad, lam):
        error = future.exception(timeout=30)
        assert isinstance(error, pickle.PicklingError) and isinstance(error, TypeError)
        assert isinstance(error, pyforkd.PicklingError)
    assert "lock" in str(bad.exception())
    assert [f.result(timeout=30) for f in good] == list(range(1, 21))


def test_a_crash_and_a_broken_pool_are_what_drop_in_code_catches():
    from concurrent.futures import BrokenExecutor
    from concurrent.futures.process import BrokenProcessPool

    with Pool(workers=1) as p:
        crashed = p.submit(os._exit, 3)
        with pytest.raises(BrokenProcessPool, match="exit code 3"):
            crashed.result(timeout=60)
        assert p.submit(add_one, 1).result(timeout=60) == 2  # the pool itself lives on
    assert issubclass(PoolBrokenError, BrokenProcessPool)
    assert issubclass(WorkerCrashedError, BrokenExecutor)


def test_an_unpicklable_task_batched_with_others_does_not_strand_them(tmp_path):
    gate = tmp_path / "gate"
    with Pool(workers=1) as p:
        # The blocker goes to the idle worker at once; the next three wait for it to be
        # answered and then go together as one batch.
        blocker = p.submit(wait_for_file, str(gate))
        queued = [p.submit(add_one, 1), p.submit(add_one, threading.Lock()), p.submit(add_one, 2)]
        gate.touch()
        assert blocker.result(timeout=30) == "released"
        with pytest.raises(TypeError, match="lock"):
            queued[1].result(timeout=30)
        assert [queued[0].result(timeout=30), queued[2].result(timeout=30)] == [2, 3]


def test_as_completed_wait_and_map(pool):
    futures = [pool.submit(add_one, i) for i in range(50)]
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == list(range(1, 51))
    done, not_done = cf.wait(futures, timeout=30)
    assert len(done) == 50 and not not_done
    assert list(pool.map(add_one, range(1000))) == list(range(1, 1001))
    assert list(pool.map(pow, [2, 3], [5, 2], chunksize=1)) == [32, 9]
    assert sorted(pool.imap_unordered(add_one, range(300))) == list(range(1, 301))
    with pytest.raises(ValueError, match="chunksize must be a count >= 1"):
        pool.map(add_one, [1], chunksize=0)


def test_map_raises_at_the_failing_item_and_honours_timeout(pool, tmp_path):
    results = pool.map(fail_on_3, range(6), chunksize=2)
    assert next(results) == 0 and next(results) == 1 and next(results) == 2
    with pytest.raises(ValueError, match="item 3"):
        next(results)
    gate = tmp_path / "gate"
    slow = pool.map(wait_for_file, [str(gate)], timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        next(slow)
    gate.touch()  # (the task itself goes on; let it end)


def fail_on_3(i):
    if i == 3:
        raise ValueError("item 3")
    return i


def test_map_with_buffersize_reads_its_input_lazily(pool):
    taken = []

    def source():
        for i in range(10**9):  # endless if read ahead without bound
            taken.append(i)
            yield i

    it = pool.map(add_one, source(), chunksize=4, buffersize=3)
    assert [next(it) for _ in range(10)] == list(range(1, 11))
    assert len(taken) <= 4 * (3 + 3)  # at most buffersize chunks ahead of what was taken
    it.close()
    with pytest.raises(ValueError, match="buffersize"):
        pool.map(add_one, [1], buffersize=0)


def test_map_submits_everything_at_call_time_as_executor_map(tmp_path):
    # map() followed by shutdown(): every item runs, as with Executor.map.
    p = Pool(workers=2)
    it = p.map(touch_file, [str(tmp_path / f"f{i}") for i in range(40)])
    p.shutdown(wait=True)
    assert sorted(os.listdir(tmp_path)) == sorted(f"f{i}" for i in range(40))
    assert list(it) == [None] * 40


class Tracked:
    """An object whose collection can be seen (a weakref's callback)."""

    def method(self):
        return 1


def make_tracked(_):
    return Tracked()


def test_nothing_is_held_after_use(pool):
    import gc
    import weakref

    # results handed out by map's iterator
    for obj in pool.map(make_tracked, range(10)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None
    # the callable of a task nobody waits for
    gone = threading.Event()
    obj = Tracked()
    ref = weakref.ref(obj, lambda _: gone.set())
    pool.submit(obj.method)
    del obj
    assert gone.wait(30), "the pool kept a submitted callable alive"
    assert ref() is None


def test_cancel_before_start_and_shutdown_cancel_futures(tmp_path):
    gate = tmp_path / "gate"
    p = Pool(workers=1)
    try:
        running = p.submit(wait_for_file, str(gate))
        time.sleep(0.05)
        queued = [p.submit(add_one, i) for i in range(5)]
        assert queued[0].cancel() and queued[0].cancelled()
        assert not running.cancel()  # started: it cannot be
        threading.Timer(0.2, gate.touch).start()
        p.shutdown(wait=True, cancel_futures=True)
        assert running.result() == "released"
        assert all(f.cancelled() for f in queued)
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            p.submit(add_one, 1)
    finally:
        p.shutdown()


def test_shutdown_without_wait_still_runs_the_queue():
    p = Pool(workers=2)
    futures = [p.submit(add_one, i) for i in range(200)]
    pids = {s["pid"] for s in p.stats()}
    p.shutdown(wait=False)
    assert [f.result(timeout=30) for f in futures] == list(range(1, 201))
    deadline = time.monotonic() + 30
    while any(alive(x) for x in pids) or set(zombie_children()) & pids:
        assert time.monotonic() < deadline, "the workers never stopped (or were never reaped)"
        time.sleep(0.01)


@posix_only_because("POSIX signals (a segfault is signal 11)")
@pytest.mark.slow
@pytest.mark.parametrize("balance", ["least-loaded", "round-robin"])
def test_a_task_killing_its_worker_fails_alone(balance):
    with Pool(workers=2, balance=balance) as p:
        futures = [p.submit(die_every_100th, i) for i in range(1000)]
        crashed = 0
        for i, f in enumerate(futures):
            try:
                assert f.result(timeout=60) == i * 2
            except WorkerCrashedError as exc:
                crashed += 1
                assert "died (exit code 1)" in str(exc) and exc.exitcode == 1
        # Every 100th task kills its worker: those ten fail; every other task completes
        # (those batched with a crash run again, alone), and the pool keeps serving.
        assert crashed == 10
        assert [i for i, f in enumerate(futures) if f.exception() is not None] == list(
            range(99, 1000, 100)
        )
        with pytest.raises(WorkerCrashedError, match="signal 11"):
            p.submit(segfault).result(timeout=30)
        assert p.submit(add_one, 1).result(timeout=30) == 2
        assert sum(s["restarts"] for s in p.stats()) >= 10


def test_max_tasks_per_worker_recycles():
    with Pool(workers=1, max_tasks_per_worker=3) as p:
        pids = [p.submit(pid).result(timeout=30) for _ in range(9)]
        assert p.stats()[0]["restarts"] == 0  # a recycled worker is not a restart
    assert len(set(pids)) == 3 and pids == sorted(pids, key=pids.index)


def test_an_idle_worker_takes_short_tasks_while_another_runs_a_long_one(tmp_path):
    gate = tmp_path / "gate"
    with Pool(workers=2) as p:
        long = p.submit(wait_for_file, str(gate))
        short = [p.submit(pid) for _ in range(20)]
        pids = {f.result(timeout=30) for f in short}  # all done while the long one waits
        assert not long.done() and len(pids) == 1
        gate.touch()
        assert long.result(timeout=30) == "released"


def test_round_robin_gives_batches_in_turn_even_to_a_busy_worker(tmp_path):
    gate = tmp_path / "gate"
    with Pool(workers=2, balance="round-robin") as p:
        long = p.submit(wait_for_file, str(gate))  # the first worker
        short = [p.submit(pid) for _ in range(3)]  # second, first (queued), second
        assert short[0].result(timeout=30) == short[2].result(timeout=30)
        assert not short[1].done() and not long.done()  # behind the long task, its turn
        gate.touch()
        assert long.result(timeout=30) == "released"
        assert short[1].result(timeout=30) != short[0].result()
        assert [s["done"] for s in p.stats()] == [2, 2]


def test_initializer_runs_first_and_a_failing_one_breaks_the_pool():
    with Pool(workers=2, initializer=init_sets, initargs=("yes",)) as p:
        assert {p.submit(read_init).result(timeout=30) for _ in range(4)} == {"yes"}
    p = Pool(workers=1, initializer=init_fails)
    try:
        with pytest.raises((WorkerCrashedError, PoolBrokenError), match="no database here"):
            p.submit(add_one, 1).result(timeout=60)
        deadline = time.monotonic() + 60
        while True:  # the pool stops restarting after a bounded number of failed starts
            try:
                p.submit(add_one, 1).result(timeout=60)
            except PoolBrokenError as exc:
                assert "keep failing to start" in str(exc)
                break
            except WorkerCrashedError:
                assert time.monotonic() < deadline
    finally:
        p.shutdown()


def test_run_in_executor(pool):
    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(pool, add_one, i) for i in range(10)))

    assert asyncio.run(main()) == list(range(1, 11))


def test_numpy_arrays_travel_through_the_rings(pool, np):
    arrays = [np.arange(i, i + 500_000, dtype=np.float64) for i in range(4)]  # 4 MB each
    for a, b in zip(arrays, pool.map(double, arrays, chunksize=1)):
        assert np.array_equal(b, a * 2)


def test_results_kept_for_long_never_hold_the_ring(np):
    # 24 results of 512 KiB kept at once through 1 MiB rings: each is the caller's own
    # writable copy, and the ring it came through stays free for the next.
    with Pool(workers=2, ring=1 << 20) as p:
        arrays = [np.full(1 << 16, i, dtype=np.float64) for i in range(24)]
        kept = list(p.map(double, arrays, chunksize=1))
        for i, k in enumerate(kept):
            assert k.flags.writeable and k[0] == 2 * i and np.array_equal(k, arrays[i] * 2)
            k[0] = -1.0
        assert [k[0] for k in kept] == [-1.0] * 24
        assert all(s["restarts"] == 0 for s in p.stats())


def test_no_process_is_left_behind():
    p = Pool(workers=3)
    pids = {s["pid"] for s in p.stats()}
    assert [f.result(timeout=30) for f in [p.submit(add_one, i) for i in range(30)]]
    p.shutdown(wait=True)
    assert not any(alive(x) for x in pids)
    assert not zombie_children()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="workers must be a count >= 1, not 0"):
        Pool(workers=0)
    with pytest.raises(ValueError, match="balance must be 'least-loaded' or 'round-robin'"):
        Pool(workers=1, balance="random")
    with pytest.raises(ValueError, match="max_tasks_per_worker must be a count >= 1"):
        Pool(workers=1, max_tasks_per_worker=0)
    with pytest.raises(TypeError, match="initializer must be callable"):
        Pool(workers=1, initializer=3)
    with pytest.raises(ValueError, match="start must be one of"):
        Pool(workers=1, start="thread")


@pytest.fixture(scope="class")
def shared_pool():
    """One pool for a class's tests, shut down after them (no other test sees its threads)."""
    with Pool(workers=2, ring=1 << 16) as p:
        yield p


class TestMapProperties:
    """The examples share one pool."""

    @settings(max_examples=15, deadline=None)
    @given(st.lists(st.integers(-(2**40), 2**40), max_size=300), st.integers(1, 50) | st.none())
    def test_map_equals_the_builtin(self, shared_pool, xs, chunksize):
        assert list(shared_pool.map(add_one, xs, chunksize=chunksize)) == [x + 1 for x in xs]


def test_the_pool_is_in_the_package():
    assert pyforkd.Pool is Pool and pyforkd.WorkerCrashedError is WorkerCrashedError


def test_without_restart_a_pool_whose_workers_died_says_so():
    with Pool(workers=1, restart=False) as p:
        with pytest.raises(WorkerCrashedError, match="exit code 3"):
            p.submit(die, 3).result(timeout=30)
        deadline = time.monotonic() + 30
        while True:  # (the reader thread notices the death just after the future fails)
            try:
                p.submit(add_one, 1)
            except PoolBrokenError as exc:
                assert "every worker of the pool is gone" in str(exc)
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)


KILLED_PARENT = """
import os, sys, time
import pyforkd
sys.path.insert(0, sys.argv[1])
from test_pool import add_one, die
pool = pyforkd.Pool(workers=2)
try:
    pool.submit(die, 1).result()  # one replacement, started from a reader thread
except pyforkd.WorkerCrashedError:
    pass
assert pool.submit(add_one, 1).result() == 2
while not all(s["pid"] for s in pool.stats()):  # the replacement is on its way
    time.sleep(0.01)
print(" ".join(str(s["pid"]) for s in pool.stats()), flush=True)
time.sleep(600)
"""


def test_workers_die_with_a_killed_parent():
    here = os.path.dirname(os.path.abspath(__file__))
    parent = pyforkd.spawn(
        sys.executable, ["-c", KILLED_PARENT, here], stdio=["ignore", "pipe", "inherit"]
    )
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        parent.kill("SIGKILL")
        parent.wait()
        parent.close()
    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, "a worker outlived its killed parent"
        time.sleep(0.01)


def returns_a_lock(_):
    return threading.Lock()


def test_a_result_that_cannot_be_pickled_fails_that_task_only(pool):
    futures = [pool.submit(add_one, 1), pool.submit(returns_a_lock, 0), pool.submit(add_one, 2)]
    assert futures[0].result(timeout=30) == 2 and futures[2].result(timeout=30) == 3
    with pytest.raises(TypeError, match="lock"):
        futures[1].result(timeout=30)


def soak_task(kind, i):
    if kind == "exit":
        os._exit(3)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "raise":
        raise ValueError(i)
    if kind == "sleep":
        time.sleep(0.002)
    return i


@posix_only_because("POSIX signals (a segfault is signal 11)")
@pytest.mark.slow
@pytest.mark.parametrize("balance", ["least-loaded", "round-robin"])
def test_crash_isolation_soak(balance):
    # One round by default; PYFORKD_POOL_SOAK=SECONDS repeats rounds that long.
    import random

    seconds = float(os.environ.get("PYFORKD_POOL_SOAK", "0"))
    rng = random.Random(balance)
    end = time.monotonic() + seconds
    with Pool(workers=2, balance=balance, max_tasks_per_worker=500) as p:
        while True:
            kinds = rng.choices(["ok", "sleep", "raise", "exit", "kill"], [80, 10, 6, 2, 2], k=400)
            futures = [p.submit(soak_task, k, i) for i, k in enumerate(kinds)]
            for i, (k, f) in enumerate(zip(kinds, futures)):
                if k in ("exit", "kill"):
                    with pytest.raises(WorkerCrashedError) as info:
                        f.result(timeout=60)
                    assert info.value.exitcode == (3 if k == "exit" else -signal.SIGKILL)
                elif k == "raise":
                    with pytest.raises(ValueError):
                        f.result(timeout=60)
                else:
                    assert f.result(timeout=60) == i
            if time.monotonic() >= end:
                break
        pids = {s["pid"] for s in p.stats()}
    assert not set(zombie_children()) & pids
    assert not any(alive(x) for x in pids if x)


# ---- a drop-in ProcessPoolExecutor (CPython's own suite: tests/cpython/) ----------------


def exit_in_task():
    sys.exit(3)


def interrupt_in_task():
    raise KeyboardInterrupt


class ExitWhenPickled:
    def __reduce__(self):
        sys.exit(4)


class ExitWhenUnpickled:
    def __reduce__(self):
        return sys.exit, (5,)


class RaiseWhenUnpickled:
    def __reduce__(self):
        return fail, ("not here",)


def returns(obj_type):
    return obj_type()


def test_system_exit_and_interrupts_are_the_task_s_outcome(pool):
    with pytest.raises(SystemExit) as info:
        pool.submit(exit_in_task).result(timeout=60)
    assert info.value.code == 3
    with pytest.raises(KeyboardInterrupt):
        pool.submit(interrupt_in_task).result(timeout=60)
    with pytest.raises(SystemExit) as info:  # raised while the worker pickles the result
        pool.submit(returns, ExitWhenPickled).result(timeout=60)
    assert info.value.code == 4
    pids = {s["pid"] for s in pool.stats()}
    assert pool.submit(add_one, 1).result(timeout=60) == 2
    assert {s["pid"] for s in pool.stats()} == pids  # no worker died for any of it


def test_a_result_that_fails_to_unpickle_here_fails_its_task_alone(pool):
    # SystemExit while this process unpickles a result used to end the reader thread: the
    # future never resolved and shutdown(wait=True) hung.
    for kind in (ExitWhenUnpickled, RaiseWhenUnpickled):
        with pytest.raises(BrokenProcessPool) as info:
            pool.submit(returns, kind).result(timeout=60)
        assert "could not be unpickled here" in str(info.value)
        assert info.value.__cause__ is not None
    assert pool.submit(add_one, 1).result(timeout=60) == 2


def test_arguments_that_fail_to_unpickle_in_the_worker_are_reported(pool):
    with pytest.raises(BrokenProcessPool) as info:
        pool.submit(id, RaiseWhenUnpickled()).result(timeout=60)
    assert "could not unpickle this task: ValueError: not here" in str(info.value)
    assert "not here" in str(info.value.__cause__)  # the worker's traceback
    with pytest.raises(BrokenProcessPool):
        pool.submit(id, ExitWhenUnpickled()).result(timeout=60)
    assert pool.submit(add_one, 2).result(timeout=60) == 3


def use_proxy(d):
    d["pid"] = os.getpid()
    return d["pid"]


def put_in(q, value):
    q.put(value)


@posix_only_because("fork; and a spawned worker takes no multiprocessing handles on Windows")
@pytest.mark.parametrize("start", ["spawn", "forkserver", "fork"])
def test_multiprocessing_objects_reach_workers_of_every_start_method(start):
    import multiprocessing as mp

    ctx = mp.get_context(start)
    queue = ctx.Queue()
    with ctx.Manager() as manager, Pool(workers=1, start=start, initializer=put_in,
                                        initargs=(queue, "ready")) as p:  # fmt: skip
        assert queue.get(timeout=60) == "ready"  # a Queue through initargs
        shared = manager.dict()
        pid = p.submit(use_proxy, shared).result(timeout=60)  # the parent's authkey
        assert shared["pid"] == pid != os.getpid()


@posix_only_because("fork")
def test_max_tasks_per_worker_runs_what_was_queued_before_shutdown():
    p = Pool(workers=2, start="fork", max_tasks_per_worker=1)
    futures = [p.submit(pid_after, 0) for _ in range(6)]
    p.shutdown(wait=True)
    pids = [f.result(timeout=0) for f in futures]
    assert len(set(pids)) == 6  # each ran in a worker of its own, all after shutdown()


EXIT_SCRIPT = """
import atexit, os, sys, time
import pyforkd

def slow_touch(path):
    time.sleep(0.05)
    open(path, "w").close()

@atexit.register
def submit_late():  # registered first: runs after the pools finished
    try:
        pool.submit(slow_touch, os.path.join(sys.argv[1], "late"))
    except RuntimeError as exc:
        print("refused:", exc, flush=True)

if __name__ == "__main__":
    pool = pyforkd.Pool(2, start=sys.argv[2])
    for i in range(20):
        pool.submit(slow_touch, os.path.join(sys.argv[1], str(i)))
    if sys.argv[3] == "no-wait":
        pool.shutdown(wait=False)
"""


@posix_only_because("fork")
@pytest.mark.slow
@pytest.mark.parametrize("start", ["fork", "forkserver"])
@pytest.mark.parametrize("how", ["no-shutdown", "no-wait"])
def test_pending_work_is_finished_at_interpreter_exit(tmp_path, start, how):
    import subprocess

    script = tmp_path / "main.py"
    script.write_text(EXIT_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, str(script), str(out), start, how],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out), key=int) == [str(i) for i in range(20)]
    assert "refused: cannot schedule new futures after interpreter shutdown" in done.stdout
