"""HashMapBackend: the backend contract, overflow policies, growth, races and memory budget."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hps.config.schema import HashMapConfig
from hps.errors import BackendError, ClosedError, KeyInputError
from hps.storage.hash_map import HashMapBackend
from tests.storage.backend_contract import BackendContract, _rows

TAG = "hps_et.hm.t0"


def _backend(**kwargs) -> HashMapBackend:
    return HashMapBackend(HashMapConfig(**kwargs))


class TestHashMapContract(BackendContract):
    @pytest.fixture
    def backend(self):
        b = _backend(num_partitions=4)
        yield b
        b.close()


def test_growth_past_many_resizes_keeps_every_row():
    b = _backend(num_partitions=3, max_batch_size=1000)
    b.create_table(TAG, 5)
    rng = np.random.default_rng(7)
    keys = rng.choice(2**63 - 1, size=60_000, replace=False).astype(np.int64) - 2**62
    for chunk in np.array_split(keys, 37):  # many small inserts: many slot and slab resizes
        b.insert_or_assign(TAG, chunk, _rows(chunk, dim=5))
    assert b.size(TAG) == keys.shape[0]
    assert b.partition_sizes(TAG).sum() == keys.shape[0]
    vectors, found = b.find(TAG, keys[::-1])
    assert found.all()
    np.testing.assert_array_equal(vectors, _rows(keys[::-1], dim=5))
    # erase half, reinsert: the free list reuses rows
    assert b.erase(TAG, keys[::2]) == keys[::2].shape[0]
    _, found = b.find(TAG, keys)
    assert found[1::2].all() and not found[::2].any()
    before = b.memory_bytes(TAG)
    b.insert_or_assign(TAG, keys[::2], _rows(keys[::2], dim=5, salt=2.0))
    assert b.memory_bytes(TAG) == before
    vectors, found = b.find(TAG, keys)
    assert found.all()
    np.testing.assert_array_equal(vectors[::2], _rows(keys[::2], dim=5, salt=2.0))
    np.testing.assert_array_equal(vectors[1::2], _rows(keys[1::2], dim=5))


def test_reserve_then_chunked_load_does_not_regrow():
    b = _backend()
    b.create_table(TAG, 16)
    b.reserve(TAG, 50_000)
    before = b.memory_bytes(TAG)
    keys = np.arange(50_000, dtype=np.int64)
    for chunk in np.array_split(keys, 5):
        b.insert_or_assign(TAG, chunk, _rows(chunk, dim=16))
    assert b.memory_bytes(TAG) == before and b.size(TAG) == 50_000
    assert before / 50_000 <= 1.5 * (8 + 4 * 16)


def test_duplicate_keys_in_one_insert_last_wins():
    b = _backend()
    b.create_table(TAG, 2)
    keys = np.array([4, 4, 9, 4], dtype=np.int64)
    vecs = np.arange(8, dtype=np.float32).reshape(4, 2)
    b.insert_or_assign(TAG, keys, vecs)
    v, f = b.find(TAG, np.array([4, 9], dtype=np.int64))
    assert f.all() and b.size(TAG) == 2
    np.testing.assert_array_equal(v, vecs[[3, 2]])


def _overflow_backend(policy: str) -> HashMapBackend:
    b = _backend(num_partitions=2, overflow_margin=500, overflow_resolution_target=0.6,
                 overflow_policy=policy, max_batch_size=64)
    b.create_table(TAG, 4)
    return b


@pytest.mark.parametrize("policy", ["evict_random", "evict_least_used", "evict_oldest"])
def test_overflow_keeps_each_partition_under_margin(policy):
    b = _overflow_backend(policy)
    keys = np.arange(5_000, dtype=np.int64)
    b.insert_or_assign(TAG, keys, _rows(keys, dim=4))
    sizes = b.partition_sizes(TAG)
    assert (sizes < 500).all() and (sizes >= 300 - 64).all()
    assert b.size(TAG) == sizes.sum()
    vectors, found = b.find(TAG, keys)
    assert found.sum() == b.size(TAG)
    np.testing.assert_array_equal(vectors[found], _rows(keys[found], dim=4))


def _fill_then_overflow(b: HashMapBackend, touch) -> tuple[np.ndarray, np.ndarray]:
    first = np.arange(600, dtype=np.int64)  # ~300 per partition: below the margin of 500
    b.insert_or_assign(TAG, first, _rows(first, dim=4))
    hot = first[::5]
    touch(hot)
    more = np.arange(10_000, 10_500, dtype=np.int64)  # pushes both partitions past 500
    b.insert_or_assign(TAG, more, _rows(more, dim=4))
    assert (b.partition_sizes(TAG) < 500).all()
    return hot, first


def test_least_used_keeps_frequently_found_keys():
    b = _overflow_backend("evict_least_used")
    hot, first = _fill_then_overflow(b, lambda hot: [b.find(TAG, hot) for _ in range(3)])
    _, found = b.find(TAG, hot)
    assert found.all()
    _, found_first = b.find(TAG, first)
    assert found_first.sum() < first.shape[0]


def test_least_used_insert_resets_the_access_count():
    b = _overflow_backend("evict_least_used")
    first = np.arange(600, dtype=np.int64)
    b.insert_or_assign(TAG, first, _rows(first, dim=4))
    for _ in range(2):
        b.find(TAG, first)  # every first key: count 2
    reset = first[::5]
    b.insert_or_assign(TAG, reset, _rows(reset, dim=4, salt=1.0))  # back to count 0
    more = np.arange(10_000, 10_500, dtype=np.int64)  # count 0; both partitions pass the margin
    b.insert_or_assign(TAG, more, _rows(more, dim=4))
    assert (b.partition_sizes(TAG) < 500).all()
    _, found = b.find(TAG, np.setdiff1d(first, reset))
    assert found.all()  # the victims all had count 0: reset or new keys
    _, found_reset = b.find(TAG, reset)
    assert found_reset.sum() < reset.shape[0]


def test_oldest_keeps_recently_found_keys():
    b = _overflow_backend("evict_oldest")

    def touch(hot):
        b.find(TAG, hot)

    first = np.arange(600, dtype=np.int64)
    b.insert_or_assign(TAG, first, _rows(first, dim=4))
    more = np.arange(10_000, 10_300, dtype=np.int64)
    b.insert_or_assign(TAG, more, _rows(more, dim=4))  # still below the margin
    hot = first[::5]
    touch(hot)  # now the first batch's hot keys are newer than `more`
    extra = np.arange(20_000, 20_200, dtype=np.int64)  # both partitions pass the margin
    b.insert_or_assign(TAG, extra, _rows(extra, dim=4))
    assert (b.partition_sizes(TAG) < 500).all()
    # the ~400 victims are all among the 480 cold rows of the first batch (the oldest)
    for newer in (hot, more, extra):
        assert b.find(TAG, newer)[1].all()
    _, found_cold = b.find(TAG, np.setdiff1d(first, hot))
    assert found_cold.sum() == b.size(TAG) - hot.shape[0] - more.shape[0] - extra.shape[0]
    assert found_cold.sum() < 480


def test_random_policy_count_is_exact_per_partition():
    b = _overflow_backend("evict_random")
    keys = np.arange(1_000_000, 1_002_000, dtype=np.int64)
    b.insert_or_assign(TAG, keys[:1], _rows(keys[:1], dim=4))
    for k in np.array_split(keys[1:], 40):
        b.insert_or_assign(TAG, k, _rows(k, dim=4))
        sizes = b.partition_sizes(TAG)
        assert (sizes < 500).all()
    assert b.size(TAG) == b.partition_sizes(TAG).sum()


def test_validation_names_tag_and_counts_and_writes_nothing():
    b = _backend()
    b.create_table(TAG, 3)
    with pytest.raises(KeyInputError, match=TAG):
        b.find(TAG, np.zeros(3, dtype=np.float32))
    with pytest.raises(KeyInputError, match=TAG):
        b.find(TAG, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(BackendError, match=r"hps_et.hm.t0.*\(4, 3\).*5 keys"):
        b.insert_or_assign(TAG, np.arange(5, dtype=np.int64), np.zeros((4, 3), np.float32))
    with pytest.raises(BackendError, match="unknown table hps_et.hm.nope"):
        b.size("hps_et.hm.nope")
    assert b.size(TAG) == 0
    # int32 keys are widened
    b.insert_or_assign(TAG, np.array([1, 2], dtype=np.int32), np.ones((2, 3), np.float64))
    assert b.find(TAG, np.array([2], dtype=np.int32))[1].all()


def test_find_into_a_callers_buffer():
    b = _backend()
    b.create_table(TAG, 4)
    b.insert_or_assign(TAG, np.array([7, 9], np.int64), np.arange(8, dtype=np.float32).reshape(2, 4))
    out = np.full((3, 4), -1.0, np.float32)
    vectors, found = b.find(TAG, np.array([9, 5, 7], np.int64), out=out)
    assert vectors is out and found.tolist() == [True, False, True]
    assert out.tolist() == [[4, 5, 6, 7], [0, 0, 0, 0], [0, 1, 2, 3]]
    for bad in (np.zeros((3, 4), np.float64), np.zeros((2, 4), np.float32), np.zeros((4, 3), np.float32).T):
        with pytest.raises(BackendError, match=r"hps_et.hm.t0: out must be .*\(3, 4\) float32 .* 3 keys"):
            b.find(TAG, np.array([9, 5, 7], np.int64), out=bad)


def test_close_then_calls_raise_closed_error():
    b = _backend()
    b.create_table(TAG, 3)
    b.close()
    with pytest.raises(ClosedError):
        b.find(TAG, np.array([1], dtype=np.int64))
    with pytest.raises(ClosedError):
        b.tables()


def test_concurrent_find_and_insert_never_tear_rows():
    b = _backend(num_partitions=2, overflow_policy="evict_least_used")
    dim = 32
    b.create_table(TAG, dim)
    keys = np.arange(20_000, dtype=np.int64)
    b.insert_or_assign(TAG, keys, np.zeros((keys.shape[0], dim), np.float32))
    stop = threading.Event()
    errors: list[str] = []
    reads: list[int] = []

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            reads.append(1)
            q = rng.integers(0, 40_000, size=2_000)
            v, f = b.find(TAG, q)
            # every row is constant (one writer generation) → a torn row has two values
            rows = v[f]
            if rows.size and not (rows == rows[:, :1]).all():
                errors.append("torn row")

    def writer() -> None:
        rng = np.random.default_rng(99)
        for gen in range(1, 60):
            k = rng.integers(0, 40_000, size=3_000)  # new keys force resizes
            b.insert_or_assign(TAG, k, np.full((k.shape[0], dim), float(gen), np.float32))
            b.erase(TAG, rng.integers(0, 40_000, size=200))
        stop.set()

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(reads) > 3
    assert b.size(TAG) == b.partition_sizes(TAG).sum()


@pytest.mark.parametrize("dim", [16, 128])
def test_memory_per_row_within_one_and_a_half_raw(dim):
    b = _backend()
    b.create_table(TAG, dim)
    rng = np.random.default_rng(3)
    raw = 8 + 4 * dim
    total = 0
    for n in (30_000, 1, 20_000, 7_777, 45_000):  # batch sizes hitting several resize states
        keys = rng.integers(0, 2**62, size=n)
        b.insert_or_assign(TAG, keys, np.zeros((n, dim), np.float32))
        total = b.size(TAG)
        assert b.memory_bytes(TAG) / total <= 1.5 * raw, (dim, total, b.memory_bytes(TAG) / total)
    assert total > 100_000


def test_random_operations_match_a_dict_reference():
    """Inserts, erases (backward shift, wrap-around at the slot array's end) and finds against a dict."""
    b = _backend(num_partitions=3)
    b.create_table(TAG, 2)
    rng = np.random.default_rng(11)
    reference: dict[int, np.ndarray] = {}
    for step in range(300):
        keys = rng.integers(-60, 60, size=int(rng.integers(1, 12)))  # small key space: collisions
        if rng.random() < 0.55:
            vecs = rng.random((keys.shape[0], 2), dtype=np.float32)
            b.insert_or_assign(TAG, keys, vecs)
            for k, v in zip(keys.tolist(), vecs):
                reference[k] = v
        else:
            expected = len({k for k in keys.tolist() if k in reference})
            assert b.erase(TAG, keys) == expected
            for k in keys.tolist():
                reference.pop(k, None)
        query = np.arange(-60, 60, dtype=np.int64)
        vectors, found = b.find(TAG, query)
        assert found.tolist() == [k in reference for k in query.tolist()], step
        for k, v, f in zip(query.tolist(), vectors, found):
            if f:
                np.testing.assert_array_equal(v, reference[k])
        assert b.size(TAG) == len(reference) == b.partition_sizes(TAG).sum()


def test_direct_index_for_contiguous_keys_matches_a_dict_reference():
    """Tables whose keys are one range get a direct index after a few quiet finds; inserts, overwrites,
    erases and keys far outside the range keep every find exact."""
    b = _backend(num_partitions=2)
    b.create_table(TAG, 3)
    rng = np.random.default_rng(5)
    keys = np.arange(1000, 1600, dtype=np.int64)
    vecs = rng.random((keys.shape[0], 3), dtype=np.float32)
    b.insert_or_assign(TAG, keys, vecs)
    reference = {k: v for k, v in zip(keys.tolist(), vecs)}
    query = np.concatenate([np.arange(990, 1610, dtype=np.int64), [-(2**63), 2**63 - 1, 10**15]])
    for step in range(40):
        for _ in range(5):  # enough quiet finds to (re)build the index
            vectors, found = b.find(TAG, query)
            assert found.tolist() == [k in reference for k in query.tolist()], step
            for k, v, f in zip(query.tolist(), vectors, found):
                if f:
                    np.testing.assert_array_equal(v, reference[k])
        if step == 0:  # keys inserted in order: the row is computed from the key, no index array
            assert b._tables[TAG].dense is not None and b._tables[TAG].dense.index is None
        change = rng.integers(990, 1610, size=8)
        if step % 3 == 0:
            change[:2] = [10**15, -(2**63)]  # far outside the range: found through the slots
        if rng.random() < 0.6:
            new = rng.random((change.shape[0], 3), dtype=np.float32)
            b.insert_or_assign(TAG, change, new)
            reference.update({k: v for k, v in zip(change.tolist(), new)})
        else:
            b.erase(TAG, change)
            for k in change.tolist():
                reference.pop(k, None)
    b.erase(TAG, np.array([10**15, -(2**63)]))  # without the far keys the range is dense again
    for _ in range(5):
        b.find(TAG, query)
    assert b._tables[TAG].dense is not None


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("in_order", [True, False])
def test_direct_index_copies_rows_bit_exact(dim, in_order):
    """Keys of one range inserted in order (row computed from the key) or shuffled with a hole (index
    array): found rows come back bit for bit (NaN payloads too), absent ones as zeros."""
    b = _backend(num_partitions=1)
    b.create_table(TAG, dim)
    rng = np.random.default_rng(7)
    keys = np.arange(-300, 300, dtype=np.int64)
    if not in_order:
        keys = rng.permutation(keys)[1:]
    bits = rng.integers(0, 2**32, size=(keys.shape[0], dim), dtype=np.uint32)
    b.insert_or_assign(TAG, keys, bits.view(np.float32))
    query = np.concatenate([rng.permutation(np.arange(-310, 310, dtype=np.int64)), [2**63 - 1, -(2**63)]])
    for _ in range(5):
        vectors, found = b.find(TAG, query)
    dense = b._tables[TAG].dense
    assert dense is not None and (dense.index is None) == in_order
    position = {k: i for i, k in enumerate(keys.tolist())}
    expected = np.array([k in position for k in query.tolist()])
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(vectors.view(np.uint32)[found], bits[[position[k] for k in query[found].tolist()]])
    assert not vectors[~found].any()


def test_no_direct_index_for_scattered_keys():
    b = _backend(num_partitions=1)
    b.create_table(TAG, 2)
    keys = np.random.default_rng(6).choice(2**62, size=500, replace=False).astype(np.int64)
    b.insert_or_assign(TAG, keys, np.ones((500, 2), dtype=np.float32))
    for _ in range(8):
        assert b.find(TAG, keys)[1].all()
    assert b._tables[TAG].dense is None


@pytest.mark.parametrize("keys_kind", ["spread", "dense"])  # hash probes, and the direct index
@pytest.mark.parametrize("policy", ["evict_random", "evict_least_used"])
def test_a_large_find_split_over_cores_is_exact(monkeypatch, keys_kind, policy):
    import hps.storage.hash_map as hash_map

    monkeypatch.setattr(hash_map.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    rng = np.random.default_rng(5)
    n_rows = 50_000
    keys = np.arange(n_rows, dtype=np.int64) * (1 if keys_kind == "dense" else 7_919)
    vectors = rng.standard_normal((n_rows, 4)).astype(np.float32)
    backend = HashMapBackend(HashMapConfig(overflow_policy=policy))
    backend.create_table("t", 4)
    backend.insert_or_assign("t", keys, vectors)
    query = np.concatenate([keys[rng.integers(0, n_rows, 3 * hash_map.PARALLEL_FIND_KEYS)], -keys[1:1000] - 1])
    for _ in range(hash_map._DENSE_QUIET_FINDS + 1):  # the direct index is built after a few quiet finds
        got, found, num_found = backend.find_counted("t", query)
    assert num_found == 3 * hash_map.PARALLEL_FIND_KEYS and found[:num_found].all() and not found[num_found:].any()
    np.testing.assert_array_equal(got[:num_found], vectors[np.searchsorted(keys, query[:num_found])])
    assert (got[num_found:] == 0).all()
