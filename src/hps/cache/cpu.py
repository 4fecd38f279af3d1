"""`CpuEmbeddingCache`: HugeCTR's set-associative LRU embedding cache, in host memory.

Geometry and policy follow HugeCTR's `gpu_cache` (reference/hugectr-hps.md §2.9): the
capacity is a whole number of sets of `ways` slots (16 by default; HugeCTR's GPU sets hold 64);
a key lives in set `rrxmrrxmsx_0(key) % num_sets`; a full set evicts the slot with the
smallest last-use stamp, taken from a global clock that ticks once per key touched.

Slots of a set are kept packed: the `set_fill[s]` occupied slots of set s are its first
slots (erase moves the set's last row into the hole). Occupancy is therefore known without
an empty-key sentinel, and every int64 key (INT64_MAX included, which HugeCTR cannot cache)
is cacheable. Probes stop after the occupied slots.

Every batch call runs one numba kernel (`nogil`) under one lock, so a lookup never sees a
row that an insert is halfway through writing (no torn vectors) and calls from many
threads are safe; a large find splits its kernel over the cores (as the hash map's find does).
Inputs are validated before the kernel runs: a rejected call changes nothing.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

from hps.errors import ClosedError, KeyInputError
from hps.storage.base import check_keys
from hps.storage import hash_map
from hps.storage.hash_map_kernels import prefetch
from hps.storage.result_buffers import empty_float32
from hps.storage.partition import rrxmrrxmsx_0_scalar

#: Slots per set. HugeCTR's GPU sets hold 64 (2 slabs x 32, one warp compare each); on a CPU a probe
#: scans the set's keys, so 16 (two cache lines) keeps 90 % of a full cache's rows resident against
#: 95 % for 64, at half the probe time (benchmarks/results/cpu.md).
DEFAULT_WAYS = 16


@numba.njit(inline="always")
def _set_of(key: np.int64, num_sets: np.uint64) -> np.int64:
    return np.int64(rrxmrrxmsx_0_scalar(np.uint64(key)) % num_sets)


@numba.njit(inline="always")
def _slot_in_set(slot_keys, base, fill, key) -> np.int64:
    for j in range(fill):
        if slot_keys[base + j] == key:
            return base + j
    return -1


@numba.njit(inline="always")
def _locate(slot_keys, set_fill, ways, key):
    """`(set, its first slot, its fill, the slot holding key or -1)`."""
    s = _set_of(key, np.uint64(set_fill.shape[0]))
    base = s * ways
    fill = set_fill[s]
    return s, base, fill, _slot_in_set(slot_keys, base, fill, key)


@numba.njit(inline="always")
def _find_slot(slot_keys, set_fill, ways, key) -> np.int64:
    """The slot holding `key`, or -1."""
    s = _set_of(key, np.uint64(set_fill.shape[0]))
    return _slot_in_set(slot_keys, s * ways, set_fill[s], key)


@numba.njit(inline="always")
def _copy_row(dst, i, src, j) -> None:
    for d in range(dst.shape[1]):
        dst[i, d] = src[j, d]


#: Keys per prefetch block of `_find_kernel`.
_FIND_BLOCK = 64


@numba.njit(cache=True, nogil=True)
def _find_kernel(slot_keys, slot_vectors, slot_stamps, set_fill, clock, ways, keys, out, found):
    """Probe `keys: (n,) int64`; copy hits into `out: (n, dim) float32`, set `found: (n,) bool`,
    stamp hit slots with the clock. Returns the number of hits.

    Keys go in blocks: the block's sets are prefetched (fill count and slot keys), then probed
    (prefetching the rows and stamps found), then copied, so a block's cache misses overlap."""
    n = keys.shape[0]
    num_sets = np.uint64(set_fill.shape[0])
    dim = slot_vectors.shape[1]
    flat_vectors = slot_vectors.reshape(-1)
    sets = np.empty(_FIND_BLOCK, np.int64)
    slots = np.empty(_FIND_BLOCK, np.int64)
    tick = clock[0]
    hits = 0
    for start in range(0, n, _FIND_BLOCK):
        stop = min(n, start + _FIND_BLOCK)
        for i in range(start, stop):
            s = _set_of(keys[i], num_sets)
            sets[i - start] = s
            prefetch(set_fill, s)
            prefetch(slot_keys, s * ways)
            prefetch(slot_keys, s * ways + ways - 1)  # a set of 16 keys spans two lines
        for i in range(start, stop):
            s = sets[i - start]
            slot = _slot_in_set(slot_keys, s * ways, set_fill[s], keys[i])
            slots[i - start] = slot
            if slot >= 0:
                prefetch(flat_vectors, slot * dim)
                prefetch(slot_stamps, slot)
        for i in range(start, stop):
            slot = slots[i - start]
            if slot < 0:
                found[i] = False
                for d in range(dim):
                    out[i, d] = 0.0
                continue
            tick += 1
            if slot_stamps[slot] < tick:  # parts of a split find: a later part may have stamped it already
                slot_stamps[slot] = tick
            _copy_row(out, i, slot_vectors, slot)
            found[i] = True
            hits += 1
    clock[0] = tick
    return hits


@numba.njit(cache=True, nogil=True)
def _insert_or_assign_kernel(slot_keys, slot_vectors, slot_stamps, set_fill, clock, ways, keys, vectors):
    """Upsert `keys: (n,) int64` with `vectors: (n, dim) float32` in order (a repeated key is
    upserted twice, last value wins). A full set evicts its least recently stamped slot.
    Returns `(rows added, rows evicted)`.

    Keys go in blocks, as in `_find_kernel`: the block's sets are prefetched (fill, keys, stamps),
    then each key's slot is chosen in order (prefetching its row), then the rows are copied in
    order (a slot chosen twice in a block gets the later row, as its key says)."""
    n = keys.shape[0]
    num_sets = np.uint64(set_fill.shape[0])
    dim = slot_vectors.shape[1]
    flat_vectors = slot_vectors.reshape(-1)
    sets = np.empty(_FIND_BLOCK, np.int64)
    slots = np.empty(_FIND_BLOCK, np.int64)
    tick = clock[0]
    added = 0
    evicted = 0
    for start in range(0, n, _FIND_BLOCK):
        stop = min(n, start + _FIND_BLOCK)
        for i in range(start, stop):
            s = _set_of(keys[i], num_sets)
            sets[i - start] = s
            prefetch(set_fill, s)
            prefetch(slot_keys, s * ways)
            prefetch(slot_keys, s * ways + ways - 1)
            prefetch(slot_stamps, s * ways)
            prefetch(slot_stamps, s * ways + ways - 1)
        for i in range(start, stop):
            key = keys[i]
            s = sets[i - start]
            base = s * ways
            fill = set_fill[s]
            slot = _slot_in_set(slot_keys, base, fill, key)
            if slot < 0:
                if fill < ways:
                    slot = base + fill
                    set_fill[s] = fill + 1
                    added += 1
                else:
                    slot = base
                    oldest = slot_stamps[base]
                    for j in range(1, ways):
                        if slot_stamps[base + j] < oldest:
                            oldest = slot_stamps[base + j]
                            slot = base + j
                    evicted += 1
                slot_keys[slot] = key
            tick += 1
            slot_stamps[slot] = tick
            slots[i - start] = slot
            prefetch(flat_vectors, slot * dim)
            prefetch(flat_vectors, slot * dim + dim - 1)
        for i in range(start, stop):
            _copy_row(slot_vectors, slots[i - start], vectors, i)
    clock[0] = tick
    return added, evicted


@numba.njit(cache=True, nogil=True)
def _assign_kernel(slot_keys, slot_vectors, set_fill, ways, keys, vectors):
    """Overwrite the rows of the `keys` already cached; leave stamps alone. Returns the count."""
    assigned = 0
    for i in range(keys.shape[0]):
        slot = _find_slot(slot_keys, set_fill, ways, keys[i])
        if slot >= 0:
            _copy_row(slot_vectors, slot, vectors, i)
            assigned += 1
    return assigned


@numba.njit(cache=True, nogil=True)
def _erase_kernel(slot_keys, slot_vectors, slot_stamps, set_fill, ways, keys):
    """Remove the cached `keys`, moving each set's last row into the hole. Returns the count."""
    erased = 0
    for i in range(keys.shape[0]):
        s, base, fill, slot = _locate(slot_keys, set_fill, ways, keys[i])
        if slot < 0:
            continue
        last = base + fill - 1
        if slot != last:
            slot_keys[slot] = slot_keys[last]
            slot_stamps[slot] = slot_stamps[last]
            _copy_row(slot_vectors, slot, slot_vectors, last)
        slot_stamps[last] = 0
        set_fill[s] = fill - 1
        erased += 1
    return erased


class CpuEmbeddingCache:
    """Set-associative LRU cache of `capacity_rows` float32 rows of width `dim`, keyed by int64.

    `capacity_rows` is rounded up to whole sets of `ways` slots (at least one set); the
    rounded value is the `capacity_rows` attribute. Takes and returns numpy arrays.
    Memory: capacity_rows x (8 + 8 + 4 x dim) bytes."""

    device = "cpu"
    array_module = "numpy"

    def __init__(self, capacity_rows: int, dim: int, ways: int = DEFAULT_WAYS) -> None:
        for name, value in (("capacity_rows", capacity_rows), ("dim", dim), ("ways", ways)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
                raise KeyInputError(f"CpuEmbeddingCache: {name} must be a positive integer, got {value!r}")
        self.dim = int(dim)
        self.ways = int(ways)
        self.num_sets = -(-int(capacity_rows) // self.ways)
        self.capacity_rows = self.num_sets * self.ways
        self._slot_keys = np.zeros(self.capacity_rows, dtype=np.int64)
        self._slot_vectors = np.zeros((self.capacity_rows, self.dim), dtype=np.float32)
        self._slot_stamps = np.zeros(self.capacity_rows, dtype=np.int64)
        self._set_fill = np.zeros(self.num_sets, dtype=np.int64)
        self._clock = np.zeros(1, dtype=np.int64)
        self._size = 0
        self._evicted_rows = 0
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"CpuEmbeddingCache(capacity_rows={self.capacity_rows}, dim={self.dim}, ways={self.ways}, "
            f"num_sets={self.num_sets}, size={self._size})"
        )

    def _check_open(self, where: str) -> None:
        if self._closed:
            raise ClosedError(f"CpuEmbeddingCache.{where}: the cache is closed")

    def _vectors_array(self, vectors: object, num_keys: int, where: str) -> np.ndarray:
        array = np.asarray(vectors)
        if array.shape != (num_keys, self.dim):
            raise KeyInputError(
                f"CpuEmbeddingCache.{where}: vectors must have shape ({num_keys}, {self.dim}) for "
                f"{num_keys} keys of dim {self.dim}, got {array.shape}"
            )
        if array.dtype.kind not in "fiu":
            raise KeyInputError(f"CpuEmbeddingCache.{where}: vectors must be float32, got dtype {array.dtype}")
        return np.ascontiguousarray(array, dtype=np.float32)

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probe `keys: (n,) int64` (int32 accepted; duplicates allowed) and mark hits recently used.

        Returns `(vectors: (n, dim) float32, found: (n,) bool)`; rows of misses are zero."""
        vectors, found, _ = self.find_counted(keys)
        return vectors, found

    def find_counted(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """`find`, plus the number of hits: `(vectors: (n, dim) float32, found: (n,) bool, hits)`.

        A large batch is split over the cores as the hash map's find is (`hps.storage.hash_map`:
        `PARALLEL_FIND_KEYS`, `HPS_FIND_WORKERS`), under the cache's one lock: each part stamps its hits
        from its own stretch of the clock (the clock then advances by n, not by the hits), so the
        recency order is still the order of the keys."""
        keys = check_keys(keys, "CpuEmbeddingCache.find")
        n = keys.shape[0]
        out = empty_float32(n, self.dim)  # the kernel zeroes the misses' rows
        found = np.empty(n, dtype=np.bool_)
        with self._lock:
            self._check_open("find")
            if not n:
                return out, found, 0
            if n < hash_map.PARALLEL_FIND_KEYS:
                hits = _find_kernel(self._slot_keys, self._slot_vectors, self._slot_stamps, self._set_fill,
                                    self._clock, self.ways, keys, out, found)
                return out, found, int(hits)
            clock = int(self._clock[0])

            def find_part(part: slice) -> int:
                part_clock = np.array([clock + part.start], dtype=np.int64)  # stamps clock+start+1 ... ≤ clock+stop
                return int(_find_kernel(self._slot_keys, self._slot_vectors, self._slot_stamps, self._set_fill,
                                        part_clock, self.ways, keys[part], out[part], found[part]))

            hits = hash_map._on_all_cores(find_part, n)
            self._clock[0] = clock + n
        return out, found, hits

    def insert_or_assign(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or overwrite `keys: (n,) int64` with `vectors: (n, dim) float32`; a full set
        evicts its least recently used slot. Keys should be unique; a repeated key is written
        twice (the last row wins)."""
        keys = check_keys(keys, "CpuEmbeddingCache.insert_or_assign")
        vectors = self._vectors_array(vectors, keys.shape[0], "insert_or_assign")
        with self._lock:
            self._check_open("insert_or_assign")
            if keys.shape[0]:
                added, evicted = _insert_or_assign_kernel(
                    self._slot_keys, self._slot_vectors, self._slot_stamps, self._set_fill, self._clock,
                    self.ways, keys, vectors,
                )
                self._size += int(added)
                self._evicted_rows += int(evicted)

    def assign(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Overwrite the rows of `keys: (n,) int64` that are cached with `vectors: (n, dim)
        float32`; absent keys are ignored and recency is unchanged (online updates)."""
        keys = check_keys(keys, "CpuEmbeddingCache.assign")
        vectors = self._vectors_array(vectors, keys.shape[0], "assign")
        with self._lock:
            self._check_open("assign")
            if keys.shape[0]:
                _assign_kernel(self._slot_keys, self._slot_vectors, self._set_fill, self.ways, keys, vectors)

    def erase(self, keys: np.ndarray) -> None:
        """Remove `keys: (n,) int64` where cached; absent keys are ignored."""
        keys = check_keys(keys, "CpuEmbeddingCache.erase")
        with self._lock:
            self._check_open("erase")
            if keys.shape[0]:
                erased = _erase_kernel(
                    self._slot_keys, self._slot_vectors, self._slot_stamps, self._set_fill, self.ways, keys
                )
                self._size -= int(erased)

    def dump(self) -> np.ndarray:
        """All cached keys, `(size,) int64`, grouped by set."""
        with self._lock:
            self._check_open("dump")
            occupied = np.arange(self.ways)[None, :] < self._set_fill[:, None]
            return self._slot_keys.reshape(self.num_sets, self.ways)[occupied]

    def size(self) -> int:
        """Number of keys cached (≤ capacity_rows)."""
        with self._lock:
            self._check_open("size")
            return self._size

    @property
    def evicted_rows(self) -> int:
        """Rows evicted by insert_or_assign since creation (a statistic)."""
        return self._evicted_rows

    def close(self) -> None:
        """Free the cache memory; later calls raise `ClosedError`. Closing twice is allowed."""
        with self._lock:
            self._closed = True
            empty = np.zeros(0, dtype=np.int64)
            self._slot_keys = empty
            self._slot_stamps = empty
            self._set_fill = empty
            self._slot_vectors = np.zeros((0, self.dim), dtype=np.float32)
            self._size = 0
