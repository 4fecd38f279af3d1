"""Every key in the sparse files comes back with its vector, whatever the ps.json says.

HugeCTR's configs mostly omit `volatile_db` (its notebooks, the docs' samples, the Triton samples),
and HugeCTR's saved outputs for them show exact lookups. The matrix below crosses the cache
settings those configs use with every tier combination; with `hit_rate_threshold` >= 1 (every
miss answered synchronously) each stored key must come back exact, and only keys stored nowhere
get the default value. The same matrix runs through the GPU cache's code (Triton kernels in the
CPU interpreter without a GPU) for the cache types it implements.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

import hps
from hps.model_format import write_sparse_model
from tests.redis_cluster_fixture import redis_cluster_module, redis_server_available  # noqa: F401

ROWS, DIM, DEFAULT = 1200, 8, -7.0
MAX_BATCH, KEYS_PER_SAMPLE = 64, 8  # 512 keys a call: a dynamic cache of 0.2 × 1,200 rows overflows
CACHES = {  # id → the model keys that select the cache
    "dynamic-0.2": {"embedding_cache_type": "dynamic", "gpucacheper": 0.2},
    "dynamic-0.5": {"embedding_cache_type": "dynamic", "gpucacheper": 0.5},
    "dynamic-1.0": {"embedding_cache_type": "dynamic", "gpucacheper": 1.0},
    "uvm": {"embedding_cache_type": "uvm", "gpucacheper": 0.5},
    "static": {"embedding_cache_type": "static"},
    "no-cache": {"gpucache": False},
}
MATRIX = list(itertools.product(CACHES, (None, "hash_map", "redis_cluster"), (None, "rocks_db"), (0.0, 0.2)))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """One table of spread-out int64 keys (negative and beyond 2**32 too), in no particular order."""
    root = tmp_path_factory.mktemp("sparse")
    rng = np.random.default_rng(13)
    keys = rng.choice(np.arange(-5_000, 5_000, dtype=np.int64) * 1_000_003, ROWS, replace=False)
    vectors = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    write_sparse_model(root / "t0", keys, vectors)
    return root / "t0", keys, vectors


def ps_json(sparse_file, model_name, cache, volatile, persistent, refresh, tmp_path, redis_address=None):
    model = {"model": model_name, "sparse_files": [str(sparse_file)], "embedding_table_names": ["t0"],
             "embedding_vecsize_per_table": [DIM], "maxnum_catfeature_query_per_table_per_sample": [KEYS_PER_SAMPLE],
             "default_value_for_each_table": [DEFAULT], "deployed_device_list": [0], "max_batch_size": MAX_BATCH,
             "hit_rate_threshold": 1.0, "cache_refresh_percentage_per_iteration": refresh, **CACHES[cache]}
    config = {"supportlonglong": True, "models": [model]}
    if volatile == "hash_map":
        config["volatile_db"] = {"type": "hash_map", "num_partitions": 3}
    elif volatile == "redis_cluster":
        config["volatile_db"] = {"type": "redis_cluster", "address": redis_address, "num_partitions": 3}
    if persistent:
        config["persistent_db"] = {"type": "rocks_db", "path": str(tmp_path / "rocksdb")}
    return config


def check_every_key_exact(ps, model_name, keys, vectors):
    """Every stored key exact (cold, then warm, then shuffled with duplicates); unknown keys get the default."""
    limit = MAX_BATCH * KEYS_PER_SAMPLE
    order = np.random.default_rng(1).permutation(len(keys))
    for attempt in range(2):
        for start in range(0, len(keys), limit):
            idx = order[start:start + limit]
            got = ps.lookup(keys[idx], model_name, 0)
            np.testing.assert_array_equal(got, vectors[idx], err_msg=f"pass {attempt}, keys {start}..")
    idx = np.random.default_rng(2).integers(0, len(keys), limit - 2)
    unknown = np.array([1, 2_000_000_000_000], dtype=np.int64)  # no stored key is ≡ 1 mod 1,000,003
    got = ps.lookup(np.concatenate([keys[idx], unknown]).reshape(-1, 2), model_name, 0).reshape(-1, DIM)
    np.testing.assert_array_equal(got[:-2], vectors[idx])
    assert (got[-2:] == DEFAULT).all()


@pytest.mark.parametrize("cache,volatile,persistent,refresh", MATRIX,
                         ids=["-".join(map(str, case)) for case in MATRIX])
def test_every_stored_key_is_exact(table, tmp_path, request, cache, volatile, persistent, refresh):
    sparse_file, keys, vectors = table
    address = None
    if volatile == "redis_cluster":
        if not redis_server_available():
            pytest.skip("redis-server is not on PATH")
        address = request.getfixturevalue("redis_cluster_module").address
    model_name = f"m{MATRIX.index((cache, volatile, persistent, refresh))}"  # one Redis table per case
    config = ps_json(sparse_file, model_name, cache, volatile, persistent, refresh, tmp_path, address)
    with hps.HPS(config, show_progress=False) as ps:
        check_every_key_exact(ps, model_name, keys, vectors)
        if volatile == "redis_cluster":
            ps.volatile.drop_table(ps.model_config(model_name).tables[0].tag)


def test_where_the_rows_went_is_logged_once(table, tmp_path, caplog):
    sparse_file, keys, vectors = table
    config = ps_json(sparse_file, "m", "dynamic-0.2", None, None, 0.0, tmp_path)
    with caplog.at_level(logging.WARNING, logger="hps.lookup.row_home"):
        with hps.HPS(config, show_progress=False) as ps:
            assert ps.config.volatile_db is not None and ps.config.volatile_db.type == "hash_map"
            check_every_key_exact(ps, "m", keys, vectors)
    said = [r.getMessage() for r in caplog.records if r.name == "hps.lookup.row_home"]
    assert len(said) == 1 and "in-process hash map" in said[0] and "model(s) m " in said[0]


def test_static_and_uvm_caches_need_no_tier(table, tmp_path):
    sparse_file, keys, vectors = table
    for cache in ("static", "uvm"):
        with hps.HPS(ps_json(sparse_file, "m", cache, None, None, 0.0, tmp_path), show_progress=False) as ps:
            assert ps.volatile is None  # the cache holds the whole table: no second copy
            check_every_key_exact(ps, "m", keys, vectors)


def test_an_added_model_gets_a_home_for_its_rows(table, tmp_path):
    sparse_file, keys, vectors = table
    with hps.HPS(ps_json(sparse_file, "a", "static", None, None, 0.0, tmp_path), show_progress=False) as ps:
        assert ps.volatile is None
        ps.add_model(ps_json(sparse_file, "b", "dynamic-0.2", None, None, 0.0, tmp_path)["models"][0])
        check_every_key_exact(ps, "b", keys, vectors)


def test_below_a_hit_rate_threshold_of_1_a_miss_may_get_the_default_by_design(table, tmp_path):
    """HugeCTR's asynchronous mode: a batch whose hit rate reaches the threshold gets the default for its
    misses while they are inserted in the background (README, lookup semantics)."""
    sparse_file, keys, vectors = table
    config = ps_json(sparse_file, "m", "dynamic-1.0", None, None, 0.0, tmp_path)
    config["models"][0]["hit_rate_threshold"] = 0.0
    with hps.HPS(config, show_progress=False) as ps:
        first = ps.lookup(keys[:100], "m", 0)
        assert (first == DEFAULT).all()  # a cold cache: every key missed, answered asynchronously


GPU_CASES = list(itertools.product(("dynamic-0.2", "dynamic-1.0", "uvm", "static"), (0.0, 0.2)))


@pytest.mark.parametrize("cache,refresh", GPU_CASES, ids=[f"{c}-{r}" for c, r in GPU_CASES])
def test_every_stored_key_is_exact_through_the_gpu_cache(table, tmp_path, gpu_cache_device, cache, refresh):
    sparse_file, keys, vectors = table
    with hps.HPS(ps_json(sparse_file, "m", cache, None, None, refresh, tmp_path), show_progress=False) as ps:
        check_every_key_exact(ps, "m", keys, vectors)
