"""docs/beyond.md's example: the same Executor code on a Pool and on Dask's executor."""

from __future__ import annotations

import importlib.util
from concurrent.futures import Executor

import pytest
from _helpers import PY

import pyforkd


def total_length(executor: Executor, words: list[str]) -> int:
    return sum(executor.map(len, words))


WORDS = ["a", "bb", "ccc", "dddd"]

# In a process of its own: importing distributed changes how every exception pickles in
# that process (tblib's reducers; SystemExit(3) then unpickles with code None), which the
# pool's tests after this one would inherit.
DASK_EXAMPLE = """
from concurrent.futures import Executor
from distributed import Client, LocalCluster

def total_length(executor: Executor, words: list) -> int:
    return sum(executor.map(len, words))

if __name__ == "__main__":
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        print(total_length(client.get_executor(), ["a", "bb", "ccc", "dddd"]))
"""


def test_the_example_runs_on_a_pool():
    with pyforkd.Pool(workers=2) as pool:
        assert total_length(pool, WORDS) == 10


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("distributed") is None, reason="Dask's distributed is not installed"
)
def test_the_same_code_runs_on_a_dask_executor(tmp_path):
    script = tmp_path / "dask_example.py"
    script.write_text(DASK_EXAMPLE)
    r = pyforkd.spawn_sync(PY, [str(script)], timeout=120, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "10"
