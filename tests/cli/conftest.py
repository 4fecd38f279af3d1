"""Fixtures of the `hps` command tests: small sparse models and their ps.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hps.model_format import write_sparse_model


def write_ps_json(folder: Path, models: list[dict], **top: object) -> Path:
    """`folder/ps.json` with `models` (HugeCTR keys) and top-level keys `top`; returns its path."""
    path = folder / "ps.json"
    path.write_text(json.dumps({"supportlonglong": True, **top, "models": models}))
    return path


def model_entry(name: str, files: list[str], dim: int, default: float = 7.0, **extra: object) -> dict:
    """One `models[]` entry with one-key samples and `default` as every table's default value."""
    return {"model": name, "sparse_files": files, "embedding_vecsize_per_table": [dim] * len(files),
            "maxnum_catfeature_query_per_table_per_sample": [1] * len(files),
            "default_value_for_each_table": [default] * len(files), "deployed_device_list": [0], **extra}


@pytest.fixture()
def small_table(tmp_path: Path) -> Path:
    """A ps.json of one model `m`, one table of keys 0, 3, ..., 297 (row i = [i, i + 0.25, i + 0.5, i + 0.75])."""
    keys = np.arange(100, dtype=np.int64) * 3
    vectors = np.arange(100, dtype=np.float32)[:, None] + np.array([0, 0.25, 0.5, 0.75], np.float32)
    write_sparse_model(tmp_path / "t0", keys, vectors)
    return write_ps_json(tmp_path, [model_entry("m", ["t0"], 4)], volatile_db={"type": "hash_map"})
