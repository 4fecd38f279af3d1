"""HugeCTR-documented ps.json quirks parse (and serve): legacy batch keys, zero refresher buffers,
keys given twice in one object, keys of another volatile_db type, and keys hps does not act on."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import hps
from hps.config import ConfigWarning, load_config, parse_config
from hps.config.inert import NOT_ACTED_ON
from hps.config.schema import HashMapConfig, ModelConfig, PsConfig, RedisClusterConfig, RocksDBConfig
from hps.errors import ConfigError
from hps.model_format import write_sparse_model


def model(**overrides):
    entry = {"model": "wdl", "sparse_files": ["/m/t0"], "embedding_vecsize_per_table": [4],
             "maxnum_catfeature_query_per_table_per_sample": [2], "default_value_for_each_table": [0.0],
             "deployed_device_list": [0]}
    entry.update(overrides)
    return entry


def quiet_parse(raw):
    """parse_config, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return parse_config(raw)


# -- legacy max_get_batch_size / max_set_batch_size ------------------------------------------------

@pytest.mark.parametrize("section", ["volatile_db", "persistent_db"])
def test_legacy_get_and_set_batch_sizes_together_are_accepted(section, tmp_path):
    kind = "hash_map" if section == "volatile_db" else "rocks_db"
    extra = {"path": str(tmp_path / "db")} if section == "persistent_db" else {}
    same = quiet_parse({section: {"type": kind, "max_get_batch_size": 100000, "max_set_batch_size": 100000,
                                  **extra}, "models": [model()]})
    assert getattr(same, section).max_batch_size == 100000
    with pytest.warns(ConfigWarning, match=rf"{section}\.max_batch_size: given as max_get_batch_size=5000, "
                                           r"max_set_batch_size=300; the smaller is used: 300"):
        cfg = parse_config({section: {"type": kind, "max_get_batch_size": 5000, "max_set_batch_size": 300, **extra},
                            "models": [model()]})
    assert getattr(cfg, section).max_batch_size == 300


def test_current_batch_key_wins_over_legacy_ones():
    with pytest.warns(ConfigWarning, match=r"max_batch_size wins: 7"):
        cfg = parse_config({"volatile_db": {"type": "redis", "max_batch_size": 7, "max_get_batch_size": 9},
                            "models": [model()]})
    assert cfg.volatile_db.max_batch_size == 7
    # still an error for names that are not HugeCTR's legacy pair (our own Python-API aliases)
    with pytest.raises(ConfigError, match="given twice"):
        parse_config({"models": [model(max_batchsize=8, max_batch_size=9)]})
    # each legacy value is still checked
    with pytest.raises(ConfigError, match=r"volatile_db\.max_set_batch_size: expected an integer"):
        parse_config({"volatile_db": {"type": "hash_map", "max_get_batch_size": 9, "max_set_batch_size": "9"},
                      "models": [model()]})


# -- num_of_refresher_buffer_in_pool: 0 -------------------------------------------------------------

def test_zero_refresher_buffers_are_accepted():
    cfg = quiet_parse({"models": [model(num_of_refresher_buffer_in_pool=0)]})
    assert cfg.models[0].num_of_refresher_buffer_in_pool == 0
    with pytest.raises(ConfigError, match="below the minimum 0"):
        parse_config({"models": [model(num_of_refresher_buffer_in_pool=-1)]})


# -- a key given twice in one JSON object -----------------------------------------------------------

def test_duplicate_json_key_last_wins_with_a_warning_naming_the_path(tmp_path):
    text = ('{"supportlonglong": true, "models": [{"model": "hps_test", "sparse_files": ["/m/t0"], '
            '"num_of_refresher_buffer_in_pool": 1, "embedding_vecsize_per_table": [32], '
            '"num_of_refresher_buffer_in_pool": 0, "maxnum_catfeature_query_per_table_per_sample": [1], '
            '"deployed_device_list": [0], "default_value_for_each_table": [0.0]}], "supportlonglong": false}')
    path = tmp_path / "ps.json"
    path.write_text(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(path)
    messages = [str(w.message) for w in caught]
    assert all(issubclass(w.category, ConfigWarning) for w in caught)
    assert any("ps.json: models[0].num_of_refresher_buffer_in_pool: key given twice" in m for m in messages)
    assert any("ps.json: supportlonglong: key given twice" in m for m in messages)
    assert cfg.models[0].num_of_refresher_buffer_in_pool == 0 and cfg.supportlonglong is False


# -- keys of another volatile_db type (HugeCTR reads them whatever the type) -------------------------

def test_keys_of_the_other_volatile_type_are_checked_then_ignored():
    # HugeCTR's docs show hash_map's allocation/shared-memory keys inside a redis_cluster section,
    # its Triton sample a user_name inside a hash_map section: defaults, so no warning
    cfg = quiet_parse({"volatile_db": {"type": "redis_cluster", "allocation_rate": 268435456,
                                       "shared_memory_size": 17179869184, "shared_memory_auto_remove": True},
                       "models": [model()]})
    assert isinstance(cfg.volatile_db, RedisClusterConfig)
    cfg = quiet_parse({"volatile_db": {"type": "hash_map", "user_name": "default"}, "models": [model()]})
    assert isinstance(cfg.volatile_db, HashMapConfig)
    with pytest.warns(ConfigWarning, match=r"volatile_db\.address: applies to volatile_db\.type redis_cluster, "
                                           r"not hash_map; ignored"):
        parse_config({"volatile_db": {"type": "hash_map", "address": "10.0.0.1:7000"}, "models": [model()]})
    with pytest.raises(ConfigError, match=r"volatile_db\.allocation_rate: expected an integer"):
        parse_config({"volatile_db": {"type": "redis", "allocation_rate": "big"}, "models": [model()]})


# -- keys hps reads but does not act on ---------------------------------------------------------------

@pytest.mark.parametrize("raw,key", [
    ({"models": [model(use_hctr_cache_implementation=False)]}, r"models\[0\]\.use_hctr_cache_implementation"),
    ({"models": [model(use_context_stream=False)]}, r"models\[0\]\.use_context_stream"),
    ({"volatile_db": {"type": "hash_map", "initial_cache_rate": 0.5}, "models": [model()]},
     r"volatile_db\.initial_cache_rate"),
    ({"volatile_db": {"type": "hash_map", "shared_memory_name": "x"}, "models": [model()]},
     r"volatile_db\.shared_memory_name"),
])
def test_keys_not_acted_on_warn_by_name_when_not_default(raw, key):
    with pytest.warns(ConfigWarning, match=key + r": .* is read but not acted on by hps: "):
        parse_config(raw)


def test_keys_not_acted_on_are_silent_at_their_defaults():
    quiet_parse({"fuse_embedding_table": False, "volatile_db": {"type": "hash_map", "initial_cache_rate": 1.0},
                 "models": [model(fp8_quant=False, fuse_embedding_table=True, use_hctr_cache_implementation=True,
                                  use_context_stream=True, num_of_worker_buffer_in_pool=4, dense_file="x",
                                  network_file="y", label_dim=1, slot_num=10)]})


def test_not_acted_on_table_names_real_keys():
    sections = {"": PsConfig, "models[]": ModelConfig, "volatile_db": HashMapConfig,
                "persistent_db": RocksDBConfig}
    for entry in NOT_ACTED_ON:
        section, _, key = entry.rpartition(".")
        cls = sections[section]
        if section == "volatile_db" and key not in {f for f in HashMapConfig.__dataclass_fields__}:
            cls = RedisClusterConfig
        names = {f.metadata.get("json") or f.name for f in cls.__dataclass_fields__.values()}
        assert key in names, entry


def test_keys_hps_acts_on_are_not_in_the_table():
    # read by the GPU cache / refresher / Redis backend: these must never be listed as inert
    for key in ("models[].enable_pagelock", "models[].init_ec", "models[].thread_pool_size",
                "volatile_db.num_node_connections", "models[].refresh_interval"):
        assert key not in NOT_ACTED_ON


# -- and they serve -----------------------------------------------------------------------------------

def test_hugectr_pytorch_sample_shape_serves(tmp_path):
    """The PyTorch Triton sample's ps.json (duplicate key, refresher pool 0, no supportlonglong) with
    the Triton deployment sample's legacy volatile_db keys: it loads and answers lookups."""
    keys = np.arange(100, dtype=np.int64)
    vectors = np.arange(100 * 32, dtype=np.float32).reshape(100, 32)
    write_sparse_model(tmp_path / "hps_sparse.model", keys, vectors)
    text = """{
      "volatile_db": {"type": "hash_map", "user_name": "default", "num_partitions": 8,
                      "max_get_batch_size": 100000, "max_set_batch_size": 100000,
                      "overflow_policy": "evict_oldest", "overflow_margin": 10000000,
                      "overflow_resolution_target": 0.8, "initial_cache_rate": 1.0},
      "persistent_db": {"type": "disabled"},
      "models": [{
        "model": "hps_test", "sparse_files": ["hps_sparse.model"], "num_of_worker_buffer_in_pool": 3,
        "embedding_table_names": ["0"], "num_of_refresher_buffer_in_pool": 1,
        "embedding_vecsize_per_table": [32], "num_of_refresher_buffer_in_pool": 0,
        "maxnum_catfeature_query_per_table_per_sample": [1], "deployed_device_list": [0],
        "max_batch_size": 32, "default_value_for_each_table": [0.0],
        "cache_refresh_percentage_per_iteration": 0, "hit_rate_threshold": 1.1,
        "gpucacheper": 1.0, "gpucache": true}]}"""
    (tmp_path / "ps.json").write_text(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ps = hps.HPS(str(tmp_path / "ps.json"), show_progress=False)
    try:
        config_warnings = [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]
        assert config_warnings == [f"{tmp_path / 'ps.json'}: models[0].num_of_refresher_buffer_in_pool: key "
                                   "given twice in one JSON object; the last value is used (as in HugeCTR)"]
        out = np.asarray(ps.lookup(np.array([3, 99, 1000], dtype=np.int64), "hps_test", 0))
        np.testing.assert_array_equal(out[:2], vectors[[3, 99]])
        np.testing.assert_array_equal(out[2], np.zeros(32, np.float32))
    finally:
        ps.close()
    assert json.loads(json.dumps(ps.config.to_dict()))["volatile_db"]["max_batch_size"] == 100000
