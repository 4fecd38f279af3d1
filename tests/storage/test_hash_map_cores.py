"""How a large hash-map find is split over cores: the worker cap (`HPS_FIND_WORKERS` / `FIND_WORKERS`),
no split below `PARALLEL_FIND_KEYS`, and concurrent callers sharing the cores instead of oversubscribing."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import hps.storage.hash_map as hash_map
from hps.config.schema import HashMapConfig
from hps.errors import ConfigError, HpsError
from hps.storage.hash_map import HashMapBackend


@pytest.fixture
def four_cores(monkeypatch):
    """A process that may run on 4 cores, no cap set."""
    monkeypatch.setattr(hash_map.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv(hash_map.FIND_WORKERS_ENV, raising=False)
    monkeypatch.setattr(hash_map, "FIND_WORKERS", None)


def _parts(n: int) -> list[tuple[int, int]]:
    """The `(start, stop)` parts `_on_all_cores` splits `n` keys into."""
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def part(s: slice) -> int:
        with lock:
            seen.append((s.start, s.stop))
        return s.stop - s.start

    assert hash_map._on_all_cores(part, n) == n
    return sorted(seen)


def test_every_core_by_default_and_nothing_split_below_the_threshold(four_cores):
    assert hash_map.find_workers() == 4
    assert _parts(hash_map.PARALLEL_FIND_KEYS - 1) == [(0, hash_map.PARALLEL_FIND_KEYS - 1)]
    n = 4 * hash_map.PARALLEL_FIND_KEYS
    parts = _parts(n)
    assert len(parts) == 4 and parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))  # contiguous, no gap or overlap
    # each part keeps at least half the threshold: 1.5 × threshold keys make 3 parts at most
    assert len(_parts(3 * hash_map.PARALLEL_FIND_KEYS // 2)) == 3


def test_the_environment_variable_caps_the_cores(four_cores, monkeypatch):
    monkeypatch.setenv(hash_map.FIND_WORKERS_ENV, "1")
    assert hash_map.find_workers() == 1
    assert len(_parts(8 * hash_map.PARALLEL_FIND_KEYS)) == 1
    monkeypatch.setenv(hash_map.FIND_WORKERS_ENV, "2")
    assert len(_parts(8 * hash_map.PARALLEL_FIND_KEYS)) == 2


def test_the_module_setting_wins_over_the_environment(four_cores, monkeypatch):
    monkeypatch.setenv(hash_map.FIND_WORKERS_ENV, "1")
    monkeypatch.setattr(hash_map, "FIND_WORKERS", 3)
    assert len(_parts(8 * hash_map.PARALLEL_FIND_KEYS)) == 3


@pytest.mark.parametrize("env, module", [("0", None), ("two", None), ("-3", None), ("1.5", None),
                                         (None, 0), (None, 2.5), (None, True), (None, "x")])
def test_a_bad_cap_raises_naming_it(four_cores, monkeypatch, env, module):
    if env is not None:
        monkeypatch.setenv(hash_map.FIND_WORKERS_ENV, env)
    monkeypatch.setattr(hash_map, "FIND_WORKERS", module)
    with pytest.raises(ConfigError, match="FIND_WORKERS.*positive integer") as info:
        hash_map.find_workers()
    assert isinstance(info.value, HpsError)
    with pytest.raises(ConfigError):  # a large find says so too
        _parts(hash_map.PARALLEL_FIND_KEYS)
    assert _parts(10) == [(0, 10)]  # small finds never read the setting


def test_a_concurrent_caller_gets_only_the_free_cores(monkeypatch):
    """While one caller's find holds both cores of a 2-core machine, a second large find runs in its
    own thread only (no T callers × 2 workers), and gets both cores back once the first is done."""
    monkeypatch.setattr(hash_map.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv(hash_map.FIND_WORKERS_ENV, raising=False)
    monkeypatch.setattr(hash_map, "FIND_WORKERS", None)
    n = 4 * hash_map.PARALLEL_FIND_KEYS
    inner: list[list[tuple[int, int]]] = []
    outer: list[tuple[int, int]] = []

    def outer_part(s: slice) -> int:
        outer.append((s.start, s.stop))
        if s.start == 0:  # the first caller's own part: a second caller arrives meanwhile
            inner.append(_parts(n))
        return s.stop - s.start

    assert hash_map._on_all_cores(outer_part, n) == n
    assert len(outer) == 2 and inner == [[(0, n)]]
    assert hash_map._busy_cores == 0
    assert len(_parts(n)) == 2


def test_a_failing_part_frees_its_cores(four_cores):
    def part(s: slice) -> int:
        raise RuntimeError("part failed")

    with pytest.raises(RuntimeError):
        hash_map._on_all_cores(part, 4 * hash_map.PARALLEL_FIND_KEYS)
    assert hash_map._busy_cores == 0
    assert len(_parts(4 * hash_map.PARALLEL_FIND_KEYS)) == 4


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_finds_from_concurrent_callers_are_exact_at_any_cap(monkeypatch, workers):
    monkeypatch.setattr(hash_map, "FIND_WORKERS", workers)
    rng = np.random.default_rng(3)
    keys = rng.permutation(200_000).astype(np.int64) * 7_919
    vectors = rng.standard_normal((keys.shape[0], 4)).astype(np.float32)
    backend = HashMapBackend(HashMapConfig(num_partitions=3))
    backend.create_table("t", 4)
    backend.insert_or_assign("t", keys, vectors)
    queries = [rng.integers(0, keys.shape[0], 3 * hash_map.PARALLEL_FIND_KEYS) for _ in range(4)]
    results: list = [None] * 4

    def call(i: int) -> None:
        results[i] = backend.find("t", keys[queries[i]])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for q, (got, found) in zip(queries, results):
        assert found.all()
        np.testing.assert_array_equal(got, vectors[q])
    assert hash_map._busy_cores == 0
