"""Arguments at the edge: infinite and huge timeouts, descriptor numbers past an int,
unknown encodings.  Each is refused (ValueError/TypeError naming the argument) before any
process starts, or means what it says (``inf``: no limit)."""

from __future__ import annotations

import math
import os
import threading

import pytest
from _helpers import PY, children_of, posix_only_because, zombie_children

import pyforkd

FOREVERS = [math.inf, 1e300, 10**400, 2**63, 2**64 / 1000]


def children() -> set[int]:
    return set(children_of(os.getpid()))


@posix_only_because("POSIX programs (echo, true)")
@pytest.mark.parametrize("timeout", FOREVERS, ids=["inf", "1e300", "10**400", "2**63", "2**54"])
def test_an_endless_timeout_means_no_limit(timeout):
    assert pyforkd.spawn_sync("true", timeout=timeout).returncode == 0
    assert pyforkd.exec_file_sync("echo", ["hi"], timeout=timeout) == b"hi\n"
    with pyforkd.spawn("true", stdio="ignore") as p:
        assert p.wait(timeout=timeout) == 0
    here, there = pyforkd.Channel.pair()
    try:
        there.send("x")
        assert here.recv(timeout=timeout) == "x"
        here.send("y", timeout=timeout)
        assert there.recv(timeout=timeout) == "y"
    finally:
        here.close()
        there.close()
    w = pyforkd.fork_worker(abs, -3)
    assert w.result(timeout=timeout) == 3
    w.wait(timeout=timeout)


@posix_only_because("POSIX programs (sleep)")
def test_a_spawn_timeout_thread_survives_an_endless_timeout():
    # The watchdog must go on watching the next child after an endless one.
    with pyforkd.spawn("sleep", ["30"], stdio="ignore", timeout=math.inf) as endless:
        done = pyforkd.spawn_sync("sleep", ["30"], timeout=0.2)
        assert done.returncode < 0 and done.signal_code == "SIGTERM"
        endless.kill()


@pytest.mark.parametrize("fd", [2**31, 2**63, -(2**31) - 1, 10**30])
def test_a_descriptor_number_past_an_int_is_refused_before_a_start(fd):
    before = children()
    with pytest.raises((ValueError, TypeError), match="stdio"):
        pyforkd.spawn("true", stdio=["ignore", fd, "ignore"])
    assert children() == before


@pytest.mark.parametrize("encoding", ["no-such-codec", "rot13", "base64"])
def test_an_unknown_or_non_text_encoding_is_refused_before_a_start(encoding, tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close(); print('x')"
    for call in (pyforkd.spawn_sync, pyforkd.exec_file_sync):
        with pytest.raises(ValueError, match="encoding"):
            call(PY, ["-c", code], encoding=encoding)
    with pytest.raises(ValueError, match="encoding"):
        pyforkd.spawn(PY, ["-c", code], encoding=encoding)
    with pytest.raises(ValueError, match="encoding"):
        pyforkd.exec(f"{PY} -c \"print('x')\"; touch {marker}", encoding=encoding)
    assert not marker.exists()
    assert not zombie_children()


@posix_only_because("POSIX programs (true)")
def test_threads_left_after_endless_waits():
    before = threading.active_count()
    pyforkd.spawn_sync("true", timeout=math.inf)
    assert threading.active_count() == before
