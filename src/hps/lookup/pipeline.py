"""The lookup of one table on one device: cache → misses, deduplicated → tiers → merge.

The cache is probed with the raw keys (duplicates allowed): a sort-based dedupe of every
batch costs more than the whole hit path, so only the misses are deduplicated
(DESIGN.md, data flow). `hit_rate_threshold` picks how misses are handled (reference §2.5):
below it, synchronously (exact values); at or above it, this batch gets the default value
for its misses and the insert runs in the background.

Arrays are numpy for the CPU cache and torch tensors on the cache's device for the GPU
cache; the tiers always work on host numpy arrays.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np

from hps.cache.base import EmbeddingCache
from hps.config.schema import ModelConfig, TableConfig
from hps.lookup.stats import CACHE, DEFAULT, LEVELS, TableStats
from hps.lookup.tiers import TierChain

log = logging.getLogger(__name__)


class TableLookup:
    """Serves `lookup(keys)` for one table on one device replica."""

    def __init__(self, model: ModelConfig, table: TableConfig, cache: EmbeddingCache | None, tiers: TierChain,
                 stats: TableStats, background: Executor) -> None:
        self.model = model
        self.table = table
        self.cache = cache
        self.tiers = tiers
        self.stats = stats
        self._background = background
        self._insert_in_flight = threading.Lock()
        #: Static / uvm tables hold the whole table: a miss is a miss, no tier is consulted.
        self._complete_table = model.cache_type in ("static", "uvm")
        self._find_counted = getattr(cache, "find_counted", None)
        #: The most keys one lookup may carry (max_batch_size × maxnum_catfeature_query_per_table_per_sample).
        self.max_keys = model.max_keys_per_call(table.table_id)
        #: True when the cache works on torch tensors (the GPU cache), False for numpy.
        self.takes_torch = cache is not None and cache.array_module == "torch"

    def lookup(self, keys: Any) -> Any:
        """Vectors for flat `keys: (n,) int64` (numpy, or torch on the cache's device).

        Returns `(n, dim) float32` of the same array kind and device."""
        start = time.perf_counter()
        if self.cache is None:
            vectors, source = self.tiers.fetch(self.table, _to_numpy(keys), self.stats)
            self.stats.record(np.bincount(source, minlength=len(LEVELS)), time.perf_counter() - start)
            return _like(vectors, keys)
        if self._find_counted is not None:  # probe and count in one call (GPU graph replay, whole-table CPU cache)
            vectors, found, num_hits = self._find_counted(keys)
        else:
            vectors, found = self.cache.find(keys)
            num_hits = int(found.sum()) if is_torch(found) else int(np.count_nonzero(found))
        if num_hits == len(keys):
            self.stats.record_cache_hits(num_hits, time.perf_counter() - start)
            return vectors
        level_hits = np.zeros(len(LEVELS), dtype=np.int64)
        level_hits[CACHE] = num_hits
        miss_positions = _nonzero(~found)
        num_misses = len(keys) - num_hits
        if self._complete_table or num_hits >= self.model.hit_rate_threshold * len(keys):
            vectors[miss_positions] = self.table.default_value
            level_hits[DEFAULT] = num_misses
            if not self._complete_table:
                self._insert_in_background(keys[miss_positions])
        else:
            miss_keys, inverse = _unique_inverse(keys[miss_positions])
            host_vectors, source = self.tiers.fetch(self.table, _to_numpy(miss_keys), self.stats)
            fetched = _like(host_vectors, vectors)
            self.cache.insert_or_assign(miss_keys, fetched)
            vectors[miss_positions] = fetched[inverse]
            level_hits += np.bincount(source[_to_numpy(inverse)], minlength=len(LEVELS))
        self.stats.record(level_hits, time.perf_counter() - start)
        return vectors

    def _insert_in_background(self, miss_keys: Any) -> None:
        """Fetch `miss_keys` from the tiers and insert them into the cache, off the lookup path.

        At most one background insert per table is in flight; misses seen meanwhile are
        fetched by a later batch (HugeCTR bounded this with its worker-buffer pool)."""
        if not self._insert_in_flight.acquire(blocking=False):
            return
        self.stats.count_async_insert()
        keys = np.unique(_to_numpy(miss_keys))

        def insert() -> None:
            try:
                host_vectors, _ = self.tiers.fetch(self.table, keys, self.stats)
                with _side_stream(self.cache.device):  # a GPU insert queues behind no lookup
                    self.cache.insert_or_assign(_like(keys, miss_keys), _like(host_vectors, miss_keys))
            except Exception:  # noqa: BLE001 - a background insert must never break lookups
                log.exception("background insert of %d keys into the cache of %s failed", len(keys), self.table.tag)
            finally:
                self._insert_in_flight.release()

        self._background.submit(insert)

    @property
    def torch_device(self) -> Any:
        """The cache's device as a `torch.device` (a torch-array cache only)."""
        return self.cache.torch_device

    def to_cache_kind(self, host: np.ndarray) -> Any:
        """`host` (numpy) as an array the cache takes: numpy, or a torch tensor on its device."""
        return _to_device(host, self.cache.device) if self.takes_torch else host

    def refresh(self, chunk_rows: int = 65536) -> int:
        """Re-read every cached key from the tiers and assign it in the cache; returns rows refreshed."""
        if self.cache is None or self._complete_table:
            return 0
        cached = self.cache.dump()
        for start in range(0, len(cached), chunk_rows):
            chunk = cached[start:start + chunk_rows]
            host_vectors, _ = self.tiers.fetch(self.table, _to_numpy(chunk), self.stats)
            self.cache.assign(chunk, _like(host_vectors, chunk))
        return len(cached)


_SIDE_STREAMS: dict[str, Any] = {}


def _side_stream(device: str) -> Any:
    """A context running CUDA work on this device's insert stream (created once; lookups keep
    theirs); a no-op context on the CPU. The seqlock in the GPU cache makes a racing lookup see
    the old row, the new row or a miss, never a torn row."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    import torch

    stream = _SIDE_STREAMS.get(device)
    if stream is None:
        stream = _SIDE_STREAMS.setdefault(device, torch.cuda.Stream(torch.device(device)))
    return torch.cuda.stream(stream)


def is_torch(x: Any) -> bool:
    """A torch tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch")


def _nonzero(mask: Any) -> Any:
    if is_torch(mask):
        return mask.nonzero().squeeze(1)
    return np.flatnonzero(mask)


def _unique_inverse(keys: Any) -> tuple[Any, Any]:
    if is_torch(keys):
        import torch

        return torch.unique(keys, return_inverse=True)
    return np.unique(keys, return_inverse=True)


def _to_numpy(x: Any) -> np.ndarray:
    if is_torch(x):
        return x.detach().cpu().numpy()
    return x


def _like(host: np.ndarray, like: Any) -> Any:
    """`host` as an array of the same kind and device as `like`."""
    return _to_device(host, like.device) if is_torch(like) else host


def _to_device(host: np.ndarray, device: Any) -> Any:
    """`host` (numpy) as a torch tensor on `device`."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(host)).to(device)
