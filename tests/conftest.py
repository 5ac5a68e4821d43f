"""Shared fixtures: every test ends with no zombie child of this process."""

from __future__ import annotations

import gc
import os
import sys
import threading
import warnings

import pytest
from _helpers import assert_none_left, open_fds, zombie_children


@pytest.fixture(autouse=True)
def _no_zombies_left():
    yield
    if sys.platform == "win32":
        return
    gc.collect()
    zombies = zombie_children()
    assert not zombies, f"the test left zombie children: {zombies}"


@pytest.fixture(autouse=True)
def _no_fork_with_threads(request):
    """No pyforkd fork happens while a thread runs (CPython 3.12+ warns of it).

    CPython warns in the parent after the fork, where ``-W error`` cannot stop the fork:
    the warning is recorded here and fails the test.  Other warnings pass on to pytest.
    """
    _threads_at_fork.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        yield
    forks = []
    for w in caught:
        text = str(w.message)
        if "multi-threaded" in text and "fork()" in text:
            forks.append(f"{w.filename}:{w.lineno}: {text}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if forks and request.node.get_closest_marker("forks_with_threads") is None:
        raise AssertionError(
            "forked while threads ran:\n"
            + "\n".join(forks)
            + "\nthreads at those forks: "
            + repr(_threads_at_fork)
        )


# The threads alive at each fork of this process (for the message above).
_threads_at_fork: list[list[str]] = []


def _note_threads() -> None:
    if threading.active_count() > 1 or _os_threads() > 1:
        names = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        _threads_at_fork.append(names or [f"{_os_threads() - 1} thread(s) unknown to Python"])


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_note_threads)


@pytest.fixture
def fd_baseline():
    """Asserts that the test leaves the set of open descriptors as it found it."""
    gc.collect()
    before = open_fds()
    yield before
    gc.collect()
    assert_none_left(before, open_fds())


@pytest.fixture
def np():
    """numpy, or a skip where it is not installed (under wine it cannot load)."""
    return pytest.importorskip("numpy", reason="numpy is not installed here")
