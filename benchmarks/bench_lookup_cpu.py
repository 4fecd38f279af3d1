"""`HPS.lookup` end to end on the CPU: 26 tables × 1,024 samples (26,624 keys), all hits in the CPU cache.

Baseline in the same run: the same gathers from plain numpy arrays indexed by key
(`table[keys]`, what `nn.Embedding` does with dense ids) — the floor for a Python call per table.
A second section times fuse_embedding_table: one `HPS.lookup_many` pass against 26 calls.
Run: `python benchmarks/bench_lookup_cpu.py [--quick] [--fused-only | --gpu]` (pinned to one core, except --gpu).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import VM_NOTE, percentile, time_calls, write_results  # noqa: E402

import hps  # noqa: E402
from hps.model_format import write_sparse_model  # noqa: E402

NUM_TABLES = 26
SAMPLES = 1024
DIM = 16


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=100_000, help="rows per table")
    parser.add_argument("--fused-only", action="store_true", help="only the fuse_embedding_table rows")
    parser.add_argument("--gpu", action="store_true",
                        help="only the fuse_embedding_table rows, on the GPU cache with CUDA keys (results/gpu-fused)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    rows = 20_000 if args.quick else args.rows
    repeat = 50 if args.quick else 300
    rng = np.random.default_rng(0)
    if args.gpu:  # no core pinning: the GPU path's host threads (torch) are part of what is measured
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        interpreted = os.environ.get("HPS_DEVICE") == "interpret"
        bench_fused(2_000 if interpreted else rows, 2 if interpreted else repeat, rng, gpu=True,
                    samples=16 if interpreted else SAMPLES)
        return
    if args.fused_only:
        bench_fused(rows, repeat, rng)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tables = []
        for t in range(NUM_TABLES):
            vectors = rng.standard_normal((rows, DIM)).astype(np.float32)
            write_sparse_model(Path(tmp) / f"t{t}", np.arange(rows, dtype=np.int64), vectors)
            tables.append(vectors)
        results = {}
        for gpucacheper, prefill in ((1.0, True), (1.0, False), (0.5, False)):
            results[gpucacheper, prefill] = run_variant(tmp, tables, rows, repeat, gpucacheper, prefill, rng)
    rows_out = []
    for (gpucacheper, prefill), (hps_s, np_s, all_hits) in results.items():
        kind = "whole-table hash" if gpucacheper >= 1.0 else "set-associative LRU"
        filled = "pre-filled with the whole table" if prefill else "holding the timed keys only"
        for name, times in ((f"HPS.lookup, gpucacheper {gpucacheper} ({kind}, {filled}), all hits", hps_s),
                            ("numpy table[keys] (baseline)", np_s)):
            p50, p99 = percentile(times, 50) * 1e3, percentile(times, 99) * 1e3
            rows_out.append({"method": name, "keys per batch": NUM_TABLES * SAMPLES, "p50 ms": p50, "p99 ms": p99,
                             "M keys/s": NUM_TABLES * SAMPLES / percentile(times, 50) / 1e6,
                             "all found (cache or hash map)": all_hits if "HPS" in name else ""})
    notes = (f"{NUM_TABLES} tables × {SAMPLES} samples × 1 key (one HPS.lookup per table per batch), int64 keys, "
             f"dim {DIM} float32, {rows:,} rows per table (keys 0..rows-1, as DLRM tables number their ids); the "
             "cache either pre-filled at start-up (cache_refresh_percentage_per_iteration 1.0, HugeCTR's pre-fill: "
             "contiguous keys get the hash map's direct index) or warmed with the 8 × 1,024 timed keys per table "
             "(scattered: hashed probes); one core "
             f"(sched_setaffinity); {repeat} timed batches. Target p50 ≤ 2 ms. {VM_NOTE}")
    write_results("cpu", "hps_lookup", rows_out, notes)
    bench_fused(rows, repeat, rng)


def run_variant(tmp: str, tables: list, rows: int, repeat: int, gpucacheper: float, prefill: bool,
                rng: np.random.Generator) -> tuple[list[float], list[float], bool]:
    """Time HPS.lookup over 26 tables (and the numpy baseline) with the given cache size and pre-fill."""
    config = {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 1},
              "models": [{"model": "dlrm", "sparse_files": [str(Path(tmp) / f"t{t}") for t in range(NUM_TABLES)],
                          "embedding_vecsize_per_table": [DIM] * NUM_TABLES,
                          "maxnum_catfeature_query_per_table_per_sample": [1] * NUM_TABLES,
                          "default_value_for_each_table": [0.0] * NUM_TABLES, "deployed_device_list": [0],
                          "max_batch_size": SAMPLES, "gpucacheper": gpucacheper, "hit_rate_threshold": 1.0,
                          "cache_refresh_percentage_per_iteration": 1.0 if prefill else 0.0}]}
    batches = [rng.integers(0, rows, size=(NUM_TABLES, SAMPLES)) for _ in range(8)]
    with hps.HPS(config, show_progress=False) as ps:
        for batch in batches:  # warm the cache with every key the timed calls use
            for t in range(NUM_TABLES):
                ps.lookup(batch[t], "dlrm", t)
        before = ps.stats()["models"]["dlrm"]["sparse_embedding0"]["hits"]
        hits_before = before["cache"] + before["volatile"]
        state = {"i": 0}

        def hps_batch() -> None:
            batch = batches[state["i"] % len(batches)]
            state["i"] += 1
            for t in range(NUM_TABLES):
                ps.lookup(batch[t], "dlrm", t)

        def numpy_batch() -> None:
            batch = batches[state["i"] % len(batches)]
            state["i"] += 1
            for t in range(NUM_TABLES):
                tables[t][batch[t]]

        hps_s = time_calls(hps_batch, repeat=repeat, warmup=5)
        np_s = time_calls(numpy_batch, repeat=repeat, warmup=5)
        s = ps.stats()["models"]["dlrm"]["sparse_embedding0"]
        # the cache route (hps.lookup.cache_route) sends a few lookups straight to the hash map to time it
        all_hits = s["hits"]["cache"] + s["hits"]["volatile"] - hits_before == s["keys"] - SAMPLES * len(batches)
    return hps_s, np_s, all_hits


#: bench_fused: batches per timed block of one method, of which the first WARM_IN_BLOCK are not timed.
BLOCK, WARM_IN_BLOCK = 40, 8
#: bench_fused: rounds of blocks (every method once per block, in turn); each round gives its own ratio.
ROUNDS = 5


def bench_fused(rows: int, repeat: int, rng: np.random.Generator, gpu: bool = False, samples: int = SAMPLES) -> None:
    """fuse_embedding_table: one `HPS.lookup_many` pass over the 26 tables (one fused table) against 26
    `HPS.lookup` calls on the same tables unfused, timed alternately in one run; results must be identical.

    `gpu`: the GPU cache, keys as CUDA tensors (each timed call ends with a device synchronize). Without a
    CUDA device but with HPS_DEVICE=interpret and TRITON_INTERPRET=1, the GPU cache's code runs in Triton's
    CPU interpreter: a check of the logic only, so nothing is written to the results."""
    device, sync, interpreted = None, (lambda: None), False
    if gpu:
        import torch

        if torch.cuda.is_available():
            device, sync = torch.device("cuda:0"), torch.cuda.synchronize
        elif os.environ.get("HPS_DEVICE") == "interpret" and os.environ.get("TRITON_INTERPRET") == "1":
            device, interpreted = torch.device("cpu"), True
        else:
            raise SystemExit("--gpu needs a CUDA device (or HPS_DEVICE=interpret TRITON_INTERPRET=1 for a logic check)")
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in range(NUM_TABLES):  # fused tables need disjoint keys: table t holds t*rows .. (t+1)*rows - 1
            write_sparse_model(Path(tmp) / f"t{t}", t * rows + np.arange(rows, dtype=np.int64),
                               rng.standard_normal((rows, DIM)).astype(np.float32))
        for prefill in (True, False):
            ids = list(range(NUM_TABLES))
            batches = [[t * rows + rng.integers(0, rows, samples) for t in ids] for _ in range(8)]
            stacked = [np.stack(batch) for batch in batches]  # the same keys as one (tables, samples) array
            if device is not None:
                batches = [[torch.from_numpy(keys).to(device) for keys in batch] for batch in batches]
            configs = [fused_config(tmp, prefill, fuse, samples) for fuse in (False, True)]
            with hps.HPS(configs[0], show_progress=False) as plain, hps.HPS(configs[1], show_progress=False) as fused:
                for batch in batches:  # warm both caches; identical vectors, key by key
                    want = [plain.lookup(keys, "dlrm", t) for t, keys in zip(ids, batch)]
                    got = fused.lookup_many(batch, "dlrm", ids)
                    identical = all(np.array_equal(np.asarray(a if device is None else a.cpu()),
                                                   np.asarray(b if device is None else b.cpu()))
                                    for a, b in zip(want, got))
                    if not identical:
                        raise SystemExit("fused lookup_many differs from the unfused lookups")
                state = {"i": 0}

                def separate(ps: hps.HPS = plain) -> None:
                    batch = batches[state["i"] % len(batches)]
                    for t in ids:
                        ps.lookup(batch[t], "dlrm", t)
                    sync()

                def one_pass() -> None:
                    fused.lookup_many(batches[state["i"] % len(batches)], "dlrm", ids)
                    sync()

                def one_pass_2d() -> None:
                    fused.lookup_many(stacked[state["i"] % len(stacked)], "dlrm", ids)

                def fused_separate() -> None:
                    separate(fused)

                methods = [("plain", separate), ("fused", one_pass), ("fused_separate", fused_separate)]
                if device is None:
                    methods.insert(2, ("fused_2d", one_pass_2d))
                timed = {name: [] for name, _ in methods}
                cpu = {name: [] for name, _ in methods}
                round_p50 = {name: [] for name, _ in methods}
                # blocks of BLOCK batches per method, the methods taking turns, so that a busy neighbour slows
                # all alike; each block first re-warms its method's rows (8 batches, as in `run_variant`: they
                # stay in the CPU's caches, as a serving process's hot rows do) and times the rest; ROUNDS
                # rounds, each giving its own p50 per method (and so its own ratio)
                blocks = max(1, -(-repeat // ((BLOCK - WARM_IN_BLOCK) * ROUNDS)))
                for _ in range(ROUNDS):
                    this_round = {name: [] for name, _ in methods}
                    for _ in range(blocks):
                        for name, fn in methods:
                            for i in range(BLOCK):
                                state["i"] = i
                                c0, t0 = time.thread_time(), time.perf_counter()
                                fn()
                                t1, c1 = time.perf_counter(), time.thread_time()
                                if i >= WARM_IN_BLOCK:
                                    this_round[name].append(t1 - t0)
                                    cpu[name].append(c1 - c0)
                    for name in timed:
                        timed[name] += this_round[name]
                        round_p50[name].append(percentile(this_round[name], 50))
            filled = "pre-filled with the whole table" if prefill else "holding the timed keys only"
            where = "" if device is None else ", CUDA keys"
            base, base_cpu = percentile(timed["plain"], 50), percentile(cpu["plain"], 50)
            labels = {"plain": f"26 × HPS.lookup, unfused ({filled}{where})",
                      "fused": f"HPS.lookup_many, fused: 1 pass, list of 26 key arrays ({filled}{where})",
                      "fused_2d": f"HPS.lookup_many, fused: 1 pass, one (26, {samples}) key array ({filled}{where})",
                      "fused_separate": f"26 × HPS.lookup on the fused model ({filled}{where})"}
            for name in timed:
                p50 = percentile(timed[name], 50)
                ratios = sorted(b / r for b, r in zip(round_p50["plain"], round_p50[name]))
                rows_out.append({"method": labels[name], "keys per batch": NUM_TABLES * samples, "p50 ms": p50 * 1e3,
                                 "p99 ms": percentile(timed[name], 99) * 1e3,
                                 "M keys/s": NUM_TABLES * samples / p50 / 1e6,
                                 "speed-up vs 26 calls": base / p50,
                                 f"speed-up per round (min / median / max of {ROUNDS})":
                                     f"{ratios[0]:.2f} / {percentile(ratios, 50):.2f} / {ratios[-1]:.2f}",
                                 "speed-up in CPU time": base_cpu / percentile(cpu[name], 50),
                                 "identical vectors": identical})
    cache = "GPU cache (whole-table: gpucacheper 1.0)" if gpu else "whole-table CPU cache (gpucacheper 1.0)"
    notes = (f"fuse_embedding_table: the {NUM_TABLES} tables of dim {DIM} (one default) form one fused table "
             f"(fused_embedding0, {NUM_TABLES} × {rows:,} rows, disjoint key ranges); `HPS.lookup_many` looks the "
             f"{NUM_TABLES} × {samples} keys up in one pass (given as a list of {NUM_TABLES} arrays, or as one "
             f"({NUM_TABLES}, {samples}) array), against {NUM_TABLES} `HPS.lookup` calls on the same "
             f"tables unfused; {cache}, pre-filled or holding the timed keys; the 8 batches of `hps_lookup` in "
             f"blocks of {BLOCK} per method (the first {WARM_IN_BLOCK} untimed), the methods taking turns, in "
             f"{ROUNDS} rounds, about {repeat} timed batches each{'' if gpu else ', one core'}; p50 over all rounds, "
             f"and the speed-up of each round's p50 (min / median / max); CPU time = the calling thread's "
             f"(time.thread_time: robust to time-slicing by other jobs, not to their cache traffic); identical "
             "vectors checked key by key on 8 batches. "
             f"Target: fused ≥ 2× faster. {VM_NOTE}")
    if interpreted:
        print("GPU cache code in Triton's CPU interpreter (logic check; timings mean nothing, nothing written):")
        for row in rows_out:
            print(f"  {row['method']}: identical vectors {row['identical vectors']}")
        return
    write_results("gpu-fused" if gpu else "cpu", "hps_lookup_fused", rows_out, notes)


def fused_config(tmp: str, prefill: bool, fuse: bool, samples: int = SAMPLES) -> dict:
    """The 26-table model of `bench_fused`, with `fuse_embedding_table` on or off."""
    return {"supportlonglong": True, "fuse_embedding_table": fuse,
            "volatile_db": {"type": "hash_map", "num_partitions": 1},
            "models": [{"model": "dlrm", "sparse_files": [str(Path(tmp) / f"t{t}") for t in range(NUM_TABLES)],
                        "embedding_vecsize_per_table": [DIM] * NUM_TABLES,
                        "maxnum_catfeature_query_per_table_per_sample": [1] * NUM_TABLES,
                        "default_value_for_each_table": [0.0] * NUM_TABLES, "deployed_device_list": [0],
                        "max_batch_size": samples, "gpucacheper": 1.0, "hit_rate_threshold": 1.0,
                        "cache_refresh_percentage_per_iteration": 1.0 if prefill else 0.0}]}


if __name__ == "__main__":
    main()
