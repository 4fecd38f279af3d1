"""The CPU tier chain behind the cache: volatile → persistent → default value.

Follows HugeCTR's `HierParameterServer::lookup` (reference §2.6): the persistent tier is
asked only for the volatile tier's misses; keys missing everywhere get the table's default
value; `cache_missed_embeddings` promotes persistent hits into the volatile tier in the
background. A volatile tier that fails (Redis node down) is counted and skipped, so lookups
keep answering from the persistent tier.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from hps.config.schema import TableConfig
from hps.errors import BackendError
from hps.lookup.stats import DEFAULT, PERSISTENT, VOLATILE, TableStats
from hps.storage.base import KeyValueBackend

log = logging.getLogger(__name__)


@dataclass
class TierChain:
    """The storage tiers of one HPS, shared by all its tables."""

    volatile: KeyValueBackend | None
    persistent: KeyValueBackend | None
    promote_misses: bool
    background: Executor

    def fetch(self, table: TableConfig, keys: np.ndarray, stats: TableStats) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for `keys: (n,) int64` from the tiers, misses filled with the default value.

        Returns `(vectors: (n, dim) float32, source: (n,) uint8)`, where `source` holds the
        level that answered each key (`VOLATILE`, `PERSISTENT` or `DEFAULT` of `hps.lookup.stats`).
        """
        n = len(keys)
        vectors = np.empty((n, table.dim), dtype=np.float32)
        source = np.full(n, DEFAULT, dtype=np.uint8)
        missing = np.ones(n, dtype=bool)
        if self.volatile is not None and n:
            started = time.perf_counter()
            try:
                found_vectors, found = self.volatile.find(table.tag, keys)
            except BackendError as exc:
                stats.count_volatile_error()
                log.warning("volatile tier failed for %s (%d keys), using the persistent tier: %s",
                            table.tag, n, exc)
            else:
                stats.record_tier("volatile", time.perf_counter() - started)
                vectors[found] = found_vectors[found]
                source[found] = VOLATILE
                missing = ~found
        if self.persistent is not None and missing.any():
            idx = np.flatnonzero(missing)
            started = time.perf_counter()
            found_vectors, found = self.persistent.find(table.tag, keys[idx])
            stats.record_tier("persistent", time.perf_counter() - started)
            vectors[idx[found]] = found_vectors[found]
            missing[idx[found]] = False
            source[idx[found]] = PERSISTENT
            if self.promote_misses and self.volatile is not None and found.any():
                self._promote(table.tag, keys[idx[found]], found_vectors[found])
        if missing.any():
            vectors[missing] = table.default_value
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
