"""`hps demo`: the seed notebook's pipeline end to end, on embedded defaults.

Generate the seed's mock data (3 slots, vocabularies [0,10000), [10000,20000),
[20000,30000)), train its DNN (embedding 30000×16 → Dense 256 → 128 → 1, Adam lr 0.1,
10 steps) with PyTorch on the CPU, split it into an HPS sparse model and an ONNX dense
model, write a ps.json (hash_map + rocks_db in the output folder, CPU cache), serve
lookups through `hps.HPS` with the dense model in onnxruntime, and compare with the
native model's predictions.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hps.errors import require

SLOT_NUM = 3
EMBED_VEC_SIZE = 16
VOCABULARY_RANGE_PER_SLOT = ((0, 10000), (10000, 20000), (20000, 30000))
MAX_VOCABULARY_SIZE = 30000
MODEL_NAME = "hps_embedding"
TABLE_NAME = "sparse_embedding1"


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo writes its artefacts (the seed's names)."""

    root: Path

    @property
    def sparse_model(self) -> Path:
        return self.root / "naive_dnn_sparse.model"

    @property
    def dense_onnx(self) -> Path:
        return self.root / "naive_dnn_dense.onnx"

    @property
    def ps_json(self) -> Path:
        return self.root / "hps_embedding.json"

    @property
    def rocksdb(self) -> Path:
        return self.root / "rocksdb"


def generate_random_samples(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The seed's mock data: keys `(num_samples, 3) int64`, one key per slot range; labels `(num_samples, 1)`."""
    keys = np.stack([rng.integers(lo, hi, size=num_samples, dtype=np.int64)
                     for lo, hi in VOCABULARY_RANGE_PER_SLOT], axis=1)
    labels = rng.integers(0, 2, size=(num_samples, 1)).astype(np.float32)
    return keys, labels


def build_model():
    """The seed's DenseModel in PyTorch: embedding lookup → reshape (B, 48) → fc_1 → fc_2 → fc_3."""
    torch = require("torch", "torch")

    class DenseModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(MAX_VOCABULARY_SIZE, EMBED_VEC_SIZE)
            # The seed initialises every weight with ones; its logits then reach 1e5 and a float32 comparison
            # would measure GEMM rounding, not the serving path. Keras-like small initial values instead.
            torch.nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
            self.dense = torch.nn.Sequential(torch.nn.Linear(SLOT_NUM * EMBED_VEC_SIZE, 256),
                                             torch.nn.Linear(256, 128), torch.nn.Linear(128, 1))

        def forward(self, keys):
            return self.dense(self.embedding(keys).reshape(-1, SLOT_NUM * EMBED_VEC_SIZE))

    return DenseModel()


def train(global_batch_size: int, iter_num: int, seed: int = 0, log=print):
    """Train the seed's DNN for `iter_num` steps of `global_batch_size` samples (Adam lr 0.1, BCE with logits)."""
    torch = require("torch", "torch")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    keys, labels = generate_random_samples(global_batch_size * iter_num, rng)
    for step in range(iter_num):
        batch = slice(step * global_batch_size, (step + 1) * global_batch_size)
        logits = model(torch.from_numpy(keys[batch]))
        loss = loss_fn(logits, torch.from_numpy(labels[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        log(f"  step {step}, loss: {loss.item():.6f}")
    return model.eval()


def export(model, paths: DemoPaths) -> None:
    """Split the trained model: embedding table → HPS sparse model; dense layers → ONNX (`input_1` (B, 48) → `output_1` (B, 1))."""
    import warnings

    torch = require("torch", "torch")
    from hps.model_format import write_from_torch

    write_from_torch(paths.sparse_model, model.embedding)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.dense, (torch.zeros(2, SLOT_NUM * EMBED_VEC_SIZE),), str(paths.dense_onnx),
                          input_names=["input_1"], output_names=["output_1"],
                          dynamic_axes={"input_1": {0: "batch"}, "output_1": {0: "batch"}}, dynamo=False)


def ps_config(sparse_model: str, rocksdb_path: str, max_batch_size: int = 65536) -> dict:
    """The ps.json of the seed's tutorial (notebook 02) for one sparse model, on hash_map + rocks_db
    (at `rocksdb_path`) and the embedding cache (the CPU one without a GPU)."""
    return {
        "supportlonglong": True,
        "volatile_db": {"type": "hash_map", "num_partitions": 4, "update_filters": [".+"]},
        "persistent_db": {"type": "rocks_db", "path": rocksdb_path, "update_filters": [".+"]},
        "models": [{
            "model": MODEL_NAME,
            "sparse_files": [sparse_model],
            "num_of_worker_buffer_in_pool": 3,
            "embedding_table_names": [TABLE_NAME],
            "embedding_vecsize_per_table": [EMBED_VEC_SIZE],
            "maxnum_catfeature_query_per_table_per_sample": [SLOT_NUM],
            "default_value_for_each_table": [1.0],
            "deployed_device_list": [0],
            "max_batch_size": max_batch_size,
            "cache_refresh_percentage_per_iteration": 0.2,
            "hit_rate_threshold": 1.0,
            "gpucacheper": 1.0,
            "gpucache": True,
        }],
    }


def run_demo(out_dir: str | Path | None = None, global_batch_size: int = 8192, iter_num: int = 10,
             request_batch: int = 1024, num_requests: int = 200, with_triton: bool = True, log=print) -> float:
    """Run the whole demo and print its report; returns the max abs diff (must be < 1e-4)."""
    torch = require("torch", "torch")
    import hps
    from hps.serving.triton.dense_runner import DenseRunner

    with tempfile.TemporaryDirectory(prefix="hps-demo-") as tmp:
        paths = DemoPaths(Path(out_dir) if out_dir else Path(tmp))
        paths.root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        steps = 5 if with_triton else 4
        log(f"[1/{steps}] training the seed's DNN: {iter_num} steps × {global_batch_size} samples (PyTorch, CPU)")
        model = train(global_batch_size, iter_num, log=log)
        log(f"[2/{steps}] splitting it: {paths.sparse_model.name} (HPS sparse model) + {paths.dense_onnx.name} (ONNX)")
        export(model, paths)
        paths.ps_json.write_text(json.dumps(ps_config(str(paths.sparse_model), str(paths.rocksdb)), indent=2))
        log(f"[3/{steps}] serving {num_requests} requests of {request_batch} samples × {SLOT_NUM} keys through hps.HPS "
            "+ onnxruntime")
        dense = DenseRunner(paths.dense_onnx)  # the served models' onnxruntime settings (no spin-waiting)
        rng = np.random.default_rng(1)
        requests, answers, latencies = [], [], []
        with hps.HPS(str(paths.ps_json), show_progress=False) as ps:
            for _ in range(num_requests):
                keys, _ = generate_random_samples(request_batch, rng)
                t0 = time.perf_counter()
                vectors = ps.lookup(keys, MODEL_NAME, 0)
                latencies.append(time.perf_counter() - t0)
                requests.append(keys)
                answers.append(dense(vectors))
            stats = ps.stats()["models"][MODEL_NAME][TABLE_NAME]
            rows = ps.volatile.size(f"hps_et.{MODEL_NAME}.{TABLE_NAME}")
        with torch.no_grad():  # the native model afterwards: its thread pool stays out of the timed lookups
            max_diff = max(float(np.abs(served - model(torch.from_numpy(keys)).numpy()).max())
                           for keys, served in zip(requests, answers))
        triton_lines = []
        if with_triton:
            log(f"[4/{steps}] serving the same model as a Triton ensemble (hps_embedding → dense_model), HTTP and gRPC")
            triton_diff, triton_lines = serve_through_triton(paths, model, request_batch, log)
            max_diff = max(max_diff, triton_diff)
        log(f"[{steps}/{steps}] report")
        p50, p99 = np.percentile(np.array(latencies) * 1e6, [50, 99])
        rates = ", ".join(f"{level} {rate:.1%}" for level, rate in stats["hit_rate"].items())
        log(f"  rows loaded: {rows} (volatile hash_map), {MAX_VOCABULARY_SIZE} in the sparse model")
        log(f"  hit rates: {rates}")
        log(f"  hps.HPS lookup latency ({request_batch * SLOT_NUM} keys): p50 {p50:.0f} µs, p99 {p99:.0f} µs")
        for line in triton_lines:
            log(f"  {line}")
        log(f"  max abs diff: {max_diff:.3g}")
        log(f"  total time: {time.perf_counter() - started:.1f} s")
        if out_dir:
            log(f"  artefacts (sparse model, ONNX, ps.json, RocksDB, Triton repository): {paths.root}")
        return max_diff


def serve_through_triton(paths: DemoPaths, model, request_batch: int, log=print,
                         num_requests: int = 20) -> tuple[float, list[str]]:
    """Build a Triton repository, start tritonserver, send the seed's requests over HTTP and gRPC.

    Returns the max abs diff against the native model and report lines (latency per protocol)."""
    torch = require("torch", "torch")
    httpclient = require("tritonclient.http", "triton")
    grpcclient = require("tritonclient.grpc", "triton")
    from hps.serving.triton import build_repository, serve

    repo = build_repository(paths.ps_json, paths.dense_onnx, paths.root / "model_repository", overwrite=True)
    rng = np.random.default_rng(2)
    max_diff, lines = 0.0, []
    with serve(repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        for proto, module, url in (("HTTP", httpclient, server.url_http), ("gRPC", grpcclient, server.url_grpc)):
            client = module.InferenceServerClient(url=url)
            latencies = []
            for _ in range(num_requests):
                keys, _ = generate_random_samples(request_batch, rng)
                inputs = [module.InferInput("EMB_KEY", list(keys.shape), "INT64"),
                          module.InferInput("EMB_N_KEY", [1, 1], "INT32")]
                inputs[0].set_data_from_numpy(keys)
                inputs[1].set_data_from_numpy(np.array([[keys.size]], dtype=np.int32))
                t0 = time.perf_counter()
                result = client.infer("ensemble_model", inputs,
                                      outputs=[module.InferRequestedOutput("DENSE_OUTPUT")])
                latencies.append(time.perf_counter() - t0)
                served = result.as_numpy("DENSE_OUTPUT")
                with torch.no_grad():
                    native = model(torch.from_numpy(keys)).numpy()
                max_diff = max(max_diff, float(np.abs(served - native).max()))
            client.close()
            p50, p99 = np.percentile(np.array(latencies) * 1e3, [50, 99])
            lines.append(f"Triton ensemble over {proto} ({request_batch} samples): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    log("  tritonserver stopped")
    return max_diff, lines
