"""`CpuEmbeddingCache` against a plain per-set LRU model: batches that span several prefetch blocks,
with repeated keys and sets filled and evicted within one block."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hps.cache.cpu import CpuEmbeddingCache
from hps.storage.partition import partition_of

WAYS, SETS, DIM = 4, 3, 2


class _Model:
    """Sets of `WAYS` keys; a full set evicts its least recently stamped key; one stamp per key touched."""

    def __init__(self) -> None:
        self.sets: list[dict[int, list]] = [{} for _ in range(SETS)]  # key -> [stamp, vector]
        self.clock = 0

    def _set(self, key: int) -> dict[int, list]:
        return self.sets[int(partition_of(np.array([key], np.int64), SETS)[0])]

    def insert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        for key, vector in zip(keys.tolist(), vectors):
            entries = self._set(key)
            if key not in entries and len(entries) == WAYS:
                del entries[min(entries, key=lambda k: entries[k][0])]
            self.clock += 1
            entries[key] = [self.clock, vector.copy()]

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((keys.shape[0], DIM), np.float32)
        found = np.zeros(keys.shape[0], bool)
        for i, key in enumerate(keys.tolist()):
            entries = self._set(key)
            if key in entries:
                self.clock += 1
                entries[key][0] = self.clock
                out[i], found[i] = entries[key][1], True
        return out, found


#: Steps of a run: (insert?, keys), each key in 0..30 (a few sets, so sets fill and evict).
STEPS = st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 30), min_size=1, max_size=150)), max_size=6)


def check_against_the_model(steps) -> None:
    """Replay `steps` (see `STEPS`) through a fresh cache and `_Model`: every find and the final contents agree."""
    cache = CpuEmbeddingCache(WAYS * SETS, DIM, ways=WAYS)
    model = _Model()
    for version, (is_insert, batch) in enumerate(steps):
        keys = np.array(batch, np.int64)
        if is_insert:
            vectors = (keys[:, None] * 100 + version * 1000 + np.arange(DIM)).astype(np.float32)
            cache.insert_or_assign(keys, vectors)
            model.insert(keys, vectors)
        else:
            got, got_found = cache.find(keys)
            want, want_found = model.find(keys)
            np.testing.assert_array_equal(got_found, want_found)
            np.testing.assert_array_equal(got, want)  # misses' rows are zero
    assert sorted(cache.dump().tolist()) == sorted(k for entries in model.sets for k in entries)


@settings(max_examples=40, deadline=None)
@given(STEPS)
def test_matches_a_per_set_lru_model(steps):
    check_against_the_model(steps)
