"""The contract every `EmbeddingCache` passes (CPU numpy cache, GPU torch cache).

A cache's test module subclasses `CacheContract` and provides a `make_cache` fixture: a
function `make_cache(capacity_rows, dim) -> EmbeddingCache` returning a fresh, empty cache
(the fixture closes what it made afterwards). A cache built with
`SINGLE_SET_CAPACITY_ROWS` rows must be a single set (the LRU tests rely on it).

Arrays go in and come out through `to_keys`, `to_vectors` and `to_numpy`; a GPU cache
overrides them (e.g. to build CUDA tensors), and the assertions stay in numpy.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from hps.cache.base import EmbeddingCache
from hps.errors import ClosedError, HpsError

DIM = 8


def rows(keys: np.ndarray, dim: int = DIM, salt: float = 0.0) -> np.ndarray:
    """Deterministic, key-dependent vectors `(n, dim) float32`: key * 0.001 + arange(dim) + salt."""
    keys = np.asarray(keys)
    return (keys[:, None].astype(np.float64) * 0.001 + np.arange(dim) + salt).astype(np.float32)


class CacheContract:
    """Behaviour shared by every EmbeddingCache implementation."""

    #: A capacity that makes a one-set cache (HugeCTR: 64 slots per set).
    SINGLE_SET_CAPACITY_ROWS = 64

    # ---- array conversion hooks (override for torch / CUDA caches) ----
    def to_keys(self, keys: np.ndarray) -> Any:
        """numpy `(n,) int64` → what the cache takes as keys."""
        return np.ascontiguousarray(keys, dtype=np.int64)

    def to_vectors(self, vectors: np.ndarray) -> Any:
        """numpy `(n, dim) float32` → what the cache takes as vectors."""
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def to_numpy(self, array: Any) -> np.ndarray:
        """What the cache returns → numpy."""
        return np.asarray(array)

    # ---- helpers ----
    def find(self, cache: Any, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors, found = cache.find(self.to_keys(np.asarray(keys, dtype=np.int64)))
        return self.to_numpy(vectors), self.to_numpy(found)

    def insert(self, cache: Any, keys: np.ndarray, vectors: np.ndarray) -> None:
        cache.insert_or_assign(self.to_keys(np.asarray(keys, dtype=np.int64)), self.to_vectors(vectors))

    def assert_holds(self, cache: Any, keys: np.ndarray, salt: float = 0.0) -> None:
        vectors, found = self.find(cache, keys)
        assert found.all(), f"missing keys {np.asarray(keys)[~found][:10]}"
        np.testing.assert_array_equal(vectors, rows(keys, cache.dim, salt))

    # ---- the contract ----
    def test_is_an_embedding_cache(self, make_cache):
        cache = make_cache(256, DIM)
        assert isinstance(cache, EmbeddingCache)
        assert cache.dim == DIM and cache.capacity_rows >= 256 and isinstance(cache.device, str)
        assert cache.size() == 0

    def test_find_on_empty(self, make_cache):
        cache = make_cache(256, DIM)
        vectors, found = self.find(cache, np.array([1, 2, 3, -4]))
        assert vectors.shape == (4, DIM) and vectors.dtype == np.float32
        assert found.shape == (4,) and found.dtype == np.bool_ and not found.any()

    def test_empty_batches(self, make_cache):
        cache = make_cache(256, DIM)
        empty = np.zeros(0, dtype=np.int64)
        vectors, found = self.find(cache, empty)
        assert vectors.shape == (0, DIM) and found.shape == (0,)
        self.insert(cache, empty, np.zeros((0, DIM), np.float32))
        cache.assign(self.to_keys(empty), self.to_vectors(np.zeros((0, DIM), np.float32)))
        cache.erase(self.to_keys(empty))
        assert cache.size() == 0 and self.to_numpy(cache.dump()).shape == (0,)

    def test_insert_then_find_with_duplicates_and_misses(self, make_cache):
        cache = make_cache(1024, DIM)
        keys = np.array([5, -7, 2**62, 0, 123456789, -(2**63), 2**63 - 1, -1], dtype=np.int64)
        self.insert(cache, keys, rows(keys))
        query = np.array([0, 99, 5, 5, 2**62, -7, -8, 2**63 - 1, -(2**63), -1, 5], dtype=np.int64)
        vectors, found = self.find(cache, query)
        assert found.tolist() == [True, False, True, True, True, True, False, True, True, True, True]
        np.testing.assert_array_equal(vectors[found], rows(query[found]))
        assert cache.size() == keys.shape[0]

    def test_vectors_are_exact(self, make_cache):
        cache = make_cache(1024, DIM)
        keys = np.arange(200, dtype=np.int64) * 7919
        special = np.random.default_rng(0).standard_normal((200, DIM)).astype(np.float32)
        special[0] = [np.inf, -np.inf, 0.0, -0.0, 1e-45, 3.4e38, -1.0, 0.5]
        self.insert(cache, keys, special)
        vectors, found = self.find(cache, keys)
        kept = found.nonzero()[0]
        assert kept.shape[0] >= 150  # a few may be lost to set collisions, not most
        assert vectors[kept].tobytes() == special[kept].tobytes()

    def test_insert_overwrites(self, make_cache):
        cache = make_cache(1024, DIM)
        keys = np.arange(100, dtype=np.int64)
        self.insert(cache, keys, rows(keys))
        self.insert(cache, keys[::2], rows(keys[::2], salt=1.0))
        vectors, found = self.find(cache, keys)
        assert found.all() and cache.size() == 100
        np.testing.assert_array_equal(vectors[::2], rows(keys[::2], salt=1.0))
        np.testing.assert_array_equal(vectors[1::2], rows(keys[1::2]))

    def test_repeated_keys_in_one_insert_do_not_corrupt(self, make_cache):
        cache = make_cache(256, DIM)
        keys = np.array([3, 4, 3, 3, 5], dtype=np.int64)
        vectors = rows(keys) + np.arange(5, dtype=np.float32)[:, None]
        self.insert(cache, keys, vectors)
        assert cache.size() == 3
        assert sorted(self.to_numpy(cache.dump()).tolist()) == [3, 4, 5]
        found_vectors, found = self.find(cache, np.array([3, 4, 5]))
        assert found.all()
        np.testing.assert_array_equal(found_vectors[1:], vectors[[1, 4]])
        # Either occurrence's row is acceptable for the repeated key, but a whole one.
        assert any(np.array_equal(found_vectors[0], vectors[i]) for i in (0, 2, 3))

    def test_assign_only_touches_present_keys(self, make_cache):
        cache = make_cache(1024, DIM)
        present = np.arange(0, 50, dtype=np.int64)
        self.insert(cache, present, rows(present))
        update = np.arange(25, 75, dtype=np.int64)
        cache.assign(self.to_keys(update), self.to_vectors(rows(update, salt=2.0)))
        assert cache.size() == 50
        self.assert_holds(cache, present[:25])
        self.assert_holds(cache, present[25:], salt=2.0)
        _, found = self.find(cache, np.arange(50, 75))
        assert not found.any()

    def test_erase(self, make_cache):
        cache = make_cache(1024, DIM)
        keys = np.arange(100, dtype=np.int64) * 3
        self.insert(cache, keys, rows(keys))
        cache.erase(self.to_keys(np.concatenate([keys[:40], np.array([1, 2, 10**12])])))
        assert cache.size() == 60
        _, found = self.find(cache, keys[:40])
        assert not found.any()
        self.assert_holds(cache, keys[40:])
        self.insert(cache, keys[:10], rows(keys[:10], salt=3.0))
        self.assert_holds(cache, keys[:10], salt=3.0)
        assert cache.size() == 70

    def test_dump(self, make_cache):
        cache = make_cache(1024, DIM)
        keys = np.array([9, -3, 2**40, 0, 2**63 - 1], dtype=np.int64)
        self.insert(cache, keys, rows(keys))
        cache.erase(self.to_keys(np.array([0])))
        dumped = self.to_numpy(cache.dump())
        assert dumped.dtype == np.int64
        assert sorted(dumped.tolist()) == sorted([9, -3, 2**40, 2**63 - 1])

    def test_size_never_exceeds_capacity(self, make_cache):
        cache = make_cache(256, DIM)
        for start in range(0, 4096, 512):
            keys = np.arange(start, start + 512, dtype=np.int64)
            self.insert(cache, keys, rows(keys))
            assert cache.size() <= cache.capacity_rows
        # Many more keys than slots: every set fills, so the cache is full.
        assert cache.size() == cache.capacity_rows
        dumped = self.to_numpy(cache.dump())
        assert np.unique(dumped).shape[0] == dumped.shape[0] == cache.capacity_rows
        self.assert_holds(cache, dumped)  # whatever is cached has its latest row

    def test_lru_evicts_the_least_recently_used(self, make_cache):
        capacity = self.SINGLE_SET_CAPACITY_ROWS
        cache = make_cache(capacity, DIM)
        assert cache.capacity_rows == capacity
        keys = np.arange(capacity, dtype=np.int64) * 11
        self.insert(cache, keys, rows(keys))
        assert cache.size() == capacity
        # Use all but the first 3 keys, so keys[0:3] are the least recently used.
        self.find(cache, keys[3:])
        newcomers = np.array([-1, -2], dtype=np.int64)
        self.insert(cache, newcomers, rows(newcomers))
        assert cache.size() == capacity
        _, found = self.find(cache, keys)
        assert found.tolist() == [False, False] + [True] * (capacity - 2)
        self.assert_holds(cache, newcomers)

    def test_find_refreshes_recency(self, make_cache):
        capacity = self.SINGLE_SET_CAPACITY_ROWS
        cache = make_cache(capacity, DIM)
        keys = np.arange(capacity, dtype=np.int64)
        self.insert(cache, keys, rows(keys))
        self.find(cache, keys[:1])  # key 0 becomes the most recently used
        self.insert(cache, np.array([1000]), rows(np.array([1000])))
        _, found = self.find(cache, np.array([0, 1, 1000]))
        assert found.tolist() == [True, False, True]

    def test_more_keys_than_capacity_keeps_the_most_recent(self, make_cache):
        capacity = self.SINGLE_SET_CAPACITY_ROWS
        cache = make_cache(capacity, DIM)
        keys = np.arange(5 * capacity, dtype=np.int64) + 100
        self.insert(cache, keys, rows(keys))  # one batch, five times the capacity
        assert cache.size() == capacity
        self.assert_holds(cache, keys[-capacity:])
        _, found = self.find(cache, keys[:-capacity])
        assert not found.any()
        assert sorted(self.to_numpy(cache.dump()).tolist()) == keys[-capacity:].tolist()

    def test_closed_cache_raises(self, make_cache):
        cache = make_cache(256, DIM)
        cache.close()
        with pytest.raises(ClosedError):
            cache.find(self.to_keys(np.array([1])))
        with pytest.raises(ClosedError):
            self.insert(cache, np.array([1]), rows(np.array([1])))
        cache.close()  # idempotent

    def test_bad_input_raises_and_changes_nothing(self, make_cache):
        cache = make_cache(256, DIM)
        keys = np.arange(10, dtype=np.int64)
        self.insert(cache, keys, rows(keys))
        with pytest.raises(HpsError):
            self.insert(cache, np.arange(20, 30), rows(np.arange(20, 30))[:, :3])  # wrong dim
        with pytest.raises(HpsError):
            self.insert(cache, np.arange(20, 30), rows(np.arange(20, 25)))  # wrong count
        with pytest.raises(HpsError):
            cache.assign(self.to_keys(keys), self.to_vectors(rows(keys[:5], salt=9.0)))
        assert cache.size() == 10
        self.assert_holds(cache, keys)

    def test_no_torn_vectors_under_concurrent_updates(self, make_cache):
        dim = 64
        cache = make_cache(1024, dim)
        keys = np.arange(512, dtype=np.int64)
        versions = [rows(keys, dim, salt=0.0), rows(keys, dim, salt=1000.0)]
        self.insert(cache, keys, versions[0])
        dev_keys = self.to_keys(keys)
        dev_versions = [self.to_vectors(v) for v in versions]
        stop = threading.Event()
        errors: list[BaseException] = []
        checked = [0]

        def writer() -> None:
            try:
                i = 0
                while not stop.is_set():
                    i ^= 1
                    cache.insert_or_assign(dev_keys, dev_versions[i])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def reader() -> None:
            try:
                while not stop.is_set():
                    vectors, found = cache.find(dev_keys)
                    vectors, found = self.to_numpy(vectors), self.to_numpy(found)
                    hit = vectors[found]
                    ok = (hit == versions[0][found]).all(axis=1) | (hit == versions[1][found]).all(axis=1)
                    if not ok.all():
                        errors.append(AssertionError(f"torn rows for keys {keys[found][~ok][:5]}"))
                        return
                    checked[0] += int(found.sum())
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors[0]
        assert checked[0] > 0
