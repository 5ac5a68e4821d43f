"""Property-based: any argv and environment survive the trip into a child unchanged."""

from __future__ import annotations

import json

import pytest
from _helpers import PY, posix_only_because
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyforkd

# Text without NUL (the one byte a C string cannot carry) and without lone surrogates
# that the filesystem encoding cannot represent.
safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)
env_key = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00="),
    min_size=1,
    max_size=20,
)
ECHO = "import json, os, sys; print(json.dumps([sys.argv[1:], dict(os.environ)]))"


@posix_only_because("POSIX environment (Windows needs SYSTEMROOT; its names ignore case)")
@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=st.lists(safe_text, max_size=8), env=st.dictionaries(env_key, safe_text, max_size=6))
def test_argv_and_env_round_trip(args, env):
    # Python may add LC_CTYPE to its own environment (PEP 538) when none is set.
    env = {**env, "LC_ALL": "C.UTF-8"}
    r = pyforkd.exec_file(PY, ["-c", ECHO, *args], env=env, encoding="utf-8")
    got_args, got_env = json.loads(r.stdout)
    assert got_args == args
    assert got_env == env


@posix_only_because("POSIX programs (cat)")
@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=200_000))
def test_input_round_trips_through_cat(data):
    assert pyforkd.exec_file("cat", input=data, max_buffer=None).stdout == data
