"""`HPS`: the process-wide parameter server (mirrors `hugectr.inference.HPS`).

    with HPS("ps.json") as ps:
        vectors = ps.lookup(keys, "my_model", table_id=0)   # keys.shape + (dim,) float32

It owns the shared tiers (volatile, persistent), one cache per table and device replica,
the Kafka update sources and the periodic refresher.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hps.cache.factory import cuda_available, make_cache
from hps.config import ModelConfig, PsConfig, TableConfig, load_config, parse_config
from hps.errors import ClosedError, HpsError, KeyInputError, UnknownModelError
from hps.lookup.fusion import FusedLookups, load_fused_model, lookup_many, plan_fusion
from hps.lookup.loading import (LoadMonitor, drop_tables, iter_table_rows, load_model_into_tiers, load_reports,
                                open_sparse_models)
from hps.lookup.pipeline import TableLookup, checked_out, is_torch, lookup_into
from hps.lookup.row_home import with_row_home
from hps.lookup.stats import TableStats
from hps.lookup.tiers import TierChain
from hps.storage import make_backend
from hps.storage.base import INT64

log = logging.getLogger(__name__)

UINT32_LIMIT = 1 << 32
#: Keys of up to this many dimensions; the vectors add one (numpy 1.x arrays have at most 32).
MAX_KEY_DIMS = 16


@dataclass
class _ModelRuntime:
    """A loaded model: per table, its stats and one `TableLookup` per device replica."""

    config: ModelConfig
    stats: list[TableStats]
    replicas: dict[tuple[int, int], TableLookup] = field(default_factory=dict)
    #: With fuse_embedding_table: the fused tables (their storage tags and one-pass lookups); `replicas`
    #: then serve the original tables from the fused tables' caches.
    fused: FusedLookups | None = None

    def stored_tag(self, table: TableConfig) -> str:
        """The tiers' table holding `table`'s rows: its own tag, or its fused table's."""
        return table.tag if self.fused is None else self.fused.stored_tag(table.table_id)

    def replica(self, table_id: int, device_id: int) -> TableLookup:
        try:
            return self.replicas[(table_id, device_id)]
        except KeyError:
            raise UnknownModelError(f"model {self.config.name!r}: device_id {device_id!r} is not in "
                                    f"deployed_device_list {list(self.config.deployed_device_list)}") from None


class HPS:
    """A hierarchical parameter server: cache → volatile tier → persistent tier → default value."""

    def __init__(self, config: str | os.PathLike | dict | PsConfig, *, show_progress: bool = True,
                 metrics_port: int | None = None) -> None:
        """Load `config` (ps.json path, dict or `PsConfig`) and every model's sparse files.

        metrics_port: serve Prometheus metrics (`hps.metrics`) on http://127.0.0.1:<port>/metrics
        until `close()` (0: any free port; `self.metrics_server.url` says which); None: no endpoint.
        Raises `ConfigError` / `ModelFormatError` / `BackendError`; on failure nothing stays open."""
        #: The config served: the ps.json's, plus an in-process hash map for rows no tier would hold.
        self.config: PsConfig = with_row_home(load_config(config))
        self._lock = threading.RLock()
        self._closed = False
        self._models: dict[str, _ModelRuntime] = {}
        self._show_progress = show_progress
        self._background = ThreadPoolExecutor(max_workers=max(m.thread_pool_size for m in self.config.models),
                                              thread_name_prefix="hps-background")
        self.volatile = self.persistent = None
        self._update_sources: list[Any] = []
        self._stop_refresh = threading.Event()
        self._refresher: threading.Thread | None = None
        #: The /metrics endpoint (`hps.metrics.MetricsServer`) when `metrics_port` was given.
        self.metrics_server: Any = None
        try:
            self.volatile = make_backend(self.config.volatile_db, key_bytes=8 if self.config.supportlonglong else 4)
            self.persistent = make_backend(self.config.persistent_db)
            self._tiers = TierChain(self.volatile, self.persistent,
                                    promote_misses=bool(self.config.volatile_db
                                                        and self.config.volatile_db.cache_missed_embeddings),
                                    background=self._background)
            for model in self.config.models:
                self._load(model)
            if self.config.update_source is not None:
                from hps.update import start_update_sources

                self._update_sources = start_update_sources(self, self.config)
            self._start_refresher()
            if metrics_port is not None:
                from hps.metrics import serve_metrics

                self.metrics_server = serve_metrics(self, metrics_port)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lookups
    def lookup(self, keys: Any, model_name: str, table_id: int, device_id: int = 0, *, out: Any = None) -> Any:
        """Embedding vectors of `keys` from table `table_id` of model `model_name`.

        keys: int64 / int32 (uint32 when supportlonglong is false) of any shape `S`, as a numpy
        array, a list, or a torch tensor on the CPU or a GPU.
        Returns float32 of shape `S + (dim,)`: numpy for numpy / list keys, a torch tensor on
        the keys' device for torch keys. Keys missing from every tier get the table's
        `default_value_for_each_table` in every element.
        out: the caller's buffer instead: float32, C-contiguous, writable, shape `S + (dim,)`, a numpy
        array or a torch tensor in host or GPU memory; filled and returned, with no new array of the
        vectors' size (a GPU cache writes a same-device `out` directly, a host `out` through the
        replica's pinned buffers). A wrong `out` raises `KeyInputError` before anything is looked up."""
        replica = self._replica(model_name, table_id, device_id)
        if (type(keys) is np.ndarray and keys.dtype is INT64 and self.config.supportlonglong
                and (out is None or type(out) is np.ndarray)):
            return self._lookup_host(replica, keys, out)  # the hot path: nothing to convert or range-check
        if out is None and self.config.supportlonglong and replica.takes_as_is(keys):
            return replica.lookup(keys)  # flat int64 keys on the cache's GPU: nothing to convert or check
        if out is None and not replica.takes_torch and _is_cpu_int_tensor(keys):
            # host cache, CPU tensor keys: the numpy path on zero-copy views (torch ops cost µs each)
            import torch

            return torch.from_numpy(self.lookup(keys.numpy(), model_name, table_id, device_id))
        table = replica.table
        flat, shape, torch_keys, keys_device = self._validate_keys(keys, replica.model, table)
        if out is not None:
            lookup_into(replica, flat, checked_out(out, shape, table.dim, f"lookup of {_where(replica.model, table)}"))
            return out
        if torch_keys:  # each torch call costs microseconds: skip the ones with nothing to do
            if replica.takes_torch:
                if flat.device != replica.torch_device:
                    flat = flat.to(replica.torch_device)
                vectors = replica.lookup(flat)
            else:
                import torch

                vectors = torch.from_numpy(replica.lookup(flat.cpu().numpy()))
            if vectors.device != keys_device:
                vectors = vectors.to(keys_device)
            return vectors if len(shape) == 1 else vectors.view(*shape, table.dim)
        if replica.takes_torch:
            vectors = replica.lookup_host(flat)  # keys and vectors through pinned buffers
        else:
            vectors = replica.lookup(flat)
        return vectors.reshape(*shape, table.dim)

    def _lookup_host(self, replica: TableLookup, keys: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """`lookup` of int64 numpy keys (any shape), 64-bit key space, into a new numpy array or the
        caller's numpy `out`: on a host cache, or through a GPU cache's pinned buffers."""
        if not 0 < keys.ndim <= MAX_KEY_DIMS or keys.size > replica.max_keys:
            self._validate_keys(keys, replica.model, replica.table)  # raises, naming what is wrong
        dim = replica.table.dim
        flat_out = None if out is None else checked_out(out, keys.shape, dim,
                                                        f"lookup of {_where(replica.model, replica.table)}")
        flat = keys.reshape(-1)
        vectors = replica.lookup_host(flat, flat_out) if replica.takes_torch else replica.lookup(flat, flat_out)
        return out if out is not None else vectors.reshape(*keys.shape, dim)

    def _replica(self, model_name: str, table_id: int, device_id: int) -> TableLookup:
        """The `TableLookup` of one table on one device; raises `UnknownModelError` naming what is unknown."""
        runtime = self._runtime(model_name)
        if type(table_id) is not int or type(device_id) is not int:  # True == 1 would find table 1
            table_id, device_id = _index_arg(table_id, "table_id"), _index_arg(device_id, "device_id")
        replica = runtime.replicas.get((table_id, device_id))
        if replica is None:
            runtime.config.table(table_id)  # raises for a table_id out of range
            replica = runtime.replica(table_id, device_id)  # raises for a device not deployed
        return replica

    def lookup_many(self, keys_per_table: Any, model_name: str, table_ids: Any, device_id: int = 0) -> list[Any]:
        """The vectors of several tables of one model in one call: the same list as
        `[self.lookup(keys, model_name, t, device_id) for keys, t in zip(keys_per_table, table_ids)]`.

        keys_per_table: one key array per entry of `table_ids` (each as `lookup` takes it; a 2-D array
        is one row per table). Returns a list of float32 arrays, entry i of shape
        `keys_per_table[i].shape + (dim_i,)`, numpy or torch as `lookup` returns them (numpy results
        may be views of one array). With `fuse_embedding_table`, the keys of the tables of one fused
        table are concatenated and looked up in one pass (one cache probe, one GPU kernel launch),
        then split; other tables, and keys mixing numpy and torch, are looked up one table at a time.
        Keys are checked per table as `lookup` checks them (`KeyInputError` naming the table)."""
        return lookup_many(self, keys_per_table, model_name, table_ids, device_id)

    def lookup_fromdlpack(self, keys: Any, out: Any, model_name: str, table_id: int, device_id: int = 0) -> None:
        """Look up `keys` and write the vectors into the caller's `out` in place (HugeCTR's contract).

        keys: int64 / int32 of any shape (n keys in all), on the CPU or a GPU; out: float32, C-contiguous,
        at least n × dim elements, on the CPU or a GPU. Its first n × dim elements receive the (n, dim)
        vectors row-major; the rest are left as they were. Each may be a DLPack capsule (the
        `to_dlpack(t)` of a torch / TensorFlow / numpy tensor), an object with `__dlpack__`, a numpy
        array or a torch tensor. Capsules are read, not consumed: the caller can `from_dlpack` them
        afterwards to read its tensor, as HugeCTR's demos do. `out` is checked before the lookup: a
        bad one raises `KeyInputError` with nothing written."""
        keys_t, out_t = _from_dlpack(keys, "keys"), _from_dlpack(out, "out")
        dim = self._replica(model_name, table_id, device_id).table.dim
        on_host = isinstance(out_t, np.ndarray)
        need = (keys_t.size if isinstance(keys_t, np.ndarray) else keys_t.numel()) * dim
        out_size = out_t.size if on_host else out_t.numel()
        # numpy's dtype.__str__ is Python code (~20 µs): compare, don't format
        if out_size < need or not (out_t.dtype == np.float32 if on_host else str(out_t.dtype) == "torch.float32"):
            raise KeyInputError(f"lookup_fromdlpack: out must be float32 with at least {need} elements "
                                f"({need // dim} keys × dim {dim}), got {out_t.dtype} with {out_size}")
        if not (out_t.flags.c_contiguous if on_host else out_t.is_contiguous()):
            raise KeyInputError("lookup_fromdlpack: out must be C-contiguous (the vectors are written to its "
                                f"memory row-major), got strides {out_t.strides if on_host else out_t.stride()}")
        if on_host and not out_t.flags.writeable:
            raise KeyInputError("lookup_fromdlpack: out is read-only")
        # HPS.lookup, not an override (hps.inference.HPS.lookup returns host arrays): it writes into out's memory
        flat_out = out_t.reshape(-1)[:need]  # a view: out is contiguous
        HPS.lookup(self, keys_t, model_name, table_id, device_id, out=flat_out.reshape(*keys_t.shape, dim))

    # ------------------------------------------------------------------ updates and models
    def apply_update(self, tag: str, keys: np.ndarray, vectors: np.ndarray, tier: str) -> None:
        """Upsert `keys: (n,) int64` → `vectors: (n, dim) float32` into `tier` ("volatile" |
        "persistent", if configured; "cache" writes no tier), then assign them in every cache
        replica holding them."""
        self._check_open()
        table = self.table_by_tag(tag)
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), table.dim):
            raise KeyInputError(f"update of {tag}: vectors of shape {vectors.shape} for {len(keys)} keys "
                                f"of dim {table.dim}")
        if tier not in ("volatile", "persistent", "cache"):
            raise HpsError(f"update of {tag}: unknown tier {tier!r}; expected 'volatile', 'persistent' or 'cache'")
        backend = {"volatile": self.volatile, "persistent": self.persistent, "cache": None}[tier]
        runtime = self._models[table.model_name]
        if backend is not None:
            backend.insert_or_assign(runtime.stored_tag(table), keys, vectors)
        for (table_id, _), replica in runtime.replicas.items():
            if table_id == table.table_id and replica.cache is not None:
                replica.cache.assign(replica.to_cache_kind(keys), replica.to_cache_kind(vectors))

    def add_model(self, model: ModelConfig | dict) -> None:
        """Serve a model that was not in the original ps.json (its tables share this HPS's tiers)."""
        self._check_open()
        if isinstance(model, dict):
            model = parse_config({"supportlonglong": self.config.supportlonglong, "models": [model]},
                                 base_dir=self.config.base_dir or os.getcwd()).models[0]
        with self._lock:
            if model.name in self._models:
                raise HpsError(f"add_model: model {model.name!r} is already served")
            self._ensure_row_home(model)
            self._load(model)
            self._retarget_update_sources()

    def remove_model(self, name: str, drop_tables: bool = False) -> None:
        """Stop serving model `name` and free its caches; `drop_tables` also deletes its tables from the tiers."""
        self._check_open()
        with self._lock:
            runtime = self._runtime(name)
            del self._models[name]
            self._retarget_update_sources()
        for replica in runtime.replicas.values():
            if replica.cache is not None:
                replica.cache.close()
        if drop_tables:
            tags = runtime.fused.stored_tags() if runtime.fused else [t.tag for t in runtime.config.tables]
            for backend in (self.volatile, self.persistent):
                for tag in tags if backend is not None else ():
                    backend.drop_table(tag)

    def refresh(self, model_name: str | None = None) -> int:
        """Re-read the cached keys of `model_name` (or every model) from the tiers; returns rows refreshed."""
        self._check_open()
        runtimes = [self._runtime(model_name)] if model_name else list(self._models.values())
        # once per cache: the tables of a fused table (and a CPU cache's device ids) share one
        replicas = {id(r.cache) if r.cache is not None else id(r): r for rt in runtimes for r in rt.replicas.values()}
        return sum(replica.refresh() for replica in replicas.values())

    def _retarget_update_sources(self) -> None:
        """Point the Kafka sources at the topics of the models served now."""
        tags = [t.tag for runtime in self._models.values() for t in runtime.config.tables]
        for source in self._update_sources:
            source.set_tags(tags)

    # ------------------------------------------------------------------ introspection
    @property
    def update_sources(self) -> list[Any]:
        """The running Kafka update sources (`hps.update.KafkaUpdateSource`), empty without `update_source`."""
        return list(self._update_sources)

    @property
    def model_names(self) -> list[str]:
        return list(self._models)

    def model_config(self, name: str) -> ModelConfig:
        return self._runtime(name).config

    def table_by_tag(self, tag: str) -> TableConfig:
        """The served table whose tag is `tag` (`hps_et.<model>.<table>`)."""
        for runtime in self._models.values():
            for table in runtime.config.tables:
                if table.tag == tag:
                    return table
        raise UnknownModelError(f"no served table has tag {tag!r}")

    def stats(self) -> dict:
        """Per model and table: lookups, keys, hits and hit rate per level (cache, volatile,
        persistent, default), volatile-tier errors, latency p50/p99 (µs); plus cache sizes."""
        out: dict[str, Any] = {"models": {}}
        for name, runtime in list(self._models.items()):
            tables = {}
            for table, stats in zip(runtime.config.tables, runtime.stats):
                snap = stats.snapshot()
                caches = [r.cache for (t, _), r in runtime.replicas.items() if t == table.table_id and r.cache]
                snap["cache_rows"] = caches[0].size() if caches else 0
                snap["cache_capacity_rows"] = caches[0].capacity_rows if caches else 0
                tables[table.name] = snap
            if runtime.fused is not None:
                tables.update(runtime.fused.snapshots())
            out["models"][name] = tables
        out["load"] = {name: report for name, report in load_reports().items() if name in self._models}
        return out

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop update sources and the refresher, free caches and close the tiers (idempotent)."""
        if self._closed:
            return
        if self.metrics_server is not None:  # no scrape reads what is being closed
            self.metrics_server.close()
        for source in self._update_sources:  # first, so that no batch is cut off half-applied
            source.close()
        self._closed = True
        self._stop_refresh.set()
        if self._refresher is not None:
            self._refresher.join()
        self._background.shutdown(wait=True)
        for runtime in self._models.values():
            for replica in runtime.replicas.values():
                if replica.cache is not None:
                    replica.cache.close()
        self._models.clear()
        for backend in (self.volatile, self.persistent):
            if backend is not None:
                backend.close()

    def __enter__(self) -> HPS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this HPS has been closed")

    def _runtime(self, model_name: str) -> _ModelRuntime:
        self._check_open()
        try:
            return self._models[model_name]
        except (KeyError, TypeError):
            raise UnknownModelError(f"unknown model {model_name!r}; served models: {list(self._models)}") from None

    def _ensure_row_home(self, model: ModelConfig) -> None:
        """Give an added model's rows an in-process hash map if no tier of this HPS would hold them."""
        home = with_row_home(dataclasses.replace(self.config, models=(model,))).volatile_db
        if home is self.config.volatile_db:
            return
        self.config = dataclasses.replace(self.config, volatile_db=home)
        if self.volatile is None:
            self.volatile = self._tiers.volatile = make_backend(home)

    def _load(self, model: ModelConfig) -> None:
        """Validate the model's files, fill the tiers, build one cache per table and device: one progress
        bar over every phase, and the peak memory measured (`stats()["load"]`)."""
        with LoadMonitor(model.name, self._show_progress):
            self._load_phases(model)

    def _load_phases(self, model: ModelConfig) -> None:
        plan = plan_fusion(self.config, model)
        if plan is not None:  # fuse_embedding_table: one stored table and cache per fused table
            runtime = _ModelRuntime(model, [TableStats() for _ in model.tables])
            runtime.fused = load_fused_model(plan, self.config, self.volatile, self.persistent, self._tiers,
                                             self._background, runtime.stats, runtime.replicas,
                                             self._show_progress, self._prefill)
            self._models[model.name] = runtime
            return
        sparse_models = open_sparse_models(model)
        created = load_model_into_tiers(self.config, model, sparse_models, self.volatile, self.persistent,
                                        self._show_progress)
        runtime = _ModelRuntime(model, [TableStats() for _ in model.tables])
        devices = model.deployed_device_list if cuda_available() else model.deployed_device_list[:1]
        try:
            for table, sparse in zip(model.tables, sparse_models):
                for device_id in devices:
                    cache = make_cache(model, table, sparse.num_rows, device_id,
                                       lambda s=sparse: iter_table_rows(s))
                    replica = TableLookup(model, table, cache, self._tiers, runtime.stats[table.table_id],
                                          self._background)
                    runtime.replicas[(table.table_id, device_id)] = replica
                    self._prefill(model, sparse, replica)
                if not cuda_available():  # one CPU cache serves every deployed device id
                    for device_id in model.deployed_device_list[1:]:
                        runtime.replicas[(table.table_id, device_id)] = runtime.replicas[(table.table_id, devices[0])]
        except BaseException:  # nothing half-loaded: free the caches built so far, drop the new tables
            for replica in set(runtime.replicas.values()):
                if replica.cache is not None:
                    replica.cache.close()
            drop_tables(created)
            raise
        self._models[model.name] = runtime

    @staticmethod
    def _prefill(model: ModelConfig, sparse: Any, replica: TableLookup) -> None:
        """Pre-fill a dynamic cache in file order (cache_refresh_percentage_per_iteration > 0 and init_ec)."""
        cache = replica.cache
        if (cache is None or model.cache_type != "dynamic" or not model.init_ec
                or model.cache_refresh_percentage_per_iteration <= 0):
            return
        for keys, vectors in iter_table_rows(sparse, limit_rows=cache.capacity_rows):
            cache.insert_or_assign(replica.to_cache_kind(keys), replica.to_cache_kind(vectors))

    def _validate_keys(self, keys: Any, model: ModelConfig, table: TableConfig) -> tuple[Any, tuple, bool, Any]:
        """Flat int64 keys, the original shape, whether they are torch, and their device."""
        torch_keys = is_torch(keys)
        if torch_keys:
            import torch

            dtype = keys.dtype
            if dtype is not torch.int64 and (dtype is torch.bool or keys.is_floating_point() or keys.is_complex()):
                raise KeyInputError(f"{_where(model, table)}: keys must be int64 or int32, got {dtype}")
            if keys.layout is not torch.strided or keys.is_meta:
                raise KeyInputError(f"{_where(model, table)}: keys must be a dense tensor with data, got "
                                    f"layout {keys.layout} on device {keys.device}")
            if dtype == getattr(torch, "uint64", None) and keys.numel() and int(keys.view(torch.int64).min()) < 0:
                raise KeyInputError(f"{_where(model, table)}: uint64 keys must be below 2**63 (int64 keys)")
            shape, device = tuple(keys.shape), keys.device
            flat = keys.reshape(-1) if len(shape) != 1 else keys
            if dtype is not torch.int64:
                flat = flat.to(torch.int64)
        else:
            arr = keys if type(keys) is np.ndarray else _as_key_array(keys, model, table)
            if arr.dtype.kind not in "iu":
                raise KeyInputError(f"{_where(model, table)}: keys must be int64 or int32, got {arr.dtype}")
            if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 1 << 63:
                raise KeyInputError(f"{_where(model, table)}: uint64 keys must be below 2**63, got {int(arr.max())}")
            shape, device = arr.shape, "cpu"
            flat = arr.reshape(-1)
            if flat.dtype != np.int64 or not flat.flags.c_contiguous:
                flat = np.ascontiguousarray(flat, dtype=np.int64)
        if not 1 <= len(shape) <= MAX_KEY_DIMS:
            raise KeyInputError(f"{_where(model, table)}: keys must have at least one dimension and at most "
                                f"{MAX_KEY_DIMS}, got shape {shape}")
        limit = model.max_keys_per_call(table.table_id)
        if flat.shape[0] > limit:
            raise KeyInputError(
                f"{_where(model, table)}: {flat.shape[0]} keys exceed max_batch_size {model.max_batch_size} × "
                f"maxnum_catfeature_query_per_table_per_sample[{table.table_id}] {table.maxnum_keys_per_sample} "
                f"= {limit}")
        if not self.config.supportlonglong and flat.shape[0]:
            low, high = int(flat.min()), int(flat.max())
            if low < 0 or high >= UINT32_LIMIT:
                raise KeyInputError(f"{_where(model, table)}: supportlonglong is false (uint32 keys) but keys span "
                                    f"[{low}, {high}]")
        return flat, shape, torch_keys, device

    def _start_refresher(self) -> None:
        """Refresh each model's caches every `refresh_interval` s after `refresh_delay` s (0 = off)."""
        periodic = [m for m in self.config.models if m.refresh_interval > 0]
        if not periodic:
            return

        def run() -> None:
            clock = 0.0
            next_due = {m.name: m.refresh_delay + m.refresh_interval for m in periodic}
            tick = min(m.refresh_interval for m in periodic) / 4
            while not self._stop_refresh.wait(tick):
                clock += tick
                for m in periodic:
                    if clock >= next_due[m.name] and m.name in self._models:
                        next_due[m.name] = clock + m.refresh_interval
                        try:
                            self.refresh(m.name)
                        except Exception:  # noqa: BLE001 - keep refreshing the others
                            log.exception("periodic refresh of model %s failed", m.name)

        self._refresher = threading.Thread(target=run, name="hps-refresh", daemon=True)
        self._refresher.start()


def _is_cpu_int_tensor(keys: Any) -> bool:
    """A strided int32 / int64 torch tensor in host memory (viewable as numpy without a copy)."""
    if not is_torch(keys):
        return False
    import torch

    return keys.is_cpu and keys.dtype in (torch.int64, torch.int32) and keys.layout is torch.strided


def _index_arg(value: Any, name: str) -> int:
    """`table_id` / `device_id` as an int: Python or numpy integers (never a bool, a float or a list)."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise UnknownModelError(f"{name} must be an integer, got {type(value).__name__} {value!r:.60}")


def _as_key_array(keys: Any, model: ModelConfig, table: TableConfig) -> np.ndarray:
    """Keys given as a list / tuple / other sequence → a numpy array; ragged or odd input → `KeyInputError`."""
    try:
        return np.asarray(keys)
    except (ValueError, TypeError, OverflowError) as exc:
        raise KeyInputError(f"{_where(model, table)}: keys must be a rectangular array of integers "
                            f"({type(keys).__name__} given): {exc}") from None


def _where(model: ModelConfig, table: TableConfig) -> str:
    return f"model {model.name!r} table {table.table_id} ({table.name})"


def _from_dlpack(x: Any, name: str) -> Any:
    """A numpy array (host memory) or torch tensor (CUDA memory) viewing `x`, no copy; a DLPack capsule
    is left unconsumed (see `hps.dlpack`). `name` is the argument named in errors."""
    from hps.dlpack import view

    return view(x, name)
