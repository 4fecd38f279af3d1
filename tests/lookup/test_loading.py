"""Start-up loading: files read straight into the hash map, one progress bar over every phase,
the peak memory measured and bounded."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import hps
from hps.config import load_config
from hps.errors import HpsError
from hps.lookup import loading
from hps.model_format import SparseModel, write_sparse_model

DIM = 8


def _write(tmp_path: Path, rows: int, name: str = "t0") -> tuple[np.ndarray, np.ndarray]:
    keys = np.random.default_rng(0).permutation(rows * 3)[:rows].astype(np.int64)
    vectors = (keys[:, None] + np.arange(DIM)).astype(np.float32)
    write_sparse_model(tmp_path / name, keys, vectors)
    return keys, vectors


def _config(tmp_path: Path, cache: str | None, **model) -> dict:
    return {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 2},
            "models": [{"model": "m", "sparse_files": [str(tmp_path / "t0")], "embedding_vecsize_per_table": [DIM],
                        "maxnum_catfeature_query_per_table_per_sample": [1], "default_value_for_each_table": [-1.0],
                        "deployed_device_list": [0], "max_batch_size": 8192, "gpucache": cache is not None,
                        "embedding_cache_type": cache or "dynamic", "hit_rate_threshold": 1.0, **model}]}


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(loading, "LOAD_CHUNK_ROWS", 1000)


def test_local_files_are_read_straight_into_the_hash_map(tmp_path, small_chunks, monkeypatch):
    keys, vectors = _write(tmp_path, 5500)

    def no_chunks(*args, **kwargs):
        raise AssertionError("the hash-map-only load must not go through SparseModel.iter_chunks")

    monkeypatch.setattr(SparseModel, "iter_chunks", no_chunks)
    with hps.HPS(_config(tmp_path, None), show_progress=False) as ps:
        np.testing.assert_array_equal(ps.lookup(keys, "m", 0), vectors)
        assert ps.volatile.memory_bytes("hps_et.m.sparse_embedding0") < 1.5 * 5500 * (8 + 4 * DIM)


def test_a_file_that_shrinks_during_the_load_keeps_nothing(tmp_path, small_chunks):
    _write(tmp_path, 5500)
    config = load_config(_config(tmp_path, None))
    model = config.models[0]
    sparse_models = loading.open_sparse_models(model)
    with open(tmp_path / "t0" / "emb_vector", "r+b") as f:
        f.truncate(4 * DIM * 3000)
    volatile = hps.storage.make_backend(config.volatile_db)
    with pytest.raises(HpsError, match="shrank while being read"):
        loading.load_model_into_tiers(config, model, sparse_models, volatile, None, show_progress=False)
    assert volatile.tables() == []  # the table this load created was dropped


@pytest.mark.parametrize("cache,model", [(None, {}), ("static", {}),
                                         ("dynamic", {"gpucacheper": 0.5,
                                                      "cache_refresh_percentage_per_iteration": 1.0})])
def test_one_bar_counts_every_phase(tmp_path, small_chunks, monkeypatch, cache, model):
    _write(tmp_path, 5500)
    monitors = []
    original = loading.LoadMonitor.__exit__

    def keep(self, *exc):
        monitors.append(self)
        return original(self, *exc)

    monkeypatch.setattr(loading.LoadMonitor, "__exit__", keep)
    with hps.HPS(_config(tmp_path, cache, **model), show_progress=True) as ps:  # the rich bar drawn too
        report = ps.stats()["load"]["m"]
    outer = monitors[-1]
    assert len({id(m) for m in monitors}) == 1  # the phases shared one monitor (one bar)
    assert outer.done_bytes > 5500 * (8 + 4 * DIM)
    assert abs(outer.total_bytes - outer.done_bytes) <= 0.01 * outer.done_bytes  # as planned (cache sets round up)
    assert report["bytes"] == outer.done_bytes
    assert report["peak_rss_bytes"] >= report["rss_after_bytes"] > 0
    assert report["peak_over_steady"] >= 1.0


def test_whole_table_cpu_cache_load_peaks_near_its_size(tmp_path, small_chunks):
    rows = 60_000
    _write(tmp_path, rows)
    tracemalloc.start()
    try:
        with hps.HPS(_config(tmp_path, "static"), show_progress=False) as ps:
            _, peak = tracemalloc.get_traced_memory()
            replica = ps._models["m"].replica(0, 0)
            steady = replica.cache._map.memory_bytes("hps_et.static.table")
    finally:
        tracemalloc.stop()
    assert peak <= 1.3 * steady, (peak, steady)  # regrowing the slab chunk by chunk made it ~2x
