"""Reader of HugeCTR's sparse model directory (reference/hugectr-hps.md §3.7).

A table is a directory holding `key` (raw little-endian int64, no header) and `emb_vector`
(raw little-endian float32, row i belongs to key i). The vector width is not stored: it
comes from the config (`embedding_vecsize_per_table`). An optional `slot_id` (one int64
per key, written by HugeCTR training) has its size checked; an optional `meta` is ignored.
The directory may be local or behind an fsspec URL (remote.py), as HugeCTR read HDFS, S3 and GCS.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hps.errors import ModelFormatError
from hps.model_format.remote import RemoteFiles, identity, is_remote, join, local_path

KEY_FILE = "key"
VECTOR_FILE = "emb_vector"
SLOT_ID_FILE = "slot_id"
META_FILE = "meta"

#: On-disk dtypes: HugeCTR writes native (x86: little-endian) `long long` and `float`.
KEY_DTYPE = np.dtype("<i8")
VECTOR_DTYPE = np.dtype("<f4")

DEFAULT_CHUNK_ROWS = 1 << 20

#: `SparseModel.fingerprint` hashes this many bytes at each end of each file.
FINGERPRINT_SAMPLE_BYTES = 1 << 20


def check_dim(dim: object, where: str) -> int:
    """Return `dim` as an int ≥ 1 or raise `ModelFormatError` naming `where`."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) < 1:
        raise ModelFormatError(f"{where}: dim must be a positive integer, got {dim!r}")
    return int(dim)


def check_chunk_rows(chunk_rows: object, where: str) -> int:
    """Return `chunk_rows` as an int ≥ 1 or raise `ModelFormatError` naming `where`."""
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or int(chunk_rows) < 1:
        raise ModelFormatError(f"{where}: chunk_rows must be a positive integer, got {chunk_rows!r}")
    return int(chunk_rows)


def duplicate_key_report(keys: np.ndarray) -> tuple[int, int, int] | None:
    """Find duplicates in `keys: (n,) int64` by sorting a copy (8 bytes per key of extra memory).

    Returns None when all keys are unique, else `(extra_rows, distinct_duplicated_keys,
    example_key)`: `extra_rows` = n - number of distinct keys."""
    ordered = np.array(keys, dtype=np.int64, copy=True)
    if ordered.shape[0] < 2:
        return None
    ordered.sort(kind="quicksort")
    same_as_next = ordered[1:] == ordered[:-1]
    extra_rows = int(np.count_nonzero(same_as_next))
    if extra_rows == 0:
        return None
    # A duplicated key starts a run: equal to its successor but not to its predecessor.
    run_starts = same_as_next.copy()
    run_starts[1:] &= ~same_as_next[:-1]
    distinct = int(np.count_nonzero(run_starts))
    example = int(ordered[int(np.argmax(same_as_next))])
    return extra_rows, distinct, example


def _dim_hint(vector_bytes: int, num_keys: int) -> str:
    """" (the sizes agree for dim D)" when the file sizes fit a whole dim, else ""."""
    row_bytes, rest = divmod(vector_bytes, VECTOR_DTYPE.itemsize * num_keys)
    return f" (the sizes agree for dim {row_bytes})" if rest == 0 and row_bytes else ""


class SparseModel:
    """One embedding table in the HugeCTR sparse model format, opened read-only.

    The constructor checks that the directory and its files exist and that their sizes
    agree for `dim`, without reading the data. `keys` and `vectors` are read-only memory
    maps; `iter_chunks` streams copies so that a table larger than RAM can be loaded.

    `path` may be an fsspec URL (`s3://bucket/t0`, `gs://`, `hdfs://`, `https://`; see
    `model_format.remote`): the same checks run on the objects' `info()`, `iter_chunks` streams
    ranged reads, and every read fails with `ModelFormatError` if an object changed since it was
    validated. `path` is then the URL (a str), `where` the URL as messages show it.
    """

    def __init__(self, path: str | os.PathLike[str], dim: int) -> None:
        self._remote: RemoteFiles | None = None
        self._identity: dict[str, dict] = {}
        self._keys_digest: str | None = None
        if is_remote(path):
            self._open_remote(str(path), dim)
            return
        self.path = Path(local_path(path))
        self.dim = check_dim(dim, f"sparse model {self.path}")
        if not self.path.exists():
            raise ModelFormatError(f"sparse model directory {self.path} does not exist")
        if not self.path.is_dir():
            raise ModelFormatError(
                f"sparse model {self.path} is not a directory; a HugeCTR sparse model is a directory "
                f"holding '{KEY_FILE}' and '{VECTOR_FILE}'"
            )
        self.key_path = self.path / KEY_FILE
        self.vector_path = self.path / VECTOR_FILE
        for file in (self.key_path, self.vector_path):
            if not file.is_file():
                present = sorted(p.name for p in self.path.iterdir())
                raise ModelFormatError(
                    f"sparse model file {file} is missing (the directory holds {present}); "
                    f"a HugeCTR sparse model needs '{KEY_FILE}' and '{VECTOR_FILE}'"
                )
        slot_path = self.path / SLOT_ID_FILE
        slot_bytes = slot_path.stat().st_size if slot_path.exists() else None
        self.num_rows = self._check_sizes(self.key_path.stat().st_size, self.vector_path.stat().st_size,
                                          slot_bytes, str(slot_path))
        self._keys: np.ndarray | None = None
        self._vectors: np.ndarray | None = None

    def _open_remote(self, url: str, dim: int) -> None:
        """Validate a table behind an fsspec URL from its objects' `info()` alone (no data read)."""
        self._remote = remote = RemoteFiles(url)
        self.path = remote.url  # a str: pathlib would fold "s3://b" into "s3:/b"
        self.dim = check_dim(dim, f"sparse model {remote.where}")
        self.key_path = join(remote.url, KEY_FILE)
        self.vector_path = join(remote.url, VECTOR_FILE)
        infos = {name: remote.info(name) for name in (KEY_FILE, VECTOR_FILE)}
        for name, info in infos.items():
            if info is None:
                present = remote.names()
                if present is None:
                    raise ModelFormatError(f"sparse model directory {remote.where} does not exist (nothing is "
                                           f"stored under it)")
                raise ModelFormatError(
                    f"sparse model file {remote.child_where(name)} is missing (the directory holds {present}); "
                    f"a HugeCTR sparse model needs '{KEY_FILE}' and '{VECTOR_FILE}'"
                )
        slot_info = remote.info(SLOT_ID_FILE)
        self._identity = {name: identity(info) for name, info in infos.items()}
        self.num_rows = self._check_sizes(int(infos[KEY_FILE]["size"]), int(infos[VECTOR_FILE]["size"]),
                                          None if slot_info is None else int(slot_info["size"]),
                                          remote.child_where(SLOT_ID_FILE))
        self._keys = None
        self._vectors = None

    @property
    def where(self) -> str:
        """The table's directory as messages show it (a URL without its userinfo or query)."""
        return self._remote.where if self._remote is not None else str(self.path)

    @property
    def is_remote(self) -> bool:
        """True when the table is read through fsspec (a URL), False for a local directory."""
        return self._remote is not None

    def _file_where(self, name: str) -> str:
        return self._remote.child_where(name) if self._remote is not None else str(self.path / name)

    def _check_sizes(self, key_bytes: int, vector_bytes: int, slot_bytes: int | None, slot_where: str) -> int:
        """The row count that the file sizes (bytes) agree on for `self.dim`, or `ModelFormatError`."""
        key_where, vector_where = self._file_where(KEY_FILE), self._file_where(VECTOR_FILE)
        if key_bytes == 0:
            raise ModelFormatError(f"{key_where} is empty; a sparse model needs at least one key")
        if key_bytes % KEY_DTYPE.itemsize:
            raise ModelFormatError(
                f"{key_where} holds {key_bytes} bytes, not a multiple of 8 (keys are int64): "
                f"{key_bytes // 8} whole keys and {key_bytes % 8} stray bytes"
            )
        num_keys = key_bytes // KEY_DTYPE.itemsize
        row_bytes = VECTOR_DTYPE.itemsize * self.dim
        if vector_bytes % row_bytes:
            raise ModelFormatError(
                f"{vector_where} holds {vector_bytes} bytes, not a multiple of 4 x dim {self.dim} = "
                f"{row_bytes} bytes per row; {key_where} holds {num_keys} keys"
                f"{_dim_hint(vector_bytes, num_keys)}; "
                f"is embedding_vecsize_per_table right?"
            )
        num_vectors = vector_bytes // row_bytes
        if num_vectors != num_keys:
            raise ModelFormatError(
                f"{vector_where} holds {vector_bytes} bytes = {num_vectors} rows of dim {self.dim}, "
                f"but {key_where} holds {num_keys} keys{_dim_hint(vector_bytes, num_keys)}; "
                f"is embedding_vecsize_per_table right?"
            )
        if slot_bytes is not None and slot_bytes != key_bytes:
            raise ModelFormatError(
                f"{slot_where} holds {slot_bytes} bytes = {slot_bytes / 8:g} slot ids, but "
                f"{key_where} holds {num_keys} keys; expected one int64 slot id per key "
                f"({key_bytes} bytes)"
            )
        return int(num_keys)

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return f"SparseModel({self.where!r}, dim={self.dim}, num_rows={self.num_rows})"

    @property
    def keys(self) -> np.ndarray:
        """All keys, `(num_rows,) int64`, a read-only memory map of `key` (a remote table: the whole
        file read into memory once, 8 bytes per row, read-only)."""
        if self._keys is None:
            if self._remote is not None:
                self._keys = self._read_remote_keys()
            else:
                self._keys = np.memmap(self.key_path, dtype=KEY_DTYPE, mode="r", shape=(self.num_rows,))
        return self._keys

    @property
    def vectors(self) -> np.ndarray:
        """All vectors, `(num_rows, dim) float32`, a read-only memory map of `emb_vector` (a remote
        table: the whole file read into memory once, read-only; stream it with `iter_chunks` instead)."""
        if self._vectors is None:
            if self._remote is not None:
                data = self._remote.read_ranges(VECTOR_FILE, [0], [self.num_rows * self.dim * VECTOR_DTYPE.itemsize])[0]
                self._check_unchanged()
                vectors = data.view(VECTOR_DTYPE).astype(np.float32, copy=False).reshape(self.num_rows, self.dim)
                vectors.flags.writeable = False
                self._vectors = vectors
            else:
                self._vectors = np.memmap(
                    self.vector_path, dtype=VECTOR_DTYPE, mode="r", shape=(self.num_rows, self.dim)
                )
        return self._vectors

    def _read_remote_keys(self) -> np.ndarray:
        """The remote `key` file, `(num_rows,) int64` read-only, checked against the object that was
        validated (size and ETag / mtime, after the read)."""
        data = self._remote.read_ranges(KEY_FILE, [0], [self.num_rows * KEY_DTYPE.itemsize])[0]
        self._check_unchanged()
        keys = data.view(KEY_DTYPE).astype(np.int64, copy=False)
        keys.flags.writeable = False
        return keys

    def _check_unchanged(self) -> None:
        """Raise `ModelFormatError` if a remote file is no longer the object validated at open
        (rewritten, resized or removed since): its rows must not be mixed with the validated ones."""
        if self._remote is None:
            return
        for name, validated in self._identity.items():
            info = self._remote.info(name)
            now = None if info is None else identity(info)
            if now != validated:
                what = "was removed" if now is None else f"changed (now {now}, validated {validated})"
                raise ModelFormatError(
                    f"sparse model file {self._remote.child_where(name)} {what} while the table was being "
                    f"read; nothing read from it is kept: load it again once it is complete")

    def iter_chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream the table in file order as copies: yields `(keys: (m,) int64,
        vectors: (m, dim) float32)` with m = chunk_rows except for the last chunk.

        Memory use is bounded by one chunk (chunk_rows x (8 + 4 x dim) bytes); for a remote table by
        two (the next chunk is fetched while this one is used)."""
        chunk_rows = check_chunk_rows(chunk_rows, f"{self.where}.iter_chunks")
        if self._remote is not None:
            yield from self._iter_remote_chunks(chunk_rows)
            return
        with open(self.key_path, "rb") as key_file, open(self.vector_path, "rb") as vector_file:
            for start in range(0, self.num_rows, chunk_rows):
                rows = min(chunk_rows, self.num_rows - start)
                keys = np.fromfile(key_file, dtype=KEY_DTYPE, count=rows)
                vectors = np.fromfile(vector_file, dtype=VECTOR_DTYPE, count=rows * self.dim)
                if keys.shape[0] != rows or vectors.shape[0] != rows * self.dim:
                    raise ModelFormatError(
                        f"sparse model {self.path} shrank while being read: expected rows "
                        f"[{start}, {start + rows}) but read {keys.shape[0]} keys and "
                        f"{vectors.shape[0] / self.dim:g} vectors"
                    )
                yield keys.astype(np.int64, copy=False), vectors.astype(np.float32, copy=False).reshape(
                    rows, self.dim
                )

    def _iter_remote_chunks(self, chunk_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`iter_chunks` of a remote table: each chunk's two ranges fetched (in parts, concurrently)
        while the previous chunk is being consumed. The objects must still be the validated ones at
        the start and at the end, and the keys the ones `check_unique_keys` saw; else
        `ModelFormatError` (raised before the last chunk is yielded, so a loader that writes chunk by
        chunk fails instead of completing with mixed rows)."""
        remote = self._remote
        self._check_unchanged()
        row_bytes = VECTOR_DTYPE.itemsize * self.dim
        starts = list(range(0, self.num_rows, chunk_rows))

        def fetch(start: int) -> tuple[np.ndarray, np.ndarray]:
            stop = min(self.num_rows, start + chunk_rows)
            key_bytes, vector_bytes = remote.read_files([
                (KEY_FILE, start * KEY_DTYPE.itemsize, stop * KEY_DTYPE.itemsize),
                (VECTOR_FILE, start * row_bytes, stop * row_bytes)])
            return key_bytes, vector_bytes

        digest = hashlib.blake2b(digest_size=16) if self._keys_digest is not None else None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hps-remote-read") as pool:
            pending = pool.submit(fetch, starts[0]) if starts else None
            for index, start in enumerate(starts):
                key_bytes, vector_bytes = pending.result()
                last = index + 1 == len(starts)
                pending = None if last else pool.submit(fetch, starts[index + 1])
                rows = key_bytes.shape[0] // KEY_DTYPE.itemsize
                keys = key_bytes.view(KEY_DTYPE).astype(np.int64, copy=False)
                vectors = vector_bytes.view(VECTOR_DTYPE).astype(np.float32, copy=False).reshape(rows, self.dim)
                if digest is not None:
                    digest.update(key_bytes)
                if last:
                    self._check_unchanged()
                    if digest is not None and digest.hexdigest() != self._keys_digest:
                        raise ModelFormatError(
                            f"sparse model file {remote.child_where(KEY_FILE)} changed while the table was "
                            f"being read (its keys differ from those checked for duplicates); nothing read "
                            f"from it is kept: load it again once it is complete")
                yield keys, vectors  # fresh writable arrays, as local chunks are

    def fingerprint(self) -> dict:
        """What identifies this version of the table's files, cheaply (reads at most 4 MiB).

        Returns a JSON-ready dict: `dim`, and per file (`key`, `emb_vector`) its absolute path, size
        in bytes, modification time (ns) and the BLAKE2b hash of its first and last
        `FINGERPRINT_SAMPLE_BYTES` bytes. Two fingerprints differ when a file was rewritten, moved,
        resized or touched; equal fingerprints mean the same files, unchanged (a change in the
        middle of a file that keeps its size and mtime is not seen)."""
        if self._remote is not None:
            return self._remote_fingerprint()
        files = {}
        for name, file in ((KEY_FILE, self.key_path), (VECTOR_FILE, self.vector_path)):
            try:
                with open(file, "rb") as handle:
                    stat = os.fstat(handle.fileno())
                    digest = hashlib.blake2b(digest_size=16)
                    digest.update(handle.read(FINGERPRINT_SAMPLE_BYTES))
                    if stat.st_size > FINGERPRINT_SAMPLE_BYTES:
                        handle.seek(max(FINGERPRINT_SAMPLE_BYTES, stat.st_size - FINGERPRINT_SAMPLE_BYTES))
                        digest.update(handle.read(FINGERPRINT_SAMPLE_BYTES))
            except OSError as exc:
                raise ModelFormatError(f"cannot read sparse model file {file}: {exc}") from exc
            files[name] = {"path": os.path.abspath(file), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                           "sample_blake2b": digest.hexdigest()}
        return {"dim": self.dim, "files": files}

    def _remote_fingerprint(self) -> dict:
        """`fingerprint` of a remote table, from the objects' `info()` (no data read): per file its
        URL (without userinfo or query), size and the version fields the store gives (S3: ETag,
        LastModified; GCS: generation, md5; HDFS: mtime). Where a store gives no such field, the
        first and last `FINGERPRINT_SAMPLE_BYTES` bytes are hashed as for a local file. (The objects
        are those validated at open: every read checks that they still are.)"""
        files = {}
        for name in (KEY_FILE, VECTOR_FILE):
            entry = {"path": self._remote.child_where(name), **self._identity[name]}
            if len(self._identity[name]) == 1:  # the size alone
                size = entry["size"]
                head = min(size, FINGERPRINT_SAMPLE_BYTES)
                starts, stops = [0], [head]
                if size > FINGERPRINT_SAMPLE_BYTES:
                    starts.append(max(FINGERPRINT_SAMPLE_BYTES, size - FINGERPRINT_SAMPLE_BYTES))
                    stops.append(size)
                digest = hashlib.blake2b(digest_size=16)
                for part in self._remote.read_ranges(name, starts, stops):
                    digest.update(part)
                entry["sample_blake2b"] = digest.hexdigest()
            files[name] = entry
        return {"dim": self.dim, "files": files}

    def check_unique_keys(self) -> None:
        """Raise `ModelFormatError` if a key appears more than once.

        Sorts a copy of the keys: 8 bytes per row of extra memory (plus 1 byte per row of
        comparison mask), independent of dim."""
        if self._remote is not None and self._keys is None:
            keys = self._read_remote_keys()  # not kept: 8 bytes a row; a digest checks the load's keys
            self._keys_digest = hashlib.blake2b(keys.tobytes(), digest_size=16).hexdigest()
            report = duplicate_key_report(keys)
            if report is not None:
                self._keys = keys  # for the message below
        else:
            report = duplicate_key_report(self.keys)
        if report is not None:
            extra_rows, distinct, example = report
            rows = np.flatnonzero(self.keys == example)
            shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if rows.shape[0] > 5 else "")
            raise ModelFormatError(
                f"{self._file_where(KEY_FILE)} holds {self.num_rows} keys of which {distinct} appear more than once "
                f"({extra_rows} duplicate rows); e.g. key {example} at rows {shown}"
            )
