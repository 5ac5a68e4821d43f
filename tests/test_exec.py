"""The exec family: exec, exec_file, their _sync forms, and spawn_sync."""

from __future__ import annotations

import asyncio
import errno
import functools
import pickle
import signal
import subprocess
import time

import pytest
from _helpers import PY, alive, open_fds, posix_only_because

import pyforkd
from pyforkd import CompletedProcess, ExecError, MaxBufferError, SpawnError, aio


@posix_only_because("POSIX programs (echo)")
def test_exec_file_returns_completed_process():
    r = pyforkd.exec_file("echo", ["hi"])
    assert isinstance(r, CompletedProcess)
    assert isinstance(r, subprocess.CompletedProcess)
    assert (r.args, r.returncode, r.stdout, r.stderr) == (["echo", "hi"], 0, b"hi\n", b"")
    assert r.exit_code == 0 and r.signal_code is None and not r.killed and r.pid > 0
    assert r.output == [None, b"hi\n", b""] and r.status == 0


@posix_only_because("POSIX programs (echo, printf)")
def test_exec_goes_through_the_shell():
    r = pyforkd.exec("printf 'a\\nb\\nc\\n' | wc -l", encoding="utf-8")
    assert r.stdout.strip() == "3"
    assert r.args == ["/bin/sh", "-c", "printf 'a\\nb\\nc\\n' | wc -l"]
    assert pyforkd.exec("echo $0", shell="/bin/bash", encoding="utf-8").stdout == "/bin/bash\n"


@posix_only_because("POSIX programs (echo)")
def test_a_child_that_exits_right_after_eof_is_never_killed():
    # stdout reaches EOF a moment before the child can be reaped; many quick runs make
    # sure that moment is never mistaken for a child that has to be killed.
    for _ in range(300):
        r = pyforkd.exec_file("echo", ["hi"])
        assert r.returncode == 0 and not r.killed


@posix_only_because("POSIX programs (echo)")
def test_sync_forms_return_stdout():
    assert pyforkd.exec_sync("echo one") == b"one\n"
    assert pyforkd.exec_file_sync("echo", ["two"], encoding="utf-8") == "two\n"


def test_nonzero_exit_raises_exec_error_with_output():
    with pytest.raises(ExecError) as info:
        pyforkd.exec_file(
            PY,
            ["-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
            encoding="utf-8",
        )
    e = info.value
    assert isinstance(e, subprocess.CalledProcessError)
    assert e.returncode == 3 and e.code == 3 and e.signal is None and not e.killed
    assert e.stdout.splitlines() == ["out"] and e.stderr.splitlines() == ["err"]
    # Node's err.cmd: the file and its arguments joined by spaces.
    assert e.cmd == PY + " -c import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    assert "returned non-zero exit status 3" in str(e)
    copy = pickle.loads(pickle.dumps(e))
    assert copy.returncode == 3 and copy.stderr == e.stderr and copy.code == 3


@posix_only_because("POSIX programs (kill)")
def test_killed_by_a_signal_raises():
    with pytest.raises(ExecError) as info:
        pyforkd.exec("kill -KILL $$")
    assert info.value.returncode == -signal.SIGKILL
    assert info.value.signal == "SIGKILL" and info.value.code is None
    assert not info.value.killed  # it died on its own; pyforkd did not kill it


@posix_only_because("POSIX programs (sh, sleep)")
def test_spawn_sync_never_raises_for_exit_codes():
    r = pyforkd.spawn_sync("sh", ["-c", "echo x; exit 9"])
    assert r.returncode == 9 and r.stdout == b"x\n"
    r = pyforkd.spawn_sync("sleep", ["30"], timeout=0.1)
    assert r.killed and r.signal_code == "SIGTERM" and r.returncode == -signal.SIGTERM


@posix_only_because("POSIX programs (cat)")
def test_input_is_written_to_stdin():
    assert pyforkd.spawn_sync("cat", input=b"x").stdout == b"x"
    assert pyforkd.exec_file("cat", input="héllo", encoding="utf-8").stdout == "héllo"
    assert pyforkd.exec_file("cat", input=bytearray(b"ba")).stdout == b"ba"
    assert pyforkd.exec_file("cat", input=memoryview(b"mv")).stdout == b"mv"
    with pytest.raises(TypeError, match="input must be bytes-like or str"):
        pyforkd.exec_file("cat", input=42)


@posix_only_because("POSIX programs (cat)")
def test_without_input_stdin_is_dev_null():
    # cat would block for ever on an inherited terminal or a pipe nobody closes.
    assert pyforkd.exec_file("cat", timeout=30).stdout == b""


@posix_only_because("POSIX programs (true)")
def test_input_to_a_child_that_does_not_read_is_dropped():
    r = pyforkd.spawn_sync("true", input=b"x" * (1 << 22))
    assert r.returncode == 0


def test_input_needs_a_stdin_pipe():
    with pytest.raises(ValueError, match="input needs stdio\\[0\\] to be 'pipe'"):
        pyforkd.spawn_sync("cat", input=b"x", stdio=["ignore", "pipe", "pipe"])


def test_50_mb_through_stdout_and_stderr_at_once():
    size = 50 * 1000 * 1000
    code = (
        "import sys, os\n"
        f"n = {size}; block = b'o' * (1 << 16); eblock = b'e' * (1 << 16)\n"
        "while n > 0:\n"
        "    k = min(n, len(block)); os.write(1, block[:k]); os.write(2, eblock[:k]); n -= k\n"
    )
    r = pyforkd.exec_file(PY, ["-c", code], max_buffer=None, timeout=120)
    assert len(r.stdout) == size and len(r.stderr) == size
    assert r.stdout.count(b"o") == size and r.stderr.count(b"e") == size


@posix_only_because("POSIX programs (yes)")
def test_max_buffer_kills_the_child_and_keeps_partial_output():
    with pytest.raises(MaxBufferError) as info:
        pyforkd.exec_file("yes", max_buffer=10_000)
    e = info.value
    assert isinstance(e, ExecError)
    assert e.stream == "stdout" and e.max_buffer == 10_000
    assert len(e.stdout) == 10_000 and set(e.stdout) == set(b"y\n")
    assert e.killed and e.signal == "SIGTERM"
    with pytest.raises(MaxBufferError) as info:
        pyforkd.exec("yes >&2", max_buffer=5000, encoding="utf-8")
    assert info.value.stream == "stderr" and len(info.value.stderr) == 5000
    with pytest.raises(MaxBufferError):
        pyforkd.spawn_sync("yes", max_buffer=100)


# A child writing "é" (2 bytes in UTF-8) nine times in one write.
NINE_E = ["-c", "import os; os.write(1, 'ééééééééé'.encode())"]


@pytest.mark.parametrize("form", ["exec_file", "spawn_sync", "aio"])
def test_max_buffer_with_an_encoding_cuts_in_characters_not_inside_one(form):
    # As Node: over when the bytes go over; the text kept is cut at max_buffer characters,
    # never inside one (it used to raise UnicodeDecodeError at a cut inside "é").
    if form == "aio":
        call = lambda **kw: asyncio.run(aio.exec_file(PY, NINE_E, **kw))  # noqa: E731
    else:
        call = functools.partial(getattr(pyforkd, form), PY, NINE_E)
    with pytest.raises(MaxBufferError) as info:
        call(max_buffer=5, encoding="utf-8")
    assert info.value.stdout == "ééééé" and info.value.stream == "stdout"
    with pytest.raises(MaxBufferError) as info:
        call(max_buffer=5)  # bytes: cut at 5 bytes
    assert info.value.stdout == "éé".encode() + b"\xc3"
    with pytest.raises(MaxBufferError) as info:
        call(max_buffer=17, encoding="utf-8")  # one byte short
    assert info.value.stdout == "ééééééééé"
    ok = call(max_buffer=18, encoding="utf-8")
    assert ok.stdout == "ééééééééé"


@posix_only_because("shell=True means /bin/sh (sleep &)")
@pytest.mark.slow
@pytest.mark.parametrize("form", ["exec_file", "aio"])
def test_a_child_that_exits_0_succeeds_though_a_descendant_holds_stdout_past_the_timeout(form):
    line = "sleep 30 & echo hi"
    start = time.monotonic()
    if form == "aio":
        r = asyncio.run(aio.exec(line, timeout=0.5))
    else:
        r = pyforkd.exec(line, timeout=0.5)
    assert r.returncode == 0 and r.stdout == b"hi\n" and not r.killed
    assert time.monotonic() - start < 20  # (not the sleep's 30 s)
    # exiting non-zero meanwhile is a plain ExecError: the child was not killed
    with pytest.raises(ExecError) as info:
        pyforkd.exec("sleep 30 & exit 3", timeout=0.5)
    assert info.value.code == 3 and not info.value.killed and info.value.timeout is None


def test_the_sync_forms_name_spawnsync_as_node():
    cases = [
        (pyforkd.spawn_sync, "spawnSync"),
        (pyforkd.exec_file_sync, "spawnSync"),
        (pyforkd.exec_file, "spawn"),
    ]
    for fn, verb in cases:
        with pytest.raises(SpawnError) as info:
            fn("pfd-no-such-program", ["a", "b"])
        e = info.value
        assert (e.code, e.syscall, e.path, e.spawnargs) == (
            "ENOENT",
            f"{verb} pfd-no-such-program",
            "pfd-no-such-program",
            ["a", "b"],
        ), fn
        assert str(e).startswith(f"[Errno 2] {verb} pfd-no-such-program: ENOENT")
    with pytest.raises(SpawnError) as info:
        pyforkd.exec_sync("true", shell="/pfd/no/shell")
    assert info.value.syscall == "spawnSync /pfd/no/shell"


@posix_only_because("POSIX programs (echo, true)")
def test_exec_errors_carry_node_s_cmd_string():
    with pytest.raises(ExecError) as info:
        pyforkd.exec("echo x; exit 3")
    assert info.value.cmd == "echo x; exit 3"  # the command, not the shell's argv
    assert "Command 'echo x; exit 3' returned non-zero exit status 3" in str(info.value)
    with pytest.raises(ExecError) as info:
        pyforkd.exec_sync(b"exit 4")
    assert info.value.cmd == "exit 4"
    with pytest.raises(SpawnError) as info:
        pyforkd.exec_file("pfd-no-such-program", ["a", "b"])
    assert info.value.cmd == "pfd-no-such-program a b"
    assert pickle.loads(pickle.dumps(info.value)).cmd == "pfd-no-such-program a b"
    with pytest.raises(SpawnError) as info:
        pyforkd.spawn("pfd-no-such-program", ["a"])
    assert info.value.cmd is None  # (Node's spawn errors have none)
    with pytest.raises(SpawnError) as info:
        asyncio.run(aio.exec_file("pfd-no-such-program", ["a"]))
    assert info.value.cmd == "pfd-no-such-program a"
    with pytest.raises(TypeError, match=r"exec_sync\(\) got an unexpected keyword.*stdio"):
        pyforkd.exec_sync("true", stdio="inherit")


@posix_only_because("POSIX programs (head)")
def test_default_max_buffer_is_node_s_one_mebibyte():
    assert len(pyforkd.exec_file("head", ["-c", str(1 << 20), "/dev/zero"]).stdout) == 1 << 20
    with pytest.raises(MaxBufferError):
        pyforkd.exec_file("head", ["-c", str((1 << 20) + 1), "/dev/zero"])


@pytest.mark.parametrize(
    "bad, exc", [(0, ValueError), (-5, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_bad_max_buffer(bad, exc):
    with pytest.raises(exc, match="max_buffer"):
        pyforkd.exec_file("true", max_buffer=bad)


@posix_only_because("POSIX programs (sleep)")
def test_timeout_kills_sleep_soon_after_the_deadline():
    start = time.monotonic()
    with pytest.raises(ExecError) as info:
        pyforkd.exec_file("sleep", ["30"], timeout=0.5)
    elapsed = time.monotonic() - start
    e = info.value
    assert e.killed and e.signal == "SIGTERM" and e.returncode == -signal.SIGTERM
    assert e.timeout == 0.5 and "timed out after 0.5 seconds" in str(e)
    assert elapsed < 30  # killed at its deadline instead of running its 30 s
    assert not alive(e.pid)


@posix_only_because("POSIX signals")
def test_timeout_with_kill_signal_and_output_kept():
    with pytest.raises(ExecError) as info:
        pyforkd.exec(
            f"{PY} -c \"print('before', flush=True); import time; time.sleep(30)\"",
            timeout=1,
            kill_signal="SIGKILL",
            encoding="utf-8",
        )
    assert info.value.signal == "SIGKILL" and info.value.stdout == "before\n"


@posix_only_because("POSIX signals (SIGTERM ignored)")
@pytest.mark.slow
def test_timeout_escalates_to_sigkill_when_the_signal_is_ignored(monkeypatch):
    from pyforkd import child_process

    monkeypatch.setattr(child_process, "KILL_GRACE", 0.2)
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(30)"
    )
    with (
        pytest.warns(RuntimeWarning, match="ignored its kill signal"),
        pytest.raises(ExecError) as info,
    ):
        pyforkd.exec_file(PY, ["-c", code], timeout=1.0)
    assert info.value.signal == "SIGKILL" and info.value.killed


@posix_only_because("POSIX programs (sleep)")
def test_timeout_does_not_wait_for_a_grandchild_holding_the_pipe():
    # The shell forks sleep, which keeps stdout open after the shell is killed.
    start = time.monotonic()
    with pytest.raises(ExecError) as info:
        pyforkd.exec("sleep 30 & echo started; wait", timeout=0.3, encoding="utf-8")
    assert info.value.stdout == "started\n"
    assert time.monotonic() - start < 10
    subprocess.run(["pkill", "-f", "^sleep 30$"], check=False)


def test_exec_errors_before_any_process(fd_baseline):
    with pytest.raises(SpawnError) as info:
        pyforkd.exec_file("pfd-no-such-program", ["a"])
    assert info.value.errno == errno.ENOENT and info.value.syscall == "spawn pfd-no-such-program"
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        pyforkd.exec_file("true", timeout=-1)
    with pytest.raises(ValueError, match="kill_signal: unknown signal name"):
        pyforkd.exec_file("true", kill_signal="SIGBOGUS")
    with pytest.raises(TypeError, match="command must be a str"):
        pyforkd.exec(["ls"])  # type: ignore[arg-type]


@posix_only_because("POSIX programs (echo, exit, yes)")
def test_exec_leaves_no_descriptor_behind(fd_baseline):
    for _ in range(10):
        pyforkd.exec_file("echo", ["x"])
        with pytest.raises(ExecError):
            pyforkd.exec("exit 1")
        with pytest.raises(MaxBufferError):
            pyforkd.exec_file("yes", max_buffer=10)


@posix_only_because("POSIX signals")
def test_ctrl_c_during_exec_kills_the_child_and_raises():
    # A SIGINT arriving while the C loop waits must surface as KeyboardInterrupt, and the
    # child must not be left behind.
    code = (
        "import os, signal, threading, pyforkd\n"
        "threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
        "try:\n"
        "    pyforkd.exec_file('sleep', ['30'])\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "try:\n"
        "    os.waitpid(-1, os.WNOHANG)\n"
        "    print('a child is left')\n"
        "except ChildProcessError:\n"
        "    print('no child left')\n"
    )
    r = pyforkd.exec_file(PY, ["-c", code], timeout=20, encoding="utf-8")
    assert r.stdout == "interrupted\nno child left\n"


@posix_only_because("POSIX programs (printf)")
def test_encoding_errors_parameter():
    r = pyforkd.exec_file("printf", ["\\377"], encoding="utf-8", errors="replace")
    assert r.stdout == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        pyforkd.exec_file("printf", ["\\377"], encoding="utf-8")


@posix_only_because("POSIX programs (true)")
def test_no_descriptor_leak_across_many_runs():
    before = open_fds()
    for _ in range(50):
        pyforkd.spawn_sync("true")
    assert open_fds() == before
