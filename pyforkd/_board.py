"""The cluster's worker board: a slot of shared memory per worker (never a file).

The primary makes the board and gives each worker its descriptor and a slot number; the
worker writes its slot, the primary (and its C dispatcher) read it:

- ``BUSY``: ``time.monotonic_ns()`` when the worker took its current work (a connection
  from ``accept()``, an asyncio loop turn, an explicit heartbeat), 0 while it waits for
  work.  A worker busy for longer than the cluster's ``timeout`` is hung.
- ``OPEN``: connections it has open (least-connections balancing reads it).
- ``SERVED``: connections it has taken in all (``max_requests`` recycling, ``status``).

Each slot is a 64-byte line of its own (no false sharing between workers).  Only the
worker writes its slot, and an aligned 8-byte store is never seen half-done; a lock
orders the worker's own threads.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from . import _bindings as _b

SLOT_WORDS = 8  # 64 bytes
BUSY, OPEN, SERVED = 0, 1, 2
CAPACITY = 1024  # workers at once


class Board:
    """The primary's board: ``CAPACITY`` slots, handed out and taken back."""

    def __init__(self) -> None:
        size = CAPACITY * SLOT_WORDS * 8
        handle = _b.shm_create("pyforkd-board", size)
        try:
            self._map = _b.map_shared(handle, size)
            # What goes to the workers as a pyforkd.Fd (on Windows a C runtime descriptor
            # over the section's handle).
            self.fd = _b.adopt(handle, True)
        except BaseException:
            _b.close_native(handle)
            raise
        self._words = memoryview(self._map).cast("Q")
        self._base: Any = _b.ffi.cast("unsigned long long *", _b.ffi.from_buffer(self._map))
        self._free = list(range(CAPACITY - 1, -1, -1))

    def take(self) -> int:
        """A free slot, zeroed."""
        if not self._free:
            raise RuntimeError(f"a cluster runs at most {CAPACITY} workers at once")
        slot = self._free.pop()
        self._words[slot * SLOT_WORDS : (slot + 1) * SLOT_WORDS] = memoryview(
            bytes(SLOT_WORDS * 8)
        ).cast("Q")
        return slot

    def give_back(self, slot: int) -> None:
        """The slot's worker is gone."""
        self._free.append(slot)

    def read(self, slot: int, field: int) -> int:
        """One word of a worker's slot."""
        return int(self._words[slot * SLOT_WORDS + field])

    def pointer(self, slot: int, field: int) -> Any:
        """A C pointer to one word (valid while the board is open)."""
        return self._base + slot * SLOT_WORDS + field

    def close(self) -> None:
        """Unmap and close (after the dispatchers that read it are closed)."""
        if self.fd < 0:
            return
        self._base = None
        self._words.release()
        _b.unmap_shared(self._map)
        self._map = None
        os.close(self.fd)
        self.fd = -1


class Slot:
    """A worker's own slot, mapped from the board's descriptor."""

    def __init__(self, fd: int, slot: int) -> None:
        """Map slot ``slot`` of the board behind ``fd`` (which is closed, in every case)."""
        try:
            handle = _b.native(fd)
            size = _b.shm_size(handle)
            if not 0 <= slot < size // (SLOT_WORDS * 8):
                raise ValueError(f"board slot {slot} is out of range")
            self._map = _b.map_shared(handle, size)
        finally:
            os.close(fd)
        self._words = memoryview(self._map).cast("Q")[slot * SLOT_WORDS : (slot + 1) * SLOT_WORDS]
        self._lock = threading.Lock()

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
