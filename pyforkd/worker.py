"""The child's side: :func:`parent`, the channel to the process that started this one.

A parent announces a channel the way Node does: ``NODE_CHANNEL_FD`` names the descriptor
and ``NODE_CHANNEL_SERIALIZATION_MODE`` its format.  A pyforkd parent adds
``PYFORKD_CHANNEL=pyforkd:<serialization>`` for its binary frames; without it the parent is
Node (or speaks Node's JSON lines), whichever started us.
"""

from __future__ import annotations

import os
import socket
import stat
import threading

from .channel import Channel

__all__ = ["parent"]

_VARIABLES = ("NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE", "PYFORKD_CHANNEL")
_lock = threading.Lock()
_state: dict[str, Channel | None] = {}


def parent() -> Channel | None:
    """The :class:`Channel` to our parent, or None when it gave us none.

    The first call takes the channel over: the announcing environment variables are
    removed (our own children must not inherit them) and the descriptor is made
    non-inheritable; later calls return the same Channel.  A Node parent must use the
    default ``'json'`` serialization (``'advanced'`` raises ``ValueError``).
    """
    with _lock:
        if "channel" in _state:
            return _state["channel"]
        found = {name: os.environ.pop(name, None) for name in _VARIABLES}
        _state["channel"] = channel = _open(found) if found["NODE_CHANNEL_FD"] else None
        return channel


def _open(found: dict[str, str | None]) -> Channel:
    text = found["NODE_CHANNEL_FD"] or ""
    try:
        fd = int(text)
    except ValueError:
        raise ValueError(f"NODE_CHANNEL_FD={text!r} is not a descriptor number") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise ValueError(f"NODE_CHANNEL_FD={fd}: that descriptor is not open") from None
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"NODE_CHANNEL_FD={fd}: that descriptor is not a socket")
    os.set_inheritable(fd, False)
    ours = found["PYFORKD_CHANNEL"]
    if ours:
        framing, _, serialization = ours.partition(":")
        if framing != "pyforkd" or serialization not in ("pickle", "json", "raw"):
            raise ValueError(f"PYFORKD_CHANNEL={ours!r} is not understood")
        return Channel(socket.socket(fileno=fd), framing="pyforkd", serialization=serialization)
    node_mode = found["NODE_CHANNEL_SERIALIZATION_MODE"] or "json"
    if node_mode != "json":
        raise ValueError(
            f"the parent uses serialization {node_mode!r}; pyforkd speaks Node's "
            "'json' serialization (fork with serialization: 'json')"
        )
    return Channel(socket.socket(fileno=fd), framing="node", serialization="json")
