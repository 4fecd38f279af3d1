"""Triton serving overhead: perf_analyzer against the seed's ensemble_model vs the same pipeline in-process.

    .venv/bin/python benchmarks/bench_triton.py [--quick]

Setup (the seed's tutorial, reference/hugectr-hps.md §4): one table of 30,000 keys × 16 floats
(hash_map volatile tier, no GPU cache), 3 keys per sample, a dense MLP 48 → 256 → 128 → 1 (ONNX,
onnxruntime, 1 intra-op thread). Served by `hps.serving.triton` (tritonserver 2.51 from nvidia-pytriton)
and measured with perf_analyzer 2.51 (from the tritonclient 2.51.0 wheel, in its own venv under
~/.cache/hps, see `perf_analyzer_binary`) at 1 and 1,024 samples, concurrency 1 and 4, HTTP and gRPC.
Beside it, in the same run: `HPS.lookup` + onnxruntime on the same keys in this process.
Writes report "triton-cpu" (benchmarks/results/triton-cpu.{json,md}).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import percentile, time_calls, write_results  # noqa: E402

import hps  # noqa: E402
from hps.model_format.writer import write_sparse_model  # noqa: E402
from hps.serving.triton import build_repository, serve  # noqa: E402
from hps.serving.triton.dense_runner import DenseRunner  # noqa: E402
from hps.serving.triton.server import CACHE_DIR  # noqa: E402

VOCAB, DIM, KEYS_PER_SAMPLE = 30_000, 16, 3
PA_VERSION = "2.51.0"


def perf_analyzer_binary() -> tuple[Path, dict[str, str]]:
    """perf_analyzer from tritonclient 2.51.0's wheel in ~/.cache/hps/perf-analyzer-2.51.0 (created on
    first use with `python -m venv` + pip), and the LD_LIBRARY_PATH it needs (libb64, libcudart from
    nvidia-pytriton's bundled libraries)."""
    venv = CACHE_DIR / f"perf-analyzer-{PA_VERSION}"
    binary = venv / "bin" / "perf_analyzer"
    if not binary.is_file():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                        f"tritonclient=={PA_VERSION}"], check=True)
    import importlib.util

    site = Path(list(importlib.util.find_spec("pytriton").submodule_search_locations)[0]).parent
    libs = site / "nvidia_pytriton.libs"
    links = venv / "palibs"
    links.mkdir(exist_ok=True)
    for pattern, name in (("libcudart-*.so.12*", "libcudart.so.12"), ("libb64-*.so.0d", "libb64.so.0d")):
        target = next(libs.glob(pattern))
        link = links / name
        if not link.exists():
            link.symlink_to(target)
    return binary, {"LD_LIBRARY_PATH": str(links)}


def write_dense_mlp(path: Path, width: int, seed: int = 0) -> Path:
    """The seed's dense tower (Dense 256 relu → 128 relu → 1 sigmoid) as ONNX with a dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = [width, 256, 128, 1]
    nodes, inits, x = [], [], "input_1"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        nodes += [helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"g{i}"])]
        act = "Sigmoid" if i == len(sizes) - 2 else "Relu"
        out = "fc_3" if act == "Sigmoid" else f"a{i}"
        nodes.append(helper.make_node(act, [f"g{i}"], [out]))
        x = out
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["b", width])],
                              [helper.make_tensor_value_info("fc_3", TensorProto.FLOAT, ["b", 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def make_setup(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    write_sparse_model(root / "naive_dnn_sparse.model", np.arange(VOCAB, dtype=np.int64),
                       rng.standard_normal((VOCAB, DIM)).astype(np.float32))
    ps = {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 1},
          "models": [{"model": "hps_embedding", "sparse_files": ["naive_dnn_sparse.model"],
                      "embedding_table_names": ["sparse_embedding1"], "embedding_vecsize_per_table": [DIM],
                      "maxnum_catfeature_query_per_table_per_sample": [KEYS_PER_SAMPLE],
                      "default_value_for_each_table": [1.0], "deployed_device_list": [0], "max_batch_size": 65536,
                      "gpucache": False, "hit_rate_threshold": 1.0}]}
    (root / "hps_embedding.json").write_text(json.dumps(ps, indent=2))
    return root / "hps_embedding.json", write_dense_mlp(root / "naive_dnn_dense.onnx", DIM * KEYS_PER_SAMPLE)


def key_batches(samples: int, count: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(samples)
    return [rng.integers(0, VOCAB, (samples, KEYS_PER_SAMPLE)).astype(np.int64) for _ in range(count)]


def run_perf_analyzer(binary: Path, env: dict[str, str], url: str, protocol: str, samples: int, concurrency: int,
                      work: Path, interval_ms: int, pin: list[str]) -> dict[str, float]:
    data = {"data": [{"EMB_KEY": {"content": k.ravel().tolist(), "shape": list(k.shape)},
                      "EMB_N_KEY": {"content": [k.size], "shape": [1, 1]}} for k in key_batches(samples)]}
    data_path = work / f"input_{samples}.json"
    data_path.write_text(json.dumps(data))
    report = work / f"pa_{protocol}_{samples}_{concurrency}.csv"
    cmd = pin + [str(binary), "-m", "ensemble_model", "-u", url, "-i", protocol, "--input-data", str(data_path),
                 "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(interval_ms),
                 "--max-trials", "10", "-f", str(report), "--verbose-csv"]
    for stability in (20, 50, 100):  # a shared 2-core VM is noisy: widen the stability band if needed
        result = subprocess.run(cmd + ["--stability-percentage", str(stability)], env={**os.environ, **env},
                                capture_output=True, text=True, timeout=300)
        if report.exists():
            break
    else:
        raise RuntimeError(f"perf_analyzer failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    row = next(csv.DictReader(report.open()))
    return {"throughput_infer_s": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1e3,
            "p99_ms": float(row["p99 latency"]) / 1e3,
            "server_queue_ms": float(row.get("Server Queue", 0) or 0) / 1e3,
            "server_compute_ms": (float(row.get("Server Compute Input", 0) or 0) + float(row.get("Server Compute Infer", 0) or 0)
                                  + float(row.get("Server Compute Output", 0) or 0)) / 1e3}


def in_process(ps_json: Path, dense: Path, samples: int, repeat: int) -> dict[str, float]:
    """HPS.lookup + onnxruntime (1 thread) on the same keys, in this process."""
    batches = key_batches(samples)
    with hps.HPS(ps_json, show_progress=False) as ps:
        runner = DenseRunner(dense, threads=1)
        i = iter(range(1 << 30))

        def step():
            keys = batches[next(i) % len(batches)]
            return runner(ps.lookup(keys.reshape(-1), "hps_embedding", 0).reshape(-1))

        times = time_calls(step, repeat=repeat, warmup=20)
    p50 = percentile(times, 50)
    return {"throughput_infer_s": 1.0 / (sum(times) / len(times)), "p50_ms": p50 * 1e3,
            "p99_ms": percentile(times, 99) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter measurement windows")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client to separate cores")
    args = parser.parse_args()
    interval_ms = 1000 if args.quick else 3000
    binary, pa_env = perf_analyzer_binary()
    cores = os.cpu_count() or 1
    pin_client = ["taskset", "-c", "0"] if cores >= 2 and not args.no_pin and shutil.which("taskset") else []
    work = Path(tempfile.mkdtemp(prefix="hps-bench-triton-"))
    rows = []
    try:
        ps_json, dense = make_setup(work)
        repo = build_repository(ps_json, dense, work / "repo", dense_threads=1)
        server = serve(repo, http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=300)
        try:
            if pin_client:  # the server (and its python stubs) on core 1, perf_analyzer on core 0
                subprocess.run(["taskset", "-a", "-p", "-c", "1", str(server.process.pid)], capture_output=True)
                for child in _descendants(server.process.pid):
                    subprocess.run(["taskset", "-a", "-p", "-c", "1", str(child)], capture_output=True)
            for samples in (1, 1024):
                if pin_client:
                    os.sched_setaffinity(0, {1})
                local = in_process(ps_json, dense, samples, repeat=200 if args.quick else 1000)
                os.sched_setaffinity(0, set(range(cores)))
                rows.append({"path": "in-process HPS.lookup + onnxruntime", "protocol": "-", "samples": samples,
                             "concurrency": 1, **local, "overhead_p50_ms": 0.0})
                for protocol, url in (("grpc", server.url_grpc), ("http", server.url_http)):
                    for concurrency in (1, 4):
                        measured = run_perf_analyzer(binary, pa_env, url, protocol, samples, concurrency, work,
                                                     interval_ms, pin_client)
                        rows.append({"path": "Triton ensemble_model (perf_analyzer)", "protocol": protocol,
                                     "samples": samples, "concurrency": concurrency,
                                     "throughput_infer_s": measured["throughput_infer_s"],
                                     "p50_ms": measured["p50_ms"], "p99_ms": measured["p99_ms"],
                                     "overhead_p50_ms": measured["p50_ms"] - local["p50_ms"]})
                        print(rows[-1], flush=True)
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        row["keys_per_s"] = row["throughput_infer_s"] * row["samples"] * KEYS_PER_SAMPLE
    notes = (f"Seed setup: 1 table {VOCAB:,} × {DIM} float32 (hash_map volatile tier, CPU only), {KEYS_PER_SAMPLE} keys "
             "per sample, dense MLP 48→256→128→1 in ONNX (onnxruntime, 1 thread). Triton 2.51 (nvidia-pytriton "
             "0.7.0 binary, python backend) serving hps_embedding → dense_model as ensemble_model; perf_analyzer "
             f"{PA_VERSION}, {interval_ms} ms windows, random keys from 16 prepared requests. "
             + ("Server and its python stubs pinned to core 1 (the in-process run too), perf_analyzer to core 0 "
                "(2-core VM shared with other work: expect ±15 % noise). " if pin_client else "")
             + "overhead_p50_ms = Triton p50 − in-process p50 at the same batch (concurrency 1 rows are the fair "
             "comparison; concurrency 4 rows queue behind one model instance each).")
    write_results("triton-cpu", "ensemble", rows, notes)


def _descendants(pid: int) -> list[int]:
    out, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        out += [int(c) for c in children]
        frontier += [int(c) for c in children]
    return out


if __name__ == "__main__":
    main()
