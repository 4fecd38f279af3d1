"""Soak: minutes of lookups from several threads while updates stream in (`make soak`).

Reports errors, torn or foreign rows, rows newer than any applied update, throughput in the
first and the last minute (the baseline of the same run: a slowdown shows as a drop), and the RSS
slope over the second half (a leak shows as MB/min). Every vector is `[key mod 2**23, version,
version, ...]` (integers exact in float32 below 2**24), so a reader can tell a whole old row, a whole
new row, a torn one (versions differ within the row) and another key's row apart.

Run: `python benchmarks/bench_soak.py [--seconds 600] [--threads 4]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import VM_NOTE, write_results  # noqa: E402

import hps  # noqa: E402
from hps.model_format import write_sparse_model  # noqa: E402

ROWS, DIM, BATCH, UPDATE_ROWS = 200_000, 32, 1024, 256
KEY_MOD = 1 << 23


def encode(keys: np.ndarray, versions: np.ndarray) -> np.ndarray:
    """Rows `(n, DIM)` float32: `[key mod 2**23, version, version, ...]`."""
    rows = np.repeat(versions.astype(np.float32)[:, None], DIM, axis=1)
    rows[:, 0] = keys % KEY_MOD
    return rows


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    keys = np.arange(ROWS, dtype=np.int64)
    latest = np.zeros(ROWS, dtype=np.int64)  # newest version applied per key (written before apply_update)
    with tempfile.TemporaryDirectory() as tmp:
        write_sparse_model(Path(tmp) / "t0", keys, encode(keys, latest))
        config = {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 4},
                  "persistent_db": {"type": "rocks_db", "path": f"{tmp}/rocksdb"},
                  "models": [{"model": "soak", "sparse_files": [f"{tmp}/t0"], "embedding_table_names": ["t0"],
                              "embedding_vecsize_per_table": [DIM], "maxnum_catfeature_query_per_table_per_sample": [1],
                              "default_value_for_each_table": [-1.0], "deployed_device_list": [0],
                              "max_batch_size": BATCH, "gpucacheper": 0.2, "hit_rate_threshold": 1.0}]}
        stop = threading.Event()
        counts = {"lookups": 0, "errors": 0, "torn rows": 0, "foreign rows": 0, "future rows": 0, "updates": 0}
        per_second: list[int] = []
        lock = threading.Lock()
        first_error: list[str] = []
        with hps.HPS(config, show_progress=False) as ps:
            tag = ps.model_config("soak").tables[0].tag

            def reader(seed: int) -> None:
                local = np.random.default_rng(seed)
                while not stop.is_set():
                    batch = (local.zipf(1.05, BATCH) - 1) % ROWS
                    try:
                        got = ps.lookup(batch, "soak", 0)
                    except Exception as exc:  # noqa: BLE001 - counted and reported
                        with lock:
                            counts["errors"] += 1
                            first_error[:] = first_error or [repr(exc)]
                        continue
                    newest_now = latest[batch]
                    torn = (got[:, 1:] != got[:, 1:2]).any(axis=1)
                    foreign = got[:, 0].astype(np.int64) != batch % KEY_MOD
                    future = got[:, 1].astype(np.int64) > newest_now
                    with lock:
                        counts["lookups"] += 1
                        counts["torn rows"] += int(torn.sum())
                        counts["foreign rows"] += int((foreign & ~torn).sum())
                        counts["future rows"] += int((future & ~torn & ~foreign).sum())

            def updater() -> None:
                version = 0
                while not stop.is_set():
                    version += 1
                    batch = np.unique(rng.integers(0, ROWS, UPDATE_ROWS))
                    latest[batch] = version  # before applying: a reader may already see it
                    vectors = encode(batch, np.full(len(batch), version))
                    for tier in ("volatile", "persistent"):
                        ps.apply_update(tag, batch, vectors, tier)
                    with lock:
                        counts["updates"] += 1
                    time.sleep(0.01)

            threads = [threading.Thread(target=reader, args=(i,)) for i in range(args.threads)]
            threads.append(threading.Thread(target=updater))
            for t in threads:
                t.start()
            rss: list[tuple[float, float]] = []
            start = time.perf_counter()
            last = 0
            while time.perf_counter() - start < args.seconds:
                time.sleep(1.0)
                with lock:
                    per_second.append(counts["lookups"] - last)
                    last = counts["lookups"]
                rss.append((time.perf_counter() - start, rss_mb()))
            stop.set()
            for t in threads:
                t.join()
    half = [(t, m) for t, m in rss if t >= args.seconds / 2]
    slope = float(np.polyfit([t for t, _ in half], [m for _, m in half], 1)[0] * 60) if len(half) > 2 else float("nan")
    window = min(60, max(1, len(per_second) // 4))
    first, final = per_second[:window], per_second[-window:]
    rows = [{"seconds": round(args.seconds), "reader threads": args.threads, "lookups": counts["lookups"],
             "errors": counts["errors"], "torn rows": counts["torn rows"], "foreign rows": counts["foreign rows"],
             "future rows": counts["future rows"], "update batches": counts["updates"],
             f"lookups/s first {window} s": sum(first) / len(first), f"lookups/s last {window} s": sum(final) / len(final),
             "RSS MB at end": rss[-1][1], "RSS slope MB/min (2nd half)": slope}]
    notes = (f"{args.threads} threads each looping `HPS.lookup` of {BATCH} Zipf(1.05) keys over {ROWS:,} rows × dim {DIM} "
             f"(CPU cache at gpucacheper 0.2 → hash map → RocksDB, hit_rate_threshold 1.0), while one thread applies "
             f"{UPDATE_ROWS}-key updates to the hash map and RocksDB every 10 ms (each reaching the cache). "
             "Torn: versions differ within a row; foreign: another key's row; future: a version newer than any "
             "applied. "
             f"The first-minute rate is the baseline of the same run. {VM_NOTE}"
             + (f" First error: {first_error[0]}" if first_error else ""))
    write_results("soak", "cpu", rows, notes)
    if counts["errors"] or counts["torn rows"] or counts["foreign rows"] or counts["future rows"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
