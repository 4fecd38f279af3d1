"""`CpuEmbeddingCache` against the cache contract, plus its sizing and geometry."""

from __future__ import annotations

import numpy as np
import pytest

from hps.cache.cpu import DEFAULT_WAYS, CpuEmbeddingCache
from hps.errors import KeyInputError

from .cache_contract import DIM, CacheContract, rows


@pytest.fixture
def make_cache():
    made: list[CpuEmbeddingCache] = []

    def make(capacity_rows: int, dim: int) -> CpuEmbeddingCache:
        cache = CpuEmbeddingCache(capacity_rows, dim)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


class TestCpuEmbeddingCache(CacheContract):
    SINGLE_SET_CAPACITY_ROWS = DEFAULT_WAYS


class TestCpuEmbeddingCacheFourWays(CacheContract):
    """The same contract with small sets (4 ways), where collisions and eviction are common."""

    SINGLE_SET_CAPACITY_ROWS = 4

    @pytest.fixture
    def make_cache(self):
        made: list[CpuEmbeddingCache] = []

        def make(capacity_rows: int, dim: int) -> CpuEmbeddingCache:
            cache = CpuEmbeddingCache(capacity_rows, dim, ways=4)
            made.append(cache)
            return cache

        yield make
        for cache in made:
            cache.close()


@pytest.mark.parametrize(
    ("capacity_rows", "ways", "num_sets", "rounded"),
    [(1, 64, 1, 64), (64, 64, 1, 64), (65, 64, 2, 128), (1000, 64, 16, 1024), (10, 4, 3, 12)],
)
def test_capacity_is_whole_sets(capacity_rows, ways, num_sets, rounded):
    cache = CpuEmbeddingCache(capacity_rows, 4, ways=ways)
    assert (cache.num_sets, cache.capacity_rows, cache.ways, cache.device) == (num_sets, rounded, ways, "cpu")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_geometry(bad):
    with pytest.raises(KeyInputError, match="positive integer"):
        CpuEmbeddingCache(bad, 4)
    with pytest.raises(KeyInputError, match="positive integer"):
        CpuEmbeddingCache(64, bad)


def test_key_validation_names_the_problem():
    cache = CpuEmbeddingCache(64, 2)
    with pytest.raises(KeyInputError, match=r"CpuEmbeddingCache.find: keys must be a 1-D.*\(2, 2\)"):
        cache.find(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(KeyInputError, match="keys must be integers.*float64"):
        cache.find(np.zeros(2))
    with pytest.raises(KeyInputError, match=r"vectors must have shape \(3, 2\) for 3 keys of dim 2, got \(3, 5\)"):
        cache.insert_or_assign(np.arange(3), np.zeros((3, 5), np.float32))


def test_int32_keys_and_float64_vectors_are_accepted():
    cache = CpuEmbeddingCache(64, DIM)
    keys = np.array([1, -2, 3], dtype=np.int32)
    cache.insert_or_assign(keys, rows(keys).astype(np.float64))
    vectors, found = cache.find(np.array([-2, 1], dtype=np.int64))
    assert found.all()
    np.testing.assert_array_equal(vectors, rows(np.array([-2, 1])))


def test_keys_spread_over_sets_and_evictions_are_counted():
    cache = CpuEmbeddingCache(64 * 64, 1)
    keys = np.arange(64 * 32, dtype=np.int64)  # half full: sequential keys must not pile into a few sets
    cache.insert_or_assign(keys, np.zeros((keys.shape[0], 1), np.float32))
    assert cache.size() == keys.shape[0] and cache.evicted_rows == 0
    more = np.arange(10**6, 10**6 + 64 * 64, dtype=np.int64)
    cache.insert_or_assign(more, np.zeros((more.shape[0], 1), np.float32))
    assert cache.evicted_rows == keys.shape[0] + more.shape[0] - cache.size()
