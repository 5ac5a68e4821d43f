"""fork_worker and Pool on Windows: start="spawn" (the only method there, and the default)
runs the target in a fresh interpreter that re-imports the caller's main module, with the
target pickled; everything travels on the IPC channel."""

from __future__ import annotations

import os
import sys

import pytest
from _winhelpers import assert_no_handle_leak

import pyforkd


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

    assert_no_handle_leak(lambda: one(3))


SCRIPT = """
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
    script.write_text(SCRIPT)
    r = pyforkd.exec_file(sys.executable, [str(script)], cwd=str(tmp_path), encoding="utf-8")
    assert r.stdout.split() == ["worker", "27", "True", "pool", "2025"]
