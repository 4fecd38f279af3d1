"""The lookup of one table on one device: cache → misses, deduplicated → tiers → merge.

The cache is probed with the raw keys (duplicates allowed): a sort-based dedupe of every
batch costs more than the whole hit path, so only the misses are deduplicated
(DESIGN.md, data flow). `hit_rate_threshold` picks how misses are handled (reference §2.5):
below it, synchronously (exact values); at or above it, this batch gets the default value
for its misses and the insert runs in the background.

Arrays are numpy for the CPU cache and torch tensors on the cache's device for the GPU
cache; the tiers always work on host numpy arrays. With a GPU cache, everything that crosses
PCIe (numpy keys and their vectors, the deduplicated misses and their rows) goes through the
replica's reusable pinned buffers (`hps.lookup.transfers`); dedupe and merge stay on the GPU.
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
from hps.lookup.cache_route import CacheRoute
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
        self._device_index: int | None = None  # the cache's CUDA device (torch tensors on it skip the checks)
        self._staging: Any = None  # the GPU cache's pinned buffers (`transfers.StagingPool`), made on first use
        if self.takes_torch and cache.torch_device.type == "cuda":
            import torch

            self._tensor, self._int64, self._strided = torch.Tensor, torch.int64, torch.strided
            self._device_index = cache.torch_device.index
        #: A host cache is skipped while the tiers answer faster without it (`hps.lookup.cache_route`).
        self.route = CacheRoute() if cache is not None and not self.takes_torch and not self._complete_table else None

    def takes_as_is(self, keys: Any) -> bool:
        """Whether `keys` need no conversion: a dense, contiguous, 1-D int64 torch tensor on this replica's
        GPU of at most `max_keys` keys (the hot path of CUDA keys; a few attribute reads)."""
        return (self._device_index is not None and type(keys) is self._tensor and keys.dtype is self._int64
                and keys.is_cuda and keys.layout is self._strided and keys.dim() == 1 and keys.is_contiguous()
                and keys.get_device() == self._device_index and keys.shape[0] <= self.max_keys)

    def lookup(self, keys: Any, out: Any = None) -> Any:
        """Vectors for flat `keys: (n,) int64` (numpy, or torch on the cache's device).

        Returns `(n, dim) float32` of the same array kind and device. `out`: an `(n, dim) float32`
        array of that kind and device (C-contiguous) to write every row into; it is returned."""
        start = time.perf_counter()
        route = self.route
        if self.cache is None or (route is not None and not route.use_cache()):
            host_out = out if type(out) is np.ndarray and type(keys) is np.ndarray else None  # filled in place
            vectors, source = self.tiers.fetch(self.table, _to_numpy(keys), self.stats, host_out)
            seconds = time.perf_counter() - start
            self.stats.record(_level_counts(source), seconds)
            if route is not None:
                route.record(False, len(keys), seconds)
            return _into(_like(vectors, keys), out)
        if self.takes_torch:  # GPU caches write straight into `out`
            if self._find_counted is not None:  # probe and count in one call (graph replay for small batches)
                vectors, found, num_hits = self._find_counted(keys, out)
            else:
                vectors, found = self.cache.find(keys, out=out)
                num_hits = int(found.sum())
        elif self._find_counted is not None:  # the whole-table CPU cache
            vectors, found, num_hits = self._find_counted(keys)
        else:
            vectors, found = self.cache.find(keys)
            num_hits = int(np.count_nonzero(found))
        probed = time.perf_counter()
        if num_hits == len(keys):
            seconds = probed - start
            self.stats.record_cache_hits(num_hits, seconds)
            if route is not None:
                route.record(True, num_hits, seconds)
            return _into(vectors, out)
        level_hits = np.zeros(len(LEVELS), dtype=np.int64)
        level_hits[CACHE] = num_hits
        miss_positions = _nonzero(~found)
        num_misses = len(keys) - num_hits
        if self._complete_table or num_hits >= self.model.hit_rate_threshold * len(keys):
            vectors[miss_positions] = self.table.default_value
            level_hits[DEFAULT] = num_misses
            if not self._complete_table:
                self._insert_in_background(keys[miss_positions])
        elif self.takes_torch:
            level_hits += self._fetch_misses_gpu(keys, vectors, miss_positions)
        else:
            miss_keys, inverse = _unique_inverse(keys[miss_positions])
            host_vectors, source = self.tiers.fetch(self.table, miss_keys, self.stats)
            self.cache.insert_or_assign(miss_keys, host_vectors)
            vectors[miss_positions] = host_vectors[inverse]
            level_hits += np.bincount(source[inverse], minlength=len(LEVELS))
        seconds = time.perf_counter() - start
        self.stats.record(level_hits, seconds, probed - start)
        if route is not None:
            route.record(True, len(keys), seconds)
        return _into(vectors, out)

    def _fetch_misses_gpu(self, keys: Any, vectors: Any, miss_positions: Any) -> np.ndarray:
        """Fill `vectors[miss_positions]` (GPU) from the tiers and insert the rows into the cache: the misses
        are deduplicated on the GPU, their keys cross PCIe once into pinned memory, the tiers write their
        rows straight into pinned memory (no host copy), one DMA takes them to the GPU, and the merge is a
        GPU scatter. Returns the per-level counts of the missed keys."""
        import torch

        miss_keys, inverse = torch.unique(keys[miss_positions], return_inverse=True)
        with self.staging().take() as staging:
            host_keys = staging.small_to_host(miss_keys)
            host_rows = staging.rows_buffer(host_keys.shape[0], self.table.dim)
            _, source = self.tiers.fetch(self.table, host_keys, self.stats, host_rows)
            fetched = staging.rows_to_device(host_rows)
            self.cache.insert_or_assign(miss_keys, fetched)
            vectors[miss_positions] = fetched[inverse]
            first = int(source[0])
            if not (source != first).any():  # one level answered every key (the usual case): count on the host
                counts = np.zeros(len(LEVELS), dtype=np.int64)
                counts[first] = miss_positions.shape[0]
                return counts
            source_dev = torch.from_numpy(source).to(fetched.device, non_blocking=False)
            counts = torch.bincount(source_dev[inverse].to(torch.int64), minlength=len(LEVELS))
        return counts.cpu().numpy().astype(np.int64)

    def staging(self) -> Any:
        """This replica's pinned-buffer pool (`hps.lookup.transfers.StagingPool`; GPU caches only)."""
        if self._staging is None:
            from hps.lookup.transfers import StagingPool

            self._staging = StagingPool(self.cache.torch_device)
        return self._staging

    def lookup_host(self, keys: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Vectors of host `keys: (n,) int64` (numpy) through the GPU cache, returned in host memory:
        `out` (an `(n, dim) float32` C-contiguous numpy array, filled and returned) or a new array.
        The keys go to the GPU and the vectors come back through the replica's pinned buffers."""
        n = keys.shape[0]
        if out is None:
            out = np.empty((n, self.table.dim), dtype=np.float32)
        if n == 0:
            return out
        with self.staging().take() as staging:
            vectors = self.lookup(staging.keys_to_device(keys))
            staging.to_host(vectors, out)
        return out

    def vectors_to_host(self, vectors: Any, out: np.ndarray) -> np.ndarray:
        """Copy `vectors: (n, dim) float32` on the cache's device into `out` (numpy, same size) through
        the replica's pinned buffers; returns `out`."""
        if vectors.shape[0]:
            with self.staging().take() as staging:
                staging.to_host(vectors, out)
        return out

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


def _level_counts(source: np.ndarray) -> np.ndarray:
    """Keys per level of `source: (n,) uint8` as `(len(LEVELS),) int64`: one compare per level, since
    `np.bincount` first widens the levels to int64 (2 ms of serial work in a 1 M-key lookup whose find
    is split over the cores)."""
    return np.array([np.count_nonzero(source == level) for level in range(len(LEVELS))], dtype=np.int64)


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


def _into(vectors: Any, out: Any) -> Any:
    """`vectors`, copied into `out` unless `out` is None or already is `vectors`."""
    if out is None or out is vectors:
        return vectors
    if is_torch(out):
        out.copy_(vectors)
    else:
        np.copyto(out, vectors)
    return out


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


def checked_out(out: Any, shape: tuple, dim: int, where: str) -> Any:
    """The caller's `out` for vectors of keys of shape `shape`, viewed as `(n, dim)`: a numpy array for
    host memory (a CPU torch tensor becomes a numpy view of it), a torch tensor for GPU memory.

    `out` must be float32, C-contiguous, writable (no autograd), of shape `shape + (dim,)`, a numpy array
    or a strided torch tensor on the CPU or a GPU; otherwise `KeyInputError` naming `where`, and nothing
    is written."""
    from hps.errors import KeyInputError

    want = (*shape, dim)
    if type(out) is np.ndarray:
        flags = out.flags
        if out.dtype == np.float32 and out.shape == want and flags.c_contiguous and flags.writeable:
            return out.reshape(-1, dim)
        got = f"numpy {out.dtype} {out.shape}" + ("" if flags.c_contiguous else ", not C-contiguous") + (
            "" if flags.writeable else ", read-only")
    elif is_torch(out) and hasattr(out, "is_contiguous"):
        import torch

        if (out.dtype is torch.float32 and tuple(out.shape) == want and out.layout is torch.strided
                and out.device.type in ("cpu", "cuda") and out.is_contiguous() and not out.requires_grad):
            flat = out.view(-1, dim)
            return flat.numpy() if out.device.type == "cpu" else flat
        got = (f"torch {out.dtype} {tuple(out.shape)} on {out.device}" + ("" if out.is_contiguous() else ", not contiguous")
               + (", requires grad" if out.requires_grad else ""))
    else:
        got = type(out).__name__
    raise KeyInputError(f"{where}: out must be a C-contiguous, writable float32 array of shape {want} (numpy, or a "
                        f"torch tensor on the CPU or a GPU), got {got}")


def lookup_into(replica: TableLookup, keys: Any, out: Any) -> None:
    """Look up flat `keys: (n,) int64` (numpy, or torch on any device) on `replica` and write the vectors
    into `out: (n, dim) float32` (a `checked_out` view: numpy in host memory or a CUDA tensor): GPU caches
    write a same-device `out` directly and a host `out` through pinned buffers; nothing of the vectors'
    size is allocated except on the device, or when `out` is on another device than the cache."""
    if replica.takes_torch:
        device = replica.torch_device
        if is_torch(keys):
            dev_keys = keys if keys.device == device else keys.to(device)
        elif is_torch(out) or keys.shape[0] == 0:
            dev_keys = _to_device(keys, device)
        else:
            replica.lookup_host(keys, out)  # host keys, host out: pinned both ways
            return
        if not is_torch(out):
            replica.vectors_to_host(replica.lookup(dev_keys), out)
        elif out.device == device:
            replica.lookup(dev_keys, out)
        else:
            out.copy_(replica.lookup(dev_keys))
        return
    host_keys = _to_numpy(keys)
    if is_torch(out):
        import torch

        out.copy_(torch.from_numpy(replica.lookup(host_keys)))
    else:
        replica.lookup(host_keys, out)
