"""Start-up loading beside `numpy.fromfile` of the same files: rate, peak memory, steady memory.

Report "loading" (benchmarks/results/loading.md), section "load". One table of `--rows` × 64
float32 rows (default 5 M = 1.3 GB: the issue's 20 M × 64 scaled to this VM, same row size), page
cache warm. Each load runs in a fresh process (`HPS(config)` until it returns), so its resident
memory is its own: peak sampled by the loader (`HPS.stats()["load"]`, every 10 ms) and checked
against `getrusage`'s maximum; steady = resident right after the load. Rows:

- `numpy.fromfile` of `key` and `emb_vector` into new arrays (the baseline: one copy from the page
  cache, the fresh arrays' page faults included);
- hash map only (`volatile_db` hash_map, no cache): ours, and with `--before-src DIR` the same load
  by another checkout's `src/` (e.g. a worktree of the commit before) for a before/after in one run;
- the whole table in a CPU cache (`use_static_table`: the cache holds the rows, no tier).

Targets (issue 15): hash-map-only load ≥ 0.5× fromfile's rate; peak ≤ 1.3× steady.
Run: `python benchmarks/bench_loading.py [--rows N] [--repeat K] [--before-src /path/to/old/src]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import VM_NOTE, median, write_results  # noqa: E402

DIM = 64
SRC = str(Path(__file__).resolve().parents[1] / "src")

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    config = json.loads(sys.argv[1])
    import numpy as np
    import hps

    def rss_bytes():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096

    keys = np.arange(1000, dtype=np.int64)
    before = rss_bytes()
    start = time.perf_counter()
    ps = hps.HPS(config, show_progress=False)
    seconds = time.perf_counter() - start
    after = rss_bytes()
    ps.lookup(keys, "m", 0)
    load = ps.stats().get("load", {}).get("m", {})
    print(json.dumps({"seconds": seconds, "rss_before": before, "rss_after": after,
                      "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "peak_sampled": load.get("peak_rss_bytes")}))
""")


def _config(path: Path, static_cache: bool) -> dict:
    model = {"model": "m", "sparse_files": [str(path)], "embedding_vecsize_per_table": [DIM],
             "maxnum_catfeature_query_per_table_per_sample": [1], "default_value_for_each_table": [0.0],
             "deployed_device_list": [0], "max_batch_size": 1024, "gpucache": static_cache,
             "use_static_table": static_cache}
    config = {"supportlonglong": True, "models": [model]}
    if not static_cache:
        config["volatile_db"] = {"type": "hash_map", "num_partitions": 1}
    return config


def _load_in_child(config: dict, src: str) -> dict:
    env = dict(os.environ, PYTHONPATH=src, HPS_DEVICE="cpu")
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(config)], env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"the load in a child process failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fromfile(path: Path) -> float:
    start = time.perf_counter()
    keys = np.fromfile(path / "key", dtype=np.int64)
    vectors = np.fromfile(path / "emb_vector", dtype=np.float32)
    seconds = time.perf_counter() - start
    del keys, vectors
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before-src", help="another checkout's src/ to load with too (before/after)")
    args = parser.parse_args()
    rows = args.rows
    nbytes = rows * (8 + 4 * DIM)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t0"
        path.mkdir()
        rng = np.random.default_rng(0)
        with open(path / "key", "wb") as keys_file, open(path / "emb_vector", "wb") as vectors_file:
            for start in range(0, rows, 1 << 20):  # written in chunks: the writer holds no second copy
                stop = min(rows, start + (1 << 20))
                np.arange(start, stop, dtype=np.int64).tofile(keys_file)
                rng.standard_normal((stop - start, DIM), dtype=np.float32).tofile(vectors_file)
        variants = {"hash map only (ours)": (_config(path, False), SRC),
                    "whole table in a CPU cache, no tier (ours)": (_config(path, True), SRC)}
        if args.before_src:
            variants["hash map only (before)"] = (_config(path, False), args.before_src)
            variants["whole table in a CPU cache, no tier (before)"] = (_config(path, True), args.before_src)
        fromfile_s: list[float] = []
        results: dict[str, list[dict]] = {name: [] for name in variants}
        _fromfile(path)  # page cache warm
        for config, src in variants.values():  # numba's compiled kernels cached on disk, as in a restart
            _load_in_child(config, src)
        for _ in range(args.repeat):  # alternate, so that a busy neighbour slows every method alike
            fromfile_s.append(_fromfile(path))
            for name, (config, src) in variants.items():
                results[name].append(_load_in_child(config, src))
                print(name, results[name][-1], flush=True)
    base, base_best = median(fromfile_s), min(fromfile_s)
    rows_out = [{"method": "numpy.fromfile of key + emb_vector (baseline)", "rows": rows, "GB": nbytes / 1e9,
                 "seconds (median)": base, "GB/s": nbytes / base / 1e9, "rate / fromfile": 1.0,
                 "best seconds": base_best, "best rate / best fromfile": 1.0,
                 "peak RSS GiB": "", "steady RSS GiB": "", "peak / steady": "", "peak sampled by hps GiB": ""}]
    for name, runs in results.items():
        seconds = median([r["seconds"] for r in runs])
        peak = max(max(r["maxrss"], r["peak_sampled"] or 0) for r in runs)
        steady = median([r["rss_after"] for r in runs])
        rows_out.append({"method": name, "rows": rows, "GB": nbytes / 1e9, "seconds (median)": seconds,
                         "GB/s": nbytes / seconds / 1e9, "rate / fromfile": base / seconds,
                         "best seconds": min(r["seconds"] for r in runs),
                         "best rate / best fromfile": base_best / min(r["seconds"] for r in runs),
                         "peak RSS GiB": peak / 2**30, "steady RSS GiB": steady / 2**30, "peak / steady": peak / steady,
                         "peak sampled by hps GiB": max((r["peak_sampled"] or 0) for r in runs) / 2**30})
    notes = (f"One table of {rows:,} × {DIM} float32 rows ({nbytes / 1e9:.2f} GB: key 8 B + vector {4 * DIM} B "
             "per row; "
             + ("the issue's 20 M × 64" if rows >= 20_000_000 else "the issue's 20 M × 64 scaled to this VM")
             + "), page cache warmed first (a file larger than what the page cache keeps beside the loads is partly "
             "read from disk: then fromfile's seconds are mostly the disk's), each load in a fresh process "
             "(HPS(config) until it returns, validation of the keys included); fromfile and the loads alternated, "
             f"{args.repeat} runs each, median and best seconds (the VM is shared: medians move with the "
             "neighbours' load); peak = the larger of getrusage's max RSS and the loader's "
             "sampled peak (HPS.stats()['load']['peak_rss_bytes']), steady = RSS right after the load (Python, numpy "
             f"and numba included, ~0.2 GiB). Targets: rate ≥ 0.5× fromfile, peak ≤ 1.3× steady. {VM_NOTE}")
    write_results("loading", "load", rows_out, notes)


if __name__ == "__main__":
    main()
