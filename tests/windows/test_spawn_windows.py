"""spawn / exec / exec_file on Windows, against real child processes (this interpreter).

What differs from POSIX and is checked here: the command line is built by quoting each
argument for the Microsoft C runtime, and must come back exactly; kill() ends the child
with TerminateProcess and still reports ``-signal``; shell=True means cmd.exe with Node's
``/d /s /c "..."``; a .bat/.cmd runs only through the shell (CVE-2024-27980); pipes are
handles under the C runtime's descriptors.
"""

from __future__ import annotations

import errno
import json
import os
import sys

import pytest
from _winhelpers import assert_no_handle_leak
from hypothesis import given, settings
from hypothesis import strategies as st

import pyforkd

PY = sys.executable
ECHO_ARGS = "import json, sys; sys.stdout.write(json.dumps(sys.argv[1:]))"

# The pieces Windows argument quoting gets wrong most often.
TRICKY = [
    "",
    " ",
    "plain",
    "two words",
    'say "hi"',
    '"',
    '""',
    "\\",
    "\\\\",
    "C:\\dir\\",
    "C:\\my dir\\",
    'a\\"b',
    'a\\\\"b',
    "tab\there",
    "new\nline",
    "ünïcödé ✓ 日本",
    "%PATH%",
    "^&|<>()",
    "'single'",
]


def echoed(args: list[str]) -> list[str]:
    result = pyforkd.exec_file(PY, ["-c", ECHO_ARGS, *args])
    return json.loads(result.stdout.decode("utf-8"))


@pytest.mark.parametrize("arg", TRICKY)
def test_each_tricky_argument_round_trips_exactly(arg):
    assert echoed([arg, "after"]) == [arg, "after"]


def test_all_tricky_arguments_together_round_trip():
    assert echoed(TRICKY) == TRICKY


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list(' \t"\\abc\u00e9\u65e5%^&')), max_size=12),
                max_size=6))  # fmt: skip
def test_random_arguments_round_trip(args):
    assert echoed(args) == args


def test_exit_code_stdout_and_stderr():
    code = "import sys; sys.stdout.write('out'); sys.stderr.write('err'); sys.exit(7)"
    r = pyforkd.spawn_sync(PY, ["-c", code])
    assert (r.returncode, r.stdout, r.stderr) == (7, b"out", b"err")
    with pytest.raises(pyforkd.ExecError) as info:
        pyforkd.exec_file(PY, ["-c", code])
    assert info.value.returncode == 7
    assert info.value.stderr == b"err"


def test_pipes_carry_a_megabyte_each_way():
    code = "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data[::-1])"
    data = bytes(range(256)) * 4096
    child = pyforkd.spawn(PY, ["-c", code])
    child.stdin.write(data)
    child.stdin.close()
    assert child.stdout.read() == data[::-1]
    assert child.wait() == 0
    child.close()
    r = pyforkd.exec_file(PY, ["-c", code], input=data)
    assert r.stdout == data[::-1]


def test_kill_reports_the_signal_as_on_posix():
    child = pyforkd.spawn(PY, ["-c", "import time; time.sleep(60)"], stdio="ignore")
    assert child.poll() is None
    assert child.kill() is True
    assert child.wait() == -15
    assert (child.signal_code, child.exit_code, child.killed) == ("SIGTERM", None, True)
    assert child.kill() is False  # gone: nothing to signal
    child = pyforkd.spawn(PY, ["-c", "import time; time.sleep(60)"], stdio="ignore")
    child.kill("SIGKILL")
    assert child.wait() == -9
    assert child.signal_code == "SIGKILL"
    with pytest.raises(ValueError, match="unknown signal name"):
        child.kill("SIGNOPE")


def test_a_timeout_kills_the_child():
    r = pyforkd.spawn_sync(PY, ["-c", "import time; time.sleep(60)"], timeout=0.5)
    assert (r.returncode, r.signal_code, r.killed) == (-15, "SIGTERM", True)
    with pytest.raises(pyforkd.ExecError) as info:
        pyforkd.exec_file(PY, ["-c", "import time; time.sleep(60)"], timeout=0.5,
                          kill_signal="SIGKILL")  # fmt: skip
    assert info.value.returncode == -9


def test_wait_with_a_timeout_leaves_the_child_running():
    code = "import sys; sys.stdin.read()"
    child = pyforkd.spawn(PY, ["-c", code], stdio=["pipe", "ignore", "ignore"])
    with pytest.raises(pyforkd.TimeoutExpired):
        child.wait(0.2)
    child.stdin.close()
    assert child.wait() == 0


def test_shell_runs_cmd_exe_with_the_line_as_written():
    r = pyforkd.exec('echo one & echo "two words"')
    assert r.stdout.split(b"\r\n")[:2] == [b"one ", b'"two words"']
    assert r.args[0].lower().endswith("cmd.exe")
    assert r.args[1:4] == ["/d", "/s", "/c"]


def test_a_batch_file_runs_only_through_the_shell(tmp_path):
    script = tmp_path / "hello.bat"
    script.write_text("@echo batch %1\r\n")
    with pytest.raises(pyforkd.SpawnError, match="CVE-2024-27980") as info:
        pyforkd.exec_file(str(script), ["x"])
    assert "shell=True" in str(info.value)
    r = pyforkd.exec_file(str(script), ["x"], shell=True)
    assert r.stdout.strip() == b"batch x"


def test_a_missing_program_names_itself():
    with pytest.raises(FileNotFoundError) as info:
        pyforkd.spawn("no-such-program-pyforkd")
    assert isinstance(info.value, pyforkd.SpawnError)
    assert info.value.filename == "no-such-program-pyforkd"
    assert "no-such-program-pyforkd" in str(info.value)


def test_a_missing_cwd_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        pyforkd.spawn(PY, ["-c", "pass"], cwd=str(missing))
    assert info.value.filename == str(missing)
    assert "chdir" in str(info.value)


def test_env_and_cwd_reach_the_child(tmp_path):
    code = "import os; print(os.environ['PYFORKD_X'], os.getcwd(), 'OTHER' in os.environ)"
    env = {"PYFORKD_X": "ünï", "SYSTEMROOT": os.environ["SYSTEMROOT"], "PYTHONIOENCODING": "utf-8"}
    r = pyforkd.exec_file(PY, ["-c", code], env=env, cwd=str(tmp_path), encoding="utf-8")
    value, cwd, other = r.stdout.split()
    assert value == "ünï"
    assert os.path.normcase(cwd) == os.path.normcase(str(tmp_path))
    assert other == "False"


def test_stdio_to_a_file_and_from_a_descriptor(tmp_path):
    out = tmp_path / "out.txt"
    src = tmp_path / "in.txt"
    src.write_bytes(b"from a file")
    code = "import sys; sys.stdout.write(sys.stdin.read().upper())"
    with open(out, "wb") as f, open(src, "rb") as g:
        child = pyforkd.spawn(PY, ["-c", code], stdio=[g.fileno(), f, "ignore"])
        assert child.wait() == 0
    assert out.read_bytes() == b"FROM A FILE"


def test_a_closed_descriptor_is_refused_before_anything_starts(tmp_path):
    fd = os.open(tmp_path / "x", os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    with pytest.raises(ValueError, match=r"stdio\[1\]"):
        pyforkd.spawn(PY, ["-c", "pass"], stdio=["ignore", fd, "ignore"])


def test_uid_and_gid_are_refused_by_name():
    for option in ({"uid": 1000}, {"gid": 1000}):
        with pytest.raises(pyforkd.SpawnError, match="not supported on Windows") as info:
            pyforkd.spawn(PY, ["-c", "pass"], **option)
        assert info.value.errno == errno.ENOTSUP
        assert info.value.code == "ENOTSUP"


def test_a_detached_child_runs_and_is_reaped():
    child = pyforkd.spawn(
        PY, ["-c", "print('alone')"], detached=True, stdio=["ignore", "pipe", "ignore"]
    )
    assert child.stdout.read().strip() == b"alone"
    assert child.wait() == 0
    child.close()


def test_text_mode_and_input_as_text():
    code = "import sys; sys.stdout.write(sys.stdin.read().upper())"
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    with pyforkd.spawn(PY, ["-c", code], env=env, encoding="utf-8") as child:
        child.stdin.write("héllo ✓")
        child.stdin.close()
        assert child.stdout.read() == "HÉLLO ✓"
    assert child.returncode == 0  # the with block waited
    r = pyforkd.exec_file(PY, ["-c", code], env=env, input="ünï", encoding="utf-8")
    assert r.stdout == "ÜNÏ"


def test_the_spawn_timeout_kills_a_child_left_running():
    child = pyforkd.spawn(PY, ["-c", "import time; time.sleep(60)"], stdio="ignore", timeout=0.3)
    assert child.wait() == -15
    assert child.killed


def test_windows_hide_is_accepted():
    r = pyforkd.spawn_sync(PY, ["-c", "print('hidden')"], windows_hide=True)
    assert r.stdout.strip() == b"hidden"


def test_max_buffer_stops_a_flood():
    code = "import sys; sys.stdout.write('x' * 300000)"
    with pytest.raises(pyforkd.MaxBufferError) as info:
        pyforkd.exec_file(PY, ["-c", code], max_buffer=1000)
    assert len(info.value.stdout) == 1000


def _spawn_every_way() -> None:
    pyforkd.exec_file(PY, ["-c", "print('x')"])
    with pyforkd.spawn(PY, ["-c", "import sys; sys.stdin.read()"]) as child:
        child.stdin.write(b"done")
    child.close()
    killed = pyforkd.spawn(PY, ["-c", "import time; time.sleep(60)"], stdio="ignore")
    killed.kill()
    killed.wait()
    timed = pyforkd.spawn(PY, ["-c", "pass"], stdio="ignore", timeout=30)
    timed.wait(30)


def test_spawning_leaks_no_handle():
    assert_no_handle_leak(_spawn_every_way)


def test_a_pipe_above_slot_2_is_a_duplex_stream():
    code = "import os; data = os.read(3, 100); os.write(3, data.upper())"

    def both_ways() -> None:
        child = pyforkd.spawn(PY, ["-c", code], stdio=["ignore", "ignore", "inherit", "pipe"])
        f = child.stdio[3]
        f.write(b"both ways")
        assert f.read(100) == b"BOTH WAYS"
        assert child.wait(timeout=60) == 0
        assert f.read(100) == b""  # the child's end is closed: the end of the stream
        child.close()
        assert f.closed

    assert_no_handle_leak(both_ways)
