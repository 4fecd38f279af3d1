"""Start-up loading: a model's sparse files → the storage tiers, all or nothing.

Every file is validated (sizes, dims, duplicate keys) before anything is written; a
failure while writing drops the tables this load created, so no tier is left half-loaded.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterator

import numpy as np

from hps.config.schema import ModelConfig, PsConfig
from hps.errors import HpsError
from hps.lookup.row_home import cache_holds_whole_table
from hps.model_format import SparseModel
from hps.storage.base import KeyValueBackend

LOAD_CHUNK_ROWS = 1 << 20


def open_sparse_models(model: ModelConfig) -> list[SparseModel]:
    """Open and validate every table file of `model` (raises `ModelFormatError` naming the file)."""
    opened = [SparseModel(table.sparse_file, table.dim) for table in model.tables]
    for sparse in opened:
        sparse.check_unique_keys()
    return opened


def load_model_into_tiers(config: PsConfig, model: ModelConfig, sparse_models: list[SparseModel],
                          volatile: KeyValueBackend | None, persistent: KeyValueBackend | None,
                          show_progress: bool = True) -> list[tuple[KeyValueBackend, str]]:
    """Create the model's tables in the tiers and fill them from `sparse_models` (one per table).

    Static and uvm tables with a cache live whole in it and skip the tiers (as in HugeCTR). Returns the
    `(backend, tag)` tables this call created, for `drop_tables` if a later step fails. On any
    error, those tables are dropped and the error is re-raised."""
    targets: list[KeyValueBackend] = []
    if volatile is not None and config.volatile_db.initialize_after_startup:
        targets.append(volatile)
    if persistent is not None and config.persistent_db.initialize_after_startup and not config.persistent_db.read_only:
        targets.append(persistent)
    created: list[tuple[KeyValueBackend, str]] = []
    try:
        for backend in (b for b in (volatile, persistent) if b is not None):
            existing = set(backend.tables())
            for table in model.tables:
                if table.tag not in existing:
                    created.append((backend, table.tag))
                backend.create_table(table.tag, table.dim)
        if cache_holds_whole_table(model) or not targets:
            return created
        with _progress(show_progress) as progress:
            for table, sparse in zip(model.tables, sparse_models):
                for backend in targets:  # size the hash map once instead of growing it chunk by chunk
                    reserve = getattr(backend, "reserve", None)
                    if reserve is not None:
                        reserve(table.tag, sparse.num_rows)
                task = progress.add_task(f"loading {table.tag}", total=sparse.num_rows) if progress else None
                for keys, vectors in sparse.iter_chunks(LOAD_CHUNK_ROWS):
                    for backend in targets:
                        getattr(backend, "bulk_load", backend.insert_or_assign)(table.tag, keys, vectors)
                    if progress:
                        progress.advance(task, len(keys))
        return created
    except BaseException as exc:
        drop_tables(created)
        if isinstance(exc, HpsError) or not isinstance(exc, Exception):
            raise
        raise HpsError(f"loading model {model.name!r} failed, nothing was kept: {exc}") from exc


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
    for keys, vectors in sparse.iter_chunks(LOAD_CHUNK_ROWS):
        if remaining <= 0:
            return
        yield keys[:remaining], vectors[:remaining]
        remaining -= len(keys)


def _progress(show: bool):
    if not show:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)
