"""`GpuWholeTableCache`: a dynamic GPU cache as large as its table (gpucacheper ≥ 1), which never
loses a key to a set collision.

HugeCTR's set-associative cache at gpucacheper 1.0 keeps only ~85 % of the table (its sets overflow,
HugeCTR #278), and so does a bucketed cache at any load short of a few percent: every lookup of a
few thousand keys then has some miss and pays a host round trip. When the whole table fits, hps
uses this cache instead: the static tables' linear-probing index (load ≤ 0.5, exact) over
`capacity_rows` device rows that inserts fill in order. Once full, further new keys are not cached
(they are served from the tiers, as misses); erased rows are reused.

Lookups are one Triton probe (`static_find_kernel`), replayed from a CUDA graph per batch size with
its hit count. Writes (inserts, assigns, erases: start-up pre-fill, promoted misses, online updates)
run under the cache's lock with the device synchronized before and after, so no lookup overlaps a
write: a lookup sees every row whole, old or new.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from hps.cache.gpu_graphs import FindGraphs, find_counted_eager, synchronize
from hps.cache.gpu_static import _WholeTable, interpreting, normalize_device, pow2
from hps.errors import ConfigError, KeyInputError, require

torch = require("torch", "gpu")
K = require("hps.cache.gpu_kernels", "gpu")

#: Index positions used (live keys and erased ones) above which the index is rebuilt from the live keys.
MAX_INDEX_LOAD = 0.75


class GpuWholeTableCache(_WholeTable):
    """A key → vector cache of `capacity_rows` rows in device memory (`EmbeddingCache` protocol, torch
    tensors) with an exact index: every inserted key stays until erased, up to `capacity_rows` keys."""

    read_only = False

    def __init__(self, capacity_rows: int, dim: int, device: str = "cuda:0", *,
                 storage_dtype: Any = torch.float32) -> None:
        who = "GpuWholeTableCache"
        if not isinstance(capacity_rows, int) or capacity_rows < 1:
            raise ConfigError(f"{who}: capacity_rows must be a positive int, got {capacity_rows!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"{who}: dim must be a positive int, got {dim!r}")
        self.device = normalize_device(device, who)
        self.torch_device = torch.device(self.device)
        self._who = who
        self.dim = dim
        self.capacity_rows = self.hot_rows = capacity_rows  # every row on the device
        self.default_value = 0.0
        self._interpret = interpreting()
        self._lock = threading.RLock()  # reentrant: a graph capture runs `find` under it
        self._closed = False
        self._dev_rows = torch.zeros((capacity_rows, dim), dtype=storage_dtype, device=self.device)
        self._host_rows = torch.zeros((1, dim), dtype=storage_dtype, device=self.device)  # no host tier: unread
        self.fp8_quant = False  # fp8 applies to static and uvm tables only (as HugeCTR: static)
        self._scales = torch.ones(1, dtype=torch.float32, device=self.device)  # unread
        self._empty_index(max(64, 2 * capacity_rows))
        self._index_used = 0  # index positions holding a key, live or erased
        self._next_row = 0  # rows [0, _next_row) have been handed out
        self._free_rows: list[np.ndarray] = []  # erased rows, handed out again first
        self._live = 0
        # H200, dim 16: 64 keys / 2 warps per program beat 256 / 4 (13.5 vs 11.7 G keys/s at 1M keys, 73 vs
        # 96 µs for 26,624 keys host-synced): a program waits for its longest linear probe
        self.find_block = max(8, min(64, 4096 // pow2(dim)))
        self.find_warps = 2 if pow2(dim) <= 64 else 4
        self._graphs = FindGraphs(self.find, self.torch_device, dim)

    # ---- lookups ----
    def find_counted(self, keys: Any, out: Any = None) -> tuple[Any, Any, int]:
        """`find` plus the number of hits, as `(vectors, found | None, num_found)` (host-synchronizing;
        `found` is None when every key was found; `vectors` is `out` when given); a CUDA-graph replay per
        batch size on a GPU for small batches, large ones straight into the result."""
        keys = self._check_keys(keys, "find")
        if self._interpret or keys.shape[0] == 0 or self.torch_device.type != "cuda":
            return find_counted_eager(self.find, keys, out)
        with self._lock:  # no replay while a write runs
            return self._graphs(keys, out)

    # ---- writes ----
    def _checked(self, keys: Any, vectors: Any, op: str) -> tuple[Any, Any]:
        keys = self._check_keys(keys, op)
        if (not isinstance(vectors, torch.Tensor) or vectors.device != self.torch_device
                or tuple(vectors.shape) != (keys.shape[0], self.dim) or not vectors.is_floating_point()):
            got = (f"{vectors.dtype} {tuple(vectors.shape)} on {vectors.device}" if isinstance(vectors, torch.Tensor)
                   else type(vectors).__name__)
            raise KeyInputError(f"{self._who}.{op}: vectors must be a floating ({keys.shape[0]}, {self.dim}) tensor "
                                f"on {self.device}, got {got}")
        return keys, vectors

    def _sync(self) -> None:
        if self.torch_device.type == "cuda":
            synchronize(self.torch_device)

    def insert_or_assign(self, keys: Any, vectors: Any) -> None:
        """Insert or overwrite `keys: (n,) int64` with `vectors: (n, dim)`; for repeated keys the last
        row wins. New keys beyond `capacity_rows` live keys are not cached."""
        self._write(keys, vectors, "insert_or_assign", insert=True)

    def assign(self, keys: Any, vectors: Any) -> None:
        """Overwrite present `keys: (n,) int64` with `vectors: (n, dim)`; absent keys are ignored."""
        self._write(keys, vectors, "assign", insert=False)

    def _write(self, keys: Any, vectors: Any, op: str, insert: bool) -> None:
        keys, vectors = self._checked(keys, vectors, op)
        if keys.shape[0] == 0:
            return
        with self._lock:
            self._sync()
            keys, vectors = _last_occurrences(keys, vectors)
            rows = self._row_numbers(keys)
            present = rows >= 0
            self._dev_rows[rows[present]] = vectors[present].to(self._dev_rows.dtype)
            take = min(int((~present).sum()), self.capacity_rows - self._live) if insert else 0
            if take > 0:
                self._add(keys[~present][:take], vectors[~present][:take])
            self._sync()

    def _add(self, keys: Any, vectors: Any) -> None:
        """Give distinct keys that hold no row a row each (enough rows are free)."""
        self._live += keys.shape[0]
        rows = torch.from_numpy(self._take_rows(keys.shape[0])).to(self.device)
        self._dev_rows[rows] = vectors.to(self._dev_rows.dtype)
        special = keys == K.EMPTY
        if bool(special.any()):
            self._special_idx[0] = rows[special][0]
            keys, rows = keys[~special], rows[~special]
        slots = self._slots_of(keys)
        erased = slots >= 0  # an erased key keeps its index position: revive it
        self._sidx[slots[erased]] = rows[erased].to(torch.int32)
        fresh_keys, fresh_rows = keys[~erased], rows[~erased]
        if self._index_used + fresh_keys.shape[0] > MAX_INDEX_LOAD * self.num_slots:
            self._rebuild_index()
        self._place(fresh_keys, fresh_rows)
        self._index_used += fresh_keys.shape[0]

    def _take_rows(self, m: int) -> np.ndarray:
        """`m` free row numbers: erased ones first, then never used ones."""
        free = np.concatenate(self._free_rows) if self._free_rows else np.zeros(0, np.int64)
        reused, rest = free[:m], free[m:]
        self._free_rows = [rest] if rest.size else []
        fresh = np.arange(self._next_row, self._next_row + m - reused.size, dtype=np.int64)
        self._next_row += fresh.size
        return np.concatenate([reused, fresh])

    def _rebuild_index(self) -> None:
        """Drop erased keys from the index (in place: captured graphs keep their addresses)."""
        live = self._sidx >= 0
        keys, rows = self._skeys[live], self._sidx[live]
        self._skeys.fill_(K.EMPTY)
        self._sidx.fill_(-1)
        self._place(keys, rows)
        self._index_used = int(keys.shape[0])

    def erase(self, keys: Any) -> None:
        """Remove `keys: (n,) int64` if present; their rows are reused by later inserts."""
        keys = self._check_keys(keys, "erase")
        if keys.shape[0] == 0:
            return
        with self._lock:
            self._sync()
            keys = torch.unique(keys)
            rows = self._row_numbers(keys)
            present = rows >= 0
            if bool((keys[present] == K.EMPTY).any()):
                self._special_idx[0] = -1
            slots = self._slots_of(keys[present])
            self._sidx[slots[slots >= 0]] = -1
            freed = rows[present].cpu().numpy()
            self._free_rows.append(freed)
            self._live -= int(freed.size)
            self._sync()

    # ---- contents ----
    def dump(self) -> Any:
        """All cached keys, `(m,) int64` on the device (host-synchronizing)."""
        self._check_keys(torch.zeros(0, dtype=torch.int64, device=self.device), "dump")
        keys = self._skeys[self._sidx >= 0]
        if int(self._special_idx[0]) >= 0:
            keys = torch.cat([keys, torch.full((1,), K.EMPTY, dtype=torch.int64, device=self.device)])
        return keys

    def size(self) -> int:
        """Number of cached keys."""
        return self._live

    def close(self) -> None:
        """Free the device memory; later calls raise `ClosedError`. Idempotent."""
        super().close()
        self._graphs = None

    def memory_bytes(self) -> int:
        """Device bytes held: the rows plus 12 B (key, row number) per index position."""
        return self._dev_rows.numel() * self._dev_rows.element_size() + self.num_slots * 12


def _last_occurrences(keys: Any, vectors: Any) -> tuple[Any, Any]:
    """`keys` without repeats, each with the vector of its last occurrence (the row a sequential
    insert would leave)."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    if unique.shape[0] == keys.shape[0]:
        return keys, vectors
    position = torch.arange(keys.shape[0], device=keys.device)
    last = torch.full((unique.shape[0],), -1, dtype=torch.int64, device=keys.device)
    last = last.scatter_reduce(0, inverse, position, reduce="amax")
    return keys[last], vectors[last]
