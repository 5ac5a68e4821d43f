"""The round-robin hand-off from Python: real HTTP over it (http.client), an even split,
a worker SIGKILLed while connections wait for it (they go to another, none is lost)."""

from __future__ import annotations

import collections
import os
import signal
import socket
import threading
import time

import pytest
from _helpers import http_get, posix_only_because

import pyforkd
from pyforkd import ChannelClosedError, cluster

pytestmark = posix_only_because("workers SIGKILLed while connections wait for them")


def serve(accepting=True):
    ch = pyforkd.parent()
    _, sock = ch.recv(with_handle=True)
    listener = cluster.Listener(sock)
    ch.send("ready")
    if not accepting:
        signal.pause()  # a stuck worker: connections wait for it
    served = 0
    while True:
        try:
            conn, address = listener.accept()
        except ChannelClosedError:
            return served
        assert address[0] == "127.0.0.1"
        if accepting == "die":  # killed once the connection is its own (acknowledged)
            os.kill(os.getpid(), signal.SIGKILL)
        conn.recv(4096)  # the request (small: one read)
        body = str(os.getpid()).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        conn.close()
        served += 1


def get(port):
    return int(http_get(port))


@pytest.fixture
def primary():
    # Workers come from a zygote made before the dispatcher's thread starts: none is
    # forked from a process with a thread of pyforkd's running.
    zygote = pyforkd.Zygote(serve)
    lsock = socket.create_server(("127.0.0.1", 0))
    rr = cluster.RoundRobin(lsock, max_inflight=2)
    workers = []

    def start(accepting=True):
        slot, theirs = rr.connect()
        w = zygote.fork(accepting)
        w.send("your connections", handle=theirs)
        assert w.recv(timeout=30) == "ready"
        workers.append(w)
        return slot, w

    yield lsock.getsockname()[1], rr, start
    rr.close()  # workers see the hand-off end and return
    lsock.close()
    for w in workers:
        w.kill("SIGKILL")
        w.wait(timeout=30)
    zygote.stop()


def test_round_robin_splits_evenly_and_survives_a_killed_worker(primary):
    port, rr, start = primary
    (_, a), (_, b) = start(), start()
    pids = collections.Counter(get(port) for _ in range(40))
    assert set(pids) == {a.pid, b.pid} and pids[a.pid] == pids[b.pid] == 20
    a.kill("SIGKILL")
    a.wait(timeout=30)
    assert all(get(port) == b.pid for _ in range(10))
    assert rr.stats()["accepted"] == 50


def test_connections_waiting_for_a_dead_worker_go_to_another(primary):
    port, rr, start = primary
    stuck_slot, stuck = start(accepting=False)
    results = []
    threads = [threading.Thread(target=lambda: results.append(get(port))) for _ in range(4)]
    for t in threads:
        t.start()
    # The stuck worker holds what it was handed (at most 2, max_inflight) and takes none.
    for _ in range(3000):
        if rr.stats(stuck_slot)["in_flight"] == 2:
            break
        threading.Event().wait(0.01)
    assert rr.stats(stuck_slot)["in_flight"] == 2
    _, good = start()
    stuck.kill("SIGKILL")
    stuck.wait(timeout=30)
    for t in threads:
        t.join(timeout=60)
    assert results == [good.pid] * 4  # all four answered, none lost
    assert rr.stats()["redispatched"] >= 2


def test_a_connection_taken_by_a_worker_that_dies_dies_with_it(primary):
    port, rr, start = primary
    dying_slot, dying = start(accepting="die")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert c.recv(4096) == b""  # closed with its worker: no answer ...
        except ConnectionResetError:
            pass  # (or reset: the worker had unread data)
    dying.wait(timeout=30)
    assert rr.stats(dying_slot)["accepted"] == 1
    _, good = start()
    assert get(port) == good.pid
    assert rr.stats()["redispatched"] == 0  # ... and never served twice


def test_accept_many_takes_what_waits_and_acknowledges_all_of_it():
    # A worker's server takes a burst at once: every connection that waits, each alive,
    # each with its peer's address, and the primary hears that all of them are taken.
    lsock = socket.create_server(("127.0.0.1", 0))
    rr = cluster.RoundRobin(lsock, max_inflight=16)
    slot, theirs = rr.connect()
    listener = cluster.Listener(theirs)
    port = lsock.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(5)]
    got = []
    try:
        for i, c in enumerate(clients):
            c.sendall(b"%d" % i)
        assert listener.wait(30)
        deadline = time.monotonic() + 30
        while rr.stats(slot)["handed"] < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        got = listener.accept_many(3)
        assert len(got) == 3  # no more than asked for,
        got += listener.accept_many()
        assert len(got) == 5 and listener.accept_many() == []  # then the rest: none waits
        while rr.stats(slot)["accepted"] < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rr.stats(slot) == {"handed": 5, "accepted": 5, "in_flight": 0, "live": 1}
        assert sorted(conn.recv(1) for conn, _ in got) == [b"0", b"1", b"2", b"3", b"4"]
        assert {peer for _, peer in got} == {c.getsockname() for c in clients}
        for conn, _ in got:
            assert conn.proto == socket.IPPROTO_TCP
    finally:
        for conn, _ in got:
            conn.close()
        for c in clients:
            c.close()
        rr.close()
        lsock.close()
    with pytest.raises(ChannelClosedError):
        listener.accept_many()  # the primary's end is gone
    listener.close()
