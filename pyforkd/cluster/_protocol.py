"""What a primary and its workers say to each other, on the channel's control frames.

Each message is a named type here; on the wire it is the tuple ``("cluster", tag,
*fields)``.  :func:`from_worker` and :func:`from_primary` check what comes (arity and
types; a worker may be hostile) and raise :class:`Malformed` for anything else.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

from . import _address

TAG = "cluster"


class Malformed(ValueError):
    """A control message that is none of this protocol's."""


# ---- a worker's --------------------------------------------------------------------------


class Online(NamedTuple):
    """Its program starts."""


class Listen(NamedTuple):
    """It asks to listen on ``address`` (``kind``: ``"tcp"`` or ``"udp"``)."""

    address: Any
    kind: str


class Ready(NamedTuple):
    """It is ready (``cluster.ready()``)."""


class Leaving(NamedTuple):
    """It disconnects itself: no restart."""


class HearsStop(NamedTuple):
    """Its code hears :class:`Stop`: no SIGTERM for it."""


class ReplaceMe(NamedTuple):
    """Its watchdog saw a request run too long: a new worker, and it drains."""

    why: str


# ---- the primary's -----------------------------------------------------------------------


class Hello(NamedTuple):
    """The first message: its board slot, the hang limit, which streams follow."""

    slot: int
    timeout: float | None
    targets: list[int]


class Stdio(NamedTuple):
    """Its stdin/stdout/stderr (as handles)."""


class Stopping(NamedTuple):
    """The answer to :class:`Listen` when the cluster stops: the worker just ends."""


class ListenError(NamedTuple):
    """The answer to :class:`Listen` when the address cannot be bound."""

    errno: int
    text: str
    address: Any


class Listening(NamedTuple):
    """The answer to :class:`Listen`: the address and the policy (the handle comes too)."""

    address: Any
    policy: str


class Stop(NamedTuple):
    """The primary stops this worker (a stop, a reload, a scale-down, a recycle)."""


FromWorker = Union[Online, Listen, Ready, Leaving, HearsStop, ReplaceMe]
FromPrimary = Union[Hello, Stdio, Stopping, ListenError, Listening, Stop]

_TAGS: dict[type, str] = {
    Online: "online",
    Listen: "listen",
    Ready: "ready",
    Leaving: "leaving",
    HearsStop: "hears-stop",
    ReplaceMe: "replace-me",
    Hello: "hello",
    Stdio: "stdio",
    Stopping: "stopping",
    ListenError: "listen-error",
    Listening: "listening",
    Stop: "disconnect",
}
_WORKER_TYPES: dict[str, type] = {
    _TAGS[t]: t for t in (Online, Listen, Ready, Leaving, HearsStop, ReplaceMe)
}
_PRIMARY_TYPES: dict[str, type] = {
    _TAGS[t]: t for t in (Hello, Stdio, Stopping, ListenError, Listening, Stop)
}


def encode(message: NamedTuple) -> tuple[Any, ...]:
    """``message`` as it goes on the wire."""
    return (TAG, _TAGS[type(message)], *message)


def is_ours(raw: Any) -> bool:
    """Whether ``raw`` is a message of this protocol (not a worker's outcome, say)."""
    return isinstance(raw, tuple) and len(raw) >= 2 and raw[0] == TAG


def from_worker(raw: Any) -> FromWorker:
    """A worker's message, checked."""
    message = _decode(raw, _WORKER_TYPES)
    if isinstance(message, Listen):
        if message.kind not in ("tcp", "udp"):
            raise Malformed(f"a listen request for {message.kind!r}")
        try:
            return Listen(_address.check(message.address), message.kind)
        except (TypeError, ValueError) as exc:
            raise Malformed(f"a listen request: {exc}") from None
    if isinstance(message, ReplaceMe):
        if not isinstance(message.why, str):
            raise Malformed("a replace-me without its reason")
        return ReplaceMe(message.why[:300])
    return message


def from_primary(raw: Any) -> FromPrimary:
    """The primary's message (trusted: the worker is its child; checked for arity)."""
    return _decode(raw, _PRIMARY_TYPES)  # type: ignore[no-any-return, unused-ignore]


def _decode(raw: Any, types: dict[str, type]) -> Any:
    if not is_ours(raw):
        raise Malformed(f"a control message {str(raw)[:80]!r}")
    kind = types.get(raw[1]) if isinstance(raw[1], str) else None
    if kind is None or len(raw) - 2 != len(kind._fields):  # type: ignore[attr-defined]
        raise Malformed(f"a control message {str(raw)[:80]!r}")
    return kind(*raw[2:])
