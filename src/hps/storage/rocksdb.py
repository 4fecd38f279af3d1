"""The persistent tier: `persistent_db.type` rocks_db, through rocksdict in raw mode.

HugeCTR's layout, so a RocksDB written by HugeCTR opens as is: one column family per tag
`hps_et.<model>.<table>`, record key = the raw 8-byte little-endian int64 key, value = the raw
float32 vector bytes. The dim of a table is given by `create_table(tag, dim)`; hps also records it
in the default column family (`hps_dim:<tag>` → ASCII dim) and checks it, and every value read is
checked against `4 · dim` bytes (a mismatch is a `BackendError` naming the tag).

Batches go through multi-get (keys sorted in RocksDB's byte order first: 1.5x faster) and
`WriteBatch` in `max_batch_size` chunks. Where rocksdict takes a
Python list of bytes, the list is built by numpy (`view('V8').tolist()`; 'S8' would strip trailing
zero bytes) and consumed by C-level `map`, never by a Python loop body.

**Load records and the update log** (what makes a restart lose nothing; the rule is in
`hps.lookup.loading`). `begin_load(tag, source)` writes `hps_load:<tag>` → JSON
`{"state": "loading", "source": ...}` in the default column family before the first row of a load,
`finish_load(tag, rows)` rewrites it as `"complete"` after the last; `load_record(tag)` reads it. A
process killed in between leaves `"loading"`: the table is known to be incomplete. From
`finish_load` on, every `insert_or_assign` / `erase` of the table also records its keys in the
column family `hps_updated:<tag>` (key → empty value), in the same atomic `WriteBatch`, so that
`updated_rows(tag)` returns exactly the rows changed since the load: what the in-process tiers
(hash map, caches, empty after a restart) must take over the sparse files.

**Faults.** A write that fails names the database path, the table and RocksDB's own cause (e.g.
"No space left on device"); once a write failed, an error while closing is logged, never raised
over the first one. `read_only: true` writes nothing into the database directory (so a read-only
mount works): the database is opened through a private temporary directory of symbolic links to
its files, because rocksdict always writes its `rocksdict-config.json` where it opens, and RocksDB
itself, opened read-only, takes no LOCK and writes no LOG.
"""

from __future__ import annotations

import collections
import errno
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any, Iterator

import numpy as np

from hps.config.schema import RocksDBConfig
from hps.errors import BackendError, ClosedError, require
from hps.storage.base import check_keys, check_vectors

log = logging.getLogger(__name__)

_DIM_PREFIX = b"hps_dim:"
_LOAD_PREFIX = b"hps_load:"
#: Column family `hps_updated:<tag>`: the keys of `<tag>` written since its load completed.
UPDATE_LOG_PREFIX = "hps_updated:"
_DEFAULT_CF = "default"
LOAD_LOADING, LOAD_COMPLETE = "loading", "complete"


def _key_list(keys: np.ndarray) -> list[bytes]:
    """`keys: (n,) int64` → n raw 8-byte little-endian keys (built by numpy, no Python loop)."""
    return np.ascontiguousarray(keys, dtype="<i8").view("V8").tolist()


def _row_list(vectors: np.ndarray) -> list[bytes]:
    """`vectors: (n, dim) float32` → n raw `4·dim`-byte rows."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    return vectors.view(f"V{vectors.shape[1] * 4}").reshape(-1).tolist()


def _byte_order(keys: np.ndarray) -> np.ndarray:
    """`keys: (n,) int64` → `(n,) uint64` whose numeric order is the lexicographic order of the keys'
    little-endian bytes (RocksDB's bytewise comparator): the byte-swapped key."""
    return np.ascontiguousarray(keys, dtype="<i8").view("<u8").byteswap()


def _consume(iterable: Any) -> None:
    collections.deque(iterable, maxlen=0)


class _Table:
    """An open column family: its dim, the rocksdict CF object and handle (released on close), and
    the handle of its update log once its load completed (None before: writes are not logged)."""

    __slots__ = ("tag", "dim", "cf", "handle", "log")

    def __init__(self, tag: str, dim: int, cf: Any, handle: Any) -> None:
        self.tag, self.dim, self.cf, self.handle = tag, dim, cf, handle
        self.log: Any = None


class RocksDBBackend:
    """RocksDB tier (HugeCTR `rocks_db`): one column family per table, raw little-endian bytes."""

    name = "rocks_db"
    is_shared = False

    def __init__(self, config: RocksDBConfig) -> None:
        rd = require("rocksdict", "rocksdb")
        self._rd = rd
        self.config = config
        self.path = os.fspath(config.path)
        self.read_only = bool(config.read_only)
        self._batch_rows = int(config.max_batch_size)
        self._lock = threading.Lock()
        self._tables: dict[str, _Table] = {}
        self._closed = False
        self._write_failed = False
        self._view_dir: str | None = None  # read_only on a read-only filesystem: the symlink view
        exists = os.path.exists(os.path.join(self.path, "CURRENT"))
        if self.read_only and not exists:
            raise BackendError(f"RocksDB at {self.path}: read_only is set but no database exists there")
        if not self.read_only:
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as exc:
                raise BackendError(f"RocksDB at {self.path}: cannot create the directory ({exc})") from exc
        try:
            families = rd.Rdict.list_cf(self.path) if exists else [_DEFAULT_CF]
        except Exception as exc:  # rocksdict raises plain Exception
            raise BackendError(f"RocksDB at {self.path}: cannot list its column families ({exc})") from exc
        self._db = self._open(families)
        self._logs = {cf for cf in families if cf.startswith(UPDATE_LOG_PREFIX)}
        self._families = {cf for cf in families if cf != _DEFAULT_CF and cf not in self._logs}

    def _open(self, families: list[str]) -> Any:
        """Open the database with every column family (read-only: writing nothing into its directory)."""
        rd = self._rd
        column_families = {cf: self._options() for cf in families if cf != _DEFAULT_CF}
        if not self.read_only:
            try:
                return rd.Rdict(self.path, self._options(), column_families=column_families,
                                access_type=rd.AccessType.read_write())
            except Exception as exc:  # rocksdict raises plain Exception
                raise BackendError(f"RocksDB at {self.path}: cannot open ({exc})") from exc
        # rocksdict writes rocksdict-config.json into the directory it opens, even read-only: open a
        # private view of symbolic links instead, so nothing is written (a read-only mount works)
        self._view_dir = _symlink_view(self.path)
        try:
            return rd.Rdict(self._view_dir, self._options(), column_families=column_families,
                            access_type=rd.AccessType.read_only())
        except Exception as exc:
            self._remove_view()
            raise BackendError(f"RocksDB at {self.path}: cannot open read-only ({exc})") from exc

    def _remove_view(self) -> None:
        if self._view_dir is not None:
            shutil.rmtree(self._view_dir, ignore_errors=True)
            self._view_dir = None

    def _options(self) -> Any:
        opts = self._rd.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.increase_parallelism(int(self.config.num_threads))
        opts.optimize_for_point_lookup(8)
        return opts

    # -- tables -------------------------------------------------------------------------------

    def _check_open(self, tag: str) -> None:
        if self._closed:
            raise ClosedError(f"RocksDB backend at {self.path} is closed (table {tag})")

    def _check_writable(self, tag: str, what: str) -> None:
        if self.read_only:
            raise BackendError(f"RocksDB at {self.path} is read_only: cannot {what} table {tag}")

    def _table(self, tag: str) -> _Table:
        self._check_open(tag)
        table = self._tables.get(tag)
        if table is not None:
            return table
        if tag in self._families:
            stored = self._stored_dim(tag)
            if stored is not None:
                self.create_table(tag, stored)
                return self._tables[tag]
            raise BackendError(f"RocksDB at {self.path}: table {tag} exists but its dim is unknown; "
                               f"call create_table({tag!r}, dim) first")
        raise BackendError(f"RocksDB at {self.path}: unknown table {tag}; tables: {sorted(self._families)}")

    def _stored_dim(self, tag: str) -> int | None:
        raw = self._db.get(_DIM_PREFIX + tag.encode())
        return int(raw) if raw is not None else None

    def create_table(self, tag: str, dim: int) -> None:
        """Open (or create) the column family `tag` of `dim`-float rows; idempotent for the same dim.

        An existing family is checked against the recorded dim, or, for a database written by
        HugeCTR, against the size of its first value. Read-only databases cannot create tables."""
        self._check_open(tag)
        if not isinstance(dim, (int, np.integer)) or int(dim) < 1:
            raise BackendError(f"RocksDB: table {tag}: dim must be a positive integer, got {dim!r}")
        dim = int(dim)
        with self._lock:
            table = self._tables.get(tag)
            if table is not None:
                if table.dim != dim:
                    raise BackendError(f"RocksDB at {self.path}: table {tag} has dim {table.dim}, not {dim}")
                return
            if tag in self._families:
                self._check_existing_dim(tag, dim)
            else:
                self._check_writable(tag, "create")
                try:
                    self._db.create_column_family(tag, self._options())
                except Exception as exc:
                    raise BackendError(f"RocksDB at {self.path}: cannot create table {tag} ({exc})") from exc
                self._families.add(tag)
            if not self.read_only and self._stored_dim(tag) is None:
                self._put_meta(tag, _DIM_PREFIX, str(dim).encode())
            table = _Table(tag, dim, self._db.get_column_family(tag), self._db.get_column_family_handle(tag))
            record = self.load_record(tag)
            if record is not None and record.get("state") == LOAD_COMPLETE and not self.read_only:
                table.log = self._log_handle(tag)
            self._tables[tag] = table

    def _check_existing_dim(self, tag: str, dim: int) -> None:
        stored = self._stored_dim(tag)
        if stored is not None and stored != dim:
            raise BackendError(f"RocksDB at {self.path}: table {tag} was written with dim {stored}, not {dim}")
        if stored is None:
            cf = self._db.get_column_family(tag)
            try:
                it = cf.items()
                first = next(it, None)
                del it
            finally:
                del cf
            if first is not None and len(first[1]) != 4 * dim:
                raise BackendError(f"RocksDB at {self.path}: table {tag} holds {len(first[1])}-byte values, "
                                   f"expected {4 * dim} (dim {dim} float32)")

    def tables(self) -> list[str]:
        """Tags (column families, except 'default' and the update logs) held in the database."""
        self._check_open("*")
        return sorted(self._families)

    def drop_table(self, tag: str) -> None:
        """Drop the column family `tag` (not allowed when read_only)."""
        self._check_open(tag)
        self._check_writable(tag, "drop")
        if tag not in self._families:
            raise BackendError(f"RocksDB at {self.path}: unknown table {tag}")
        with self._lock:
            self._drop_family(tag)
            try:
                self._db.delete(_DIM_PREFIX + tag.encode())
                self._db.delete(_LOAD_PREFIX + tag.encode())
            except Exception as exc:
                raise self._fault(f"table {tag}: cannot delete its records", exc) from exc

    def _drop_family(self, tag: str) -> None:
        """Drop the column family `tag` and its update log (lock held); the records stay."""
        table = self._tables.pop(tag, None)
        if table is not None:
            table.cf = table.handle = table.log = None
        del table
        try:
            if tag in self._families:
                self._db.drop_column_family(tag)
            if UPDATE_LOG_PREFIX + tag in self._logs:
                self._db.drop_column_family(UPDATE_LOG_PREFIX + tag)
        except Exception as exc:
            raise self._fault(f"table {tag}: cannot drop it", exc) from exc
        self._families.discard(tag)
        self._logs.discard(UPDATE_LOG_PREFIX + tag)

    def _log_handle(self, tag: str) -> Any:
        """The handle of `tag`'s update log, created if missing (lock held)."""
        name = UPDATE_LOG_PREFIX + tag
        if name not in self._logs:
            try:
                self._db.create_column_family(name, self._options())
            except Exception as exc:
                raise self._fault(f"table {tag}: cannot create its update log", exc) from exc
            self._logs.add(name)
        return self._db.get_column_family_handle(name)

    def _put_meta(self, tag: str, prefix: bytes, value: bytes) -> None:
        try:
            self._db[prefix + tag.encode()] = value
        except Exception as exc:
            raise self._fault(f"table {tag}: cannot write its {prefix.decode().rstrip(':')} record", exc) from exc

    def _fault(self, what: str, exc: BaseException) -> BackendError:
        """A `BackendError` naming the database, `what` failed and RocksDB's cause; marks the backend
        as having failed a write, so that a later error in `close` never hides this one."""
        self._write_failed = True
        return BackendError(f"RocksDB at {self.path}: {what} ({_cause(exc)})")

    # -- load records ------------------------------------------------------------------------

    def load_record(self, tag: str) -> dict | None:
        """The load record of table `tag`: `{"state": "loading" | "complete", "source": ..., ...}`,
        or None when no load was ever started by hps (a table written by HugeCTR, or by updates only)."""
        self._check_open(tag)
        raw = self._db.get(_LOAD_PREFIX + tag.encode())
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError as exc:
            raise BackendError(f"RocksDB at {self.path}: table {tag}: unreadable load record {raw[:80]!r}") from exc
        if not isinstance(record, dict):
            raise BackendError(f"RocksDB at {self.path}: table {tag}: unreadable load record {raw[:80]!r}")
        return record

    def begin_load(self, tag: str, dim: int, source: dict, reset: bool) -> None:
        """Mark table `tag` as being loaded from `source` (any JSON object), before its first row.

        reset: drop the table's rows first (a new model version, or an interrupted load); otherwise
        the load writes over what the table holds (a table written by HugeCTR). The update log is
        emptied either way: a load makes the files the table's reference again."""
        self._check_open(tag)
        self._check_writable(tag, "load")
        record = {"state": LOAD_LOADING, "source": source, "dim": int(dim), "started_unix_s": round(time.time(), 3)}
        self._put_meta(tag, _LOAD_PREFIX, json.dumps(record).encode())
        with self._lock:
            if reset:
                self._drop_family(tag)
            elif UPDATE_LOG_PREFIX + tag in self._logs:
                table = self._tables.get(tag)
                if table is not None:
                    table.log = None
                try:
                    self._db.drop_column_family(UPDATE_LOG_PREFIX + tag)
                except Exception as exc:
                    raise self._fault(f"table {tag}: cannot drop its update log", exc) from exc
                self._logs.discard(UPDATE_LOG_PREFIX + tag)
        self.create_table(tag, dim)

    def finish_load(self, tag: str, rows: int) -> None:
        """Mark the load of table `tag` (begun by `begin_load`) complete after `rows` rows; from now
        on its writes are recorded in its update log."""
        table = self._table(tag)
        record = self.load_record(tag)
        if record is None or record.get("state") != LOAD_LOADING:
            raise BackendError(f"RocksDB at {self.path}: table {tag}: finish_load without begin_load")
        with self._lock:
            table.log = self._log_handle(tag)
        record.update(state=LOAD_COMPLETE, rows=int(rows), finished_unix_s=round(time.time(), 3))
        self._put_meta(tag, _LOAD_PREFIX, json.dumps(record).encode())

    def updated_rows(self, tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows of table `tag` written (or erased) since its load completed, from its update log.

        Returns `(keys: (m,) int64 sorted ascending, vectors: (m, dim) float32, present: (m,) bool)`;
        `present` is False for a key erased since (its vector row is zeros). Memory: m × (9 + 4·dim)
        bytes. Empty when the table has no update log."""
        table = self._table(tag)
        name = UPDATE_LOG_PREFIX + tag
        empty = (np.empty(0, np.int64), np.empty((0, table.dim), np.float32), np.empty(0, np.bool_))
        if name not in self._logs:
            return empty
        log_cf = self._db.get_column_family(name)
        try:
            raw = b"".join(log_cf.keys())
        finally:
            del log_cf
        if len(raw) % 8:
            raise BackendError(f"RocksDB at {self.path}: update log of {tag} holds keys that are not 8 bytes")
        keys = np.sort(np.frombuffer(raw, dtype="<i8").astype(np.int64))
        if keys.shape[0] == 0:
            return empty
        vectors, present = self.find(tag, keys)
        return keys, vectors, present

    def close(self) -> None:
        """Release every column family handle, then the database (its LOCK file is freed).

        A failure to close raises `BackendError`, unless a write already failed (e.g. the disk is
        full): then it is logged, so that the error that caused it stays the one raised."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for table in self._tables.values():
                table.cf = table.handle = table.log = None
            self._tables.clear()
            db, self._db = self._db, None
            try:
                db.close()
            except Exception as exc:
                if self._write_failed:
                    log.error("RocksDB at %s: closing after a failed write also failed: %s", self.path, _cause(exc))
                    return
                raise BackendError(f"RocksDB at {self.path}: cannot close ({_cause(exc)})") from exc
            finally:
                del db
                self._remove_view()

    # -- reads --------------------------------------------------------------------------------

    def find(self, tag: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Multi-get `keys: (n,) int64` in `max_batch_size` chunks.

        Returns `(vectors: (n, dim) float32, found: (n,) bool)`; rows of missing keys are zeros.
        A stored value whose size is not `4 · dim` raises `BackendError` naming the tag."""
        table = self._table(tag)
        keys = check_keys(keys, f"table {tag}")
        n = keys.shape[0]
        # multi-get in RocksDB's key order: neighbouring keys share blocks (measured 1.5x faster)
        order = np.argsort(_byte_order(keys))
        key_bytes = _key_list(keys[order])
        sorted_out = np.zeros((n, table.dim), dtype=np.float32)
        sorted_found = np.zeros(n, dtype=np.bool_)
        for start in range(0, n, self._batch_rows):
            stop = min(n, start + self._batch_rows)
            values = table.cf.get(key_bytes[start:stop], default=b"")
            sorted_found[start:stop] = self._decode_into(table, values, sorted_out[start:stop])
        out = np.empty_like(sorted_out)
        found = np.empty_like(sorted_found)
        out[order] = sorted_out
        found[order] = sorted_found
        return out, found

    def _decode_into(self, table: _Table, values: list[bytes], out: np.ndarray) -> np.ndarray:
        """Copy present `values` (b"" = missing) into the matching rows of `out`; returns the found mask."""
        row_bytes = 4 * table.dim
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        hit = lengths == row_bytes
        if not hit.all():
            bad = (lengths != 0) & ~hit
            if bad.any():
                raise BackendError(
                    f"RocksDB at {self.path}: table {table.tag}: {int(bad.sum())} of {len(values)} values have "
                    f"{int(lengths[bad][0])} bytes, expected {row_bytes} (dim {table.dim} float32)")
        joined = b"".join(values)
        rows = np.frombuffer(joined, dtype="<f4").reshape(-1, table.dim)
        if rows.shape[0] == out.shape[0]:
            out[:] = rows
        else:
            out[hit] = rows
        return hit

    def size(self, tag: str) -> int:
        """Exact number of rows in table `tag` (iterates the keys: O(rows))."""
        table = self._table(tag)
        counter = itertools.count()
        _consume(zip(table.cf.keys(), counter))
        return next(counter)

    def is_empty(self, tag: str) -> bool:
        """True when table `tag` holds no row (reads one record: O(1), unlike `size`)."""
        table = self._table(tag)
        it = table.cf.keys()
        try:
            return next(it, None) is None
        finally:
            del it

    def estimated_size(self, tag: str) -> int:
        """RocksDB's estimate of the rows in table `tag` (`rocksdb.estimate-num-keys`; O(1), approximate)."""
        table = self._table(tag)
        return int(table.cf.property_int_value("rocksdb.estimate-num-keys") or 0)

    def items(self, tag: str, batch_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate table `tag` in key byte order as `(keys: (m,) int64, vectors: (m, dim) float32)` batches."""
        table = self._table(tag)
        if batch_rows < 1:
            raise BackendError(f"RocksDB: table {tag}: batch_rows must be ≥ 1, got {batch_rows}")
        it = table.cf.items()
        try:
            while True:
                chunk = list(itertools.islice(it, batch_rows))
                if not chunk:
                    return
                raw_keys, raw_values = zip(*chunk)
                key_lengths = np.fromiter(map(len, raw_keys), dtype=np.int64, count=len(raw_keys))
                if (key_lengths != 8).any():
                    raise BackendError(f"RocksDB at {self.path}: table {tag} holds keys that are not 8 bytes")
                out = np.empty((len(chunk), table.dim), dtype=np.float32)
                if not self._decode_into(table, list(raw_values), out).all():
                    raise BackendError(f"RocksDB at {self.path}: table {tag} holds empty values")
                yield np.frombuffer(b"".join(raw_keys), dtype="<i8").astype(np.int64), out
        finally:
            del it

    # -- writes -------------------------------------------------------------------------------

    def insert_or_assign(self, tag: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert `keys: (n,) int64` → `vectors: (n, dim) float32` through `WriteBatch`es of
        `max_batch_size` records (later duplicates win). Nothing is written if validation fails."""
        table = self._table(tag)
        keys = check_keys(keys, f"table {tag}")
        vectors = check_vectors(tag, vectors, keys.shape[0], table.dim)
        self._check_writable(tag, "write to")
        key_bytes, row_bytes = _key_list(keys), _row_list(vectors)
        for start in range(0, keys.shape[0], self._batch_rows):
            batch = self._rd.WriteBatch(raw_mode=True)
            batch.set_default_column_family(table.handle)
            stop = start + self._batch_rows
            _consume(map(batch.put, key_bytes[start:stop], row_bytes[start:stop]))
            self._log_keys(table, batch, key_bytes[start:stop])
            self._write(table, batch, min(stop, keys.shape[0]) - start)

    def erase(self, tag: str, keys: np.ndarray) -> int:
        """Delete `keys: (n,) int64`; returns how many distinct keys were present."""
        table = self._table(tag)
        keys = check_keys(keys, f"table {tag}")
        self._check_writable(tag, "erase from")
        unique = np.unique(keys)
        key_bytes = _key_list(unique)
        present = 0
        for start in range(0, unique.shape[0], self._batch_rows):
            chunk = key_bytes[start:start + self._batch_rows]
            present += sum(map(bool, table.cf.get(chunk, default=b"")))
            batch = self._rd.WriteBatch(raw_mode=True)
            batch.set_default_column_family(table.handle)
            _consume(map(batch.delete, chunk))
            self._log_keys(table, batch, chunk)
            self._write(table, batch, len(chunk))
        return present

    @staticmethod
    def _log_keys(table: _Table, batch: Any, key_bytes: list[bytes]) -> None:
        """Record `key_bytes` in the table's update log, in the same atomic batch (after its load)."""
        if table.log is not None:
            _consume(map(batch.put, key_bytes, itertools.repeat(b"", len(key_bytes)),
                         itertools.repeat(table.log, len(key_bytes))))

    def _write(self, table: _Table, batch: Any, rows: int) -> None:
        try:
            self._db.write(batch)  # consumes the batch: nothing of it can be read afterwards
        except Exception as exc:
            raise self._fault(f"table {table.tag}: write of {rows} records failed", exc) from exc

    def bulk_load(self, tag: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Load `keys: (n,) int64` → `vectors: (n, dim) float32` through one SST file ingest.

        Rows are sorted by the byte order of their little-endian key bytes (RocksDB's comparator),
        later duplicates win, and the file is moved into the column family. Chunks may be loaded by
        several calls; a key loaded again overrides the earlier value."""
        table = self._table(tag)
        keys = check_keys(keys, f"table {tag}")
        vectors = check_vectors(tag, vectors, keys.shape[0], table.dim)
        self._check_writable(tag, "bulk load into")
        if keys.shape[0] == 0:
            return
        byte_order = _byte_order(keys)
        order = np.argsort(byte_order, kind="stable")
        sorted_order = byte_order[order]
        last = np.ones(order.shape[0], dtype=np.bool_)
        last[:-1] = sorted_order[1:] != sorted_order[:-1]
        order = order[last]
        sst = os.path.join(self.path, f"hps_bulk_{uuid.uuid4().hex}.sst")
        try:
            writer = self._rd.SstFileWriter(options=self._options())
            writer.open(sst)
            _consume(map(writer.__setitem__, _key_list(keys[order]), _row_list(vectors[order])))
            writer.finish()
            ingest = self._rd.IngestExternalFileOptions()
            ingest.set_move_files(True)
            table.cf.ingest_external_file([sst], ingest)
        except Exception as exc:
            raise self._fault(f"table {tag}: bulk load of {order.shape[0]} rows through {sst} failed", exc) from exc
        finally:
            if os.path.exists(sst):
                os.remove(sst)


def _cause(exc: BaseException) -> str:
    """RocksDB's message, plus the OS's words for a full disk or a read-only filesystem when
    RocksDB's message only carries the errno (`os error 28`)."""
    text = str(exc) or type(exc).__name__
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EIO):
        words = os.strerror(code)
        if f"os error {code})" in text and words not in text:
            text = f"{text}: {words}"
    return text


_VIEW_PREFIX = "hps-rocksdb-ro-"


def _remove_dead_views() -> None:
    """Remove the symlink views (`hps-rocksdb-ro-<pid>-*` in the temp directory) of processes that
    are gone (killed before `close`)."""
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(_VIEW_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(_VIEW_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except OSError:
            pass


def _symlink_view(path: str) -> str:
    """A private temporary directory of symbolic links to every file of the database at `path`, so
    that a read-only open can write rocksdict's config file there instead of into `path`."""
    _remove_dead_views()
    view = tempfile.mkdtemp(prefix=f"{_VIEW_PREFIX}{os.getpid()}-")
    try:
        for name in os.listdir(path):
            if name not in ("LOCK", "rocksdict-config.json"):
                os.symlink(os.path.join(os.path.abspath(path), name), os.path.join(view, name))
        config = os.path.join(path, "rocksdict-config.json")
        if os.path.exists(config):
            shutil.copyfile(config, os.path.join(view, "rocksdict-config.json"))
    except OSError as exc:
        shutil.rmtree(view, ignore_errors=True)
        raise BackendError(f"RocksDB at {path}: read-only directory, and no view of it could be made in "
                           f"{tempfile.gettempdir()} ({exc})") from exc
    return view
