"""Reader of HugeCTR's sparse model directory (reference/hugectr-hps.md §3.7).

A table is a directory holding `key` (raw little-endian int64, no header) and `emb_vector`
(raw little-endian float32, row i belongs to key i). The vector width is not stored: it
comes from the config (`embedding_vecsize_per_table`). An optional `slot_id` (one int64
per key, written by HugeCTR training) has its size checked; an optional `meta` is ignored.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hps.errors import ModelFormatError

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
    """

    def __init__(self, path: str | os.PathLike[str], dim: int) -> None:
        self.path = Path(path)
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
        key_bytes = self.key_path.stat().st_size
        vector_bytes = self.vector_path.stat().st_size
        if key_bytes == 0:
            raise ModelFormatError(f"{self.key_path} is empty; a sparse model needs at least one key")
        if key_bytes % KEY_DTYPE.itemsize:
            raise ModelFormatError(
                f"{self.key_path} holds {key_bytes} bytes, not a multiple of 8 (keys are int64): "
                f"{key_bytes // 8} whole keys and {key_bytes % 8} stray bytes"
            )
        num_keys = key_bytes // KEY_DTYPE.itemsize
        row_bytes = VECTOR_DTYPE.itemsize * self.dim
        if vector_bytes % row_bytes:
            raise ModelFormatError(
                f"{self.vector_path} holds {vector_bytes} bytes, not a multiple of 4 x dim {self.dim} = "
                f"{row_bytes} bytes per row; {self.key_path} holds {num_keys} keys"
                f"{_dim_hint(vector_bytes, num_keys)}; "
                f"is embedding_vecsize_per_table right?"
            )
        num_vectors = vector_bytes // row_bytes
        if num_vectors != num_keys:
            raise ModelFormatError(
                f"{self.vector_path} holds {vector_bytes} bytes = {num_vectors} rows of dim {self.dim}, "
                f"but {self.key_path} holds {num_keys} keys{_dim_hint(vector_bytes, num_keys)}; "
                f"is embedding_vecsize_per_table right?"
            )
        slot_path = self.path / SLOT_ID_FILE
        if slot_path.exists():
            slot_bytes = slot_path.stat().st_size
            if slot_bytes != key_bytes:
                raise ModelFormatError(
                    f"{slot_path} holds {slot_bytes} bytes = {slot_bytes / 8:g} slot ids, but "
                    f"{self.key_path} holds {num_keys} keys; expected one int64 slot id per key "
                    f"({key_bytes} bytes)"
                )
        self.num_rows = int(num_keys)
        self._keys: np.memmap | None = None
        self._vectors: np.memmap | None = None

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return f"SparseModel({str(self.path)!r}, dim={self.dim}, num_rows={self.num_rows})"

    @property
    def keys(self) -> np.ndarray:
        """All keys, `(num_rows,) int64`, a read-only memory map of `key`."""
        if self._keys is None:
            self._keys = np.memmap(self.key_path, dtype=KEY_DTYPE, mode="r", shape=(self.num_rows,))
        return self._keys

    @property
    def vectors(self) -> np.ndarray:
        """All vectors, `(num_rows, dim) float32`, a read-only memory map of `emb_vector`."""
        if self._vectors is None:
            self._vectors = np.memmap(
                self.vector_path, dtype=VECTOR_DTYPE, mode="r", shape=(self.num_rows, self.dim)
            )
        return self._vectors

    def iter_chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream the table in file order as copies: yields `(keys: (m,) int64,
        vectors: (m, dim) float32)` with m = chunk_rows except for the last chunk.

        Memory use is bounded by one chunk (chunk_rows x (8 + 4 x dim) bytes)."""
        chunk_rows = check_chunk_rows(chunk_rows, f"{self.path}.iter_chunks")
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

    def fingerprint(self) -> dict:
        """What identifies this version of the table's files, cheaply (reads at most 4 MiB).

        Returns a JSON-ready dict: `dim`, and per file (`key`, `emb_vector`) its absolute path, size
        in bytes, modification time (ns) and the BLAKE2b hash of its first and last
        `FINGERPRINT_SAMPLE_BYTES` bytes. Two fingerprints differ when a file was rewritten, moved,
        resized or touched; equal fingerprints mean the same files, unchanged (a change in the
        middle of a file that keeps its size and mtime is not seen)."""
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

    def check_unique_keys(self) -> None:
        """Raise `ModelFormatError` if a key appears more than once.

        Sorts a copy of the keys: 8 bytes per row of extra memory (plus 1 byte per row of
        comparison mask), independent of dim."""
        report = duplicate_key_report(self.keys)
        if report is not None:
            extra_rows, distinct, example = report
            rows = np.flatnonzero(self.keys == example)
            shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if rows.shape[0] > 5 else "")
            raise ModelFormatError(
                f"{self.key_path} holds {self.num_rows} keys of which {distinct} appear more than once "
                f"({extra_rows} duplicate rows); e.g. key {example} at rows {shown}"
            )
