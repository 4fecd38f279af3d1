"""The in-process CPU hash map tier: `volatile_db.type` hash_map / parallel_hash_map.

One compiled open-addressing table per embedding table (`hps.storage.hash_map_kernels`):
16-byte slots (key, row, uint32 access metadata) probed linearly, values in one contiguous
float32 slab. The HugeCTR partition (`rrxmrrxmsx_0(key) % num_partitions`) is kept only for
overflow accounting: `overflow_margin` rows per partition, so `overflow_margin × num_partitions`
per table, evicted per partition down to `round(overflow_margin × overflow_resolution_target)`
by the configured policy (random, least used, oldest).

Memory: slots at load 0.5–0.75 (21–32 B per row) plus the slab (4·dim B per row, grown by
1/8 at a time or to the exact batch size), so at most ~1.45× the raw 8 + 4·dim bytes at dim 16
and ~1.2× at dim 128 (HugeCTR's per-entry overhead reached 10×, issue #412). That is per row of
capacity: rows freed by erase or eviction stay allocated for reuse (the table never shrinks).
Below dim ~8 the 16-byte slot alone passes 1.5× the raw size. A table whose keys form one
near-contiguous range (at most 2 keys of range per row) also gets a direct index once its keys
stop changing: 4 bytes per key of the range (≤ 8 B per row), one array read per find instead of
a hash probe (`_DenseIndex`); none at all when the rows were inserted in key order (the row is
then computed from the key).

Thread safety: one readers–writer lock per table; finds share it (the kernels release the GIL
and run in parallel), inserts / erases / evictions take it exclusively, so no reader ever sees a
torn row. A large find is itself split over every core (`PARALLEL_FIND_KEYS`; `HPS_FIND_WORKERS` or
`FIND_WORKERS` caps the cores, e.g. 1 for one core per find), but only over the cores no other large
find holds, so concurrent callers do not oversubscribe the machine; under the LFU / LRU policies the
parts may race on one key's access metadata, which then counts one access too few.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Iterator

import numpy as np

from hps.config.schema import HashMapConfig
from hps.errors import BackendError, ClosedError, ConfigError
from hps.storage import hash_map_kernels as K
from hps.storage.base import check_keys, check_vectors
from hps.storage.result_buffers import empty_float32

#: Grow the slot array when the load would pass this.
MAX_LOAD = 0.75
#: Slot array growth factor (load falls to MAX_LOAD / SLOT_GROWTH = 0.5 after a resize).
SLOT_GROWTH = 1.5
#: Load a resize aims at when a single batch needs more than SLOT_GROWTH allows.
BATCH_LOAD = 0.6
#: Slab growth factor when a batch fits within it (keeps slab slack ≤ 12.5 %).
ROW_GROWTH = 1.125
MIN_SLOTS = 64
MIN_ROWS = 32
#: Row indices are uint32 in the slots and int32 in the free list.
MAX_ROWS = 2**31 - 1
_CLOCK_MAX = 2**32 - 2
_NO_MARGIN = 2**62
_ALIGN_BYTES = 64
#: Tables up to this size (slots + rows) are probed in long blocks: they stay in the CPU caches.
_CACHE_RESIDENT_BYTES = 4 << 20
#: Direct-index finds of at least this many keys on a table beyond `_CACHE_RESIDENT_BYTES` use the
#: prefetching `gather_rows` instead of numpy's take.
_GATHER_MIN_KEYS = 256
#: A table whose keys span at most this many values per row gets a direct index (see `_DenseIndex`)
#: once this many finds in a row saw no key added or removed.
_DENSE_SPAN_PER_ROW = 2
_DENSE_QUIET_FINDS = 4
#: A find of at least this many keys is split over several cores (the kernels release the GIL); below it,
#: handing parts to threads costs more than it saves (benchmarks/results/cpu-miss-path.md, all_cores). Each
#: part gets at least half of it.
PARALLEL_FIND_KEYS = 1 << 16
#: A split find cuts its keys into up to this many chunks per thread (each at least half the split size),
#: taken by the threads in turn, so a thread slowed by another process's job takes fewer of them.
CHUNKS_PER_WORKER = 4
#: Environment variable capping the cores one find is split over (a positive integer; unset: every core).
FIND_WORKERS_ENV = "HPS_FIND_WORKERS"
#: The same cap set at run time (`hps.storage.hash_map.FIND_WORKERS = 1`), over the environment variable;
#: None: the variable, else every core this process may run on.
FIND_WORKERS: int | None = None
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
#: Cores taken by the large finds in progress (each caller's own thread and its parts in the pool): a find
#: is split only over the cores no other find holds, so T concurrent callers never run more than
#: max(T, workers) find threads at once.
_busy_cores = 0


def find_workers() -> int:
    """The cores one large find may be split over now: `FIND_WORKERS`, else `HPS_FIND_WORKERS`, else
    every core of this process's CPU affinity. Raises `ConfigError` naming a bad setting."""
    setting: object = FIND_WORKERS
    where = "hps.storage.hash_map.FIND_WORKERS"
    if setting is None:
        setting = os.environ.get(FIND_WORKERS_ENV) or None
        where = f"environment variable {FIND_WORKERS_ENV}"
    if setting is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        workers = int(setting)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        workers = 0
    if isinstance(setting, bool) or workers < 1 or (isinstance(setting, float) and not setting.is_integer()):
        raise ConfigError(f"{where} must be a positive integer (cores one hash-map find may use), got {setting!r}")
    return workers


def _on_all_cores(find_part: Callable[[slice], int], n: int, split_from: int = PARALLEL_FIND_KEYS) -> int:
    """Run `find_part` over `n` keys; for `n` ≥ `split_from`, on one thread per core that no other large find
    holds (at most `find_workers()`), the caller's included, each taking contiguous chunks of at least
    `split_from // 2` keys in turn (in any order); returns the sum of what the calls return (keys found)."""
    global _pool, _busy_cores
    if n < split_from:  # most lookups: no system call, no threads, no accounting
        return find_part(slice(0, n))
    workers = find_workers()
    with _pool_lock:
        parts = max(1, min(workers - _busy_cores, n // (split_from // 2)))
        _busy_cores += parts
        if parts > 1 and _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(workers, os.cpu_count() or 1), thread_name_prefix="hps-find")
        pool = _pool
    try:
        if parts == 1:
            return find_part(slice(0, n))
        # more chunks than threads, taken in turn: a thread whose core another process's job shares takes fewer
        chunks = max(parts, min(CHUNKS_PER_WORKER * parts, n // (split_from // 2)))
        bounds = np.linspace(0, n, chunks + 1).astype(np.int64).tolist()
        next_chunk = itertools.count()  # its next() is atomic: each chunk is taken once

        def work() -> int:
            found = 0
            while (c := next(next_chunk)) < chunks:
                found += find_part(slice(bounds[c], bounds[c + 1]))
            return found

        futures = [pool.submit(work) for _ in range(parts - 1)]
        try:
            found = work()  # the caller's thread works too
        finally:
            wait(futures)  # no chunk may still be written into the result once the caller has it
        return found + sum(f.result() for f in futures)
    finally:
        with _pool_lock:
            _busy_cores -= parts


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation).

    `with lock.read():` / `with lock.write():`. The reader's way in and out is a plain mutex
    round trip when no writer is around (a find pays it twice per call, so it is kept lean)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._read = _ReadSide(self)
        self._write = _WriteSide(self)

    def read(self) -> "_ReadSide":
        return self._read

    def write(self) -> "_WriteSide":
        return self._write


class _Side:
    """What `with` enters: one side (read or write) of a `_ReadWriteLock`."""

    __slots__ = ("_rw",)

    def __init__(self, rw: _ReadWriteLock) -> None:
        self._rw = rw


class _ReadSide(_Side):
    __slots__ = ()

    def __enter__(self) -> None:
        rw = self._rw
        with rw._mutex:
            while rw._writer or rw._writers_waiting:
                rw._cond.wait()
            rw._readers += 1

    def __exit__(self, *exc: object) -> None:
        rw = self._rw
        with rw._mutex:
            rw._readers -= 1
            if rw._readers == 0 and rw._writers_waiting:
                rw._cond.notify_all()


class _WriteSide(_Side):
    __slots__ = ()

    def __enter__(self) -> None:
        rw = self._rw
        with rw._mutex:
            rw._writers_waiting += 1
            while rw._writer or rw._readers:
                rw._cond.wait()
            rw._writers_waiting -= 1
            rw._writer = True

    def __exit__(self, *exc: object) -> None:
        rw = self._rw
        with rw._mutex:
            rw._writer = False
            rw._cond.notify_all()


def _aligned_empty(count: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """`(buffer, view)`: an uninitialised `(count,)` array of `dtype` starting on a 64-byte boundary
    (one cache line per 64-byte row or slot group), and the buffer that owns it."""
    itemsize = np.dtype(dtype).itemsize
    buf = np.empty(count + _ALIGN_BYTES // itemsize, dtype=dtype)
    offset = (-buf.ctypes.data % _ALIGN_BYTES) // itemsize
    return buf, buf[offset:offset + count]


def _aligned_slab(rows: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A `(rows, dim) float32` value slab on a 64-byte boundary, and the buffer that owns it."""
    buf, flat = _aligned_empty(rows * dim, np.float32)
    return buf, flat.reshape(rows, dim)


def _output(tag: str, out: np.ndarray | None, num_keys: int, dim: int) -> np.ndarray:
    """`out` checked to be a writable C-contiguous `(num_keys, dim) float32` array, or a new one."""
    if out is None:
        return empty_float32(num_keys, dim)  # large results on recycled memory
    if (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (num_keys, dim)
            or not out.flags.c_contiguous or not out.flags.writeable):
        got = (f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__)
        raise BackendError(f"hash map: table {tag}: out must be a writable C-contiguous ({num_keys}, {dim}) "
                           f"float32 array for {num_keys} keys, got {got}")
    return out


def _empty_slots(num_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """A 64-byte-aligned `(2 * num_slots,) uint64` slot array, every slot empty, and its buffer."""
    buf, slots = _aligned_empty(2 * num_slots, np.uint64)
    slots[:] = K.EMPTY_WORD
    return buf, slots


class _Table:
    """State of one table: slots, slab, counters and its lock (mutated under `lock.write()`)."""

    def __init__(self, tag: str, dim: int, num_partitions: int) -> None:
        self.tag = tag
        self.dim = dim
        self.lock = _ReadWriteLock()
        self.num_slots = MIN_SLOTS
        self.slots_buf, self.slots = _empty_slots(MIN_SLOTS)
        self.buf, self.values = _aligned_slab(MIN_ROWS, dim)
        self.values_i32 = self.values.view(np.int32)
        # size, high-water row, free-list head, free-list length
        self.state = np.array([0, 0, -1, 0], dtype=np.int64)
        self.part_counts = np.zeros(num_partitions, dtype=np.int64)
        self.clock = 1
        #: Bounds of the keys, for the direct index's cheap pre-check; loose after erases.
        self.key_min: int | None = None
        self.key_max: int | None = None
        self.bounds_loose = False
        #: Bumped by every write that adds or removes keys; `dense` is valid for `dense_changes`.
        self.key_changes = 0
        self.quiet_finds = 0
        self.dense: _DenseIndex | None = None
        self.dense_changes = -1
        self.dense_lock = threading.Lock()

    @property
    def size(self) -> int:
        return int(self.state[K.ST_SIZE])

    @property
    def capacity_rows(self) -> int:
        return self.values.shape[0]

    def free_rows(self) -> int:
        return self.capacity_rows - int(self.state[K.ST_HWM]) + int(self.state[K.ST_FREE_COUNT])

    def memory_bytes(self) -> int:
        dense = self.dense.nbytes if self.dense is not None else 0
        return self.slots_buf.nbytes + self.buf.nbytes + self.part_counts.nbytes + self.state.nbytes + dense

    def note_inserted(self, keys: np.ndarray) -> None:
        """Widen the key bounds to `keys` (a batch about to be inserted)."""
        low, high = int(keys.min()), int(keys.max())
        self.key_min = low if self.key_min is None else min(self.key_min, low)
        self.key_max = high if self.key_max is None else max(self.key_max, high)

    def note_key_change(self, removed: bool = False) -> None:
        """Keys were added or removed: the direct index is stale (writers hold the write lock)."""
        self.bounds_loose |= removed
        self.key_changes += 1
        self.quiet_finds = 0
        self.dense = None

    def dense_index(self) -> "_DenseIndex | None":
        """The direct index, (re)built once the keys have been stable for a few finds; None for
        tables whose keys are not a near-contiguous range. Callers hold the read lock."""
        if self.dense_changes == self.key_changes:
            return self.dense
        self.quiet_finds += 1
        if self.quiet_finds < _DENSE_QUIET_FINDS:
            return None
        with self.dense_lock:
            if self.dense_changes != self.key_changes:
                self.dense = _DenseIndex.build(self)
                self.dense_changes = self.key_changes
        return self.dense

    def tick(self) -> int:
        """Advance and return the logical clock (LRU 'last access')."""
        if self.clock < _CLOCK_MAX:
            self.clock += 1
        return self.clock

    def write_clock(self, meta_mode: int) -> int:
        """The stamp of a write under the write lock: the advanced clock in `META_CLOCK` mode (every stamp
        halved first when the clock is near its limit), else 0."""
        if self.clock >= _CLOCK_MAX:
            K.halve_meta(self.slots, self.num_slots)
            self.clock //= 2
        return self.tick() if meta_mode == K.META_CLOCK else 0

    def reserve(self, new_rows: int) -> None:
        """Make room for `new_rows` more live rows: slab rows and slots (load ≤ MAX_LOAD).

        Raises `BackendError` naming the table when the memory cannot be allocated (nothing changed)."""
        try:
            self._grow(new_rows)
        except MemoryError as exc:
            raise BackendError(f"table {self.tag}: out of memory growing to {self.size + new_rows} rows of "
                               f"dim {self.dim} (now {self.memory_bytes()} bytes)") from exc

    def _grow(self, new_rows: int) -> None:
        live = self.size + new_rows
        if live > MAX_ROWS:
            raise BackendError(f"table {self.tag}: {live} rows exceed the hash map limit of {MAX_ROWS}")
        missing = new_rows - self.free_rows()
        if missing > 0:
            cap = self.capacity_rows
            new_cap = min(MAX_ROWS, max(cap + missing, math.ceil(cap * ROW_GROWTH), MIN_ROWS))
            buf, values = _aligned_slab(new_cap, self.dim)
            hwm = int(self.state[K.ST_HWM])
            values[:hwm] = self.values[:hwm]
            self.buf, self.values, self.values_i32 = buf, values, values.view(np.int32)
        if live > MAX_LOAD * self.num_slots:
            new_slots = max(math.ceil(live / BATCH_LOAD), math.ceil(self.num_slots * SLOT_GROWTH))
            new_slots = -(-new_slots // K.GROUP) * K.GROUP
            if new_slots >= 2**32:
                raise BackendError(f"table {self.tag}: {live} rows need more than 2^32 slots")
            slots_buf, slots = _empty_slots(new_slots)
            K.rehash(self.slots, self.num_slots, slots, new_slots)
            self.slots_buf, self.slots, self.num_slots = slots_buf, slots, new_slots


class _DenseIndex:
    """A direct index for a table whose keys are (nearly) one contiguous range, as in tables
    converted from `nn.Embedding` or the seed's per-slot vocabularies: `index[k - lo]` is key k's
    value row (-1: absent). A find then reads one small int32 array instead of hashing and probing
    the slots. 4 bytes per key of the range; built only when the range is at most
    `_DENSE_SPAN_PER_ROW` times the row count. When every key of the range is present and its row
    is `first_row + k - lo` (a table inserted in key order, the usual converted file), no index is
    kept at all (`index` is None): the row is computed from the key."""

    def __init__(self, lo: int, span: int, index: np.ndarray | None, first_row: int = 0) -> None:
        self.lo = lo
        self.span = span
        self.index = index
        self.first_row = first_row

    @property
    def nbytes(self) -> int:
        return 0 if self.index is None else self.index.nbytes

    def rows(self, table: _Table, keys: np.ndarray, rows: np.ndarray, found: np.ndarray) -> int:
        """Fill `rows: (n,) int64` (-1: absent) and `found: (n,) bool` for `keys: (n,) int64`;
        returns the number found."""
        if self.index is None:
            return K.span_rows(self.lo, self.span, self.first_row, keys, rows, found)
        return K.dense_rows(self.index, self.lo, table.slots, table.num_slots, keys, rows, found)

    @classmethod
    def build(cls, table: _Table) -> "_DenseIndex | None":
        size = table.size
        if not size or (table.key_max - table.key_min >= _DENSE_SPAN_PER_ROW * size and not table.bounds_loose):
            return None
        keys, rows = K.live_entries(table.slots, table.num_slots, size)
        lo, hi = int(keys.min()), int(keys.max())
        table.key_min, table.key_max, table.bounds_loose = lo, hi, False
        span = hi - lo + 1
        if span > _DENSE_SPAN_PER_ROW * size:
            return None
        row_minus_offset = rows - (keys - lo)
        if span == size and (row_minus_offset == row_minus_offset[0]).all():
            return cls(lo, span, None, int(row_minus_offset[0]))
        index = np.full(span, -1, dtype=np.int32)
        index[keys - lo] = rows
        return cls(lo, span, index)


class HashMapBackend:
    """In-process hash map tier (HugeCTR `hash_map` / `parallel_hash_map`); not shared between processes."""

    name = "hash_map"
    is_shared = False

    def __init__(self, config: HashMapConfig) -> None:
        self.config = config
        self._num_partitions = int(config.num_partitions)
        self._batch_rows = int(config.max_batch_size)
        margin = int(config.overflow_margin)
        self._margin = margin if margin < _NO_MARGIN else None
        self._target_rows = int(config.overflow_target_rows) if self._margin is not None else 0
        self._meta_mode = {"evict_least_used": K.META_COUNT, "evict_oldest": K.META_CLOCK}.get(
            config.overflow_policy, K.META_NONE)
        self._rng = np.random.default_rng()
        self._tables: dict[str, _Table] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- tables -------------------------------------------------------------------------------

    def _table(self, tag: str) -> _Table:
        if self._closed:
            raise ClosedError(f"hash map backend is closed (table {tag})")
        try:
            return self._tables[tag]
        except KeyError:
            raise BackendError(
                f"hash map: unknown table {tag}; open tables: {sorted(self._tables)}") from None

    def create_table(self, tag: str, dim: int) -> None:
        """Open (or create) table `tag` of `dim`-float rows; idempotent for the same dim."""
        if self._closed:
            raise ClosedError(f"hash map backend is closed (table {tag})")
        if not isinstance(dim, (int, np.integer)) or int(dim) < 1:
            raise BackendError(f"hash map: table {tag}: dim must be a positive integer, got {dim!r}")
        with self._lock:
            table = self._tables.get(tag)
            if table is None:
                self._tables[tag] = _Table(tag, int(dim), self._num_partitions)
            elif table.dim != int(dim):
                raise BackendError(f"hash map: table {tag} exists with dim {table.dim}, not {dim}")

    def tables(self) -> list[str]:
        """Tags of the open tables."""
        if self._closed:
            raise ClosedError("hash map backend is closed")
        return list(self._tables)

    def drop_table(self, tag: str) -> None:
        """Delete table `tag` and release its memory."""
        table = self._table(tag)
        with table.lock.write(), self._lock:
            self._tables.pop(tag, None)

    def close(self) -> None:
        """Release every table; later calls raise `ClosedError`."""
        with self._lock:
            self._closed = True
            tables, self._tables = self._tables, {}
        for table in tables.values():
            with table.lock.write():
                pass

    # -- queries ------------------------------------------------------------------------------

    def size(self, tag: str) -> int:
        """Rows currently held in table `tag`."""
        return self._table(tag).size

    def memory_bytes(self, tag: str) -> int:
        """Bytes held by table `tag`: slot array + value slab capacity + counters."""
        table = self._table(tag)
        with table.lock.read():
            return table.memory_bytes()

    def reserve(self, tag: str, rows: int) -> None:
        """Pre-size table `tag` for `rows` live rows in total (e.g. a sparse file's row count before
        loading it in chunks), so the load does no intermediate slab copies or rehashes."""
        table = self._table(tag)
        if self._margin is not None:
            rows = min(rows, self._overflow_cap_rows())
        with table.lock.write():
            if rows > table.size:
                table.reserve(rows - table.size)

    def load_buffer(self, tag: str, rows: int, offset: int = 0) -> np.ndarray:
        """A writable `(rows, dim) float32` view of the value slab rows `offset` to `offset + rows`
        past the last used row: a loader reads a chunk's vectors straight into it, then passes the
        view to `bulk_load`, which then copies nothing (one copy from the file into the table, as
        `numpy.fromfile` makes into a new array). Grows the slab when needed (`reserve` the whole
        load first: a growth moves the slab, and views taken before it are then copied from).
        Only for start-up loads: the rows are not the table's until `bulk_load` takes them, and any
        write into the table before that may reuse them (take the view, fill it, pass it on)."""
        table = self._table(tag)
        with table.lock.write():
            hwm = int(table.state[K.ST_HWM])
            if hwm + offset + rows > table.capacity_rows:
                table.reserve(offset + rows + int(table.state[K.ST_FREE_COUNT]))  # capacity - hwm ≥ offset + rows
            return table.values[hwm + offset:hwm + offset + rows]

    def bulk_load(self, tag: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Insert a chunk of a start-up load: `keys: (n,) int64` → `vectors: (n, dim) float32`,
        as `insert_or_assign` (later duplicates win) but appended: the vectors fill the slab rows
        after the last used one with one contiguous copy (none when `vectors` is the view from
        `load_buffer(tag, n)`), then the keys are hashed in with prefetched homes. A table with
        an overflow margin or freed rows takes the `insert_or_assign` path."""
        table = self._table(tag)
        keys = check_keys(keys, f"table {tag}")
        vectors = check_vectors(tag, vectors, keys.shape[0], table.dim)
        n = keys.shape[0]
        if n == 0:
            return
        if self._margin is not None or int(table.state[K.ST_FREE_COUNT]):
            if np.shares_memory(vectors, table.buf):  # a load_buffer view: rows the insert may reuse
                vectors = vectors.copy()
            self.insert_or_assign(tag, keys, vectors)
            return
        with table.lock.write():
            if int(table.state[K.ST_FREE_COUNT]):  # freed rows appeared meanwhile (an erase)
                vectors = vectors.copy() if np.shares_memory(vectors, table.buf) else vectors
                insert = True
            else:
                insert = False
                if table.capacity_rows - int(table.state[K.ST_HWM]) < n or table.size + n > MAX_LOAD * table.num_slots:
                    table.reserve(n)
                hwm = int(table.state[K.ST_HWM])
                target = table.values[hwm:hwm + n]
                if target.ctypes.data != vectors.ctypes.data:
                    np.copyto(target, vectors)
                clock = table.write_clock(self._meta_mode)
                meta_word = np.uint64(clock) << np.uint64(32)
                table.note_inserted(keys)
                table.state[K.ST_HWM] = hwm + n
                added = K.insert_keys_at(table.slots, table.num_slots, table.values, table.values_i32, table.state,
                                         table.part_counts, keys, hwm, meta_word)
                if added:
                    table.note_key_change()
        if insert:
            self.insert_or_assign(tag, keys, vectors)

    def partition_sizes(self, tag: str) -> np.ndarray:
        """Rows per partition of table `tag`: `(num_partitions,) int64`."""
        table = self._table(tag)
        with table.lock.read():
            return table.part_counts.copy()

    def find(self, tag: str, keys: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Look up `keys: (n,) int64` (duplicates allowed).

        Returns `(vectors: (n, dim) float32, found: (n,) bool)`; rows of missing keys are zeros.
        `out`, a C-contiguous `(n, dim) float32` array, receives the vectors instead of a new array
        (a fresh 64 MB result costs its page faults: 10–13 ms of a 1M-key call on our 2-core VMs; a new
        result of 32 MiB or more reuses the memory of a dropped one: `hps.storage.result_buffers`).
        Under evict_least_used / evict_oldest, found keys' access count / last access is updated."""
        vectors, found, _ = self.find_counted(tag, keys, out)
        return vectors, found

    def find_counted(self, tag: str, keys: np.ndarray,
                     out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """`find`, plus the number of keys found: `(vectors, found, num_found)`."""
        table = self._table(tag)
        keys = check_keys(keys, f"table {tag}")
        out = _output(tag, out, keys.shape[0], table.dim)
        found = np.empty(keys.shape[0], dtype=np.bool_)
        if keys.shape[0] == 0:
            return out, found, 0
        with table.lock.read():
            # the direct index writes no access metadata: tables that track it always probe
            dense = table.dense_index() if self._meta_mode == K.META_NONE else None
            if dense is not None:
                # rows of a table beyond the CPU caches are DRAM misses: the prefetching gather (~1.4x numpy's
                # take there; take copies cached rows faster and costs less to call)
                gather = table.memory_bytes() > _CACHE_RESIDENT_BYTES

                def find_part(part: slice) -> int:
                    rows = np.empty(part.stop - part.start, dtype=np.int64)
                    num = dense.rows(table, keys[part], rows, found[part])
                    if gather and part.stop - part.start >= _GATHER_MIN_KEYS:
                        K.gather_rows(table.values, rows, out[part])
                    else:
                        table.values.take(rows, 0, out[part], "clip")  # the method: numpy.take's wrapper costs ~0.5 µs
                    return num
            else:
                clock = table.tick() if self._meta_mode == K.META_CLOCK else 0
                block = K.BLOCK_CACHE_RESIDENT if table.memory_bytes() <= _CACHE_RESIDENT_BYTES else K.BLOCK_DRAM

                def find_part(part: slice) -> int:
                    return K.find_rows(table.slots, table.num_slots, table.values, keys[part], out[part], found[part],
                                       self._meta_mode, clock, block)
            # rows wider than 16 floats split sooner: each part gathers at least the bytes a part of
            # PARALLEL_FIND_KEYS // 2 rows of dim 16 does (2 MiB), e.g. 4,096 rows of dim 128 (GPU miss path)
            split_from = max(8192, PARALLEL_FIND_KEYS * 16 // max(16, table.dim))
            num_found = _on_all_cores(find_part, keys.shape[0], split_from)
        if dense is not None and num_found < keys.shape[0]:
            out[~found] = 0.0
        return out, found, num_found

    def items(self, tag: str, batch_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate table `tag` as `(keys: (m,) int64, vectors: (m, dim) float32)` batches, m ≤ batch_rows.

        Keys are snapshotted first; each batch is read under the lock, so keys erased meanwhile are
        skipped and no row is torn. Access metadata is not touched."""
        table = self._table(tag)
        if batch_rows < 1:
            raise BackendError(f"hash map: table {tag}: batch_rows must be ≥ 1, got {batch_rows}")
        with table.lock.read():
            snapshot, _ = K.live_entries(table.slots, table.num_slots, table.size)
        for start in range(0, snapshot.shape[0], batch_rows):
            keys = snapshot[start:start + batch_rows]
            out = np.empty((keys.shape[0], table.dim), dtype=np.float32)
            found = np.empty(keys.shape[0], dtype=np.bool_)
            with table.lock.read():
                K.find_rows(table.slots, table.num_slots, table.values, keys, out, found, K.META_NONE, 0, K.BLOCK_DRAM)
            if found.all():
                yield keys, out
            elif found.any():
                yield keys[found], out[found]

    # -- updates ------------------------------------------------------------------------------

    def insert_or_assign(self, tag: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert `keys: (n,) int64` → `vectors: (n, dim) float32` (later duplicates win).

        Processed in `max_batch_size` chunks; after each chunk every partition that reached
        `overflow_margin` is shrunk by the overflow policy. Nothing is written if validation fails."""
        table = self._table(tag)
        keys = check_keys(keys, f"table {tag}")
        vectors = check_vectors(tag, vectors, keys.shape[0], table.dim)
        n = keys.shape[0]
        if n == 0:
            return
        with table.lock.write():
            clock = table.write_clock(self._meta_mode)
            if n > self._batch_rows:
                self._reserve_for(table, keys, limit_rows=self._overflow_cap_rows())
            table.note_inserted(keys)
            for start in range(0, n, self._batch_rows):
                chunk = slice(start, start + self._batch_rows)
                self._reserve_for(table, keys[chunk])
                size = table.size
                K.insert_rows(table.slots, table.num_slots, table.values, table.values_i32, table.state,
                              table.part_counts, keys[chunk], vectors[chunk], self._meta_mode, clock)
                if table.size != size:  # new keys (overwrites keep their rows: the index stays valid)
                    table.note_key_change()
                self._resolve_overflow(table)

    def erase(self, tag: str, keys: np.ndarray) -> int:
        """Remove `keys: (n,) int64` from table `tag`; returns how many were present."""
        table = self._table(tag)
        keys = check_keys(keys, f"table {tag}")
        if keys.shape[0] == 0:
            return 0
        with table.lock.write():
            erased = int(K.erase_keys(table.slots, table.num_slots, table.values_i32, table.state,
                                      table.part_counts, keys))
            if erased:
                table.note_key_change(removed=True)
            return erased

    def _overflow_cap_rows(self) -> int | None:
        if self._margin is None:
            return None
        return self._margin * self._num_partitions + self._batch_rows

    def _reserve_for(self, table: _Table, keys: np.ndarray, limit_rows: int | None = None) -> None:
        """Grow `table` so that every key of `keys` could be a new row (capped at `limit_rows` live)."""
        n = keys.shape[0]
        if n <= table.free_rows() and table.size + n <= MAX_LOAD * table.num_slots:
            return
        new_rows = int(K.count_absent(table.slots, table.num_slots, keys))
        if limit_rows is not None:
            new_rows = max(0, min(new_rows, limit_rows - table.size))
        if new_rows:
            table.reserve(new_rows)

    def _resolve_overflow(self, table: _Table) -> None:
        """Shrink every partition holding ≥ overflow_margin rows to the resolution target."""
        if self._margin is None:
            return
        wanted = table.part_counts >= self._margin
        if not wanted.any():
            return
        keys, metas, parts = K.partition_members(table.slots, table.num_slots, self._num_partitions, wanted)
        for p in np.flatnonzero(wanted):
            members = parts == p
            part_keys = keys[members]
            excess = part_keys.shape[0] - self._target_rows
            if excess <= 0:
                continue
            if self._meta_mode == K.META_NONE:
                victims = part_keys[self._rng.choice(part_keys.shape[0], size=excess, replace=False)]
            elif excess >= part_keys.shape[0]:
                victims = part_keys
            else:
                victims = part_keys[np.argpartition(metas[members], excess - 1)[:excess]]
            table.note_key_change(removed=True)
            for start in range(0, victims.shape[0], self._batch_rows):
                K.erase_keys(table.slots, table.num_slots, table.values_i32, table.state, table.part_counts,
                             victims[start:start + self._batch_rows])
