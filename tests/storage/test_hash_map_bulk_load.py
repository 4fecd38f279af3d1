"""HashMapBackend's start-up load path: `load_buffer` + `bulk_load` answer exactly as `insert_or_assign`."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hps.config.schema import HashMapConfig
from hps.storage.hash_map import HashMapBackend

TAG = "hps_et.hm.bulk"
DIM = 3


def _backend(**kwargs) -> HashMapBackend:
    backend = HashMapBackend(HashMapConfig(num_partitions=3, **kwargs))
    backend.create_table(TAG, DIM)
    return backend


def _vectors(keys: np.ndarray, version: int) -> np.ndarray:
    return (keys[:, None] * 10 + version + np.arange(DIM)).astype(np.float32)


chunks = st.lists(st.lists(st.integers(0, 40), max_size=30), max_size=5)


@settings(max_examples=60, deadline=None)
@given(chunks, st.booleans(), st.sampled_from(["none", "erase", "margin"]))
def test_bulk_load_matches_insert_or_assign(batches, through_buffer, twist):
    margin = {"overflow_margin": 12, "overflow_policy": "evict_random"} if twist == "margin" else {}
    ours, reference = _backend(**margin), _backend(**margin)
    ours.reserve(TAG, 8)
    for version, batch in enumerate(batches):
        keys = np.array(batch, np.int64)
        vectors = _vectors(keys, version)
        if through_buffer:
            buffer = ours.load_buffer(TAG, keys.shape[0])
            buffer[:] = vectors
            ours.bulk_load(TAG, keys, buffer)
        else:
            ours.bulk_load(TAG, keys, vectors)
        reference.insert_or_assign(TAG, keys, vectors)
        if twist == "erase" and version == 1:
            for backend in (ours, reference):
                backend.erase(TAG, np.arange(0, 40, 3, dtype=np.int64))  # freed rows: the insert path
    probe = np.arange(41, dtype=np.int64)
    got, got_found = ours.find(TAG, probe)
    want, want_found = reference.find(TAG, probe)
    if twist == "margin":  # random evictions differ; what is held must be the latest row
        assert ours.size(TAG) == reference.size(TAG)
        held = got_found
        latest = {}
        for version, batch in enumerate(batches):
            for k in batch:
                latest[k] = version
        for k in np.flatnonzero(held):
            np.testing.assert_array_equal(got[k], _vectors(np.array([k]), latest[int(k)])[0])
        return
    np.testing.assert_array_equal(got_found, want_found)
    np.testing.assert_array_equal(got[got_found], want[want_found])
    assert ours.size(TAG) == reference.size(TAG)
    np.testing.assert_array_equal(ours.partition_sizes(TAG), reference.partition_sizes(TAG))


def test_a_loaded_buffer_is_the_table_itself():
    backend = _backend()
    keys = np.arange(1000, dtype=np.int64) * 7
    backend.reserve(TAG, 2000)
    first = backend.load_buffer(TAG, 1000)
    second = backend.load_buffer(TAG, 1000, offset=1000)  # read ahead while the first is inserted
    first[:] = _vectors(keys, 0)
    second[:] = _vectors(keys + 1, 0)
    memory = backend.memory_bytes(TAG)
    backend.bulk_load(TAG, keys, first)
    backend.bulk_load(TAG, keys + 1, second)
    assert backend.memory_bytes(TAG) == memory  # no regrowth, the buffers became the rows
    table = backend._tables[TAG]
    assert np.shares_memory(first, table.values) and np.shares_memory(second, table.values)
    got, found = backend.find(TAG, np.concatenate([keys, keys + 1]))
    assert found.all()
    np.testing.assert_array_equal(got, np.concatenate([_vectors(keys, 0), _vectors(keys + 1, 0)]))


def test_a_buffer_taken_before_a_growth_is_copied_from():
    backend = _backend()
    keys = np.arange(100, dtype=np.int64)
    buffer = backend.load_buffer(TAG, 10)  # the slab is then regrown by the next call
    buffer[:] = _vectors(keys[:10], 0)
    backend.bulk_load(TAG, keys[10:], _vectors(keys[10:], 1))
    backend.bulk_load(TAG, keys[:10], buffer)
    got, found = backend.find(TAG, keys)
    assert found.all()
    np.testing.assert_array_equal(got[:10], _vectors(keys[:10], 0))
    np.testing.assert_array_equal(got[10:], _vectors(keys[10:], 1))
