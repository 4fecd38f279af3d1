"""HugeCTR's table fusion, as its users turn it on: the ps.json of hps_table_fusion_demo (hps_tf) and
hps_torch_demo (8 / 3 tables of one dim, table i holding keys i*VOCAB .. (i+1)*VOCAB-1, one default
value for all, `fuse_embedding_table: true` at the top), looked up per table as their LookupLayers do
and all at once with `HPS.lookup_many`; stored under HugeCTR's `fused_embedding<N>` names in RocksDB
(kept over a restart, updates included); updates published to the original tables' Kafka topics
reach the fused table. Vectors are compared exactly with rows read straight from the sparse files.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

import hps
from hps.model_format import write_sparse_model
from tests.compat.file_rows import rows_from_files
from tests.kafka_fixture import kafka_brokers  # noqa: F401  (fixture)

NUM_TABLES = 8
VOCAB_SIZE = 500
EMB_VEC_SIZE = 16
NUM_QUERY_KEY = 26
MAX_BATCH_SIZE = 16
MODEL = f"{NUM_TABLES}_table"
HAVE_ROCKSDB = importlib.util.find_spec("rocksdict") is not None


def write_demo(directory: Path, fuse: bool = True, **extra) -> str:
    """hps_table_fusion_demo's files and ps.json (its create_model_for_table_fusion.py with our sizes)."""
    rng = np.random.default_rng(21)
    files = []
    for i in range(NUM_TABLES):
        keys = np.arange(i * VOCAB_SIZE, (i + 1) * VOCAB_SIZE, dtype=np.int64)
        rng.shuffle(keys)
        files.append(str(directory / "embeddings" / f"table{i}"))
        write_sparse_model(files[-1], keys, rng.standard_normal((VOCAB_SIZE, EMB_VEC_SIZE)).astype(np.float32))
    config = {
        "supportlonglong": False,
        "fuse_embedding_table": fuse,
        "models": [{
            "model": MODEL, "sparse_files": files, "num_of_worker_buffer_in_pool": NUM_TABLES,
            "embedding_table_names": [f"table{i}" for i in range(NUM_TABLES)],
            "embedding_vecsize_per_table": [EMB_VEC_SIZE] * NUM_TABLES,
            "maxnum_catfeature_query_per_table_per_sample": [NUM_QUERY_KEY] * NUM_TABLES,
            "default_value_for_each_table": [0.0], "deployed_device_list": [0], "max_batch_size": MAX_BATCH_SIZE,
            "cache_refresh_percentage_per_iteration": 1.0, "hit_rate_threshold": 1.0, "gpucacheper": 1.0,
            "gpucache": True, "embedding_cache_type": "dynamic", "use_context_stream": True,
        }],
        **extra,
    }
    path = directory / f"{NUM_TABLES}_table.json"
    path.write_text(json.dumps(config))
    return str(path)


def from_files(ps_json: str, table_id: int, keys: np.ndarray) -> np.ndarray:
    """keys (...) → (..., EMB_VEC_SIZE) float32 from the table's own files; 0.0 for absent keys."""
    return rows_from_files(ps_json, table_id, keys, EMB_VEC_SIZE, 0.0)


def demo_inputs(seed: int) -> list[np.ndarray]:
    """The notebook's inputs: per table (MAX_BATCH_SIZE, NUM_QUERY_KEY) int32 keys of its own range, plus
    a few past it that no table holds."""
    rng = np.random.default_rng(seed)
    return [rng.integers(i * VOCAB_SIZE, (i + 1) * VOCAB_SIZE, (MAX_BATCH_SIZE, NUM_QUERY_KEY)).astype(np.int32)
            if i else np.where(rng.random((MAX_BATCH_SIZE, NUM_QUERY_KEY)) < 0.9,
                               rng.integers(0, VOCAB_SIZE, (MAX_BATCH_SIZE, NUM_QUERY_KEY)),
                               NUM_TABLES * VOCAB_SIZE + 7).astype(np.int32)
            for i in range(NUM_TABLES)]


def test_fusion_demo_config_per_table_and_in_one_call(tmp_path):
    ps_json = write_demo(tmp_path)
    with hps.HPS(ps_json, show_progress=False) as ps:
        assert ps.volatile.tables() == ["hps_et.8_table.fused_embedding0"]  # HugeCTR's name: one dim, one table
        for seed in range(3):
            inputs = demo_inputs(seed)
            per_table = [ps.lookup(keys, MODEL, i) for i, keys in enumerate(inputs)]  # what each LookupLayer calls
            together = ps.lookup_many(inputs, MODEL, list(range(NUM_TABLES)))
            for i, keys in enumerate(inputs):
                np.testing.assert_array_equal(per_table[i], from_files(ps_json, i, keys))
                np.testing.assert_array_equal(together[i], per_table[i])
        fused_keys = ps.stats()["models"][MODEL]["fused_embedding0"]["keys"]
        assert fused_keys == 3 * NUM_TABLES * MAX_BATCH_SIZE * NUM_QUERY_KEY


def test_torch_fork_wait_fusion_model_on_a_fused_config(tmp_path):
    """hps_torch_demo: one hps.torch.LookupLayer per table, forked and waited, on a fused ps.json."""
    torch = pytest.importorskip("torch")
    hps_torch = pytest.importorskip("hps.torch")
    ps_json = write_demo(tmp_path)

    class FusedModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([hps_torch.LookupLayer(ps_json, MODEL, i, EMB_VEC_SIZE)
                                               for i in range(NUM_TABLES)])

        def forward(self, keys_list: torch.Tensor) -> torch.Tensor:
            futures = [torch.jit.fork(layer, keys_list[i]) for i, layer in enumerate(self.layers)]
            return torch.cat([torch.jit.wait(f) for f in futures])

    model = FusedModel()
    inputs = demo_inputs(5)
    out = model(torch.from_numpy(np.stack(inputs)))
    want = np.concatenate([from_files(ps_json, i, keys) for i, keys in enumerate(inputs)])
    np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.skipif(not HAVE_ROCKSDB, reason="needs rocksdict")
def test_rocksdb_holds_fused_tables_and_keeps_updates_over_a_restart(tmp_path):
    ps_json = write_demo(tmp_path, persistent_db={"type": "rocks_db", "path": str(tmp_path / "rocksdb")})
    keys = np.array([3, VOCAB_SIZE + 4, 10**6], np.int64)  # table1's own keys, then one new key
    new = np.full((3, EMB_VEC_SIZE), 2.5, np.float32)
    with hps.HPS(ps_json, show_progress=False) as ps:
        assert "hps_et.8_table.fused_embedding0" in ps.persistent.tables()
        assert not any(t.startswith("hps_et.8_table.table") for t in ps.persistent.tables())
        ps.apply_update("hps_et.8_table.table1", keys[1:], new[1:], tier="persistent")
        ps.apply_update("hps_et.8_table.table0", keys[:1], new[:1], tier="persistent")
    with hps.HPS(ps_json, show_progress=False) as ps:  # same files: RocksDB kept, updates restored into the cache
        np.testing.assert_array_equal(ps.lookup(keys[1:], MODEL, 1), new[1:])
        np.testing.assert_array_equal(ps.lookup_many([keys[:1], keys[1:2]], MODEL, [0, 1])[0], new[:1])
        untouched = np.array([5, VOCAB_SIZE + 5], np.int64)
        np.testing.assert_array_equal(ps.lookup(untouched[1:], MODEL, 1), from_files(ps_json, 1, untouched[1:]))


@pytest.mark.kafka
def test_updates_published_to_the_original_topics_reach_the_fused_table(tmp_path, kafka_brokers, monkeypatch):
    pytest.importorskip("confluent_kafka")
    from hps.update.publisher import KafkaPublisher
    from tests.kafka_fixture import TEST_CONSUMER_CONFIG

    monkeypatch.setenv("HPS_KAFKA_CONSUMER_CONFIG", json.dumps(TEST_CONSUMER_CONFIG))
    ps_json = write_demo(tmp_path, supportlonglong=True,  # the publisher writes int64 keys
                         volatile_db={"type": "hash_map", "num_partitions": 2, "update_filters": [".+"]},
                         update_source={"type": "kafka_message_queue", "brokers": kafka_brokers,
                                        "poll_timeout_ms": 20, "failure_backoff_ms": 20})
    keys = np.array([3 * VOCAB_SIZE + 1, 3 * VOCAB_SIZE + 2], np.int64)
    new = np.full((2, EMB_VEC_SIZE), -4.0, np.float32)
    with hps.HPS(ps_json, show_progress=False) as ps:
        np.testing.assert_array_equal(ps.lookup(keys, MODEL, 3), from_files(ps_json, 3, keys))  # cached
        with KafkaPublisher(kafka_brokers) as pub:
            pub.publish(MODEL, "table3", keys, new)  # topic hps_et.8_table.table3, as a trainer publishes
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not np.array_equal(ps.lookup(keys, MODEL, 3), new):
            time.sleep(0.02)
        np.testing.assert_array_equal(ps.lookup(keys, MODEL, 3), new)
        np.testing.assert_array_equal(ps.lookup_many([keys, keys[:1] - VOCAB_SIZE], MODEL, [3, 2])[0], new)
        assert ps.volatile.find("hps_et.8_table.fused_embedding0", keys)[1].all()
