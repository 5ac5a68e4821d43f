"""Where a cluster listens: IPv4, IPv6 and UNIX-socket addresses under every policy, stale
UNIX sockets replaced, anything else refused with an error that names the address."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap

import pytest
from _helpers import REUSEPORT, free_port, linux_only_because, posix_only_because

from pyforkd.cluster import _address

APP = textwrap.dedent(
    """
    import json, os, sys
    from pyforkd import cluster

    address, policy = json.loads(sys.argv[1]), sys.argv[2]
    address = address if isinstance(address, str) else tuple(address)
    if cluster.is_primary:
        cluster.setup_primary(policy=policy, umask=0o077, restart=False)
        cluster.on("exit", lambda w, code, sig: cluster.shutdown())
        cluster.fork()
        try:
            cluster.run()
        except RuntimeError:
            pass
        print(json.dumps({"left": isinstance(address, str) and os.path.exists(address)}))
    else:
        try:
            listener = cluster.listen(address)
        except OSError as exc:
            print(json.dumps({"errno": exc.errno, "text": str(exc)}), flush=True)
            raise SystemExit(0)
        mode = stat.S_IMODE(os.stat(address).st_mode) if isinstance(address, str) else None
        print(json.dumps({"listening": True, "mode": mode}), flush=True)
        conn, _ = listener.accept()
        with conn:
            conn.sendall(str(int(conn.family)).encode())
    """
).replace("import json, os, sys", "import json, os, stat, sys")


def run(tmp_path, address, policy):
    script = tmp_path / "app.py"
    script.write_text(APP)
    p = subprocess.Popen(
        [sys.executable, str(script), json.dumps(address), policy],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first = json.loads(p.stdout.readline())
    return p, first


def finish(p):
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return json.loads(out.strip().split("\n")[-1])


def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@posix_only_because("UNIX-socket addresses")
@pytest.mark.parametrize("policy", ["rr", "shared"])
def test_a_unix_socket_path_is_served_and_removed_at_the_end(tmp_path, policy):
    path = str(tmp_path / "app.sock")
    p, first = run(tmp_path, path, policy)
    assert first == {"listening": True, "mode": 0o700}  # the umask setting applied
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(path)
        assert c.recv(16) == str(int(socket.AF_UNIX)).encode()
    assert finish(p) == {"left": False}


@posix_only_because("UNIX-socket addresses")
def test_a_stale_unix_socket_is_replaced_and_a_file_is_refused(tmp_path):
    path = str(tmp_path / "app.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # bound, never listening, then gone: what a killed server leaves
    stale.close()
    p, first = run(tmp_path, path, "rr")
    assert first["listening"] is True
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(path)
        c.recv(16)
    finish(p)
    plain = tmp_path / "data.txt"
    plain.write_text("keep me")
    p, first = run(tmp_path, str(plain), "rr")
    assert first["errno"] == 98 and f"unix:{plain}" in first["text"]
    assert "not a socket" in first["text"]
    finish(p)
    assert plain.read_text() == "keep me"


@posix_only_because("UNIX-socket addresses")
def test_a_unix_socket_someone_serves_is_eaddrinuse(tmp_path):
    path = str(tmp_path / "busy.sock")
    with socket.socket(socket.AF_UNIX) as busy:
        busy.bind(path)
        busy.listen()
        p, first = run(tmp_path, path, "shared")
        assert first["errno"] == 98 and f"unix:{path}" in first["text"]
        finish(p)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # left alone


@pytest.mark.slow
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize(
    "policy",
    [
        "rr",
        "shared",
        REUSEPORT,
    ],
)
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_ipv6_addresses(tmp_path, policy, host):
    port = free_port()
    p, first = run(tmp_path, [host, port], policy)
    assert first["listening"] is True
    with socket.create_connection(("::1", port), timeout=30) as c:
        assert c.recv(16) == str(int(socket.AF_INET6)).encode()
    with pytest.raises(OSError):  # IPv6 only: nothing on 127.0.0.1
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finish(p)


@linux_only_because("policy 'reuseport' balances only on Linux")
def test_reuseport_needs_a_tcp_port(tmp_path):
    p, first = run(tmp_path, str(tmp_path / "x.sock"), "reuseport")
    assert first["errno"] == 22 and "needs a fixed TCP port" in first["text"]
    finish(p)


def test_bad_addresses_say_what_is_wrong():
    for bad, exc, match in [
        (("h", "80"), TypeError, "host, port"),
        (("h", 70000), ValueError, "0-65535"),
        ("", ValueError, "non-empty"),
        ("a\0b", ValueError, "NUL"),
        (8000, TypeError, "UNIX socket path"),
    ]:
        with pytest.raises(exc, match=match):
            _address.check(bad)
    assert _address.check(["[::1]", 80]) == ("::1", 80)
    assert _address.describe(("::1", 80)) == "[::1]:80"
    assert _address.describe("/run/a.sock") == "unix:/run/a.sock"
