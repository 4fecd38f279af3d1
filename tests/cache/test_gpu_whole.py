"""GpuWholeTableCache: the dynamic GPU cache used when gpucacheper covers the whole table.

Runs on CUDA, or on the CPU with TRITON_INTERPRET=1 (the Triton kernels in the interpreter)."""

from __future__ import annotations

import numpy as np
import pytest

# skips this module as well without CUDA or TRITON_INTERPRET=1
from .test_gpu_cache import DEVICE, _TorchArrays, tkeys, tvec  # isort: skip

from hps.cache import gpu_kernels as K  # noqa: E402
from hps.cache.gpu import make_gpu_cache  # noqa: E402
from hps.cache.gpu_whole import GpuWholeTableCache  # noqa: E402
from hps.config.schema import ModelConfig  # noqa: E402
from hps.errors import ConfigError, KeyInputError  # noqa: E402

from .cache_contract import CacheContract, rows  # noqa: E402


class TestGpuWholeTableCache(_TorchArrays, CacheContract):
    """The shared contract, less its LRU tests: this cache evicts nothing (once full, new keys stay
    uncached)."""

    test_lru_evicts_the_least_recently_used = None
    test_find_refreshes_recency = None
    test_more_keys_than_capacity_keeps_the_most_recent = None

    @pytest.fixture
    def make_cache(self):
        made = []

        def make(capacity_rows: int, dim: int) -> GpuWholeTableCache:
            made.append(GpuWholeTableCache(capacity_rows, dim, DEVICE))
            return made[-1]
        yield make
        for cache in made:
            cache.close()


def test_a_full_table_keeps_every_key_and_later_keys_stay_out():
    cache = GpuWholeTableCache(500, 4, DEVICE)
    keys = np.random.default_rng(0).choice(2**62, size=600, replace=False).astype(np.int64)
    keys[7] = K.EMPTY
    cache.insert_or_assign(tkeys(keys[:300]), tvec(rows(keys[:300], 4)))
    cache.insert_or_assign(tkeys(keys[300:]), tvec(rows(keys[300:], 4)))  # room for 200 of these 300
    assert cache.size() == 500
    out, found = cache.find(tkeys(keys))
    found = found.cpu().numpy()
    assert found[:500].all() and not found[500:].any()  # none lost to a collision; the overflow is the tail
    np.testing.assert_array_equal(out.cpu().numpy()[:500], rows(keys[:500], 4))
    vectors, mask, hits = cache.find_counted(tkeys(keys[:500]))
    assert hits == 500 and mask is None
    np.testing.assert_array_equal(vectors.cpu().numpy(), rows(keys[:500], 4))
    cache.close()


def test_erased_rows_and_index_positions_are_reused():
    cache = GpuWholeTableCache(64, 3, DEVICE)
    for round_ in range(8):  # 8 × 60 distinct keys through 64 rows: the index is rebuilt on the way
        keys = np.arange(60, dtype=np.int64) + 1000 * round_
        cache.insert_or_assign(tkeys(keys), tvec(rows(keys, 3)))
        assert cache.size() == 60
        out, found = cache.find(tkeys(keys))
        assert found.all()
        np.testing.assert_array_equal(out.cpu().numpy(), rows(keys, 3))
        cache.erase(tkeys(keys))
        assert cache.size() == 0 and cache.dump().numel() == 0
    assert cache._index_used <= 0.75 * cache.num_slots


def test_repeated_keys_keep_the_last_row_and_bad_input_changes_nothing():
    cache = GpuWholeTableCache(64, 2, DEVICE)
    cache.insert_or_assign(tkeys([5, 6, 5]), tvec([[1, 1], [2, 2], [3, 3]]))
    cache.assign(tkeys([6, 6, 9]), tvec([[4, 4], [5, 5], [6, 6]]))
    out, found = cache.find(tkeys([5, 6, 9]))
    assert found.cpu().numpy().tolist() == [True, True, False]
    assert out.cpu().numpy()[:2].tolist() == [[3, 3], [5, 5]]
    with pytest.raises(KeyInputError, match=r"GpuWholeTableCache.insert_or_assign: vectors must be .*\(2, 2\)"):
        cache.insert_or_assign(tkeys([7, 8]), tvec([[1, 1, 1], [2, 2, 2]]))
    with pytest.raises(ConfigError):
        GpuWholeTableCache(0, 2, DEVICE)
    assert cache.size() == 2


def test_factory_uses_it_when_the_whole_table_fits():
    base = dict(name="m", sparse_files=("a",), embedding_vecsize_per_table=(4,),
                maxnum_catfeature_query_per_table_per_sample=(2,), default_value_for_each_table=(0.5,),
                deployed_device_list=(0,), embedding_table_names=("t0",))
    model = ModelConfig(**base, gpucacheper=1.0)
    whole = make_gpu_cache(model, model.table(0), 1000, 0, device=DEVICE)
    assert isinstance(whole, GpuWholeTableCache) and whole.capacity_rows == 1000
    part = ModelConfig(**base, gpucacheper=0.9)
    assert not isinstance(make_gpu_cache(part, part.table(0), 1000, 0, device=DEVICE), GpuWholeTableCache)
