"""Table fusion (`fuse_embedding_table`): a model's tables of one dim kept and looked up as one.

HugeCTR (reference/hugectr-hps.md §2.11) rewrote the ps.json of a model with fusion on: its
tables of equal `embedding_vecsize_per_table` became one table `fused_embedding<N>` (N counting
the dims in ascending order) whose rows are the union of the members' files, and the per-table
lookups of a TF graph were packed into one lookup by threads waiting for each other. hps keeps
the storage side and offers the packing as a call instead of a rendezvous of threads:

- **Storage.** Each fused table is ONE table in the tiers (tag `hps_et.<model>.fused_embedding<N>`:
  one hash-map table, Redis hash set and RocksDB column family) and ONE cache per device, filled
  from the members' files in table order. The members' keys must not overlap (HugeCTR's
  requirement too): a fused table would hold one row for two tables' keys. That is checked at
  load; an overlap raises `ModelFormatError` naming both tables and a shared key.
- **Defaults.** HugeCTR kept one default value per fused table (the last member's, with a
  warning when they differed). hps fuses only tables with the same dim AND the same
  `default_value_for_each_table`, so a key missing everywhere still gets the default of the table
  it was asked for; with one default for the model (the usual config) the grouping and the
  `fused_embedding<N>` numbering are HugeCTR's.
- **Lookups.** `HPS.lookup(keys, model, table_id)` still works per original table (the framework
  layers call it that way) and answers from the fused storage. `HPS.lookup_many` takes the keys
  of several tables at once: the keys of the tables of one fused table are concatenated, looked up
  in one pass (one cache probe on the CPU, one kernel launch on a GPU cache) and split back.
  The usual call — numpy int64 keys of tables that all live in one fused table, the same table ids
  call after call — takes a path with no per-table Python work: its table ids are resolved once
  (`_OnePassPlan`, kept per model), the keys' types, dims and dtypes are checked by C-level
  `map`/`concatenate` calls, a `(tables, n)` array is used as it is (no copy), and equal-sized
  results are the rows of one `(tables, n, dim)` array.
- **Updates.** Kafka topics and `HPS.apply_update` keep the original tags (`hps_et.<model>.<table>`,
  what trainers publish); the rows are written to the fused table. An update must not give a
  table a key another member of its fused table holds (that row is shared: the same requirement).

Statistics: per-table calls count in the original table's stats; `lookup_many` passes count in
the fused table's (`HPS.stats()` lists both, the fused ones under `fused_embedding<N>`).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Executor
from dataclasses import dataclass, field
from itertools import accumulate
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from hps.cache.factory import cuda_available, make_cache
from hps.config.schema import ModelConfig, PsConfig, TableConfig
from hps.errors import KeyInputError, ModelFormatError
from hps.lookup.loading import drop_tables, iter_table_rows, load_model_into_tiers, open_sparse_models
from hps.lookup.pipeline import TableLookup, is_torch
from hps.lookup.stats import TableStats
from hps.lookup.tiers import TierChain
from hps.model_format.reader import duplicate_key_report
from hps.storage.base import INT64, KeyValueBackend

#: Keys of up to this many dimensions (as `HPS.lookup` takes them).
MAX_KEY_DIMS = 16

if TYPE_CHECKING:
    from hps.model_format import SparseModel

#: HugeCTR's name of the N-th fused table of a model.
FUSED_TABLE_NAME = "fused_embedding{}"
#: `lookup_many` call plans kept per fused model (one per list of table ids and device a server uses).
MAX_CALL_PLANS = 64
_NDIM = attrgetter("ndim")


@dataclass(frozen=True)
class StoredTable(TableConfig):
    """An original table whose rows the tiers and caches keep in another table (its fused table).

    Name, id, limits and default stay the original table's (messages, stats, key checks); `tag`,
    the storage tag every tier and cache fetch uses, is the fused table's."""

    stored_tag: str = ""

    @property
    def tag(self) -> str:
        return self.stored_tag

    @property
    def own_tag(self) -> str:
        """`hps_et.<model>.<table>` of the original table (its Kafka topic)."""
        return TableConfig.tag.fget(self)


@dataclass(frozen=True)
class FusedTable:
    """One fused table: `config` is the stored table (`fused_embedding<index>`, table id `index`),
    `members` the original table ids whose rows it holds, in table order."""

    index: int
    members: tuple[int, ...]
    config: TableConfig


@dataclass(frozen=True)
class FusionPlan:
    """How a model's tables are fused: `stored` is the model as the tiers and caches hold it (one
    table per fused table, HugeCTR's rewritten config), `fused_of[t]` the fused table of original
    table `t`."""

    model: ModelConfig
    stored: ModelConfig
    fused: tuple[FusedTable, ...]
    fused_of: tuple[int, ...]

    def member(self, table_id: int) -> StoredTable:
        """Original table `table_id`, stored in its fused table."""
        table = self.model.tables[table_id]
        return StoredTable(**{f.name: getattr(table, f.name) for f in dataclasses.fields(TableConfig)},
                           stored_tag=self.fused[self.fused_of[table_id]].config.tag)


def plan_fusion(config: PsConfig, model: ModelConfig) -> FusionPlan | None:
    """The fusion of `model`'s tables, or None when fusion is off for it (the ps.json's top-level
    `fuse_embedding_table` false, the default, or the model's own `fuse_embedding_table` false).

    Tables are grouped by (dim, default value); groups are numbered by dim, then by first member,
    so with one default per model `fused_embedding<N>` is HugeCTR's N (ascending dims). A table
    alone in its group is still renamed, as HugeCTR did."""
    if not (config.fuse_embedding_table and model.fuse_embedding_table):
        return None
    groups: dict[tuple[int, float], list[int]] = {}
    for table in model.tables:
        groups.setdefault((table.dim, table.default_value), []).append(table.table_id)
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], item[1][0]))
    fused_of = [0] * model.num_tables
    for index, (_, members) in enumerate(ordered):
        for t in members:
            fused_of[t] = index
    stored = dataclasses.replace(
        model,
        sparse_files=tuple(" + ".join(model.sparse_files[t] for t in members) for _, members in ordered),
        embedding_table_names=tuple(FUSED_TABLE_NAME.format(i) for i in range(len(ordered))),
        embedding_vecsize_per_table=tuple(dim for (dim, _), _ in ordered),
        default_value_for_each_table=tuple(default for (_, default), _ in ordered),
        maxnum_catfeature_query_per_table_per_sample=tuple(
            sum(model.maxnum_catfeature_query_per_table_per_sample[t] for t in members) for _, members in ordered),
        num_of_worker_buffer_in_pool=max(model.num_of_worker_buffer_in_pool, model.num_tables))
    fused = tuple(FusedTable(i, tuple(members), stored.tables[i]) for i, (_, members) in enumerate(ordered))
    return FusionPlan(model, stored, fused, tuple(fused_of))


class FusedRows:
    """The rows of one fused table: its members' sparse models one after the other.

    Reads like a `SparseModel` for the loader and the caches (`path`, `where`, `dim`, `num_rows`,
    `keys`, `iter_chunks`, `fingerprint`). The constructor checks that no key is in two members."""

    def __init__(self, model: ModelConfig, fused: FusedTable, members: Sequence["SparseModel"]) -> None:
        self.members = list(members)
        self.names = [model.tables[t].name for t in fused.members]
        self.dim = fused.config.dim
        self.num_rows = sum(m.num_rows for m in self.members)
        self.path = self.where = " + ".join(str(getattr(m, "where", m.path)) for m in self.members)
        self._keys: np.ndarray | None = None
        self._check_disjoint(model)

    def __repr__(self) -> str:
        return f"FusedRows({self.names}, dim={self.dim}, num_rows={self.num_rows})"

    def _check_disjoint(self, model: ModelConfig) -> None:
        """`ModelFormatError` if two members share a key. Members whose key ranges do not intersect
        (the usual layout: one id range per table) are cleared from their bounds alone; otherwise the
        keys are sorted together (8 bytes per row, twice)."""
        if len(self.members) < 2:
            return
        bounds = sorted((int(m.keys.min()), int(m.keys.max())) for m in self.members)
        if all(bounds[i][1] < bounds[i + 1][0] for i in range(len(bounds) - 1)):
            return
        report = duplicate_key_report(self.keys)
        if report is None:
            return
        extra_rows, _, example = report
        holders = [name for name, m in zip(self.names, self.members) if np.any(np.asarray(m.keys) == example)]
        where = ", ".join(f"{name!r} ({getattr(m, 'where', m.path)})" for name, m in zip(self.names, self.members)
                          if name in holders)
        raise ModelFormatError(
            f"model {model.name!r}: fuse_embedding_table: tables {where} share key {example} ({extra_rows} keys "
            f"are in more than one of the tables fused into one table of dim {self.dim}); fused tables need "
            f"disjoint keys (HugeCTR's requirement: one row per key). Offset the keys of each table, or set "
            f"fuse_embedding_table false for model {model.name!r}")

    @property
    def keys(self) -> np.ndarray:
        """All keys, members in order: `(num_rows,) int64` (a copy, 8 bytes per row, made once)."""
        if self._keys is None:
            self._keys = np.concatenate([np.asarray(m.keys, dtype=np.int64) for m in self.members])
        return self._keys

    def iter_chunks(self, chunk_rows: int = 1 << 20) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`(keys: (m,) int64, vectors: (m, dim) float32)` chunks, members in order; a chunk never
        spans two members (m ≤ chunk_rows)."""
        for member in self.members:
            yield from member.iter_chunks(chunk_rows)

    def fingerprint(self) -> dict:
        """The members' fingerprints (what the persistent tier's load record compares)."""
        return {"dim": self.dim, "fused": [m.fingerprint() for m in self.members]}


@dataclass(frozen=True)
class _OnePassPlan:
    """A `lookup_many` list of table ids whose tables all live in one fused table, on one device:
    its pass, how many tables, and the most keys every one of them takes per call."""

    one_pass: TableLookup
    num_tables: int
    max_keys: int


@dataclass
class FusedLookups:
    """The fused tables of one loaded model: a `TableLookup` per fused table and device, its stats,
    and the `lookup_many` call plans seen so far (`(table ids, device) → _OnePassPlan`)."""

    plan: FusionPlan
    passes: dict[tuple[int, int], TableLookup] = field(default_factory=dict)
    stats: list[TableStats] = field(default_factory=list)
    call_plans: dict[tuple[tuple[int, ...], int], _OnePassPlan] = field(default_factory=dict)

    def stored_tag(self, table_id: int) -> str:
        """The tiers' tag of the fused table holding original table `table_id`."""
        return self.plan.fused[self.plan.fused_of[table_id]].config.tag

    def stored_tags(self) -> list[str]:
        return [f.config.tag for f in self.plan.fused]

    def snapshots(self) -> dict[str, dict]:
        """`TableStats.snapshot()` of each fused table (its `lookup_many` passes), with its cache's rows."""
        out = {}
        for fused, stats in zip(self.plan.fused, self.stats):
            snap = stats.snapshot()
            caches = [r.cache for (i, _), r in self.passes.items() if i == fused.index and r.cache is not None]
            snap["cache_rows"] = caches[0].size() if caches else 0
            snap["cache_capacity_rows"] = caches[0].capacity_rows if caches else 0
            out[fused.config.name] = snap
        return out


def load_fused_model(plan: FusionPlan, config: PsConfig, volatile: KeyValueBackend | None,
                     persistent: KeyValueBackend | None, tiers: TierChain, background: Executor,
                     stats: list[TableStats], replicas: dict[tuple[int, int], TableLookup], show_progress: bool,
                     prefill: Callable[[ModelConfig, Any, TableLookup], None]) -> FusedLookups:
    """Load a fused model: validate the members' files and their disjointness, fill the tiers with
    the fused tables, build one cache per fused table and device. Fills `replicas` with one
    `TableLookup` per original table and device (sharing the fused table's cache; `stats[t]` counts
    them) and returns the fused tables' own lookups. On failure nothing stays: caches closed, the
    tables this load created dropped."""
    members = open_sparse_models(plan.model)
    rows: list[Any] = [FusedRows(plan.model, f, [members[t] for t in f.members]) for f in plan.fused]
    created = load_model_into_tiers(config, plan.stored, rows, volatile, persistent, show_progress)
    fused = FusedLookups(plan, stats=[TableStats() for _ in plan.fused])
    devices = plan.model.deployed_device_list if cuda_available() else plan.model.deployed_device_list[:1]
    try:
        for table, sparse in zip(plan.fused, rows):  # `rows` may now hold RestoredTables (updates since load)
            for device_id in devices:
                cache = make_cache(plan.stored, table.config, sparse.num_rows, device_id,
                                   lambda s=sparse: iter_table_rows(s))
                one_pass = TableLookup(plan.stored, table.config, cache, tiers, fused.stats[table.index], background)
                fused.passes[(table.index, device_id)] = one_pass
                prefill(plan.stored, sparse, one_pass)
                for t in table.members:
                    replicas[(t, device_id)] = TableLookup(plan.model, plan.member(t), cache, tiers, stats[t],
                                                           background)
            if not cuda_available():  # one CPU cache serves every deployed device id
                for device_id in plan.model.deployed_device_list[1:]:
                    fused.passes[(table.index, device_id)] = fused.passes[(table.index, devices[0])]
                    for t in table.members:
                        replicas[(t, device_id)] = replicas[(t, devices[0])]
    except BaseException:
        for lookup in {id(r.cache): r for r in fused.passes.values() if r.cache is not None}.values():
            lookup.cache.close()
        drop_tables(created)
        raise
    return fused


def lookup_many(ps: Any, keys_per_table: Sequence[Any], model_name: str, table_ids: Sequence[int],
                device_id: int = 0) -> list[Any]:
    """`[ps.lookup(k, model_name, t, device_id) for k, t in zip(keys_per_table, table_ids)]`, with the
    tables of one fused table looked up in one pass (see `HPS.lookup_many`)."""
    fused_model: FusedLookups | None = ps._runtime(model_name).fused
    if fused_model is not None and type(table_ids) in (list, tuple, range) and type(device_id) is int:
        call = fused_model.call_plans.get((tuple(table_ids), device_id))
        if call is not None and (type(table_ids) is range or set(map(type, table_ids)) == {int}):
            results = _one_pass_numpy(call, keys_per_table)
            if results is not None:
                return results
    if isinstance(keys_per_table, np.ndarray) or is_torch(keys_per_table):
        keys_per_table = list(keys_per_table)  # a (tables, n) array: one row per table
    if not isinstance(table_ids, (Sequence, np.ndarray, range)):
        raise KeyInputError(f"lookup_many: table_ids must be a list of table ids, got {type(table_ids).__name__}")
    if len(keys_per_table) != len(table_ids):
        raise KeyInputError(f"lookup_many: {len(keys_per_table)} key arrays for {len(table_ids)} table ids; "
                            f"give one key array per table id")
    runtime = ps._runtime(model_name)
    fused: FusedLookups | None = runtime.fused
    if fused is None:
        return [ps.lookup(keys, model_name, t, device_id) for keys, t in zip(keys_per_table, table_ids)]
    known = runtime.replicas.get
    replicas = []
    for t in table_ids:  # Python ints straight from the dict; anything else (and errors) through `_replica`
        replica = known((t, device_id)) if type(t) is int and type(device_id) is int else None
        replicas.append(replica if replica is not None else ps._replica(model_name, t, device_id))
    groups: dict[int, list[int]] = {}
    fused_of = fused.plan.fused_of
    for i, replica in enumerate(replicas):
        groups.setdefault(fused_of[replica.table.table_id], []).append(i)
    results: list[Any] = [None] * len(replicas)
    if len(groups) == 1 and len(replicas) > 1 and ps.config.supportlonglong:
        _note_call_plan(fused, table_ids, device_id, replicas, next(iter(groups)))
    for index, positions in groups.items():
        if len(positions) == 1 or not _lookup_pass(ps, fused.passes[(index, device_id)], replicas, keys_per_table,
                                                   positions, results):
            for i in positions:
                results[i] = ps.lookup(keys_per_table[i], model_name, replicas[i].table.table_id, device_id)
    return results


def _note_call_plan(fused: FusedLookups, table_ids: Sequence[int], device_id: int, replicas: list[TableLookup],
                    index: int) -> None:
    """Keep the plan of a `lookup_many` call whose tables all live in fused table `index` (plain int
    table ids and device only: True == 1 must not find table 1's plan)."""
    if type(device_id) is not int or type(table_ids) not in (list, tuple, range):
        return
    ids = tuple(table_ids)
    if any(type(t) is not int for t in ids):
        return
    if len(fused.call_plans) >= MAX_CALL_PLANS:
        fused.call_plans.clear()
    fused.call_plans[(ids, device_id)] = _OnePassPlan(fused.passes[(index, device_id)], len(ids),
                                                      min(r.max_keys for r in replicas))


def _one_pass_numpy(call: _OnePassPlan, keys_per_table: Any) -> list[np.ndarray] | None:
    """`lookup_many` of a known call (`call`) with numpy int64 keys: one `(tables, n)` array, or one 1-D
    array per table. No per-table Python work: the checks are C-level (`map`, `concatenate` with
    casting "no"), a 2-D array is looked up as it is, and equal-sized results are the rows of one
    `(tables, n, dim)` array. None (nothing done) when the keys need the general path (torch, other
    dtypes or dims, empty or too many keys): it checks and converts them per table."""
    num_tables = call.num_tables
    if type(keys_per_table) is np.ndarray:
        if (keys_per_table.ndim != 2 or keys_per_table.dtype is not INT64 or keys_per_table.shape[0] != num_tables
                or not 0 < keys_per_table.shape[1] <= call.max_keys):
            return None
        flat, sizes = keys_per_table.reshape(-1), None
    else:
        if (type(keys_per_table) not in (list, tuple) or len(keys_per_table) != num_tables
                or set(map(type, keys_per_table)) != {np.ndarray} or set(map(_NDIM, keys_per_table)) != {1}):
            return None
        sizes = list(map(len, keys_per_table))
        low, high = min(sizes), max(sizes)
        if low == 0 or high > call.max_keys:
            return None
        try:
            flat = np.concatenate(keys_per_table, dtype=INT64, casting="no")
        except TypeError:  # another dtype: converted and checked per table by the general path
            return None
        if low == high:
            sizes = None
    one_pass = call.one_pass
    vectors = one_pass.lookup_host(flat) if one_pass.takes_torch else one_pass.lookup(flat)
    if sizes is None:
        return list(vectors.reshape(num_tables, -1, vectors.shape[1]))
    ends = list(accumulate(sizes))
    return [vectors[end - size:end] for size, end in zip(sizes, ends)]


def _lookup_pass(ps: Any, one_pass: TableLookup, replicas: list[TableLookup], keys_per_table: Sequence[Any],
                 positions: list[int], results: list[Any]) -> bool:
    """Look up the keys at `positions` (tables of one fused table) in one pass of `one_pass` and put
    each table's vectors into `results`; False (nothing done) when the keys mix numpy and torch."""
    flats, shapes, devices = [], [], []
    fast = ps.config.supportlonglong
    for i in positions:
        keys, replica = keys_per_table[i], replicas[i]
        if (fast and type(keys) is np.ndarray and keys.dtype is INT64 and 0 < keys.ndim <= MAX_KEY_DIMS
                and keys.size <= replica.max_keys):
            flats.append(keys if keys.ndim == 1 else keys.reshape(-1))  # the hot path: nothing to convert or check
            shapes.append(keys.shape)
            devices.append(None)
        else:
            flat, shape, torch_keys, device = ps._validate_keys(keys, replica.model, replica.table)
            flats.append(flat)
            shapes.append(shape)
            devices.append(device if torch_keys else None)
    torch_keys = devices[0] is not None
    if any((d is not None) != torch_keys for d in devices):
        return False
    dim = one_pass.table.dim
    if not torch_keys:
        keys = np.concatenate(flats)
        vectors = one_pass.lookup_host(keys) if one_pass.takes_torch else one_pass.lookup(keys)
        offset = 0
        for i, flat, shape in zip(positions, flats, shapes):
            end = offset + flat.shape[0]
            results[i] = vectors[offset:end] if len(shape) == 1 else vectors[offset:end].reshape(*shape, dim)
            offset = end
        return True
    import torch

    target = one_pass.torch_device if one_pass.takes_torch else torch.device("cpu")
    keys = torch.cat([f if f.device == target else f.to(target) for f in flats])
    vectors = one_pass.lookup(keys) if one_pass.takes_torch else torch.from_numpy(one_pass.lookup(keys.numpy()))
    offset = 0
    for i, flat, shape, device in zip(positions, flats, shapes, devices):
        part = vectors[offset:offset + flat.shape[0]]
        offset += flat.shape[0]
        if part.device != device:
            part = part.to(device)
        results[i] = part.view(*shape, dim)
    return True
