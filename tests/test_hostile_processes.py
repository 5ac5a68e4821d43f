"""Processes under stress: a parent killed while its worker is stuck in a C call that holds
the GIL, whatever thread started the worker and whatever its start method."""

from __future__ import annotations

import signal
import textwrap

import pytest
from _helpers import PY, alive, linux_only, wait_gone

import pyforkd

pytestmark = linux_only

PARENT = textwrap.dedent(
    """
    import ctypes, sys, threading, time
    import pyforkd

    def stuck():
        # A C call that keeps the GIL (ctypes.PyDLL does not release it): no Python thread
        # of this process runs until it returns.
        ctypes.PyDLL(None).sleep(120)

    def start():
        w = pyforkd.fork_worker(stuck, start=sys.argv[1])
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
