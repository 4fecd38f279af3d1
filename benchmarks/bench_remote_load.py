"""Loading a sparse model from S3 (moto's S3 server on 127.0.0.1) beside a local read of the same table.
Report "remote-load", section "load".

One table of 1M rows × dim 16 (--quick: 200k) with unique scattered int64 keys is written locally
and uploaded to a local moto server (`python -m moto.server`, started and stopped here by process
id), then read whole, each path `--repeat` times in turn, median reported:

- raw s3fs `cat_file` of `key` and `emb_vector` (one GET each, a warm client, no validation, no
  numpy arrays): the baseline of the remote rows;
- `SparseModel` over the local directory: open (sizes), `check_unique_keys`, `iter_chunks`
  (memory-mapped file, page cache warm);
- `SparseModel` over `s3://`: open (info() of the objects), `check_unique_keys` (the `key` object
  read once), `iter_chunks` (ranged reads in 16 MiB parts, next chunk prefetched, objects checked
  unchanged before and after);
- `hps.HPS` start-up over each (volatile hash map, no persistent tier, no GPU): the whole load
  path, validation then filling the tier.

moto is a Python server on the same 2-vCPU VM, so the S3 figures are bounded by it (its CPU use
competes with the reader's); against real S3 the bandwidth per connection and the number of
concurrent parts matter instead. Rows/s and MB/s count key + vector bytes (8 + 4·dim per row).

Run: `python benchmarks/bench_remote_load.py [--quick] [--repeat N]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from harness import VM_NOTE, median, write_results  # noqa: E402

from tests.s3_fixture import s3_environment, s3_server, upload_dir  # noqa: E402

DIM = 16
BUCKET = "hps-bench"
_MULT = np.uint64(0x9E3779B97F4A7C15)


def _config(sparse_file: str) -> dict:
    return {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 4},
            "models": [{"model": "bench", "sparse_files": [sparse_file], "embedding_table_names": ["t0"],
                        "embedding_vecsize_per_table": [DIM], "maxnum_catfeature_query_per_table_per_sample": [26],
                        "default_value_for_each_table": [0.0], "deployed_device_list": [0], "max_batch_size": 1024,
                        "gpucache": False}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200k rows instead of 1M")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = 200_000 if args.quick else 1_000_000
    table_bytes = rows * (8 + 4 * DIM)

    import fsspec

    import hps
    from hps.model_format import SparseModel, write_sparse_model

    with tempfile.TemporaryDirectory(prefix="hps-bench-remote-") as tmp, s3_server() as endpoint:
        os.environ.update(s3_environment(endpoint))
        keys = ((np.arange(rows, dtype=np.uint64) + np.uint64(1)) * _MULT).view(np.int64)
        vectors = np.random.default_rng(0).standard_normal((rows, DIM)).astype(np.float32)
        local = Path(tmp) / "t0"
        write_sparse_model(local, keys, vectors)
        url = f"s3://{BUCKET}/t0"
        upload_dir(local, url)
        probe = keys[:: max(1, rows // 1000)]

        fs = fsspec.filesystem("s3", skip_instance_cache=True)  # one warm client, as SparseModel shares one

        def raw_s3() -> None:
            got = fs.cat_file(f"{BUCKET}/t0/key"), fs.cat_file(f"{BUCKET}/t0/emb_vector")
            assert sum(map(len, got)) == table_bytes

        def read(path: str) -> None:
            model = SparseModel(path, DIM)
            model.check_unique_keys()
            n = 0
            for chunk_keys, _ in model.iter_chunks():
                n += chunk_keys.shape[0]
            assert n == rows

        def serve(path: str) -> None:
            with hps.HPS(_config(path), show_progress=False) as ps:
                np.testing.assert_array_equal(ps.lookup(probe, "bench", 0), vectors[:: max(1, rows // 1000)])

        cases = [("raw s3fs cat_file (baseline)", "s3 (moto)", raw_s3),
                 ("SparseModel validate + iter_chunks", "local", lambda: read(str(local))),
                 ("SparseModel validate + iter_chunks", "s3 (moto)", lambda: read(url)),
                 ("HPS start-up (hash map)", "local", lambda: serve(str(local))),
                 ("HPS start-up (hash map)", "s3 (moto)", lambda: serve(url))]
        for _, _, fn in cases:  # warm-up: page cache, numba compilation, moto's first requests
            fn()
        times: dict[int, list[float]] = {i: [] for i in range(len(cases))}
        for _ in range(args.repeat):
            for i, (_, _, fn) in enumerate(cases):
                t0 = time.perf_counter()
                fn()
                times[i].append(time.perf_counter() - t0)

    seconds = {i: median(t) for i, t in times.items()}
    out = []
    for i, (what, source, _) in enumerate(cases):
        local_twin = next((j for j, c in enumerate(cases) if c[0] == what and c[1] == "local"), None)
        out.append({"what": what, "source": source, "rows": rows, "dim": DIM, "MB": table_bytes / 1e6,
                    "seconds (median)": seconds[i], "M rows/s": rows / seconds[i] / 1e6,
                    "MB/s": table_bytes / seconds[i] / 1e6,
                    "x local": seconds[i] / seconds[local_twin] if local_twin is not None and local_twin != i else "",
                    "x raw s3fs": seconds[i] / seconds[0] if source != "local" and i else ""})
    notes = (f"{rows:,} rows x dim {DIM} (int64 keys, float32 vectors, {table_bytes / 1e6:.0f} MB), "
             f"median of {args.repeat} runs after one warm-up, paths run in turn. S3 = moto's server on "
             f"127.0.0.1 on the same VM (a Python server: it bounds the S3 rows). 'x local': time over the "
             f"local row's time; 'x raw s3fs': time over reading both objects whole with s3fs. {VM_NOTE}")
    write_results("remote-load", "load", out, notes)


if __name__ == "__main__":
    main()
