"""Recycled memory for large lookup results: a dropped result's memory serves the next result of its size,
never while any array, view or tensor still uses it; small results and the pool's bound."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from hps.config.schema import HashMapConfig
from hps.storage import result_buffers
from hps.storage.hash_map import HashMapBackend

ROWS, DIM = 4096, 16  # 256 KiB results: large, once MIN_BYTES is lowered below


@pytest.fixture(autouse=True)
def small_pool(monkeypatch):
    monkeypatch.setattr(result_buffers, "MIN_BYTES", 64 << 10)
    monkeypatch.setattr(result_buffers, "POOL_BYTES", 1 << 20)
    result_buffers.clear()
    yield
    result_buffers.clear()


def test_a_dropped_result_serves_the_next_one_of_its_size():
    a = result_buffers.empty_float32(ROWS, DIM)
    assert a.shape == (ROWS, DIM) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    address = a.ctypes.data
    del a
    assert result_buffers.pooled_bytes() == ROWS * DIM * 4
    b = result_buffers.empty_float32(ROWS, DIM)
    assert b.ctypes.data == address and result_buffers.pooled_bytes() == 0
    del b
    c = result_buffers.empty_float32(ROWS // 2, 2 * DIM)  # the same bytes in another shape
    assert c.ctypes.data == address and c.shape == (ROWS // 2, 2 * DIM)


def test_memory_in_use_is_never_handed_out_again():
    a = result_buffers.empty_float32(ROWS, DIM)
    a[:] = 1.0
    view = a[10:20]
    address = a.ctypes.data
    del a
    b = result_buffers.empty_float32(ROWS, DIM)  # the view still holds the first result
    assert b.ctypes.data != address
    b[:] = 2.0
    assert (view == 1.0).all()
    del view
    gc.collect()
    assert result_buffers.empty_float32(ROWS, DIM).ctypes.data == address


def test_a_torch_tensor_keeps_its_memory():
    torch = pytest.importorskip("torch")
    a = result_buffers.empty_float32(ROWS, DIM)
    tensor = torch.from_numpy(a)
    address = a.ctypes.data
    del a
    assert result_buffers.empty_float32(ROWS, DIM).ctypes.data != address
    del tensor
    assert result_buffers.empty_float32(ROWS, DIM).ctypes.data == address


def test_small_results_are_plain_arrays_and_the_pool_is_bounded():
    small = result_buffers.empty_float32(16, DIM)
    assert small.flags.owndata
    results = [result_buffers.empty_float32(ROWS, DIM) for _ in range(6)]  # 6 × 256 KiB
    del results
    assert result_buffers.pooled_bytes() == 4 * ROWS * DIM * 4  # 1 MiB kept, the oldest dropped


def test_hash_map_finds_reuse_a_dropped_result_and_stay_exact():
    rng = np.random.default_rng(1)
    keys = rng.permutation(20_000).astype(np.int64) * 7
    vectors = rng.standard_normal((keys.shape[0], DIM)).astype(np.float32)
    backend = HashMapBackend(HashMapConfig())
    backend.create_table("t", DIM)
    backend.insert_or_assign("t", keys, vectors)
    query = np.concatenate([keys[:ROWS - 100], -keys[:100] - 1])
    got, found = backend.find("t", query)
    address = got.ctypes.data
    del got
    got, found = backend.find("t", query[::-1].copy())
    assert got.ctypes.data == address
    assert found[100:].all() and not found[:100].any()
    np.testing.assert_array_equal(got[100:], vectors[:ROWS - 100][::-1])
    assert (got[:100] == 0).all()  # the recycled memory's old rows are overwritten, misses zeroed
