"""HugeCTR's DLRM shape through `HPS.lookup` on one GPU (issue 15), beside `F.embedding` in the same run.

    PYTHONPATH=src python3 benchmarks/bench_dlrm.py [--rows N] [--quick] [--out DIR] [--tmp DIR]

The table: one table of 32.7 M rows × 128 fp32 (16.7 GB), 26 keys per sample, `gpucacheper` 0.2,
`hit_rate_threshold` 0.9, volatile tier `hash_map` (HugeCTR's published DLRM setup,
`hps_dlrm_benchmark.md`; reference/performance-anchors.md §1b, §1c). The sparse file is written in
chunks to `--tmp` (row of key k: `(k % 65521) * 1e-4 + j * 1e-2` in float32, cheap to recompute on the
GPU for checks); the same table is built in HBM for `F.embedding`.

Sections of `results/dlrm-gpu.{json,md}` (host-synced wall time per call, p50 / p99):
- repeated: the same batch of CUDA keys again and again (all hits; keys drawn from the cached ones),
  beside `F.embedding` over the whole table in HBM, and HugeCTR's published A100 figures (MLP included).
- numpy_keys: the same batches as numpy keys (H2D, GPU cache, D2H): into a new array, into the caller's
  buffer (`out=`), and what numpy itself takes to allocate and fill an array of the output's size.
- zipf: a fresh Zipf(1.05) batch of CUDA keys every call (misses fetched from the hash map), hit rate.
- concurrent: 1 / 2 / 4 / 8 threads calling one replica with 1,024 × 26 CUDA keys (all hits).
- setup: time to write the file and to load it.
Each section is written as soon as it is measured; an error in one is recorded and the next runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, percentile, threads_at_once, write_results  # noqa: E402

import hps  # noqa: E402

REPORT = "dlrm-gpu"
ROWS, DIM, KEYS_PER_SAMPLE = 32_700_000, 128, 26
BATCHES = (32, 1024, 4096, 16384, 65536, 131072)
ZIPF_BATCHES = (1024, 16384, 131072)
ZIPF_ALPHA = 1.05
SECTIONS = ("repeated", "overhead", "numpy_keys", "zipf", "concurrent", "kernel_rate")
#: HugeCTR's published figures (A100, MLP included, server-side µs): batch → (TF+HPS, FP32 TRT+HPS,
#: FP16 TRT+HPS) from hps_dlrm_benchmark.md (§1c) and the ensemble (HPS backend → TF) of
#: hps_tf_benchmark.md (§1b).
HUGECTR_1C = {32: (612, 380, 389), 1024: (849, 604, 534), 4096: (1459, 1446, 1114), 16384: (4131, 4355, 3053),
              65536: (15036, 13012, 10022), 131072: (29374, 25440, 19340)}
HUGECTR_ENSEMBLE = {32: 854, 1024: 4420, 4096: 23383, 16384: 82310, 65536: 617968, 131072: 1190025}
MOD, SCALE, COL = 65521, np.float32(1e-4), np.float32(1e-2)


def host_rows(keys: np.ndarray) -> np.ndarray:
    """The table's rows of `keys: (n,) int64` → `(n, DIM) float32` (numpy)."""
    base = (keys % MOD).astype(np.float32) * SCALE
    return base[:, None] + np.arange(DIM, dtype=np.float32)[None, :] * COL


def device_rows(keys: torch.Tensor) -> torch.Tensor:
    """`host_rows` on the GPU, the same float32 arithmetic."""
    base = (keys % MOD).to(torch.float32) * float(SCALE)
    return base[:, None] + torch.arange(DIM, dtype=torch.float32, device=keys.device)[None, :] * float(COL)


def write_table(path: Path, rows: int, chunk: int = 1 << 20) -> None:
    """The sparse model directory `path` (`key`, `emb_vector`) of keys 0..rows-1, written in chunks."""
    from concurrent.futures import ThreadPoolExecutor

    path.mkdir(parents=True)

    def make(start: int) -> tuple[np.ndarray, np.ndarray]:  # numpy releases the GIL: chunks made in parallel
        keys = np.arange(start, min(rows, start + chunk), dtype=np.int64)
        return keys, host_rows(keys)

    with open(path / "key", "wb") as kf, open(path / "emb_vector", "wb") as vf, ThreadPoolExecutor(8) as pool:
        for keys, vectors in pool.map(make, range(0, rows, chunk)):  # in order, made ahead
            keys.tofile(kf)
            vectors.tofile(vf)


def zipf_keys(n: int, rows: int, gen: torch.Generator) -> torch.Tensor:
    """`n` keys Zipf(ZIPF_ALPHA)-distributed over `rows` ranks (bounded, inverse CDF of the continuous
    power law), ranks scattered over [0, rows) by a fixed odd multiplier: int64 on the GPU."""
    u = torch.rand(n, device="cuda", dtype=torch.float64, generator=gen)
    a = 1.0 - ZIPF_ALPHA
    rank = torch.floor((1.0 + u * (rows ** a - 1.0)) ** (1.0 / a)).to(torch.int64) - 1
    return (rank.clamp_(0, rows - 1) * 2654435761) % rows


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 3, max_s: float = 20.0) -> list[float]:
    """Host-synced wall seconds per call of `fn` (at least 3 calls, at most `repeat` or `max_s` seconds)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out: list[float] = []
    t_end = time.perf_counter() + max_s
    while len(out) < repeat and (len(out) < 3 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def us(times: list[float], q: float = 50) -> float:
    return percentile(times, q) * 1e6


def section(name: str, body: Callable[[], tuple[list[dict], str]], notes_prefix: str) -> None:
    """Run `body` → (rows, notes) and write it; on an error write what was measured and the error."""
    try:
        rows, notes = body()
    except Exception:  # noqa: BLE001 - one broken section must not lose the others
        traceback.print_exc()
        rows, notes = [{"error": traceback.format_exc(limit=3)[-400:]}], "FAILED"
    write_results(REPORT, name, rows, f"{notes_prefix} {notes}")
    sys.stdout.flush()


def main() -> None:
    global REPORT
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=ROWS, help="table rows (default 32.7 M: 16.7 GB at dim 128)")
    parser.add_argument("--quick", action="store_true", help="batches up to 16,384 samples, fewer repeats")
    parser.add_argument("--tmp", default=None, help="where to write the sparse file (default: a temp dir)")
    parser.add_argument("--out", help="also copy the result files here")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (setup is always written)")
    parser.add_argument("--report", default=REPORT, help="results/<report>.{json,md} to write (default dlrm-gpu)")
    args = parser.parse_args()
    REPORT = args.report
    wanted = set(args.sections.split(","))
    unknown = wanted - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    batches = tuple(b for b in BATCHES if not args.quick or b <= 16384)
    zipf_batches = tuple(b for b in ZIPF_BATCHES if not args.quick or b <= 16384)
    reps = 50 if args.quick else 100
    rows = args.rows
    card = torch.cuda.get_device_name(0)
    prefix = (f"Card: {card}. Table {rows:,} rows × {DIM} fp32 ({rows * DIM * 4 / 1e9:.1f} GB), "
              f"{KEYS_PER_SAMPLE} keys per sample, gpucacheper 0.2, hit_rate_threshold 0.9, hash_map volatile tier"
              f"{'' if rows == ROWS else f' (scaled down from {ROWS:,} rows)'}.")
    tmp = Path(tempfile.mkdtemp(prefix="hps-dlrm-", dir=args.tmp))
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    setup: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        write_table(tmp / "t0", rows)
        setup["write sparse file s"] = time.perf_counter() - t0
        config = {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 16},
                  "models": [{"model": "dlrm", "sparse_files": [str(tmp / "t0")],
                              "embedding_vecsize_per_table": [DIM],
                              "maxnum_catfeature_query_per_table_per_sample": [KEYS_PER_SAMPLE],
                              "default_value_for_each_table": [0.0], "deployed_device_list": [0],
                              "max_batch_size": max(BATCHES), "gpucacheper": 0.2, "hit_rate_threshold": 0.9}]}
        t0 = time.perf_counter()
        ps = hps.HPS(config, show_progress=False)
        setup["HPS load s"] = time.perf_counter() - t0
        setup["HPS load GB/s"] = rows * DIM * 4 / 1e9 / setup["HPS load s"]
        t0 = time.perf_counter()
        weight = device_rows(torch.arange(rows, device="cuda"))
        torch.cuda.synchronize()
        setup["F.embedding table built in HBM s"] = time.perf_counter() - t0
        write_results(REPORT, "setup", [{"step": k, "value": v} for k, v in setup.items()], prefix)
        with ps:
            replica = ps._models["dlrm"].replicas[(0, 0)]
            cache = replica.cache
            stats = lambda: ps.stats()["models"]["dlrm"]["sparse_embedding0"]["hits"]  # noqa: E731
            # A warm cache: uniform random keys, about half its capacity, inserted with their rows.
            warm = torch.unique(torch.randint(0, rows, (cache.capacity_rows // 2,), device="cuda", generator=gen))
            for part in warm.split(1 << 20):
                cache.insert_or_assign(part, device_rows(part))
            pool = cache.dump()
            rep_keys = {b: pool[torch.randint(0, len(pool), (b * KEYS_PER_SAMPLE,), device="cuda", generator=gen)]
                        for b in batches}
            if "repeated" in wanted:
                section("repeated", lambda: repeated(ps, weight, rep_keys, reps, stats), prefix)
            if "overhead" in wanted and 1024 in rep_keys:
                section("overhead", lambda: overhead(ps, weight, rep_keys[1024]), prefix)
            if "numpy_keys" in wanted:
                section("numpy_keys", lambda: numpy_keys(ps, rep_keys, reps), prefix)
            if "zipf" in wanted:
                section("zipf", lambda: zipf(ps, rows, zipf_batches, gen, stats, args.quick), prefix)
            if "concurrent" in wanted:
                section("concurrent", lambda: concurrent(ps, rep_keys[1024] if 1024 in rep_keys else pool[:26624]),
                        prefix)
        weight = None  # the 16.7 GB F.embedding table: freed before the next section's tables
        torch.cuda.empty_cache()
        if "kernel_rate" in wanted:
            section("kernel_rate", lambda: kernel_rate(tmp, gen), f"Card: {card}.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        for suffix in (".md", ".json"):
            shutil.copy(RESULTS / f"{REPORT}{suffix}", Path(args.out) / f"{REPORT}{suffix}")


def repeated(ps: Any, weight: torch.Tensor, rep_keys: dict, reps: int, stats: Callable) -> tuple[list[dict], str]:
    out_rows = []
    misses = 0
    cache = ps._models["dlrm"].replicas[(0, 0)].cache
    launcher = getattr(cache, "_launcher", None)
    launches_before = launcher.direct_launches if launcher is not None else 0
    for b, keys in rep_keys.items():
        got = ps.lookup(keys, "dlrm", 0)
        if not torch.allclose(got, device_rows(keys), rtol=1e-6, atol=1e-6):  # neighbouring keys differ by 1e-4
            raise AssertionError(f"batch {b}: HPS.lookup returned wrong rows")
        before = stats()
        t_hps = timed(lambda: ps.lookup(keys, "dlrm", 0), reps)
        after = stats()
        misses += sum(after[k] - before[k] for k in ("volatile", "persistent", "default"))
        t_emb = timed(lambda: torch.nn.functional.embedding(keys, weight), reps)
        t_graph = None
        if hasattr(cache, "use_graphs"):  # the CUDA-graph replay of the same call, for comparison
            cache.use_graphs = True
            try:
                if not torch.equal(ps.lookup(keys, "dlrm", 0), got):
                    raise AssertionError(f"batch {b}: graph replay returned other rows")
                t_graph = timed(lambda: ps.lookup(keys, "dlrm", 0), reps)
            finally:
                cache.use_graphs = False
        tf, trt32, trt16 = HUGECTR_1C[b]
        out_rows.append({"batch": b, "keys": b * KEYS_PER_SAMPLE, "HPS.lookup p50 µs": us(t_hps),
                         "p99 µs": us(t_hps, 99), "F.embedding p50 µs": us(t_emb),
                         "ratio": us(t_hps) / us(t_emb),
                         "graph replay p50 µs": us(t_graph) if t_graph else "–",
                         "HPS G keys/s": b * KEYS_PER_SAMPLE / percentile(t_hps, 50) / 1e9,
                         "HugeCTR TF+HPS µs (A100, +MLP)": tf, "TRT fp32+HPS": trt32, "TRT fp16+HPS": trt16,
                         "ensemble": HUGECTR_ENSEMBLE[b]})
    direct = (f"{launcher.direct_launches - launches_before:,} finds launched through the compiled launcher"
              f"{'' if launcher.enabled else ' (then turned off)'}" if launcher is not None else "no compiled launcher")
    return out_rows, (f"Same batch of CUDA keys repeated, keys drawn from the cached ones; misses during the "
                      f"timed calls: {misses}; {direct}. 'graph replay': the same calls with the cache's "
                      "`use_graphs` on (one CUDA graph per batch size: keys copied in, vectors copied out). "
                      "HugeCTR columns: published, A100, server-side, DLRM MLP included "
                      "(the best case: same batch repeated). Target: ≤ 1.5× F.embedding at every batch ≥ 1,024; "
                      "26,624 keys p50 ≤ 100 µs.")


def overhead(ps: Any, weight: torch.Tensor, keys: torch.Tensor) -> tuple[list[dict], str]:
    """Where the time of one all-hit lookup of 1,024 × 26 CUDA keys goes: each layer of the call timed
    alone (host wall time p50 over 300 calls, host-synced unless said otherwise)."""
    replica = ps._models["dlrm"].replicas[(0, 0)]
    cache = replica.cache
    sync = torch.cuda.synchronize
    out = torch.empty((keys.numel(), DIM), device="cuda")

    def host_only(fn: Callable[[], Any]) -> list[float]:  # the call's own host time; the GPU drained after
        times = []
        for _ in range(300):
            sync()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        sync()
        return times

    steps = [
        ("HPS.lookup (synced)", timed(lambda: ps.lookup(keys, "dlrm", 0), 300)),
        ("TableLookup.lookup (synced)", timed(lambda: replica.lookup(keys), 300)),
        ("cache.find_counted (synced)", timed(lambda: cache.find_counted(keys), 300)),
        ("cache.find_counted into out= (synced)", timed(lambda: cache.find_counted(keys, out), 300)),
        ("cache.find, host time only (launch, no sync)", host_only(lambda: cache.find(keys, out=out))),
        ("F.embedding (synced)", timed(lambda: torch.nn.functional.embedding(keys, weight), 300)),
        ("F.embedding, host time only", host_only(lambda: torch.nn.functional.embedding(keys, weight))),
        ("torch.empty of the output, host time", host_only(lambda: torch.empty((keys.numel(), DIM), device="cuda"))),
        ("torch.cuda.synchronize() alone", timed(lambda: None, 300)),
    ]
    return ([{"step": name, "p50 µs": us(t), "p99 µs": us(t, 99)} for name, t in steps],
            "One all-hit lookup of 1,024 × 26 CUDA keys, layer by layer (each timed alone, 300 calls): "
            "'synced' rows include a torch.cuda.synchronize() after each call, as the repeated section does.")


def numpy_keys(ps: Any, rep_keys: dict, reps: int) -> tuple[list[dict], str]:
    out_rows = []
    has_out = "out" in ps.lookup.__code__.co_varnames
    for b, keys in rep_keys.items():
        n = b * KEYS_PER_SAMPLE
        host = keys.cpu().numpy()
        expect = host_rows(host)
        np.testing.assert_allclose(ps.lookup(host, "dlrm", 0), expect, rtol=1e-6, atol=1e-6)
        r = max(5, min(reps, int(4e9 / (n * DIM * 4))))
        t_new = timed(lambda: ps.lookup(host, "dlrm", 0), r)
        row = {"batch": b, "keys": n, "MB out": n * DIM * 4 / 1e6, "new array p50 µs": us(t_new)}
        if has_out:
            buf = np.full((n, DIM), np.nan, np.float32)
            ps.lookup(host, "dlrm", 0, out=buf)
            np.testing.assert_allclose(buf, expect, rtol=1e-6, atol=1e-6)
            t_out = timed(lambda: ps.lookup(host, "dlrm", 0, out=buf), r)
            row["out= p50 µs"] = us(t_out)
        t_np = timed(lambda: np.full((n, DIM), 1.0, np.float32), r)
        row["numpy alloc+fill p50 µs"] = us(t_np)
        dev = torch.ones((n, DIM), device="cuda")
        pinned = torch.empty((n, DIM), pin_memory=True)
        row["pinned D2H floor µs"] = us(timed(lambda: pinned.copy_(dev, non_blocking=True), r))
        del dev, pinned
        row["new / numpy"] = us(t_new) / us(t_np)
        out_rows.append(row)
    return out_rows, ("numpy int64 keys through the GPU cache (all hits): keys to the GPU, find, vectors back. "
                      "'numpy alloc+fill': np.full of the output's shape (first-touch page faults included), "
                      "the floor of a new array; 'pinned D2H floor': one copy of the vectors' bytes from the GPU into pinned "
                      "memory (PCIe). Target: 4,096 × 26 into out= ≤ 4 ms; new array ≤ 1.5× numpy.")


def zipf(ps: Any, rows: int, batches: tuple, gen: torch.Generator, stats: Callable,
         quick: bool) -> tuple[list[dict], str]:
    out_rows = []
    for b in batches:
        n = b * KEYS_PER_SAMPLE
        warm = 2 if n > 1_000_000 else 5
        reps = (5 if quick else 8) if n > 1_000_000 else (10 if quick else 16)
        for _ in range(warm):
            ps.lookup(zipf_keys(n, rows, gen), "dlrm", 0)
        batches_k = [zipf_keys(n, rows, gen) for _ in range(reps)]
        check = ps.lookup(batches_k[0], "dlrm", 0)  # exact rows, or the default (0) for misses above threshold
        exact = ((check - device_rows(batches_k[0])).abs() <= 1e-6).all(1)
        if not bool((exact | (check == 0).all(1)).all()):
            raise AssertionError(f"zipf batch {b}: HPS.lookup returned wrong rows")
        batches_k = batches_k[1:]
        before = stats()
        times = []
        tier_s = [0.0]
        fetch = ps._tiers.fetch

        def timed_fetch(*a: Any, **kw: Any) -> Any:  # where the time goes: the host tiers' share
            t0 = time.perf_counter()
            try:
                return fetch(*a, **kw)
            finally:
                tier_s[0] += time.perf_counter() - t0

        find_s = [0.0]
        volatile = ps._tiers.volatile
        find_counted = volatile.find_counted

        def timed_find(*a: Any, **kw: Any) -> Any:  # the hash map's own share of the tiers' time
            t0 = time.perf_counter()
            try:
                return find_counted(*a, **kw)
            finally:
                find_s[0] += time.perf_counter() - t0

        ps._tiers.fetch = timed_fetch
        volatile.find_counted = timed_find
        for keys in batches_k:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            ps.lookup(keys, "dlrm", 0)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        ps._tiers.fetch = fetch
        del volatile.find_counted
        after = stats()
        delta = {k: after[k] - before[k] for k in after}
        total = sum(delta.values())
        uniq = torch.unique(batches_k[0]).numel()
        out_rows.append({"batch": b, "keys": n, "unique keys (one batch)": uniq, "p50 µs": us(times),
                         "p99 µs": us(times, 99), "cache hit rate": delta.get("cache", 0) / max(total, 1),
                         "default rate": delta.get("default", 0) / max(total, 1),
                         "tiers.fetch mean µs": tier_s[0] / len(times) * 1e6,
                         "hash map find mean µs": find_s[0] / len(times) * 1e6, "calls": len(times)})
    return out_rows, (f"A fresh Zipf({ZIPF_ALPHA}) batch of CUDA keys every call (ranks scattered over the table); "
                      "below hit_rate_threshold the misses are deduplicated, fetched from the hash map and inserted "
                      "(exact values); at or above it they get the default value and are inserted in the "
                      "background. 'tiers.fetch': time in the host tiers (hash map find and TierChain's array work) per call; "
                      "'hash map find': the volatile tier's find_counted inside it (gathering the rows into pinned "
                      "memory, split over cores). "
                      "Target: 16,384 × 26 p50 ≤ 10 ms; 131,072 × 26 ≤ 60 ms.")


def concurrent(ps: Any, keys: torch.Tensor) -> tuple[list[dict], str]:
    out_rows = []
    per_thread = 150
    cache = ps._models["dlrm"].replicas[(0, 0)].cache
    modes = (True, False) if hasattr(cache, "serialize_launches") else (None,)
    for serialize in modes:
        if serialize is not None:
            cache.serialize_launches = serialize
        for threads in (1, 2, 4, 8):
            out_rows.append(_callers(ps, keys, threads, per_thread, serialize))
    if modes[0] is not None:
        cache.serialize_launches = True
    return out_rows, ("Threads each on their own CUDA stream calling HPS.lookup on one replica with the same "
                      "CUDA keys (all hits), host-synced per call. 'launch lock': the cache's `serialize_launches` "
                      "(callers take turns for the launch, and wait for their own hit count outside the lock); "
                      "off: every caller contends for the GIL at every torch call.")


def _callers(ps: Any, keys: torch.Tensor, threads: int, per_thread: int, serialize: Any) -> dict:
    lat: list[float] = []
    lock = threading.Lock()

    def worker(_: int, barrier: threading.Barrier) -> None:
        stream = torch.cuda.Stream()
        mine = []
        with torch.cuda.stream(stream):
            for _ in range(10):
                ps.lookup(keys, "dlrm", 0)
            stream.synchronize()
            barrier.wait()
            for _ in range(per_thread):
                t0 = time.perf_counter()
                ps.lookup(keys, "dlrm", 0)
                stream.synchronize()
                mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    wall = threads_at_once(worker, threads)
    calls = threads * per_thread
    return {"launch lock": {True: "on", False: "off", None: "–"}[serialize], "threads": threads,
            "keys per call": keys.numel(), "calls/s": calls / wall, "M keys/s": calls * keys.numel() / wall / 1e6,
            "p50 µs": us(lat), "p99 µs": us(lat, 99)}


def kernel_rate(tmp: Path, gen: torch.Generator) -> tuple[list[dict], str]:
    """1 M keys (all hits) through `HPS.lookup`, end to end (host-synced wall time per call), beside the find
    kernel alone on the same cache (CUDA events around back-to-back `cache.find(keys, out=)` calls), dims
    16 / 32 / 128: tables of 2^21 rows, gpucacheper 0.5, keys drawn from the cached ones."""
    n, rows, dims = 1 << 20, 1 << 21, (16, 32, 128)
    paths = []
    for dim in dims:
        path = tmp / f"rate{dim}"
        path.mkdir()
        keys = np.arange(rows, dtype=np.int64)
        keys.tofile(path / "key")
        np.zeros((rows, dim), dtype=np.float32).tofile(path / "emb_vector")  # the cache gets its own rows below
        paths.append(str(path))
    config = {"supportlonglong": True, "volatile_db": {"type": "hash_map"},
              "models": [{"model": "rate", "sparse_files": paths, "embedding_vecsize_per_table": list(dims),
                          "maxnum_catfeature_query_per_table_per_sample": [1] * len(dims),
                          "default_value_for_each_table": [0.0] * len(dims), "deployed_device_list": [0],
                          "max_batch_size": n, "gpucacheper": 0.5, "hit_rate_threshold": 0.9}]}
    out_rows = []
    with hps.HPS(config, show_progress=False) as ps:
        for t, dim in enumerate(dims):
            cache = ps._models["rate"].replicas[(t, 0)].cache
            warm = torch.randperm(rows, device="cuda", generator=gen)[: cache.capacity_rows]
            for part in warm.split(1 << 20):
                vec = (part[:, None] * dim + torch.arange(dim, device="cuda")[None, :]).to(torch.float32) % 1000.0
                cache.insert_or_assign(part, vec)
            pool = cache.dump()
            keys = pool[torch.randint(0, len(pool), (n,), device="cuda", generator=gen)]
            got = ps.lookup(keys, "rate", t)
            expect = (keys[:, None] * dim + torch.arange(dim, device="cuda")[None, :]).to(torch.float32) % 1000.0
            if not torch.equal(got, expect):
                raise AssertionError(f"dim {dim}: HPS.lookup returned wrong rows")
            t_hps = timed(lambda: ps.lookup(keys, "rate", t), 50)
            out = torch.empty((n, dim), device="cuda")
            kernel_s = []
            for _ in range(5):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                cache.find(keys, out=out)
                start.record()
                for _ in range(20):
                    cache.find(keys, out=out)
                end.record()
                end.synchronize()
                kernel_s.append(start.elapsed_time(end) / 1e3 / 20)
            k = percentile(kernel_s, 50)
            h = percentile(t_hps, 50)
            f = percentile(timed(lambda: cache.find(keys, out=out), 50), 50)
            out_rows.append({"dim": dim, "keys": n, "find kernel µs": k * 1e6, "find kernel G keys/s": n / k / 1e9,
                             "cache.find host-synced µs": f * 1e6,
                             "HPS.lookup p50 µs": h * 1e6, "HPS.lookup G keys/s": n / h / 1e9,
                             "HPS / kernel rate": k / h})
    return out_rows, ("1 M keys, all hits, through HPS.lookup (host-synced wall time per call, p50) and the "
                      "dynamic cache's find kernel alone on the same cache (CUDA events around 20 back-to-back "
                      "launches, median of 5; 'cache.find host-synced': one launch from Python and a sync, "
                      "p50): tables of 2,097,152 rows, gpucacheper 0.5, keys drawn from the "
                      "cached ones. Target: HPS.lookup ≥ 0.85× the kernel's rate.")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
