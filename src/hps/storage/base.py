"""The `KeyValueBackend` protocol every storage tier implements (batch first, HierarchicalKV style).

Keys are always `(n,) int64` inside hps (int32 / uint32 keys are widened at the API
boundary); vectors are `(n, dim) float32`, C-contiguous. A table is named by its tag
`hps_et.<model>.<table>` and must be opened with `create_table(tag, dim)` before use.
"""

from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from hps.config.tags import TAG_PREFIX, make_tag  # noqa: F401  (re-exported: tags are a config concept)
from hps.errors import BackendError, KeyInputError



#: The key dtype inside hps; `keys.dtype is INT64` is the cheapest exact check.
INT64 = np.dtype(np.int64)


def check_keys(keys: np.ndarray, where: str) -> np.ndarray:
    """Validate `keys: (n,) integer` → C-contiguous `(n,) int64`.

    Raises `KeyInputError` naming `where` (e.g. "table hps_et.m.t0"), the dtype and the shape."""
    if type(keys) is np.ndarray and keys.dtype is INT64 and keys.ndim == 1 and keys.flags.c_contiguous:
        return keys  # what every lookup passes: checked in a fraction of a microsecond
    arr = np.asarray(keys)
    if arr.dtype.kind not in "iu":
        raise KeyInputError(f"{where}: keys must be integers, got dtype {arr.dtype} (shape {arr.shape})")
    if arr.ndim != 1:
        raise KeyInputError(f"{where}: keys must be a 1-D array, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64) if arr.dtype != np.int64 else np.ascontiguousarray(arr)


def check_vectors(tag: str, vectors: np.ndarray, num_keys: int, dim: int) -> np.ndarray:
    """Validate `vectors: (num_keys, dim) floating` for table `tag` → C-contiguous float32.

    Raises `BackendError` naming the tag, the shape expected and the shape given."""
    arr = np.asarray(vectors)
    if arr.dtype.kind != "f":
        raise BackendError(f"table {tag}: vectors must be floating point, got dtype {arr.dtype}")
    if arr.shape != (num_keys, dim):
        raise BackendError(
            f"table {tag}: vectors of shape {arr.shape} do not match {num_keys} keys × dim {dim}")
    return np.ascontiguousarray(arr, dtype=np.float32)


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
        unspecified (callers fill them from the next tier or the default value). A tier that
        could ask only some keys (a Redis node down) raises `PartialBackendError` carrying
        `vectors`, `found` and `unavailable: (n,) bool`."""

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
