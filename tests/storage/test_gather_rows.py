"""`hash_map_kernels.gather_rows`, the prefetching gather of the hash map's direct-index finds (it
replaced numpy's `take` there): the same rows as `take`, zeros for absent rows (-1), any length
around its prefetch distance; and a direct-index find through it answers every key exactly."""

from __future__ import annotations

import numpy as np
import pytest

from hps.config.schema import HashMapConfig
from hps.storage import hash_map_kernels as K
from hps.storage.hash_map import HashMapBackend


@pytest.mark.parametrize("n", [0, 1, K.GATHER_AHEAD - 1, K.GATHER_AHEAD, K.GATHER_AHEAD + 1, 5000])
@pytest.mark.parametrize("dim", [1, 16, 33])
def test_gather_rows_is_take_with_zeros_for_absent_rows(n, dim):
    rng = np.random.default_rng(n + dim)
    values = rng.standard_normal((1000, dim)).astype(np.float32)
    rows = rng.integers(-1, 1000, n).astype(np.int64)
    out = np.full((n, dim), np.nan, np.float32)
    K.gather_rows(values, rows, out)
    want = values.take(np.maximum(rows, 0), 0)
    want[rows < 0] = 0.0
    np.testing.assert_array_equal(out, want)


def test_direct_index_find_answers_exactly_through_the_gather(monkeypatch):
    calls = []
    original = K.gather_rows
    monkeypatch.setattr(K, "gather_rows", lambda *a: calls.append(1) or original(*a))
    b = HashMapBackend(HashMapConfig())
    b.create_table("t", 8)
    keys = np.arange(200_000, dtype=np.int64)  # a 6.4 MB slab: beyond the cache-resident size, so gathered
    vectors = (keys[:, None] * 10 + np.arange(8)).astype(np.float32)
    b.insert_or_assign("t", keys, vectors)
    query = np.random.default_rng(0).integers(-100, 200_100, 20_000)
    for _ in range(6):  # the direct index is built after a few quiet finds
        got, found = b.find("t", query)
    assert b._tables["t"].dense is not None
    present = (query >= 0) & (query < 200_000)
    np.testing.assert_array_equal(found, present)
    np.testing.assert_array_equal(got[present], vectors[query[present]])
    assert not got[~present].any()
    assert calls, "the direct-index find did not use gather_rows"
    small, _ = b.find("t", query[:10])  # a few keys: numpy's take, same rows
    np.testing.assert_array_equal(small[present[:10]], vectors[query[:10][present[:10]]])
    b.close()
