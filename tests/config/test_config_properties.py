"""Property tests: whatever a ps.json holds, loading it gives a `PsConfig` or a `ConfigError`.

Mutations of a valid ps.json (keys dropped, values replaced by arbitrary JSON or Python values,
unknown keys added, the text edited byte by byte) and plain random bytes as the file; the budget
is bounded (derandomized, no example database) so the file runs in a few seconds.
"""

from __future__ import annotations

import copy
import json
import math
import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hps.config import ConfigWarning, PsConfig, load_config, parse_config
from hps.errors import ConfigError

BASE = {
    "supportlonglong": True, "fuse_embedding_table": False,
    "volatile_db": {"type": "redis_cluster", "address": "127.0.0.1:7000;127.0.0.1:7001", "password": "pw",
                    "num_partitions": 8, "max_get_batch_size": 1000, "max_set_batch_size": 1000,
                    "overflow_margin": 10000000, "overflow_policy": "evict_oldest", "overflow_resolution_target": 0.8,
                    "allocation_rate": 268435456, "update_filters": [".+"]},
    "persistent_db": {"type": "rocks_db", "path": "/nonexistent/hps-prop-db", "num_threads": 4, "read_only": True},
    "update_source": {"type": "kafka", "brokers": "127.0.0.1:9092", "poll_timeout_ms": 500,
                      "metadata_refresh_interval_ms": 30000, "receive_buffer_size": 262144},
    "models": [{"model": "wdl", "sparse_files": ["/m/t0", "/m/t1"], "embedding_table_names": ["a", "b"],
                "embedding_vecsize_per_table": [1, 16], "maxnum_catfeature_query_per_table_per_sample": [2, 26],
                "default_value_for_each_table": [0.5], "deployed_device_list": [0], "max_batch_size": 64,
                "gpucacheper": 0.5, "hit_rate_threshold": 0.9, "refresh_interval": 10, "refresh_delay": 1.5,
                "embedding_cache_type": "dynamic", "fp8_quant": False, "num_of_refresher_buffer_in_pool": 0}],
}

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

numbers = st.one_of(
    st.integers(), st.integers(min_value=-(2**80), max_value=2**80), st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([10**400, -(10**400)]),
    st.integers(4400, 5000).map(lambda n: 10**n))  # too long for Python to print
scalars = st.one_of(st.none(), st.booleans(), numbers,
                    st.text(max_size=20), st.sampled_from(["", "\0", "\ud800", "host:abc", "/proc/self", ":", "NaN"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
python_garbage = st.one_of(st.binary(max_size=8), st.complex_numbers(), st.sets(st.integers(), max_size=3),
                           st.tuples(st.integers()), st.just(object()), st.fractions(), st.decimals())


def paths(value, prefix=()):
    """Every path (tuple of keys / indices) into a JSON value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


ALL_PATHS = [p for p in paths(BASE) if p]


def apply(doc, path, action, new):
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "drop":
        del parent[last]
    elif action == "set":
        parent[last] = new
    elif action == "add" and isinstance(parent, dict):
        parent[f"extra_{len(parent)}"] = new
    elif action == "wrap":
        parent[last] = [parent[last]]


mutations = st.lists(st.tuples(st.sampled_from(ALL_PATHS), st.sampled_from(["drop", "set", "set", "add", "wrap"]),
                               json_values), min_size=1, max_size=4)


def outcome(load):
    """Run `load`; a PsConfig or a ConfigError is fine, anything else fails (other warnings too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ConfigWarning)
        try:
            cfg = load()
        except ConfigError:
            return None
    assert isinstance(cfg, PsConfig)
    for m in cfg.models:  # a config that parsed is usable: finite numbers, consistent tables
        assert all(math.isfinite(x) for x in (m.gpucacheper, m.hit_rate_threshold, m.refresh_interval,
                                              m.refresh_delay, *m.default_value_for_each_table))
        assert len(m.tables) == m.num_tables > 0
    if cfg.volatile_db is not None and cfg.volatile_db.type == "redis_cluster":
        assert cfg.volatile_db.nodes and "pw" not in repr(cfg)
    if cfg.update_source is not None:
        assert cfg.update_source.broker_nodes
    return cfg


def test_the_base_config_is_valid():
    assert outcome(lambda: parse_config(copy.deepcopy(BASE))) is not None


@SETTINGS
@given(mutations)
def test_mutated_dicts_give_a_config_or_a_config_error(edits):
    doc = copy.deepcopy(BASE)
    for path, action, new in edits:
        try:
            apply(doc, path, action, new)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier edit removed or replaced what this one points into
    outcome(lambda: parse_config(doc))


@SETTINGS
@given(st.sampled_from(ALL_PATHS), python_garbage)
def test_python_values_in_dicts_give_a_config_or_a_config_error(path, value):
    doc = copy.deepcopy(BASE)
    apply(doc, path, "set", value)
    outcome(lambda: parse_config(doc))


@SETTINGS
@given(json_values)
def test_arbitrary_json_as_the_whole_config(value):
    outcome(lambda: parse_config(value))


def test_random_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prop")
    text = json.dumps(BASE).encode()

    @SETTINGS
    @given(st.one_of(
        st.binary(max_size=200),
        st.lists(st.tuples(st.integers(0, len(text)), st.integers(0, 4), st.binary(max_size=3)), min_size=1,
                 max_size=3)))
    def check(change):
        if isinstance(change, bytes):
            data = change
        else:
            data = text
            for at, cut, insert in change:
                data = data[:at] + insert + data[at + cut:]
        path = tmp / "ps.json"
        path.write_bytes(data)
        outcome(lambda: load_config(path))

    check()
