"""The CPU miss path: `TierChain.fetch` before/after, and a CPU cache against the tier behind it.

Report "cpu-miss-path" (benchmarks/results/cpu-miss-path.md), sections:
- tier_fetch: `TierChain.fetch` of a 166k-unique-key miss batch at dim 128 (what a 16,384 × 26 Zipf
  batch leaves to the tiers), the volatile tier (in-process hash map) answering every key, and 90 %
  of them with the rest in a second map standing for the persistent tier; beside the previous
  implementation (whole-array boolean gathers and scatters, kept below as `fetch_before`) and the
  bare `HashMapBackend.find(out=)` of the same keys (the floor), timed alternately in one run.
- cache_vs_tier: `HPS.lookup` of 1,024 × 26 keys (one table, 5 M × 64 rows by default; uniform and
  Zipf(1.05) keys) with a CPU cache at each `gpucacheper`, beside the same lookups with no cache
  (`gpucache: false`) and the same cache always probed (the route of `hps.lookup.cache_route`
  disabled: the behaviour before it), timed alternately in one run. Target: ours ≤ 1.2× no cache.
- all_cores: one call of 1 M keys (dims 16 and 128; 2 M-row table) with the hash-map find capped at one
  core (`hash_map.FIND_WORKERS = 1`, as `HPS_FIND_WORKERS=1`) against every core, called in turn:
  `HashMapBackend.find` alone, `HPS.lookup` with no cache, with a CPU cache at gpucacheper 0.2 and 1.0.
  Target: ≥ 1.6× on the 2-core VMs (≥ 8× on 16 cores). concurrent_callers: T = 1 / 2 / 4 threads at
  once, each find on one core against split (no oversubscription). split_threshold: finds of 8 k–262 k
  keys on one core, always split, and split from `PARALLEL_FIND_KEYS` (small lookups never slower).

Run: `python benchmarks/bench_cpu_miss_path.py [--quick] [--only tier_fetch|cache_vs_tier|all_cores]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import VM_NOTE, percentile, threads_at_once, write_results  # noqa: E402

import hps  # noqa: E402
from hps.config.schema import HashMapConfig, TableConfig  # noqa: E402
from hps.errors import BackendError, PartialBackendError  # noqa: E402
from hps.lookup.cache_route import CacheRoute  # noqa: E402
from hps.lookup.stats import DEFAULT, PERSISTENT, VOLATILE, TableStats  # noqa: E402
from hps.lookup.tiers import TierChain  # noqa: E402
from hps.model_format import write_sparse_model  # noqa: E402
from hps.storage import hash_map  # noqa: E402
from hps.storage.hash_map import HashMapBackend  # noqa: E402

TAG = "hps_et.bench.t0"


def fetch_before(chain: TierChain, table: TableConfig, keys: np.ndarray, stats: TableStats):
    """`TierChain.fetch` as it was before issue 15 (commit 7a49e9c), for the side-by-side rows."""
    n = len(keys)
    vectors = np.empty((n, table.dim), dtype=np.float32)
    source = np.full(n, DEFAULT, dtype=np.uint8)
    missing = np.ones(n, dtype=bool)
    unavailable = None
    failure = None
    if chain.volatile is not None and n:
        found = None
        try:
            found_vectors, found = chain.volatile.find(table.tag, keys)
        except PartialBackendError as exc:
            found_vectors, found, unavailable, failure = exc.vectors, exc.found, exc.unavailable, exc
        except BackendError as exc:
            unavailable, failure = np.ones(n, dtype=bool), exc
        if found is not None:
            vectors[found] = found_vectors[found]
            source[found] = VOLATILE
            missing = ~found
    if chain.persistent is not None and missing.any():
        idx = np.flatnonzero(missing)
        found_vectors, found = chain.persistent.find(table.tag, keys[idx])
        vectors[idx[found]] = found_vectors[found]
        missing[idx[found]] = False
        source[idx[found]] = PERSISTENT
    if unavailable is not None and (unavailable & missing).any():
        raise BackendError(f"{int((unavailable & missing).sum())} keys could not be answered: {failure}")
    if missing.any():
        vectors[missing] = table.default_value
    return vectors, source


def _alternate(fns: dict, repeat: int, warmup: int = 2, others: list | None = None,
               quiet_rounds: int = 0, max_repeat: int = 0) -> dict[str, list[float]]:
    """Wall seconds of each `fns[name](k)`, called in turn `repeat` times (a busy neighbour slows all alike).
    `k` counts every call, so consecutive calls pick different batches (`batches[k % len(batches)]`): a method
    never runs on keys the method before it just brought into the CPU caches. `others`: gets, per round,
    the cores other processes kept busy meanwhile (`_OthersLoad`); with `quiet_rounds`, rounds go on past
    `repeat` (up to `max_repeat`) until that many had other processes under `QUIET_CORES` cores."""
    k = 0
    for _ in range(warmup):
        for fn in fns.values():
            fn(k)
            k += 1
    times: dict[str, list[float]] = {name: [] for name in fns}
    rounds = quiet = 0
    while rounds < repeat or (quiet < quiet_rounds and rounds < max_repeat):
        rounds += 1
        with _OthersLoad() as load:
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(k)
                times[name].append(time.perf_counter() - t0)
                k += 1
        quiet += load.cores is not None and load.cores < QUIET_CORES
        if others is not None:
            others.append(load.cores)
    return times


def bench_tier_fetch(quick: bool) -> None:
    dim, unique = 128, (40_000 if quick else 166_000)
    rows = 4 * unique
    rng = np.random.default_rng(0)
    keys = rng.permutation(np.arange(rows, dtype=np.int64) * 7919 + 13)  # scattered: hashed probes
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    table = TableConfig(model_name="bench", table_id=0, name="t0", sparse_file="", dim=dim,
                        maxnum_keys_per_sample=1, default_value=0.0)
    full = HashMapBackend(HashMapConfig(num_partitions=1))
    full.create_table(TAG, dim)
    full.insert_or_assign(TAG, keys, vectors)
    part, rest = HashMapBackend(HashMapConfig(num_partitions=1)), HashMapBackend(HashMapConfig(num_partitions=1))
    for backend in (part, rest):
        backend.create_table(TAG, dim)
    cut = int(0.9 * rows)
    part.insert_or_assign(TAG, keys[:cut], vectors[:cut])
    rest.insert_or_assign(TAG, keys[cut:], vectors[cut:])
    queries = [rng.choice(keys, size=unique, replace=False) for _ in range(6)]
    rows_out = []
    pool = ThreadPoolExecutor(1)
    for label, chain in (("volatile answers every key", TierChain(full, None, False, pool)),
                         ("volatile 90 %, persistent the rest", TierChain(part, rest, False, pool))):
        stats = TableStats()
        for q in queries:  # identical answers
            a, sa = chain.fetch(table, q, stats)
            b, sb = fetch_before(chain, table, q, stats)
            if not (np.array_equal(a, b) and np.array_equal(sa, sb)):
                raise SystemExit("fetch differs from fetch_before")
        buffer = np.empty((unique, dim), np.float32)
        fns = {"TierChain.fetch (ours)": lambda i: chain.fetch(table, queries[i % 6], stats),
               "TierChain.fetch(out=buffer) (ours)": lambda i: chain.fetch(table, queries[i % 6], stats, out=buffer),
               "before: boolean gathers and scatters": lambda i: fetch_before(chain, table, queries[i % 6], stats),
               "floor: HashMapBackend.find(out=buffer) of the same keys":
                   lambda i: full.find(TAG, queries[i % 6], buffer)}
        times = _alternate(fns, repeat=10 if quick else 30)
        ours = percentile(times["TierChain.fetch (ours)"], 50)
        for name, t in times.items():
            p50 = percentile(t, 50)
            rows_out.append({"case": label, "method": name, "unique keys": unique, "dim": dim, "p50 ms": p50 * 1e3,
                             "p99 ms": percentile(t, 99) * 1e3, "M keys/s": unique / p50 / 1e6,
                             "this / ours (p50)": p50 / ours})
    pool.shutdown()
    notes = (f"TierChain.fetch of {unique:,} unique random keys (a 16,384 × 26 Zipf batch's misses) at dim {dim} "
             f"float32 ({unique * dim * 4 / 1e6:.0f} MB of rows), from {rows:,}-row in-process hash maps (scattered "
             "int64 keys: hashed probes, both cores: the find splits over them); 'persistent' is a second hash map, "
             "so the rows show the array work, not RocksDB. Each method called in turn, fresh result arrays each "
             f"call. {VM_NOTE}")
    write_results("cpu-miss-path", "tier_fetch", rows_out, notes)


def _config(path: Path, dim: int, gpucacheper: float | None) -> dict:
    return {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 1},
            "models": [{"model": "m", "sparse_files": [str(path)], "embedding_vecsize_per_table": [dim],
                        "maxnum_catfeature_query_per_table_per_sample": [26], "default_value_for_each_table": [0.0],
                        "deployed_device_list": [0], "max_batch_size": 1024, "gpucache": gpucacheper is not None,
                        "gpucacheper": gpucacheper or 0.1}]}


def bench_cache_vs_tier(rows: int, quick: bool) -> None:
    dim, n = 64, 1024 * 26
    rng = np.random.default_rng(0)
    repeat = 40 if quick else 120
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t0"
        write_sparse_model(path, np.arange(rows, dtype=np.int64), rng.standard_normal((rows, dim), dtype=np.float32))
        zipf_ranks = np.minimum(rng.zipf(1.05, size=400 * n), rows) - 1
        zipf_keys = rng.permutation(rows)[zipf_ranks]  # hot keys scattered over the table
        traffic = {"uniform": [rng.integers(0, rows, size=n) for _ in range(64)],
                   "zipf 1.05": [zipf_keys[i * n:(i + 1) * n] for i in range(64)]}
        with hps.HPS(_config(path, dim, None), show_progress=False) as plain:
            for per in ((0.01, 0.1, 0.5) if quick else (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)):
                with hps.HPS(_config(path, dim, per), show_progress=False) as ours, \
                        hps.HPS(_config(path, dim, per), show_progress=False) as before:
                    before._models["m"].replica(0, 0).route = None  # always probe the cache (as before)
                    for kind, batches in traffic.items():
                        ours._models["m"].replica(0, 0).route = route = CacheRoute()  # measured afresh per traffic
                        fns = {"no cache": lambda i: plain.lookup(batches[i % 64], "m", 0),
                               "cache, routed (ours)": lambda i: ours.lookup(batches[i % 64], "m", 0),
                               "cache, always probed (before)": lambda i: before.lookup(batches[i % 64], "m", 0)}
                        hits0 = before.stats()["models"]["m"]["sparse_embedding0"]["hits"]["cache"]
                        keys0 = before.stats()["models"]["m"]["sparse_embedding0"]["keys"]
                        times = _alternate(fns, repeat=repeat, warmup=48)
                        s = before.stats()["models"]["m"]["sparse_embedding0"]
                        base = percentile(times["no cache"], 50)
                        row = {"gpucacheper": per, "keys": kind, "no cache p50 ms": base * 1e3}
                        for name in ("cache, routed (ours)", "cache, always probed (before)"):
                            p50 = percentile(times[name], 50)
                            row[f"{name} p50 ms"] = p50 * 1e3
                            row[f"{name} / no cache"] = p50 / base
                        row["ours mean / no cache mean"] = float(np.mean(times["cache, routed (ours)"])
                                                                 / np.mean(times["no cache"]))
                        row["cache hit rate (before)"] = (s["hits"]["cache"] - hits0) / max(1, s["keys"] - keys0)
                        row["route taken"] = route.snapshot()["route"]
                        rows_out.append(row)
                        print(row, flush=True)
    notes = (f"HPS.lookup of 1,024 × 26 = {n:,} int64 keys per call, one table of {rows:,} × {dim} float32 rows "
             "in an "
             "in-process hash map (keys 0..rows-1: direct index); a CPU cache (set-associative LRU, or the whole-table "
             "hash at gpucacheper 1.0) at each gpucacheper, hit_rate_threshold 0.9 (default); 'always probed' is the "
             "same cache with the route of hps.lookup.cache_route disabled (the behaviour before it). Three HPS "
             f"instances called in turn, {repeat} timed calls each after 48 warm-up calls; uniform keys, or "
             f"Zipf(1.05) ranks mapped onto scattered keys. Target: routed ≤ 1.2× no cache. {VM_NOTE}")
    write_results("cpu-miss-path", "cache_vs_tier", rows_out, notes)


def _host_config(path: Path, dim: int, keys_per_call: int, gpucacheper: float | None) -> dict:
    """One table, hash_map volatile tier, `keys_per_call` keys per lookup; a CPU cache at `gpucacheper` (None: none)."""
    return {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 1},
            "models": [{"model": "m", "sparse_files": [str(path)], "embedding_vecsize_per_table": [dim],
                        "maxnum_catfeature_query_per_table_per_sample": [1], "default_value_for_each_table": [0.0],
                        "deployed_device_list": [0], "max_batch_size": keys_per_call,
                        "gpucache": gpucacheper is not None, "gpucacheper": gpucacheper or 0.1}]}


class _OthersLoad:
    """Cores other processes kept busy while the `with` block ran (from /proc/stat minus this process's CPU
    time; None off Linux): on a shared 2-core VM a neighbour's job takes the second core away."""

    def __enter__(self) -> "_OthersLoad":
        self.cores: float | None = None
        self._start = (_busy_seconds(), sum(os.times()[:2]), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, ours, wall = _busy_seconds(), sum(os.times()[:2]), time.perf_counter()
        if busy is not None and self._start[0] is not None:
            self.cores = max(0.0, ((busy - self._start[0]) - (ours - self._start[1])) / (wall - self._start[2]))


def wait_for_quiet(max_wait_s: float, cores: float = 0.3, window_s: float = 2.0) -> float | None:
    """Wait up to `max_wait_s` for a `window_s` window in which other processes kept fewer than `cores` cores
    busy (the VM is shared: a neighbour's job on the second core hides any 2-core speed-up); returns the
    cores they used in the last window (None off Linux, or when `max_wait_s` is 0)."""
    if max_wait_s <= 0:
        return None
    deadline = time.perf_counter() + max_wait_s
    while True:
        with _OthersLoad() as others:
            time.sleep(window_s)
        if others.cores is None or others.cores < cores or time.perf_counter() >= deadline:
            return others.cores
        print(f"waiting for a quiet VM: other processes use {others.cores:.1f} cores", flush=True)


def _busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (/proc/stat: user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def _capped(workers: int | None, fn):
    """`fn` run with the hash-map find capped at `workers` cores (None: every core)."""
    def call(i: int):
        hash_map.FIND_WORKERS = workers
        try:
            return fn(i)
        finally:
            hash_map.FIND_WORKERS = None
    return call


def _callers(fn, threads: int, calls: int) -> float:
    """Wall seconds for `threads` threads each making `calls` calls of `fn(i)` at once."""

    def worker(t: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        for i in range(calls):
            fn(t * calls + i)

    return threads_at_once(worker, threads)


#: all_cores: the cache route explores the other route every 8th lookup after 4 through the cache (the defaults,
#: 32 after 16, would leave the tiers' route unmeasured through most of a short timed run of 1 M-key lookups).
ROUTE_EXPLORE_EVERY, ROUTE_WARMUP = 8, 4
#: A round of calls counts as quiet when other processes kept fewer cores than this busy meanwhile.
QUIET_CORES = 0.3


def bench_all_cores(rows: int, quick: bool, quiet_wait_s: float = 0.0) -> None:
    """One lookup of 1 M keys on one core against every core, alone and from T concurrent callers."""
    n = 250_000 if quick else 1_000_000
    repeat = 3 if quick else 9
    cores = hash_map.find_workers()
    rng = np.random.default_rng(0)
    rows_out, caller_rows, split_rows = [], [], []
    load_before = os.getloadavg()
    for dim in (16, 128):
        keys = rng.permutation(np.arange(rows, dtype=np.int64) * 7919 + 13)  # scattered: hashed probes
        vectors = rng.standard_normal((rows, dim), dtype=np.float32)
        zipf_ranks = np.minimum(rng.zipf(1.05, size=4 * n), rows) - 1
        traffic = {"uniform": [keys[rng.integers(0, rows, n)] for _ in range(4)],
                   "zipf 1.05": [keys[zipf_ranks[i * n:(i + 1) * n]] for i in range(4)]}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "t0"
            write_sparse_model(path, keys, vectors)
            del vectors
            plain = hps.HPS(_host_config(path, dim, n, None), show_progress=False)
            lru = hps.HPS(_host_config(path, dim, n, 0.2), show_progress=False)
            whole = hps.HPS(_host_config(path, dim, n, 1.0), show_progress=False)
            backend = plain._models["m"].replica(0, 0).tiers.volatile
            tag = plain._models["m"].replica(0, 0).table.tag
            buffer = np.empty((n, dim), np.float32)
            for kind, batches in traffic.items():
                q = lambda i: batches[i % 4]  # noqa: E731
                for h in (lru, whole):  # measured afresh per traffic; both routes measured within the warm-up
                    h._models["m"].replica(0, 0).route = CacheRoute(explore_every=ROUTE_EXPLORE_EVERY,
                                                                    warmup_lookups=ROUTE_WARMUP)
                for i in range(ROUTE_WARMUP + 2 * ROUTE_EXPLORE_EVERY):  # the caches filled, both routes measured
                    lru.lookup(q(i), "m", 0)
                    whole.lookup(q(i), "m", 0)
                cases = {"HashMapBackend.find": lambda i: backend.find(tag, q(i)),
                         "HashMapBackend.find(out=buffer)": lambda i: backend.find(tag, q(i), buffer),
                         "HPS.lookup, no cache": lambda i: plain.lookup(q(i), "m", 0),
                         "HPS.lookup, CPU cache gpucacheper 0.2": lambda i: lru.lookup(q(i), "m", 0),
                         "HPS.lookup, CPU cache gpucacheper 1.0 (whole table)": lambda i: whole.lookup(q(i), "m", 0)}
                if kind == "zipf 1.05":
                    cases = {k: v for k, v in cases.items() if "cache gpucacheper" in k}
                fns = {}
                for name, fn in cases.items():
                    fns[(name, 1)] = _capped(1, fn)
                    fns[(name, cores)] = _capped(None, fn)
                wait_for_quiet(quiet_wait_s)
                round_load: list = []
                with _OthersLoad() as others:
                    times = _alternate(fns, repeat=repeat, warmup=1, others=round_load,
                                       quiet_rounds=0 if quick else repeat, max_repeat=4 * repeat)
                quiet = [r for r, c in enumerate(round_load) if c is not None and c < QUIET_CORES]
                for name in cases:
                    one, every = (percentile(times[(name, w)], 50) for w in (1, cores))
                    row = {"dim": dim, "keys": kind, "method": name, "1 core p50 ms": one * 1e3,
                           f"{cores} cores p50 ms": every * 1e3, "1 core M keys/s": n / one / 1e6,
                           f"{cores} cores M keys/s": n / every / 1e6, "speed-up": one / every,
                           "other processes' cores": others.cores, "quiet rounds": f"{len(quiet)}/{len(round_load)}",
                           "speed-up, quiet rounds": None}
                    if quiet:
                        row["speed-up, quiet rounds"] = (percentile([times[(name, 1)][r] for r in quiet], 50)
                                                         / percentile([times[(name, cores)][r] for r in quiet], 50))
                    rows_out.append(row)
                    print(rows_out[-1], flush=True)
                if kind != "uniform":
                    continue
                for name in ("HashMapBackend.find", "HPS.lookup, no cache"):
                    fn = cases[name]
                    for threads in (1, 2, 4):
                        calls = max(2, repeat // threads) if not quick else 2
                        row = {"dim": dim, "method": name, "callers": threads}
                        callers = {label: (lambda k, w=workers: _callers(_capped(w, fn), threads, calls))
                                   for label, workers in (("1 core per find", 1), ("split", None))}
                        wait_for_quiet(quiet_wait_s)
                        round_load = []
                        with _OthersLoad() as others:
                            walls = _alternate(callers, repeat=3, warmup=0, others=round_load,
                                               quiet_rounds=0 if quick else 3, max_repeat=8)
                        quiet = [r for r, c in enumerate(round_load) if c is not None and c < QUIET_CORES]
                        keys_done = threads * calls * n
                        for label, w in walls.items():
                            row[f"{label}: M keys/s"] = keys_done / float(np.median(w)) / 1e6
                        row["split / 1 core per find"] = row["split: M keys/s"] / row["1 core per find: M keys/s"]
                        row["other processes' cores"] = others.cores
                        row["quiet rounds"] = f"{len(quiet)}/{len(round_load)}"
                        row["split / 1 core, quiet rounds"] = None
                        if quiet:
                            one_quiet = float(np.median([walls["1 core per find"][r] for r in quiet]))
                            row["split / 1 core, quiet rounds"] = one_quiet / float(
                                np.median([walls["split"][r] for r in quiet]))
                        caller_rows.append(row)
                        print(row, flush=True)
            # the threshold: small finds must not be slower split than on one core
            saved = hash_map.PARALLEL_FIND_KEYS
            try:
                for size in (8_192, 16_384, 32_768, 65_536, 131_072, 262_144):
                    qk = [keys[rng.integers(0, rows, size)] for _ in range(4)]
                    out = np.empty((size, dim), np.float32)

                    def split_at(threshold: int):
                        def call(i: int):
                            hash_map.PARALLEL_FIND_KEYS = threshold
                            try:
                                return backend.find(tag, qk[i % 4], out)
                            finally:
                                hash_map.PARALLEL_FIND_KEYS = saved
                        return call
                    fns = {"one core": split_at(1 << 62), "always split": split_at(2), "ours": split_at(saved)}
                    wait_for_quiet(quiet_wait_s / 4)
                    with _OthersLoad() as others:
                        times = _alternate(fns, repeat=15 if quick else 60, warmup=3)
                    one = percentile(times["one core"], 50)
                    row = {"dim": dim, "keys": size, "one core p50 µs": one * 1e6}
                    for name in ("always split", "ours"):
                        row[f"{name} p50 µs"] = percentile(times[name], 50) * 1e6
                        row[f"{name} / one core"] = percentile(times[name], 50) / one
                    row["other processes' cores"] = others.cores
                    split_rows.append(row)
                    print(row, flush=True)
            finally:
                hash_map.PARALLEL_FIND_KEYS = saved
            for h in (plain, lru, whole):
                h.close()
    load_after = os.getloadavg()
    load = f"1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (other engineers' work)"
    notes = (f"{n:,} int64 keys per call (uniform over the table, or Zipf(1.05) ranks), one table of {rows:,} rows "
             f"of dim 16 or 128 float32 with scattered keys (hashed probes) in the in-process hash map. Each call "
             f"with the find capped at 1 core (`hash_map.FIND_WORKERS = 1`, as `HPS_FIND_WORKERS=1`) and on every "
             f"core ({cores}), called in turn, {repeat} timed calls each or more (up to {4 * repeat}, until {repeat} "
             "rounds were quiet): p50 over all, "
             "and over the quiet rounds only (rounds of every method once in which other processes kept "
             f"under {QUIET_CORES} cores busy). CPU caches: gpucacheper 0.2 "
             "(set-associative LRU; the cache route picks it or the tiers, exploring the other route every "
             f"{ROUTE_EXPLORE_EVERY}th lookup, so 1 in {ROUTE_EXPLORE_EVERY} timed calls took the other route) and 1.0 "
             f"(the whole table in a second hash map), {ROUTE_WARMUP + 2 * ROUTE_EXPLORE_EVERY} warm-up lookups "
             "first. Fresh result arrays unless out=: their first-touch page faults are part of each call. "
             "Target: speed-up ≥ 1.6 on 2 cores; 'other processes' cores' is what the rest of the VM used "
             "meanwhile (a neighbour's job on the second core caps the speed-up). "
             f"{load}. {VM_NOTE}")
    write_results("cpu-miss-path", "all_cores", rows_out, notes)
    write_results("cpu-miss-path", "concurrent_callers", caller_rows,
                  f"T threads each making lookups of {n:,} uniform keys at once: total M keys/s, each find on one "
                  "core against split over the cores no other find holds (ours), in turn; median of 3 runs or more "
                  f"(up to 8, until 3 were quiet: other processes under {QUIET_CORES} cores). {load}. {VM_NOTE}")
    write_results("cpu-miss-path", "split_threshold", split_rows,
                  "HashMapBackend.find(out=) of 8,192 to 262,144 uniform keys: on one core, always split over every "
                  "core (from 8,192 keys), and ours (split from PARALLEL_FIND_KEYS × 16 / dim keys, at least 8,192: "
                  f"{hash_map.PARALLEL_FIND_KEYS:,} at dim 16, 8,192 at dim 128; chunks of at least half that); p50 "
                  f"of alternating calls. Target: ours never slower than one core (within noise). {load}. {VM_NOTE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=5_000_000, help="table rows of cache_vs_tier")
    parser.add_argument("--all-cores-rows", type=int, default=2_000_000, help="table rows of all_cores")
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                        help="all_cores: before each timed group, wait up to S seconds for the other processes to "
                             "leave the cores idle (the VM is shared)")
    parser.add_argument("--only", choices=["tier_fetch", "cache_vs_tier", "all_cores"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["tier_fetch", "cache_vs_tier", "all_cores"])
    if "tier_fetch" in only:
        bench_tier_fetch(args.quick)
    if "cache_vs_tier" in only:
        bench_cache_vs_tier(500_000 if args.quick else args.rows, args.quick)
    if "all_cores" in only:
        bench_all_cores(500_000 if args.quick else args.all_cores_rows, args.quick, args.quiet_wait)


if __name__ == "__main__":
    main()
