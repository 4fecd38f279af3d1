"""HugeCTR's `test/inference/hps/lookup_session_test.py`, on `hps.inference`: the config is built with
`ParameterServerConfig` / `InferenceParams` / `VolatileDatabaseParams` exactly as that test (and
`hpsdlpack.py`, `notebooks/hps_demo.ipynb`) build it, with the variations they run (Dynamic, UVM and
Static caches at cache_size_percentage 0.5, no GPU cache) and the database settings HugeCTR users
combine with them. HugeCTR's test only compared a few lookups between cache types; here every key of
both tables must come back exact against the sparse files, cold and warm, and unknown keys get the
table's default value.
"""

from __future__ import annotations

import numpy as np
import pytest

from hps.inference import (HPS, DatabaseType_t, EmbeddingCacheType_t, InferenceParams, ParameterServerConfig,
                           PersistentDatabaseParams, VolatileDatabaseParams)
from hps.model_format import write_sparse_model

MODEL = "hps_demo"
DIMS, KEYS_PER_SAMPLE = [1, 16], [2, 26]  # lookup_session_test.py's two wdl tables
MAX_BATCHSIZE = 16
DEFAULTS = [-1.0, 2.5]
SLOT_SIZES = [400, 1500, 1100]  # table 0: slot 0; table 1: slots 1 and 2 (keys shifted by the cumulative sizes)


@pytest.fixture(scope="module")
def sparse_files(tmp_path_factory):
    """Two sparse models keyed like HugeCTR's wdl test: per-slot ids shifted by the cumulative slot sizes,
    a few rows missing from each table (they must get the default value), in shuffled file order."""
    root = tmp_path_factory.mktemp("wdl")
    rng = np.random.default_rng(3)
    shift = np.insert(np.cumsum(SLOT_SIZES), 0, 0)[:-1]
    slot_keys = [shift[s] + np.arange(SLOT_SIZES[s], dtype=np.int64) for s in range(len(SLOT_SIZES))]
    tables = []
    for t, keys in enumerate([slot_keys[0], np.concatenate(slot_keys[1:])]):
        keys = rng.permutation(keys)
        stored, absent = keys[:-7], keys[-7:]
        vectors = rng.standard_normal((len(stored), DIMS[t])).astype(np.float32)
        path = root / f"wdl{t}_sparse_2000.model"
        write_sparse_model(path, stored, vectors)
        tables.append({"path": str(path), "keys": stored, "vectors": vectors, "absent": absent})
    return tables


VARIATIONS = {
    # lookup_session_test.py: the three cache types with the cache on, at 0.5
    "dynamic-0.5": {"cache_type": EmbeddingCacheType_t.Dynamic},
    "uvm-0.5": {"cache_type": EmbeddingCacheType_t.UVM},
    "static": {"cache_type": EmbeddingCacheType_t.Static},
    # ... and with use_gpu_embedding_cache=False (hpsdlpack.py's enable_cache)
    "no-cache": {"enable_cache": False},
    # the database settings of hps_demo.ipynb's sections and the docs' examples
    "dynamic-0.5-hash_map": {"volatile_db": lambda tmp: VolatileDatabaseParams(DatabaseType_t.hash_map,
                                                                               num_partitions=3)},
    "dynamic-0.2-hash_map-overflow": {"percentage": 0.2, "volatile_db": lambda tmp: VolatileDatabaseParams(
        "hash_map", num_partitions=2, overflow_margin=10_000, cache_missed_embeddings=True)},
    "dynamic-0.5-rocks_db-only": {"volatile_db": lambda tmp: VolatileDatabaseParams(DatabaseType_t.disabled),
                                  "persistent_db": lambda tmp: PersistentDatabaseParams(
                                      backend=DatabaseType_t.rocks_db, path=str(tmp / "rocksdb"))},
    "dynamic-0.5-both": {"persistent_db": lambda tmp: PersistentDatabaseParams(
        backend=DatabaseType_t.rocks_db, path=str(tmp / "rocksdb"))},
    "dynamic-0.5-prefilled": {"refresh": 0.2},
    "uint32-keys": {"i64": False},
    # No database at all: every key still has to come back exact (the sparse files hold it); a table
    # without volatile_db / persistent_db once answered cache misses with the default value.
    "dynamic-0.5-no-database": {"volatile_db": lambda tmp: VolatileDatabaseParams(DatabaseType_t.disabled)},
    "no-cache-no-database": {"enable_cache": False,
                             "volatile_db": lambda tmp: VolatileDatabaseParams(DatabaseType_t.disabled)},
}


def build(sparse_files, tmp_path, enable_cache=True, cache_type=EmbeddingCacheType_t.Dynamic, percentage=0.5,
          volatile_db=None, persistent_db=None, refresh=0.0, i64=True) -> ParameterServerConfig:
    """The ParameterServerConfig of lookup_session_test.py's hps_dlpack(), with the variation's settings."""
    extra = {}
    if volatile_db is not None:
        extra["volatile_db"] = volatile_db(tmp_path)
    if persistent_db is not None:
        extra["persistent_db"] = persistent_db(tmp_path)
    return ParameterServerConfig(
        emb_table_name={MODEL: ["sparse_embedding0", "sparse_embedding1"]},
        embedding_vec_size={MODEL: DIMS},
        max_feature_num_per_sample_per_emb_table={MODEL: KEYS_PER_SAMPLE},
        inference_params_array=[
            InferenceParams(
                model_name=MODEL,
                max_batchsize=MAX_BATCHSIZE,
                hit_rate_threshold=1.0,
                dense_model_file="",
                sparse_model_files=[t["path"] for t in sparse_files],
                deployed_devices=[0],
                use_gpu_embedding_cache=enable_cache,
                cache_size_percentage=percentage,
                embedding_cache_type=cache_type,
                i64_input_key=i64,
                default_value_for_each_table=DEFAULTS,
                cache_refresh_percentage_per_iteration=refresh,
            )
        ],
        **extra,
    )


def check_every_key_exact(hps: HPS, sparse_files) -> None:
    """Every stored key of both tables exact (cold, then warm, in batches of max_batchsize samples);
    then one batch mixing duplicates with absent keys, shaped (batch, keys per sample) like HugeCTR's."""
    rng = np.random.default_rng(5)
    for table_id, table in enumerate(sparse_files):
        keys, vectors = table["keys"], table["vectors"]
        limit = MAX_BATCHSIZE * KEYS_PER_SAMPLE[table_id]
        for attempt in ("cold", "warm"):
            order = rng.permutation(len(keys))
            for start in range(0, len(keys), limit):
                idx = order[start:start + limit]
                got = hps.lookup(keys[idx], MODEL, table_id)
                assert isinstance(got, np.ndarray) and got.dtype == np.float32
                np.testing.assert_array_equal(got, vectors[idx],
                                              err_msg=f"table {table_id}, {attempt}, keys {start}..")
        idx = rng.integers(0, len(keys), limit - len(table["absent"]))
        batch = np.concatenate([keys[idx], table["absent"]])
        got = hps.lookup(batch, MODEL, table_id).reshape(MAX_BATCHSIZE, KEYS_PER_SAMPLE[table_id], DIMS[table_id])
        flat = got.reshape(len(batch), DIMS[table_id])
        np.testing.assert_array_equal(flat[:len(idx)], vectors[idx])
        assert (flat[len(idx):] == DEFAULTS[table_id]).all()


@pytest.mark.parametrize("variation", list(VARIATIONS))
def test_every_key_exact(sparse_files, tmp_path, variation):
    settings = {k: v for k, v in VARIATIONS[variation].items()}
    with HPS(build(sparse_files, tmp_path, **settings), show_progress=False) as hps:
        check_every_key_exact(hps, sparse_files)


def test_cache_types_agree_on_the_test_sample(sparse_files, tmp_path):
    """lookup_session_test.py's own check: Static and UVM give what Dynamic gives, for one sample of
    2 + 26 keys (here: identical, not within 1e-3)."""
    sample0, sample1 = sparse_files[0]["keys"][:2], sparse_files[1]["keys"][:26]
    results = {}
    for cache_type in (EmbeddingCacheType_t.Dynamic, EmbeddingCacheType_t.UVM, EmbeddingCacheType_t.Static):
        with HPS(build(sparse_files, tmp_path / cache_type.name, cache_type=cache_type), show_progress=False) as hps:
            results[cache_type] = (hps.lookup(sample0, MODEL, 0).reshape(1, 2, 1),
                                   hps.lookup(sample1, MODEL, 1).reshape(1, 26, 16))
    dynamic = results[EmbeddingCacheType_t.Dynamic]
    for cache_type, (e1, e2) in results.items():
        np.testing.assert_array_equal(e1, dynamic[0], err_msg=str(cache_type))
        np.testing.assert_array_equal(e2, dynamic[1], err_msg=str(cache_type))
    np.testing.assert_array_equal(dynamic[1].reshape(26, 16), sparse_files[1]["vectors"][:26])
