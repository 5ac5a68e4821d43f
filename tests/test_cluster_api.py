"""The cluster's Node API: settings with Node's defaults and checks, 'setup' and 'fork'
from the primary's loop, a second start after shutdown(), per-worker handlers, and the
worker side's members (disconnect, kill, is_connected, process, on)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from _helpers import posix_only_because

PRIMARY = textwrap.dedent(
    """
    import json, os, sys
    from pyforkd import cluster

    if cluster.is_primary:
        out = {}
        seen = []
        cluster.setup_primary(restart=False, cwd=sys.argv[1], stdio=["inherit", "pipe", "ignore"])
        # added after the call: Node emits 'setup' on its next tick, and so does run()
        cluster.on("setup", lambda settings: seen.append(["setup", settings["restart"]]))
        w = cluster.fork()
        cluster.on("fork", lambda x: seen.append(["fork", x is w]))
        w.on("online", lambda: seen.append(["w online"]))
        cluster.on("online", lambda x: seen.append(["online"]))
        w.on("exit", lambda code, sig: seen.append(["w exit", code, sig]))
        cluster.on("message", lambda x, m: out.update(m))
        try:
            cluster.run()
        except RuntimeError:
            pass
        out["events"] = seen
        out["stdout"] = w.stdout.read().decode()  # (stdio "pipe"; its stderr "ignore")
        out["stderr_none"] = w.stderr is None
        s = cluster.settings
        out["settings"] = [s["exec"] == os.path.abspath(__file__), s["args"], s["exec_argv"]]
        # a second start after the first ended
        cluster.shutdown()
        again = cluster.fork()
        again.on("exit", lambda code, sig: out.update(again=[code, sig]))
        try:
            cluster.run()
        except RuntimeError:
            pass
        try:
            cluster.setup_primary(exec="/pfd/no/such/script.py")
            cluster.fork()
        except FileNotFoundError as exc:
            out["exec"] = [exc.errno, exc.filename]
        cluster.setup_primary(exec=os.path.abspath(__file__), exec_argv=["-X", "dev"])
        try:
            cluster.fork()
        except ValueError as exc:
            out["exec_argv"] = "start='spawn'" in str(exc)
        print(json.dumps(out), flush=True)
    else:
        me = cluster.worker
        info = {
            "cwd": os.getcwd(),
            "pid_ok": me.process.pid == os.getpid(),
            "connected": me.is_connected(),
            "dead": me.is_dead(),
        }
        me.send(info)
        me.disconnect()
        info2 = {"after": [me.is_connected(), me.exited_after_disconnect]}
        print(json.dumps(info2), flush=True)  # (to the primary, through the pipe)
        print("to /dev/null", file=sys.stderr, flush=True)
    """
)


@posix_only_because("a Zygote is a fork")
def test_settings_events_restart_and_worker_members(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(PRIMARY)
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, str(script), str(work)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().split("\n")[-1])
    assert out["cwd"] == str(work)  # the worker started in setup_primary's cwd
    assert out["pid_ok"] and out["connected"] and not out["dead"]
    assert json.loads(out["stdout"])["after"] == [False, True]
    assert out["stderr_none"] and "to /dev/null" not in done.stderr
    events = out["events"]
    # setup_primary()'s 'setup', then fork()'s own (Node's fork() sets up too), then 'fork'
    assert events[:3] == [["setup", False], ["setup", False], ["fork", True]]
    assert events.index(["w online"]) + 1 == events.index(["online"])
    assert ["w exit", 0, None] in events  # it disconnected itself, then its script ended
    assert out["settings"] == [True, [str(work)], []]
    assert out["again"] == [0, None]  # fork() and run() after shutdown() work
    assert out["exec"] == [2, "/pfd/no/such/script.py"]  # checked at fork(), not before
    assert out["exec_argv"] is True


def test_setup_primary_refuses_bad_settings_naming_them():
    from pyforkd.cluster import Cluster

    c = Cluster()
    for key, value, exc in [
        ("exec", 3, TypeError),
        ("args", "x", TypeError),
        ("exec_argv", [1], TypeError),
        ("cwd", b"\\x00", TypeError),
        ("stdio", ["pipe"], ValueError),
        ("stdio", ["pipe", "pipe", "bogus"], ValueError),
        ("silent", 1, TypeError),
        ("nope", 1, TypeError),
    ]:
        with pytest.raises(exc, match=key):
            c.setup_primary(**{key: value})


EVENTS_APP = textwrap.dedent(
    """
    import atexit, json, os, socket, sys, threading, time
    from pyforkd import cluster

    if cluster.is_primary:
        atexit.register(lambda: print("the primary's hook", file=sys.stderr, flush=True))
        out = {}
        def online(w):
            w.send("early")
        def message(w, m):
            if m == "listening":
                w.send("late")
            elif m == "serve":
                with socket.create_connection(("127.0.0.1", PORT), timeout=30) as c:
                    out["served"] = c.makefile("rb").read().decode()
                out["returns"] = w.disconnect() is w
            else:
                out.update(m)
        PORT = int(sys.argv[1])
        cluster.setup_primary(restart=False, policy="shared")
        cluster.on("online", online)
        cluster.on("message", message)
        cluster.on("exit", lambda w, code, sig: out.update(exit=[code, sig]))
        cluster.fork()
        try:
            cluster.run()
        except RuntimeError:
            pass
        print(json.dumps(out), flush=True)
    else:
        me = cluster.worker
        got, errors = [], []
        listener = cluster.listen(("127.0.0.1", int(sys.argv[1])))
        # A message that came before the first handler stays for recv().
        got.append(me.recv(timeout=30))
        def message(m):
            got.append(m)
            raise ValueError(f"handler saw {m}")
        me.on("message", message)  # after listen(): the listener hears the primary anyway
        me.on("error", lambda exc: errors.append(repr(exc)))
        try:
            me.recv(timeout=0)
        except RuntimeError as exc:
            recv_refused = "handlers" in str(exc)
        me.send("listening")
        while len(got) < 2:
            time.sleep(0.01)
        me.send("serve")
        served = 0
        try:
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(b"hello")
                served += 1
        except Exception as exc:
            stop = type(exc).__name__
        with open(sys.argv[2], "w") as f:
            json.dump({"got": got, "errors": errors, "recv_refused": recv_refused,
                       "served": served, "stop": stop}, f)
    """
)


def test_worker_side_events_with_a_shared_listener(tmp_path):
    import socket

    script = tmp_path / "app.py"
    script.write_text(EVENTS_APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "worker.json"
    done = subprocess.run(
        [sys.executable, str(script), str(port), str(log)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().split("\n")[-1])
    assert out == {"served": "hello", "returns": True, "exit": [0, None]}
    worker = json.loads(log.read_text())
    assert worker["got"] == ["early", "late"]  # one by recv(), one by the handler
    assert worker["errors"] == ["ValueError('handler saw late')"]  # the 'error' handler
    assert worker["recv_refused"] is True
    # the primary's disconnect reached the listener through the events thread
    assert worker["served"] == 1 and worker["stop"] == "ChannelClosedError"
    # the primary's atexit hook ran once, in the primary: not in the worker
    assert done.stderr.count("the primary's hook") == 1


LATE_APP = textwrap.dedent(
    """
    import json, sys, time
    from pyforkd import cluster

    if cluster.is_primary:
        cluster.setup_primary(restart=False)
        cluster.on("online", lambda w: w.disconnect())
        codes = []
        cluster.on("exit", lambda w, code, sig: codes.append([code, sig]))
        cluster.fork()
        try:
            cluster.run()
        except RuntimeError:
            pass
        print(json.dumps(codes))
    else:
        me = cluster.worker
        me.on("message", print)
        while me.is_connected():
            time.sleep(0.01)
        time.sleep(0.5)  # (the events thread has seen the end by now)
        heard = []
        me.on("disconnect", lambda: heard.append(True))  # after the end: called at once
        for _ in range(500):
            if heard:
                break
            time.sleep(0.01)
        with open(sys.argv[1], "w") as f:
            json.dump(heard, f)
    """
)


@posix_only_because("a disconnected worker is killed there, not left to end (seen under wine)")
def test_a_disconnect_handler_added_after_the_end_is_called(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(LATE_APP)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "heard")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[0, None]]  # let go, it ended on its own
    assert json.loads((tmp_path / "heard").read_text()) == [True]
