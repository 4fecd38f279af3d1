"""Hostile ps.json input: each case is a `ConfigError` naming the file or the JSON path, nothing else."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from hps.config import load_config, parse_config
from hps.config.schema import RedisClusterConfig
from hps.errors import ConfigError


def model(**overrides):
    entry = {"model": "m", "sparse_files": ["/m/t0"], "embedding_vecsize_per_table": [4],
             "maxnum_catfeature_query_per_table_per_sample": [2], "default_value_for_each_table": [0.0],
             "deployed_device_list": [0]}
    entry.update(overrides)
    return entry


# -- the file itself ----------------------------------------------------------------------------------

def test_non_utf8_file_names_the_file_and_offset(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"models": [{"model": "caf\xe9"}]}')
    with pytest.raises(ConfigError, match=r"latin1\.json: not UTF-8 text: byte 0xe9 at offset 26 \(line 1\)"):
        load_config(path)


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"models": [model()]}).encode())
    assert load_config(path).models[0].name == "m"


def test_very_deep_json_is_a_config_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"models": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError, match=r"deep\.json: JSON nested too deeply"):
        load_config(path)


def test_random_bytes_and_directories_are_config_errors(tmp_path):
    path = tmp_path / "noise.json"
    path.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)))
    with pytest.raises(ConfigError, match=r"noise\.json"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"cannot read ps\.json"):
        load_config(tmp_path)


@pytest.mark.parametrize("name", ["ps\0.json", "ps\ud800.json"])
def test_unusable_file_names_are_config_errors(name):
    with pytest.raises(ConfigError, match="not a usable file name"):
        load_config(name)


def test_integer_with_thousands_of_digits_is_a_config_error(tmp_path):
    path = tmp_path / "long.json"
    path.write_text('{"models": [' + json.dumps(model())[:-1] + ', "max_batch_size": ' + "9" * 5000 + "}]}")
    with pytest.raises(ConfigError, match=r"long\.json: models\[0\]\.max_batch_size: inf is not a finite number"):
        load_config(path)


# -- numbers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("literal,key", [("NaN", "refresh_delay"), ("Infinity", "refresh_interval"),
                                         ("-Infinity", "hit_rate_threshold"), ("1e400", "gpucacheper")])
def test_non_finite_numbers_in_files_are_refused_with_the_json_path(tmp_path, literal, key):
    path = tmp_path / "ps.json"
    path.write_text('{"models": [' + json.dumps(model())[:-1] + f', "{key}": {literal}' + "}]}")
    with pytest.raises(ConfigError, match=rf"ps\.json: models\[0\]\.{key}: .* is not a finite number"):
        load_config(path)


@pytest.mark.parametrize("overrides,where", [
    ({"refresh_interval": math.inf}, r"models\[0\]\.refresh_interval"),
    ({"refresh_delay": math.nan}, r"models\[0\]\.refresh_delay"),
    ({"default_value_for_each_table": [0.0, math.nan]}, r"models\[0\]\.default_value_for_each_table\[1\]"),
    ({"hit_rate_threshold": np.float64("nan")}, r"models\[0\]\.hit_rate_threshold"),
])
def test_non_finite_numbers_in_dicts_are_refused(overrides, where):
    if "default_value_for_each_table" in overrides:
        overrides.update(sparse_files=["/a", "/b"], embedding_vecsize_per_table=[4, 4],
                         maxnum_catfeature_query_per_table_per_sample=[1, 1])
    with pytest.raises(ConfigError, match=where + ": nan|" + where + ": inf"):
        parse_config({"models": [model(**overrides)]})


@pytest.mark.parametrize("overrides,message", [
    ({"max_batch_size": True}, r"models\[0\]\.max_batch_size: expected an integer, got bool True"),
    ({"deployed_device_list": [False]}, r"deployed_device_list\[0\]: expected an integer, got bool"),
    ({"gpucacheper": True}, r"gpucacheper: expected a number, got bool"),
    ({"max_batch_size": [64]}, r"max_batch_size: expected an integer, got list"),
    ({"model": ["m"]}, r"models\[0\]\.model: expected a string, got list"),
    ({"sparse_files": [["/m/t0"]]}, r"sparse_files\[0\]: expected a string, got list"),
    ({"gpucache": {"on": True}}, r"gpucache: expected true or false, got dict"),
    ({"max_batch_size": 1.5}, r"max_batch_size: expected an integer, got float"),
    ({"max_batch_size": 2**40}, r"max_batch_size: 1099511627776 is above the maximum 2147483647"),
    ({"label_dim": 10**30}, r"label_dim: .* is above the maximum 9223372036854775807"),
    ({"label_dim": 10**5000}, r"label_dim: <integer of 16610 bits> is above the maximum"),
    ({"model": 10**5000}, r"models\[0\]\.model: expected a string, got int <integer of 16610 bits>"),
    ({"gpucacheper": 10**400}, r"gpucacheper: .* is beyond the float range"),
    ({"refresh_interval": 1e300}, r"refresh_interval: 1e\+300 is above the maximum"),
    ({"sparse_files": ["/m/\0t0"]}, r"sparse_files\[0\]: contains a NUL character"),
    ({"sparse_files": [""]}, r"sparse_files\[0\]: must not be empty"),
    ({"sparse_files": ["/m/\ud800"]}, r"sparse_files\[0\]: not valid Unicode"),
    ({"embedding_table_names": ["x" * 10_000]}, r"embedding_table_names\[0\]: 'x{10,}\.\.\.x*' is not a valid"),
])
def test_wrong_types_and_ranges_are_refused_with_the_json_path(overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"models": [model(**overrides)]})


def test_non_string_keys_in_dicts_are_refused():
    with pytest.raises(ConfigError, match=r"models\[0\]: keys must be strings, got 7"):
        parse_config({"models": [{**model(), 7: "x"}]})


def test_numpy_scalars_from_programs_are_accepted():
    cfg = parse_config({"models": [model(max_batch_size=np.int64(128), gpucacheper=np.float32(0.5))]})
    assert cfg.models[0].max_batch_size == 128 and type(cfg.models[0].max_batch_size) is int
    assert cfg.models[0].gpucacheper == 0.5 and type(cfg.models[0].gpucacheper) is float


# -- Redis addresses ----------------------------------------------------------------------------------

@pytest.mark.parametrize("address,message", [
    ("host:abc", r"volatile_db\.address: port 'abc' of 'host:abc' is not a number in 1\.\.65535"),
    ("10.0.0.1:7000,10.0.0.2:70000", r"port '70000' of '10\.0\.0\.2:70000' is not a number in 1\.\.65535"),
    ("h:0", r"port '0'"),
    ("h:-1", r"port '-1'"),
    (" ; , ", r"volatile_db\.address: .* names no host"),
    ("::1:7000", r"write an IPv6 host in brackets"),
    ("[::1", r"is not \[IPv6\]:port"),
    ("my host:7000", r"host 'my host' contains blanks"),
])
def test_bad_redis_addresses_fail_at_parse_time(address, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"volatile_db": {"type": "redis_cluster", "address": address}, "models": [model()]})


def test_good_redis_addresses():
    cfg = parse_config({"volatile_db": {"type": "redis", "address": "a:1; b ,[::1]:7001,:7002,c"},
                        "models": [model()]})
    assert cfg.volatile_db.nodes == [("a", 1), ("b", 7000), ("::1", 7001), ("127.0.0.1", 7002), ("c", 7000)]
    with pytest.raises(ConfigError, match=r"port 'abc'"):
        RedisClusterConfig(address="h:abc").nodes  # built in code, not parsed: still a ConfigError


# -- update_source (librdkafka settings) --------------------------------------------------------------

@pytest.mark.parametrize("key,value,message", [
    ("poll_timeout_ms", 0, "below the minimum 1"),
    ("poll_timeout_ms", -5, "below the minimum 1"),
    ("failure_backoff_ms", 0, "below the minimum 1"),
    ("metadata_refresh_interval_ms", -2, "below the minimum 10"),
    ("metadata_refresh_interval_ms", 0, "below the minimum 10"),
    ("metadata_refresh_interval_ms", 3_600_001, "above the maximum 3600000"),
    ("receive_buffer_size", 0, "below the minimum 1"),
    ("receive_buffer_size", 10**9, "above the maximum 999998976"),
    ("max_batch_size", 0, "below the minimum 1"),
    ("max_commit_interval", 2**31, "above the maximum 2147483647"),
    ("brokers", "k1:9092;k2:port", r"update_source\.brokers: port 'port'"),
    ("brokers", "", r"update_source\.brokers: '' names no host"),
])
def test_kafka_settings_out_of_range_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=rf"update_source\.{key}: .*{message}|{message}"):
        parse_config({"update_source": {"type": "kafka", key: value}, "models": [model()]})


def test_kafka_settings_in_range_are_kept():
    cfg = parse_config({"update_source": {"type": "kafka", "metadata_refresh_interval_ms": -1,
                                          "brokers": "PLAINTEXT://k1:9093,k2", "receive_buffer_size": 999_998_976},
                        "models": [model()]})
    assert cfg.update_source.metadata_refresh_interval_ms == -1
    assert cfg.update_source.broker_nodes == [("k1", 9093), ("k2", 9092)]


# -- persistent_db.path ---------------------------------------------------------------------------------

def test_persistent_path_that_is_a_file_is_refused(tmp_path):
    victim = tmp_path / "notes.txt"
    victim.write_text("precious")
    with pytest.raises(ConfigError, match=r"persistent_db\.path: .*notes\.txt' exists and is a regular file"):
        parse_config({"persistent_db": {"type": "rocks_db", "path": str(victim)}, "models": [model()]})
    assert victim.read_text() == "precious"
    path = tmp_path / "ps.json"
    path.write_text(json.dumps({"persistent_db": {"type": "rocks_db", "path": "notes.txt"}, "models": [model()]}))
    with pytest.raises(ConfigError, match=r"ps\.json: persistent_db\.path"):
        load_config(path)


@pytest.mark.parametrize("where", ["/proc/self", "/sys/kernel/db", "/proc"])
def test_persistent_path_under_proc_or_sys_is_refused(where):
    with pytest.raises(ConfigError, match=r"persistent_db\.path: .* is under /(proc|sys)"):
        parse_config({"persistent_db": {"type": "rocks_db", "path": where}, "models": [model()]})


def test_persistent_path_through_a_symlink_into_proc_is_refused(tmp_path):
    link = tmp_path / "db"
    os.symlink("/proc/self", link)
    with pytest.raises(ConfigError, match=r"is under /proc"):
        parse_config({"persistent_db": {"type": "rocks_db", "path": str(link)}, "models": [model()]})


def test_persistent_path_empty_is_refused():
    with pytest.raises(ConfigError, match=r"persistent_db\.path: must not be empty"):
        parse_config({"persistent_db": {"type": "rocks_db", "path": ""}, "models": [model()]})


def test_long_values_are_shortened_in_messages():
    with pytest.raises(ConfigError) as info:
        parse_config({"models": [model(gpucache=list(range(100_000)))]})
    assert len(str(info.value)) < 200
