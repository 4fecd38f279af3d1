"""A Redis master stops during a stream of lookups: HPS answers from RocksDB, counts it, and recovers."""

from __future__ import annotations

import time

import numpy as np
import pytest

import hps
from hps.model_format import write_sparse_model
from tests.redis_cluster_fixture import redis_cluster, redis_server_available

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.mark.skipif(not redis_server_available(), reason="redis-server is not on PATH")
def test_lookups_survive_a_stopped_master_and_recover(tmp_path):
    pytest.importorskip("redis")
    keys = np.arange(2000, dtype=np.int64)
    vectors = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    write_sparse_model(tmp_path / "t0", keys, vectors)
    with redis_cluster(3) as cluster:
        config = {"supportlonglong": True,
                  "volatile_db": {"type": "redis_cluster", "address": cluster.address, "num_partitions": 6},
                  "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rocksdb")},
                  "models": [{"model": "m", "sparse_files": [str(tmp_path / "t0")], "embedding_vecsize_per_table": [8],
                              "maxnum_catfeature_query_per_table_per_sample": [1], "default_value_for_each_table": [0.0],
                              "deployed_device_list": [0], "max_batch_size": 2000, "gpucache": False}]}
        with hps.HPS(config, show_progress=False) as ps:
            rng = np.random.default_rng(1)

            def lookup_ok() -> None:
                query = rng.choice(keys, 256)
                np.testing.assert_array_equal(ps.lookup(query, "m", 0), vectors[query])

            def stats() -> dict:
                return ps.stats()["models"]["m"]["sparse_embedding0"]

            for _ in range(5):
                lookup_ok()
            assert stats()["volatile_errors"] == 0 and stats()["hits"]["volatile"] == 5 * 256
            cluster.kill(1)
            for _ in range(5):  # every answer still exact, served by RocksDB
                lookup_ok()
            assert stats()["volatile_errors"] >= 1 and stats()["hits"]["persistent"] >= 256
            cluster.restart(1)
            cluster.wait_ok()
            deadline = time.monotonic() + 30
            errors = stats()["volatile_errors"]
            while True:  # back to the volatile tier once the master serves again
                lookup_ok()
                if stats()["volatile_errors"] == errors:
                    break
                errors = stats()["volatile_errors"]
                assert time.monotonic() < deadline, "the volatile tier never recovered"
                time.sleep(0.2)
            before = stats()["hits"]
            lookup_ok()
            after = stats()["hits"]
            # the restarted master came back empty (no persistence in the test cluster): its keys are
            # volatile misses now, answered by RocksDB; the other masters' keys are volatile hits again
            assert after["volatile"] > before["volatile"] and stats()["volatile_errors"] == errors
            assert (after["volatile"] - before["volatile"]) + (after["persistent"] - before["persistent"]) == 256
