"""A small sparse model and its ps.json for the framework layer tests (no heavy imports here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

ROWS = 64
DIM = 8
DEFAULT_VALUE = 0.5
MAX_BATCH_SIZE = 16
KEYS_PER_SAMPLE = 4


def write_small_model(directory: Path, *, supportlonglong: bool = True, dim: int = DIM) -> tuple[str, np.ndarray]:
    """Write a ROWS × dim table (keys 0..ROWS-1) and a ps.json (hash_map only, model "m", one table)
    under `directory`; returns (ps.json path, vectors (ROWS, dim) float32)."""
    from hps.model_format import write_sparse_model

    vectors = np.random.default_rng(7).standard_normal((ROWS, dim)).astype(np.float32)
    write_sparse_model(directory / "table0", np.arange(ROWS, dtype=np.int64), vectors)
    config = {
        "supportlonglong": supportlonglong,
        "volatile_db": {"type": "hash_map", "num_partitions": 2},
        "models": [{
            "model": "m", "sparse_files": [str(directory / "table0")], "embedding_vecsize_per_table": [dim],
            "maxnum_catfeature_query_per_table_per_sample": [KEYS_PER_SAMPLE],
            "default_value_for_each_table": [DEFAULT_VALUE], "deployed_device_list": [0],
            "max_batch_size": MAX_BATCH_SIZE, "gpucache": True, "gpucacheper": 1.0, "hit_rate_threshold": 1.0,
        }],
    }
    path = directory / "ps.json"
    path.write_text(json.dumps(config))
    return str(path), vectors


def expected_vectors(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """What a lookup must return: table rows, DEFAULT_VALUE everywhere for ids outside the table."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.full(ids.shape + (table.shape[1],), DEFAULT_VALUE, dtype=np.float32)
    hit = (ids >= 0) & (ids < table.shape[0])
    out[hit] = table[ids[hit]]
    return out


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> tuple[str, np.ndarray]:
    """(ps.json path, table) of a supportlonglong=true model, shared by one test module."""
    return write_small_model(tmp_path_factory.mktemp("fw_i64"))


@pytest.fixture(scope="module")
def small_model_i32(tmp_path_factory) -> tuple[str, np.ndarray]:
    """(ps.json path, table) of a supportlonglong=false (int32 keys) model."""
    return write_small_model(tmp_path_factory.mktemp("fw_i32"), supportlonglong=False)


@pytest.fixture
def make_model(tmp_path) -> Callable[..., tuple[str, np.ndarray]]:
    """Factory: a fresh model in its own directory (a new ps.json path, so a new process-wide HPS)."""
    count = [0]

    def make(**kwargs) -> tuple[str, np.ndarray]:
        count[0] += 1
        directory = tmp_path / f"model{count[0]}"
        directory.mkdir()
        return write_small_model(directory, **kwargs)

    return make
