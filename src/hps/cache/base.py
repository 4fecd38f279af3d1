"""The `EmbeddingCache` protocol (the L1 tier in front of the storage tiers).

HugeCTR semantics: capacity = gpucacheper × rows; set-associative buckets with LRU
eviction within a bucket. The CPU implementation (`cpu.py`) takes and returns numpy
arrays; the GPU implementation (`gpu.py`) takes and returns torch tensors on its device.
Keys are `(n,) int64`; vectors `(n, dim) float32`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class EmbeddingCache(Protocol):
    """A fixed-capacity key → vector cache with a found mask; thread-safe."""

    dim: int
    capacity_rows: int
    #: "cpu" or "cuda:<i>": where keys must be and where vectors are returned.
    device: str
    #: "numpy" or "torch": the array kind `find` and the writers take and return (torch caches
    #: also have `torch_device`: `device` as a `torch.device`).
    array_module: str

    def find(self, keys: Any) -> tuple[Any, Any]:
        """Probe with raw keys `(n,) int64` (duplicates allowed); marks hits recently used.

        Returns `(vectors: (n, dim) float32, found: (n,) bool)`; rows of misses unspecified."""

    def insert_or_assign(self, keys: Any, vectors: Any) -> None:
        """Insert or overwrite `keys` (unique) with `vectors: (n, dim) float32`, evicting the
        least recently used slot of a full bucket."""

    def assign(self, keys: Any, vectors: Any) -> None:
        """Overwrite only keys already present (online updates); absent keys are ignored."""

    def erase(self, keys: Any) -> None:
        """Remove `keys` if present."""

    def dump(self) -> Any:
        """All keys currently cached, `(m,) int64`."""

    def size(self) -> int:
        """Number of keys currently cached."""

    def close(self) -> None:
        """Free the cache memory."""
