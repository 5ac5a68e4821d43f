"""What every fuzzer here shares: a peer's bytes cut into reads, and the leak checks.

A fuzzer module defines ``one_input(data)``; ``main(one_input)`` runs it under atheris
(``python tests/fuzz/fuzz_X.py CORPUS_DIR -max_total_time=N``; tests/fuzz/run.py runs all).
After every input the harness checks that no descriptor is left open and that the
process has not grown past a bound: a leak is a crash, as a hang over 1 s is (-timeout).
"""

from __future__ import annotations

import os
import sys

FD_DIR = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"


def open_fds() -> int:
    return len(os.listdir(FD_DIR))


class Leak(AssertionError):
    """Descriptors were left open by an input."""


def checked(one_input):
    """``one_input`` with a descriptor check around it."""
    baseline: list[int] = []

    def run(data: bytes) -> None:
        if not baseline:
            one_input(data)  # (the first input warms up what is made once)
            baseline.append(open_fds())
            return
        one_input(data)
        now = open_fds()
        if now != baseline[0]:
            raise Leak(f"{now - baseline[0]} descriptor(s) more after this input")

    return run


def pieces(fdp) -> tuple[list[bytes], int]:
    """A peer's byte stream cut into writes, and which writes carry descriptors (a mask).

    The stream is the front of the input (atheris takes bytes from the front and numbers
    from the back), so a seed is the stream itself followed by 2 zero bytes: one write,
    no descriptors.
    """
    cuts = [fdp.ConsumeIntInRange(1, 1 << 16) for _ in range(fdp.ConsumeIntInRange(0, 15))]
    mask = fdp.ConsumeIntInRange(0, 255)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    out, at = [], 0
    for n in cuts:
        if at >= len(stream):
            break
        out.append(stream[at : at + n])
        at += n
    if at < len(stream):
        out.append(stream[at:])
    return out, mask


def main(one_input) -> None:
    import atheris

    atheris.instrument_all()  # pyforkd and what it calls (json, pickle's Python parts)
    atheris.Setup(sys.argv, checked(one_input))
    atheris.Fuzz()
