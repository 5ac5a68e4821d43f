"""pyforkd: Node.js's multi-process model for Python, on a small C core.

``spawn``/``exec``/``exec_file`` and their ``_sync`` forms start programs through
``posix_spawn`` (constant cost, whatever the parent's size) and wait for them on a pidfd
with the GIL released.  See ``pyforkd.aio`` for the asyncio counterparts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .channel import Channel, Fd
from .child_process import (
    ChildProcess,
    CompletedProcess,
    exec,
    exec_file,
    exec_file_sync,
    exec_sync,
    fork,
    spawn,
    spawn_sync,
)
from .errors import (
    ChannelClosedError,
    ExecError,
    FrameError,
    MaxBufferError,
    PicklingError,
    PyforkdError,
    SpawnError,
    TimeoutExpired,
    WorkerError,
)
from .pool import Pool, PoolBrokenError, WorkerCrashedError
from .ring import Ring
from .worker import Worker, Zygote, fork_worker, parent

if TYPE_CHECKING:
    from . import aio

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # pyforkd.aio imports asyncio, which costs more than all of pyforkd: only on first use.
    if name == "aio":
        return importlib.import_module(".aio", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Channel",
    "ChannelClosedError",
    "ChildProcess",
    "CompletedProcess",
    "ExecError",
    "Fd",
    "FrameError",
    "MaxBufferError",
    "PicklingError",
    "Pool",
    "PoolBrokenError",
    "PyforkdError",
    "Ring",
    "SpawnError",
    "TimeoutExpired",
    "Worker",
    "WorkerCrashedError",
    "WorkerError",
    "Zygote",
    "__version__",
    "aio",
    "exec",
    "exec_file",
    "exec_file_sync",
    "exec_sync",
    "fork",
    "fork_worker",
    "parent",
    "spawn",
    "spawn_sync",
]
