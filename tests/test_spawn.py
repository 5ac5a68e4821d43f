"""pyforkd.spawn and ChildProcess: options, stdio, lifecycle, errors, descriptor hygiene."""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
import weakref

import pytest
from _helpers import (
    PY,
    ROOT_USER,
    alive,
    assert_no_leak,
    linux_only_because,
    open_fds,
    posix_only_because,
    wait_gone,
    windows_only_because,
    zombie_children,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import pyforkd
from pyforkd import ChildProcess, SpawnError, TimeoutExpired


def py(code: str) -> list[str]:
    return ["-c", code]


# ---- basics -----------------------------------------------------------------------------


@posix_only_because("POSIX programs (ls)")
def test_spawn_reads_stdout_and_exit_code():
    p = pyforkd.spawn("ls", ["-lh", "/"])
    assert isinstance(p, ChildProcess)
    out = p.stdout.read()
    assert p.wait() == 0
    assert b"usr" in out
    assert p.returncode == 0 and p.exit_code == 0 and p.signal_code is None
    assert not p.killed
    p.close()


def test_exit_code_and_wait_twice():
    p = pyforkd.spawn(PY, py("import sys; sys.exit(7)"), stdio="ignore")
    assert p.wait() == 7
    assert p.wait() == 7
    assert p.poll() == 7
    assert p.exit_code == 7


@posix_only_because("POSIX programs (sleep)")
def test_killed_by_signal_gives_negative_returncode():
    p = pyforkd.spawn("sleep", ["30"], stdio="ignore")
    assert p.poll() is None
    assert p.kill("SIGKILL") is True
    assert p.wait() == -signal.SIGKILL
    assert p.signal_code == "SIGKILL"
    assert p.exit_code is None
    assert p.killed


@posix_only_because("POSIX programs (true)")
def test_kill_after_exit_returns_false():
    p = pyforkd.spawn("true", stdio="ignore")
    # Not waited for yet: the child is a zombie, and kill still says it is gone.
    deadline = time.monotonic() + 10
    while alive(p.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.kill() is False
    assert p.returncode == 0
    assert p.kill(signal.SIGTERM) is False


@posix_only_because("POSIX programs (sleep)")
def test_kill_accepts_names_numbers_and_refuses_unknown():
    with pyforkd.spawn("sleep", ["30"], stdio="ignore") as p:
        with pytest.raises(ValueError, match="unknown signal name 'SIGNOPE'"):
            p.kill("SIGNOPE")
        with pytest.raises(ValueError, match="not a valid signal number"):
            p.kill(999)
        with pytest.raises(TypeError):
            p.kill(1.5)  # type: ignore[arg-type]
        assert p.kill(0) is True  # signal 0: only asks whether it exists
        assert not p.killed
        assert p.kill("term") is True
    assert p.returncode == -signal.SIGTERM


@posix_only_because("POSIX programs (sleep)")
def test_wait_timeout_raises_and_leaves_child_running():
    p = pyforkd.spawn("sleep", ["30"], stdio="ignore")
    with pytest.raises(TimeoutExpired) as info:
        p.wait(timeout=0.05)
    assert isinstance(info.value, subprocess.TimeoutExpired)
    assert isinstance(info.value, TimeoutError)
    assert p.poll() is None
    p.kill()
    assert p.wait(timeout=10) == -signal.SIGTERM


@posix_only_because("POSIX programs (true)")
@pytest.mark.parametrize("bad", [-1, float("nan"), -0.5])
def test_wait_rejects_bad_timeouts(bad):
    with (
        pyforkd.spawn("true", stdio="ignore") as p,
        pytest.raises(ValueError, match="timeout must be >= 0"),
    ):
        p.wait(timeout=bad)


def test_wait_from_many_threads_agrees():
    p = pyforkd.spawn(PY, py("import time; time.sleep(0.2); raise SystemExit(3)"), stdio="ignore")
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(p.wait())) for _ in range(4)]
    threads += [threading.Thread(target=lambda: codes.append(p.wait(timeout=30))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [3] * 8


@posix_only_because("POSIX programs (cat)")
def test_context_manager_closes_pipes_and_reaps(fd_baseline):
    with pyforkd.spawn("cat") as p:
        p.stdin.write(b"hello")
        p.stdin.close()
        assert p.stdout.read() == b"hello"
    assert p.returncode == 0
    assert p.stdout is None or p.stdout.closed


def test_context_manager_does_not_deadlock_on_unread_output():
    # The child writes far more than a pipe holds; leaving the block must not hang.
    with pyforkd.spawn(PY, py("import sys; sys.stdout.buffer.write(b'x' * (1 << 22))")) as p:
        pass
    assert p.returncode is not None


@posix_only_because("POSIX programs (true)")
def test_garbage_collected_finished_child_leaves_no_zombie():
    p = pyforkd.spawn("true", stdio="ignore")
    pid = p.pid
    assert wait_gone(pid, 10)  # exited: a zombie until someone reaps it
    del p  # the autouse fixture then checks that no zombie remains
    assert pid not in zombie_children()


@posix_only_because("POSIX programs (sleep, true)")
def test_garbage_collected_running_child_warns_and_is_reaped_later():
    p = pyforkd.spawn("sleep", ["0.2"], stdio="ignore")
    pid = p.pid
    with pytest.warns(ResourceWarning, match="still running"):
        del p
        import gc

        gc.collect()
    deadline = time.monotonic() + 10
    while pid not in zombie_children() and time.monotonic() < deadline:
        time.sleep(0.01)
    pyforkd.spawn("true", stdio="ignore").wait()  # every spawn reaps the abandoned ones
    assert pid not in zombie_children()


# ---- options ----------------------------------------------------------------------------


def test_cwd(tmp_path):
    r = pyforkd.spawn_sync(PY, py("import os; print(os.getcwd())"), cwd=tmp_path, encoding="utf-8")
    assert r.stdout.strip() == str(tmp_path)


@posix_only_because("POSIX programs (env)")
def test_env_replaces_the_environment_and_its_path_is_searched(tmp_path):
    prog = tmp_path / "pfd-hello"
    prog.write_text('#!/bin/sh\necho "found $GREETING"\n')
    prog.chmod(0o755)
    env = {"PATH": f"/nonexistent:{tmp_path}:/usr/bin:/bin", "GREETING": "hi"}
    r = pyforkd.spawn_sync("pfd-hello", env=env, encoding="utf-8")
    assert r.stdout == "found hi\n"
    # No PATH in env: the search falls back to execvp's default, /bin:/usr/bin.
    r = pyforkd.spawn_sync("env", env={"ONLY": "this"}, encoding="utf-8")
    assert r.stdout == "ONLY=this\n"
    with pytest.raises(FileNotFoundError):
        pyforkd.spawn("pfd-hello")  # not in the parent's PATH


@posix_only_because("POSIX programs (sh)")
def test_env_default_follows_os_environ(monkeypatch):
    monkeypatch.setenv("PYFORKD_TEST_VALUE", "from-parent")
    r = pyforkd.spawn_sync("sh", ["-c", 'printf %s "$PYFORKD_TEST_VALUE"'])
    assert r.stdout == b"from-parent"


@linux_only_because("reads the child's argv from /proc/<pid>/cmdline")
def test_argv0():
    r = pyforkd.spawn_sync(
        "/bin/sh", ["-c", "tr '\\0' ' ' < /proc/$$/cmdline"], argv0="custom-name"
    )
    assert r.stdout.split() == [
        b"custom-name",
        b"-c",
        b"tr",
        b"'\\0'",
        b"'",
        b"'",
        b"<",
        b"/proc/$$/cmdline",
    ]


@posix_only_because("shell=True means /bin/sh")
def test_shell_true_and_shell_path():
    r = pyforkd.spawn_sync("echo $0 && echo", ["a", "b"], shell=True, encoding="utf-8")
    assert r.stdout == "/bin/sh\na b\n"
    assert r.args == ["/bin/sh", "-c", "echo $0 && echo a b"]
    r = pyforkd.spawn_sync("echo $0", shell="/bin/bash", encoding="utf-8")
    assert r.stdout == "/bin/bash\n"


@posix_only_because("sessions (os.getsid)")
def test_detached_child_is_a_session_leader():
    r = pyforkd.spawn_sync(
        PY, py("import os; print(os.getsid(0) == os.getpid())"), detached=True, encoding="utf-8"
    )
    assert r.stdout == "True\n"
    r = pyforkd.spawn_sync(
        PY, py("import os; print(os.getsid(0) == os.getpid())"), encoding="utf-8"
    )
    assert r.stdout == "False\n"


@posix_only_because("POSIX signals")
def test_detached_child_survives_its_parent_being_killed():
    # The middle process starts a detached sleeper, reports its pid, and is SIGKILLed.
    code = (
        "import pyforkd, sys\n"
        "p = pyforkd.spawn('sleep', ['30'], detached=True, stdio='ignore')\n"
        "print(p.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    middle = pyforkd.spawn(PY, py(code))
    pid = int(middle.stdout.readline())
    middle.kill("SIGKILL")
    assert middle.wait() == -signal.SIGKILL
    middle.close()
    try:
        time.sleep(0.2)
        assert alive(pid)
        assert os.getsid(pid) == pid
    finally:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not ROOT_USER, reason="changing uid/gid needs root")
def test_uid_and_gid_as_root():
    # /usr/bin/id, not this interpreter: nobody may not read the directory it lives in.
    r = pyforkd.spawn_sync(
        "sh",
        ["-c", "echo $(id -u) $(id -g) $(id -G)"],
        uid=65534,
        gid=65534,
        cwd="/",
        encoding="utf-8",
    )
    assert r.stdout == "65534 65534 65534\n", r.stderr  # no supplementary groups left


def _spawn_as_root_without_privilege() -> tuple[int | None, str | None, str]:
    """Ask for uid 0 as an unprivileged user: as this user, or as nobody in a worker."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    try:
        pyforkd.spawn("true", uid=0, gid=0).wait()
    except SpawnError as exc:
        return exc.errno, exc.syscall, str(exc)
    return None, None, "the child was started as root"


@posix_only_because("uid and gid")
def test_uid_refused_without_privilege():
    if os.geteuid() == 0:  # root may change uid/gid: a worker gives up root first
        worker = pyforkd.fork_worker(_spawn_as_root_without_privilege, start="fork")
        code, syscall, message = worker.result(timeout=60)
        worker.join(timeout=60)
    else:
        code, syscall, message = _spawn_as_root_without_privilege()
    assert (code, syscall) == (errno.EPERM, "setgid"), message
    assert "setgid: EPERM" in message


@posix_only_because("uid and gid")
@pytest.mark.parametrize(
    "bad, exc, msg",
    [
        (-1, ValueError, "uid must be between"),
        (True, TypeError, "uid must be an int"),
        ("0", TypeError, "uid must be an int"),
    ],
)
def test_bad_uid(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        pyforkd.spawn("true", uid=bad)


@posix_only_because("POSIX programs (sleep)")
def test_spawn_timeout_kills_the_child():
    p = pyforkd.spawn("sleep", ["30"], stdio="ignore", timeout=0.1)
    assert p.wait(timeout=10) == -signal.SIGTERM
    assert p.killed and p.signal_code == "SIGTERM"
    p = pyforkd.spawn("sleep", ["30"], stdio="ignore", timeout=0.1, kill_signal="SIGKILL")
    assert p.wait(timeout=10) == -signal.SIGKILL
    assert p.signal_code == "SIGKILL"


@posix_only_because("POSIX programs (true)")
def test_spawn_timeout_leaves_a_finished_child_alone():
    p = pyforkd.spawn("true", stdio="ignore", timeout=0.05)
    assert p.wait() == 0
    time.sleep(0.1)
    assert not p.killed


@posix_only_because("POSIX programs (sleep, true)")
def test_a_reaped_child_is_not_kept_until_its_timeout():
    # The watchdog holds a running child (it must still be killed at its deadline even if
    # dropped), but lets go of one that ended: a long timeout keeps nothing alive.
    p = pyforkd.spawn("true", stdio="ignore", timeout=3600)
    assert p.wait() == 0
    ref = weakref.ref(p)
    del p
    gc.collect()
    assert ref() is None
    running = pyforkd.spawn("sleep", ["30"], stdio="ignore", timeout=0.2)
    ref = weakref.ref(running)
    del running
    gc.collect()
    child = ref()
    assert child is not None  # dropped while running: kept, and killed at its deadline
    assert child.wait(timeout=10) == -signal.SIGTERM


@posix_only_because("POSIX programs (cat)")
def test_encoding_gives_text_streams():
    with pyforkd.spawn("cat", encoding="utf-8") as p:
        p.stdin.write("héllo\n")
        p.stdin.close()
        assert p.stdout.read() == "héllo\n"
    with pyforkd.spawn("cat", encoding="buffer") as p:
        p.stdin.write(b"raw")
        p.stdin.close()
        assert p.stdout.read() == b"raw"


# ---- stdio ------------------------------------------------------------------------------


@linux_only_because("readlink of /proc/self/fd names a descriptor's file")
def test_stdio_ignore_is_dev_null():
    code = "import os; print([os.readlink(f'/proc/self/fd/{i}') for i in (0, 1, 2)])"
    r = pyforkd.spawn_sync(PY, py(code), stdio=["ignore", "pipe", "ignore"], encoding="utf-8")
    names = json.loads(r.stdout.replace("'", '"'))
    assert names[0] == names[2] == "/dev/null"
    assert names[1].startswith("pipe:[")
    assert r.stderr == ""


@posix_only_because("POSIX programs (sh)")
def test_stdio_inherit_writes_to_our_descriptors(capfd):
    p = pyforkd.spawn("sh", ["-c", "echo to-out; echo to-err >&2"], stdio="inherit")
    assert p.wait() == 0
    out, err = capfd.readouterr()
    assert out == "to-out\n" and err == "to-err\n"
    assert p.stdout is None and p.stdin is None


@posix_only_because("POSIX programs (echo)")
def test_stdio_file_objects_and_descriptors(tmp_path):
    target = tmp_path / "out.txt"
    with open(target, "wb") as f:
        pyforkd.spawn("echo", ["into-file"], stdio=["ignore", f, "ignore"]).wait()
    assert target.read_bytes() == b"into-file\n"
    with open(target, "ab") as f:
        pyforkd.spawn("echo", ["by-fd"], stdio=["ignore", f.fileno(), 2]).wait()
    assert target.read_bytes() == b"into-file\nby-fd\n"


@posix_only_because("POSIX programs (echo)")
def test_stdio_list_shorter_than_three_is_padded_with_pipes():
    p = pyforkd.spawn("echo", ["x"], stdio=["ignore"])
    assert p.stdin is None and p.stdout is not None and p.stderr is not None
    assert p.stdout.read() == b"x\n"
    p.wait()
    p.close()


@posix_only_because("an extra 'pipe' slot is a socket on POSIX")
def test_extra_slots_pipe_is_a_duplex_socket_and_file_is_inherited(tmp_path):
    side = tmp_path / "side.txt"
    code = (
        "import os, socket\n"
        "s = socket.socket(fileno=3); s.sendall(s.recv(5).upper()); s.close()\n"
        "os.write(4, b'fd4')\n"
    )
    with open(side, "wb") as f:
        p = pyforkd.spawn(PY, py(code), stdio=["ignore", "ignore", "inherit", "pipe", f])
        sock = p.stdio[3]
        assert isinstance(sock, socket.socket)
        sock.sendall(b"hello")
        assert sock.recv(5) == b"HELLO"
        assert p.wait() == 0
        p.close()
    assert side.read_bytes() == b"fd4"


@posix_only_because("POSIX programs (sh)")
def test_stdio_swapped_descriptors_reach_the_right_slots():
    # Child's stdout is our stderr's pipe and vice versa; a naive dup2 order loses one.
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    try:
        p = pyforkd.spawn("sh", ["-c", "echo one; echo two >&2"], stdio=["ignore", w_err, w_out])
        os.close(w_out)
        os.close(w_err)
        assert p.wait() == 0
        assert os.read(r_out, 100) == b"two\n"
        assert os.read(r_err, 100) == b"one\n"
    finally:
        os.close(r_out)
        os.close(r_err)


@posix_only_because("descriptor numbers inherited through exec")
def test_child_gets_exactly_the_stdio_descriptors():
    leak = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(leak, True)
    s1, s2 = socket.socketpair()
    s1.set_inheritable(True)
    try:
        # fstat every number instead of listing /proc/self/fd, which takes a descriptor.
        code = (
            "import os\n"
            "def is_open(fd):\n"
            "    try:\n        os.fstat(fd)\n    except OSError:\n        return False\n"
            "    return True\n"
            "print([fd for fd in range(1024) if is_open(fd)])\n"
        )
        r = pyforkd.spawn_sync(PY, py(code), encoding="utf-8")
        assert json.loads(r.stdout) == [0, 1, 2]
        r = pyforkd.spawn_sync(
            PY, py(code), stdio=["ignore", "pipe", "pipe", "ignore", s2], encoding="utf-8"
        )
        assert json.loads(r.stdout) == [0, 1, 2, 4]
    finally:
        os.close(leak)
        s1.close()
        s2.close()


@posix_only_because("POSIX programs (cat, sh)")
def test_parent_pipe_ends_are_not_inherited_by_later_children():
    first = pyforkd.spawn("cat")
    try:
        second = pyforkd.spawn_sync("sh", ["-c", "ls /dev/fd/ | wc -l"], encoding="utf-8")
        # 0, 1, 2 and the descriptor ls holds on the directory: no pipe of `first`.
        assert second.stdout.strip() == "4"
    finally:
        first.stdin.close()
        first.wait()
        first.close()


# ---- bad input -----------------------------------------------------------------------------


def test_missing_command(fd_baseline):
    with pytest.raises(SpawnError) as info:
        pyforkd.spawn("pfd-no-such-command", ["--flag"])
    e = info.value
    assert isinstance(e, FileNotFoundError)
    assert e.errno == errno.ENOENT and e.code == "ENOENT"
    assert e.syscall == "spawn pfd-no-such-command"
    assert e.path == "pfd-no-such-command" and e.filename == "pfd-no-such-command"
    assert e.spawnargs == ["--flag"]  # (Node's: the arguments only)
    assert "spawn pfd-no-such-command: ENOENT (No such file or directory)" in str(e)


def test_missing_command_with_slash(fd_baseline):
    with pytest.raises(FileNotFoundError) as info:
        pyforkd.spawn("/pfd/no/such/thing")
    assert info.value.syscall == "spawn /pfd/no/such/thing"


@posix_only_because("the execute permission bit")
def test_not_executable(tmp_path, fd_baseline):
    f = tmp_path / "script.sh"
    f.write_text("#!/bin/sh\necho hi\n")
    f.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(SpawnError) as info:
        pyforkd.spawn(str(f))
    assert isinstance(info.value, PermissionError)
    assert info.value.errno == errno.EACCES and info.value.code == "EACCES"
    assert info.value.syscall == f"spawn {f}"


@posix_only_because("execve's EACCES for a directory")
def test_directory_is_not_executable(tmp_path):
    with pytest.raises(PermissionError):
        pyforkd.spawn(str(tmp_path))


@posix_only_because("POSIX programs (true)")
def test_missing_cwd_names_the_cwd(tmp_path, fd_baseline):
    missing = tmp_path / "nope"
    with pytest.raises(SpawnError) as info:
        pyforkd.spawn("true", cwd=missing)
    e = info.value
    assert isinstance(e, FileNotFoundError) and e.errno == errno.ENOENT
    assert e.syscall == "chdir"
    assert e.path == str(missing)
    assert str(missing) in str(e) and "chdir: ENOENT" in str(e)


@posix_only_because("POSIX programs (true)")
def test_cwd_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(NotADirectoryError) as info:
        pyforkd.spawn("true", cwd=f)
    assert info.value.syscall == "chdir"


@pytest.mark.parametrize(
    "kwargs, what",
    [
        ({"args": ["ok", "bad\0arg"]}, "args[1]"),
        ({"env": {"K": "v\0"}}, "env['K']"),
        ({"env": {"K\0": "v"}}, "env key 'K\\x00'"),
        ({"cwd": "/tmp\0x"}, "cwd"),
        ({"argv0": "a\0"}, "argv0"),
    ],
)
def test_nul_bytes_are_refused_naming_where(kwargs, what, fd_baseline):
    args = kwargs.pop("args", None)
    with pytest.raises(ValueError, match="NUL byte") as info:
        pyforkd.spawn("echo", args, **kwargs)
    assert what in str(info.value)


def test_nul_in_command():
    with pytest.raises(ValueError, match="command contains a NUL byte"):
        pyforkd.spawn("ec\0ho")


@pytest.mark.parametrize(
    "env, msg",
    [
        ({1: "v"}, "env key 1 must be str"),
        ({"K": 1}, r"env\['K'\] must be str or bytes, not int"),
        ({"K": None}, r"env\['K'\] must be str or bytes, not NoneType"),
        (["K=v"], "env must be a mapping"),
    ],
)
def test_env_types(env, msg):
    with pytest.raises(TypeError, match=msg):
        pyforkd.spawn("true", env=env)


@pytest.mark.parametrize("env", [{"": "v"}, {"A=B": "v"}])
def test_env_bad_keys(env):
    with pytest.raises(ValueError, match="must be non-empty and contain no '='"):
        pyforkd.spawn("true", env=env)


def test_args_must_be_a_sequence():
    with pytest.raises(TypeError, match="not a single str"):
        pyforkd.spawn("echo", "hello")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"args\[0\] must be str"):
        pyforkd.spawn("echo", [1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="command must not be empty"):
        pyforkd.spawn("")


@pytest.mark.slow
@pytest.mark.parametrize(
    "stdio, exc, msg",
    [
        ("piped", ValueError, "stdio: unknown value 'piped'"),
        (["pipe", "bogus"], ValueError, r"stdio\[1\]: unknown value 'bogus'"),
        (["pipe", "pipe", 987], ValueError, r"stdio\[2\]: descriptor 987 is not open"),
        (["pipe", -3], ValueError, r"stdio\[1\]: descriptor -3 is negative"),
        (["pipe", "pipe", "pipe", True], TypeError, r"stdio\[3\]"),
        (["pipe", 1.5], TypeError, r"stdio\[1\]"),
        (42, TypeError, "stdio must be a str or a list"),
    ],
)
def test_bad_stdio(stdio, exc, msg, fd_baseline):
    with pytest.raises(exc, match=msg):
        pyforkd.spawn("true", stdio=stdio)


def test_closed_file_in_stdio(tmp_path, fd_baseline):
    f = open(tmp_path / "x", "wb")  # noqa: SIM115
    f.close()
    with pytest.raises(ValueError, match=r"stdio\[1\]: .* is closed"):
        pyforkd.spawn("true", stdio=["ignore", f])
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError, match=r"stdio\[0\]: .* is closed"):
        pyforkd.spawn("true", stdio=[s])


@pytest.mark.parametrize("timeout", [-1, float("nan"), -0.001])
def test_bad_spawn_timeout(timeout):
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        pyforkd.spawn("true", timeout=timeout)


def test_bad_timeout_type():
    with pytest.raises(TypeError, match="timeout must be a number"):
        pyforkd.spawn("true", timeout="1")  # type: ignore[arg-type]


@pytest.mark.parametrize("sig", ["SIGNOPE", "HUPP", 0, 4096])
def test_bad_kill_signal(sig):
    with pytest.raises(ValueError, match="kill_signal"):
        pyforkd.spawn("true", kill_signal=sig)


def test_failed_spawns_leak_no_descriptor():
    before = open_fds()
    for _ in range(20):
        with pytest.raises(FileNotFoundError):
            pyforkd.spawn("pfd-missing", stdio=["pipe", "pipe", "pipe", "pipe"])
        with pytest.raises(FileNotFoundError):
            pyforkd.spawn("true", cwd="/pfd/missing/dir", stdio=["pipe"] * 5)
        with pytest.raises(ValueError):
            pyforkd.spawn("true", stdio=["pipe", "pipe", 999])
    assert open_fds() == before


def test_spawn_error_is_picklable():
    import pickle

    with pytest.raises(SpawnError) as info:
        pyforkd.spawn("pfd-missing")
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, FileNotFoundError) and isinstance(copy, SpawnError)
    assert copy.syscall == "spawn pfd-missing" and copy.spawnargs == []


# ---- concurrency -------------------------------------------------------------------------


@posix_only_because("POSIX programs (sh)")
def test_200_spawns_from_8_threads():
    errors: list[BaseException] = []
    codes: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            for i in range(25):
                if i % 3 == 0:
                    code = pyforkd.spawn_sync("sh", ["-c", f"exit {n}"]).returncode
                else:
                    with pyforkd.spawn("sh", ["-c", f"exit {n}"], stdio="ignore") as p:
                        code = p.wait(timeout=60)
                with lock:
                    codes.append(code - n)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "spawning threads deadlocked"
    assert not errors, errors
    assert codes == [0] * 200
    assert zombie_children() == []


@posix_only_because("a closed descriptor 0 inherited through exec")
def test_inherit_passes_on_a_closed_stdin_as_closed():
    # A parent started with its stdin closed (a daemon, some CI runners): "inherit" gives
    # the child the same, as fork+exec would, instead of failing; an explicit closed
    # descriptor number is still an error.
    code = (
        "import os, pyforkd\n"
        "os.close(0)\n"
        "r = pyforkd.spawn_sync('sh', ['-c', 'cat <&0 2>/dev/null; echo status=$?'],"
        " stdio=['inherit', 'pipe', 'pipe'], encoding='utf-8')\n"
        "print(r.stdout.strip())\n"
        "try:\n"
        "    pyforkd.spawn('true', stdio=[0, 'pipe', 'pipe'])\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    r = pyforkd.spawn_sync(PY, py(code), encoding="utf-8")
    assert r.stdout.splitlines() == ["status=1", "stdio[0]: descriptor 0 is not open"], r.stderr


@posix_only_because("POSIX programs (sleep)")
@pytest.mark.slow
def test_spawn_timeout_kills_a_child_whose_object_was_dropped():
    # Fire and forget with a safety timeout: the deadline still holds.
    code = (
        "import pyforkd, time\n"
        "p = pyforkd.spawn('sleep', ['30'], stdio='ignore', timeout=0.2)\n"
        "print(p.pid, flush=True)\n"
        "del p\n"
        "time.sleep(2)\n"
    )
    r = pyforkd.spawn_sync(PY, py(code), encoding="utf-8", timeout=30)
    pid = int(r.stdout)
    assert not alive(pid)


@posix_only_because("RLIMIT_NOFILE")
def test_out_of_descriptors_names_the_pipe_step():
    # With the descriptor limit just above what is open, the stdio pipes cannot be made:
    # SpawnError EMFILE naming "pipe" and the slot, no process started, nothing leaked.
    code = (
        "import os, resource, pyforkd\n"
        "before = sorted(int(f) for f in os.listdir('/dev/fd'))\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (max(before) + 3, hard))\n"
        "try:\n"
        "    pyforkd.spawn('true', stdio=['pipe', 'pipe', 'pipe'])\n"
        "except pyforkd.SpawnError as e:\n"
        "    print(e.code, e.syscall, 'pipe' in str(e), 'stdio[' in str(e))\n"
        "after = sorted(int(f) for f in os.listdir('/dev/fd'))\n"
        "print(before == after)\n"
    )
    r = pyforkd.spawn_sync(PY, py(code), encoding="utf-8")
    assert r.stdout.splitlines() == ["EMFILE pipe True True", "True"], r.stderr


@posix_only_because("POSIX programs (pwd)")
def test_an_empty_cwd_means_this_processs_directory():
    # As Node's spawn/execFile/fork (node -e "child_process.execFile('pwd', [], {cwd: ''},
    # ...)" runs in the current directory); Node's spawnSync fails with ENOENT instead.
    for empty in ("", b""):
        done = pyforkd.spawn_sync("pwd", cwd=empty)
        assert done.returncode == 0 and done.stdout.decode().strip() == os.getcwd()
        with pyforkd.spawn("pwd", cwd=empty, stdio=["ignore", "pipe", "inherit"]) as p:
            assert p.stdout.read().decode().strip() == os.getcwd()


def test_a_shell_commands_spawnargs_are_the_shells_arguments():
    with pytest.raises(SpawnError) as info:
        pyforkd.spawn("true", shell="/pfd/no/such/shell")
    assert info.value.spawnargs == ["-c", "true"]  # (Node's: ['-c', command])


# ---- every platform: children are this interpreter with inline code --------------------


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


@windows_only_because("shell=True means cmd.exe there")
def test_shell_runs_cmd_exe_with_the_line_as_written():
    r = pyforkd.exec('echo one & echo "two words"')
    assert r.stdout.split(b"\r\n")[:2] == [b"one ", b'"two words"']
    assert r.args[0].lower().endswith("cmd.exe")
    assert r.args[1:4] == ["/d", "/s", "/c"]


@windows_only_because("a .bat runs through cmd.exe (CVE-2024-27980)")
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
    env = {"PYFORKD_X": "ünï", "PYTHONIOENCODING": "utf-8"}
    if "SYSTEMROOT" in os.environ:  # (Windows: without it, Python cannot start)
        env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
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


@windows_only_because("Windows has no uid or gid")
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
    assert_no_leak(_spawn_every_way)


@windows_only_because("an extra 'pipe' slot is a duplex file there; POSIX gives a socket")
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

    assert_no_leak(both_ways)
