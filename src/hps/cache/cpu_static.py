"""`static` / `uvm` tables without a GPU: the whole table in an in-process hash map.

A set-associative cache can drop rows on set collisions even when it is large enough
(HugeCTR issue #278); a static table must hold every row, so it sits on `HashMapBackend`.
"""

from __future__ import annotations

import numpy as np

from hps.config.schema import HashMapConfig
from hps.storage.hash_map import HashMapBackend

_TAG = "hps_et.static.table"


class CpuStaticTable:
    """The whole table in host memory behind the `EmbeddingCache` protocol; misses stay misses."""

    device = "cpu"

    def __init__(self, dim: int, num_partitions: int = 1) -> None:
        self.dim = dim
        self._map = HashMapBackend(HashMapConfig(num_partitions=num_partitions))
        self._map.create_table(_TAG, dim)

    @property
    def capacity_rows(self) -> int:
        return self.size()

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`keys: (n,) int64` → `(vectors: (n, dim) float32, found: (n,) bool)`."""
        return self._map.find(_TAG, keys)

    def insert_or_assign(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add or overwrite rows (start-up fill)."""
        self._map.insert_or_assign(_TAG, keys, vectors)

    def assign(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Overwrite rows that are present (online updates reach static tables too)."""
        _, found = self._map.find(_TAG, keys)
        if found.any():
            self._map.insert_or_assign(_TAG, keys[found], vectors[found])

    def erase(self, keys: np.ndarray) -> None:
        self._map.erase(_TAG, keys)

    def dump(self) -> np.ndarray:
        """All keys, `(m,) int64`."""
        chunks = [k for k, _ in self._map.items(_TAG)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)

    def size(self) -> int:
        return self._map.size(_TAG)

    def close(self) -> None:
        self._map.close()
