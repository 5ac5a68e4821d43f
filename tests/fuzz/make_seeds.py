"""Write the seed corpus (tests/fuzz/corpus/NAME/): valid inputs of each decoder, made
by pyforkd's own encoders, from which the fuzzers start.  Run again after a format change:
``python tests/fuzz/make_seeds.py``."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import pyforkd
from pyforkd import _ringlink

HERE = os.path.dirname(os.path.abspath(__file__))


def put(name: str, data: bytes) -> None:
    where = os.path.join(HERE, "corpus", name)
    os.makedirs(where, exist_ok=True)
    with open(os.path.join(where, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def sent_by(serialization: str, *messages: object, handles: object = None) -> bytes:
    """The bytes a pyforkd Channel writes for ``messages`` (the last with ``handles``)."""
    a, b = socket.socketpair()
    ch = pyforkd.Channel(a, serialization=serialization)
    for i, msg in enumerate(messages):
        last = i == len(messages) - 1
        ch.send(msg, handle=handles if last else None, keep_open=True)
    ch.close()
    b.settimeout(1)
    data = b""
    while True:
        try:
            chunk, _, _, _ = socket.recv_fds(b, 1 << 20, 8)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    b.close()
    return data


def frames() -> None:
    # The stream, then the fuzzer's numbers (taken from the end): one write, no
    # descriptors, the largest max_message_size, JSON.
    suffix = b"\x00" * 4
    with open(os.devnull, "rb") as f, open(os.devnull, "w", encoding="utf-8") as t:
        samples = [
            sent_by("json", {"a": [1, 2, "x"]}, [None, True, 1.5]),
            sent_by("raw", b"bytes", b""),
            sent_by("json", "with a handle", handles=pyforkd.Fd(f.fileno())),
            sent_by("json", "a list", handles=[f, t]),
        ]
    for data in samples:
        put("frames", data + suffix)


def node() -> None:
    lines = [
        {"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": {"hello": 1}},
        {"cmd": "NODE_SOCKET_GET_COUNT", "key": "127.0.0.1:80"},
        {"cmd": "NODE_SOCKET_NOTIFY_CLOSE", "key": "k"},
        {"cmd": "NODE_HANDLE_ACK"},
        {"plain": ["message", 1, 2.5, None, {"x": "\u00e9"}]},
    ]
    for line in lines:
        put("node", json.dumps(line, separators=(",", ":")).encode() + b"\n" + b"\x00" * 2)


def control() -> None:
    for req in (
        {"cmd": "status"},
        {"cmd": "scale", "n": 3},
        {"cmd": "reload"},
        {"cmd": "stop", "fast": True},
        {"cmd": "ping"},
    ):
        put("control", json.dumps(req).encode() + b"\n")


def ring() -> None:
    for obj in (b"raw bytes", bytearray(b"ba"), {"pickled": [1, 2]}):
        message = _ringlink.encode(obj)
        pieces, size = message.pieces(0)
        record = bytearray(size)
        for pos, data in pieces:
            record[pos : pos + len(memoryview(data))] = memoryview(data).cast("B")
        put("ring", bytes(record) + b"\x00")


def json_documents() -> None:
    for text in (
        '[1,2.5,-0.0,"a\\u00e9\\ud800",{"k":[true,false,null]}]',
        ' { "a" : { "b" : [ [ [ ] ] , { } ] } } ',
        "[1e400,-1E-5,0,12345678901234567890]",
        "[" * 2000 + "]" * 2000,
        '"\\"\\\\\\/\\b\\f\\n\\r\\t"',
    ):
        put("json", text.encode())


if __name__ == "__main__":
    frames()
    node()
    control()
    ring()
    json_documents()
