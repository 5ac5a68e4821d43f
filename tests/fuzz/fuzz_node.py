"""Fuzz a Channel speaking Node's JSON lines: any bytes, internal messages (NODE_HANDLE
with descriptors, NODE_SOCKET_GET_COUNT ...) included, cut into reads at any point."""

from __future__ import annotations

import os
import socket

import atheris
from _harness import main, pieces

import pyforkd
from pyforkd import ChannelClosedError, FrameError


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    writes, mask = pieces(fdp)
    ours, raw = socket.socketpair()
    raw.setblocking(False)  # (the channel's answers pile up unread: never block on them)
    channel = pyforkd.Channel(ours, framing="node", serialization="json", max_message_size=1 << 20)
    try:
        for i, piece in enumerate(writes):
            fds = []
            if (mask >> (i % 8)) & 1:
                a, b = socket.socketpair()
                b.close()
                fds.append(a.detach())
            try:
                if fds:
                    socket.send_fds(raw, [piece], fds)
                else:
                    raw.send(piece)
            except OSError:
                return  # closed after a FrameError, or full
            finally:
                for fd in fds:
                    os.close(fd)
            try:
                while True:
                    _, handle = channel.recv(timeout=0, with_handle=True)
                    if handle is not None:
                        handle.close()
            except TimeoutError:
                continue
            except (FrameError, ChannelClosedError):
                return
    finally:
        channel.close()
        raw.close()


if __name__ == "__main__":
    main(one_input)
