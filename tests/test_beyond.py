"""docs/beyond.md's example: the same Executor code on a Pool and on Dask's executor."""

from __future__ import annotations

from concurrent.futures import Executor

import pytest

import pyforkd


def total_length(executor: Executor, words: list[str]) -> int:
    return sum(executor.map(len, words))


WORDS = ["a", "bb", "ccc", "dddd"]


def test_the_example_runs_on_a_pool():
    with pyforkd.Pool(workers=2) as pool:
        assert total_length(pool, WORDS) == 10


@pytest.mark.slow
def test_the_same_code_runs_on_a_dask_executor():
    distributed = pytest.importorskip("distributed", reason="Dask's distributed is not installed")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        assert total_length(client.get_executor(), WORDS) == 10
