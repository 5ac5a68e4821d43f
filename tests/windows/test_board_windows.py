"""The cluster's worker board on Windows: a pagefile section, mapped by the primary and
handed to a worker as a pyforkd.Fd (a C runtime descriptor over the section's handle);
what the worker writes in its slot, the primary reads."""

from __future__ import annotations

import sys

from _winhelpers import assert_no_handle_leak

import pyforkd
from pyforkd.cluster import _board

PY = sys.executable
WORKER = r"""
import pyforkd
from pyforkd.cluster import _board
ch = pyforkd.parent()
_, fd = ch.recv(with_handle=True)
mine = _board.Slot(fd.detach())
mine.took()
mine.took()
mine.closed()
ch.send("written")
ch.recv()
"""


def a_worker_writes_its_slot() -> None:
    board = _board.Board()
    slot, fd = board.take()
    child = pyforkd.spawn(
        PY, ["-c", WORKER], stdio=["ignore", "ignore", "inherit", "ipc"], serialization="pickle"
    )
    child.send("your slot", handle=pyforkd.Fd(fd))  # (closed here once sent)
    assert child.recv(timeout=60) == "written"
    assert board.read(slot, _board.SERVED) == 2
    assert board.read(slot, _board.OPEN) == 1
    assert board.read(slot, _board.BUSY) > 0
    other, other_fd = board.take()
    pyforkd.Fd(other_fd).close()
    assert other != slot and board.read(other, _board.SERVED) == 0
    child.send("bye")
    assert child.wait(timeout=60) == 0
    child.close()
    board.close()


def test_a_worker_writes_its_slot_and_the_primary_reads_it():
    assert_no_handle_leak(a_worker_writes_its_slot, times=3)
