"""`HPS.lookup` from Python with 26,624 CUDA keys, all hits in the GPU cache: p50 / p99 (on the H200).

Baselines in the same run: an empty `torch.cuda.synchronize()`, `torch.nn.functional.embedding` with
direct indices (host-synced), and `HPS.lookup` with numpy keys (host round trip).
Run on a GPU machine: `python benchmarks/bench_gpu_lookup.py [--out DIR]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, percentile, write_results  # noqa: E402

import hps  # noqa: E402
from hps.model_format import write_sparse_model  # noqa: E402

ROWS, DIM, SAMPLES, KEYS_PER_SAMPLE = 1_000_000, 16, 1024, 26


def timed(fn, repeat: int) -> list[float]:
    """Host-synced wall time of `fn` per call, in seconds (after 20 warm-up calls)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", help="also copy the result files here")
    parser.add_argument("--repeat", type=int, default=500)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = SAMPLES * KEYS_PER_SAMPLE
    with tempfile.TemporaryDirectory() as tmp:
        vectors = rng.standard_normal((ROWS, DIM)).astype(np.float32)
        write_sparse_model(Path(tmp) / "t0", np.arange(ROWS, dtype=np.int64), vectors)
        config = {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 8},
                  "models": [{"model": "dlrm", "sparse_files": [str(Path(tmp) / "t0")],
                              "embedding_vecsize_per_table": [DIM],
                              "maxnum_catfeature_query_per_table_per_sample": [KEYS_PER_SAMPLE],
                              "default_value_for_each_table": [0.0], "deployed_device_list": [0],
                              "max_batch_size": SAMPLES, "gpucacheper": 1.0, "hit_rate_threshold": 1.0}]}
        batches = [torch.from_numpy(rng.integers(0, ROWS, n)).cuda() for _ in range(8)]
        with hps.HPS(config, show_progress=False) as ps:
            for batch in batches:
                ps.lookup(batch, "dlrm", 0)
            np.testing.assert_array_equal(ps.lookup(batches[0], "dlrm", 0).cpu().numpy(),
                                          vectors[batches[0].cpu().numpy()])
            i = {"n": 0}

            def hps_random():
                i["n"] += 1
                ps.lookup(batches[i["n"] % 8], "dlrm", 0)

            before = ps.stats()["models"]["dlrm"]["sparse_embedding0"]["hits"].copy()
            t_random = timed(hps_random, args.repeat)
            after = ps.stats()["models"]["dlrm"]["sparse_embedding0"]["hits"]
            random_misses = sum(after[k] - before[k] for k in ("volatile", "persistent", "default"))
            # all hits: draw the timed keys from what the cache holds now (at gpucacheper 1.0 that is every key
            # looked up so far: the whole-table cache loses none to set collisions, HugeCTR #278)
            cached = ps._models["dlrm"].replicas[(0, 0)].cache.dump()
            batches = [cached[torch.randint(0, len(cached), (n,), device=cached.device)] for _ in range(8)]
            before = ps.stats()["models"]["dlrm"]["sparse_embedding0"]["hits"].copy()

            def hps_cuda():
                i["n"] += 1
                ps.lookup(batches[i["n"] % 8], "dlrm", 0)

            host_batches = [b.cpu().numpy() for b in batches]

            def hps_numpy():
                i["n"] += 1
                ps.lookup(host_batches[i["n"] % 8], "dlrm", 0)

            t_hps = timed(hps_cuda, args.repeat)
            t_np = timed(hps_numpy, args.repeat // 5)
            after = ps.stats()["models"]["dlrm"]["sparse_embedding0"]["hits"]
            misses = sum(after[k] - before[k] for k in ("volatile", "persistent", "default"))
        weight = torch.from_numpy(vectors).cuda()

        def embedding():
            i["n"] += 1
            torch.nn.functional.embedding(batches[i["n"] % 8], weight)

        t_emb = timed(embedding, args.repeat)
        t_sync = timed(lambda: None, args.repeat)
    rows = []
    for name, times in (("HPS.lookup, CUDA keys (GPU cache, all hits)", t_hps),
                        (f"HPS.lookup, CUDA keys, random rotating sets ({random_misses / args.repeat:.1f} "
                         "misses per call)", t_random),
                        ("HPS.lookup, numpy keys (H2D + GPU cache + D2H)", t_np),
                        ("torch.nn.functional.embedding, direct indices", t_emb),
                        ("empty torch.cuda.synchronize()", t_sync)):
        rows.append({"path": name, "keys": n, "p50 µs": percentile(times, 50) * 1e6,
                     "p99 µs": percentile(times, 99) * 1e6})
    notes = (f"{n:,} int64 keys per call ({SAMPLES} samples × {KEYS_PER_SAMPLE}), dim {DIM} float32, table "
             f"{ROWS:,} rows, gpucacheper 1.0 (GpuWholeTableCache: exact index, graph replay), cache warmed with the "
             "8 rotating key sets; host-synced wall time "
             f"per call, {args.repeat} calls; misses during the timed calls: {misses}. Target p50 ≤ 100 µs.")
    write_results("h200", "hps_lookup", rows, notes)
    if args.out:
        for suffix in (".md", ".json"):
            shutil.copy(RESULTS / f"h200{suffix}", Path(args.out) / f"h200{suffix}")


if __name__ == "__main__":
    main()
