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

Run: `python benchmarks/bench_cpu_miss_path.py [--quick] [--only tier_fetch|cache_vs_tier]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import VM_NOTE, percentile, write_results  # noqa: E402

import hps  # noqa: E402
from hps.config.schema import HashMapConfig, TableConfig  # noqa: E402
from hps.errors import BackendError, PartialBackendError  # noqa: E402
from hps.lookup.cache_route import CacheRoute  # noqa: E402
from hps.lookup.stats import DEFAULT, PERSISTENT, VOLATILE, TableStats  # noqa: E402
from hps.lookup.tiers import TierChain  # noqa: E402
from hps.model_format import write_sparse_model  # noqa: E402
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


def _alternate(fns: dict, repeat: int, warmup: int = 2) -> dict[str, list[float]]:
    """Wall seconds of each `fns[name](i)`, called in turn `repeat` times (a busy neighbour slows all alike)."""
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(i)
            times[name].append(time.perf_counter() - t0)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=5_000_000, help="table rows of cache_vs_tier")
    parser.add_argument("--only", choices=["tier_fetch", "cache_vs_tier"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["tier_fetch", "cache_vs_tier"])
    if "tier_fetch" in only:
        bench_tier_fetch(args.quick)
    if "cache_vs_tier" in only:
        bench_cache_vs_tier(500_000 if args.quick else args.rows, args.quick)


if __name__ == "__main__":
    main()
