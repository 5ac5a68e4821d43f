"""The recipes for bringing your own server (examples/own_server/): uvicorn's Server,
aiohttp's runner and waitress, each on the worker's listening socket, hear a reload and a
stop and finish at once, instead of waiting out the graceful timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import alive, free_port, http_get, posix_only_because

from pyforkd.cluster import control

pytestmark = posix_only_because("each recipe is stopped by SIGTERM")

EXAMPLES = Path(__file__).parent.parent / "examples" / "own_server"


def pids(name):
    return {w["pid"] for w in control.request(name, {"cmd": "status"})["workers"] if w["ready"]}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "needs"),
    [("uvicorn_server.py", "uvicorn"), ("aiohttp_runner.py", "aiohttp"),
     ("waitress_server.py", "waitress")],
)  # fmt: skip
def test_a_server_of_one_s_own_hears_reload_and_stop(tmp_path, recipe, needs):
    pytest.importorskip(needs, reason=f"the recipe runs {needs}")
    port = free_port()
    name = f"own{port}"
    # (a graceful timeout longer than the test's: a server that did not hear would fail it)
    p = subprocess.Popen(
        [sys.executable, "-m", "pyforkd", "run", str(EXAMPLES / recipe), "-i", "2",
         "--name", name, "--graceful-timeout", "120", "--policy", "shared"],
        env=dict(os.environ, PORT=str(port)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        int(http_get(port))
        deadline = time.monotonic() + 30
        while len(before := pids(name)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        p.send_signal(signal.SIGHUP)  # a reload: two new workers, the old ones told to stop
        while True:
            now = pids(name)
            if len(now) == 2 and not now & before:
                left = [pid for pid in before if alive(pid)]
                if not left:
                    break  # the old ones heard, finished and left
            assert time.monotonic() < deadline, (before, now)
            time.sleep(0.05)
        assert int(http_get(port)) in now
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
