"""`CacheRoute`: a host cache is skipped while the tiers answer faster without it, and answers stay exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import hps
from hps.lookup.cache_route import EXPLORE_EVERY, WARMUP_LOOKUPS, CacheRoute
from hps.model_format import write_sparse_model


def _drive(route: CacheRoute, cache_s: float, tier_s: float, lookups: int) -> list[bool]:
    taken = []
    for _ in range(lookups):
        via_cache = route.use_cache()
        route.record(via_cache, 100, 100 * (cache_s if via_cache else tier_s))
        taken.append(via_cache)
    return taken


def test_a_cache_slower_than_its_tier_is_bypassed_but_still_sampled():
    route = CacheRoute()
    taken = _drive(route, cache_s=10e-6, tier_s=1e-6, lookups=WARMUP_LOOKUPS + 10 * EXPLORE_EVERY)
    assert all(taken[:WARMUP_LOOKUPS])  # measured first
    late = taken[-5 * EXPLORE_EVERY:]
    assert late.count(True) == 5  # one lookup in EXPLORE_EVERY re-measures the cache
    assert route.snapshot()["route"] == "tiers"


def test_the_tiers_route_is_measured_right_after_the_warm_up():
    route = CacheRoute()
    taken = _drive(route, cache_s=10e-6, tier_s=1e-6, lookups=WARMUP_LOOKUPS + 2)
    assert all(taken[:WARMUP_LOOKUPS]) and taken[WARMUP_LOOKUPS:] == [False, False]


def test_a_cache_faster_than_its_tier_keeps_serving():
    route = CacheRoute()
    taken = _drive(route, cache_s=1e-6, tier_s=20e-6, lookups=WARMUP_LOOKUPS + 10 * EXPLORE_EVERY)
    late = taken[-5 * EXPLORE_EVERY:]
    assert late.count(False) == 5 and route.snapshot()["route"] == "cache"


def test_the_route_follows_a_change_in_cost():
    route = CacheRoute()
    _drive(route, cache_s=10e-6, tier_s=1e-6, lookups=WARMUP_LOOKUPS + 4 * EXPLORE_EVERY)
    assert not route.prefers_cache()
    _drive(route, cache_s=1e-6, tier_s=10e-6, lookups=20 * EXPLORE_EVERY)  # e.g. the tier became remote
    assert route.prefers_cache()


def test_bypassed_lookups_are_exact_and_counted_by_the_tier(tmp_path: Path):
    rows, dim = 5000, 8
    keys = np.arange(rows, dtype=np.int64)
    vectors = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    write_sparse_model(tmp_path / "t0", keys, vectors)
    config = {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 1},
              "models": [{"model": "m", "sparse_files": [str(tmp_path / "t0")], "embedding_vecsize_per_table": [dim],
                          "maxnum_catfeature_query_per_table_per_sample": [1], "default_value_for_each_table": [0.0],
                          "deployed_device_list": [0], "max_batch_size": 512, "gpucacheper": 0.1,
                          "hit_rate_threshold": 0.0}]}  # the cache path would answer misses with the default
    with hps.HPS(config, show_progress=False) as ps:
        replica = ps._models["m"].replica(0, 0)
        assert replica.route is not None
        replica.route.cache_s_per_key, replica.route.tier_s_per_key = 1.0, 1e-9  # the tiers are far cheaper
        replica.route._lookups = EXPLORE_EVERY  # the next EXPLORE_EVERY - 1 lookups take the preferred route
        rng = np.random.default_rng(1)
        for _ in range(EXPLORE_EVERY - 2):
            query = rng.integers(0, rows, size=512)
            np.testing.assert_array_equal(ps.lookup(query, "m", 0), vectors[query])
        hits = ps.stats()["models"]["m"]["sparse_embedding0"]["hits"]
        assert hits["cache"] == 0 and hits["default"] == 0 and hits["volatile"] == 512 * (EXPLORE_EVERY - 2)
