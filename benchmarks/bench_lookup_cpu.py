"""`HPS.lookup` end to end on the CPU: 26 tables × 1,024 samples (26,624 keys), all hits in the CPU cache.

Baseline in the same run: the same gathers from plain numpy arrays indexed by key
(`table[keys]`, what `nn.Embedding` does with dense ids) — the floor for a Python call per table.
Run: `python benchmarks/bench_lookup_cpu.py [--quick]` (pinned to one core).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
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
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    rows = 20_000 if args.quick else args.rows
    repeat = 50 if args.quick else 300
    rng = np.random.default_rng(0)
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
                             "all cache hits": all_hits if "HPS" in name else ""})
    notes = (f"{NUM_TABLES} tables × {SAMPLES} samples × 1 key (one HPS.lookup per table per batch), int64 keys, "
             f"dim {DIM} float32, {rows:,} rows per table (keys 0..rows-1, as DLRM tables number their ids); the "
             "cache either pre-filled at start-up (cache_refresh_percentage_per_iteration 1.0, HugeCTR's pre-fill: "
             "contiguous keys get the hash map's direct index) or warmed with the 8 × 1,024 timed keys per table "
             "(scattered: hashed probes); one core "
             f"(sched_setaffinity); {repeat} timed batches. Target p50 ≤ 2 ms. {VM_NOTE}")
    write_results("cpu", "hps_lookup", rows_out, notes)


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
        hits_before = ps.stats()["models"]["dlrm"]["sparse_embedding0"]["hits"]["cache"]
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
        all_hits = s["hits"]["cache"] - hits_before == s["keys"] - SAMPLES * len(batches)
    return hps_s, np_s, all_hits


if __name__ == "__main__":
    main()
