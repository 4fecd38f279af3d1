"""Memory estimates per table and tier, for `hps inspect` (HugeCTR users had no way to know: issue #427).

Figures are estimates from each structure's layout, not measurements:
- hash_map: 16-byte slots at a load of 0.5–0.75 plus a float32 slab with ≤ 12.5 % slack;
- redis_cluster: the raw field and value plus Redis's per-field hash overhead (~64 B, listpack → hashtable);
- rocks_db: the raw key and value plus ~16 B of block and index overhead per entry, before compression;
- cache: capacity × (8 B key + 8 B score + 4·dim B vector) per device replica (dynamic and uvm);
  a cache holding the whole table (static, or dynamic with gpucacheper × rows ≥ rows) uses a
  linear-probing index instead: 2 × (8 B key + 4 B row number) + 4·dim B per row.
"""

from __future__ import annotations

from dataclasses import dataclass

from hps.cache.factory import capacity_rows
from hps.config.schema import PsConfig
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
            overhead = WHOLE_TABLE_INDEX_BYTES if whole else CACHE_SLOT_OVERHEAD_BYTES
            cache_bytes = cache_rows * (row_bytes + overhead) * replicas
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
