"""Hit rate against cache size (`hps inspect --keys`'s replay, `hps.sizing.replay_hit_rates`) for Zipf
traffic, and what the set size does: hps's CPU cache (16 slots a set), hps's GPU cache's set size
(7 slots) and HugeCTR's (64), each replayed through `CpuEmbeddingCache`; plus the replay's speed.

Baseline in the same run: the ceiling, a cache that never evicts (every key after the first lookup
that touched it). Writes results/cache_sizing.{json,md} and cache_sizing_hit_rate.png.
Run: `python benchmarks/bench_cache_sizing.py [--quick] [--keys N]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import VM_NOTE, plot, write_results  # noqa: E402

from hps.config.parse import parse_config  # noqa: E402
from hps.sizing import replay_hit_rates  # noqa: E402

ROWS = 1_000_000
GPUCACHEPER = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="200k keys, 100k rows")
    parser.add_argument("--keys", type=int, default=4_000_000, help="keys in each Zipf sample")
    args = parser.parse_args()
    rows = 100_000 if args.quick else ROWS
    n = 200_000 if args.quick else args.keys
    model = parse_config({"models": [{"model": "m", "sparse_files": ["unused"], "embedding_vecsize_per_table": [128],
                                      "maxnum_catfeature_query_per_table_per_sample": [1],
                                      "default_value_for_each_table": [0.0], "deployed_device_list": [0]}]},
                         base_dir=".").models[0]
    out, series = [], {}
    for alpha in (1.05, 1.2):
        keys = _zipf(n, rows, alpha)
        for ways in (7, 16, 64):
            start = time.perf_counter()
            points = replay_hit_rates(keys, model, rows, 128, GPUCACHEPER, batch_keys=1024, ways=ways)
            seconds = time.perf_counter() - start
            series[f"Zipf {alpha}, {ways} ways"] = [p.hit_rate for p in points]
            for p in points:
                out.append({"zipf alpha": alpha, "ways": ways if p.capacity_rows < rows else "whole table",
                            "gpucacheper": p.gpucacheper, "cache rows": p.capacity_rows, "hit rate": p.hit_rate,
                            "ceiling (no eviction)": p.ceiling, "cache MiB (dim 128)": p.cache_bytes / 2**20,
                            "replay M keys/s": p.keys / p.seconds / 1e6})
            print(f"alpha {alpha} ways {ways}: {seconds:.1f} s for {len(GPUCACHEPER)} sizes")
    png = plot("cache_sizing", "hit_rate", GPUCACHEPER, series, "gpucacheper (cache rows / table rows)", "hit rate",
               title=f"hit rate of Zipf keys, {rows:,}-row table, {n:,} keys, 1,024 per lookup", logx=True)
    notes = (f"Zipf samples of {n:,} keys (numpy zipf(alpha) - 1, modulo the rows) over a {rows:,}-row table, "
             "1,024 keys per lookup, replayed from a cold cache through CpuEmbeddingCache with 7 (the GPU cache's "
             "set), 16 (the CPU cache's) and 64 (HugeCTR's) slots per set; gpucacheper 1.0 is the whole-table "
             "hash. The replay rate is keys replayed per second for one cache size on one core. "
             + (f"![hit rate against gpucacheper]({png.name})  " if png else "") + VM_NOTE)
    write_results("cache_sizing", "zipf_hit_rate", out, notes)


def _zipf(n: int, rows: int, alpha: float) -> np.ndarray:
    """`(n,) int64` Zipf keys scattered over [0, rows) (rank r → a fixed random key)."""
    rng = np.random.default_rng(0)
    ranks = (rng.zipf(alpha, n) - 1) % rows
    return rng.permutation(rows).astype(np.int64)[ranks]


if __name__ == "__main__":
    main()
