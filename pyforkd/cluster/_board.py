"""The cluster's worker board: a slot of shared memory per worker (never a file).

The primary makes the board and gives each worker its descriptor and a slot number; the
worker writes its slot, the primary (and its C dispatcher) read it:

- ``BUSY``: ``time.monotonic_ns()`` when the worker took its current work (a connection
  from ``accept()``, an asyncio loop turn, an explicit heartbeat), 0 while it waits for
  work.  A worker busy for longer than the cluster's ``timeout`` is hung.
- ``OPEN``: connections it has open (least-connections balancing reads it).
- ``SERVED``: connections it has taken in all (``max_requests`` recycling, ``status``).
- ``LET_GO``: written by the primary, the one word it writes: non-zero when it
  disconnects the worker on purpose, so that the worker's hang-up watch (which ends a
  worker whose primary is gone) lets it finish its program instead.

Each worker's slot is shared memory of its own (64 bytes, a page mapped), made for it
alone: the primary maps it and sends the worker its descriptor, then closes that
descriptor, so no other worker can reach it (not through the primary's descriptors, and
a forked worker unmaps what it inherited before the program runs).  A worker can thus
lie only about itself.  Only the worker writes its slot (but ``LET_GO``), and an aligned
8-byte store is never seen half-done; a lock orders the worker's own threads.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from .. import _bindings as _b

SLOT_WORDS = 8  # 64 bytes
SLOT_BYTES = SLOT_WORDS * 8
BUSY, OPEN, SERVED, LET_GO = 0, 1, 2, 3
CAPACITY = 1024  # workers at once


class Board:
    """The primary's board: up to ``CAPACITY`` slots, handed out and taken back."""

    def __init__(self) -> None:
        # slot -> (mapping, its words, a C pointer to them).  A slot's memory stays mapped
        # until the slot is taken again (a dispatcher may read it until then) or close().
        self._slots: dict[int, tuple[Any, memoryview, Any]] = {}
        self._free = list(range(CAPACITY - 1, -1, -1))

    def take(self) -> tuple[int, int]:
        """A free slot in new, zeroed memory: ``(slot, descriptor for its worker)``.

        The caller sends the descriptor to the worker and closes it.
        """
        if not self._free:
            raise RuntimeError(f"a cluster runs at most {CAPACITY} workers at once")
        handle = _b.shm_create("pyforkd-board-slot", SLOT_BYTES)
        try:
            mapping = _b.map_detached(handle, SLOT_BYTES)
            # (On Windows a C runtime descriptor over the section's handle.)
            fd = _b.adopt(handle, True)
        except BaseException:
            _b.close_native(handle)
            raise
        slot = self._free.pop()
        self._unmap(slot)
        words = memoryview(mapping).cast("Q")
        self._slots[slot] = (mapping, words, _b.words_pointer(mapping))
        return slot, fd

    def give_back(self, slot: int) -> None:
        """The slot's worker is gone."""
        self._free.append(slot)

    def read(self, slot: int, field: int) -> int:
        """One word of a worker's slot."""
        return int(self._slots[slot][1][field])

    def let_go(self, slot: int) -> None:
        """Say that the slot's worker is disconnected on purpose (see ``LET_GO``)."""
        self._slots[slot][1][LET_GO] = 1

    def pointer(self, slot: int, field: int) -> Any:
        """A C pointer to one word (valid while the board is open)."""
        return self._slots[slot][2] + field

    def _unmap(self, slot: int) -> None:
        entry = self._slots.pop(slot, None)
        if entry is not None:
            entry[1].release()  # (the mapping goes with the last reference to it)

    def close(self) -> None:
        """Unmap every slot (after the dispatchers that read it are closed)."""
        for slot in list(self._slots):
            self._unmap(slot)


class Slot:
    """A worker's own slot, mapped from the descriptor its primary sent."""

    def __init__(self, fd: int) -> None:
        """Map the slot behind ``fd`` (which is closed, in every case)."""
        try:
            handle = _b.native(fd)
            size = _b.shm_size(handle)  # (Windows rounds a section up to a page)
            if size < SLOT_BYTES:
                raise ValueError(f"a board slot is {SLOT_BYTES} bytes, not {size}")
            self._map = _b.map_detached(handle, SLOT_BYTES)
        finally:
            os.close(fd)
        self._words = memoryview(self._map).cast("Q")
        self._lock = threading.Lock()

    def let_go_pointer(self) -> Any:
        """A C pointer to the primary's ``LET_GO`` word (valid while this slot lives)."""
        return _b.words_pointer(self._map) + LET_GO

    def let_go(self) -> bool:
        """Whether the primary disconnected this worker on purpose (see ``LET_GO``)."""
        return bool(self._words[LET_GO])

    def took(self) -> None:
        """A connection was taken: busy from now, one more open, one more served."""
        with self._lock:
            w = self._words
            w[BUSY] = time.monotonic_ns()
            w[OPEN] += 1
            w[SERVED] += 1

    def closed(self) -> None:
        """A connection this worker took is closed."""
        with self._lock:
            if self._words[OPEN]:
                self._words[OPEN] -= 1

    def idle(self) -> None:
        """The worker waits for work (it cannot be hung while it waits)."""
        self._words[BUSY] = 0

    def beat(self) -> None:
        """The worker is alive and busy: its hang clock starts again."""
        self._words[BUSY] = time.monotonic_ns()
