"""The `KeyValueBackend` protocol every storage tier implements (batch first, HierarchicalKV style).

Keys are always `(n,) int64` inside hps (int32 / uint32 keys are widened at the API
boundary); vectors are `(n, dim) float32`, C-contiguous. A table is named by its tag
`hps_et.<model>.<table>` and must be opened with `create_table(tag, dim)` before use.
"""

from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import numpy as np

TAG_PREFIX = "hps_et"


def make_tag(model_name: str, table_name: str) -> str:
    """The storage tag of a table: `hps_et.<model>.<table>` (DB table, column family, Kafka topic)."""
    return f"{TAG_PREFIX}.{model_name}.{table_name}"


@runtime_checkable
class KeyValueBackend(Protocol):
    """A storage tier holding embedding tables: find / insert_or_assign / erase on key batches."""

    #: Human-readable backend name, e.g. "hash_map", "rocks_db", "redis_cluster".
    name: str
    #: True when several hps processes share this tier (Redis): one Kafka consumer group for all.
    is_shared: bool

    def create_table(self, tag: str, dim: int) -> None:
        """Open (or create) table `tag` holding `dim`-float rows; idempotent for the same dim.

        Raises `BackendError` if the table exists with another dim."""

    def find(self, tag: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Look up `keys: (n,) int64` (duplicates allowed).

        Returns `(vectors: (n, dim) float32, found: (n,) bool)`; rows of missing keys are
        unspecified (callers fill them from the next tier or the default value)."""

    def insert_or_assign(self, tag: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert `keys: (n,) int64` → `vectors: (n, dim) float32`; may evict per the overflow
        policy. All-or-nothing on validation errors (nothing written when shapes disagree)."""

    def erase(self, tag: str, keys: np.ndarray) -> int:
        """Remove `keys: (n,) int64` from the table; returns how many were present."""

    def size(self, tag: str) -> int:
        """Number of rows currently held in table `tag`."""

    def items(self, tag: str, batch_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate the table as `(keys: (m,) int64, vectors: (m, dim) float32)` batches."""

    def tables(self) -> list[str]:
        """Tags of the tables this backend holds."""

    def drop_table(self, tag: str) -> None:
        """Delete a whole table (model unload)."""

    def close(self) -> None:
        """Release connections, files and memory; later calls raise `ClosedError`."""
