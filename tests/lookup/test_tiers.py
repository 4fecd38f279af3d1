"""`TierChain.fetch`: exact answers from volatile → persistent → default, each row moved once."""

from __future__ import annotations

import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hps.config.schema import HashMapConfig, TableConfig
from hps.errors import KeyInputError
from hps.lookup.stats import DEFAULT, PERSISTENT, VOLATILE, TableStats
from hps.lookup.tiers import TierChain
from hps.storage.hash_map import HashMapBackend

TAG = "hps_et.m.t"
DEFAULT_VALUE = -1.0


def _table(dim: int) -> TableConfig:
    return TableConfig(model_name="m", table_id=0, name="t", sparse_file="", dim=dim, maxnum_keys_per_sample=1,
                       default_value=DEFAULT_VALUE)


def _map(keys: np.ndarray, dim: int) -> HashMapBackend:
    backend = HashMapBackend(HashMapConfig(num_partitions=1))
    backend.create_table(TAG, dim)
    if keys.shape[0]:
        backend.insert_or_assign(TAG, keys, _rows(keys, dim))
    return backend


def _rows(keys: np.ndarray, dim: int, offset: float = 0.0) -> np.ndarray:
    return (keys[:, None].astype(np.float32) + offset) * np.ones(dim, np.float32)


class _Recording:
    """Wraps a hash map, recording the `out` arrays its finds were given."""

    name, is_shared = "recording", False

    def __init__(self, backend: HashMapBackend) -> None:
        self.backend, self.outs = backend, []

    def find_counted(self, tag, keys, out=None):
        self.outs.append(out)
        return self.backend.find_counted(tag, keys, out)

    def find(self, tag, keys, out=None):
        return self.backend.find(tag, keys, out)


class _OwnArray:
    """A tier without `out` (Redis-like): returns a fresh array, every key found."""

    name, is_shared = "own", False

    def __init__(self, dim: int) -> None:
        self.dim, self.returned = dim, []

    def find(self, tag, keys):
        vectors = _rows(keys, self.dim)
        self.returned.append(vectors)
        return vectors, np.ones(keys.shape[0], bool)


def _fetch(volatile, persistent, keys, dim=4):
    with ThreadPoolExecutor(1) as pool:
        return TierChain(volatile, persistent, False, pool).fetch(_table(dim), np.asarray(keys, np.int64),
                                                                  TableStats())


def test_volatile_tier_writes_straight_into_the_result():
    keys = np.arange(1000, dtype=np.int64)
    volatile = _Recording(_map(keys, 4))
    vectors, source = _fetch(volatile, None, keys[::-1])
    assert len(volatile.outs) == 1 and volatile.outs[0] is vectors  # no copy of the answer
    np.testing.assert_array_equal(vectors, _rows(keys[::-1], 4))
    assert (source == VOLATILE).all()


def test_a_tier_without_out_returns_the_result_array_itself():
    volatile = _OwnArray(4)
    vectors, source = _fetch(volatile, None, [5, 6, 7])
    assert vectors is volatile.returned[0] and (source == VOLATILE).all()


def test_all_hit_fetch_allocates_about_the_result_only():
    dim, n = 64, 20_000
    keys = np.arange(n, dtype=np.int64)
    volatile = _map(keys, dim)
    query = keys[::-1].copy()
    _fetch(volatile, None, query, dim)  # warm
    tracemalloc.start()
    try:
        vectors, _ = _fetch(volatile, None, query, dim)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.1 * vectors.nbytes + (1 << 20), (peak, vectors.nbytes)


def test_only_the_misses_reach_the_persistent_tier():
    asked = []

    class Persistent(_OwnArray):
        def find(self, tag, keys):
            asked.append(keys.copy())
            found = keys % 2 == 0
            return _rows(keys, self.dim, offset=0.5), found

    keys = np.array([1, 2, 3, 10, 11, 12, 13], np.int64)
    vectors, source = _fetch(_map(np.array([1, 2, 3], np.int64), 4), Persistent(4), keys)
    assert asked[0].tolist() == [10, 11, 12, 13]
    assert vectors[:, 0].tolist() == [1.0, 2.0, 3.0, 10.5, DEFAULT_VALUE, 12.5, DEFAULT_VALUE]
    assert source.tolist() == [VOLATILE] * 3 + [PERSISTENT, DEFAULT, PERSISTENT, DEFAULT]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=80), st.sets(st.integers(0, 60)), st.sets(st.integers(0, 60)),
       st.booleans())
def test_every_key_gets_the_first_tier_holding_it(query, in_volatile, in_persistent, with_persistent):
    keys = np.array(query, np.int64)
    volatile = _map(np.array(sorted(in_volatile), np.int64), 3)
    persistent = None
    if with_persistent:
        persistent = HashMapBackend(HashMapConfig(num_partitions=1))
        persistent.create_table(TAG, 3)
        held = np.array(sorted(in_persistent), np.int64)
        if held.shape[0]:
            persistent.insert_or_assign(TAG, held, _rows(held, 3, offset=0.5))
    vectors, source = _fetch(volatile, persistent, keys, dim=3)
    for i, key in enumerate(query):
        if key in in_volatile:
            want, level = float(key), VOLATILE
        elif with_persistent and key in in_persistent:
            want, level = key + 0.5, PERSISTENT
        else:
            want, level = DEFAULT_VALUE, DEFAULT
        assert vectors[i].tolist() == [want] * 3 and source[i] == level


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_batches(n):
    vectors, source = _fetch(_map(np.array([0], np.int64), 4), None, list(range(n)))
    assert vectors.shape == (n, 4) and source.shape == (n,)


@pytest.mark.parametrize("kind", ["map", "own array"])
def test_out_receives_every_row(kind):
    keys = np.array([1, 2, 3, 9], np.int64)
    volatile = _map(np.array([1, 2, 3], np.int64), 4) if kind == "map" else _OwnArray(4)
    out = np.full((4, 4), 7.0, np.float32)
    vectors, source = _fetch_out(volatile, keys, out)
    assert vectors is out
    want = [1.0, 2.0, 3.0, DEFAULT_VALUE] if kind == "map" else [1.0, 2.0, 3.0, 9.0]
    assert out[:, 0].tolist() == want


def test_a_wrong_out_is_refused_before_any_tier_is_asked():
    volatile = _Recording(_map(np.array([1], np.int64), 4))
    for bad in (np.empty((2, 4), np.float64), np.empty((3, 4), np.float32), np.empty((4, 2), np.float32).T):
        with pytest.raises(KeyInputError, match="out must be"):
            _fetch_out(volatile, np.array([1, 2], np.int64), bad)
    assert volatile.outs == []


def _fetch_out(volatile, keys, out):
    with ThreadPoolExecutor(1) as pool:
        return TierChain(volatile, None, False, pool).fetch(_table(4), keys, TableStats(), out=out)
