"""The contract every `KeyValueBackend` passes.

A backend's test module subclasses `BackendContract` and provides a `backend` fixture
returning a fresh, empty backend (closed by the fixture afterwards).
"""

from __future__ import annotations

import numpy as np
import pytest

from hps.errors import HpsError
from hps.storage.base import KeyValueBackend

TAG = "hps_et.contract.table0"
DIM = 8


def _rows(keys: np.ndarray, dim: int = DIM, salt: float = 0.0) -> np.ndarray:
    """Deterministic, key-dependent vectors: row i = key * 0.001 + arange(dim) + salt."""
    return (keys[:, None].astype(np.float64) * 0.001 + np.arange(dim) + salt).astype(np.float32)


class BackendContract:
    """Behaviour shared by HashMapBackend, RocksDBBackend and RedisClusterBackend."""

    def test_is_a_key_value_backend(self, backend):
        assert isinstance(backend, KeyValueBackend)
        assert isinstance(backend.name, str) and isinstance(backend.is_shared, bool)

    def test_find_on_empty_table(self, backend):
        backend.create_table(TAG, DIM)
        vectors, found = backend.find(TAG, np.array([1, 2, 3], dtype=np.int64))
        assert vectors.shape == (3, DIM) and vectors.dtype == np.float32
        assert found.dtype == np.bool_ and not found.any()
        assert backend.size(TAG) == 0

    def test_insert_then_find_with_duplicates_and_misses(self, backend):
        backend.create_table(TAG, DIM)
        keys = np.array([5, -7, 2**62, 0, 123456789], dtype=np.int64)
        backend.insert_or_assign(TAG, keys, _rows(keys))
        query = np.array([0, 99, 5, 5, 2**62, -7, -8], dtype=np.int64)
        vectors, found = backend.find(TAG, query)
        assert found.tolist() == [True, False, True, True, True, True, False]
        np.testing.assert_array_equal(vectors[found], _rows(query[found]))
        assert backend.size(TAG) == 5

    def test_assign_overwrites(self, backend):
        backend.create_table(TAG, DIM)
        keys = np.arange(100, dtype=np.int64)
        backend.insert_or_assign(TAG, keys, _rows(keys))
        backend.insert_or_assign(TAG, keys[::2], _rows(keys[::2], salt=1.0))
        vectors, found = backend.find(TAG, keys)
        assert found.all()
        np.testing.assert_array_equal(vectors[::2], _rows(keys[::2], salt=1.0))
        np.testing.assert_array_equal(vectors[1::2], _rows(keys[1::2]))
        assert backend.size(TAG) == 100

    def test_erase(self, backend):
        backend.create_table(TAG, DIM)
        keys = np.arange(50, dtype=np.int64)
        backend.insert_or_assign(TAG, keys, _rows(keys))
        assert backend.erase(TAG, np.array([1, 2, 3, 1000], dtype=np.int64)) == 3
        _, found = backend.find(TAG, keys)
        assert found.sum() == 47 and not found[1:4].any()
        assert backend.size(TAG) == 47

    def test_items_iterates_everything(self, backend):
        backend.create_table(TAG, DIM)
        keys = np.random.default_rng(0).choice(10**12, size=5000, replace=False).astype(np.int64)
        backend.insert_or_assign(TAG, keys, _rows(keys))
        seen_k, seen_v = [], []
        for k, v in backend.items(TAG, batch_rows=777):
            assert k.dtype == np.int64 and v.shape == (len(k), DIM) and len(k) <= 777
            seen_k.append(k)
            seen_v.append(v)
        all_k = np.concatenate(seen_k)
        order = np.argsort(all_k)
        np.testing.assert_array_equal(all_k[order], np.sort(keys))
        np.testing.assert_array_equal(np.concatenate(seen_v)[order], _rows(all_k[order]))

    def test_tables_are_independent(self, backend):
        other = "hps_et.contract.table1"
        backend.create_table(TAG, DIM)
        backend.create_table(other, 4)
        keys = np.arange(10, dtype=np.int64)
        backend.insert_or_assign(TAG, keys, _rows(keys))
        backend.insert_or_assign(other, keys[:3], _rows(keys[:3], dim=4))
        assert backend.size(TAG) == 10 and backend.size(other) == 3
        vectors, found = backend.find(other, keys)
        assert vectors.shape == (10, 4) and found.sum() == 3
        assert {TAG, other} <= set(backend.tables())
        backend.drop_table(other)
        assert other not in backend.tables()

    def test_create_table_is_idempotent_but_checks_dim(self, backend):
        backend.create_table(TAG, DIM)
        backend.create_table(TAG, DIM)
        with pytest.raises(HpsError, match=TAG):
            backend.create_table(TAG, DIM + 1)

    def test_bad_shapes_are_rejected_and_leave_table_unchanged(self, backend):
        backend.create_table(TAG, DIM)
        keys = np.arange(10, dtype=np.int64)
        backend.insert_or_assign(TAG, keys, _rows(keys))
        with pytest.raises(HpsError):
            backend.insert_or_assign(TAG, np.arange(10, 20, dtype=np.int64), _rows(keys, dim=DIM + 1))
        with pytest.raises(HpsError):
            backend.insert_or_assign(TAG, np.arange(10, 20, dtype=np.int64), _rows(keys[:5]))
        assert backend.size(TAG) == 10
        vectors, found = backend.find(TAG, keys)
        assert found.all()
        np.testing.assert_array_equal(vectors, _rows(keys))

    def test_unknown_table_is_an_error(self, backend):
        with pytest.raises(HpsError, match="hps_et.contract.nope"):
            backend.find("hps_et.contract.nope", np.array([1], dtype=np.int64))

    def test_large_batch_round_trip(self, backend):
        backend.create_table(TAG, DIM)
        keys = np.random.default_rng(1).choice(2**62, size=200_000, replace=False).astype(np.int64)
        backend.insert_or_assign(TAG, keys, _rows(keys))
        query = np.concatenate([keys[::3], -keys[:1000] - 1])
        vectors, found = backend.find(TAG, query)
        assert found[: len(keys[::3])].all() and not found[len(keys[::3]):].any()
        np.testing.assert_array_equal(vectors[found], _rows(query[found]))

    def test_empty_batches(self, backend):
        backend.create_table(TAG, DIM)
        empty = np.zeros(0, dtype=np.int64)
        backend.insert_or_assign(TAG, empty, np.zeros((0, DIM), np.float32))
        vectors, found = backend.find(TAG, empty)
        assert vectors.shape == (0, DIM) and found.shape == (0,)
        assert backend.erase(TAG, empty) == 0
