"""Sockets passed between pyforkd and a real Node.js process, both ways (NODE_HANDLE)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import textwrap

import pytest
from _helpers import open_fds, posix_only_because

import pyforkd

NODE = shutil.which("node")
pytestmark = [
    posix_only_because("Node's handle passing over UNIX sockets"),
    pytest.mark.skipif(NODE is None, reason="Node.js (node) is not installed"),
]


def script(tmp_path, name: str, code: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return str(path)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (client, server side)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
    return client, conn


# A Node child that answers each handle: a socket gets a greeting written into it, a
# server accepts one connection and greets it; each is reported back in order.
NODE_CHILD = """
    process.on('message', (m, handle) => {
      if (!handle) { process.send({ plain: m }); return; }
      if (handle.constructor.name === 'Server') {
        handle.once('connection', (s) => { s.end('node accepted ' + m); handle.close(); });
        process.send({ server: m, listening: handle.listening });
        return;
      }
      handle.end('node got ' + m);
      process.send({ socket: m, remote: handle.remotePort || null });
    });
"""


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def test_pyforkd_parent_passes_sockets_to_a_node_child_in_order(tmp_path):
    child = pyforkd.fork(script(tmp_path, "child.js", NODE_CHILD), exec_path=NODE)
    base = open_fds()
    clients = []
    for i in range(3):
        client, conn = tcp_pair()
        port = client.getsockname()[1]
        child.send(f"conn{i}", handle=conn)  # closed here once Node acknowledged it
        child.send(f"after{i}")  # held back until that ACK: order is kept
        clients.append((client, port))
    server = socket.create_server(("127.0.0.1", 0))
    address = server.getsockname()
    child.send("srv", handle=server)
    replies = [child.recv(timeout=30) for _ in range(7)]
    assert replies[:6] == [
        x
        for i, (_, port) in enumerate(clients)
        for x in ({"socket": f"conn{i}", "remote": port}, {"plain": f"after{i}"})
    ]
    assert replies[6] == {"server": "srv", "listening": True}
    assert [read_all(c) for c, _ in clients] == [b"node got conn%d" % i for i in range(3)]
    assert read_all(socket.create_connection(address)) == b"node accepted srv"
    # Our copies went away as the ACKs came: only the three clients were left, now closed.
    child.send("flush")
    assert child.recv(timeout=30) == {"plain": "flush"}
    assert open_fds() == base
    child.disconnect()
    assert child.wait(timeout=30) == 0


def test_a_node_peer_is_never_sent_what_would_abort_it(tmp_path):
    child = pyforkd.fork(script(tmp_path, "child.js", NODE_CHILD), exec_path=NODE)
    with open(os.devnull, "rb") as f:
        with pytest.raises(ValueError, match="accepts only sockets"):
            child.send("file", handle=f)
        with pytest.raises(ValueError, match=r"only sockets.*Fd"):
            child.send("fd", handle=pyforkd.Fd(os.dup(f.fileno())))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, pytest.raises(ValueError, match="AF_UNIX/SOCK_DGRAM"):
        child.send("dgram", handle=a)
    c1, c2 = tcp_pair()
    with c1, c2, pytest.raises(ValueError, match="one handle per message"):
        child.send("two", handle=[c1, c2])
    child.send("still fine")  # nothing was written: the channel is intact
    assert child.recv(timeout=30) == {"plain": "still fine"}
    child.disconnect()
    assert child.wait(timeout=30) == 0


def test_node_parent_and_python_child_pass_sockets_both_ways(tmp_path):
    child_py = script(
        tmp_path,
        "child.py",
        """
        import socket, pyforkd
        ch = pyforkd.parent()
        msg, conn = ch.recv(with_handle=True)          # a connection a Node server accepted
        conn.sendall(b"python served " + msg.encode())
        conn.close()                                    # Node's server.close() waits for this
        mine, theirs = socket.socketpair()
        ch.send("unix", handle=theirs)                  # and one of ours goes to Node
        ch.send("after unix")
        mine.sendall(b"over a unix socket")
        mine.close()
        for m in ch:
            ch.send({"echo": m})
        """,
    )
    parent_js = script(
        tmp_path,
        "parent.js",
        f"""
        const net = require('net');
        const {{ fork }} = require('child_process');
        const out = {{ got: [] }};
        const c = fork({json.dumps(child_py)}, [], {{ execPath: {json.dumps(sys.executable)},
                                                      execArgv: [] }});
        const server = net.createServer({{ pauseOnConnect: true }}, (sock) => {{
          c.send('req1', sock);
          server.close(() => {{ out.serverClosed = true; c.send('done'); }});
        }});
        server.listen(0, '127.0.0.1', () => {{
          const client = net.connect(server.address().port, '127.0.0.1');
          let data = '';
          client.on('data', (d) => data += d);
          client.on('end', () => {{ out.client = data; }});
        }});
        c.on('message', (m, handle) => {{
          if (handle) {{
            let data = '';
            handle.on('data', (d) => data += d);
            handle.on('end', () => {{ out.unix = [m, data]; }});
            return;
          }}
          out.got.push(m);
          if (m && m.echo === 'done') c.disconnect();
        }});
        c.on('exit', (code) => {{ out.code = code; console.log(JSON.stringify(out)); }});
    """,
    )
    r = pyforkd.exec_file(NODE, [parent_js], timeout=60, encoding="utf-8")
    assert json.loads(r.stdout) == {
        "got": ["after unix", {"echo": "done"}],
        "client": "python served req1",
        "serverClosed": True,
        "unix": ["unix", "over a unix socket"],
        "code": 0,
    }


def test_node_sockets_arrive_blocking_and_count_toward_get_connections(tmp_path):
    child_py = script(
        tmp_path,
        "child.py",
        """
        import pyforkd
        ch = pyforkd.parent()
        msg, conn = ch.recv(with_handle=True)
        ch.send({"blocking": conn.getblocking(), "type": type(conn).__mro__[1].__name__})
        assert ch.recv() == "close it"
        conn.close()
        ch.send("closed")
        for m in ch:
            pass
        """,
    )
    parent_js = script(
        tmp_path,
        "parent.js",
        f"""
        const net = require('net');
        const {{ fork }} = require('child_process');
        const out = [];
        const c = fork({json.dumps(child_py)}, [], {{ execPath: {json.dumps(sys.executable)},
                                                      execArgv: [] }});
        const server = net.createServer((sock) => c.send('conn', sock));
        server.listen(0, '127.0.0.1', () => net.connect(server.address().port, '127.0.0.1'));
        c.on('message', (m) => {{
          out.push(m);
          server.getConnections((err, n) => {{
            out.push(err ? String(err) : n);
            if (m === 'closed') {{ c.disconnect(); server.close(); process.exit(0); }}
            else c.send('close it');
          }});
        }});
        process.on('exit', () => console.log(JSON.stringify(out)));
    """,
    )
    r = pyforkd.exec_file(NODE, [parent_js], timeout=60, encoding="utf-8")
    assert json.loads(r.stdout) == [{"blocking": True, "type": "socket"}, 1, "closed", 0]
