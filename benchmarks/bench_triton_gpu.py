"""The seed's Triton deployment on a GPU (issue 16): the DLRM-shaped table served by tritonserver with the
GPU cache, measured with perf_analyzer against the same lookup + dense model in-process on the same GPU.

    source /tmp/hps-triton/env.sh          # tools/triton_gpu/setup.sh: tritonserver, numpy 1.x, perf_analyzer
    python benchmarks/bench_triton_gpu.py [--rows N] [--device gpu|cpu] [--smoke] [--out DIR]

Setup: one table of 32.7 M rows × 128 fp32 (16.7 GB; `bench_dlrm.write_table`, row of key k:
`(k % 65521) * 1e-4 + j * 1e-2`), 26 keys per sample, `gpucacheper` 0.2, `hit_rate_threshold` 1.0
(`--hit-rate-threshold`; HugeCTR's DLRM runs use 0.9, under which a batch whose hit rate reaches 0.9 answers its
few misses with the default vector by design, so its answers cannot be checked against the sparse file: the
first GPU run, at 0.9, had such rows at 1,024 and 16,384 samples), volatile tier `hash_map`; a TorchScript dense MLP 26×128 → 256 → 128 → 1 (relu, relu, sigmoid). The repository
(`build_repository(..., device=...)`) holds the seed's ensemble (hps_embedding → dense_model → ensemble_model)
and the fused layout (`fused_model`: lookup and dense model in one stub).

Requests: for each batch size, 4 distinct batches of keys drawn from a pool of 1 M keys (all cached after
the warm-up, as HugeCTR's published runs, which send the same batch again and again). perf_analyzer 2.51
(binary tensors over HTTP and gRPC; `--input-data` JSON with base64 content), concurrency 1 and 8.
Beside it, in the same run: in-process `HPS.lookup` + the same TorchScript model on the same device, host
keys in and host predictions out (what a request carries), from 1 or 8 threads.

Sections of `results/triton-gpu.{json,md}`: setup, correctness (vectors of hps_embedding against the sparse
file, predictions of both layouts against the dense model in-process), latency (one row per path, protocol,
batch and concurrency, HugeCTR's published A100 ensemble and TF-plugin figures beside), instances (2 and 4
instances of hps_embedding with a shared host tier: GPU memory per process from nvidia-smi, RSS and PSS).
Each section is written as soon as it is measured; an error in one is recorded and the next runs.
"""

from __future__ import annotations

import argparse
import base64
import csv
import http.client
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dlrm import DIM, KEYS_PER_SAMPLE, ROWS, host_rows, write_table  # noqa: E402
from harness import RESULTS, closed_loop, percentile, write_results  # noqa: E402

import hps  # noqa: E402
from hps.serving.triton import build_repository, serve  # noqa: E402
from hps.serving.triton.server import TritonServer  # noqa: E402

REPORT = "triton-gpu"
MODEL = "hps_embedding"
WIDTH = DIM * KEYS_PER_SAMPLE
BATCHES = (32, 256, 1024, 4096, 16384)
CONCURRENCY = (1, 8)
PROTOCOLS = ("grpc", "http")
POOL_KEYS = 1_000_000
LATENCY_COLUMNS = ("path", "protocol", "batch", "concurrency", "p50_ms", "p99_ms", "infer_per_s", "vs in-process ms",
                   "x faster than HugeCTR ensemble", "HugeCTR ensemble ms (A100)", "HugeCTR TF plugin ms (A100)",
                   "server_ms", "srv_infer_ms", "net_ms", "client_send_ms", "client_recv_ms")
BATCHES_PER_SIZE = 4
#: HugeCTR's published figures, A100, DLRM 26 keys × 128 fp32, same batch repeated, server-side, MLP included
#: (reference/performance-anchors.md §1b): HPS backend → TF ensemble, and the HPS TF plugin in one process.
HUGECTR_ENSEMBLE_MS = {32: 0.854, 256: 1.802, 1024: 4.420, 4096: 23.383, 16384: 82.310}
HUGECTR_PLUGIN_MS = {32: 0.612, 256: 0.669, 1024: 0.870, 4096: 1.552, 16384: 4.402}


# --- the dense model ------------------------------------------------------------------------------


class DenseMlp(torch.nn.Module):
    """The seed's dense tower: (samples, width) float32 → Dense 256 relu → 128 relu → 1 sigmoid → (samples, 1)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1 = torch.nn.Linear(width, 256)
        self.fc2 = torch.nn.Linear(256, 128)
        self.fc3 = torch.nn.Linear(128, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x))))))


def write_dense_torchscript(path: Path, width: int, seed: int = 0) -> Path:
    """The dense MLP (fixed seed) as a TorchScript file at `path`."""
    torch.manual_seed(seed)
    torch.jit.script(DenseMlp(width).eval()).save(str(path))
    return path


# --- a binary-protocol HTTP client (Triton's binary tensor extension; no JSON tensors) ------------

_DTYPES = {np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32"}
_NP = {v: k for k, v in _DTYPES.items()}


class BinaryHttpClient:
    """KServe v2 inference over HTTP with binary tensors (`binary_data_size`), one keep-alive connection."""

    def __init__(self, url: str, timeout_s: float = 300.0):
        host, _, port = url.rpartition(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """inputs: name → array (int64 / int32 / float32); returns name → array of each requested output."""
        arrays = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
        header = {"inputs": [{"name": k, "shape": list(a.shape), "datatype": _DTYPES[a.dtype],
                              "parameters": {"binary_data_size": a.nbytes}} for k, a in arrays.items()],
                  "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs]}
        head = json.dumps(header).encode()
        body = b"".join([head] + [a.tobytes() for a in arrays.values()])
        self.conn.request("POST", f"/v2/models/{model}/infer", body=body,
                          headers={"Content-Type": "application/octet-stream",
                                   "Inference-Header-Content-Length": str(len(head))})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{model}: HTTP {resp.status}: {data[:500]!r}")
        hlen = int(resp.getheader("Inference-Header-Content-Length") or len(data))
        meta = json.loads(data[:hlen])
        out, offset = {}, hlen
        for o in meta["outputs"]:
            size = o.get("parameters", {}).get("binary_data_size")
            if size is None:
                out[o["name"]] = np.asarray(o["data"], dtype=_NP[o["datatype"]]).reshape(o["shape"])
                continue
            out[o["name"]] = np.frombuffer(data[offset:offset + size], dtype=_NP[o["datatype"]]).reshape(o["shape"])
            offset += size
        return out

    def close(self) -> None:
        self.conn.close()


# --- perf_analyzer ----------------------------------------------------------------------------------


def perf_analyzer_binary() -> str:
    """$PERF_ANALYZER (tools/triton_gpu/setup.sh's wrapper), else perf_analyzer on PATH."""
    found = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")
    if not found:
        raise RuntimeError("no perf_analyzer: run tools/triton_gpu/setup.sh and source its env.sh")
    return found


def pa_input_file(work: Path, samples: int, batches: list[np.ndarray]) -> Path:
    """perf_analyzer --input-data JSON: one entry per batch, tensors base64-encoded."""
    path = work / f"pa_input_{samples}.json"
    if not path.exists():
        b64 = lambda a: base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()  # noqa: E731
        data = [{"EMB_KEY": {"b64": b64(k), "shape": list(k.shape)},
                 "EMB_N_KEY": {"b64": b64(np.array([[k.size]], np.int32)), "shape": [1, 1]}} for k in batches]
        path.write_text(json.dumps({"data": data}))
    return path


def run_perf_analyzer(url: str, protocol: str, model: str, samples: int, concurrency: int, data: Path,
                      work: Path, interval_ms: int, max_trials: int) -> dict[str, float]:
    report = work / f"pa_{model}_{protocol}_{samples}_{concurrency}.csv"
    cmd = [perf_analyzer_binary(), "-m", model, "-u", url, "-i", protocol, "--input-data", str(data),
           "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(interval_ms),
           "--max-trials", str(max_trials), "-f", str(report), "--verbose-csv"]
    result = None
    for stability in (25, 100):
        report.unlink(missing_ok=True)
        result = subprocess.run(cmd + ["--stability-percentage", str(stability)], capture_output=True, text=True,
                                timeout=120)
        if report.exists() and report.stat().st_size:
            break
    else:
        raise RuntimeError(f"perf_analyzer failed ({' '.join(cmd)}):\n{result.stdout[-2000:]}\n{result.stderr[-1500:]}")
    row = next(csv.DictReader(report.open()))
    ms = lambda key: float(row.get(key, 0) or 0) / 1e3  # noqa: E731 (perf_analyzer reports µs)
    server = sum(ms(k) for k in ("Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output"))
    return {"p50_ms": ms("p50 latency"), "p99_ms": ms("p99 latency"), "infer_per_s": float(row["Inferences/Second"]),
            "server_ms": server, "srv_infer_ms": ms("Server Compute Infer"),
            "net_ms": ms("Network+Server Send/Recv"), "client_send_ms": ms("Client Send"),
            "client_recv_ms": ms("Client Recv")}


# --- in-process baseline ----------------------------------------------------------------------------


class InProcess:
    """`HPS.lookup` + the dense model in this process: host keys in, host predictions out, like a request.

    On a GPU: keys to the GPU, lookup in the GPU cache, the TorchScript model on the GPU, predictions back."""

    def __init__(self, ps: Any, module: Any, device: str):
        self.ps, self.module, self.device = ps, module, device

    def vectors(self, keys: np.ndarray) -> Any:
        if self.device == "cuda":
            return self.ps.lookup(torch.from_numpy(keys.reshape(-1)).to("cuda"), MODEL, 0)
        return torch.from_numpy(np.asarray(self.ps.lookup(keys.reshape(-1), MODEL, 0)))

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.module(self.vectors(keys).reshape(-1, WIDTH))
        return out.cpu().numpy()

    def measure(self, batches: list[np.ndarray], concurrency: int, seconds: float) -> dict[str, float]:
        for k in batches:
            self(k)

        def own_stream() -> Any:
            return torch.cuda.stream(torch.cuda.Stream()) if self.device == "cuda" else nullcontext()

        times, elapsed = closed_loop(lambda i: self(batches[i % len(batches)]), concurrency, seconds, min_calls=5,
                                     context=own_stream)
        return {"p50_ms": percentile(times, 50) * 1e3, "p99_ms": percentile(times, 99) * 1e3,
                "infer_per_s": len(times) / elapsed}


# --- process memory ---------------------------------------------------------------------------------


def gpu_memory_by_pid() -> dict[int, float]:
    """MiB of GPU memory per process (nvidia-smi --query-compute-apps)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            found[int(parts[0])] = float(parts[1])
    return found


def host_memory_mib(pid: int) -> dict[str, float]:
    """RSS, PSS and the shared-memory part of the PSS of `pid`, MiB (/proc/<pid>/smaps_rollup)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Pss_Shmem"):
                out[key] = float(rest.split()[0]) / 1024
    except OSError:
        pass
    return out


def stub_processes(shm_prefix: str, repo: Path) -> list[tuple[int, str]]:
    """(pid, model) of the python stubs of the server whose python-backend shm prefix is `shm_prefix`
    (each stub's argv names its region and its model's path)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        cmd = " ".join(a.decode(errors="replace") for a in argv)
        if "triton_python_backend_stub" not in cmd or shm_prefix not in cmd:
            continue
        model = next((d.name for d in repo.iterdir() if f"/{d.name}/" in cmd), "?")
        found.append((int(proc.name), model))
    return sorted(found, key=lambda p: (p[1], p[0]))


class ServerStartError(RuntimeError):
    """The served repository never became ready (the log tail is in --out)."""


# --- the run ----------------------------------------------------------------------------------------


def make_config(table: Path, rows: int, *, max_batch: int, hit_rate_threshold: float,
                volatile: dict | None = None) -> dict:
    return {"supportlonglong": True, "volatile_db": volatile or {"type": "hash_map", "num_partitions": 16},
            "models": [{"model": MODEL, "sparse_files": [str(table)], "embedding_table_names": ["sparse_embedding0"],
                        "embedding_vecsize_per_table": [DIM],
                        "maxnum_catfeature_query_per_table_per_sample": [KEYS_PER_SAMPLE],
                        "default_value_for_each_table": [0.0], "deployed_device_list": [0],
                        "max_batch_size": max_batch, "gpucache": torch.cuda.is_available(), "gpucacheper": 0.2,
                        "hit_rate_threshold": hit_rate_threshold}]}


def layout_kwargs(device: str, instances: int = 1) -> dict[str, Any]:
    """build_repository's keywords for `device` and `instances` (as far as this build_repository has them)."""
    params = inspect.signature(build_repository).parameters
    kw: dict[str, Any] = {}
    if "device" in params:
        kw["device"] = device
    elif device != "cpu":
        raise RuntimeError("this build_repository has no device= (the GPU layout is not in this tree)")
    if "instances" in params:
        kw["instances"] = instances
    else:
        kw["instance_count"] = instances
    if "dense_instance_count" in params:
        kw["dense_instance_count"] = 1
    kw["copy_sparse"] = False  # the repository points at the 16.7 GB sparse file
    kw["overwrite"] = True
    return kw


#: GPU tensors between a python stub and the server go through Triton's CUDA memory pool (default 64 MiB;
#: OUTPUT0 at 16,384 samples is 218 MB, and larger tensors fall back to slower CUDA IPC)
SERVER_ARGS = ["--cuda-memory-pool-byte-size=0:4294967296"]


#: where result files are copied after every section (--out), so a run stopped at its time limit keeps them
COPY_TO: list[Path] = []


def publish(report: str, logs: list[Path] = ()) -> None:
    """Copy the report's files (and the tails of the server logs) to --out, if given."""
    for out_dir in COPY_TO:
        out_dir.mkdir(parents=True, exist_ok=True)
        for suffix in (".md", ".json"):
            if (RESULTS / f"{report}{suffix}").exists():
                shutil.copy(RESULTS / f"{report}{suffix}", out_dir / f"{report}{suffix}")
        for log in logs:
            if log.exists():
                (out_dir / f"{report}-{log.name}").write_text(log.read_text(errors="replace")[-300_000:])


def write(report: str, name: str, rows: list[dict], notes: str) -> None:
    write_results(report, name, rows, notes)
    publish(report)
    sys.stdout.flush()


def section(name: str, body: Callable[[], tuple[list[dict], str]], prefix: str, report: str) -> bool:
    """Run `body` → (rows, notes) and write it; on an error write the error. True when it ran."""
    try:
        rows, notes = body()
        ok = True
    except Exception:  # noqa: BLE001 - one broken section must not lose the others
        traceback.print_exc()
        rows, notes, ok = [{"error": traceback.format_exc(limit=4)[-600:]}], "FAILED", False
    write(report, name, rows, f"{prefix} {notes}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu", help="the repository's layout")
    parser.add_argument("--smoke", action="store_true", help="200 k rows, batches 32 and 1,024, concurrency 1")
    parser.add_argument("--batches", default=None, help="comma-separated samples per request")
    parser.add_argument("--concurrency", default=None, help="comma-separated, default 1,8")
    parser.add_argument("--no-fused", action="store_true")
    parser.add_argument("--instances", default="2,4", help="instance counts for the memory section ('' to skip)")
    parser.add_argument("--interval-ms", type=int, default=1000)
    parser.add_argument("--max-trials", type=int, default=4)
    parser.add_argument("--inproc-s", type=float, default=0.5, help="seconds per in-process window")
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--out", help="also copy the result files and the server logs here")
    parser.add_argument("--report", default=None)
    parser.add_argument("--hit-rate-threshold", type=float, default=1.0,
                        help="the model's hit_rate_threshold (1.0: every miss fetched, answers exact)")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="stop starting new measurements after this many seconds (0: no limit)")
    args = parser.parse_args()
    t_start = time.perf_counter()
    left = lambda: (args.budget_s - (time.perf_counter() - t_start)) if args.budget_s else 1e9  # noqa: E731
    rows = 200_000 if args.smoke and args.rows == ROWS else args.rows
    batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else ((32, 1024) if args.smoke else BATCHES)
    concurrency = tuple(int(c) for c in args.concurrency.split(",")) if args.concurrency else (
        (1,) if args.smoke else CONCURRENCY)
    report = args.report or (REPORT + ("-smoke" if args.smoke else ""))
    if args.out:
        COPY_TO.append(Path(args.out))
    torch_device = "cuda" if args.device == "gpu" else "cpu"
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    prefix = (f"Card: {card}. Table {rows:,} rows × {DIM} fp32 ({rows * DIM * 4 / 1e9:.2f} GB), {KEYS_PER_SAMPLE} keys "
              f"per sample, gpucacheper 0.2, hit_rate_threshold {args.hit_rate_threshold}, hash_map volatile tier"
              f"{'' if rows == ROWS else f' (scaled down from {ROWS:,} rows)'}; repository layout device={args.device!r}; "
              f"dense model TorchScript {WIDTH} → 256 → 128 → 1 on {torch_device}.")
    tmp = Path(tempfile.mkdtemp(prefix="hps-triton-gpu-", dir=args.tmp))
    server = None
    logs: list[Path] = []
    try:
        setup: dict[str, Any] = {"card": card, "numpy": np.__version__, "torch": torch.__version__}
        setup["/dev/shm"] = subprocess.run(["df", "-h", "/dev/shm"], capture_output=True, text=True).stdout.splitlines()[-1]
        t0 = time.perf_counter()
        write_table(tmp / "t0", rows)
        setup["write sparse file s"] = round(time.perf_counter() - t0, 2)
        max_batch = max(batches)
        ps_json = tmp / "ps.json"
        ps_json.write_text(json.dumps(make_config(tmp / "t0", rows, max_batch=max_batch,
                                                   hit_rate_threshold=args.hit_rate_threshold), indent=2))
        dense = write_dense_torchscript(tmp / "dense.pt", WIDTH)
        repo = tmp / "repo"
        kw = layout_kwargs(args.device)
        setup["build_repository keywords"] = json.dumps(kw)
        build_repository(ps_json, dense, repo, **kw)
        layouts = [("ensemble", "ensemble_model")]
        if not args.no_fused:
            build_repository(ps_json, dense, repo, layout="fused", ensemble_name="fused_model", **kw)
            layouts.append(("fused", "fused_model"))
        logs.append(tmp / "server.log")
        t0 = time.perf_counter()
        server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_path=logs[-1],
                              extra_args=SERVER_ARGS if args.device == "gpu" else ()).start()
        ps = hps.HPS(json.loads(ps_json.read_text()), show_progress=False)  # loads while the stubs load
        setup["in-process HPS load s"] = round(time.perf_counter() - t0, 2)
        try:
            server.wait_ready(600)
        except Exception:
            server = None
            publish(report, logs)
            raise ServerStartError(traceback.format_exc(limit=2)) from None
        setup["server ready s (loads in its stubs, beside the in-process load)"] = round(time.perf_counter() - t0, 2)
        module = torch.jit.load(str(dense), map_location=torch_device).eval()
        local = InProcess(ps, module, torch_device)
        rng = np.random.default_rng(0)
        pool = rng.choice(rows, size=min(POOL_KEYS, rows), replace=False).astype(np.int64)
        key_sets = {b: [pool[rng.integers(0, len(pool), (b, KEYS_PER_SAMPLE))] for _ in range(BATCHES_PER_SIZE)]
                    for b in batches}
        client = BinaryHttpClient(server.url_http)
        t0 = time.perf_counter()
        for _ in range(2):  # every batch twice through every path: all keys cached afterwards
            for b in batches:
                for keys in key_sets[b]:
                    for _, name in layouts:
                        client.infer(name, {"EMB_KEY": keys, "EMB_N_KEY": np.array([[keys.size]], np.int32)},
                                     ["DENSE_OUTPUT"])
                    local(keys)
        time.sleep(1.0)  # inserts of misses above the hit-rate threshold run in the background
        setup["warm-up s"] = round(time.perf_counter() - t0, 2)
        setup["GPU memory by pid MiB (after warm-up)"] = json.dumps(gpu_memory_by_pid())
        write(report, "setup", [{"step": k, "value": v} for k, v in setup.items()], prefix)

        def correctness() -> tuple[list[dict], str]:
            out = []
            for b in batches:
                keys = key_sets[b][0]
                got = client.infer(MODEL, {"KEYS": keys, "NUMKEYS": np.array([[keys.size]], np.int32)}, ["OUTPUT0"])
                vec = got["OUTPUT0"].reshape(-1, DIM)
                expect_vec = host_rows(keys.reshape(-1))
                expect_pred = local(keys)
                wrong = np.abs(vec - expect_vec).max(axis=1) > 0
                row = {"batch": b, "vectors max abs diff": float(np.abs(vec - expect_vec).max()),
                       "wrong rows": int(wrong.sum()),
                       "wrong rows all default (0)": int((vec[wrong] == 0).all(axis=1).sum()),
                       "in-process vectors max abs diff": float(np.abs(
                           local.vectors(keys).cpu().numpy().reshape(-1, DIM) - expect_vec).max())}
                for label, name in layouts:
                    pred = client.infer(name, {"EMB_KEY": keys, "EMB_N_KEY": np.array([[keys.size]], np.int32)},
                                        ["DENSE_OUTPUT"])["DENSE_OUTPUT"]
                    row[f"{label} predictions max abs diff"] = float(np.abs(pred.reshape(-1) - expect_pred.reshape(-1)).max())
                out.append(row)
                print(row, flush=True)
            return out, ("Vectors: hps_embedding (KEYS, NUMKEYS → OUTPUT0) over binary HTTP against the sparse "
                         "file's rows (bench_dlrm.host_rows); predictions: each layout against the same TorchScript "
                         f"model run in this process on {torch_device} on the same keys (after the warm-up: all hits).")

        section("correctness", correctness, prefix, report)

        latency_rows: list[dict] = []

        def latency_point(b: int, c: int) -> tuple[list[dict], str]:
            data = pa_input_file(tmp, b, key_sets[b])
            hugectr = {"HugeCTR ensemble ms (A100)": HUGECTR_ENSEMBLE_MS.get(b, float("nan")),
                       "HugeCTR TF plugin ms (A100)": HUGECTR_PLUGIN_MS.get(b, float("nan"))}
            before = local.measure(key_sets[b], c, args.inproc_s)
            served = []
            for label, name in layouts:
                for protocol in PROTOCOLS:
                    if left() < reserve:
                        print(f"budget: skipping {name} {protocol} {b} x{c}", flush=True)
                        continue
                    url = server.url_grpc if protocol == "grpc" else server.url_http
                    m = run_perf_analyzer(url, protocol, name, b, c, data, tmp, args.interval_ms, args.max_trials)
                    served.append({"path": f"Triton {name} ({label})", "protocol": protocol, "batch": b,
                                   "concurrency": c, **m})
                    print(served[-1], flush=True)
            after = local.measure(key_sets[b], c, args.inproc_s)
            base = {k: (before[k] + after[k]) / 2 for k in before}
            latency_rows.append({"path": f"in-process HPS.lookup + TorchScript ({torch_device})", "protocol": "-",
                                 "batch": b, "concurrency": c, **base, "vs in-process ms": 0.0, **hugectr})
            for row in served:
                row.update({"vs in-process ms": row["p50_ms"] - base["p50_ms"], **hugectr,
                            "x faster than HugeCTR ensemble": hugectr["HugeCTR ensemble ms (A100)"] / row["p50_ms"]})
            latency_rows.extend(served)
            latency_rows[:] = [{k: r.get(k, "-") for k in LATENCY_COLUMNS} for r in latency_rows]
            return latency_rows, (
                "p50 / p99: client-side latency of one request (perf_analyzer 2.51, binary tensors; in-process: wall "
                "time of host keys → predictions on the host, the mean of a window before and one after the served "
                "runs of that row). server_ms: Triton's server-side queue + compute (input, infer, output) averages, "
                "comparable with HugeCTR's server-side figures; net_ms: perf_analyzer's network + server send/receive. "
                "HTTP goes through hps's input guard (Triton 2.51 has no --http-max-input-size). Keys: 4 batches per "
                "size drawn from 1 M cached keys (all hits), like HugeCTR's same-batch-repeated runs. Targets: served "
                "p50 ≤ in-process p50 + 1 ms; ≥ 4× faster than HugeCTR's ensemble at 1,024 samples and above.")

        reserve = 15.0 + 55.0 * len([x for x in args.instances.split(",") if x.strip()])
        for c in concurrency:  # concurrency 1 at every batch first: the targets are read there
            for b in batches:
                section("latency", lambda: latency_point(b, c), prefix, report)
        publish(report, logs)
        client.close()
        ps.close()
        ps = local = None  # noqa: F841 - frees the in-process table and GPU cache before the instance runs
        server.stop()
        server = None
        torch.cuda.empty_cache()

        for n in [int(x) for x in args.instances.split(",") if x.strip()]:
            def instances(n: int = n) -> tuple[list[dict], str]:
                return instance_memory(ps_json, dense, tmp, n, args.device, logs, rows, min(1024, max_batch))
            if left() < 60:
                print(f"budget: skipping instances-{n}", flush=True)
                continue
            section(f"instances-{n}", instances, prefix, report)
    except ServerStartError as exc:
        print(exc, file=sys.stderr)
        sys.exit(3)
    finally:
        if server is not None:
            server.stop()
        publish(report, logs)
        shutil.rmtree(tmp, ignore_errors=True)


def instance_memory(ps_json: Path, dense: Path, tmp: Path, n: int, device: str, logs: list[Path],
                    rows: int, batch: int) -> tuple[list[dict], str]:
    """Serve the ensemble with `n` instances of hps_embedding (1 of the dense model where build_repository
    allows it) and a host tier they share; memory per stub process; one quick perf_analyzer run."""
    repo = tmp / f"repo-{n}"
    kw = layout_kwargs(device, n)
    params = inspect.signature(build_repository).parameters
    if "shared_host_tier" in params:
        kw["shared_host_tier"] = True
    build_repository(ps_json, dense, repo, **kw)
    tier = json.loads((repo / MODEL / f"{MODEL}.json").read_text()).get("volatile_db", {})
    logs.append(tmp / f"server-{n}.log")
    t0 = time.perf_counter()
    server = serve(repo, http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=600, log_path=logs[-1],
                   extra_args=SERVER_ARGS if device == "gpu" else ())
    ready_s = time.perf_counter() - t0
    try:
        rng = np.random.default_rng(1)
        keys = [rng.integers(0, min(rows, POOL_KEYS), (batch, KEYS_PER_SAMPLE)).astype(np.int64) for _ in range(4)]
        client = BinaryHttpClient(server.url_http)
        for _ in range(3 * n):  # reach every instance
            for k in keys:
                client.infer("ensemble_model", {"EMB_KEY": k, "EMB_N_KEY": np.array([[k.size]], np.int32)}, ["DENSE_OUTPUT"])
        client.close()
        pa = run_perf_analyzer(server.url_grpc, "grpc", "ensemble_model", batch, 8,
                               pa_input_file(tmp / f"repo-{n}", batch, keys), tmp, 1000, 3)
        gpu = gpu_memory_by_pid()
        out = []
        for pid, model in [(server.process.pid, "tritonserver")] + stub_processes(server.shm_prefix, repo):
            mem = host_memory_mib(pid)
            out.append({"process": model, "pid": pid, "GPU MiB": gpu.get(pid, 0.0), "RSS MiB": mem.get("Rss", 0.0),
                        "PSS MiB": mem.get("Pss", 0.0), "PSS shmem MiB": mem.get("Pss_Shmem", 0.0)})
        shm = subprocess.run(["df", "-m", "/dev/shm"], capture_output=True, text=True).stdout.splitlines()[-1].split()
        out.append({"process": "all", "pid": "-", "GPU MiB": sum(r["GPU MiB"] for r in out),
                    "RSS MiB": sum(r["RSS MiB"] for r in out), "PSS MiB": sum(r["PSS MiB"] for r in out),
                    "PSS shmem MiB": sum(r["PSS shmem MiB"] for r in out)})
        notes = (f"{n} instances of {MODEL} (KIND_{device.upper()}), volatile_db {tier.get('type')}; server ready in "
                 f"{ready_s:.1f} s; /dev/shm used {shm[2]} MiB of {shm[1]}. perf_analyzer gRPC {batch:,} samples, "
                 f"concurrency 8: p50 {pa['p50_ms']:.2f} ms, {pa['infer_per_s']:.0f} requests/s. GPU MiB: nvidia-smi's "
                 "per-process memory (CUDA context included); PSS counts each shared page once across processes.")
        return out, notes
    finally:
        server.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
