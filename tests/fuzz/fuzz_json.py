"""Fuzz the JSON decoder for documents too deep for the stdlib's: on any text it must agree
with ``json.loads`` (the same value, or both refuse), and what it reads must write back
and read again to the same value."""

from __future__ import annotations

import json

from _harness import main

from pyforkd import _json


def _no_constant(name: str) -> None:
    raise ValueError(name)


def _as_js(value: object) -> object:
    """``value`` as JavaScript sees it: a surrogate pair is the one character it encodes,
    and -0.0 is 0.0 (how Node writes it)."""
    if isinstance(value, str):
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    if isinstance(value, float) and value == 0:
        return 0.0
    if isinstance(value, list):
        return [_as_js(v) for v in value]
    if isinstance(value, dict):
        return {_as_js(k): _as_js(v) for k, v in value.items()}
    return value


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")  # (any bytes: lone surrogates too)
    try:
        want = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        return  # (the case the deep decoder is for: nothing to compare with)
    except ValueError:
        want = ValueError
    try:
        got = _json._loads_deep(text)
    except ValueError:
        got = ValueError
    if want is ValueError or got is ValueError:
        assert want is got, (text, want, got)
        return
    assert got == want, (text, want, got)
    try:
        again = _json.loads(_json.dumps(got))
    except ValueError:
        return  # (NaN-free but out of range: an int beyond a double, or inf from 1e999)
    assert repr(again) == repr(_as_js(got)), (got, again)


if __name__ == "__main__":
    main(one_input)
