"""Redis masters fail under a stream of HPS lookups: only the failed node's keys are affected.

A killed or stopped (hung) master's keys come from RocksDB; without a persistent tier, lookups
that need it raise an `HpsError` naming the node and the number of keys (never default vectors);
the other masters' keys are still served by Redis, at Redis speed; the backend recovers by itself.
One 3-master cluster serves the module (node timeout 60 s: the survivors never declare the
cluster down, as a cluster with `cluster-require-full-coverage no` would not); the failover test
has its own cluster with replicas.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import hps
from hps.config.schema import TableConfig
from hps.errors import BackendError, HpsError, PartialBackendError
from hps.lookup.stats import DEFAULT, PERSISTENT, VOLATILE, TableStats
from hps.lookup.tiers import TierChain
from hps.model_format import write_sparse_model
from hps.storage.partition import partition_of
from tests.redis_cluster_fixture import redis_cluster, redis_server_available

TAG = "hps_et.m.sparse_embedding0"
ROWS, DIM, PARTITIONS = 3000, 8, 6
KEYS = np.arange(ROWS, dtype=np.int64)
VECTORS = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)


def needs_redis(test):
    """Marks of the tests that start redis-server processes."""
    for mark in (pytest.mark.redis, pytest.mark.slow,
                 pytest.mark.skipif(not redis_server_available(), reason="redis-server is not on PATH")):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def sparse_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    write_sparse_model(d / "t0", KEYS, VECTORS)
    return d


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("redis")
    with redis_cluster(3, node_timeout_ms=60_000) as c:
        yield c


def _config(cluster, sparse_dir, rocksdb: bool) -> dict:
    config = {"supportlonglong": True,
              "volatile_db": {"type": "redis_cluster", "address": cluster.address, "num_partitions": PARTITIONS},
              "models": [{"model": "m", "sparse_files": [str(sparse_dir / "t0")], "embedding_vecsize_per_table": [DIM],
                          "maxnum_catfeature_query_per_table_per_sample": [1], "default_value_for_each_table": [0.0],
                          "deployed_device_list": [0], "max_batch_size": ROWS, "gpucache": False}]}
    if rocksdb:
        config["persistent_db"] = {"type": "rocks_db", "path": str(sparse_dir / f"rocksdb-{time.monotonic_ns()}")}
    return config


def _master_of(cluster, keys: np.ndarray) -> np.ndarray:
    """Index of the master holding each key (HugeCTR's partition → hash slot → master)."""
    from redis.crc import key_slot

    from hps.storage.redis_cluster import hash_key

    slots = np.array([key_slot(hash_key(TAG, p, "v")) for p in range(PARTITIONS)])
    return cluster.master_of_slot(slots[partition_of(keys, PARTITIONS)])


def _stats(ps) -> dict:
    return ps.stats()["models"]["m"]["sparse_embedding0"]


def _assert_fast(times: list[float]) -> None:
    """No lookup waited for the hung node again (its socket timeout is 2 s); loose for a loaded CI VM."""
    p50, worst = float(np.median(times)), max(times)
    assert p50 < 0.3 and worst < 1.0, f"lookups with a hung master: p50 {p50:.3f} s, max {worst:.3f} s"


@pytest.fixture
def fresh(cluster):
    """Every master running and empty before the test; restarts the ones a test killed or stopped."""
    for i in range(3):
        try:
            cluster.resume(i)
        except RuntimeError:  # killed: start it again
            cluster.restart(i)
    cluster.wait_ok()
    cluster.flushall()
    return cluster


@needs_redis
@pytest.mark.parametrize("rocksdb", [True, False], ids=["rocksdb", "no-persistent-tier"])
def test_killed_master_affects_only_its_keys(fresh, sparse_dir, rocksdb):
    cluster = fresh
    owner = _master_of(cluster, KEYS)
    dead = 1
    with hps.HPS(_config(cluster, sparse_dir, rocksdb), show_progress=False) as ps:
        np.testing.assert_array_equal(ps.lookup(KEYS, "m", 0), VECTORS)
        cluster.kill(dead)
        live = KEYS[owner != dead]
        for _ in range(3):  # the live masters' keys: exact, from Redis
            before = _stats(ps)["hits"]["volatile"]
            np.testing.assert_array_equal(ps.lookup(live, "m", 0), VECTORS[live])
            assert _stats(ps)["hits"]["volatile"] - before == live.size
        query = np.random.default_rng(1).choice(KEYS, 1000, replace=False)
        share = int((owner[query] == dead).sum())
        before = _stats(ps)
        if rocksdb:  # the dead master's share comes from RocksDB, and only that share
            for _ in range(3):
                np.testing.assert_array_equal(ps.lookup(query, "m", 0), VECTORS[query])
            after = _stats(ps)
            assert after["hits"]["persistent"] - before["hits"]["persistent"] == 3 * share
            assert after["hits"]["volatile"] - before["hits"]["volatile"] == 3 * (1000 - share)
        else:  # nothing can answer them: an error naming the node and the count, never default vectors
            for _ in range(3):
                with pytest.raises(HpsError, match=cluster.node_name(dead)) as err:
                    ps.lookup(query, "m", 0)
                assert f"{share} of 1000 keys" in str(err.value)
            after = _stats(ps)
            assert after["hits"]["default"] == before["hits"]["default"] == 0
        assert after["volatile_unavailable_keys"] - before["volatile_unavailable_keys"] == 3 * share
        cluster.restart(dead)
        cluster.wait_ok()
        deadline = time.monotonic() + 10
        back = KEYS[owner == dead][:10]
        while True:  # the backend uses the master again within retry_after_ms (it came back empty)
            before = _stats(ps)
            try:
                got = ps.lookup(back, "m", 0)
            except HpsError:
                assert not rocksdb
            after = _stats(ps)
            if after["volatile_unavailable_keys"] == before["volatile_unavailable_keys"]:
                break
            assert time.monotonic() < deadline, "the restarted master was never used again"
            time.sleep(0.1)
        # it came back empty (no persistence in the test cluster): its keys are volatile misses now,
        # answered by RocksDB, or the default value when no tier holds them (node up, key absent)
        if rocksdb:
            np.testing.assert_array_equal(got, VECTORS[back])
            assert after["hits"]["persistent"] - before["hits"]["persistent"] == 10
        else:
            assert after["hits"]["default"] - before["hits"]["default"] == 10


@needs_redis
def test_stopped_master_is_skipped_not_waited_for(fresh, sparse_dir):
    cluster = fresh
    owner = _master_of(cluster, KEYS)
    hung = 0  # the first seed node: slot-map refreshes must not ask it
    with hps.HPS(_config(cluster, sparse_dir, True), show_progress=False) as with_rocksdb, \
            hps.HPS(_config(cluster, sparse_dir, False), show_progress=False) as redis_only:
        rng = np.random.default_rng(2)
        cluster.pause(hung)
        query = rng.choice(KEYS, 1000, replace=False)
        np.testing.assert_array_equal(with_rocksdb.lookup(query, "m", 0), VECTORS[query])  # waits one timeout
        times = []
        for _ in range(20):
            query = rng.choice(KEYS, 1000, replace=False)
            t0 = time.perf_counter()
            np.testing.assert_array_equal(with_rocksdb.lookup(query, "m", 0), VECTORS[query])
            times.append(time.perf_counter() - t0)
        _assert_fast(times)
        assert _stats(with_rocksdb)["volatile_unavailable_keys"] >= 20 * 200

        live = KEYS[owner != hung]
        with pytest.raises(HpsError, match=cluster.node_name(hung)):  # waits one timeout
            redis_only.lookup(KEYS, "m", 0)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            np.testing.assert_array_equal(redis_only.lookup(live, "m", 0), VECTORS[live])
            with pytest.raises(HpsError, match=f"{int((owner == hung).sum())} of {ROWS} keys"):
                redis_only.lookup(KEYS, "m", 0)
            times.append(time.perf_counter() - t0)
        _assert_fast(times)

        cluster.resume(hung)
        deadline = time.monotonic() + 10
        while True:  # used again after retry_after_ms (1 s)
            try:
                np.testing.assert_array_equal(redis_only.lookup(KEYS, "m", 0), VECTORS)
                break
            except HpsError:
                assert time.monotonic() < deadline, "the resumed master was never used again"
                time.sleep(0.1)
        while True:  # the other HPS's backend probes the node on its own, then reads it again
            before = _stats(with_rocksdb)["hits"]
            np.testing.assert_array_equal(with_rocksdb.lookup(KEYS, "m", 0), VECTORS)
            if _stats(with_rocksdb)["hits"]["volatile"] - before["volatile"] == ROWS:
                break
            assert time.monotonic() < deadline, "the resumed master was never used again"
            time.sleep(0.1)


@needs_redis
@pytest.mark.parametrize("rocksdb", [True, False], ids=["rocksdb", "no-persistent-tier"])
def test_replica_takes_over_a_killed_master(sparse_dir, rocksdb):
    pytest.importorskip("redis")
    with redis_cluster(3, replicas=1, node_timeout_ms=1000) as cluster:
        owner = _master_of(cluster, KEYS)
        with hps.HPS(_config(cluster, sparse_dir, rocksdb), show_progress=False) as ps:
            cluster.wait_replicated()  # (asynchronous replication: rows not yet copied would be lost)
            cluster.kill(0)
            failover = ThreadPoolExecutor(1).submit(cluster.wait_failover, 0)
            outage = 0
            while not failover.done():  # during the outage: exact answers, or an error naming the node
                try:
                    np.testing.assert_array_equal(ps.lookup(KEYS, "m", 0), VECTORS)
                except HpsError as exc:
                    # the killed node, or a surviving one that answers CLUSTERDOWN until the replica is
                    # promoted (which of the two a lookup meets depends on the cluster's timing)
                    assert not rocksdb and (cluster.node_name(0) in str(exc) or "CLUSTERDOWN" in str(exc)), exc
                    outage += 1
                time.sleep(0.05)
            failover.result()
            assert rocksdb or outage
            deadline = time.monotonic() + 10
            while True:  # the promoted replica holds master 0's rows: all from Redis again
                before = _stats(ps)["hits"]
                try:
                    np.testing.assert_array_equal(ps.lookup(KEYS, "m", 0), VECTORS)
                except HpsError:
                    pass
                if _stats(ps)["hits"]["volatile"] - before["volatile"] == ROWS:
                    break
                assert time.monotonic() < deadline, \
                    f"the promoted replica was never used: hits {before} then {_stats(ps)['hits']}"
                time.sleep(0.1)
            assert _stats(ps)["hits"]["default"] == 0 and (owner == 0).any()


# -- TierChain with a partial volatile answer (no Redis needed) ---------------------------------

class _Tier:
    """A tier holding `rows`; with `down`, keys in `down` are unavailable (a `PartialBackendError`)."""

    name = "fake"
    is_shared = False

    def __init__(self, rows: dict[int, float], down: set[int] | None = None, fail: bool = False) -> None:
        self.rows, self.down, self.fail = rows, down, fail
        self.asked: list[np.ndarray] = []
        self.inserted: list[np.ndarray] = []

    def find(self, tag, keys):
        self.asked.append(keys.copy())
        if self.fail:
            raise BackendError("fake: every node is down")
        vectors = np.array([[self.rows.get(int(k), 0.0)] * 2 for k in keys], np.float32).reshape(-1, 2)
        found = np.array([int(k) in self.rows for k in keys], bool)
        if self.down:
            unavailable = np.isin(keys, list(self.down))
            found &= ~unavailable
            raise PartialBackendError(f"fake: {int(unavailable.sum())} of {len(keys)} keys not asked: node X down",
                                      vectors, found, unavailable, ("X",))
        return vectors, found

    def insert_or_assign(self, tag, keys, vectors):
        self.inserted.append(keys.copy())


def _fetch(volatile, persistent, keys, promote=False):
    table = TableConfig(model_name="m", table_id=0, name="t", sparse_file="", dim=2, maxnum_keys_per_sample=1,
                        default_value=-1.0)
    stats = TableStats()
    with ThreadPoolExecutor(1) as pool:
        out = TierChain(volatile, persistent, promote, pool).fetch(table, np.asarray(keys, np.int64), stats)
    return out, stats


def test_tier_chain_sends_only_unavailable_and_missing_keys_on():
    volatile = _Tier({1: 1.0, 2: 2.0, 3: 3.0}, down={3, 4})  # 3 and 4 live on a down node
    persistent = _Tier({3: 30.0, 4: 40.0, 5: 50.0})
    (vectors, source), stats = _fetch(volatile, persistent, [1, 2, 3, 4, 5, 6], promote=True)
    assert persistent.asked[0].tolist() == [3, 4, 5, 6]  # the misses and the unavailable keys
    assert vectors[:, 0].tolist() == [1.0, 2.0, 30.0, 40.0, 50.0, -1.0]  # 6 is absent everywhere
    assert source.tolist() == [VOLATILE, VOLATILE, PERSISTENT, PERSISTENT, PERSISTENT, DEFAULT]
    snap = stats.snapshot()
    assert snap["volatile_unavailable_keys"] == 2 and snap["volatile_errors"] == 1
    assert [k.tolist() for k in volatile.inserted] == [[5]]  # never promoted onto the down node


def test_tier_chain_raises_for_unavailable_keys_nothing_else_holds():
    volatile = _Tier({1: 1.0, 3: 3.0}, down={3, 4})
    with pytest.raises(BackendError, match=r"2 of 5 keys.*node X"):
        _fetch(volatile, None, [1, 2, 3, 4, 5])  # no persistent tier
    with pytest.raises(BackendError, match=r"1 of 5 keys.*node X"):
        _fetch(volatile, _Tier({3: 30.0}), [1, 2, 3, 4, 5])  # RocksDB lacks key 4
    with pytest.raises(BackendError, match=r"3 of 3 keys.*every node is down"):
        _fetch(_Tier({}, fail=True), None, [1, 2, 3])  # a whole failure is no different
    (vectors, source), stats = _fetch(_Tier({}, fail=True), _Tier({1: 10.0, 2: 20.0, 3: 30.0}), [1, 2, 3])
    assert vectors[:, 0].tolist() == [10.0, 20.0, 30.0] and stats.snapshot()["volatile_unavailable_keys"] == 3
    (vectors, source), _ = _fetch(_Tier({1: 1.0}), None, [1, 2])  # absent keys (node up): the default value
    assert vectors[:, 0].tolist() == [1.0, -1.0] and source.tolist() == [VOLATILE, DEFAULT]
