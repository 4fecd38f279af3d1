"""ps.json parsing: HugeCTR keys, aliases and defaults; errors name the JSON path."""

from __future__ import annotations

import json
import os

import pytest

from hps.config import (ConfigWarning, HashMapConfig, KafkaConfig, PsConfig, RedisClusterConfig, RocksDBConfig,
                        load_config, parse_config)
from hps.config.schema import UINT64_MAX
from hps.errors import ConfigError, UnknownModelError


def model(**overrides):
    entry = {"model": "wdl", "sparse_files": ["/m/t0", "/m/t1"], "embedding_vecsize_per_table": [1, 16],
             "maxnum_catfeature_query_per_table_per_sample": [2, 26], "default_value_for_each_table": [0.5],
             "deployed_device_list": [0]}
    entry.update(overrides)
    return entry


def test_minimal_config_gets_hugectr_defaults():
    cfg = parse_config({"models": [model()]})
    m = cfg.models[0]
    assert cfg.supportlonglong is True and cfg.volatile_db is None and cfg.persistent_db is None
    assert cfg.update_source is None and cfg.fuse_embedding_table is False
    assert (m.max_batch_size, m.num_of_worker_buffer_in_pool, m.gpucacheper, m.hit_rate_threshold) == (64, 1, 0.2, 0.9)
    assert (m.gpucache, m.embedding_cache_type, m.cache_refresh_percentage_per_iteration) == (True, "dynamic", 0.0)
    assert m.embedding_table_names == ("sparse_embedding0", "sparse_embedding1")
    assert m.default_value_for_each_table == (0.5, 0.0)  # padded with 0.0
    t1 = m.table(1)
    assert (t1.name, t1.dim, t1.maxnum_keys_per_sample, t1.tag) == ("sparse_embedding1", 16, 26,
                                                                   "hps_et.wdl.sparse_embedding1")
    assert m.max_keys_per_call(1) == 64 * 26


def test_full_reference_example_parses():
    raw = {"supportlonglong": True,
           "volatile_db": {"type": "hash_map", "num_partitions": 8, "overflow_margin": 10000000,
                           "overflow_policy": "evict_random", "overflow_resolution_target": 0.8,
                           "max_batch_size": 100000, "update_filters": [".+"]},
           "persistent_db": {"type": "rocks_db", "path": "/tmp/rocksdb", "num_threads": 16, "read_only": False},
           "update_source": {"type": "kafka_message_queue", "brokers": "127.0.0.1:9092"},
           "models": [model(embedding_table_names=["table1", "table2"], max_batch_size=1024,
                            num_of_worker_buffer_in_pool=3, num_of_refresher_buffer_in_pool=1,
                            hit_rate_threshold=0.9, gpucacheper=0.5, cache_refresh_percentage_per_iteration=0.2,
                            embedding_cache_type="dynamic", use_context_stream=True)]}
    cfg = parse_config(raw)
    assert isinstance(cfg.volatile_db, HashMapConfig) and cfg.volatile_db.num_partitions == 8
    assert cfg.volatile_db.overflow_target_rows == 8000000 and cfg.volatile_db.update_filters == (".+",)
    assert isinstance(cfg.persistent_db, RocksDBConfig) and cfg.persistent_db.path == "/tmp/rocksdb"
    assert isinstance(cfg.update_source, KafkaConfig) and cfg.update_source.poll_timeout_ms == 500
    assert cfg.models[0].table(1).tag == "hps_et.wdl.table2"


@pytest.mark.parametrize("alias,canonical", [("hashmap", "hash_map"), ("parallel_hash_map", "parallel_hash_map"),
                                             ("parallel_map", "parallel_hash_map"), ("redis", "redis_cluster"),
                                             ("REDIS_CLUSTER", "redis_cluster")])
def test_volatile_type_aliases(alias, canonical):
    cfg = parse_config({"volatile_db": {"type": alias}, "models": [model()]})
    assert cfg.volatile_db.type == canonical
    assert isinstance(cfg.volatile_db, RedisClusterConfig if canonical == "redis_cluster" else HashMapConfig)


def test_volatile_without_type_is_disabled_and_disabled_aliases():
    assert parse_config({"volatile_db": {}, "models": [model()]}).volatile_db is None
    for off in ("disabled", "disable", "none"):
        assert parse_config({"volatile_db": {"type": off}, "models": [model()]}).volatile_db is None
    assert parse_config({"persistent_db": {"type": "rocksdb"}, "models": [model()]}).persistent_db.type == "rocks_db"
    assert parse_config({"update_source": {"type": "kafka"}, "models": [model()]}).update_source is not None
    assert parse_config({"update_source": {"type": "null"}, "models": [model()]}).update_source is None


def test_volatile_defaults_and_legacy_aliases():
    cfg = parse_config({"volatile_db": {"type": "redis_cluster", "max_get_batch_size": 1000,
                                        "overflow_policy": "least_used", "address": "10.0.0.1:7000;10.0.0.2:7001"},
                        "models": [model()]})
    v = cfg.volatile_db
    assert v.max_batch_size == 1000 and v.overflow_policy == "evict_least_used"
    assert v.overflow_margin == UINT64_MAX and v.user_name == "default" and v.num_node_connections == 5
    assert v.nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert v.update_filters == ("^hps_.+$",)


def test_python_api_aliases_and_static_forcing():
    cfg = parse_config({"i64_input_key": False,
                        "models": [model(max_batchsize=32, use_gpu_embedding_cache=False, cache_size_percentage=0.7,
                                         use_static_table=True)]})
    m = cfg.models[0]
    assert cfg.supportlonglong is False and cfg.key_dtype == "uint32"
    assert (m.max_batch_size, m.gpucache, m.gpucacheper, m.cache_type) == (32, False, 0.7, "static")


def test_stochastic_falls_back_to_dynamic_with_a_warning():
    with pytest.warns(ConfigWarning, match="stochastic"):
        cfg = parse_config({"models": [model(embedding_cache_type="stochastic")]})
    assert cfg.models[0].embedding_cache_type == "dynamic"


def test_unknown_keys_warn_with_their_path():
    with pytest.warns(ConfigWarning, match=r"models\[0\]\.colour: unknown key"):
        parse_config({"models": [model(colour="blue")]})
    with pytest.warns(ConfigWarning, match=r"volatile_db\.speed"):
        parse_config({"volatile_db": {"type": "hash_map", "speed": 1}, "models": [model()]})


@pytest.mark.parametrize("overrides,message", [
    ({"embedding_vecsize_per_table": [16]}, r"models\[0\]\.embedding_vecsize_per_table: 1 entry for 2 tables"),
    ({"maxnum_catfeature_query_per_table_per_sample": [1, 2, 3]},
     r"maxnum_catfeature_query_per_table_per_sample: 3 entries for 2 tables"),
    ({"embedding_table_names": ["a"]}, r"embedding_table_names: 1 entry for 2 tables"),
    ({"default_value_for_each_table": [1, 2, 3]}, r"default_value_for_each_table: 3 entries for 2 tables"),
    ({"gpucache": "true"}, r"models\[0\]\.gpucache: expected true or false, got str 'true'"),
    ({"max_batch_size": "8"}, r"models\[0\]\.max_batch_size: expected an integer, got str '8'"),
    ({"max_batch_size": 0}, r"max_batch_size: 0 is below the minimum 1"),
    ({"gpucacheper": 1.5}, r"gpucacheper: 1.5 is outside \[0, 1\]"),
    ({"embedding_cache_type": "fast"}, r"embedding_cache_type: unknown value 'fast'"),
    ({"model": "bad name!"}, r"models\[0\]\.model: 'bad name!' is not a valid model name"),
    ({"deployed_device_list": []}, r"deployed_device_list: expected at least one device id"),
    ({"sparse_files": "/m/t0"}, r"sparse_files: expected a list"),
    ({"embedding_vecsize_per_table": [16, "8"]}, r"embedding_vecsize_per_table\[1\]: expected an integer"),
    ({"max_batchsize": 8, "max_batch_size": 8}, r"max_batch_size: given twice"),
])
def test_bad_values_name_the_json_path(overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"models": [model(**overrides)]})


@pytest.mark.parametrize("raw,message", [
    ({"models": []}, r"models: expected a non-empty list"),
    ({}, r"models: expected a non-empty list"),
    ({"models": [model()], "volatile_db": {"type": "memcached"}}, r"volatile_db\.type: unknown value 'memcached'"),
    ({"models": [model()], "volatile_db": {"type": "hash_map", "overflow_resolution_target": 1.0}},
     r"volatile_db\.overflow_resolution_target: 1.0 must be strictly between 0 and 1"),
    ({"models": [model()], "volatile_db": {"type": "hash_map", "overflow_policy": "lifo"}},
     r"volatile_db\.overflow_policy: unknown value 'lifo'"),
    ({"models": [model()], "supportlonglong": "true"}, r"supportlonglong: expected true or false"),
    ({"models": [model(), model()]}, r"duplicate model name"),
    ({"models": [{"model": "m"}]}, r"models\[0\]\.sparse_files: required key is missing"),
])
def test_bad_top_level_values(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_round_trip_through_to_dict():
    cfg = parse_config({"volatile_db": {"type": "redis", "num_partitions": 3},
                        "persistent_db": {"type": "rocks_db", "path": "/x"},
                        "update_source": {"type": "kafka_mq", "brokers": "b:1"},
                        "models": [model(gpucacheper=1.0)]})
    assert parse_config(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_load_from_file_resolves_relative_paths(tmp_path):
    path = tmp_path / "ps.json"
    path.write_text(json.dumps({"persistent_db": {"type": "rocks_db", "path": "db"},
                                "models": [model(sparse_files=["t0", "/abs/t1"])]}))
    cfg = load_config(path)
    assert cfg.models[0].sparse_files == (os.path.join(str(tmp_path), "t0"), "/abs/t1")
    assert cfg.persistent_db.path == os.path.join(str(tmp_path), "db")
    assert load_config(cfg) is cfg


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.json"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"models\": [}")
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON at line 1"):
        load_config(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"models": [model(gpucacheper="half")]}))
    with pytest.raises(ConfigError, match=r"wrong.json: models\[0\]\.gpucacheper"):
        load_config(wrong)


def test_model_and_table_lookup_errors():
    cfg = parse_config({"models": [model()]})
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        cfg.model("nope")
    with pytest.raises(UnknownModelError, match=r"table_id 2 out of range \[0, 2\)"):
        cfg.model("wdl").table(2)
    assert isinstance(cfg, PsConfig) and cfg.models[0].num_tables == 2
