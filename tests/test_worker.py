"""fork_worker: results and remote errors, both start methods, parent() inside the target,
and no orphans when the parent dies."""

from __future__ import annotations

import gc
import os
import signal
import sys
import textwrap
import time
import warnings

import pytest
from _helpers import (
    PY,
    alive,
    assert_no_leak,
    linux_only_because,
    open_fds,
    posix_only_because,
    wait_gone,
    windows_only_because,
)

import pyforkd
from pyforkd import Worker, WorkerError

# The start methods; Windows has only "spawn".
FORK = pytest.param("fork", marks=posix_only_because("Windows has no fork"))
FORKSERVER = pytest.param("forkserver", marks=posix_only_because("Windows has no fork"))
METHODS = [FORK, "spawn", FORKSERVER]


def add(a, b, *, c=0):
    return a + b + c


def boom():
    raise KeyError("nope")


def exit_hard():
    os._exit(3)


def unpicklable_result():
    return lambda: 1


def converse():
    ch = pyforkd.parent()
    ch.send({"from": "worker", "pid": os.getpid()})
    return ch.recv(timeout=30) * 2


def sleep_forever():
    while True:
        time.sleep(1)


def ready_then_sleep():
    pyforkd.parent().send("ready")
    sleep_forever()


@pytest.mark.parametrize("start", METHODS)
def test_result_and_join(start):
    w = pyforkd.fork_worker(add, 1, 2, c=3, start=start, name="adder")
    assert isinstance(w, Worker) and w.name == "adder"
    assert w.result(timeout=60) == 6
    assert w.result() == 6  # kept
    assert w.join(timeout=60) == 0


@pytest.mark.slow
@pytest.mark.parametrize("start", METHODS)
@pytest.mark.parametrize("ring", [None, 1 << 16])
def test_a_dropped_worker_closes_its_channel_quietly(start, ring):
    # Nobody calls close() on a worker (multiprocessing's Process has no such duty): the
    # channel goes with the Worker, closed by it, not left to the garbage collector (which
    # may finalize the socket first: "ResourceWarning: unclosed socket").
    def run_and_drop() -> None:
        w = pyforkd.fork_worker(add, 1, 2, start=start, ring=ring)
        assert w.result(timeout=60) == 3
        assert w.join(timeout=60) == 0

    run_and_drop()  # (what is made once: the fork server)
    gc.collect()
    before = open_fds()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run_and_drop()
        gc.collect()
    assert open_fds() == before
    assert [str(x.message) for x in seen if issubclass(x.category, ResourceWarning)] == []


@pytest.mark.parametrize("start", METHODS)
def test_remote_exception_becomes_worker_error(start):
    w = pyforkd.fork_worker(boom, start=start)
    with pytest.raises(WorkerError) as info:
        w.result(timeout=60)
    e = info.value
    assert e.exc_type == "KeyError" and e.exc_message == "'nope'"
    assert "in boom" in e.remote_traceback and 'raise KeyError("nope")' in e.remote_traceback
    assert isinstance(e.exception, KeyError)
    assert "Remote traceback" in str(e)
    assert w.join(timeout=60) == 1


@pytest.mark.parametrize("start", METHODS)
def test_worker_that_dies_without_an_answer(start):
    w = pyforkd.fork_worker(exit_hard, start=start)
    with pytest.raises(WorkerError, match="ended with returncode 3") as info:
        w.result(timeout=60)
    assert info.value.exitcode == 3


@pytest.mark.parametrize("start", METHODS)
def test_unpicklable_result_is_reported(start):
    w = pyforkd.fork_worker(unpicklable_result, start=start)
    with pytest.raises(WorkerError, match="cannot be sent back") as info:
        w.result(timeout=60)
    assert info.value.exc_type == "TypeError"
    w.join(timeout=60)


@pytest.mark.parametrize("start", METHODS)
def test_parent_channel_inside_the_target(start):
    w = pyforkd.fork_worker(converse, start=start)
    hello = w.recv(timeout=60)
    assert hello == {"from": "worker", "pid": w.pid}
    w.send(21)
    assert w.result(timeout=60) == 42
    assert w.join(timeout=60) == 0


@pytest.mark.parametrize("start", ["spawn", FORKSERVER])
def test_refuses_an_unpicklable_target_before_starting(fd_baseline, start):
    with pytest.raises(TypeError, match="cannot be pickled") as info:
        pyforkd.fork_worker(lambda: 1, start=start)
    assert "<lambda>" in str(info.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="start must be one of"):
        pyforkd.fork_worker(add, start="threads")
    with pytest.raises(TypeError, match="callable target"):
        pyforkd.fork_worker(42)


@posix_only_because("fork and POSIX signals")
@pytest.mark.parametrize("start", METHODS)
def test_disconnect_ends_the_worker(start):
    w = pyforkd.fork_worker(ready_then_sleep, start=start)
    assert w.recv(timeout=30) == "ready"
    w.disconnect()
    assert w.wait(timeout=10) == -signal.SIGKILL


SCRIPT = """
    import os, sys, pyforkd

    def square(x):
        return x * x

    if __name__ == "__main__":
        for start in ("fork", "spawn", "forkserver"):
            w = pyforkd.fork_worker(square, 7, start=start)
            print(start, w.result(timeout=60), w.join(timeout=60))
"""


@posix_only_because("Windows has no fork (the script uses all three start methods)")
def test_target_defined_in_a_scripts_main(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent(SCRIPT))
    r = pyforkd.exec_file(PY, [str(path)], timeout=120, encoding="utf-8", cwd=tmp_path)
    assert r.stdout.splitlines() == ["fork 49 0", "spawn 49 0", "forkserver 49 0"]


NO_GUARD = """
    import pyforkd

    def square(x):
        return x * x

    try:  # no `if __name__ == "__main__":` around this
        print(pyforkd.fork_worker(square, 7, start=START).result(timeout=60))
    except pyforkd.WorkerError as exc:
        print(exc.exc_type, "|", exc.exc_message.splitlines()[0])
"""


@pytest.mark.parametrize("start", ["spawn", FORKSERVER])
def test_a_main_without_the_guard_gets_a_clear_error(tmp_path, start):
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent(NO_GUARD).replace("START", repr(start)))
    r = pyforkd.exec_file(PY, [str(path)], timeout=120, encoding="utf-8", cwd=tmp_path)
    # The worker (or fork server) re-imports the script; its own fork_worker call is refused
    # there, and that error is what the parent sees.
    assert r.stdout.startswith("RuntimeError | ")
    assert "if __name__ == '__main__'" in r.stdout


ORPHAN = """
    import sys, threading, time, pyforkd

    def sleep_forever():
        while True:
            time.sleep(1)

    if __name__ == "__main__":
        start, where = sys.argv[1], sys.argv[2]
        box = []
        if where == "thread":  # started from a thread that ends at once
            t = threading.Thread(target=lambda: box.append(
                pyforkd.fork_worker(sleep_forever, start=start)))
            t.start()
            t.join()
        else:
            box.append(pyforkd.fork_worker(sleep_forever, start=start))
        server = pyforkd.worker._forkserver._server
        print(box[0].pid, server.pid if server else 0, flush=True)
        time.sleep(60)
"""


@posix_only_because("POSIX signals (the parent is SIGKILLed)")
@pytest.mark.slow
@pytest.mark.parametrize("start", METHODS)
@pytest.mark.parametrize("where", ["main", "thread"])
def test_worker_dies_within_a_second_of_its_parent(tmp_path, start, where):
    path = tmp_path / "orphan.py"
    path.write_text(textwrap.dedent(ORPHAN))
    parent = pyforkd.spawn(PY, [str(path), start, where], stdio=["ignore", "pipe", "inherit"])
    worker_pid, server_pid = map(int, parent.stdout.readline().split())
    assert alive(worker_pid)
    if where == "thread":
        time.sleep(0.3)  # the starting thread is gone: the worker must still be alive
        assert alive(worker_pid)
    parent.kill("SIGKILL")
    assert parent.wait(timeout=10) == -signal.SIGKILL
    parent.close()
    assert wait_gone(worker_pid, 1.0), f"worker {worker_pid} outlived its parent"
    if start == "forkserver":
        assert wait_gone(server_pid, 1.0), f"fork server {server_pid} outlived its parent"


@posix_only_because("fork and POSIX signals")
def test_a_dead_fork_server_is_replaced():
    first = pyforkd.fork_worker(add, 1, 2, start="forkserver")
    assert first.result(timeout=60) == 3
    assert first.join(timeout=60) == 0
    running = pyforkd.fork_worker(ready_then_sleep, start="forkserver")
    assert running.recv(timeout=60) == "ready"
    server = pyforkd.worker._forkserver._server
    assert server is not None
    server.kill("SIGKILL")
    assert server.wait(timeout=10) == -signal.SIGKILL
    w = pyforkd.fork_worker(add, 2, 2, start="forkserver")
    assert w.result(timeout=60) == 4
    assert w.join(timeout=60) == 0
    assert pyforkd.worker._forkserver._server is not server
    # A worker whose server died keeps working; only its exit status cannot be told.
    assert running.connected
    running.disconnect()
    with pytest.raises(ChildProcessError, match="exit status is lost"):
        running.join(timeout=60)


@posix_only_because("fork and POSIX signals")
def test_forked_workers_do_not_keep_each_others_parent_ends(tmp_path):
    # A second worker forked later must not hold the first one's parent-side socket, or
    # the first would not see the parent die.
    w1 = pyforkd.fork_worker(ready_then_sleep)
    w2 = pyforkd.fork_worker(ready_then_sleep)
    assert w2.recv(timeout=30) == "ready"  # its at-fork clean-up has run by now
    fd1 = w1.channel.fileno()
    inode = os.fstat(fd1).st_ino
    held = []
    for name in os.listdir(f"/proc/{w2.pid}/fd"):
        try:
            held.append(os.stat(f"/proc/{w2.pid}/fd/{name}").st_ino)
        except OSError:
            pass
    assert inode not in held
    before = open_fds()
    for w in (w1, w2):
        w.disconnect()
        assert w.wait(timeout=10) == -signal.SIGKILL
    assert len(open_fds()) <= len(before)


def fd_targets(pid, kinds=("socket:",)):
    """What process pid's descriptors of these kinds are ("socket:[123]", "pipe:[45]")."""
    found = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith(kinds):
            found.add(target)
    return found


@linux_only_because("reads another process's descriptors through /proc/<pid>/fd")
@pytest.mark.forks_with_threads  # (its own threads fork, at once: what it tests)
def test_workers_forked_from_many_threads_at_once_hold_only_their_own_end():
    # Threads starting workers at the same moment (a pool replacing several): a fork in
    # one thread must not take another's worker-side socket not yet handed over, or that
    # worker's death would never be seen by its parent.
    import threading

    barrier = threading.Barrier(4)
    workers = []

    def start_some():
        barrier.wait()
        for _ in range(6):
            workers.append(pyforkd.fork_worker(ready_then_sleep))

    threads = [threading.Thread(target=start_some) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        for w in workers:
            assert w.recv(timeout=30) == "ready"
        ours = fd_targets(os.getpid())
        for w in workers:
            # Sockets this process had before are inherited by all; beyond them, a
            # worker holds one: its own channel's end.
            assert len(fd_targets(w.pid) - ours) == 1
    finally:
        for w in workers:
            w.disconnect()
            w.wait(timeout=30)


@linux_only_because("reads another process's descriptors through /proc/<pid>/fd")
def test_a_forked_worker_holds_nothing_of_the_other_children():
    # A worker forked while other children run must not keep their pipes or channel
    # open: closing a child's stdin would never give it EOF while the worker lives.
    before = fd_targets(os.getpid(), ("pipe:", "socket:"))
    cat = pyforkd.spawn("cat", stdio=["pipe", "pipe", "pipe"])  # stderr stays a raw fd
    cat.stdin.write(b"once")  # buffered here: it reaches cat once, at the close
    talker_code = (
        "import pyforkd\n"
        "try:\n    pyforkd.parent().recv()\n"
        "except pyforkd.ChannelClosedError:\n    pass\n"
    )
    talker = pyforkd.spawn(
        PY, ["-c", talker_code], stdio=["ignore", "ignore", "inherit", "ipc"],
        serialization="pickle",
    )  # fmt: skip
    theirs = fd_targets(os.getpid(), ("pipe:", "socket:")) - before
    assert len(theirs) >= 4  # cat's three pipes and the channel
    worker = pyforkd.fork_worker(ready_then_sleep)
    try:
        assert worker.recv(timeout=30) == "ready"
        assert not fd_targets(worker.pid, ("pipe:", "socket:")) & theirs
        cat.stdin.close()
        assert cat.wait(timeout=60) == 0  # EOF came though the worker lives
        assert cat.stdout.read() == b"once"
        talker.disconnect()
        assert talker.wait(timeout=60) == 0  # so did the end of its channel
        assert worker.poll() is None
    finally:
        worker.disconnect()
        worker.wait(timeout=30)
        cat.close()
        for child in (cat, talker):
            if child.poll() is None:
                child.kill()
                child.wait()


def test_failed_spawns_leave_forks_free():
    # A spawn that fails, with or without a channel, must not keep the fork guard: a later
    # fork_worker fork would wait for it for ever.
    from pyforkd import child_process

    for stdio in ("pipe", ["pipe", "pipe", "pipe", "ipc"]):
        with pytest.raises(FileNotFoundError):
            pyforkd.spawn("/no/such/program", stdio=stdio)
    with pytest.raises(FileNotFoundError):
        pyforkd.spawn(PY, ["-c", "pass"], cwd="/no/such/dir", stdio=["pipe", "pipe", "pipe", "ipc"])
    assert child_process.fork_guard._open == 0
    w = pyforkd.fork_worker(add, 2, 3)
    assert w.result(timeout=30) == 5
    w.join(timeout=30)


# ---- every platform: children are this interpreter with inline code --------------------


def square(x: int) -> int:
    return x * x


def fail() -> None:
    raise ValueError("raised in the worker")


def chat() -> int:
    channel = pyforkd.parent()
    assert channel is not None
    channel.send(("pid", os.getpid()))
    return channel.recv() + 1


def crash() -> None:
    os._exit(3)


def test_a_worker_runs_its_target_in_another_process():
    worker = pyforkd.fork_worker(square, 7)
    assert worker.result(timeout=60) == 49
    assert worker.join(timeout=60) == 0
    assert worker.pid != os.getpid()


def test_a_workers_exception_comes_back_with_its_traceback():
    worker = pyforkd.fork_worker(fail)
    with pytest.raises(pyforkd.WorkerError, match="raised in the worker") as info:
        worker.result(timeout=60)
    assert "fail" in str(info.value)  # the remote traceback names the function
    worker.join(timeout=60)


def test_a_worker_talks_to_its_parent():
    worker = pyforkd.fork_worker(chat)
    kind, pid = worker.recv(timeout=60)
    assert kind == "pid" and pid == worker.pid
    worker.send(41)
    assert worker.result(timeout=60) == 42
    worker.join(timeout=60)


@windows_only_because("Windows has no fork")
def test_only_spawn_exists_on_windows():
    for method in ("fork", "forkserver"):
        with pytest.raises(NotImplementedError, match="start='spawn'"):
            pyforkd.fork_worker(square, 1, start=method)


def echo_big(data: bytes) -> bytes:
    return data[::-1]


def test_a_worker_over_rings_moves_big_payloads_both_ways():
    data = bytes(range(256)) * 8192  # 2 MiB: through the rings, not the pipe
    worker = pyforkd.fork_worker(echo_big, data, ring=1 << 22)
    assert worker.result(timeout=60) == data[::-1]
    assert worker.join(timeout=60) == 0


def test_a_pool_maps_submits_and_survives_a_crash():
    with pyforkd.Pool(2) as pool:
        assert list(pool.map(square, range(200))) == [x * x for x in range(200)]
        assert pool.submit(square, 12).result(timeout=60) == 144
        with pytest.raises(pyforkd.WorkerCrashedError):
            pool.submit(crash).result(timeout=60)
        assert pool.submit(square, 3).result(timeout=60) == 9  # a replacement took over


def test_workers_leak_no_handle():
    def one(i: int) -> None:
        worker = pyforkd.fork_worker(square, i)
        assert worker.result(timeout=60) == i * i
        worker.join(timeout=60)

    assert_no_leak(lambda: one(3))


MAIN_GUARD_SCRIPT = """
import os, sys
import pyforkd

def cube(x):
    return x ** 3

if __name__ == "__main__":
    worker = pyforkd.fork_worker(cube, 3)
    print("worker", worker.result(timeout=60), worker.pid != os.getpid())
    with pyforkd.Pool(2) as pool:
        print("pool", sum(pool.map(cube, range(10))))
"""


def test_a_script_under_a_main_guard_runs_its_own_functions_in_workers(tmp_path):
    # The emulation of fork: the worker re-imports the script as __mp_main__ (its guard
    # keeps it from starting workers of its own) and finds cube there.
    script = tmp_path / "app.py"
    script.write_text(MAIN_GUARD_SCRIPT)
    r = pyforkd.exec_file(sys.executable, [str(script)], cwd=str(tmp_path), encoding="utf-8")
    assert r.stdout.split() == ["worker", "27", "True", "pool", "2025"]
