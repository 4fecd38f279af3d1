"""Every ps.json shape that HugeCTR's HPS documentation and samples show parses without error.

The configs below are re-typed from HugeCTR (last tree with HPS, 24.06/24.09) and from
triton-inference-server/hugectr_backend (23.09): same keys, nesting and values, as test data.
Where a sample is not valid JSON as printed (`// comments`, `...` elisions, a `"key" = value`
typo, values computed in Python) the JSON it stands for is written out. Warnings are allowed
only where listed: keys hps reads but does not act on, a key given twice, a typo'd section name.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest

from hps.config import ConfigWarning, HashMapConfig, KafkaConfig, RedisClusterConfig, RocksDBConfig, load_config


def _model(name, tables, dims, maxnum, **extra):
    entry = {"model": name, "sparse_files": [f"{name}_sparse_{i}.model" for i in range(tables)],
             "num_of_worker_buffer_in_pool": 3,
             "embedding_table_names": [f"sparse_embedding{i}" for i in range(tables)],
             "embedding_vecsize_per_table": dims, "maxnum_catfeature_query_per_table_per_sample": maxnum,
             "default_value_for_each_table": [1.0] * tables, "deployed_device_list": [0],
             "max_batch_size": 1024, "cache_refresh_percentage_per_iteration": 0.2,
             "hit_rate_threshold": 1.0, "gpucacheper": 1.0, "gpucache": True}
    entry.update(extra)
    return entry


WDL_MODEL = {  # hps_database_backend.md "Inference Parameters and Embedding Cache Configuration"
    "model": "wdl",
    "sparse_files": ["/wdl_infer/model/wdl/1/wdl0_sparse_20000.model",
                     "/wdl_infer/model/wdl/1/wdl1_sparse_20000.model"],
    "dense_file": "/wdl_infer/model/wdl/1/wdl_dense_20000.model",
    "network_file": "/wdl_infer/model/wdl/1/wdl.json",
    "num_of_worker_buffer_in_pool": 4, "num_of_refresher_buffer_in_pool": 1, "deployed_device_list": [0],
    "max_batch_size": 64, "default_value_for_each_table": [0.0, 0.0], "maxnum_des_feature_per_sample": 26,
    "maxnum_catfeature_query_per_table_per_sample": [2, 26], "embedding_vecsize_per_table": [1, 15],
    "embedding_table_names": ["table1", "table2"], "refresh_delay": 0, "refresh_interval": 0,
    "hit_rate_threshold": 0.9, "gpucacheper": 0.1, "embedding_cache_type": "dynamic", "gpucache": True,
    "cache_refresh_percentage_per_iteration": 0.2, "label_dim": 1, "slot_num": 10, "use_context_stream": False,
}
REDIS_VOLATILE_DOC = {  # hps_database_backend.md "Volatile Database Configuration" (comments dropped)
    "type": "redis_cluster", "address": "127.0.0.1:7003,127.0.0.1:7004,127.0.0.1:7005", "user_name": "default",
    "password": "", "num_partitions": 8, "allocation_rate": 268435456, "shared_memory_size": 17179869184,
    "shared_memory_name": "hctr_mp_hash_map_database", "shared_memory_auto_remove": True, "max_batch_size": 65536,
    "enable_tls": False, "tls_ca_certificate": "cacertbundle.crt", "tls_client_certificate": "client_cert.pem",
    "tls_client_key": "client_key.pem", "tls_server_name_identification": "redis.localhost",
    "overflow_margin": 10000000, "overflow_policy": "evict_random", "overflow_resolution_target": 0.8,
    "initialize_after_startup": True, "initial_cache_rate": 1.0, "cache_missed_embeddings": False,
    "update_filters": [".+"],
}
ROCKSDB_DOC = {"type": "rocks_db", "path": "@ROCKSDB@", "num_threads": 16, "read_only": False,
               "max_batch_size": 65536, "update_filters": [".+"]}
KAFKA_DOC = {"type": "kafka_message_queue", "brokers": "127.0.0.1:9092", "metadata_refresh_interval_ms": 30000,
             "poll_timeout_ms": 500, "receive_buffer_size": 262144, "max_batch_size": 8192,
             "failure_backoff_ms": 50, "max_commit_interval": 32}
FUSION_MODEL = dict(  # hps_table_fusion_demo / hps_torch_demo with NUM_TABLES = 4 filled in
    sparse_files=[f"embedding{i}.model" for i in range(4)], num_of_worker_buffer_in_pool=4,
    embedding_table_names=[f"table{i}" for i in range(4)], embedding_vecsize_per_table=[16, 16, 32, 32],
    maxnum_catfeature_query_per_table_per_sample=[1, 1, 1, 1], default_value_for_each_table=[0.0],
    max_batch_size=256, cache_refresh_percentage_per_iteration=1.0, use_context_stream=True)
NOT_ACTED = r"is read but not acted on by hps"

# (name, ps.json as a dict or JSON text, regexes of the warnings it must give: exactly these)
SAMPLES = [
    ("hps_database_backend.md: all sections", {
        "supportlonglong": True, "fuse_embedding_table": False, "volatile_db": REDIS_VOLATILE_DOC,
        "persistent_db": ROCKSDB_DOC, "update_source": KAFKA_DOC, "models": [WDL_MODEL]},
     [rf"models\[0\]\.use_context_stream: False {NOT_ACTED}"]),
    ("hugectr_backend docs/hierarchical_parameter_server.md: model", {
        "supportlonglong": True,
        "models": [{k: v for k, v in WDL_MODEL.items() if k not in ("use_context_stream", "embedding_cache_type")}]},
     []),
    ("profiling_hps.md", {"supportlonglong": True, "models": [{
        "model": "model_name", "sparse_files": ["The path of synthetic embedding files"], "dense_file": "",
        "network_file": "", "num_of_worker_buffer_in_pool": 2, "num_of_refresher_buffer_in_pool": 1,
        "deployed_device_list": [0], "max_batch_size": 1024, "default_value_for_each_table": [0.0],
        "cache_refresh_percentage_per_iteration": 0.1, "hit_rate_threshold": 1.0, "gpucacheper": 0.9,
        "gpucache": True, "maxnum_des_feature_per_sample": 0, "maxnum_catfeature_query_per_table_per_sample": [26],
        "embedding_vecsize_per_table": [16]}]}, []),
    ("hps_dlrm_benchmark_scripts/create_tf_models.py", {"supportlonglong": False, "models": [_model(
        "dlrm", 1, [128], [26], default_value_for_each_table=[1.0], max_batch_size=65536,
        cache_refresh_percentage_per_iteration=0.0, gpucacheper=0.2)]}, []),
    ("hps_tf core/initialize.py docstring: two models", {"supportlonglong": True, "models": [
        _model("demo_model", 1, [16], [10], max_batch_size=16384),
        _model("demo_model2", 2, [64, 32], [3, 5], max_batch_size=16384)]}, []),
    ("hps_tf notebooks: hierarchical_parameter_server_demo", {"supportlonglong": True, "models": [
        _model("naive_dnn", 1, [16], [3], max_batch_size=65536, embedding_table_names=["sparse_embedding1"])]}, []),
    ("hps_tf notebooks: hps_multi_table_sparse_input_demo", {"supportlonglong": True, "models": [
        _model("multi_table_sparse_input", 2, [16, 32], [9, 2])]}, []),
    ("hps_tf notebooks: hps_pretrained_model_training_demo (4 GPUs)", {"supportlonglong": True, "models": [
        _model("dnn", 1, [16], [50], deployed_device_list=[0, 1, 2, 3])]}, []),
    ("hps_tf notebooks: sok_to_hps_dlrm_demo", {"supportlonglong": True, "models": [_model("dlrm", 1, [16], [260])]},
     []),
    ("hps_tf notebooks: hps_tensorflow_triton_deployment_demo", {"supportlonglong": True, "models": [_model(
        "hps_tf_triton", 1, [16], [5],
        sparse_files=["/hugectr/hps_tf/notebooks/model_repo/hps_tf_triton/hps_tf_triton_sparse_0.model"])]}, []),
    ("hps_tf notebooks: hps_table_fusion_demo", {"supportlonglong": False, "fuse_embedding_table": True, "models": [
        _model("4_table", 4, [], [], embedding_cache_type="dynamic", gpucache=True, **FUSION_MODEL)]},
     []),
    ("hps_torch notebooks: hps_torch_demo", {"supportlonglong": False, "fuse_embedding_table": True, "models": [
        _model("4_table", 4, [], [], embedding_cache_type="static", **FUSION_MODEL)]},
     []),
    ("hps_trt notebooks: benchmark_tf_trained_large_model", {"supportlonglong": False, "models": [_model(
        "light", 1, [128], [26], sparse_files=["/hugectr/hps_trt/notebooks/model_repo/hps_model/1/dlrm_sparse.model"],
        num_of_worker_buffer_in_pool=1, num_of_refresher_buffer_in_pool=0, max_batch_size=65536,
        cache_refresh_percentage_per_iteration=0.0, gpucacheper=0.00, init_ec=False, embedding_cache_type="static",
        enable_pagelock=True, use_context_stream=True)]}, []),
    ("hps_trt notebooks: demo_for_tf_trained_model (4 GPUs)", {"supportlonglong": False, "models": [_model(
        "dlrm", 1, [128], [26], deployed_device_list=[0, 1, 2, 3])]}, []),
    ("hps_trt test/unit: two models, context stream off", {"supportlonglong": False, "models": [
        _model("foo", 1, [16], [10], max_batch_size=16384, embedding_cache_type="dynamic", use_context_stream=False),
        _model("bar", 2, [64, 32], [3, 5], embedding_cache_type="static", use_context_stream=True)]},
     [rf"models\[0\]\.use_context_stream: False {NOT_ACTED}"]),
    ("sok_train_hps_inference: 26 tables", {"supportlonglong": True, "models": [_model(
        "dlrm", 26, [16] * 26, [10] * 26, num_of_worker_buffer_in_pool=30,
        embedding_table_names=[f"table{i}" for i in range(26)],
        sparse_files=[f"dlrm_sparse.model/table{i}" for i in range(26)])]}, []),
    ("notebooks/hps_demo.ipynb: VolatileDatabaseParams redis_cluster + TLS as volatile_db", {
        "supportlonglong": True,
        "volatile_db": {"type": "redis_cluster", "address": "127.0.0.1:7000", "num_partitions": 15,
                        "num_node_connections": 5, "enable_tls": True, "tls_ca_certificate": "test_certs/ca.crt",
                        "tls_client_certificate": "test_certs/hugectr.crt",
                        "tls_client_key": "test_certs/hugectr-private.pem",
                        "tls_server_name_identification": "redis.localhost"},
        "models": [_model("hps_demo", 2, [16, 32], [2, 2], hit_rate_threshold=1.0, gpucacheper=0.5)]}, []),
    ("notebooks/hps_demo.ipynb: multi_process_hash_map", {
        "volatile_db": {"type": "multi_process_hash_map", "initialize_after_startup": False},
        "models": [_model("hps_demo", 2, [16, 32], [2, 2])]}, []),
    ("hugectr_backend README.md", {
        "supportlonglong": True,
        "volatile_db": {"type": "hash_map", "user_name": "default", "num_partitions": 8, "max_batch_size": 100000,
                        "overflow_policy": "evict_random", "overflow_margin": 10000000,
                        "overflow_resolution_target": 0.8, "initial_cache_rate": 1.0},
        "persistent_db": {"type": "disabled"},
        "models": [{"model": "hps_wdl", "sparse_files": ["/hps_infer/embedding/hps_wdl/1/wdl0_sparse_2000.model",
                                                         "/hps_infer/embedding/hps_wdl/1/wdl1_sparse_2000.model"],
                    "num_of_worker_buffer_in_pool": 3,
                    "embedding_table_names": ["embedding_table1", "embedding_table2"],
                    "embedding_vecsize_per_table": [1, 16], "maxnum_catfeature_query_per_table_per_sample": [2, 26],
                    "default_value_for_each_table": [0.0, 0.0], "deployed_device_list": [0], "max_batch_size": 1024,
                    "hit_rate_threshold": 0.9, "gpucacheper": 0.5, "gpucache": True}]}, []),
    ("hps_backend samples: Hierarchical_Parameter_Server_Deployment (legacy get/set batch keys)", {
        "supportlonglong": True,
        "volatile_db": {"type": "hash_map", "user_name": "default", "num_partitions": 8,
                        "max_get_batch_size": 100000, "max_set_batch_size": 100000, "overflow_policy": "evict_oldest",
                        "overflow_margin": 10000000, "overflow_resolution_target": 0.8, "initial_cache_rate": 1.0},
        "persistent_db": {"type": "disabled"},
        "models": [_model("hps_wdl", 2, [1, 16], [2, 26], hit_rate_threshold=0.9, gpucacheper=0.5,
                          default_value_for_each_table=[0.0, 0.0],
                          embedding_table_names=["embedding_table1", "embedding_table2"])]}, []),
    ("hps-triton-ensemble: 02_model_inference_hps_tf_ensemble", {"supportlonglong": True, "models": [_model(
        "hps_embedding", 1, [16], [3], max_batch_size=65536, embedding_table_names=["sparse_embedding1"],
        sparse_files=["/hps_demo/hps_embedding/1/naive_dnn_sparse.model"])]}, []),
    ("hps-triton-ensemble: HPS_Pytorch_ensemble_deployment (a key given twice)", """{
    "models": [{
    "model": "hps_test",
    "sparse_files": ["model/hps_test/0/hps_sparse.model"],
    "num_of_worker_buffer_in_pool": 3,
    "embedding_table_names":["0"],
    "num_of_refresher_buffer_in_pool":1,
    "embedding_vecsize_per_table":[32],
    "num_of_refresher_buffer_in_pool":0,
    "maxnum_catfeature_query_per_table_per_sample":[1],
    "deployed_device_list":[0],
    "max_batch_size":32,
    "default_value_for_each_table":[0.0],
    "cache_refresh_percentage_per_iteration":0,
    "hit_rate_threshold":1.1,
    "gpucacheper":1.0,
    "gpucache":true
    }]
}""", [r"ps\.json: models\[0\]\.num_of_refresher_buffer_in_pool: key given twice"]),
    ("hugectr_backend docs/architecture.md: redis ';' addresses, 'peristent_db' typo", {
        "supportlonglong": False,
        "volatile_db": {"type": "redis_cluster", "address": "192.168.0.10:7000;192.168.0.20:7000;192.168.0.30:7000",
                        "num_partitions": 8, "initial_cache_rate": 0.5, "overflow_margin": 10000000},
        "peristent_db": {"type": "rocksdb", "path": "/root/hctr_rocksdb"},
        "models": [{"model": "hps_wdl", "sparse_files": ["../wdl0_sparse_2000.model", "../wdl1_sparse_2000.model"],
                    "embedding_table_names": ["table1", "table2"], "embedding_vecsize_per_table": [1, 16],
                    "maxnum_catfeature_query_per_table_per_sample": [2, 26], "default_value_for_each_table": [0.0],
                    "deployed_device_list": [3], "max_batch_size": 1024}]},
     [rf"^volatile_db\.initial_cache_rate: 0\.5 {NOT_ACTED}", r"^peristent_db: unknown key ignored"]),
]


@pytest.mark.parametrize("name,sample,expected", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_hugectr_sample_parses(name, sample, expected, tmp_path):
    text = sample if isinstance(sample, str) else json.dumps(sample)
    path = tmp_path / "ps.json"
    path.write_text(text.replace("@ROCKSDB@", str(tmp_path / "rocksdb")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(path)
    messages = [str(w.message) for w in caught]
    assert all(issubclass(w.category, ConfigWarning) for w in caught), messages
    unexpected = [m for m in messages if not any(re.search(p, m) for p in expected)]
    missing = [p for p in expected if not any(re.search(p, m) for m in messages)]
    assert not unexpected and not missing, (unexpected, missing)
    assert cfg.models and all(m.num_tables == len(m.embedding_vecsize_per_table) for m in cfg.models)


def test_samples_keep_their_meaning(tmp_path):
    """Spot checks that the documented values arrive where hps reads them."""
    doc = next(s for n, s, _ in SAMPLES if n == "hps_database_backend.md: all sections")
    raw = dict(doc, persistent_db=dict(ROCKSDB_DOC, path=str(tmp_path / "rocksdb")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        cfg = load_config(raw)
    assert isinstance(cfg.volatile_db, RedisClusterConfig)
    assert cfg.volatile_db.nodes == [("127.0.0.1", 7003), ("127.0.0.1", 7004), ("127.0.0.1", 7005)]
    assert isinstance(cfg.persistent_db, RocksDBConfig) and cfg.persistent_db.update_filters == (".+",)
    assert isinstance(cfg.update_source, KafkaConfig) and cfg.update_source.receive_buffer_size == 262144
    wdl = cfg.model("wdl")
    assert wdl.embedding_vecsize_per_table == (1, 15) and wdl.table(1).tag == "hps_et.wdl.table2"
    legacy = load_config(next(s for n, s, _ in SAMPLES if "legacy get/set" in n))
    assert isinstance(legacy.volatile_db, HashMapConfig) and legacy.volatile_db.max_batch_size == 100000
    assert legacy.volatile_db.overflow_policy == "evict_oldest"
