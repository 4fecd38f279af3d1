"""`hps.inference` against HugeCTR's `hugectr.inference` API (hps_wrapper.hpp, inference_utils.hpp):
enum value names, defaults, keyword names and positional order, errors that name the argument, the
two `HPS` constructors giving identical vectors, and `lookup_fromdlpack` used the way
`test/inference/hps/hpsdlpack.py` and `notebooks/hps_demo.ipynb` use it: the caller makes DLPack
capsules of its own tensors, passes them, then reads its tensors (or `from_dlpack(capsule)`) back.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from hps.config import ConfigWarning
from hps.errors import ConfigError, HpsError, KeyInputError, UnknownModelError
from hps.inference import (HPS, DatabaseOverflowPolicy_t, DatabaseType_t, EmbeddingCacheType_t, InferenceParams,
                           ParameterServerConfig, PersistentDatabaseParams, UpdateSourceParams, UpdateSourceType_t,
                           VolatileDatabaseParams)
from hps.model_format import write_sparse_model

MODEL = "hps_demo"
DIMS = [16, 32]  # hps_demo.ipynb: two tables of dims 16 and 32, two keys per sample each
ROWS = 400
BATCH = 64


@pytest.fixture(scope="module")
def sparse_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hps_demo")
    rng = np.random.default_rng(11)
    tables = []
    for t, dim in enumerate(DIMS):
        keys = (t * 10_000 + rng.permutation(ROWS)).astype(np.int64)
        vectors = rng.standard_normal((ROWS, dim)).astype(np.float32)
        path = root / f"hps_demo{t}_sparse_1000.model"
        write_sparse_model(path, keys, vectors)
        tables.append({"path": str(path), "keys": keys, "vectors": vectors})
    return tables


def demo_params(sparse_files, **overrides) -> InferenceParams:
    """hps_demo.ipynb's InferenceParams."""
    kwargs = dict(model_name=MODEL, max_batchsize=BATCH, hit_rate_threshold=1.0, dense_model_file="",
                  sparse_model_files=[t["path"] for t in sparse_files], deployed_devices=[0],
                  use_gpu_embedding_cache=True, cache_size_percentage=0.5, i64_input_key=True)
    kwargs.update(overrides)
    return InferenceParams(**kwargs)


def demo_config(sparse_files, params=None, **kwargs) -> ParameterServerConfig:
    """hps_demo.ipynb's ParameterServerConfig."""
    return ParameterServerConfig(
        emb_table_name={MODEL: ["sparse_embedding1", "sparse_embedding2"]},
        embedding_vec_size={MODEL: DIMS},
        max_feature_num_per_sample_per_emb_table={MODEL: [2, 2]},
        inference_params_array=[params or demo_params(sparse_files)], **kwargs)


@pytest.fixture(scope="module")
def hps(sparse_files):
    with HPS(demo_config(sparse_files), show_progress=False) as ps:
        yield ps


# ------------------------------------------------------------------------------------------- enums
def test_enum_value_names_are_hugectrs():
    assert [m.name for m in DatabaseType_t] == ["disabled", "hash_map", "parallel_hash_map",
                                                "multi_process_hash_map", "redis_cluster", "rocks_db"]
    assert [m.name for m in DatabaseOverflowPolicy_t] == ["evict_random", "evict_least_used", "evict_oldest"]
    assert [m.name for m in UpdateSourceType_t] == ["null", "kafka_message_queue"]
    assert {m.name for m in EmbeddingCacheType_t} == {"Dynamic", "UVM", "Static", "stochastic"}
    assert int(DatabaseType_t.rocks_db) == 5 and int(EmbeddingCacheType_t.UVM) == 2  # C++ enum order
    assert str(DatabaseType_t.hash_map) == "DatabaseType_t.hash_map"
    import hps.inference as inference

    assert inference.Dynamic is EmbeddingCacheType_t.Dynamic  # pybind's export_values()


def test_enums_take_hugectrs_config_strings():
    assert DatabaseType_t("redis") is DatabaseType_t.redis_cluster
    assert DatabaseType_t("RocksDB") is DatabaseType_t.rocks_db
    assert DatabaseType_t("none") is DatabaseType_t.disabled
    assert DatabaseOverflowPolicy_t("oldest") is DatabaseOverflowPolicy_t.evict_oldest
    assert UpdateSourceType_t("kafka") is UpdateSourceType_t.kafka_message_queue
    assert EmbeddingCacheType_t("uvm") is EmbeddingCacheType_t.UVM
    with pytest.raises(ConfigError, match="DatabaseType_t: unknown value 'memcached'"):
        DatabaseType_t("memcached")


# ------------------------------------------------------------------------------------------- defaults
def test_volatile_database_params_defaults():
    p = VolatileDatabaseParams()
    assert p.type is DatabaseType_t.parallel_hash_map  # the Python default (JSON's is disabled)
    assert (p.address, p.user_name, p.password) == ("127.0.0.1:7000", "default", "")
    assert 1 <= p.num_partitions <= 16
    assert (p.allocation_rate, p.shared_memory_size) == (256 * 2**20, 16 * 2**30)
    assert (p.shared_memory_name, p.shared_memory_auto_remove) == ("hctr_mp_hash_map_database", True)
    assert (p.num_node_connections, p.max_batch_size, p.enable_tls) == (5, 65536, False)
    assert (p.tls_ca_certificate, p.tls_client_certificate, p.tls_client_key,
            p.tls_server_name_identification) == ("cacertbundle.crt", "client_cert.pem", "client_key.pem",
                                                  "redis.localhost")
    assert (p.overflow_margin, p.overflow_policy, p.overflow_resolution_target) == (
        2**64 - 1, DatabaseOverflowPolicy_t.evict_random, 0.8)
    assert (p.initialize_after_startup, p.initial_cache_rate, p.cache_missed_embeddings) == (True, 1.0, False)
    assert p.update_filters == ["^hps_.+$"]


def test_persistent_and_update_source_defaults():
    p = PersistentDatabaseParams()
    assert p.backend is DatabaseType_t.disabled and p.type is DatabaseType_t.disabled
    assert p.path.endswith("rocksdb")
    assert (p.num_threads, p.read_only, p.max_batch_size, p.initialize_after_startup, p.update_filters) == (
        16, False, 65536, True, ["^hps_.+$"])
    u = UpdateSourceParams()
    assert (u.type, u.brokers, u.metadata_refresh_interval_ms, u.receive_buffer_size, u.poll_timeout_ms,
            u.max_batch_size, u.failure_backoff_ms, u.max_commit_interval) == (
        UpdateSourceType_t.null, "127.0.0.1:9092", 30_000, 262_144, 500, 8192, 50, 32)


def test_inference_params_defaults_and_required_arguments(sparse_files):
    p = demo_params(sparse_files)
    assert (p.device_id, p.number_of_worker_buffers_in_pool, p.number_of_refresh_buffers_in_pool,
            p.thread_pool_size, p.cache_refresh_percentage_per_iteration) == (0, 2, 1, 16, 0.0)
    assert (p.default_value_for_each_table, p.maxnum_catfeature_query_per_table_per_sample,
            p.embedding_vecsize_per_table, p.embedding_table_names) == ([0.0], [26], [128], [""])
    assert p.embedding_cache_type is EmbeddingCacheType_t.Dynamic
    assert (p.use_context_stream, p.fuse_embedding_table, p.use_hctr_cache_implementation, p.init_ec,
            p.enable_pagelock, p.fp8_quant, p.use_static_table) == (True, False, True, True, False, False, False)
    assert p.volatile_db == VolatileDatabaseParams() and p.persistent_db == PersistentDatabaseParams()
    for required in ("model_name", "max_batchsize", "hit_rate_threshold", "dense_model_file", "sparse_model_files",
                     "use_gpu_embedding_cache", "cache_size_percentage", "i64_input_key"):
        kwargs = dict(model_name=MODEL, max_batchsize=8, hit_rate_threshold=1.0, dense_model_file="",
                      sparse_model_files=["x"], use_gpu_embedding_cache=True, cache_size_percentage=0.5,
                      i64_input_key=True)
        del kwargs[required]
        with pytest.raises(ConfigError, match=f"required argument '{required}'"):
            InferenceParams(**kwargs)


# ------------------------------------------------------------------------------------------- keywords, positions
def test_positional_order_and_keywords_follow_pybind():
    v = VolatileDatabaseParams(DatabaseType_t.redis_cluster, "10.0.0.1:7000,10.0.0.2:7000", num_partitions=15,
                               num_node_connections=5)
    assert v.type is DatabaseType_t.redis_cluster and v.address.startswith("10.0.0.1")
    p = PersistentDatabaseParams(backend=DatabaseType_t.rocks_db, path="/data/rocksdb", read_only=True)
    assert p.type is DatabaseType_t.rocks_db and p.read_only
    assert PersistentDatabaseParams(type="rocksdb").backend is DatabaseType_t.rocks_db  # the docs' spelling
    i = InferenceParams("m", 8, 0.9, "", ["a", "b"], 0, False, 0.2, True)  # pybind's positional order
    assert (i.model_name, i.max_batchsize, i.sparse_model_files, i.use_gpu_embedding_cache,
            i.cache_size_percentage, i.i64_input_key) == ("m", 8, ["a", "b"], False, 0.2, True)
    # the docs' attribute style: params.type = hugectr.DatabaseType_t.<value>
    v.type = DatabaseType_t.hash_map
    p.type = DatabaseType_t.disabled
    assert v.type is DatabaseType_t.hash_map and p.backend is DatabaseType_t.disabled
    with pytest.warns(ConfigWarning, match="'algorithm' is ignored"):
        legacy = VolatileDatabaseParams("hash_map", algorithm="phm", max_get_batch_size=1000)
    assert legacy.max_batch_size == 1000


@pytest.mark.parametrize("make,match", [
    (lambda: VolatileDatabaseParams(num_partitions="8"), r"VolatileDatabaseParams.num_partitions: expected an integer"),
    (lambda: VolatileDatabaseParams(num_partitions=-1), r"VolatileDatabaseParams.num_partitions: expected a non-neg"),
    (lambda: VolatileDatabaseParams(enable_tls="true"), r"VolatileDatabaseParams.enable_tls: expected True or False"),
    (lambda: VolatileDatabaseParams(DatabaseType_t.rocks_db), r"VolatileDatabaseParams.type: DatabaseType_t.rocks_db"
                                                              r" is not allowed"),
    (lambda: VolatileDatabaseParams("memcached"), r"VolatileDatabaseParams.type: DatabaseType_t: unknown value"),
    (lambda: VolatileDatabaseParams(2), r"VolatileDatabaseParams.type: expected DatabaseType_t"),
    (lambda: VolatileDatabaseParams(overflow_policy="lru"), r"VolatileDatabaseParams.overflow_policy: "
                                                            r"DatabaseOverflowPolicy_t: unknown value 'lru'"),
    (lambda: VolatileDatabaseParams(update_filters=".+"), r"VolatileDatabaseParams.update_filters: expected a list"),
    (lambda: VolatileDatabaseParams(adress="x"), r"VolatileDatabaseParams: unknown keyword argument 'adress'"),
    (lambda: PersistentDatabaseParams(backend=DatabaseType_t.hash_map), r"PersistentDatabaseParams.backend"),
    (lambda: PersistentDatabaseParams(path=3), r"PersistentDatabaseParams.path: expected a path"),
    (lambda: UpdateSourceParams(type="zeromq"), r"UpdateSourceParams.type: UpdateSourceType_t: unknown value"),
    (lambda: InferenceParams("m", 8.0, 1.0, "", ["a"], 0, True, 0.5, True), r"InferenceParams.max_batchsize"),
    (lambda: InferenceParams("m", 8, 1.0, "", "a", 0, True, 0.5, True), r"InferenceParams.sparse_model_files"),
    (lambda: InferenceParams("m", 8, 1.0, "", ["a"], 0, True, 0.5, True, embedding_cache_type="lru"),
     r"InferenceParams.embedding_cache_type: EmbeddingCacheType_t: unknown value 'lru'"),
    (lambda: InferenceParams("m", 8, 1.0, "", ["a"], 0, True, 0.5, True, deployed_devices=[0, "1"]),
     r"InferenceParams.deployed_devices\[1\]: expected an integer"),
    (lambda: ParameterServerConfig({"m": ["t"]}, {"m": [8]}, {"m": [1]}, ["not params"]),
     r"ParameterServerConfig.inference_params_array\[0\]: expected InferenceParams"),
    (lambda: ParameterServerConfig({"m": "t"}, {"m": [8]}, {"m": [1]}, []),
     r"ParameterServerConfig.emb_table_name\['m'\]: expected a list"),
])
def test_wrong_types_and_unknown_names_raise_config_errors_naming_the_argument(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_attribute_assignment_is_checked_too():
    v = VolatileDatabaseParams()
    with pytest.raises(ConfigError, match="VolatileDatabaseParams.max_batch_size: expected an integer"):
        v.max_batch_size = "big"
    with pytest.raises(ConfigError, match="has no argument 'max_batchsize'"):
        v.max_batchsize = 3


# ------------------------------------------------------------------------------------------- the ps.json built
def test_to_dict_is_the_ps_json_hugectr_would_parse(sparse_files, tmp_path):
    config = demo_config(
        sparse_files, params=demo_params(sparse_files, default_value_for_each_table=[1.5],
                                         embedding_cache_type="uvm", number_of_worker_buffers_in_pool=4),
        volatile_db=VolatileDatabaseParams(DatabaseType_t.redis_cluster, address="h:7000", num_partitions=5),
        persistent_db=PersistentDatabaseParams(backend=DatabaseType_t.rocks_db, path=str(tmp_path / "r")))
    d = config.to_dict()
    assert d["supportlonglong"] is True and d["fuse_embedding_table"] is False and "update_source" not in d
    assert d["volatile_db"]["type"] == "redis_cluster" and d["volatile_db"]["address"] == "h:7000"
    assert "allocation_rate" not in d["volatile_db"]  # only the keys of the chosen type
    assert d["persistent_db"] == {"type": "rocks_db", "path": str(tmp_path / "r"), "num_threads": 16,
                                  "read_only": False, "max_batch_size": 65536, "initialize_after_startup": True,
                                  "update_filters": ["^hps_.+$"]}
    (model,) = d["models"]
    assert model["embedding_table_names"] == ["sparse_embedding1", "sparse_embedding2"]
    assert model["embedding_vecsize_per_table"] == DIMS
    assert model["maxnum_catfeature_query_per_table_per_sample"] == [2, 2]
    assert model["default_value_for_each_table"] == [1.5, 1.5]  # broadcast, as HugeCTR's Python path did
    assert (model["max_batch_size"], model["gpucache"], model["gpucacheper"], model["embedding_cache_type"],
            model["num_of_worker_buffer_in_pool"], model["deployed_device_list"]) == (BATCH, True, 0.5, "uvm", 4, [0])
    json.dumps(d)  # plain JSON
    cfg = config.to_ps_config()
    assert cfg.volatile_db.num_partitions == 5 and cfg.models[0].cache_type == "uvm"


def test_config_level_errors(sparse_files):
    with pytest.raises(ConfigError, match=r"embedding_vec_size: expected one entry for each model .*'hps_demo'"):
        ParameterServerConfig({MODEL: ["a", "b"]}, {"other": DIMS}, {MODEL: [2, 2]},
                              [demo_params(sparse_files)]).to_dict()
    mixed = ParameterServerConfig({MODEL: ["a", "b"], "m2": ["a", "b"]}, {MODEL: DIMS, "m2": DIMS},
                                  {MODEL: [2, 2], "m2": [2, 2]},
                                  [demo_params(sparse_files), demo_params(sparse_files, model_name="m2",
                                                                          i64_input_key=False)])
    with pytest.raises(ConfigError, match="i64_input_key differs between models"):
        mixed.to_dict()
    # a range error found by the ps.json parser names the Python argument as well as the JSON key
    with pytest.raises(ConfigError, match=r"InferenceParams\(model_name='hps_demo'\).max_batchsize "
                                          r"\(ps.json models\[0\].max_batch_size\)"):
        demo_config(sparse_files, params=demo_params(sparse_files, max_batchsize=0)).to_ps_config()
    with pytest.raises(ConfigError, match=r"ParameterServerConfig.embedding_vec_size\['hps_demo'\]"):
        ParameterServerConfig({MODEL: ["a", "b"]}, {MODEL: [16]}, {MODEL: [2, 2]},
                              [demo_params(sparse_files)]).to_ps_config()
    with pytest.raises(ConfigError, match="HPS: ps_config must be a ParameterServerConfig or a ps.json path"):
        HPS(42)
    with pytest.raises(ConfigError, match="exactly one of"):
        HPS()


def test_maps_win_over_inference_params_lists_with_a_warning(sparse_files):
    params = demo_params(sparse_files, embedding_vecsize_per_table=[8, 8])
    with pytest.warns(ConfigWarning, match=r"\[8, 8\] differs from ParameterServerConfig's \[16, 32\]"):
        d = demo_config(sparse_files, params=params).to_dict()
    assert d["models"][0]["embedding_vecsize_per_table"] == DIMS


# ------------------------------------------------------------------------------------------- HPS
def test_json_file_and_parameter_server_config_give_identical_vectors(sparse_files, hps, tmp_path):
    """HPS(ParameterServerConfig) vs HPS("ps.json") written in HugeCTR's JSON names by hand."""
    ps_json = {"supportlonglong": True,
               "volatile_db": {"type": "parallel_hash_map"},
               "models": [{"model": MODEL, "sparse_files": [t["path"] for t in sparse_files],
                           "embedding_table_names": ["sparse_embedding1", "sparse_embedding2"],
                           "embedding_vecsize_per_table": DIMS,
                           "maxnum_catfeature_query_per_table_per_sample": [2, 2],
                           "default_value_for_each_table": [0.0, 0.0], "deployed_device_list": [0],
                           "max_batch_size": BATCH, "hit_rate_threshold": 1.0, "gpucacheper": 0.5,
                           "gpucache": True}]}
    path = tmp_path / "hps_demo.json"
    path.write_text(json.dumps(ps_json))
    unknown = np.array([-5, 99_999], dtype=np.int64)
    for make in (lambda: HPS(str(path), show_progress=False),
                 lambda: HPS(hps_json_config_file=path, show_progress=False)):
        with make() as from_json:
            for t, table in enumerate(sparse_files):
                keys = np.concatenate([table["keys"][:2 * BATCH - 2], unknown])
                a, b = hps.lookup(keys, MODEL, t), from_json.lookup(keys, MODEL, t)
                assert a.shape == (len(keys), DIMS[t]) and a.dtype == np.float32
                np.testing.assert_array_equal(a, b)
                np.testing.assert_array_equal(a[:-2], table["vectors"][:2 * BATCH - 2])
                assert (a[-2:] == 0.0).all()


def test_lookup_returns_numpy_for_lists_arrays_and_tensors(sparse_files, hps):
    torch = pytest.importorskip("torch")
    keys = sparse_files[0]["keys"][:5]
    expected = sparse_files[0]["vectors"][:5]
    for given in (keys.tolist(), keys, keys.astype(np.int32), torch.from_numpy(keys)):
        got = hps.lookup(given, MODEL, 0)
        assert isinstance(got, np.ndarray) and got.shape == (5, 16) and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(UnknownModelError):
        hps.lookup(keys, "wdl", 0)
    with pytest.raises(KeyInputError, match="exceed max_batch_size"):
        hps.lookup(np.zeros(2 * BATCH + 1, dtype=np.int64), MODEL, 0)


def test_legacy_dense_fields_are_accepted_and_ignored(sparse_files):
    params = demo_params(sparse_files, device_id=0, use_mixed_precision=True, scaler=128.0,
                         use_algorithm_search=False, use_cuda_graph=False, non_trainable_params_file="nt.json",
                         network_file="wdl.json", maxnum_des_feature_per_sample=13, label_dim=1, slot_num=28,
                         dense_model_file="wdl_dense_2000.model")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        config = demo_config(sparse_files, params=params)
        with HPS(config, show_progress=False) as ps:
            np.testing.assert_array_equal(ps.lookup(sparse_files[1]["keys"][:7], MODEL, 1),
                                          sparse_files[1]["vectors"][:7])


# ------------------------------------------------------------------------------------------- lookup_fromdlpack
def test_torch_capsules_round_trip_as_in_hpsdlpack(sparse_files, hps):
    """hpsdlpack.py step 4: to_dlpack(key), to_dlpack(out), lookup_fromdlpack, then from_dlpack(out_capsule).
    Failed before: HPS consumed the capsules, so the caller's from_dlpack raised "DLTensor capsules can be
    consumed only once"."""
    torch = pytest.importorskip("torch")
    from torch.utils import dlpack

    table = sparse_files[1]
    key = torch.tensor(table["keys"][:26], dtype=torch.int64)
    out = torch.empty((1, 26 * 32), dtype=torch.float32)
    key_capsule, out_capsule = dlpack.to_dlpack(key), dlpack.to_dlpack(out)
    hps.lookup_fromdlpack(key_capsule, out_capsule, MODEL, 1)
    out_put = dlpack.from_dlpack(out_capsule)
    np.testing.assert_array_equal(out_put.numpy(), table["vectors"][:26].reshape(1, -1))
    np.testing.assert_array_equal(out.numpy(), table["vectors"][:26].reshape(1, -1))  # the caller's own tensor
    np.testing.assert_array_equal(dlpack.from_dlpack(key_capsule).numpy(), table["keys"][:26])  # unconsumed too
    with pytest.raises(KeyInputError, match="out: this DLPack capsule was already consumed"):
        hps.lookup_fromdlpack(dlpack.to_dlpack(key), out_capsule, MODEL, 1)


def test_numpy_capsules_and_objects_with_dlpack(sparse_files, hps):
    """numpy's own capsules (`ndarray.__dlpack__()`), numpy arrays, and torch's versioned (DLPack 1.x)
    capsules; keys of any shape and strides, int32 keys; the tail of a larger out is left alone."""
    torch = pytest.importorskip("torch")
    table = sparse_files[0]
    keys = table["keys"][:12].copy()
    out = np.full((20, 16), 7.0, dtype=np.float32)
    hps.lookup_fromdlpack(keys.reshape(3, 4).__dlpack__(), out.__dlpack__(), MODEL, 0)
    np.testing.assert_array_equal(out[:12], table["vectors"][:12])
    assert (out[12:] == 7.0).all()

    out2 = np.zeros(12 * 16, dtype=np.float32)
    hps.lookup_fromdlpack(keys.astype(np.int32), out2, MODEL, 0)  # plain arrays (objects with __dlpack__)
    np.testing.assert_array_equal(out2.reshape(12, 16), table["vectors"][:12])

    strided = torch.from_numpy(table["keys"][:24].copy())[::2]  # a DLTensor with strides
    out3 = torch.zeros(12, 16)
    hps.lookup_fromdlpack(strided.__dlpack__(max_version=(1, 0)), out3.__dlpack__(max_version=(1, 0)), MODEL, 0)
    np.testing.assert_array_equal(out3.numpy(), table["vectors"][:24:2])


def test_bad_out_raises_and_writes_nothing(sparse_files, hps):
    torch = pytest.importorskip("torch")
    keys = torch.from_numpy(sparse_files[0]["keys"][:4].copy())
    cases = [(torch.zeros(10), "at least 64 elements"), (torch.zeros(64, dtype=torch.float64), "float32"),
             (torch.zeros(16, 8).t(), "C-contiguous")]
    for out, match in cases:
        with pytest.raises(KeyInputError, match=match):
            hps.lookup_fromdlpack(torch.utils.dlpack.to_dlpack(keys), torch.utils.dlpack.to_dlpack(out), MODEL, 0)
        assert (out == 0).all()
    read_only = np.zeros(64, dtype=np.float32)
    read_only.flags.writeable = False
    with pytest.raises(KeyInputError, match="read-only"):
        hps.lookup_fromdlpack(keys, read_only, MODEL, 0)
    with pytest.raises(KeyInputError, match="keys: expected a DLPack capsule or an object with __dlpack__"):
        hps.lookup_fromdlpack(object(), np.zeros(64, np.float32), MODEL, 0)
    with pytest.raises(KeyInputError, match="keys must be int64 or int32"):
        hps.lookup_fromdlpack(torch.utils.dlpack.to_dlpack(torch.zeros(4)), np.zeros(64, np.float32), MODEL, 0)
    with pytest.raises(HpsError, match="DLPack dtype bfloat16"):
        hps.lookup_fromdlpack(torch.utils.dlpack.to_dlpack(torch.zeros(4, dtype=torch.bfloat16)),
                              np.zeros(64, np.float32), MODEL, 0)


def test_tensorflow_cpu_capsules_round_trip_as_in_hps_demo(sparse_files, hps):
    """hps_demo.ipynb section 2.3: tf.experimental.dlpack capsules of a TF key tensor and a tf.zeros out;
    from_dlpack(out_dlcapsule) afterwards holds the vectors."""
    tf = pytest.importorskip("tensorflow")
    table = sparse_files[1]
    with tf.device("/CPU:0"):
        key_tensor = tf.constant(table["keys"][:4], dtype=tf.int64)
        out_tensor = tf.zeros([1, 4 * 32], dtype=tf.float32)
        key_capsule = tf.experimental.dlpack.to_dlpack(key_tensor)
        out_dlcapsule = tf.experimental.dlpack.to_dlpack(out_tensor)
    hps.lookup_fromdlpack(key_capsule, out_dlcapsule, MODEL, 1)
    out = tf.experimental.dlpack.from_dlpack(out_dlcapsule)
    np.testing.assert_array_equal(out.numpy(), table["vectors"][:4].reshape(1, -1))


def test_cuda_capsules(sparse_files, hps):
    """hpsdlpack.py's GPU half: CUDA keys and a CUDA out (and CPU keys with a CUDA out, as hps_demo.ipynb)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from torch.utils import dlpack

    table = sparse_files[1]
    for key_device in ("cuda:0", "cpu"):
        key = torch.tensor(table["keys"][:26], dtype=torch.int64, device=key_device)
        out = torch.empty((1, 26 * 32), dtype=torch.float32, device="cuda:0")
        out_capsule = dlpack.to_dlpack(out)
        hps.lookup_fromdlpack(dlpack.to_dlpack(key), out_capsule, MODEL, 1)
        out_put = dlpack.from_dlpack(out_capsule)
        assert out_put.device.type == "cuda"
        np.testing.assert_array_equal(out_put.cpu().numpy(), table["vectors"][:26].reshape(1, -1))


def test_inference_params_databases_are_replaced_by_the_config_ones_with_a_warning(sparse_files):
    """As in HugeCTR, ParameterServerConfig's volatile_db (default: parallel_hash_map) is the one used."""
    params = demo_params(sparse_files, volatile_db=VolatileDatabaseParams(DatabaseType_t.redis_cluster))
    with pytest.warns(ConfigWarning, match=r"\.volatile_db is replaced by ParameterServerConfig.volatile_db"):
        d = demo_config(sparse_files, params=params).to_dict()
    assert d["volatile_db"]["type"] == "parallel_hash_map"


# ------------------------------------------------------------------------------------------- the capsule reader
TORCH_DTYPES = ["int64", "int32", "int16", "uint8", "int8", "float32", "float64", "float16", "bool"]


def test_capsule_views_match_the_tensor_and_write_through():
    """Property: for torch tensors of any dtype, rank and slicing (strides), the view of their capsule
    (legacy or versioned) reads the same values and writes into the same memory; the capsule stays
    usable for the caller's from_dlpack."""
    torch = pytest.importorskip("torch")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from hps.dlpack import view

    @settings(max_examples=60, deadline=None)
    @given(dtype=st.sampled_from(TORCH_DTYPES), shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
           steps=st.lists(st.integers(1, 3), min_size=3, max_size=3), transpose=st.booleans(),
           versioned=st.booleans(), seed=st.integers(0, 2**16))
    def check(dtype, shape, steps, transpose, versioned, seed):
        gen = torch.Generator().manual_seed(seed)
        base = (torch.rand([s * 3 for s in shape], generator=gen) * 100).to(getattr(torch, dtype))
        t = base[tuple(slice(None, None, steps[i]) for i in range(len(shape)))]
        if transpose and t.dim() > 1:
            t = t.transpose(0, t.dim() - 1)
        capsule = t.__dlpack__(max_version=(1, 0)) if versioned else torch.utils.dlpack.to_dlpack(t)
        v = view(capsule, "x")
        assert isinstance(v, np.ndarray) and v.shape == tuple(t.shape)
        np.testing.assert_array_equal(v, t.numpy())
        v[...] = v[...] if dtype == "bool" else 7
        if dtype != "bool":
            assert (t == 7).all()  # the writes landed in the tensor's own memory
        if not versioned:
            assert torch.utils.dlpack.from_dlpack(capsule).shape == t.shape  # still the caller's to consume

    check()
