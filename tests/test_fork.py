"""fork(), parent() and the "ipc" stdio slot: Python children, and Node.js in both directions."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import textwrap
import threading

import pytest
from _helpers import PY, posix_only_because

import pyforkd
from pyforkd import ChannelClosedError, FrameError

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js (node) is not installed")

JSON_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**53 - 1,
    1.5,
    -0.25,
    "",
    "plain",
    "üñíçødé ✓ 漢字 🎉",
    'quotes " and \\ backslash and \n newline',
    [],
    [1, [2, [3]]],
    {},
    {"nested": {"k": [1]}},
]


def script(tmp_path, name: str, code: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return str(path)


ECHO_PY = """
    import os, pyforkd
    ch = pyforkd.parent()
    ch.send({"env_left": [k for k in os.environ if k in
             ("NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE", "PYFORKD_CHANNEL")],
             "inheritable": os.get_inheritable(ch.fileno())})
    for msg in ch:
        if msg == "handle":
            _, sock = ch.recv(with_handle=True)
            sock.sendall(b"child has it")
            sock.close()
            continue
        ch.send({"echo": msg})
"""


# ---- Python children ----------------------------------------------------------------------


@posix_only_because("a socketpair handed to the child")
def test_fork_python_child_round_trip_and_handles(tmp_path):
    child = pyforkd.fork(script(tmp_path, "echo.py", ECHO_PY))
    first = child.recv(timeout=30)
    # parent() took the variables out of the environment and made the descriptor private.
    assert first == {"env_left": [], "inheritable": False}
    child.send({"set": {1, 2}, "bytes": b"\x00"})
    assert child.recv(timeout=30) == {"echo": {"set": {1, 2}, "bytes": b"\x00"}}
    s1, s2 = socket.socketpair()
    child.send("handle")
    child.send("here", handle=s1)
    assert s2.recv(100) == b"child has it"
    s2.close()
    assert child.connected
    child.disconnect()
    assert child.wait(timeout=30) == 0
    assert not child.connected


def test_fork_args_silent_and_env(tmp_path):
    code = """
        import sys, os, pyforkd
        ch = pyforkd.parent()
        print("to stdout", flush=True)
        ch.send({"argv": sys.argv[1:], "x": os.environ.get("X")})
    """
    child = pyforkd.fork(
        script(tmp_path, "a.py", code), ["--n", "3"], silent=True, env={**os.environ, "X": "y"}
    )
    assert child.recv(timeout=30) == {"argv": ["--n", "3"], "x": "y"}
    assert child.stdout.read().splitlines() == [b"to stdout"]
    assert child.wait(timeout=30) == 0
    child.close()


def test_child_that_exits_closes_the_channel(tmp_path):
    child = pyforkd.fork(script(tmp_path, "quit.py", "import pyforkd\npyforkd.parent()\n"))
    with pytest.raises(ChannelClosedError):
        child.recv(timeout=30)
    assert child.wait(timeout=30) == 0
    child.close()


def test_parent_is_none_without_a_channel():
    r = pyforkd.exec_file(PY, ["-c", "import pyforkd; print(pyforkd.parent())"], encoding="utf-8")
    assert r.stdout.splitlines() == ["None"]


def test_parent_refuses_a_bad_announcement():
    code = "import pyforkd\ntry:\n    pyforkd.parent()\nexcept ValueError as e:\n    print(e)\n"
    r = pyforkd.spawn_sync(
        PY, ["-c", code], env={**os.environ, "NODE_CHANNEL_FD": "77"}, encoding="utf-8"
    )
    assert r.stdout.splitlines() == ["NODE_CHANNEL_FD=77: that descriptor is not open"]


@posix_only_because("POSIX programs (true)")
def test_spawn_with_ipc_slot_and_bad_ipc_options(tmp_path):
    child = pyforkd.spawn(
        PY,
        [script(tmp_path, "e.py", ECHO_PY)],
        stdio=["inherit", "inherit", "inherit", "ipc"],
        serialization="pickle",
    )
    assert child.recv(timeout=30)["env_left"] == []
    child.send(7)
    assert child.recv(timeout=30) == {"echo": 7}
    child.disconnect()
    assert child.wait(timeout=30) == 0
    with pytest.raises(ValueError, match="one 'ipc' at most"):
        pyforkd.spawn("true", stdio=["pipe", "pipe", "pipe", "ipc", "ipc"])
    with pytest.raises(ValueError, match="slot of 3 or more"):
        pyforkd.spawn("true", stdio=["ipc"])
    with pytest.raises(ValueError, match="add 'ipc' to stdio"):
        pyforkd.spawn("true", serialization="pickle")
    plain = pyforkd.spawn("true", stdio="ignore")
    with pytest.raises(ValueError, match="has no IPC channel"):
        plain.send("x")
    assert plain.wait() == 0


def test_failed_fork_leaks_nothing(tmp_path):
    from _helpers import assert_none_left, open_fds

    before = open_fds()
    with pytest.raises(FileNotFoundError):
        pyforkd.fork("x.py", exec_path="/pfd/no/such/python")
    assert_none_left(before, open_fds())


# ---- Node children --------------------------------------------------------------------------

ECHO_JS = """
    process.send({cmd: 'NODE_SOMETHING_INTERNAL'});
    process.on('message', (m) => {
      if (m === 'garbage') { require('fs').writeSync(3, 'this is not json\\n'); return; }
      process.send({echo: m});
    });
"""


@needs_node
def test_fork_node_child_messages_of_every_json_type(tmp_path):
    child = pyforkd.fork(script(tmp_path, "echo.js", ECHO_JS), exec_path=NODE)
    for value in JSON_VALUES:
        child.send(value)
    # The NODE_ internal message Node's child sent first never shows up here.
    assert [child.recv(timeout=30) for _ in JSON_VALUES] == [{"echo": v} for v in JSON_VALUES]
    child.disconnect()  # a Node child with nothing else to do exits
    assert child.wait(timeout=30) == 0


@needs_node
def test_fork_node_child_keeps_order_over_10000_messages(tmp_path):
    child = pyforkd.fork(script(tmp_path, "echo.js", ECHO_JS), exec_path=NODE)
    t = threading.Thread(target=lambda: [child.send(i) for i in range(10_000)])
    t.start()
    got = [child.recv(timeout=60)["echo"] for _ in range(10_000)]
    t.join()
    assert got == list(range(10_000))
    child.disconnect()
    assert child.wait(timeout=30) == 0


@needs_node
def test_invalid_json_from_node_is_a_frame_error(tmp_path):
    child = pyforkd.fork(script(tmp_path, "echo.js", ECHO_JS), exec_path=NODE)
    child.send("garbage")
    with pytest.raises(FrameError, match="not a JSON message"):
        child.recv(timeout=30)
    assert not child.connected
    assert child.wait(timeout=30) == 0  # our side closed the channel: Node exits
    with pytest.raises(ValueError, match="JSON lines only"):
        pyforkd.fork("x.js", exec_path=NODE, serialization="pickle")


@needs_node
def test_node_parent_forks_a_python_child(tmp_path):
    child_py = script(tmp_path, "child.py", ECHO_PY)
    parent_js = script(
        tmp_path,
        "parent.js",
        f"""
        const {{ fork }} = require('child_process');
        const want = {json.dumps(JSON_VALUES, ensure_ascii=False)};
        const c = fork({json.dumps(child_py)}, [], {{ execPath: {json.dumps(sys.executable)},
                                                     execArgv: [] }});
        const got = [];
        c.on('message', (m) => {{
          got.push(m);
          if (got.length === want.length + 1) c.disconnect();
        }});
        c.on('exit', (code) => console.log(JSON.stringify({{ code, got }})));
        for (const m of want) c.send(m);
    """,
    )
    r = pyforkd.exec_file(NODE, [parent_js], timeout=60, encoding="utf-8")
    result = json.loads(r.stdout)
    assert result["code"] == 0
    assert result["got"][0] == {"env_left": [], "inheritable": False}
    assert result["got"][1:] == [{"echo": v} for v in JSON_VALUES]


@needs_node
def test_node_parent_10000_messages_in_order(tmp_path):
    child_py = script(
        tmp_path,
        "child.py",
        """
        import pyforkd
        ch = pyforkd.parent()
        for msg in ch:
            ch.send(msg)
    """,
    )
    parent_js = script(
        tmp_path,
        "parent.js",
        f"""
        const {{ fork }} = require('child_process');
        const c = fork({json.dumps(child_py)}, [], {{ execPath: {json.dumps(sys.executable)},
                                                     execArgv: [] }});
        let next = 0, bad = 0;
        c.on('message', (m) => {{
          if (m !== next) bad++;
          if (++next === 10000) c.disconnect();
        }});
        c.on('exit', (code) => console.log(JSON.stringify({{ code, next, bad }})));
        for (let i = 0; i < 10000; i++) c.send(i);
    """,
    )
    r = pyforkd.exec_file(NODE, [parent_js], timeout=120, encoding="utf-8")
    assert json.loads(r.stdout) == {"code": 0, "next": 10000, "bad": 0}
