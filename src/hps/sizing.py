"""Memory estimates per table and tier, for `hps inspect` (HugeCTR users had no way to know: issue #427).

Figures are estimates from each structure's layout, not measurements:
- hash_map: 16-byte slots at a load of 0.5–0.75 plus a float32 slab with ≤ 12.5 % slack;
- redis_cluster: the raw field and value plus Redis's per-field hash overhead (~64 B, listpack → hashtable);
- rocks_db: the raw key and value plus ~16 B of block and index overhead per entry, before compression;
- cache: capacity × (8 B key + 8 B score + 4·dim B vector) per device replica (dynamic and uvm);
  a cache holding the whole table (static, or dynamic with gpucacheper × rows ≥ rows) uses a
  linear-probing index instead: 2 × (8 B key + 4 B row number) + 4·dim B per row.

`memory_totals` adds them up by where they live (this host, the GPUs, Redis, disk) with the peak
of host memory while loading; `replay_hit_rates` replays a sample of the user's keys through the
CPU cache to size `gpucacheper` (`hps inspect --keys`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hps.cache.factory import capacity_rows
from hps.config.schema import ModelConfig, PsConfig
from hps.errors import HpsError, KeyInputError
from hps.model_format import SparseModel

HASH_MAP_SLOT_BYTES = 16
HASH_MAP_LOAD = 0.6
HASH_MAP_SLAB_SLACK = 1.125
REDIS_FIELD_OVERHEAD_BYTES = 64
ROCKSDB_ENTRY_OVERHEAD_BYTES = 16
CACHE_SLOT_OVERHEAD_BYTES = 16
WHOLE_TABLE_INDEX_BYTES = 24


@dataclass(frozen=True)
class TableEstimate:
    """Rows, dim and estimated bytes of one table in each tier."""

    model: str
    table: str
    rows: int
    dim: int
    cache_kind: str
    cache_bytes: int
    volatile_bytes: int
    persistent_bytes: int


def estimate_memory(config: PsConfig) -> list[TableEstimate]:
    """One `TableEstimate` per table of every model (row counts come from the sparse files' sizes)."""
    out = []
    for model in config.models:
        replicas = len(model.deployed_device_list)
        for table in model.tables:
            rows = SparseModel(table.sparse_file, table.dim).num_rows
            row_bytes = 4 * table.dim
            if not model.gpucache:
                cache_kind, cache_rows = "off", 0
            elif model.cache_type == "static":
                cache_kind, cache_rows = "static", rows
            else:
                cache_kind = f"{model.cache_type} {model.gpucacheper:.0%}"
                cache_rows = capacity_rows(model, rows)
            whole = cache_kind == "static" or (model.cache_type == "dynamic" and cache_rows >= rows)
            fp8 = model.fp8_quant and model.cache_type != "dynamic"  # e4m3 rows + a float32 scale (hps.cache.fp8)
            cache_bytes = cache_table_bytes(cache_rows, table.dim, whole, fp8=fp8) * replicas
            volatile = 0
            if config.volatile_db is not None and model.cache_type == "dynamic":
                if config.volatile_db.type == "redis_cluster":
                    volatile = rows * (8 + row_bytes + REDIS_FIELD_OVERHEAD_BYTES)
                else:
                    volatile = int(rows * (HASH_MAP_SLOT_BYTES / HASH_MAP_LOAD + row_bytes * HASH_MAP_SLAB_SLACK))
            persistent = 0
            if config.persistent_db is not None and model.cache_type == "dynamic":
                persistent = rows * (8 + row_bytes + ROCKSDB_ENTRY_OVERHEAD_BYTES)
            out.append(TableEstimate(model.name, table.name, rows, table.dim, cache_kind, cache_bytes,
                                     volatile, persistent))
    return out


def cache_table_bytes(cache_rows: int, dim: int, whole_table: bool, fp8: bool = False) -> int:
    """Bytes of one cache replica of `cache_rows` rows of `dim` float32 (`fp8`: dim e4m3 bytes plus a
    4-byte scale, static and uvm tables with fp8_quant): set-associative slots (key + score + row), or
    the linear-probing index of a cache holding the whole table."""
    overhead = WHOLE_TABLE_INDEX_BYTES if whole_table else CACHE_SLOT_OVERHEAD_BYTES
    return cache_rows * ((dim + 4 if fp8 else 4 * dim) + overhead)


#: Bytes per row of the largest table while the sparse files are validated at start-up
#: (`SparseModel.check_unique_keys`: a sorted 8-byte copy of the keys and two 1-byte masks).
UNIQUE_CHECK_BYTES_PER_ROW = 10
#: Copies of one loading chunk alive at once (`loading._fill`: the chunk read from the files and the
#: tier's own staging of it).
LOAD_CHUNK_COPIES = 2


@dataclass(frozen=True)
class MemoryTotals:
    """Where the estimated bytes of a config live, after loading and at the loading peak.

    `host_bytes`: this process's memory once loaded (in-process volatile tier, caches without a
    GPU, uvm tables in pinned host memory); `device_bytes`: GPU memory over all devices;
    `peak_host_bytes`: the most host memory while loading (an estimate: see `memory_totals`);
    `redis_bytes`: on the Redis Cluster's nodes; `disk_bytes`: RocksDB before compression;
    `ram_total_bytes` / `ram_available_bytes`: this machine's (0 when unknown)."""

    host_bytes: int
    device_bytes: int
    peak_host_bytes: int
    redis_bytes: int
    disk_bytes: int
    caches_on: str
    ram_total_bytes: int
    ram_available_bytes: int
    peak_formula: str


def memory_totals(config: PsConfig, estimates: Sequence[TableEstimate], gpu: bool,
                  load_chunk_rows: int | None = None) -> MemoryTotals:
    """Add `estimates` (from `estimate_memory(config)`) up by where they live; `gpu`: caches go to
    device memory (else to host memory, as `make_cache` falls back to the CPU caches).

    The loading peak is an estimate from the loader's layout (`hps.lookup.loading`): first every
    file is validated (a sorted copy of the largest table's keys, `UNIQUE_CHECK_BYTES_PER_ROW`),
    then the tiers are filled chunk by chunk (`LOAD_CHUNK_COPIES` × `LOAD_CHUNK_ROWS` × (8 + 4·dim)
    bytes on top of the tiers being filled): peak = max(validation, host + chunk buffers)."""
    if load_chunk_rows is None:
        from hps.lookup.loading import LOAD_CHUNK_ROWS

        load_chunk_rows = LOAD_CHUNK_ROWS
    models = {m.name: m for m in config.models}
    volatile_type = config.volatile_db.type if config.volatile_db is not None else None
    host = device = redis = disk = 0
    for e in estimates:
        if models[e.model].cache_type == "uvm" or not gpu:
            host += e.cache_bytes
        else:
            device += e.cache_bytes
        if volatile_type == "redis_cluster":
            redis += e.volatile_bytes
        else:
            host += e.volatile_bytes
        disk += e.persistent_bytes
    largest = max((e.rows for e in estimates), default=0)
    widest = max((e.dim for e in estimates), default=0)
    validate = UNIQUE_CHECK_BYTES_PER_ROW * largest
    chunk = LOAD_CHUNK_COPIES * min(load_chunk_rows, largest) * (8 + 4 * widest)
    total, available = machine_ram_bytes()
    formula = (f"max(validating the keys: {UNIQUE_CHECK_BYTES_PER_ROW} B x {largest:,} rows, "
               f"host + {LOAD_CHUNK_COPIES} loading chunks of {min(load_chunk_rows, largest):,} rows x "
               f"(8 + 4 x {widest}) B)")
    return MemoryTotals(host, device, max(validate, host + chunk), redis, disk, "device" if gpu else "host",
                        total, available, formula)


def machine_ram_bytes() -> tuple[int, int]:
    """This machine's `(total, available)` RAM in bytes: /proc/meminfo's MemTotal and MemAvailable,
    else os.sysconf's physical and available pages; 0 where unknown."""
    try:
        fields = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
        if "MemTotal" in fields:
            return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
    except OSError:
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


@dataclass(frozen=True)
class HitRate:
    """The hit rate of one cache size over a replayed key sample.

    `hits` of `keys` lookups; `ceiling`: the rate of a cache that never evicts (every key after its
    first touch); `cache_bytes`: the memory of that cache over all device replicas."""

    gpucacheper: float
    capacity_rows: int
    policy: str
    keys: int
    hits: int
    ceiling: float
    cache_bytes: int
    seconds: float

    @property
    def hit_rate(self) -> float:
        """hits / keys (0 for an empty sample)."""
        return self.hits / self.keys if self.keys else 0.0


DEFAULT_GPUCACHEPER = (0.05, 0.1, 0.2, 0.5, 1.0)


def load_key_sample(path: str | os.PathLike[str]) -> np.ndarray:
    """A key sample `.npy` (integer keys, 1-D or 2-D: rows are samples, read row-major) as a
    memory-mapped `(n,) int64` where possible. Raises `KeyInputError` naming the file."""
    where = f"key sample {path}"
    if not str(path).endswith(".npy"):
        raise KeyInputError(f"{where}: expected a .npy file of int64 keys (numpy.save)")
    try:
        keys = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise KeyInputError(f"{where} does not exist") from None
    except (OSError, ValueError) as exc:
        raise KeyInputError(f"{where}: cannot read it as a .npy array: {exc}") from None
    if keys.dtype.kind not in "iu" or keys.ndim not in (1, 2):
        raise KeyInputError(f"{where}: expected 1-D or 2-D integer keys, got {keys.ndim}-D {keys.dtype}")
    if keys.dtype == np.uint64 and keys.size and int(keys.max()) > np.iinfo(np.int64).max:
        raise KeyInputError(f"{where}: uint64 keys above 2^63-1 are not int64 keys")
    return keys.reshape(-1)


def replay_hit_rates(keys: np.ndarray, model: ModelConfig, rows: int, dim: int,
                     gpucacheper: Sequence[float] = DEFAULT_GPUCACHEPER, batch_keys: int = 65536,
                     ways: int | None = None) -> list[HitRate]:
    """Replay `keys: (n,) int` through the cache a table of `rows` rows of `dim` would get at each
    `gpucacheper`, `batch_keys` keys per lookup, from a cold cache, counting hits.

    The cache is hps's CPU cache (`CpuEmbeddingCache`: set-associative, exact LRU in a set of
    `ways` slots, default 16), exactly as `make_cache` builds it: a whole-table hash
    (`CpuStaticTable`, never evicts) where gpucacheper × rows ≥ rows. Each batch: find with the raw
    keys, then insert the distinct misses (the lookup pipeline's order). The replayed cache holds
    1-float rows: the hit rate does not depend on dim; `cache_bytes` uses the real `dim`."""
    from hps.cache.cpu import DEFAULT_WAYS, CpuEmbeddingCache
    from hps.cache.cpu_static import CpuStaticTable

    if batch_keys < 1:
        raise KeyInputError(f"replay_hit_rates: batch_keys must be >= 1, got {batch_keys}")
    ways = DEFAULT_WAYS if ways is None else ways
    replicas = len(model.deployed_device_list) or 1
    ceiling = _ceiling(keys, batch_keys)
    out = []
    for per in gpucacheper:
        if not 0.0 < per <= 1.0:
            raise KeyInputError(f"gpucacheper {per} is outside (0, 1]")
        capacity = max(64, int(per * rows))  # hps.cache.factory.capacity_rows for this per
        whole = capacity >= rows
        if whole:
            cache, policy = CpuStaticTable(1), "whole-table hash (no eviction)"
            cache_rows = rows
        else:
            cache = CpuEmbeddingCache(capacity, 1, ways=ways)
            cache_rows = cache.capacity_rows
            policy = f"set-associative LRU, {ways} ways"
        start = time.perf_counter()
        hits = 0
        for begin in range(0, keys.shape[0], batch_keys):
            batch = np.ascontiguousarray(keys[begin:begin + batch_keys], dtype=np.int64)
            _, found = cache.find(batch)
            num_hits = int(np.count_nonzero(found))
            hits += num_hits
            if num_hits < batch.shape[0]:
                misses = np.unique(batch[~found])
                cache.insert_or_assign(misses, np.zeros((misses.shape[0], 1), np.float32))
        cache.close()
        out.append(HitRate(per, cache_rows, policy, int(keys.shape[0]), hits, ceiling,
                           cache_table_bytes(cache_rows, dim, whole) * replicas, time.perf_counter() - start))
    return out


def _ceiling(keys: np.ndarray, batch_keys: int) -> float:
    """The hit rate of a cache that never evicts, over `keys: (n,) int64` in batches of `batch_keys`:
    the pipeline probes a whole batch before inserting its misses, so a key hits only when an
    earlier batch touched it."""
    n = keys.shape[0]
    if n == 0:
        return 0.0
    _, first, inverse = np.unique(np.asarray(keys, dtype=np.int64), return_index=True, return_inverse=True)
    first_batch = (first // batch_keys)[inverse.reshape(-1)]
    return float(np.count_nonzero(np.arange(n) // batch_keys > first_batch)) / n


def check_replay_inputs(keys: np.ndarray, rows: int) -> None:
    """Raise `HpsError` for a sample that cannot size a cache: empty, or a table without rows."""
    if keys.shape[0] == 0:
        raise HpsError("the key sample is empty: nothing to replay")
    if rows == 0:
        raise HpsError("the table has no rows: there is no cache to size")
