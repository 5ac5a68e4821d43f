"""docs/protocol.md's tables say what csrc/cdef/frame.h says."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (an installed wheel's test run has the tests without the repository around them)
pytestmark = pytest.mark.skipif(
    not (ROOT / "docs" / "protocol.md").exists() or not (ROOT / "csrc" / "cdef").is_dir(),
    reason="reads docs/protocol.md and csrc/cdef/frame.h of the source tree, not here",
)


def _header_constants() -> dict[str, int]:
    text = (ROOT / "csrc" / "cdef" / "frame.h").read_text(encoding="utf-8")
    return {
        m[1]: int(m[2], 0)
        for m in re.finditer(r"\b(PFD_FRAME_\w+)\s*=\s*(0x[0-9A-Fa-f]+|\d+)", text)
    }


def _doc_constants() -> dict[str, int]:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    rows = re.finditer(r"^\| `(PFD_FRAME_\w+)` \| (0x[0-9A-Fa-f]+|\d+) \|", text, re.M)
    return {m[1]: int(m[2], 0) for m in rows}


def test_every_constant_in_the_doc_is_the_headers():
    header, doc = _header_constants(), _doc_constants()
    assert len(doc) >= 10  # the size, magic, version, descriptor limit, five kinds, the flag
    for name, value in doc.items():
        assert header.get(name) == value, (
            f"{name}: the doc says {value}, frame.h {header.get(name)}"
        )


def test_every_kind_and_flag_of_the_header_is_documented():
    header, doc = _header_constants(), _doc_constants()
    wanted = {n for n in header if n != "PFD_FRAME_FLAGS_KNOWN"}
    assert wanted <= set(doc), f"not in docs/protocol.md: {sorted(wanted - set(doc))}"


def test_the_documented_handle_kinds_are_the_ones_sent():
    from pyforkd import _wire

    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    doc = set(re.findall(r"^\| [^|]+ \| `(\w)` \|", text, re.M))
    sent = {
        chr(k) for k in (_wire._KIND_FD, _wire._KIND_SOCKET, _wire._KIND_RING, _wire._KIND_FILE)
    }
    assert doc == sent
