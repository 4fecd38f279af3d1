"""A hash-map find of wide rows is split over cores sooner: the GPU miss path of a DLRM table (dim 128)
fetches a few ten thousand unique rows per batch, below the key count at which dim-16 finds split."""

from __future__ import annotations

import numpy as np
import pytest

import hps.storage.hash_map as hash_map
from hps.config.schema import HashMapConfig
from hps.storage.hash_map import HashMapBackend


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(hash_map.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv(hash_map.FIND_WORKERS_ENV, raising=False)
    monkeypatch.setattr(hash_map, "FIND_WORKERS", None)


@pytest.mark.parametrize(("dim", "split"), [(128, True), (16, False)])
def test_a_find_of_20k_wide_rows_is_split_and_exact(four_cores, monkeypatch, dim, split):
    """20,000 keys (fewer than PARALLEL_FIND_KEYS): rows of dim 128 go to several parts (each gathers at
    least 4,096 rows, 2 MiB), rows of dim 16 stay on the caller's core; the rows are exact either way."""
    calls: list[tuple[int, int]] = []
    inner = hash_map._on_all_cores

    def counting(find_part, n, *args):
        seen: list[int] = []

        def part(s: slice) -> int:
            seen.append(s.stop - s.start)
            return find_part(s)

        found = inner(part, n, *args)
        calls.append((n, len(seen)))
        return found

    monkeypatch.setattr(hash_map, "_on_all_cores", counting)
    backend = HashMapBackend(HashMapConfig())
    rows = 40_000
    keys = np.arange(rows, dtype=np.int64) * 3  # not a contiguous range: the probing path
    vectors = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    backend.create_table("t", dim)
    backend.insert_or_assign("t", keys, vectors)
    rng = np.random.default_rng(0)
    pick = rng.integers(0, rows, 20_000)
    query = np.concatenate([keys[pick], [1, 2]])  # two absent keys
    out, found, num_found = backend.find_counted("t", query)
    assert num_found == 20_000 and found[:-2].all() and not found[-2:].any()
    np.testing.assert_array_equal(out[:-2], vectors[pick])
    assert calls[-1][0] == query.shape[0]
    assert (calls[-1][1] > 1) is split
    backend.close()
