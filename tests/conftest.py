"""Shared fixtures: every test ends with no zombie child of this process."""

from __future__ import annotations

import gc
import sys

import pytest
from _helpers import open_fds, zombie_children

# tests/windows holds the Windows tests (run under wine by tests/windows/run_wine.py in
# .ci/run, and natively by cibuildwheel); everything else here is the POSIX suite.
if sys.platform == "win32":
    collect_ignore_glob = ["test_*.py", "c/*"]
else:
    collect_ignore = ["windows"]


@pytest.fixture(autouse=True)
def _no_zombies_left():
    yield
    if not sys.platform.startswith("linux"):
        return
    gc.collect()
    zombies = zombie_children()
    assert not zombies, f"the test left zombie children: {zombies}"


@pytest.fixture
def fd_baseline():
    """Asserts that the test leaves the set of open descriptors as it found it."""
    gc.collect()
    before = open_fds()
    yield before
    gc.collect()
    after = open_fds()
    assert after == before, f"descriptors leaked: {sorted(after - before)}"
