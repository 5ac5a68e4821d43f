"""A worker hears its stop: ``cluster.on("stopping", fn)`` and ``cluster.stopping``, for
code that pyforkd did not write (a server with its own loop, a batch job), so that a stop
or a reload waits for it to finish instead of its graceful timeout or a signal."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from _helpers import REUSEPORT, free_port

BATCH = textwrap.dedent(
    """
    import json, sys, time
    from pyforkd import cluster

    if cluster.is_primary:
        cluster.setup_primary(graceful_timeout=60, restart=False)
        ends = []
        cluster.on("message", lambda w, m: cluster.shutdown())
        cluster.on("exit", lambda w, code, sig: ends.append([code, sig]))
        cluster.fork()
        cluster.run()
        try:
            cluster.stopping
        except AttributeError as exc:
            ends.append(str(exc))
        print(json.dumps(ends))
    else:
        # A worker that listens to nothing and hears its stop: no SIGTERM for it.
        stopping = cluster.stopping
        cluster.worker.send("working")
        while not stopping.wait(0.05):
            pass
        time.sleep(0.2)  # (it finishes its work)
        with open(sys.argv[1], "w") as f:
            f.write("finished")
    """
)


def test_a_batch_worker_finishes_when_it_hears_the_stop(tmp_path):
    script = tmp_path / "batch.py"
    script.write_text(BATCH)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=40, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ends = json.loads(done.stdout)
    assert ends[0] == [0, None]  # it ended on its own: neither SIGTERM nor SIGKILL
    assert "a worker's" in ends[1]
    assert (tmp_path / "out").read_text() == "finished"


SERVER = textwrap.dedent(
    """
    import json, os, selectors, socket, sys, threading
    from pyforkd import cluster

    port, policy = int(sys.argv[1]), sys.argv[2]
    if cluster.is_primary:
        cluster.setup_primary(graceful_timeout=60, policy=policy)
        ends, said = [], []
        def message(w, m):
            said.append(m)
            if m == "serving" and w.id == 1:
                cluster.reload()  # the new worker takes over; the old one hears it
            elif m == "serving":
                cluster.shutdown()
        cluster.on("message", message)
        cluster.on("exit", lambda w, code, sig: ends.append([w.id, code, sig]))
        cluster.fork()
        cluster.run()
        print(json.dumps({"ends": sorted(ends), "said": said}))
    else:
        # Its own accept loop on the listening socket, as a third-party server has.
        listener = cluster.listen(("127.0.0.1", port))
        sock = listener.socket
        stop = threading.Event()
        cluster.on("stopping", stop.set)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        cluster.worker.send("serving")
        while not stop.is_set():
            for _ in sel.select(0.05):
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                conn.close()
        cluster.worker.send(f"stopped {cluster.worker.id}")
    """
)


@pytest.mark.parametrize(
    "policy",
    [
        "shared",
        REUSEPORT,
    ],
)
def test_a_server_of_its_own_hears_reload_and_stop(tmp_path, policy):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    done = subprocess.run(
        [sys.executable, str(script), str(free_port()), policy],
        capture_output=True, text=True, timeout=40, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().split("\n")[-1])
    # Both ended on their own, each after it heard its stop (reload, then shutdown).
    assert out["ends"] == [[1, 0, None], [2, 0, None]]
    assert "stopped 1" in out["said"] and "stopped 2" in out["said"]
