"""Fuzz the control socket's request handling: whatever bytes a local client sends as its
request, the answer is a JSON object with "ok", and the server goes on."""

from __future__ import annotations

import json

from _harness import main

from pyforkd.cluster import control as _control


class Cluster:
    settings = {"policy": "rr"}  # noqa: RUF012

    def status(self):
        return []

    def reload(self):
        pass

    def scale(self, n):
        assert isinstance(n, int) and 0 < n <= 1024

    def request_stop(self, fast=False):
        assert isinstance(fast, bool)


def make_server():
    server = _control.ControlServer.__new__(_control.ControlServer)
    server.name = "fuzz"
    server._cluster = Cluster()
    server._log = lambda text: None
    return server


SERVER = make_server()


def one_input(data: bytes) -> None:
    answer = SERVER._respond(data)
    assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool), answer
    json.dumps(answer)  # what goes back must be JSON


if __name__ == "__main__":
    main(one_input)
