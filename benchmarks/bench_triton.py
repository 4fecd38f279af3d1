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
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import VM_NOTE, closed_loop, percentile, write_results  # noqa: E402

import hps  # noqa: E402
from hps.model_format.writer import write_sparse_model  # noqa: E402
from hps.serving.triton import build_repository, serve  # noqa: E402
from hps.serving.triton.dense_runner import ORT_SESSION_CONFIG, DenseRunner  # noqa: E402
from hps.serving.triton.install import CACHE_DIR  # noqa: E402

VOCAB, DIM, KEYS_PER_SAMPLE = 30_000, 16, 3
PA_VERSION = "2.51.0"
DENSE_THREADS = 1  # onnxruntime intra-op threads, in the served models and in the in-process baseline alike
#: perf_analyzer's split of a Triton request (averages, ms): network + frontend, then per model queue,
#: compute input (copy into the stub's shared memory), infer (stub round trip incl. execute), output
BREAKDOWN = ("net_ms", "srv_queue_ms", "srv_input_ms", "srv_infer_ms", "srv_output_ms")


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


def run_perf_analyzer(binary: Path, env: dict[str, str], url: str, protocol: str, model: str, samples: int,
                      concurrency: int, work: Path, interval_ms: int, pin: list[str]) -> dict[str, float]:
    data = {"data": [{"EMB_KEY": {"content": k.ravel().tolist(), "shape": list(k.shape)},
                      "EMB_N_KEY": {"content": [k.size], "shape": [1, 1]}} for k in key_batches(samples)]}
    data_path = work / f"input_{samples}.json"
    data_path.write_text(json.dumps(data))
    transport, _, shm = protocol.partition("+")  # "http+shm": inputs and outputs in system shared memory
    report = work / f"pa_{model}_{transport}{'_shm' if shm else ''}_{samples}_{concurrency}.csv"
    cmd = pin + [str(binary), "-m", model, "-u", url, "-i", transport, "--input-data", str(data_path),
                 "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(interval_ms),
                 "--max-trials", "10", "-f", str(report), "--verbose-csv"] + (["--shared-memory", "system"] if shm else [])
    for stability in (20, 50, 100):  # a shared 2-core VM is noisy: widen the stability band if needed
        result = subprocess.run(cmd + ["--stability-percentage", str(stability)], env={**os.environ, **env},
                                capture_output=True, text=True, timeout=300)
        if report.exists():
            break
    else:
        raise RuntimeError(f"perf_analyzer failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    row = next(csv.DictReader(report.open()))
    ms = lambda key: float(row.get(key, 0) or 0) / 1e3  # noqa: E731 (perf_analyzer reports µs averages)
    return {"throughput_infer_s": float(row["Inferences/Second"]), "p50_ms": ms("p50 latency"),
            "p99_ms": ms("p99 latency"), "net_ms": ms("Network+Server Send/Recv"),
            "srv_queue_ms": ms("Server Queue"), "srv_input_ms": ms("Server Compute Input"),
            "srv_infer_ms": ms("Server Compute Infer"), "srv_output_ms": ms("Server Compute Output")}


def in_process(ps: "hps.HPS", runner: DenseRunner, samples: int, concurrency: int, seconds: float,
               pause_s: float = 0.0) -> dict[str, float]:
    """HPS.lookup + onnxruntime (1 thread) on the same keys, in this process, from `concurrency` threads;
    with `pause_s`, each thread sleeps that long before every (timed) call, as a client waiting on the network does."""
    batches = key_batches(samples)

    def step(keys: np.ndarray) -> np.ndarray:
        return runner(ps.lookup(keys.reshape(-1), "hps_embedding", 0).reshape(-1))

    for keys in batches:
        step(keys)

    times, elapsed = closed_loop(lambda i: step(batches[i % len(batches)]), concurrency, seconds, pause_s=pause_s)
    return {"throughput_infer_s": len(times) / elapsed, "p50_ms": percentile(times, 50) * 1e3,
            "p99_ms": percentile(times, 99) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter measurement windows")
    parser.add_argument("--pin", action="store_true",
                        help="pin the server to core 1 and perf_analyzer to core 0 (only on an otherwise idle machine)")
    args = parser.parse_args()
    interval_ms = 1000 if args.quick else 3000
    window_s = 1.0 if args.quick else 2.0
    binary, pa_env = perf_analyzer_binary()
    load_start = os.getloadavg()[0]
    pin_client = ["taskset", "-c", "0"] if args.pin and (os.cpu_count() or 1) >= 2 else []
    work = Path(tempfile.mkdtemp(prefix="hps-bench-triton-"))
    rows = []
    try:
        ps_json, dense = make_setup(work)
        repo = build_repository(ps_json, dense, work / "repo", dense_threads=DENSE_THREADS)
        build_repository(ps_json, dense, repo, layout="fused", ensemble_name="fused_model", dense_threads=DENSE_THREADS)
        server = serve(repo, http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=300)
        ps = hps.HPS(ps_json, show_progress=False)
        # the served models build exactly this DenseRunner (same threads, same ORT_SESSION_CONFIG)
        runner = DenseRunner(dense, width=DIM * KEYS_PER_SAMPLE, threads=DENSE_THREADS)
        gc.freeze()  # as the served models do after initialize (hps.serving.triton.model)
        try:
            if pin_client:
                for pid in [server.process.pid] + _descendants(server.process.pid):
                    subprocess.run(["taskset", "-a", "-p", "-c", "1", str(pid)], capture_output=True)
            for samples in (1, 1024):
                for concurrency in (1, 4):
                    runs = [(m, "grpc") for m in ("ensemble_model", "fused_model")]
                    if concurrency == 1:
                        runs += [(m, p) for p in ("http", "http+shm") for m in ("ensemble_model", "fused_model")]
                    # the in-process baseline is measured right before and after every Triton run, so both
                    # see the same load on this shared machine; its row is the median of those windows
                    local_runs = [in_process(ps, runner, samples, concurrency, seconds=window_s)]
                    triton_rows = []
                    for model, protocol in runs:
                        url = server.url_grpc if protocol.startswith("grpc") else server.url_http
                        measured = run_perf_analyzer(binary, pa_env, url, protocol, model, samples, concurrency,
                                                     work, interval_ms, pin_client)
                        local_runs.append(in_process(ps, runner, samples, concurrency, seconds=window_s))
                        baseline = (local_runs[-2]["p50_ms"] + local_runs[-1]["p50_ms"]) / 2
                        label = ("Triton ensemble_model (seed layout: 2 python models)" if model == "ensemble_model"
                                 else "Triton fused_model (layout='fused': 1 python model)")
                        triton_rows.append({"path": label, "protocol": protocol, "samples": samples,
                                            "concurrency": concurrency, **measured, "baseline_p50_ms": baseline,
                                            "overhead_p50_ms": measured["p50_ms"] - baseline})
                        print(triton_rows[-1], flush=True)
                    rows.append({"path": "in-process HPS.lookup + onnxruntime", "protocol": "-", "samples": samples,
                                 "concurrency": concurrency,
                                 **{k: float(np.median([r[k] for r in local_runs])) for k in local_runs[0]},
                                 "baseline_p50_ms": float(np.median([r["p50_ms"] for r in local_runs])),
                                 "overhead_p50_ms": 0.0, **{k: "-" for k in BREAKDOWN}})
                    rows += triton_rows
                    if concurrency == 1:
                        # diagnostic: the baseline runs back to back, while a served request at concurrency 1
                        # always follows a pause (the client waits on the network). The same loop with a pause of
                        # the measured overhead before each call shows what that pause alone costs (caches, clocks
                        # and scheduling gone cold). Hot and paced windows alternate so both see the same load.
                        pause_ms = float(np.median([r["overhead_p50_ms"] for r in triton_rows]))
                        hot, paced = [], []
                        for _ in range(2):
                            hot.append(in_process(ps, runner, samples, 1, seconds=window_s))
                            paced.append(in_process(ps, runner, samples, 1, seconds=window_s,
                                                    pause_s=max(pause_ms, 0) / 1e3))
                        hot_p50 = float(np.median([r["p50_ms"] for r in hot]))
                        rows.append({"path": f"in-process, {pause_ms:.2f} ms pause before each call (diagnostic)",
                                     "protocol": "-", "samples": samples, "concurrency": 1,
                                     **{k: float(np.median([r[k] for r in paced])) for k in paced[0]},
                                     "baseline_p50_ms": hot_p50,
                                     "overhead_p50_ms": float(np.median([r["p50_ms"] for r in paced])) - hot_p50,
                                     **{k: "-" for k in BREAKDOWN}})
        finally:
            ps.close()
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        for key in BREAKDOWN:  # after the headline columns
            row[key] = row.pop(key)
        row["keys_per_s"] = row["throughput_infer_s"] * row["samples"] * KEYS_PER_SAMPLE
    load = os.getloadavg()
    ort_config = ", ".join(f"{k}={v}" for k, v in ORT_SESSION_CONFIG.items())
    notes = (f"1-min load average {load_start:.1f} at the start of the run, {load[0]:.1f} at the end (this benchmark "
             f"included). {VM_NOTE} Seed setup: 1 table {VOCAB:,} × {DIM} float32 (hash_map volatile tier, CPU only), "
             f"{KEYS_PER_SAMPLE} keys per sample, dense MLP 48→256→128→1 in ONNX (onnxruntime, {DENSE_THREADS} "
             f"intra-op thread, sequential, {ort_config}: the same DenseRunner settings in the served models "
             "and in-process). Triton 2.51 "
             "(nvidia-pytriton 0.7.0 binary, python backend) serving the seed's ensemble_model (hps_embedding → "
             "dense_model) and the same pipeline as one python model (fused_model, "
             "`build_repository(..., layout='fused')`); "
             f"perf_analyzer {PA_VERSION}, {interval_ms} ms windows, random keys from 16 prepared requests. "
             "In-process rows: the same HPS.lookup + DenseRunner from 1 or 4 Python threads (4 threads share one "
             "GIL), measured right before and after every Triton run; baseline_p50_ms = the mean of those two "
             "p50s, overhead_p50_ms = Triton p50 − baseline_p50_ms. The diagnostic rows run the in-process "
             "loop with a pause (the median Triton overhead of that block) before each call, in windows alternating "
             "with unpaced ones (their baseline_p50_ms): their overhead_p50_ms is what the pause alone costs the "
             "same work (caches, clocks, scheduling gone cold), which every served request at concurrency 1 pays "
             "and the back-to-back baseline does not. net_ms and srv_*_ms are perf_analyzer's averages (not p50s): "
             "network + frontend, then queue, compute input / infer / output summed over the models a request "
             "runs (two for ensemble_model); srv_infer_ms includes the python stub round trip. Protocol http+shm: "
             "perf_analyzer --shared-memory system (inputs and outputs in POSIX shared memory registered with "
             "the server, for a client on the same host; the request itself still goes over HTTP). "
             + ("Server pinned to core 1, perf_analyzer to core 0." if pin_client else "Nothing pinned."))
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
