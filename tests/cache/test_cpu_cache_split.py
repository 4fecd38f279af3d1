"""`CpuEmbeddingCache.find` split over cores: exact answers, and the LRU order of one unsplit find
whatever order the parts run in."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings

import hps.storage.hash_map as hash_map
from hps.cache.cpu import CpuEmbeddingCache
from tests.cache.test_cpu_cache_lru_model import DIM, SETS, STEPS, WAYS, check_against_the_model


def _parts_in_reverse(find_part, n: int) -> int:
    """`_on_all_cores` with 3 parts run one after another, last part first (the order that would
    break the recency of a key repeated across parts if stamps were simply overwritten)."""
    bounds = np.linspace(0, n, 4).astype(np.int64)
    return sum(find_part(slice(int(a), int(b))) for a, b in reversed(list(zip(bounds[:-1], bounds[1:]))))


@settings(max_examples=40, deadline=None)
@given(STEPS)
def test_split_finds_match_a_per_set_lru_model(steps):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hash_map, "PARALLEL_FIND_KEYS", 3)
        mp.setattr(hash_map, "_on_all_cores", _parts_in_reverse)
        check_against_the_model(steps)


def test_a_large_find_is_split_over_the_cores_and_exact(monkeypatch):
    monkeypatch.setattr(hash_map.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(hash_map, "FIND_WORKERS", None)
    monkeypatch.delenv(hash_map.FIND_WORKERS_ENV, raising=False)
    threads: set[int] = set()
    parts: list[slice] = []
    split = hash_map._on_all_cores

    def spy(find_part, n):
        def part(s: slice) -> int:
            threads.add(threading.get_ident())
            parts.append(s)
            return find_part(s)
        return split(part, n)

    monkeypatch.setattr(hash_map, "_on_all_cores", spy)
    rng = np.random.default_rng(2)
    keys = rng.permutation(100_000).astype(np.int64) * 31
    vectors = rng.standard_normal((keys.shape[0], 8)).astype(np.float32)
    cache = CpuEmbeddingCache(200_000, 8)
    cache.insert_or_assign(keys, vectors)
    present = {int(k) for k in cache.dump()}
    idx = rng.integers(0, keys.shape[0], 3 * hash_map.PARALLEL_FIND_KEYS)
    query = np.concatenate([keys[idx], -keys[:1000] - 1])
    got, found, hits = cache.find_counted(query)
    # split for 3 cores; the chunks are taken in turn, so a thread that starts late may find none left
    assert len(parts) >= 3 and 1 <= len(threads) <= 3
    want_found = np.array([int(k) in present for k in query])
    np.testing.assert_array_equal(found, want_found)
    assert hits == int(want_found.sum()) > 0
    np.testing.assert_array_equal(got[found], vectors[idx][found[:idx.shape[0]]])
    assert (got[~found] == 0).all()
    threads.clear()
    parts.clear()
    cache.find(query[:1000])  # small: one kernel call in the caller's thread, no split
    assert threads == set() and parts == []


def test_a_key_repeated_across_parts_keeps_its_latest_use(monkeypatch):
    """Keys a, b, c, d fill one set; the find `a c d | b c d | a c d` (three parts, run last first)
    leaves b least recently used, so the next key of that set evicts b, not a."""
    from hps.storage.partition import partition_of

    monkeypatch.setattr(hash_map, "PARALLEL_FIND_KEYS", 3)
    monkeypatch.setattr(hash_map, "_on_all_cores", _parts_in_reverse)
    candidates = np.arange(1000, dtype=np.int64)
    same_set = candidates[partition_of(candidates, SETS) == 0][:5]
    a, b, c, d, e = (int(k) for k in same_set)
    cache = CpuEmbeddingCache(WAYS * SETS, DIM, ways=WAYS)
    cache.insert_or_assign(np.array([a, b, c, d], np.int64), np.zeros((4, DIM), np.float32))
    cache.find(np.array([a, c, d, b, c, d, a, c, d], np.int64))
    cache.insert_or_assign(np.array([e], np.int64), np.ones((1, DIM), np.float32))
    assert sorted(cache.dump().tolist()) == sorted([a, c, d, e])
