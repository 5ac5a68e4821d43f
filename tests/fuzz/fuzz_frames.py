"""Fuzz a Channel's receive side with pyforkd frames: headers, handle descriptions with
descriptors attached anywhere, payloads, cut into reads at any point.

What may come out: messages, TimeoutError (nothing whole yet), FrameError (the channel
then closed), ChannelClosedError.  Anything else, a crash, a hang or a leaked descriptor is
a finding.  The channel takes JSON (a pickle channel unpickles by design: code execution).
"""

from __future__ import annotations

import os
import socket
import sys

import atheris
from _harness import main, pieces

import pyforkd
from pyforkd import ChannelClosedError, FrameError

SERIALIZATIONS = ("json", "raw")


SIZES = (1 << 20, 1 << 10, 1 << 18, 64)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    serialization = SERIALIZATIONS[fdp.ConsumeIntInRange(0, 1)]
    max_size = SIZES[fdp.ConsumeIntInRange(0, len(SIZES) - 1)]
    writes, mask = pieces(fdp)
    ours, raw = socket.socketpair()
    channel = pyforkd.Channel(ours, serialization=serialization, max_message_size=max_size)
    try:
        for i, piece in enumerate(writes):
            nfds = (mask >> (i % 8)) & 1 and 1 + i % 3
            fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(nfds)]
            try:
                try:
                    if fds:
                        socket.send_fds(raw, [piece], fds)
                    else:
                        raw.sendall(piece)
                except OSError:
                    return  # the channel closed its end (after a FrameError)
            finally:
                for fd in fds:
                    os.close(fd)
            if not drain(channel):
                return
        raw.shutdown(socket.SHUT_WR)
        drain(channel)
    finally:
        channel.close()
        raw.close()


def drain(channel) -> bool:
    """Receive what is whole; False once the channel is over."""
    while True:
        try:
            _, handle = channel.recv(timeout=0, with_handle=True)
        except TimeoutError:
            return True
        except (FrameError, ChannelClosedError):
            return False
        for h in handle if isinstance(handle, list) else [handle] if handle else []:
            h.close()


if __name__ == "__main__":
    sys.setrecursionlimit(10000)
    main(one_input)
