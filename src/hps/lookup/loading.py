"""Start-up loading: a model's sparse files → the storage tiers, all or nothing, and no update lost.

Every file is validated (sizes, dims, duplicate keys) before anything is written; a
failure while writing drops the tables this load created, so no tier is left half-loaded.

**Restarts.** The persistent tier (RocksDB) outlives the process, so it records per table
(column family) the sparse files it was loaded from and whether that load completed
(`RocksDBBackend.load_record`: each file's absolute path, size, mtime and a hash of its first and
last MiB, see `SparseModel.fingerprint`). At start, for each table:

- same files as recorded, load complete → RocksDB is kept as it is: no re-import, and every
  update applied to it since the load (from Kafka or `HPS.apply_update`) stays;
- files changed (a new model version), or the recorded load never completed (the process died
  mid-load) → the table is dropped and loaded again from the files;
- no record (a database written by HugeCTR, or by an older hps) → the files are loaded over it,
  as HugeCTR did, and the record is written;
- with `persistent_db.read_only` (or `initialize_after_startup: false`) nothing is written: an
  incomplete table is refused with an `HpsError`; a table recorded for other files is served as
  it is, with a warning.

The in-process tiers start empty: the hash map and the caches (static tables, pre-filled dynamic
caches) are filled from the files with the rows RocksDB was updated with since its load laid over
them (`RocksDBBackend.updated_rows`, a log of updated keys kept in the same atomic write as the
update), so after a restart every tier answers the latest update RocksDB applied, and every other
key its file vector. Updates that reached only the volatile tier before a restart (no persistent
tier, or one whose `update_filters` skip the table) are lost with the process memory, unless the
Kafka source replays them. A shared volatile tier (Redis) is filled the same way: files plus
RocksDB's updates.

**Speed, memory, progress.** A local sparse file going into the in-process hash map is read
straight into the map's value rows (`HashMapBackend.load_buffer` / `bulk_load`: one copy, as
`numpy.fromfile` makes), the next chunk read in a second thread while the current chunk's keys are
hashed in; other targets get the next chunk read ahead the same way. Tables are sized once
(`reserve`), so nothing of the table's size exists twice. A `LoadMonitor` around a model's whole
load (`HPS` enters one) draws one progress bar over the bytes of every phase (validation, tiers,
caches) with rate and time left, samples the resident memory, and leaves its peak in
`load_reports()` (`HPS.stats()["load"]`).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

from hps.config.schema import ModelConfig, PsConfig
from hps.errors import HpsError, ModelFormatError
from hps.lookup.row_home import cache_holds_whole_table
from hps.model_format import SparseModel
from hps.model_format.remote import redact
from hps.storage.base import KeyValueBackend

log = logging.getLogger(__name__)

LOAD_CHUNK_ROWS = 1 << 20
#: At most this many bytes of rows per chunk (and two chunks in memory at once: one read ahead),
#: so that a load's transient memory stays small beside the table (~5 % of a 20 M × 64 table).
LOAD_CHUNK_BYTES = 64 << 20
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def open_sparse_models(model: ModelConfig) -> list[SparseModel]:
    """Open and validate every table file of `model` (raises `ModelFormatError` naming the file)."""
    start = time.perf_counter()
    opened = [SparseModel(table.sparse_file, table.dim) for table in model.tables]
    monitor = _CURRENT.get()
    if monitor is not None:
        monitor.plan(model, opened)
    for sparse in opened:
        if monitor is not None:
            monitor.phase(f"validating {sparse.where}")
        sparse.check_unique_keys()
        if monitor is not None:
            monitor.advance(8 * sparse.num_rows)
    log.info("model %s: validated %d sparse file(s), %s rows (sizes, dims, unique keys) in %.2f s", model.name,
             len(opened), f"{sum(s.num_rows for s in opened):,}", time.perf_counter() - start)
    return opened


def load_model_into_tiers(config: PsConfig, model: ModelConfig, sparse_models: list[SparseModel],
                          volatile: KeyValueBackend | None, persistent: KeyValueBackend | None,
                          show_progress: bool = True) -> list[tuple[KeyValueBackend, str]]:
    """Create the model's tables in the tiers and fill them from `sparse_models` (one per table),
    following the restart rule of the module docstring.

    Static and uvm tables with a cache live whole in it and skip the tiers (as in HugeCTR). Where
    RocksDB holds updates of a table since its load, `sparse_models[i]` is replaced in place by a
    `RestoredTable` (the files with those updates), so that the caches built from the list start
    from the latest rows too. Returns the `(backend, tag)` tables this call created or reloaded,
    for `drop_tables` if a later step fails. On any error, those tables are dropped and the error
    is re-raised."""
    whole_in_cache = cache_holds_whole_table(model)
    fill_volatile = volatile is not None and config.volatile_db.initialize_after_startup and not whole_in_cache
    created: list[tuple[KeyValueBackend, str]] = []
    try:
        for backend in (b for b in (volatile, persistent) if b is not None):
            existing = set(backend.tables())
            for table in model.tables:
                if table.tag not in existing:
                    created.append((backend, table.tag))
                backend.create_table(table.tag, table.dim)
        with _monitor(model, show_progress) as progress:
            for index, (table, sparse) in enumerate(zip(model.tables, sparse_models)):
                source = sparse.fingerprint() if _records_loads(persistent) else None
                if source is not None:
                    source["rows"] = "updates_only" if whole_in_cache else "all"
                action = _persistent_action(config, table, persistent, source)
                rows = sparse
                if action == "keep":
                    rows = RestoredTable.over(sparse, *persistent.updated_rows(table.tag))
                    sparse_models[index] = rows  # the caches start from the restored rows too
                elif action in ("load", "reload"):
                    if action == "reload" and (persistent, table.tag) not in created:
                        created.append((persistent, table.tag))
                    persistent.begin_load(table.tag, table.dim, source, reset=action == "reload")
                targets = [volatile] if fill_volatile else []
                if action in ("load", "reload") and not whole_in_cache:
                    targets.append(persistent)
                elif action is None and persistent is not None and not whole_in_cache and (
                        config.persistent_db.initialize_after_startup and not config.persistent_db.read_only):
                    targets.append(persistent)  # a persistent tier that keeps no load records
                if (not fill_volatile and isinstance(rows, RestoredTable) and volatile is not None
                        and not getattr(volatile, "is_shared", False)):
                    rows.restore_updates_into(volatile, table.tag)  # the in-process map held them too
                start = time.perf_counter()
                _fill(targets, table.tag, rows, progress)
                log.info("%s: %s rows into %s in %.2f s%s", table.tag, f"{rows.num_rows:,}",
                         ", ".join(type(t).__name__ for t in targets) or "no tier", time.perf_counter() - start,
                         f" (persistent tier: {action})" if action else "")
                if (volatile is not None and config.volatile_db.initialize_after_startup
                        and hasattr(volatile, "mark_loaded")):
                    volatile.mark_loaded(table.tag)  # a shared tier: secondaries waiting for it attach now
                if action in ("load", "reload"):
                    persistent.finish_load(table.tag, rows.num_rows if persistent in targets else 0)
        return created
    except BaseException as exc:
        drop_tables(created)
        if isinstance(exc, HpsError) or not isinstance(exc, Exception):
            raise
        raise HpsError(f"loading model {model.name!r} failed, nothing was kept: {exc}") from exc


def _records_loads(persistent: KeyValueBackend | None) -> bool:
    """True for a persistent tier that keeps load records (RocksDB)."""
    return persistent is not None and hasattr(persistent, "load_record")


def _persistent_action(config: PsConfig, table: Any, persistent: KeyValueBackend | None,
                       source: dict | None) -> str | None:
    """What to do with the persistent tier's copy of `table` (see the module docstring):
    "keep", "load" (over what it holds), "reload" (drop, then load), "none" (leave it), or None
    when there is no persistent tier keeping load records. Raises `HpsError` for an incomplete
    table that may not be reloaded."""
    if source is None:
        return None
    may_load = config.persistent_db.initialize_after_startup and not config.persistent_db.read_only
    record = persistent.load_record(table.tag)
    where = f"RocksDB at {config.persistent_db.path}: table {table.tag}"
    if record is None:
        return "load" if may_load else "none"
    if record.get("state") != "complete":
        if may_load:
            log.warning("%s: its last load (from %s) was interrupted; loading it again", where,
                        redact(table.sparse_file))
            return "reload"
        why = "persistent_db.read_only is set" if config.persistent_db.read_only else \
            "persistent_db.initialize_after_startup is false"
        raise HpsError(f"{where} is incomplete: its load from {table.sparse_file} was interrupted (started "
                       f"at unix time {record.get('started_unix_s')}), and {why}, so it cannot be loaded again; "
                       f"start once with a writable persistent_db and initialize_after_startup true")
    if record.get("source") == source:
        return "keep"
    if may_load:
        log.info("%s: the sparse files changed since its load (a new model version); loading it again", where)
        return "reload"
    log.warning("%s was loaded from other files than %s (recorded: %s); serving it as it is", where,
                redact(table.sparse_file), record.get("source"))
    return "none"


def _fill(targets: list[KeyValueBackend], tag: str, rows: Any, progress: "LoadMonitor") -> None:
    """Write every row of `rows` (a `SparseModel` or `RestoredTable`) into each of `targets`.

    The next chunk is read while the current one is written (the reads and the compiled inserts
    release the GIL). A local sparse file going into a tier with `load_buffer` (the in-process
    hash map) is read straight into that tier's value rows: one copy from the page cache into
    the table, as `numpy.fromfile` makes into a new array, and nothing of the table's size twice."""
    row_bytes = 8 + 4 * rows.dim
    if not targets:
        progress.skip(rows.num_rows * row_bytes)
        return
    for backend in targets:  # size the hash map once instead of growing it chunk by chunk
        reserve = getattr(backend, "reserve", None)
        if reserve is not None:
            reserve(tag, rows.num_rows)
    progress.phase(f"loading {tag}")
    owner = next((b for b in targets if hasattr(b, "load_buffer")), None)
    direct = (owner is not None and isinstance(rows, SparseModel) and not rows.is_remote
              and sys.byteorder == "little")
    chunk_rows = chunk_rows_for(rows.dim)
    chunks = _direct_chunks(owner, tag, rows, chunk_rows) if direct else _read_ahead(rows.iter_chunks(chunk_rows))
    order = [b for b in targets if b is not owner] + ([owner] if owner is not None else [])  # the owner last:
    for keys, vectors in chunks:  # its bulk_load may reuse a row of the buffer (a duplicate key)
        for backend in order:
            getattr(backend, "bulk_load", backend.insert_or_assign)(tag, keys, vectors)
        progress.advance(len(keys) * row_bytes)


def chunk_rows_for(dim: int) -> int:
    """Rows per load chunk at `dim`: `LOAD_CHUNK_ROWS`, fewer where that passes `LOAD_CHUNK_BYTES`
    (two such chunks are in memory at once: one being written, one read ahead)."""
    return max(1, min(LOAD_CHUNK_ROWS, LOAD_CHUNK_BYTES // (8 + 4 * dim)))


def _read_ahead(chunks: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`chunks`, with the next one read in a second thread while the caller works on the current one."""
    with ThreadPoolExecutor(1, thread_name_prefix="hps-load-read") as pool:
        nxt = pool.submit(next, chunks, None)
        while True:
            chunk = nxt.result()
            if chunk is None:
                return
            nxt = pool.submit(next, chunks, None)
            yield chunk


def _direct_chunks(owner: Any, tag: str, sparse: SparseModel,
                   chunk_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`(keys: (m,) int64, vectors: (m, dim) float32)` chunks of a local sparse file, each chunk's
    vectors read straight into `owner.load_buffer(tag, m)` (the rows its `bulk_load` takes without
    a copy), the next chunk read in a second thread while the caller writes the current one.
    Raises `ModelFormatError` when a file is shorter than its validated size (changed meanwhile)."""
    n, dim = sparse.num_rows, sparse.dim
    if n == 0:
        return
    with open(sparse.key_path, "rb") as key_file, open(sparse.vector_path, "rb") as vector_file, \
            ThreadPoolExecutor(1, thread_name_prefix="hps-load-read") as pool:

        def read(start: int, view: np.ndarray) -> np.ndarray:
            rows = view.shape[0]
            key_file.seek(8 * start)
            keys = np.fromfile(key_file, dtype="<i8", count=rows)
            vector_file.seek(4 * dim * start)
            got = vector_file.readinto(memoryview(view).cast("B")) if rows else 0
            if keys.shape[0] != rows or got != view.nbytes:
                raise ModelFormatError(f"sparse model {sparse.where} shrank while being read: expected rows "
                                       f"[{start}, {start + rows}), got {keys.shape[0]} keys and {got} vector bytes")
            return keys.astype(np.int64, copy=False)

        start, rows = 0, min(chunk_rows, n)
        view = owner.load_buffer(tag, rows)
        pending = pool.submit(read, start, view)
        while start < n:
            keys = pending.result()
            following = start + rows
            if following < n:  # its rows follow this chunk's; taken before this chunk's bulk_load moves the end
                next_rows = min(chunk_rows, n - following)
                next_view = owner.load_buffer(tag, next_rows, offset=rows)
                pending = pool.submit(read, following, next_view)
            yield keys, view
            if following < n:
                start, rows, view = following, next_rows, next_view
            else:
                start = n


class RestoredTable:
    """A sparse model's rows with the rows updated since RocksDB's load laid over them.

    Reads like a `SparseModel` (`path`, `dim`, `num_rows`, `iter_chunks`): file rows in file order,
    an updated key's row replaced by its latest vector (or left out when it was erased), then the
    updated keys that are not in the files. Holds the updated rows in memory (9 + 4·dim bytes each)."""

    def __init__(self, sparse: SparseModel, keys: np.ndarray, vectors: np.ndarray, present: np.ndarray) -> None:
        """keys: (m,) int64 sorted, unique; vectors: (m, dim) float32; present: (m,) bool (False = erased)."""
        self.sparse, self.path, self.dim = sparse, sparse.path, sparse.dim
        self._keys, self._vectors, self._present = keys, vectors, present
        # a 1-byte-per-slot hash filter (≥ 8 slots per updated key) in front of the binary search:
        # a file key is searched only when its slot is marked (measured 0.5 s → 0.07 s per 1M keys)
        bits = max(10, int(np.ceil(np.log2(8 * keys.shape[0]))))
        self._shift = np.uint64(64 - bits)
        self._filter = np.zeros(1 << bits, dtype=np.bool_)
        self._filter[self._slots(keys)] = True
        in_file = np.zeros(keys.shape[0], dtype=np.bool_)
        for start in range(0, sparse.num_rows, LOAD_CHUNK_ROWS):
            in_file[self._match(np.ascontiguousarray(sparse.keys[start:start + LOAD_CHUNK_ROWS], np.int64))[1]] = True
        self._new = ~in_file & present
        self.num_rows = int(sparse.num_rows - np.count_nonzero(in_file & ~present) + np.count_nonzero(self._new))

    @classmethod
    def over(cls, sparse: SparseModel, keys: np.ndarray, vectors: np.ndarray,
             present: np.ndarray) -> "SparseModel | RestoredTable":
        """`sparse` itself when nothing was updated, else the restored view."""
        return sparse if keys.shape[0] == 0 else cls(sparse, keys, vectors, present)

    def __repr__(self) -> str:
        return f"RestoredTable({self.sparse!r}, updated_rows={self._keys.shape[0]})"

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        """Filter slots of `keys: (n,) int64` (Fibonacci hashing: the top bits of key × 2^64/φ)."""
        return ((keys.view(np.uint64) * _GOLDEN) >> self._shift).astype(np.intp)

    def _match(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For `keys: (n,) int64`: `(rows, pos)`, the indexes of those among the updated keys and
        their positions there."""
        rows = np.flatnonzero(self._filter[self._slots(keys)])
        pos = np.searchsorted(self._keys, keys[rows])
        np.minimum(pos, self._keys.shape[0] - 1, out=pos)
        hit = self._keys[pos] == keys[rows]
        return rows[hit], pos[hit]

    def iter_chunks(self, chunk_rows: int = LOAD_CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`(keys: (m,) int64, vectors: (m, dim) float32)` chunks of at most `chunk_rows` rows."""
        for keys, vectors in self.sparse.iter_chunks(chunk_rows):
            rows, pos = self._match(keys)
            if rows.shape[0]:
                vectors[rows] = self._vectors[pos]
                erased = rows[~self._present[pos]]
                if erased.shape[0]:
                    keep = np.ones(keys.shape[0], dtype=np.bool_)
                    keep[erased] = False
                    keys, vectors = keys[keep], vectors[keep]
            yield keys, vectors
        new = np.flatnonzero(self._new)
        for start in range(0, new.shape[0], chunk_rows):
            rows = new[start:start + chunk_rows]
            yield self._keys[rows], self._vectors[rows]

    def restore_updates_into(self, backend: KeyValueBackend, tag: str) -> None:
        """Write the updated rows (not the file rows) into `backend`'s table `tag`."""
        if self._present.any():
            backend.insert_or_assign(tag, self._keys[self._present], self._vectors[self._present])


def drop_tables(created: list[tuple[KeyValueBackend, str]]) -> None:
    """Drop the `(backend, tag)` tables a failed load created (best effort: the load's error wins)."""
    for backend, tag in created:
        try:
            backend.drop_table(tag)
        except Exception:  # noqa: BLE001 - keep the original error
            pass


def iter_table_rows(sparse: SparseModel, limit_rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`(keys, vectors)` chunks of a table in file order, stopping after `limit_rows` rows."""
    remaining = sparse.num_rows if limit_rows is None else min(limit_rows, sparse.num_rows)
    monitor = _CURRENT.get()
    if monitor is not None:
        monitor.phase(f"filling the cache from {getattr(sparse, 'where', sparse.path)}")
    row_bytes = 8 + 4 * sparse.dim
    for keys, vectors in _read_ahead(sparse.iter_chunks(chunk_rows_for(sparse.dim))):
        if remaining <= 0:
            return
        yield keys[:remaining], vectors[:remaining]
        if monitor is not None:
            monitor.advance(min(remaining, len(keys)) * row_bytes)
        remaining -= len(keys)


#: The load in progress in this thread (context), if any: its phases share one progress bar.
_CURRENT: contextvars.ContextVar["LoadMonitor | None"] = contextvars.ContextVar("hps_load_monitor", default=None)
#: What the last load of each model measured (`load_reports`), by model name.
_REPORTS: dict[str, dict] = {}
_REPORTS_LOCK = threading.Lock()
#: Seconds between two samples of the resident set size during a load.
RSS_SAMPLE_S = 0.01


def load_reports() -> dict[str, dict]:
    """What the last load of each model in this process measured, by model name: `{"seconds",
    "bytes" (bytes read over every phase), "rss_before_bytes", "peak_rss_bytes", "rss_after_bytes"
    (the steady state the load left), "peak_over_steady"}` (RSS sampled every `RSS_SAMPLE_S` s
    from /proc/self/statm; where that file is missing, `resource.getrusage`'s maximum)."""
    with _REPORTS_LOCK:
        return {name: dict(report) for name, report in _REPORTS.items()}


def rss_bytes() -> int:
    """This process's resident set size in bytes (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _maxrss_bytes()


def _maxrss_bytes() -> int:
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    except (ImportError, OSError):
        return 0


class LoadMonitor:
    """One load of a model: a single progress bar over the bytes of every phase (validating the key
    files, filling the tiers, filling the caches), with rate and time left, and the peak resident
    memory, sampled in a thread. Enter it around the whole load (`HPS` does); the phases find it
    through a context variable. On exit the measurements go to `load_reports()`."""

    def __init__(self, model_name: str, show: bool) -> None:
        self.model_name = model_name
        self._show = show
        self._bar: Any = None
        self._task: Any = None
        self.total_bytes = 0
        self.done_bytes = 0
        self.peak_rss_bytes = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._token: Any = None
        self._depth = 0

    def __enter__(self) -> "LoadMonitor":
        self._depth += 1
        if self._depth > 1:
            return self
        self._started = time.perf_counter()
        self.rss_before_bytes = self.peak_rss_bytes = rss_bytes()
        self._sampler = threading.Thread(target=self._sample, name="hps-load-rss", daemon=True)
        self._sampler.start()
        if self._show:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(f"model {self.model_name}", total=self.total_bytes or None)
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return
        _CURRENT.reset(self._token)
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        after = rss_bytes()
        self.peak_rss_bytes = max(self.peak_rss_bytes, after)
        if self._bar is not None:
            self._bar.__exit__(*exc)
        if exc[0] is None:
            with _REPORTS_LOCK:
                _REPORTS[self.model_name] = {
                    "seconds": time.perf_counter() - self._started, "bytes": self.done_bytes,
                    "rss_before_bytes": self.rss_before_bytes, "peak_rss_bytes": self.peak_rss_bytes,
                    "rss_after_bytes": after, "peak_over_steady": self.peak_rss_bytes / after if after else None}

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            rss = rss_bytes()
            if rss > self.peak_rss_bytes:
                self.peak_rss_bytes = rss

    def plan(self, model: ModelConfig, sparse_models: list[Any]) -> None:
        """Set the bar's total: per table, its keys (validation), its rows (the tiers, unless the cache
        holds the whole table) and what the caches will read (the whole table for static / uvm, the
        pre-filled rows of a dynamic cache). A phase that turns out to be skipped calls `skip`."""
        from hps.cache.factory import capacity_rows

        total = 0
        for sparse in sparse_models:
            row_bytes = 8 + 4 * sparse.dim
            total += 8 * sparse.num_rows + row_bytes * sparse.num_rows  # validation, tiers
            if model.gpucache and model.cache_type in ("static", "uvm"):
                total += row_bytes * sparse.num_rows
            elif (model.gpucache and model.cache_type == "dynamic" and model.init_ec
                  and model.cache_refresh_percentage_per_iteration > 0):
                total += row_bytes * min(sparse.num_rows, capacity_rows(model, sparse.num_rows))
        self.total_bytes += total
        if self._bar is not None:
            self._bar.update(self._task, total=self.total_bytes)

    def phase(self, description: str) -> None:
        """Name what the bar is doing now."""
        if self._bar is not None:
            self._bar.update(self._task, description=f"model {self.model_name}: {description}")

    def advance(self, nbytes: int) -> None:
        """Count `nbytes` more bytes done."""
        self.done_bytes += nbytes
        if self._bar is not None:
            if self.done_bytes > self.total_bytes:
                self.total_bytes = self.done_bytes
                self._bar.update(self._task, total=self.total_bytes)
            self._bar.advance(self._task, nbytes)

    def skip(self, nbytes: int) -> None:
        """A planned phase of `nbytes` will not run: take it off the total."""
        self.total_bytes = max(self.done_bytes, self.total_bytes - nbytes)
        if self._bar is not None:
            self._bar.update(self._task, total=self.total_bytes)


def _monitor(model: ModelConfig, show: bool) -> LoadMonitor:
    """The load of `model` in progress (entered again: nothing changes), or a new one for it."""
    current = _CURRENT.get()
    return current if current is not None else LoadMonitor(model.name, show)
