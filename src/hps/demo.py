"""`hps demo`: train a small recommendation model, split it, and serve it with hps, end to end.

It follows HugeCTR's HPS + Triton ensemble tutorial ("hps-triton-ensemble"): mock data with 3
categorical features (vocabularies [0,10000), [10000,20000), [20000,30000)); a DNN (embedding
30000×16 → Dense 256 → 128 → 1, Adam lr 0.1, 10 steps) trained with PyTorch on the CPU; the
embedding table written as an HPS sparse model and the dense layers as ONNX; a `ps.json` (hash_map
+ RocksDB in the output folder, the embedding cache: the CPU one without a GPU); lookups through
`hps.HPS` with the dense model in onnxruntime, then (with the triton extra) through Triton Inference
Server, each compared with the trained model's own predictions.

Everything is kept in the output folder (`./hps-demo` by default), ready for the README's snippet,
`hps inspect`, `hps lookup` and `hps triton serve`:

    hps-demo/ps.json                    the hps config (relative paths: the folder can be moved,
                                        except model_repository/, whose ps.json is absolute)
    hps-demo/naive_dnn_sparse.model/    the embedding table, HugeCTR's sparse model format
    hps-demo/naive_dnn_dense.onnx       the dense layers: input_1 (B, 48) float32 → output_1 (B, 1)
    hps-demo/rocksdb/                   the persistent tier
    hps-demo/model_repository/          a Triton repository: hps_embedding → dense_model → ensemble_model
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hps.errors import HpsError, require

SLOT_NUM = 3
EMBED_VEC_SIZE = 16
VOCABULARY_RANGE_PER_SLOT = ((0, 10000), (10000, 20000), (20000, 30000))
MAX_VOCABULARY_SIZE = 30000
MODEL_NAME = "hps_embedding"
TABLE_NAME = "sparse_embedding1"


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo writes its artefacts (the file names of HugeCTR's tutorial)."""

    root: Path

    @property
    def sparse_model(self) -> Path:
        return self.root / "naive_dnn_sparse.model"

    @property
    def dense_onnx(self) -> Path:
        return self.root / "naive_dnn_dense.onnx"

    @property
    def ps_json(self) -> Path:
        return self.root / "ps.json"

    @property
    def rocksdb(self) -> Path:
        return self.root / "rocksdb"

    @property
    def triton_repository(self) -> Path:
        return self.root / "model_repository"

    def claim(self) -> None:
        """Create the folder; refuse one that holds other files than an earlier demo's (it overwrites its own)."""
        if self.root.exists() and not self.root.is_dir():
            raise HpsError(f"hps demo: --out {self.root} is a file, not a folder")
        if self.root.is_dir() and any(self.root.iterdir()) and not self.ps_json.is_file():
            raise HpsError(f"hps demo: --out {self.root} is not empty and holds no earlier demo (no ps.json); "
                           "choose a new or empty folder")
        self.root.mkdir(parents=True, exist_ok=True)


def generate_random_samples(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's mock data: keys `(num_samples, 3) int64`, one key per slot range; labels `(num_samples, 1)`."""
    keys = np.stack([rng.integers(lo, hi, size=num_samples, dtype=np.int64)
                     for lo, hi in VOCABULARY_RANGE_PER_SLOT], axis=1)
    labels = rng.integers(0, 2, size=(num_samples, 1)).astype(np.float32)
    return keys, labels


def build_model():
    """The tutorial's DenseModel in PyTorch: embedding lookup → reshape (B, 48) → fc_1 → fc_2 → fc_3."""
    torch = require("torch", "torch")

    class DenseModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(MAX_VOCABULARY_SIZE, EMBED_VEC_SIZE)
            # The tutorial initialises every weight with ones; its logits then reach 1e5 and a float32 comparison
            # would measure GEMM rounding, not the serving path. Keras-like small initial values instead.
            torch.nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
            self.dense = torch.nn.Sequential(torch.nn.Linear(SLOT_NUM * EMBED_VEC_SIZE, 256),
                                             torch.nn.Linear(256, 128), torch.nn.Linear(128, 1))

        def forward(self, keys):
            return self.dense(self.embedding(keys).reshape(-1, SLOT_NUM * EMBED_VEC_SIZE))

    return DenseModel()


def train(global_batch_size: int, iter_num: int, seed: int = 0, log=print):
    """Train the tutorial's DNN for `iter_num` steps of `global_batch_size` samples (Adam lr 0.1, BCE with logits)."""
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

    write_from_torch(paths.sparse_model, model.embedding, overwrite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.dense, (torch.zeros(2, SLOT_NUM * EMBED_VEC_SIZE),), str(paths.dense_onnx),
                          input_names=["input_1"], output_names=["output_1"],
                          dynamic_axes={"input_1": {0: "batch"}, "output_1": {0: "batch"}}, dynamo=False)


def ps_config(sparse_model: str, rocksdb_path: str, max_batch_size: int = 65536) -> dict:
    """The ps.json of HugeCTR's tutorial (its notebook 02) for one sparse model, on hash_map + rocks_db
    (at `rocksdb_path`) and the embedding cache (the CPU one without a GPU). Relative paths are read
    relative to the ps.json's folder."""
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


DEFAULT_OUT = "hps-demo"


def run_demo(out_dir: str | Path | None = DEFAULT_OUT, global_batch_size: int = 8192, iter_num: int = 10,
             request_batch: int = 1024, num_requests: int = 200, with_triton: bool = True, log=print) -> float:
    """Run the whole demo, keep its artefacts in `out_dir` (default `./hps-demo`) and print its report.

    `out_dir` is created, or must be empty or hold an earlier demo (whose files are replaced).
    `global_batch_size` × `iter_num`: training samples; `num_requests` lookups of `request_batch`
    samples (× 3 keys) through `hps.HPS`; `with_triton`: also serve the Triton repository (needs the
    triton extra; the repository is written either way). Returns the max abs difference between the
    served and the trained model's predictions (the CLI fails above 1e-4)."""
    torch = require("torch", "torch")
    import hps
    from hps.serving.triton import build_repository
    from hps.serving.triton.dense_runner import DenseRunner

    paths = DemoPaths(Path(out_dir if out_dir is not None else DEFAULT_OUT))
    paths.claim()
    started = time.perf_counter()
    steps = 5 if with_triton else 4
    log(f"[1/{steps}] training a small recommendation model: 3 categorical features → embedding "
        f"{MAX_VOCABULARY_SIZE}×{EMBED_VEC_SIZE} → MLP 256-128-1; {iter_num} steps × {global_batch_size} samples "
        "(PyTorch, CPU)")
    model = train(global_batch_size, iter_num, log=log)
    log(f"[2/{steps}] splitting it into {paths.sparse_model.name} (the embedding table, HPS sparse model format), "
        f"{paths.dense_onnx.name} (the dense layers), {paths.ps_json.name} (the hps config) and "
        f"{paths.triton_repository.name}/ (a Triton repository)")
    export(model, paths)
    paths.ps_json.write_text(json.dumps(ps_config(paths.sparse_model.name, paths.rocksdb.name), indent=2) + "\n")
    build_repository(paths.ps_json, paths.dense_onnx, paths.triton_repository, overwrite=True)
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
        log(f"[4/{steps}] serving the same model through Triton Inference Server (ensemble hps_embedding → "
            "dense_model), HTTP and gRPC")
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
    log(f"  max abs diff between served and trained predictions: {max_diff:.3g}")
    log(f"  total time: {time.perf_counter() - started:.1f} s")
    log(f"artefacts kept in {paths.root}/:")
    log(f"  {paths.ps_json.name:<26} the hps config (model {MODEL_NAME}, table {TABLE_NAME}, dim {EMBED_VEC_SIZE})")
    log(f"  {paths.sparse_model.name + '/':<26} the embedding table (HugeCTR sparse model: key, emb_vector)")
    log(f"  {paths.dense_onnx.name:<26} the dense layers (ONNX)")
    log(f"  {paths.rocksdb.name + '/':<26} the persistent tier (RocksDB)")
    log(f"  {paths.triton_repository.name + '/':<26} Triton repository: hps_embedding → dense_model → ensemble_model")
    log("next:")
    log(f"  hps lookup {paths.ps_json} --model {MODEL_NAME} 3 10007 20011")
    log(f"  hps inspect {paths.ps_json}")
    log(f"  hps triton serve {paths.triton_repository}   (needs the triton extra)")
    return max_diff


def serve_through_triton(paths: DemoPaths, model, request_batch: int, log=print,
                         num_requests: int = 20) -> tuple[float, list[str]]:
    """Serve the demo's Triton repository (tritonserver on free ports), send the tutorial's requests over
    HTTP and gRPC.

    Returns the max abs diff against the native model and report lines (latency per protocol)."""
    torch = require("torch", "torch")
    httpclient = require("tritonclient.http", "triton")
    grpcclient = require("tritonclient.grpc", "triton")
    from hps.serving.triton import serve

    repo = paths.triton_repository
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
