"""Helpers shared by the tests: descriptors and handles, zombies, liveness, loop ticks.

Each helper works on Linux, macOS and Windows (per-platform code lives here and nowhere
else): Linux reads /proc, macOS asks psutil or /dev/fd, Windows asks kernel32.  The skip
markers name what a test needs that a platform lacks.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Callable

import pytest

PY = sys.executable
LINUX = sys.platform.startswith("linux")
WINDOWS = sys.platform == "win32"


def linux_only_because(why: str) -> pytest.MarkDecorator:
    """Skip where Linux is not: ``why`` names the Linux-only thing the test needs."""
    return pytest.mark.skipif(not LINUX, reason=f"Linux only: {why}")


# (the most common reason, as a ready marker)
linux_only = linux_only_because("reads another process's /proc entries")
# The cluster's "reuseport" policy, as a test parameter: refused where the kernel does not
# balance SO_REUSEPORT sockets (macOS gives every connection to one of them).
REUSEPORT = pytest.param(
    "reuseport", marks=linux_only_because("policy 'reuseport' balances only on Linux")
)


def posix_only_because(why: str) -> pytest.MarkDecorator:
    """Skip on Windows: ``why`` names the POSIX thing the test needs (fork, signals,
    SCM_RIGHTS, a POSIX program...)."""
    return pytest.mark.skipif(WINDOWS, reason=f"POSIX only: {why}")


def windows_only_because(why: str) -> pytest.MarkDecorator:
    """Skip where Windows is not: ``why`` names the Windows behaviour the test checks."""
    return pytest.mark.skipif(not WINDOWS, reason=f"Windows only: {why}")


# Whether this process runs as root (POSIX; Windows has no uid).
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


# A child that echoes every message of its channel back as ("echo", message).
ECHO = r"""
import pyforkd
ch = pyforkd.parent()
while True:
    try:
        message = ch.recv()
    except pyforkd.ChannelClosedError:
        break
    ch.send(("echo", message))
"""


def open_fds() -> set[int]:
    """The descriptors this process holds (Linux: /proc/self/fd; macOS: /dev/fd; Windows:
    its handles, every value below 65536 asked about with GetHandleInformation).

    The listing holds a descriptor of its own while it runs; it is closed again by the time
    the names are checked, so it drops out.  (Windows: the system hands out the lowest
    free handle values, so a leak shows below 65536; GetProcessHandleCount would be
    simpler, but wine answers 0 to it.)
    """
    if WINDOWS:
        return _windows_handles()
    found = set()
    for name in os.listdir("/proc/self/fd" if LINUX else "/dev/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        found.add(int(name))
    return found


def _windows_handles() -> set[int]:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.GetHandleInformation.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    flags = wintypes.DWORD()
    return {
        h for h in range(4, 1 << 16, 4) if kernel32.GetHandleInformation(h, ctypes.byref(flags))
    }


def _state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid``, or None when it does not exist."""
    if LINUX:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return None
        # "pid (comm) state ppid ...": comm may hold spaces or parentheses.
        fields = stat[stat.rindex(b")") + 2 :].split()
        return fields[0].decode(), int(fields[1])
    import psutil

    try:
        p = psutil.Process(pid)
        zombie = p.status() == psutil.STATUS_ZOMBIE
        return ("Z" if zombie else "R"), p.ppid()
    except psutil.Error:
        return None


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (zombies included)."""
    if LINUX:
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                state = _state(int(name))
                if state is not None and state[1] == pid:
                    found.append(int(name))
        return found
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def zombie_children() -> list[int]:
    """Pids of this process's children that exited and were never reaped."""
    me = os.getpid()
    found = []
    for pid in children_of(me):
        state = _state(pid)
        if state is not None and state[0] == "Z" and state[1] == me:
            found.append(pid)
    return found


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    if WINDOWS:
        return _windows_alive(pid)
    state = _state(pid)
    return state is not None and state[0] != "Z"


def _windows_alive(pid: int) -> bool:
    # OpenProcess + GetExitCodeProcess: os.kill(pid, 0) would end the process on Windows.
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    kernel32.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    code = wintypes.DWORD()
    try:
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
    finally:
        kernel32.CloseHandle(handle)


# Wine opens and closes handles of its own at moments no test controls: on Windows a
# descriptor check lets one handle more pass (a test that leaks adds several).
STRAY_HANDLES = 1 if WINDOWS else 0


def assert_none_left(before: set[int], after: set[int]) -> None:
    """``after`` (an :func:`open_fds` taken after a test) is ``before`` again.

    Windows compares the counts, with :data:`STRAY_HANDLES` let pass: wine's own handles
    come and go there, so the values churn.
    """
    if WINDOWS:
        grown = len(after) - len(before)
        assert grown <= STRAY_HANDLES, f"{grown} handles more"
    else:
        assert after == before, f"descriptors leaked: {sorted(after - before)}"


def assert_no_leak(action: Callable[[], object], times: int = 6) -> None:
    """Run ``action`` once, then ``times`` more, and assert no descriptor or handle stayed.

    The first run makes what is made once (a job object, a timeout thread, what a DLL
    opens on first use), so it is not counted.  A handle leaked by every run, or by every
    other one, adds several and fails even with :data:`STRAY_HANDLES` let pass.
    """
    import gc

    action()
    gc.collect()
    before = len(open_fds())
    for _ in range(times):
        action()
    gc.collect()
    grown = len(open_fds()) - before
    assert grown <= STRAY_HANDLES, f"{grown} handles more after {times} runs"


def wait_gone(pid: int, within: float) -> bool:
    """Poll (test code only) until pid is gone or a zombie; False if still alive."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.01)
    return not alive(pid)


class LoopTicks:
    """Counts 10 ms ticks of the running asyncio loop inside ``async with``: proof that
    whatever ran meanwhile did not block the loop."""

    count = 0

    async def __aenter__(self) -> LoopTicks:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.count += 1

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, wait: float = 30.0) -> bytes:
    """The body of GET / on 127.0.0.1:port (status 200), retrying while nothing listens yet."""
    import http.client

    deadline = time.monotonic() + wait
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", "/")
            r = c.getresponse()
            body = r.read()
            c.close()
            assert r.status == 200, r.status
            return body
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def answering_pid(body: bytes) -> int:
    """The pid in examples/hello_http.py's greeting ("... (pid N)")."""
    return int(body.decode().rsplit("pid ", 1)[1].rstrip(")\n"))


class reaped:
    """``with reaped(child):`` kills (SIGKILL) and reaps the child if the block left it."""

    def __init__(self, child):
        self.child = child

    def __enter__(self):
        return self.child

    def __exit__(self, *exc):
        if self.child.returncode is None:
            self.child.kill("SIGKILL")
            self.child.wait()


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (Linux: /proc/PID/statm), in bytes."""
    with open(f"/proc/{pid or 'self'}/statm", "rb") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def run_on_a_taken_port(tmp_path, app: str) -> tuple[int, str, int]:
    """``pyforkd run`` of ``app`` (a script reading PORT) on a port another socket holds.

    Returns its exit code, its stderr and the port.
    """
    import socket

    import pyforkd

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        script = tmp_path / "app.py"
        script.write_text(app)
        done = pyforkd.spawn_sync(
            PY,
            ["-m", "pyforkd", "run", str(script)],
            env=dict(os.environ, PORT=str(port), PYFORKD_RUNTIME_DIR=str(tmp_path / "run")),
            timeout=60,
        )
    return done.returncode, done.stderr.decode(), port


def stop_gracefully(process) -> None:
    """Stop ``pyforkd run ... --name NAME`` (a Popen) as an operator would: SIGTERM, or on
    Windows, where no signal stops a process gracefully, ``pyforkd stop --name NAME``."""
    if not WINDOWS:
        import signal

        process.send_signal(signal.SIGTERM)
        return
    import subprocess

    name = process.args[process.args.index("--name") + 1]
    subprocess.run([PY, "-m", "pyforkd", "stop", "--name", name], check=True, timeout=60,
                   capture_output=True)  # fmt: skip
