"""Processes under stress: a parent killed while its worker is stuck in a C call that holds
the GIL, whatever thread started the worker and whatever its start method; and no fork
of pyforkd's while a thread of pyforkd's runs (pools, the cluster, the timeout watchdog)."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
import time

import pytest
from _helpers import PY, alive, free_port, posix_only_because, reaped, wait_gone

import pyforkd

pytestmark = posix_only_because("parents SIGKILLed around fork, forkserver and zygotes")

PARENT = textwrap.dedent(
    """
    import ctypes, sys, threading, time
    import pyforkd

    def stuck():
        # A C call that keeps the GIL (ctypes.PyDLL does not release it): no Python thread
        # of this process runs until it returns.
        ctypes.PyDLL(None).sleep(120)

    workers = []  # kept: a Worker dropped closes its channel, and the worker ends then

    def start():
        w = pyforkd.fork_worker(stuck, start=sys.argv[1])
        workers.append(w)
        print(w.pid, flush=True)

    if __name__ == "__main__":
        if sys.argv[2] == "thread":  # a worker started from a thread has no PDEATHSIG
            t = threading.Thread(target=start)
            t.start()
            t.join()
        else:
            start()
        time.sleep(120)
    """
)


@pytest.mark.parametrize(
    ("start", "where"),
    [("fork", "thread"), ("fork", "main"), ("forkserver", "main"), ("spawn", "thread")],
)
def test_a_worker_stuck_in_a_gil_holding_call_dies_with_its_parent(tmp_path, start, where):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = pyforkd.spawn(PY, [str(script), start, where], stdio=["ignore", "pipe", "inherit"])
    try:
        worker = int(parent.stdout.readline())
        assert alive(worker)
        parent.kill(signal.SIGKILL)
        parent.wait(timeout=30)
        assert wait_gone(worker, 30), f"worker {worker} outlived its parent"
    finally:
        parent.kill(signal.SIGKILL)
        parent.wait(timeout=30)
        parent.close()


# ---- no thread of pyforkd's alive at a fork ---------------------------------------------------


def pyforkd_threads() -> list[str]:
    me = threading.current_thread()
    return [t.name for t in threading.enumerate() if t is not me and t.name.startswith("pyforkd")]


@pytest.fixture
def threads_at_forks():
    """The pyforkd threads alive at each fork of this process during the test."""
    seen: list[list[str]] = []
    active = [True]

    def note():
        if active[0]:
            seen.append(pyforkd_threads())

    os.register_at_fork(before=note)
    yield seen
    active[0] = False  # (a hook cannot be unregistered: it stops noting)


def test_a_pool_forks_its_replacements_with_none_of_its_threads_alive(threads_at_forks):
    with pyforkd.Pool(workers=2, max_tasks_per_worker=1) as pool:
        assert sorted(pool.map(abs, range(-6, 0))) == [1, 2, 3, 4, 5, 6]
        pids = {s["pid"] for s in pool.stats()}
    assert threads_at_forks, "the pool forked nothing here"
    assert not any(threads_at_forks), threads_at_forks
    assert not any(alive(p) for p in pids if p)


def test_a_second_pool_while_the_first_runs_does_not_fork_this_process(threads_at_forks):
    with pyforkd.Pool(workers=1) as first:
        forks_before = len(threads_at_forks)
        with pyforkd.Pool(workers=1) as second:  # forkserver: the first's readers run
            assert second.submit(abs, -2).result(timeout=60) == 2
        assert first.submit(abs, -1).result(timeout=60) == 1
    assert len(threads_at_forks) == forks_before
    assert not any(threads_at_forks)


def test_the_timeout_watchdog_ends_when_nothing_is_left_to_watch():
    with pyforkd.spawn("sleep", ["0.2"], stdio="ignore", timeout=30) as child:
        assert "pyforkd-timeouts" in pyforkd_threads()  # it watches this child
        assert child.wait() == 0
    deadline = time.monotonic() + 10
    while "pyforkd-timeouts" in pyforkd_threads():
        assert time.monotonic() < deadline, "the watchdog outlived the last child it watched"
        time.sleep(0.01)
    with pyforkd.spawn("sleep", ["30"], stdio="ignore", timeout=0.2) as child:  # and again
        assert child.wait(timeout=30) == -signal.SIGTERM


def test_a_zygote_forks_workers_as_the_process_was_when_it_was_made():
    state = {"value": "before"}

    def report(extra):
        return state["value"], extra

    zygote = pyforkd.Zygote(report)
    try:
        state["value"] = "after"
        w = zygote.fork("x")
        assert w.result(timeout=60) == ("before", "x")
        assert w.wait(timeout=60) == 0
        with pytest.raises(TypeError, match="cannot be pickled"):
            zygote.fork(lambda: None)
    finally:
        zygote.stop()


@pytest.mark.skipif(
    sys.version_info < (3, 12), reason="CPython warns of a fork with threads from 3.12"
)
def test_a_cluster_never_forks_with_its_threads_running(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(
        "import os\nfrom pyforkd import cluster\n"
        "l = cluster.listen(('127.0.0.1', int(os.environ['PORT'])))\n"
        "while True:\n    c, _ = l.accept()\n    c.close()\n"
    )
    env = dict(
        os.environ,
        PORT=str(free_port()),
        PYFORKD_RUNTIME_DIR=str(tmp_path / "run"),
        PYTHONWARNINGS="always::DeprecationWarning",
    )

    def ctl(*args):
        return pyforkd.spawn_sync(PY, ["-m", "pyforkd", *args, "--name", "t"], env=env, timeout=60)

    primary = pyforkd.spawn(
        PY,
        ["-m", "pyforkd", "run", str(app), "-i", "2", "--name", "t"],
        env=env,
        stdio=["ignore", "ignore", "pipe"],
    )
    with reaped(primary):
        deadline = time.monotonic() + 30
        while ctl("status").returncode != 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ctl("scale", "3").returncode == 0
        assert ctl("reload").returncode == 0
        time.sleep(1)  # (test code: the reload's forks happen meanwhile)
        assert ctl("stop").returncode == 0
        assert primary.wait(timeout=30) == 0
    err = primary.stderr.read().decode()
    assert "multi-threaded" not in err, err


def nap(seconds):
    pyforkd.parent().send("up")
    time.sleep(seconds)


def test_a_zygote_outlives_ctrl_c_and_its_workers_still_get_it():
    zygote = pyforkd.Zygote(nap)
    try:
        w = zygote.fork(30)
        assert w.recv(timeout=30) == "up"
        # Ctrl-C reaches a terminal's whole process group: the zygote and the worker.
        os.kill(zygote._server.pid, signal.SIGINT)
        os.kill(w.pid, signal.SIGINT)
        assert w.wait(timeout=30) == 1  # KeyboardInterrupt ended it
        again = zygote.fork(0)  # and the zygote forks on
        assert again.recv(timeout=30) == "up"
        assert again.wait(timeout=30) == 0
    finally:
        zygote.stop()
