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
from hps.errors import BackendError, PartialBackendError
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
        Keys the volatile tier could not ask (their node is down: `PartialBackendError`, or the
        whole tier on any other `BackendError`) go to the persistent tier with the misses; those
        it does not hold either raise `BackendError` naming the count and the volatile tier's
        failure: only keys known to be absent get the default value.
        """
        n = len(keys)
        vectors = np.empty((n, table.dim), dtype=np.float32)
        source = np.full(n, DEFAULT, dtype=np.uint8)
        missing = np.ones(n, dtype=bool)
        unavailable = None  # (n,) bool: keys the volatile tier could not ask
        failure: BackendError | None = None
        if self.volatile is not None and n:
            started = time.perf_counter()
            found = None
            try:
                found_vectors, found = self.volatile.find(table.tag, keys)
            except PartialBackendError as exc:
                found_vectors, found, unavailable, failure = exc.vectors, exc.found, exc.unavailable, exc
            except BackendError as exc:
                unavailable, failure = np.ones(n, dtype=bool), exc
            if failure is None:
                stats.record_tier("volatile", time.perf_counter() - started)
            else:
                lost = int(np.count_nonzero(unavailable))
                stats.count_volatile_error(lost)
                log.warning("volatile tier could not ask %d of %d keys of %s%s: %s", lost, n, table.tag,
                            ", asking the persistent tier" if self.persistent is not None else "", failure)
            if found is not None:
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
            if self.promote_misses and self.volatile is not None:
                promote = found if unavailable is None else found & ~unavailable[idx]  # not onto a down node
                if promote.any():
                    self._promote(table.tag, keys[idx[promote]], found_vectors[promote])
        if unavailable is not None:
            lost = unavailable & missing
            if lost.any():
                where = "the persistent tier does not hold them" if self.persistent is not None \
                    else "there is no persistent tier"
                raise BackendError(f"table {table.tag}: {int(np.count_nonzero(lost))} of {n} keys could not "
                                   f"be answered: the volatile tier could not ask them and {where}: "
                                   f"{failure}") from failure
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
