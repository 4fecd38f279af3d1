"""The CPU tier chain behind the cache: volatile → persistent → default value.

Follows HugeCTR's `HierParameterServer::lookup` (reference §2.6): the persistent tier is
asked only for the volatile tier's misses; keys missing everywhere get the table's default
value; `cache_missed_embeddings` promotes persistent hits into the volatile tier in the
background. A volatile tier that fails is local in its effect: when Redis nodes are down, the
other nodes' keys are still answered by Redis and only the down nodes' keys are asked of the
persistent tier; keys no tier could be asked about raise an error (never the default value).
Failures are counted in the stats (`volatile_errors`, `volatile_unavailable_keys`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from hps.config.schema import TableConfig
from hps.errors import BackendError, KeyInputError, PartialBackendError
from hps.lookup.stats import DEFAULT, PERSISTENT, VOLATILE, TableStats
from hps.storage.base import KeyValueBackend
from hps.storage.result_buffers import empty_float32

log = logging.getLogger(__name__)


@dataclass
class TierChain:
    """The storage tiers of one HPS, shared by all its tables."""

    volatile: KeyValueBackend | None
    persistent: KeyValueBackend | None
    promote_misses: bool
    background: Executor

    def fetch(self, table: TableConfig, keys: np.ndarray, stats: TableStats,
              out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for `keys: (n,) int64` from the tiers, misses filled with the default value.

        Returns `(vectors: (n, dim) float32, source: (n,) uint8)`, where `source` holds the
        level that answered each key (`VOLATILE`, `PERSISTENT` or `DEFAULT` of `hps.lookup.stats`).
        Keys the volatile tier could not ask (their node is down: `PartialBackendError`, or the
        whole tier on any other `BackendError`) go to the persistent tier with the misses; those
        it does not hold either raise `BackendError` naming the count and the volatile tier's
        failure: only keys known to be absent get the default value.

        Each row is moved once: the volatile tier writes straight into the result (an in-process
        map through `find_counted(..., out=)`; a tier without `out` returns the array that becomes
        the result), and only the misses are gathered, asked of the persistent tier and scattered
        back. When the volatile tier answers every key, nothing else is touched.
        """
        n = len(keys)
        dim = table.dim
        if out is not None and not (type(out) is np.ndarray and out.dtype == np.float32 and out.shape == (n, dim)
                                    and out.flags.c_contiguous and out.flags.writeable):
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise KeyInputError(f"table {table.tag}: out must be a writable C-contiguous ({n}, {dim}) float32 "
                                f"array for {n} keys, got {got}")
        vectors: np.ndarray | None = None
        found: np.ndarray | None = None
        unavailable = None  # (n,) bool: keys the volatile tier could not ask
        failure: BackendError | None = None
        if self.volatile is not None and n:
            started = time.perf_counter()
            find_counted = getattr(self.volatile, "find_counted", None)
            try:
                if find_counted is not None:  # an in-process map: it writes into the result itself
                    vectors = empty_float32(n, dim) if out is None else out  # large: recycled memory
                    _, found, num_found = find_counted(table.tag, keys, vectors)
                else:
                    vectors, found = self.volatile.find(table.tag, keys)
                    num_found = -1
            except PartialBackendError as exc:
                vectors, found, unavailable, failure = exc.vectors, exc.found, exc.unavailable, exc
                num_found = -1
            except BackendError as exc:
                vectors, found, unavailable, failure = None, None, np.ones(n, dtype=bool), exc
            if failure is None:
                stats.record_tier("volatile", time.perf_counter() - started, n,
                                  num_found if num_found >= 0 else int(np.count_nonzero(found)))
                if num_found == n or (num_found < 0 and found.all()):  # the common case: every key answered
                    return _result_array(vectors, n, dim, out), np.full(n, VOLATILE, dtype=np.uint8)
            else:
                lost = int(np.count_nonzero(unavailable))
                stats.count_volatile_error(lost)
                log.warning("volatile tier could not ask %d of %d keys of %s%s: %s", lost, n, table.tag,
                            ", asking the persistent tier" if self.persistent is not None else "", failure)
        vectors = _result_array(vectors, n, dim, out)
        if found is None:
            source = np.full(n, DEFAULT, dtype=np.uint8)
            idx = np.arange(n)  # positions still missing
        else:
            source = np.where(found, np.uint8(VOLATILE), np.uint8(DEFAULT))
            idx = np.flatnonzero(~found)
        if self.persistent is not None and idx.shape[0]:
            started = time.perf_counter()
            found_vectors, pfound = self.persistent.find(table.tag, keys[idx])
            stats.record_tier("persistent", time.perf_counter() - started, len(idx), int(np.count_nonzero(pfound)))
            hit = idx[pfound]
            if hit.shape[0] == idx.shape[0]:
                vectors[idx] = found_vectors
            elif hit.shape[0]:
                vectors[hit] = found_vectors[pfound]
            source[hit] = PERSISTENT
            if self.promote_misses and self.volatile is not None:
                promote = pfound if unavailable is None else pfound & ~unavailable[idx]  # not onto a down node
                if promote.any():
                    self._promote(table.tag, keys[idx[promote]], found_vectors[promote])
            idx = idx[~pfound]
        if unavailable is not None and idx.shape[0]:
            lost = int(np.count_nonzero(unavailable[idx]))
            if lost:
                where = "the persistent tier does not hold them" if self.persistent is not None \
                    else "there is no persistent tier"
                raise BackendError(f"table {table.tag}: {lost} of {n} keys could not "
                                   f"be answered: the volatile tier could not ask them and {where}: "
                                   f"{failure}") from failure
        if idx.shape[0]:
            vectors[idx] = table.default_value
        return vectors, source

    def _promote(self, tag: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Insert persistent hits into the volatile tier in the background (cache_missed_embeddings)."""
        volatile = self.volatile

        def insert() -> None:
            try:
                volatile.insert_or_assign(tag, keys, vectors)
            except Exception:  # noqa: BLE001 - a background promotion must never break lookups
                log.exception("promoting %d keys of %s into the volatile tier failed", len(keys), tag)

        self.background.submit(insert)


def _result_array(vectors: np.ndarray | None, n: int, dim: int, out: np.ndarray | None = None) -> np.ndarray:
    """`vectors` (a tier's answer) as the `(n, dim) float32` result to fill in place: `out` (with
    `vectors` copied in), else `vectors` itself when it is a writable C-contiguous array of that
    shape and dtype, else a copy (or a new array for None)."""
    if out is not None:
        if vectors is not None and vectors is not out:
            np.copyto(out, vectors)
        return out
    if vectors is None:
        return np.empty((n, dim), dtype=np.float32)
    if (type(vectors) is np.ndarray and vectors.dtype == np.float32 and vectors.shape == (n, dim)
            and vectors.flags.c_contiguous and vectors.flags.writeable):
        return vectors
    return np.array(vectors, dtype=np.float32, order="C").reshape(n, dim)
