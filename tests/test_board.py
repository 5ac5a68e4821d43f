"""The cluster's worker board: slots handed out and taken back (a state machine), and a
worker's counters seen by the primary through shared memory."""

from __future__ import annotations

import os

import pytest
from _helpers import PY, assert_no_leak, posix_only_because
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pyforkd
from pyforkd.cluster import _board


class Slots(RuleBasedStateMachine):
    """Every slot is out at most once; a slot taken back comes out again zeroed."""

    def __init__(self):
        super().__init__()
        self.board = _board.Board()
        self.out: set[int] = set()

    @precondition(lambda self: len(self.out) < _board.CAPACITY)
    @rule(served=st.integers(0, 2**64 - 1))
    def take(self, served):
        slot, fd = self.board.take()
        assert slot not in self.out and 0 <= slot < _board.CAPACITY
        for field in (_board.BUSY, _board.OPEN, _board.SERVED):
            assert self.board.read(slot, field) == 0
        _board.Slot(fd)._words[_board.SERVED] = served  # the worker dirties it
        self.out.add(slot)

    @precondition(lambda self: self.out)
    @rule(data=st.data())
    def give_back(self, data):
        slot = data.draw(st.sampled_from(sorted(self.out)))
        self.out.remove(slot)
        self.board.give_back(slot)

    @invariant()
    def all_accounted_for(self):
        assert len(self.board._free) + len(self.out) == _board.CAPACITY

    def teardown(self):
        self.board.close()


TestSlots = Slots.TestCase
TestSlots.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_a_full_board_says_so():
    board = _board.Board()
    try:
        for _ in range(_board.CAPACITY):
            os.close(board.take()[1])
        with pytest.raises(RuntimeError, match=f"at most {_board.CAPACITY} workers"):
            board.take()
    finally:
        board.close()


@posix_only_because("fork")
def test_a_workers_counters_reach_the_primary_across_a_fork():
    board = _board.Board()
    slot, fd = board.take()
    pid = os.fork()
    if pid == 0:
        try:
            mine = _board.Slot(fd)
            for _ in range(3):
                mine.took()
            mine.closed()
            mine.idle()
            os._exit(0)
        finally:
            os._exit(1)
    os.close(fd)
    assert os.waitpid(pid, 0)[1] == 0
    assert board.read(slot, _board.SERVED) == 3
    assert board.read(slot, _board.OPEN) == 2
    assert board.read(slot, _board.BUSY) == 0
    board.close()


@posix_only_because("sealed memfd slots and pipes as descriptors")
def test_a_slot_that_is_not_one_is_refused_and_its_descriptor_closed(fd_baseline):
    small = pyforkd._bindings.shm_create("not-a-slot", 16)  # sealed, too small
    with pytest.raises(ValueError, match="a board slot is 64 bytes, not 16"):
        _board.Slot(small)
    pipe_r, pipe_w = os.pipe()
    os.close(pipe_w)
    with pytest.raises(OSError):
        _board.Slot(pipe_r)  # not shared memory


def test_each_slot_is_memory_of_its_own():
    board = _board.Board()
    (a, fd_a), (b, fd_b) = board.take(), board.take()
    _board.Slot(fd_a).took()
    assert board.read(a, _board.SERVED) == 1
    assert board.read(b, _board.SERVED) == 0
    os.close(fd_b)
    board.close()


# ---- every platform: children are this interpreter with inline code --------------------


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
    assert_no_leak(a_worker_writes_its_slot, times=3)
