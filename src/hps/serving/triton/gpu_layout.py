"""What a GPU deployment of an hps embedding model needs beyond the CPU one: a host tier the model
instances share, and the memory each instance takes.

Each Triton model instance of `hps_embedding` is its own python stub process with its own `hps.HPS`:
its own GPU embedding cache, and, with an in-process `hash_map` volatile tier, its own copy of every
row in host memory. With several instances on one GPU the rows are kept once instead:

- a `redis_cluster` volatile tier is shared already (every instance is a client of the same cluster);
- a `multi_process_hash_map` is shared already (the map lives in /dev/shm, or `$HPS_SHM_DIR`);
- static and uvm caches hold the whole table and need no host tier, and a model served from a
  `persistent_db` alone reads RocksDB's files (shared through the page cache); an in-process map with
  `initialize_after_startup` false in front of a `persistent_db` holds only each instance's misses;
- otherwise (`hash_map`, `parallel_hash_map`, or no volatile_db at all) `shared_host_tier_json` turns
  the volatile_db into a `multi_process_hash_map` with the user's other keys: the first instance to
  start creates and loads each table, the others attach to it (`hps.storage.shared_hash_map`: every
  instance starts with `initialize_after_startup` true; the ones that find a load under way use it).

`instance_memory` says what one instance takes (its GPU cache) and what the host tier takes (once
when shared, per instance otherwise), from the sparse files' sizes (`hps.sizing`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from hps.config.schema import HashMapConfig, ModelConfig, PsConfig
from hps.lookup.row_home import cache_holds_whole_table, with_row_home
from hps.model_format import SparseModel
from hps.serving.triton.errors import RepositoryError

#: volatile_db types every process of a host reads one copy of.
SHARED_VOLATILE_TYPES = ("redis_cluster", "multi_process_hash_map")
#: In-process volatile_db types a shared host tier replaces.
IN_PROCESS_VOLATILE_TYPES = ("hash_map", "parallel_hash_map")
#: Load factor of the shared map's slots once a table is loaded (hps.storage.shared_hash_map sizes
#: slots to a load of 0.6).
SHARED_MAP_LOAD = 0.6
#: Head room over the loaded segments in `shared_memory_size`: a table that grows (updates, cached
#: misses) briefly holds its old and its new generation.
SHARED_MEMORY_HEADROOM = 2.0
SHARED_MEMORY_EXTRA_BYTES = 64 << 20


def needs_shared_host_tier(config: PsConfig, model: ModelConfig) -> bool:
    """True when instances of `model` would each hold their own copy of its rows in host memory
    (an in-process volatile tier that loads the sparse files, or none with no persistent_db: hps then
    keeps the rows in an in-process hash map), so a GPU deployment with several instances should share
    one. An in-process map with initialize_after_startup false in front of a persistent_db holds only
    the misses each instance fetched: it stays per instance."""
    if cache_holds_whole_table(model):
        return False
    volatile = config.volatile_db
    if volatile is None:
        return config.persistent_db is None
    if volatile.type not in IN_PROCESS_VOLATILE_TYPES:
        return False
    # a map left empty at start (filled with the misses fetched from the persistent_db) is kept per instance
    return volatile.initialize_after_startup or config.persistent_db is None


def shared_memory_name(model_name: str) -> str:
    """A fresh `shared_memory_name` for one repository's model: `hps_<model>_<8 hex>` (file-name safe),
    so two repositories (or two builds) on one host never attach each other's tables."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)[:64]
    return f"hps_{safe}_{secrets.token_hex(4)}"


def shared_memory_bytes(model: ModelConfig, num_partitions: int) -> int:
    """`shared_memory_size` for the model's tables in a multi_process_hash_map: their loaded segments
    (16-byte slots at load `SHARED_MAP_LOAD` plus the float32 rows), times `SHARED_MEMORY_HEADROOM`,
    plus `SHARED_MEMORY_EXTRA_BYTES`. Row counts come from the sparse files' sizes."""
    from hps.storage.shared_hash_map import segment_bytes

    total = 0
    for table in model.tables:
        rows = SparseModel(table.sparse_file, table.dim).num_rows
        total += segment_bytes(math.ceil(rows / SHARED_MAP_LOAD) + 1, rows, table.dim, num_partitions)
    return int(total * SHARED_MEMORY_HEADROOM) + SHARED_MEMORY_EXTRA_BYTES


def shared_host_tier_json(raw: dict[str, Any], config: PsConfig, model: ModelConfig, *,
                          name: str | None = None) -> tuple[dict[str, Any], str]:
    """The single-model ps.json dict `raw` with a host tier its model instances share, and a sentence
    saying which tier that is.

    An in-process volatile_db (or none) becomes a `multi_process_hash_map` keeping the user's other
    volatile_db keys (num_partitions, overflow settings, ...), with `shared_memory_name` `name` (default:
    `shared_memory_name(model.name)`), a `shared_memory_size` fitting the model's tables
    (`shared_memory_bytes`), `initialize_after_startup` true (each instance may be the first to start)
    and `shared_memory_auto_remove` true (the last instance to stop removes the tables). Other setups
    are returned unchanged (see the module docstring)."""
    volatile = config.volatile_db
    if volatile is not None and volatile.type in SHARED_VOLATILE_TYPES:
        return raw, f"volatile_db {volatile.type} (shared by the instances as configured)"
    if not needs_shared_host_tier(config, model):
        why = ("its cache holds the whole table" if cache_holds_whole_table(model)
               else "its rows are read from the persistent_db")
        if volatile is not None and volatile.type in IN_PROCESS_VOLATILE_TYPES and not cache_holds_whole_table(model):
            why = "the volatile_db holds only each instance's misses from the persistent_db"
        return raw, f"none needed ({why})"
    out = dict(raw)
    section = dict(raw.get("volatile_db") or {}) if isinstance(raw.get("volatile_db"), dict) else {}
    partitions = volatile.num_partitions if volatile is not None else HashMapConfig().num_partitions
    section.update({
        "type": "multi_process_hash_map",
        "shared_memory_name": name or shared_memory_name(model.name),
        "shared_memory_size": shared_memory_bytes(model, int(partitions)),
        "initialize_after_startup": True,
        "shared_memory_auto_remove": True,
    })
    out["volatile_db"] = section
    return out, (f"volatile_db multi_process_hash_map {section['shared_memory_name']!r} "
                 f"(replacing {volatile.type if volatile is not None else 'the in-process hash map'})")


@dataclass(frozen=True)
class InstanceMemory:
    """Memory of a GPU deployment of one embedding model with `instances` model instances per GPU.

    `gpu_cache_bytes_per_instance`: one instance's embedding caches (one replica of every table, on
    its GPU); `host_tier_bytes`: the volatile tier's rows (hash map or shared map estimate, 0 for
    Redis, whose rows live on its nodes); `host_tier_copies`: 1 when the instances share it, else
    `instances`; `gpu_bytes`: every instance's caches on one GPU; `host_bytes`: host tier copies.
    Estimates from the structures' layouts (`hps.sizing`); each instance also holds a CUDA context
    and its python stub (a few hundred MiB of GPU and host memory, not counted here)."""

    model: str
    instances: int
    gpu_cache_bytes_per_instance: int
    host_tier_bytes: int
    host_tier_copies: int
    host_tier: str

    @property
    def gpu_bytes(self) -> int:
        return self.gpu_cache_bytes_per_instance * self.instances

    @property
    def host_bytes(self) -> int:
        return self.host_tier_bytes * self.host_tier_copies


def instance_memory(config: PsConfig, model_name: str, instances: int, *, shared: bool | None = None) -> InstanceMemory:
    """What `instances` instances of `model_name` on one GPU take (`InstanceMemory`).

    config: the ps.json served (as `hps.config.load_config` gives it); shared: whether the instances
    share the host tier (None: as `build_repository(device="gpu")` decides, i.e. shared when
    `instances` > 1 or the config's tier is shared already)."""
    from hps.sizing import estimate_memory

    if instances < 1:
        raise RepositoryError(f"instances must be at least 1, got {instances}")
    model = config.model(model_name)
    one_device = dataclasses.replace(model, deployed_device_list=(model.deployed_device_list[0],)
                                     if model.deployed_device_list else (0,))
    served = with_row_home(dataclasses.replace(config, models=(one_device,)))
    estimates = estimate_memory(served)
    volatile = served.volatile_db
    kind = volatile.type if volatile is not None else "none"
    already_shared = kind in SHARED_VOLATILE_TYPES
    if shared is None:
        shared = already_shared or (instances > 1 and needs_shared_host_tier(config, model))
    host = 0 if kind == "redis_cluster" else sum(e.volatile_bytes for e in estimates)
    tier = ("redis_cluster (on the cluster's nodes)" if kind == "redis_cluster"
            else "multi_process_hash_map" if shared and host else kind if host else "none")
    return InstanceMemory(model.name, int(instances), sum(e.cache_bytes for e in estimates), host,
                          1 if (shared or already_shared) else int(instances), tier)


def describe_instance_memory(config: PsConfig, model_name: str, instances: int, *,
                             shared: bool | None = None) -> str:
    """`instance_memory` as lines a person reads (what `hps triton build --device gpu` prints)."""
    m = instance_memory(config, model_name, instances, shared=shared)
    where = ("shared by the instances" if m.host_tier_copies == 1 and instances > 1
             else "one copy" if m.host_tier_copies == 1 else f"one copy per instance, {m.host_tier_copies} in all")
    return (f"model {m.model}: {m.instances} instance(s) per GPU; GPU cache {_mib(m.gpu_cache_bytes_per_instance)} "
            f"per instance ({_mib(m.gpu_bytes)} on each GPU, plus a CUDA context per instance); host tier "
            f"{m.host_tier}: {_mib(m.host_tier_bytes)}, {where} ({_mib(m.host_bytes)} of host memory)")


def _mib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
