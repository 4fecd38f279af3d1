"""Writers of the HugeCTR sparse model directory (reference/hugectr-hps.md §3.7).

The bytes are exactly those of the seed notebook's `convert_to_sparse_model`
(`struct.pack('q', key)` then `struct.pack(f'{dim}f', *vec)` per row, on a little-endian
machine), written chunk by chunk from numpy instead of row by row. A directory is written
under a temporary name in the same parent and renamed into place, so a failed write never
leaves a half-written model behind.

The temporary names carry the writer's host and pid (`.NAME.tmp-<host>-<pid>-XXXXXXXX`, and
`.NAME.old-…` for the version being replaced): a process killed mid-write leaves its directory
behind, and the next write of the same target on that host removes every such directory whose
process is gone (never one of a live process: two writers may race, one of them wins).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hps.errors import ModelFormatError
from hps.model_format.reader import (
    DEFAULT_CHUNK_ROWS,
    KEY_DTYPE,
    KEY_FILE,
    VECTOR_DTYPE,
    VECTOR_FILE,
    SparseModel,
    check_chunk_rows,
    duplicate_key_report,
)

_INT64_MAX = np.iinfo(np.int64).max
_TEMP_KINDS = ("tmp", "old")


def _temp_prefix(path: Path, kind: str) -> str:
    """`.NAME.<kind>-<host>-<pid>-`: the prefix of this process's temporary directories for `path`."""
    host = socket.gethostname().replace("-", "_").replace(os.sep, "_") or "localhost"
    return f".{path.name}.{kind}-{host}-{os.getpid()}-"


def _process_gone(pid: int) -> bool:
    """True when no process `pid` runs on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def remove_stale_temp_dirs(path: str | os.PathLike[str], kinds: tuple[str, ...] = _TEMP_KINDS) -> list[Path]:
    """Remove the temporary directories that killed writers of `path` left in its parent:
    `.NAME.tmp-<host>-<pid>-*` (and `.old-`) of this host whose process is gone. Returns them."""
    path = Path(path)
    host_pid = _temp_prefix(path, "tmp")[len(f".{path.name}.tmp-"):].rsplit("-", 2)[0]
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        for kind in kinds:
            head = f".{path.name}.{kind}-{host_pid}-"
            if not entry.name.startswith(head):
                continue
            pid = entry.name[len(head):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and _process_gone(int(pid)) and entry.is_dir(
                    follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed


def _as_keys(keys: Any, where: str) -> np.ndarray:
    """Validate `keys` (an integer array-like of rank 1) and return it as an array (not copied)."""
    array = np.asarray(keys)
    if array.ndim != 1:
        raise ModelFormatError(f"{where}: keys must be 1-D, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise ModelFormatError(f"{where}: keys must be integers, got dtype {array.dtype}")
    if array.dtype.kind == "u" and array.dtype.itemsize == 8 and array.shape[0]:
        biggest = int(array.max())
        if biggest > _INT64_MAX:
            raise ModelFormatError(
                f"{where}: key {biggest} does not fit the sparse model's int64 keys"
            )
    return array


def _as_vectors(vectors: Any, where: str) -> np.ndarray:
    """Validate `vectors` (a real-valued array-like of rank 2) and return it as an array."""
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise ModelFormatError(f"{where}: vectors must be 2-D (rows, dim), got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise ModelFormatError(f"{where}: vectors must be real numbers, got dtype {array.dtype}")
    if array.shape[1] < 1:
        raise ModelFormatError(f"{where}: vectors have dim 0 (shape {array.shape})")
    return array


def _replace_dir(tmp_dir: Path, path: Path, overwrite: bool) -> None:
    """Move the finished `tmp_dir` to `path`; with overwrite, an existing `path` is replaced."""
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise ModelFormatError(f"{path} already exists; pass overwrite=True to replace it")
        if not path.is_dir():
            raise ModelFormatError(f"{path} exists and is not a directory; refusing to replace it")
        old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path, "old"), dir=path.parent))
        os.rename(path, old / path.name)
        try:
            os.rename(tmp_dir, path)
        except OSError:
            os.rename(old / path.name, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp_dir, path)


def write_sparse_model(
    path: str | os.PathLike[str],
    keys: Any,
    vectors: Any,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    overwrite: bool = False,
) -> SparseModel:
    """Write one table as a sparse model directory `path` (`key` + `emb_vector`).

    keys: (n,) any integer dtype (stored as int64; must be unique and fit int64);
    vectors: (n, dim) any real dtype (stored as float32, rounded to nearest).
    Large inputs (e.g. memory maps) are converted `chunk_rows` rows at a time.
    Parent directories are created; an existing `path` is an error unless `overwrite`.
    Temporary directories of `path` left by killed writers are removed first.
    Returns the written table opened as a `SparseModel`.
    """
    path = Path(path)
    where = f"write_sparse_model({str(path)!r})"
    chunk_rows = check_chunk_rows(chunk_rows, where)
    keys = _as_keys(keys, where)
    vectors = _as_vectors(vectors, where)
    num_rows, dim = vectors.shape
    if keys.shape[0] != num_rows:
        raise ModelFormatError(f"{where}: {keys.shape[0]} keys but {num_rows} vector rows")
    if num_rows == 0:
        raise ModelFormatError(f"{where}: no rows to write; HugeCTR rejects an empty key file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise ModelFormatError(f"{path} already exists; pass overwrite=True to replace it")
    report = duplicate_key_report(keys)
    if report is not None:
        extra_rows, distinct, example = report
        raise ModelFormatError(
            f"{where}: {distinct} of the {num_rows} keys appear more than once ({extra_rows} duplicate "
            f"rows), e.g. key {example}; a sparse model needs unique keys"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(path)
    tmp_dir = Path(tempfile.mkdtemp(prefix=_temp_prefix(path, "tmp"), dir=path.parent))
    try:
        with open(tmp_dir / KEY_FILE, "wb") as key_file, open(tmp_dir / VECTOR_FILE, "wb") as vector_file:
            for start in range(0, num_rows, chunk_rows):
                stop = min(num_rows, start + chunk_rows)
                key_file.write(np.ascontiguousarray(keys[start:stop], dtype=KEY_DTYPE).tobytes())
                vector_file.write(np.ascontiguousarray(vectors[start:stop], dtype=VECTOR_DTYPE).tobytes())
            for file in (key_file, vector_file):
                file.flush()
                os.fsync(file.fileno())
        os.chmod(tmp_dir, 0o755)
        _replace_dir(tmp_dir, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return SparseModel(path, dim)


def write_from_numpy_table(
    path: str | os.PathLike[str],
    table: Any,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    overwrite: bool = False,
) -> SparseModel:
    """Write a dense embedding table `table: (rows, dim)` with keys 0..rows-1 (int64), as the
    seed notebook's `convert_to_sparse_model` does."""
    array = _as_vectors(table, f"write_from_numpy_table({str(path)!r})")
    return write_sparse_model(
        path, np.arange(array.shape[0], dtype=np.int64), array, chunk_rows=chunk_rows, overwrite=overwrite
    )
