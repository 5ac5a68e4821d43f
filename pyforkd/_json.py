r"""JSON as Node's IPC channel writes and reads it.

The stdlib's ``json`` does the work; what it does not do as Node does is handled here:

- Any depth.  ``json`` recurses on the C stack and gives up near 1,000 levels; Node's
  ``JSON.parse`` takes any depth and its ``JSON.stringify`` about 4,000.  A document too
  deep for ``json`` goes through the loops below instead, which keep their own stack.
- A lone surrogate (``"\ud800"``) is written as JSON's ``\ud800`` escape, as Node does:
  UTF-8 has no bytes for it.  (Two in a row that make a pair arrive as the one character
  they encode: JavaScript's strings are UTF-16.)
- ``-0.0`` is written as ``0.0``: Node's ``JSON.stringify(-0)`` gives ``0``.
- NaN, the infinities and integers beyond a double's range are refused: Node would read
  the last as ``Infinity``, and writes the others as ``null``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any, NoReturn

__all__ = ["dumps", "loads"]

_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS = {"true": True, "false": False, "null": None}
# A run of 309 digits or more: an integer at least 1e308 (the fast path's output is
# rescanned only when it holds one).
_LONG_DIGITS = re.compile(r"(?<![0-9.eE+-])-?[0-9]{309}")
_MAX_INT = int(sys.float_info.max)
_encode_string = json.encoder.encode_basestring  # (the C one: ensure_ascii=False)
_scan_string: Any = getattr(json.decoder, "scanstring")  # noqa: B009 - (not in typeshed)


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def loads(text: str | bytes) -> Any:
    """Strict JSON, as Node's ``JSON.parse``: NaN and Infinity are refused; any depth.

    ``ValueError`` for anything that is not JSON.
    """
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        pass  # too deep for json's C recursion: the loop below has a stack of its own
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    return _loads_deep(text)


def dumps(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON, as Node's ``JSON.stringify`` writes it; any depth.

    ``TypeError`` for what JSON cannot hold (with the reason), ``ValueError`` for a
    reference cycle and for NaN, infinities and integers beyond a double's range.
    """
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except RecursionError:
        text = _dumps_deep(obj)
    else:
        if "-0.0" in text or (len(text) >= 309 and _LONG_DIGITS.search(text)):
            text = _dumps_deep(obj)  # (rare: the slow path writes these as Node does)
    # A lone surrogate has no UTF-8: JSON's escape for it, which is what Node writes.
    return text.encode("utf-8", "backslashreplace")


def _skip(s: str, i: int) -> int:
    """The index of the first character at or after ``i`` that is not JSON whitespace."""
    n = len(s)
    while i < n and s[i] in " \t\n\r":
        i += 1
    return i


def _loads_deep(s: str) -> Any:
    """``json.loads`` with a stack of its own instead of the C stack's recursion."""
    stack: list[list[Any]] = []  # open containers: [list, None] or [dict, key]
    i = _skip(s, 0)
    while True:
        c = s[i : i + 1]
        if c == "[":
            i = _skip(s, i + 1)
            if s[i : i + 1] == "]":
                value: Any = []
                i += 1
            else:
                stack.append([[], None])
                continue
        elif c == "{":
            i = _skip(s, i + 1)
            if s[i : i + 1] == "}":
                value = {}
                i += 1
            else:
                key, i = _key(s, i)
                stack.append([{}, key])
                continue
        elif c == '"':
            value, i = _scan_string(s, i + 1, True)
        else:
            m = _NUMBER.match(s, i)
            if m is not None:
                frac, exp = m.group(2), m.group(3)
                value = float(m.group(0)) if frac or exp else int(m.group(1))
                i = m.end()
            else:
                word = next((w for w in _LITERALS if s.startswith(w, i)), None)
                if word is None:
                    raise ValueError(f"Expecting value at char {i}")
                value = _LITERALS[word]
                i += len(word)
        # A value is complete: put it in its container, closing those that end here.
        while True:
            i = _skip(s, i)
            if not stack:
                if i != len(s):
                    raise ValueError(f"Extra data at char {i}")
                return value
            top = stack[-1]
            container, key = top
            if key is None:
                container.append(value)
                close = "]"
            else:
                container[key] = value
                close = "}"
            c = s[i : i + 1]
            if c == ",":
                i = _skip(s, i + 1)
                if key is not None:
                    top[1], i = _key(s, i)
                break
            if c != close:
                raise ValueError(f"Expecting ',' or '{close}' at char {i}")
            stack.pop()
            value = container
            i += 1


def _key(s: str, i: int) -> tuple[str, int]:
    """An object's key and its colon at ``i``; the index of the value after them."""
    if s[i : i + 1] != '"':
        raise ValueError(f"Expecting property name enclosed in double quotes at char {i}")
    key, i = _scan_string(s, i + 1, True)
    i = _skip(s, i)
    if s[i : i + 1] != ":":
        raise ValueError(f"Expecting ':' delimiter at char {i}")
    return key, _skip(s, i + 1)


_END = object()


def _dumps_deep(obj: Any) -> str:
    """``json.dumps`` with a stack of its own, writing -0.0 and refusing huge ints."""
    out: list[str] = []
    stack: list[list[Any]] = []  # [iterator, closer, id, first]
    path: set[int] = set()  # the containers being written: a cycle comes back to one
    o = obj
    while True:
        if isinstance(o, (dict, list, tuple)):
            if id(o) in path:
                raise ValueError("Circular reference detected")
            path.add(id(o))
            if isinstance(o, dict):
                out.append("{")
                stack.append([iter(o.items()), "}", id(o), True])
            else:
                out.append("[")
                stack.append([iter(o), "]", id(o), True])
        else:
            out.append(_scalar(o))
        while stack:
            frame = stack[-1]
            item: Any = next(frame[0], _END)
            if item is _END:
                out.append(frame[1])
                path.discard(frame[2])
                stack.pop()
                continue
            if not frame[3]:
                out.append(",")
            frame[3] = False
            if frame[1] == "}":
                name, o = item
                out.append(_dict_key(name))
                out.append(":")
            else:
                o = item
            break
        else:
            return "".join(out)


def _scalar(o: Any) -> str:
    if isinstance(o, str):
        return _encode_string(o)
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if isinstance(o, int):
        if -_MAX_INT <= o <= _MAX_INT:
            return int.__repr__(o)
        raise ValueError("an int beyond a double's range is not JSON that Node can read")
    if isinstance(o, float):
        if not math.isfinite(o):
            raise ValueError(f"Out of range float values are not JSON compliant: {o!r}")
        return "0.0" if o == 0 else float.__repr__(o)  # (-0.0: Node writes 0)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _dict_key(k: Any) -> str:
    if isinstance(k, str):
        return _encode_string(k)
    if isinstance(k, int) and not isinstance(k, bool):
        return _encode_string(int.__repr__(k))
    if k is None or isinstance(k, (bool, float)):
        return _encode_string(_scalar(k))
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")
