"""The test oracle for the compat tests: a table's vectors read straight from its sparse files, with no hps code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def rows_from_files(ps_json: str, table_id: int, keys: np.ndarray, dim: int, default: float) -> np.ndarray:
    """keys (...) → (..., dim) float32 from model 0's table `table_id`: its raw `key` / `emb_vector` files
    (as the ps.json names them); `default` for keys the files don't hold."""
    table_dir = json.loads(Path(ps_json).read_text())["models"][0]["sparse_files"][table_id]
    file_keys = np.fromfile(os.path.join(table_dir, "key"), dtype="<i8")
    rows = np.fromfile(os.path.join(table_dir, "emb_vector"), dtype="<f4").reshape(len(file_keys), dim)
    order = np.argsort(file_keys)
    flat = np.asarray(keys, dtype=np.int64).ravel()
    pos = np.minimum(np.searchsorted(file_keys[order], flat), len(file_keys) - 1)
    found = file_keys[order][pos] == flat
    out = np.full((flat.size, dim), default, dtype=np.float32)
    out[found] = rows[order][pos[found]]
    return out.reshape(np.shape(keys) + (dim,))
