"""Fuzz the ring's consumer over hostile shared memory: the fuzzer writes the ring's
indices and records as a peer that scribbles on the memory would.  Reading must give
records inside the ring, TimeoutError or FrameError, never a read outside the mapping
(a crash here).  Record decoding (pyforkd/_ringlink.py) gets each record's bytes too."""

from __future__ import annotations

import atheris
from _harness import main

import pyforkd
from pyforkd import FrameError, _ringlink


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    ring = pyforkd.Ring(1 << 12)
    try:
        memory = ring._whole  # the mapping, header included: what a peer can write
        size = len(memory)
        # Scribbles: (offset, bytes) anywhere in the memory, indices included.
        for _ in range(fdp.ConsumeIntInRange(0, 16)):
            at = fdp.ConsumeIntInRange(0, size - 1)
            blob = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))[: size - at]
            memory[at : at + len(blob)] = blob
        for _ in range(8):
            try:
                with ring.recv(timeout=0) as view:
                    record = bytes(view)
            except (TimeoutError, FrameError):
                break
            try:
                _ringlink.decode(memoryview(record), allow_pickle=False)
            except FrameError:
                pass
    finally:
        ring.close()
    try:
        _ringlink.decode(memoryview(fdp.ConsumeBytes(fdp.remaining_bytes())), allow_pickle=False)
    except FrameError:
        pass


if __name__ == "__main__":
    main(one_input)
