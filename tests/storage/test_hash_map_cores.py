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


def _split(n: int) -> tuple[list[tuple[int, int]], int]:
    """The `(start, stop)` chunks `_on_all_cores` cuts `n` keys into (checked to cover them once, in
    order), and the number of threads that ran them."""
    seen: list[tuple[int, int]] = []
    threads: set[int] = set()
    lock = threading.Lock()

    def part(s: slice) -> int:
        with lock:
            seen.append((s.start, s.stop))
            threads.add(threading.get_ident())
        return s.stop - s.start

    assert hash_map._on_all_cores(part, n) == n
    seen.sort()
    assert seen[0][0] == 0 and seen[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:]))  # contiguous, no gap or overlap
    return seen, len(threads)


def _parts(n: int) -> list[tuple[int, int]]:
    return _split(n)[0]


def _threads(n: int) -> int:
    return _split(n)[1]


def test_every_core_by_default_and_nothing_split_below_the_threshold(four_cores):
    assert hash_map.find_workers() == 4
    assert _parts(hash_map.PARALLEL_FIND_KEYS - 1) == [(0, hash_map.PARALLEL_FIND_KEYS - 1)]
    n = 4 * hash_map.PARALLEL_FIND_KEYS
    chunks, threads = _split(n)
    assert threads <= 4 and len(chunks) == 8  # each chunk keeps at least half the threshold
    assert max(b - a for a, b in chunks) - min(b - a for a, b in chunks) <= 1
    n = 64 * hash_map.PARALLEL_FIND_KEYS
    assert len(_parts(n)) == 4 * hash_map.CHUNKS_PER_WORKER  # up to CHUNKS_PER_WORKER per thread
    assert len(_parts(3 * hash_map.PARALLEL_FIND_KEYS // 2)) == 3


def test_a_slow_thread_takes_fewer_chunks(monkeypatch):
    """Chunks are taken in turn: while one thread is held up (another process on its core), the other
    threads take the rest of the chunks."""
    monkeypatch.setattr(hash_map.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(hash_map, "FIND_WORKERS", None)
    n = 64 * hash_map.PARALLEL_FIND_KEYS
    caller = threading.get_ident()
    done: dict[str, int] = {"caller": 0, "pool": 0}
    pool_done = threading.Event()

    def part(s: slice) -> int:
        if threading.get_ident() == caller:
            pool_done.wait(10)  # the caller's thread stalls on its first chunk until the pool thread finished
            done["caller"] += 1
        else:
            done["pool"] += 1
        return s.stop - s.start

    orig_submit = hash_map.ThreadPoolExecutor.submit

    def submit(self, fn, *args):  # the pool thread says when it ran out of chunks
        def wrapped():
            try:
                return fn(*args)
            finally:
                pool_done.set()
        return orig_submit(self, wrapped)

    monkeypatch.setattr(hash_map.ThreadPoolExecutor, "submit", submit)
    assert hash_map._on_all_cores(part, n) == n
    assert done == {"caller": 1, "pool": 2 * hash_map.CHUNKS_PER_WORKER - 1}


def test_the_environment_variable_caps_the_cores(four_cores, monkeypatch):
    monkeypatch.setenv(hash_map.FIND_WORKERS_ENV, "1")
    assert hash_map.find_workers() == 1
    assert len(_parts(8 * hash_map.PARALLEL_FIND_KEYS)) == 1
    monkeypatch.setenv(hash_map.FIND_WORKERS_ENV, "2")
    assert _threads(64 * hash_map.PARALLEL_FIND_KEYS) <= 2
    assert len(_parts(64 * hash_map.PARALLEL_FIND_KEYS)) == 2 * hash_map.CHUNKS_PER_WORKER


def test_the_module_setting_wins_over_the_environment(four_cores, monkeypatch):
    monkeypatch.setenv(hash_map.FIND_WORKERS_ENV, "1")
    monkeypatch.setattr(hash_map, "FIND_WORKERS", 3)
    assert len(_parts(64 * hash_map.PARALLEL_FIND_KEYS)) == 3 * hash_map.CHUNKS_PER_WORKER


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
    assert len(outer) == 8 and inner == [[(0, n)]]  # 2 threads took the 8 chunks; the inner find 1 thread
    assert hash_map._busy_cores == 0
    assert len(_parts(n)) == 8


def test_a_failing_part_frees_its_cores(four_cores):
    def part(s: slice) -> int:
        raise RuntimeError("part failed")

    with pytest.raises(RuntimeError):
        hash_map._on_all_cores(part, 4 * hash_map.PARALLEL_FIND_KEYS)
    assert hash_map._busy_cores == 0
    assert len(_parts(4 * hash_map.PARALLEL_FIND_KEYS)) == 8


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
