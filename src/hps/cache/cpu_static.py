"""Whole-table caches without a GPU: the table in an in-process hash map.

A set-associative cache drops rows on set collisions even when it is as large as the table
(HugeCTR issue #278: gpucacheper 1.0 and still misses). A static / uvm table must hold every
row, and a dynamic cache sized for the whole table should too, so both sit on `HashMapBackend`;
the dynamic one is bounded so that keys missing from every tier cannot grow it without limit.
Its overflow evicts random rows: it only overflows once more keys than the table holds were
cached, a random victim costs at most one re-fetch from the tiers, and no lookup then writes
access metadata, which also lets tables with contiguous keys use the hash map's direct index.
"""

from __future__ import annotations

import numpy as np

from hps.config.schema import HashMapConfig
from hps.storage.hash_map import HashMapBackend

_TAG = "hps_et.static.table"


class CpuStaticTable:
    """The whole table in host memory behind the `EmbeddingCache` protocol; misses stay misses."""

    device = "cpu"
    array_module = "numpy"

    def __init__(self, dim: int, capacity_rows: int | None = None, reserve_rows: int = 0) -> None:
        """`capacity_rows` None: unbounded (static); else evict random rows beyond it, down to
        80 % (HugeCTR's overflow_resolution_target). `reserve_rows`: rows to size the table for at
        once (the table's row count before a whole-table fill: no slab regrowth, whose copy made the
        load's peak memory about twice the table)."""
        self.dim = dim
        bounded = {} if capacity_rows is None else {"overflow_margin": capacity_rows,
                                                    "overflow_policy": "evict_random"}
        self._capacity_rows = capacity_rows
        self._map = HashMapBackend(HashMapConfig(num_partitions=1, **bounded))
        self._map.create_table(_TAG, dim)
        if reserve_rows:
            self._map.reserve(_TAG, reserve_rows)

    @property
    def capacity_rows(self) -> int:
        return self.size() if self._capacity_rows is None else self._capacity_rows

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`keys: (n,) int64` → `(vectors: (n, dim) float32, found: (n,) bool)`."""
        return self._map.find(_TAG, keys)

    def find_counted(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, int]:
        """`find` plus the number of hits, as `(vectors, found, num_found)`; `found` is None when
        every key was found (the lookup pipeline's all-hit path)."""
        vectors, found, num_found = self._map.find_counted(_TAG, keys)
        return vectors, (found if num_found < len(found) else None), num_found

    def insert_or_assign(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add or overwrite rows `keys: (n,) int64` → `vectors: (n, dim) float32` (start-up fill: appended
        with one contiguous copy by the map's `bulk_load`; a bounded table evicts as `insert_or_assign`)."""
        self._map.bulk_load(_TAG, keys, vectors)

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
