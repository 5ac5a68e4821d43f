"""The cluster's worker board: slots handed out and taken back (a state machine), and a
worker's counters seen by the primary through shared memory."""

from __future__ import annotations

import os

import pytest
from _helpers import linux_only
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyforkd import _board

pytestmark = linux_only


class Slots(RuleBasedStateMachine):
    """Every slot is out at most once; a slot taken back comes out again zeroed."""

    def __init__(self):
        super().__init__()
        self.board = _board.Board()
        self.out: set[int] = set()

    @precondition(lambda self: len(self.out) < _board.CAPACITY)
    @rule(served=st.integers(0, 2**64 - 1))
    def take(self, served):
        slot = self.board.take()
        assert slot not in self.out and 0 <= slot < _board.CAPACITY
        for field in (_board.BUSY, _board.OPEN, _board.SERVED):
            assert self.board.read(slot, field) == 0
        self.board._words[slot * _board.SLOT_WORDS + _board.SERVED] = served  # dirty it
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
            board.take()
        with pytest.raises(RuntimeError, match=f"at most {_board.CAPACITY} workers"):
            board.take()
    finally:
        board.close()


def test_a_workers_counters_reach_the_primary_across_a_fork():
    board = _board.Board()
    slot = board.take()
    pid = os.fork()
    if pid == 0:
        try:
            mine = _board.Slot(os.dup(board.fd), slot)
            for _ in range(3):
                mine.took()
            mine.closed()
            mine.idle()
            os._exit(0)
        finally:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0
    assert board.read(slot, _board.SERVED) == 3
    assert board.read(slot, _board.OPEN) == 2
    assert board.read(slot, _board.BUSY) == 0
    with pytest.raises(ValueError, match="board slot 5000 is out of range"):
        _board.Slot(os.dup(board.fd), 5000)
    board.close()
