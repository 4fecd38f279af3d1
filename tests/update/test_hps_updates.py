"""End to end: KafkaPublisher → tansu → the update sources of a real `hps.HPS` → HPS.lookup (cache included)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.kafka_fixture import TEST_CONSUMER_CONFIG, kafka_brokers  # noqa: F401  (fixture)

pytestmark = pytest.mark.kafka
pytest.importorskip("confluent_kafka")

MODEL, TABLE, DIM, ROWS = "upd", "emb", 8, 2000
ROOT = Path(__file__).resolve().parents[2]
HAVE_ROCKSDB = importlib.util.find_spec("hps.storage.rocksdb") is not None


def _write_model(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    from hps.model_format import write_sparse_model

    keys = np.arange(ROWS, dtype=np.int64) * 7 + 1
    vectors = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)
    path = tmp_path / "emb.model"
    write_sparse_model(path, keys, vectors)
    return path, keys, vectors


def _ps_config(tmp_path: Path, sparse: Path, brokers: str, name: str = "a") -> dict:
    config = {
        "supportlonglong": True,
        "volatile_db": {"type": "hash_map", "num_partitions": 2, "update_filters": [".+"]},
        "update_source": {"type": "kafka_message_queue", "brokers": brokers, "poll_timeout_ms": 20,
                          "max_batch_size": 8192, "failure_backoff_ms": 20, "max_commit_interval": 32},
        "models": [{
            "model": MODEL, "sparse_files": [str(sparse)], "embedding_table_names": [TABLE],
            "embedding_vecsize_per_table": [DIM], "maxnum_catfeature_query_per_table_per_sample": [1],
            "default_value_for_each_table": [0.0], "deployed_device_list": [0], "max_batch_size": 4096,
            "gpucacheper": 0.5, "gpucache": True, "hit_rate_threshold": 1.0,
        }],
    }
    if HAVE_ROCKSDB:
        config["persistent_db"] = {"type": "rocks_db", "path": str(tmp_path / f"rocksdb-{name}"),
                                   "update_filters": [".+"]}
    return config


@pytest.fixture
def consumer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPS_KAFKA_CONSUMER_CONFIG", json.dumps(TEST_CONSUMER_CONFIG))


def _wait_equal(ps, keys: np.ndarray, expected: np.ndarray, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if np.array_equal(ps.lookup(keys, MODEL, 0), expected):
            return True
        time.sleep(0.02)
    return False


def test_hps_sees_published_updates_in_lookup(kafka_brokers: str, tmp_path: Path, consumer_env: None) -> None:
    import hps
    from hps.update.publisher import KafkaPublisher

    sparse, keys, vectors = _write_model(tmp_path)
    with hps.HPS(_ps_config(tmp_path, sparse, kafka_brokers), show_progress=False) as ps:
        tiers = {s.name.split(":")[0]: s.group_id for s in ps.update_sources}
        assert tiers["volatile"].startswith("hps.volatile.")
        if HAVE_ROCKSDB:
            assert tiers["persistent"].startswith("hps.persistent.")
        sample = keys[::5]
        np.testing.assert_array_equal(ps.lookup(sample, MODEL, 0), vectors[::5])  # now in the cache
        new = vectors[::5] * -3.0 + 1.0
        fresh_keys = np.array([10**9, 10**9 + 1], np.int64)             # keys the model never had
        fresh = np.full((2, DIM), 0.5, np.float32)
        with KafkaPublisher(kafka_brokers) as pub:
            pub.publish(MODEL, TABLE, np.concatenate([sample, fresh_keys]), np.concatenate([new, fresh]))
        assert _wait_equal(ps, sample, new), "cached rows were not updated"
        assert _wait_equal(ps, fresh_keys, fresh)
        assert np.array_equal(ps.volatile.find(f"hps_et.{MODEL}.{TABLE}", sample)[0], new)
        untouched = keys[1::5]
        np.testing.assert_array_equal(ps.lookup(untouched, MODEL, 0), vectors[1::5])


def _run_two_processes(tmp_path: Path, brokers: str, configs: dict[str, dict], sample: np.ndarray,
                       new: np.ndarray) -> list[list[str]]:
    """Start one HPS process per config (HPS_HOSTNAME = its name), publish once, both must see it.
    Returns each process's consumer group ids."""
    from hps.update.publisher import KafkaPublisher

    np.save(tmp_path / "keys.npy", sample)
    np.save(tmp_path / "new.npy", new)
    procs = []
    try:
        for name, config in configs.items():
            ps_json = tmp_path / f"{name}.json"
            ps_json.write_text(json.dumps(config))
            env = dict(os.environ, HPS_HOSTNAME=name, HPS_KAFKA_CONSUMER_CONFIG=json.dumps(TEST_CONSUMER_CONFIG))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.update.consumer_proc", "hps", str(ps_json), MODEL,
                 str(tmp_path / "keys.npy"), str(tmp_path / "new.npy"), "60"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True))
        groups = []
        for p in procs:
            word, _, rest = p.stdout.readline().partition(" ")
            assert word == "ready"
            groups.append(json.loads(rest))
        with KafkaPublisher(brokers) as pub:
            pub.publish(MODEL, TABLE, sample, new)
        for p in procs:
            assert p.wait(90) == 0
        return groups
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_two_hps_processes_with_own_hash_maps_both_see_each_update(kafka_brokers: str, tmp_path: Path) -> None:
    """Two HPS processes with their own hash maps on one host: each must consume every update, so
    each gets its own per-host group through a distinct HPS_HOSTNAME (same host name → one shared
    group `hps.volatile.<hostname>` → each would see only part of the partitions)."""
    sparse, keys, vectors = _write_model(tmp_path)
    configs = {name: _ps_config(tmp_path, sparse, kafka_brokers, name) for name in ("host-a", "host-b")}
    groups = _run_two_processes(tmp_path, kafka_brokers, configs, keys[::3], vectors[::3] + 42.0)
    assert "hps.volatile.host-a" in groups[0] and "hps.volatile.host-b" in groups[1]


@pytest.mark.redis
def test_two_hps_processes_sharing_a_redis_cluster_both_see_each_update(kafka_brokers: str, tmp_path: Path) -> None:
    """Two HPS processes sharing one Redis Cluster and no persistent tier: group `hps.volatile` (one of
    them writes each update into Redis) plus one cache group per process (`hps.cache.<host>.<pid>`:
    each assigns every update into its own caches), so both lookups see every update at once."""
    from tests.redis_cluster_fixture import redis_cluster, redis_server_available

    if not redis_server_available():
        pytest.skip("redis-server is not on PATH")
    pytest.importorskip("redis")
    sparse, keys, vectors = _write_model(tmp_path)
    with redis_cluster(3) as cluster:
        configs = {}
        for name in ("host-a", "host-b"):
            config = _ps_config(tmp_path, sparse, kafka_brokers, name)
            config["volatile_db"] = {"type": "redis_cluster", "address": cluster.address, "num_partitions": 4,
                                     "update_filters": [".+"]}
            config.pop("persistent_db", None)
            configs[name] = config
        groups = _run_two_processes(tmp_path, kafka_brokers, configs, keys[::3], vectors[::3] + 42.0)
    for host, process_groups in zip(("host-a", "host-b"), groups):
        assert len(process_groups) == 2 and process_groups[1] == "hps.volatile"
        assert process_groups[0].startswith(f"hps.cache.{host}.")


def test_hps_skips_a_wrong_dim_update_and_applies_the_next(kafka_brokers: str, tmp_path: Path,
                                                           consumer_env: None) -> None:
    """A well-formed message of the wrong dim used to be retried forever, blocking every later
    update of its table (and again after a restart): now it is skipped and committed past."""
    import hps
    from hps.update.publisher import KafkaPublisher

    sparse, keys, vectors = _write_model(tmp_path)
    sample = keys[:50]
    new = vectors[:50] + 5.0
    with KafkaPublisher(kafka_brokers) as pub:   # no ps_config: nothing stops the trainer's mistake here
        pub.publish(MODEL, TABLE, sample, np.ones((50, DIM // 2), np.float32))
        pub.publish(MODEL, TABLE, sample, new)
    with hps.HPS(_ps_config(tmp_path, sparse, kafka_brokers), show_progress=False) as ps:
        assert _wait_equal(ps, sample, new, 20)
        for source in ps.update_sources:
            assert source.wait_until_idle(20)
            assert source.stats["skipped_dim_mismatch"] >= 1, source.stats
            assert source.stats["apply_failures"] == 0


def test_hps_close_is_prompt_with_a_long_poll_timeout(kafka_brokers: str, tmp_path: Path,
                                                      consumer_env: None) -> None:
    """poll_timeout_ms=60000: HPS.close() took 30 s per source and left the consumer threads running."""
    import hps

    sparse, _, _ = _write_model(tmp_path)
    config = _ps_config(tmp_path, sparse, kafka_brokers)
    config["update_source"]["poll_timeout_ms"] = 60000
    ps = hps.HPS(config, show_progress=False)
    sources = ps.update_sources
    assert sources and all(s.running for s in sources)
    time.sleep(1.0)                              # inside a poll now
    start = time.monotonic()
    ps.close()
    assert time.monotonic() - start < 5
    assert not any(s.running for s in sources)


@pytest.mark.parametrize("graceful", [True, False])
def test_a_restart_keeps_updates_held_only_in_the_hash_map(kafka_brokers: str, tmp_path: Path, consumer_env: None,
                                                          graceful: bool) -> None:
    """No persistent tier: the in-process hash map is rebuilt from the files at start, and its consumer
    group replays the topic from the start over it, so updates committed before the restart survive."""
    import hps
    from hps.update.publisher import KafkaPublisher

    sparse, keys, vectors = _write_model(tmp_path)
    config = _ps_config(tmp_path, sparse, kafka_brokers, "hm")
    config.pop("persistent_db", None)
    model = config["models"][0]["model"] = f"restart{int(graceful)}"  # a topic of its own: replayed whole
    updated = keys[:50]
    new = np.full((50, DIM), 3.5, np.float32)
    with KafkaPublisher(kafka_brokers) as publisher:
        publisher.publish(model, TABLE, updated, new)
    (tmp_path / "ps.json").write_text(json.dumps(config))
    script = (f"import time, numpy as np, hps\n"
              f"ps = hps.HPS({str(tmp_path / 'ps.json')!r}, show_progress=False)\n"
              f"keys = np.array({updated.tolist()})\n"
              f"deadline = time.monotonic() + 30\n"
              f"while not (ps.lookup(keys, {model!r}, 0) == 3.5).all() and time.monotonic() < deadline:\n"
              f"    time.sleep(0.05)\n"
              f"assert (ps.lookup(keys, {model!r}, 0) == 3.5).all()\n"
              f"time.sleep(0.5)  # past max_commit_interval / poll timeout: the offsets are committed\n"
              f"print('applied', flush=True)\n"
              + ("ps.close()\n" if graceful else "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
    run = subprocess.run([sys.executable, "-c", script], env=env, timeout=120, capture_output=True, text=True)
    assert "applied" in run.stdout, run.stderr[-2000:]
    with hps.HPS(config, show_progress=False) as ps:
        deadline = time.monotonic() + 30
        while not np.array_equal(ps.lookup(updated, model, 0), new) and time.monotonic() < deadline:
            time.sleep(0.02)
        np.testing.assert_array_equal(ps.lookup(updated, model, 0), new, "an update was reverted by the restart")
        np.testing.assert_array_equal(ps.lookup(keys[50:], model, 0), vectors[50:])
