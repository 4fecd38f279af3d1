"""HugeCTR's three Triton samples (triton-inference-server/hugectr_backend, hps_backend/samples/), re-created
with our own small tables and dense models, converted with `hps triton convert` and served by the bundled
tritonserver, which has only the python backend:

  wdl      Hierarchical_Parameter_Server_Deployment.ipynb: `hps_wdl`, backend "hps", max_batch_size 1024,
           KEYS / NUMKEYS / OUTPUT0 dims [ -1 ], 2 tables (dims 1 and 16, 2 and 26 keys per sample),
           GPU instance, sparse files copied into 1/, the ps.json pointing at /hps_infer/... paths.
  tf       hps-triton-ensemble/02_model_inference_hps_tf_ensemble.ipynb: `hps_embedding` (backend "hps",
           dims [ -1, -1 ]) → `tf_reshape_dense_model` (platform tensorflow_savedmodel, input_1 [ -1 ] →
           output_1 [ -1, 1 ], 1/model.savedmodel, dynamic_batching) → `ensemble_model`.
  torch    HPS_Pytorch_ensemble_deployment.ipynb: `hps_test` (backend "hps", max_batch_size 32, dims [ -1 ],
           version 0) → `dense_test` (platform pytorch_libtorch, TorchScript 0/model.pt reshaping its flat
           input) → `ensemble_model` (max_batch_size 32); and its TensorRT variant (`dense_trt`), which
           cannot run here and must fail with a clear error, leaving nothing behind.

Every answer is compared with in-process lookups of the same tables and the dense model run in-process
by its own framework. Two servers for the module: wdl + tf (two repositories), torch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hps.cli.main import main as hps_main
from hps.model_format.writer import write_sparse_model

pytestmark = [pytest.mark.triton, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")]
http = pytest.importorskip("tritonclient.http")
tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

from hps.serving.triton import serve  # noqa: E402

HPS_WDL_CONFIG = """name: "hps_wdl"
backend: "hps"
max_batch_size:1024,
input [
  { name: "KEYS" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "NUMKEYS" data_type: TYPE_INT32 dims: [ -1 ] }
]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
version_policy: {
        specific:{versions: 1}
},
instance_group [ { count: 1 kind : KIND_GPU gpus:[0] } ]
"""

HPS_EMBEDDING_CONFIG = """name: "hps_embedding"
backend: "hps"
max_batch_size:0
input [
  { name: "KEYS" data_type: TYPE_INT64 dims: [ -1, -1] },
  { name: "NUMKEYS" data_type: TYPE_INT32 dims: [ -1, -1] }
]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1] } ]
version_policy: { specific:{versions: 1} },
instance_group [ { count: 1 kind : KIND_GPU gpus:[0] } ]
"""

TF_DENSE_CONFIG = """name: "tf_reshape_dense_model"
platform: "tensorflow_savedmodel"
max_batch_size:0
input [ { name: "input_1" data_type: TYPE_FP32 dims: [-1] } ]
output [ { name: "output_1" data_type: TYPE_FP32 dims: [-1, 1] } ]
version_policy: { specific:{versions: 1} },
instance_group [ { count: 1 kind : KIND_GPU gpus:[0] } ]
dynamic_batching {
    max_queue_delay_microseconds: 100
}
"""

ENSEMBLE_IO = """input [
  { name: "EMB_KEY" data_type: TYPE_INT64 dims: [ {dims} ] },
  { name: "EMB_N_KEY" data_type: TYPE_INT32 dims: [ {dims} ] }
]
output [ { name: "DENSE_OUTPUT" data_type: TYPE_FP32 dims: [ {out} ] } ]
"""

ENSEMBLE_STEPS = """ensemble_scheduling {
  step [
    { model_name: "{emb}" model_version: -1
      input_map { key: "KEYS" value: "EMB_KEY" }
      input_map { key: "NUMKEYS" value: "EMB_N_KEY" }
      output_map { key: "OUTPUT0" value: "LOOKUP_VECTORS" } },
    { model_name: "{dense}" model_version: -1
      input_map { key: "{dense_in}" value: "LOOKUP_VECTORS" }
      output_map { key: "{dense_out}" value: "DENSE_OUTPUT" } }
  ]
}
"""

HPS_TEST_CONFIG = """name: "hps_test"
backend: "hps"
max_batch_size:32,
input [
  { name: "KEYS" data_type: TYPE_INT64 dims: [-1] },
  { name: "NUMKEYS" data_type: TYPE_INT32 dims: [-1] }
]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
version_policy: { specific:{versions: 0} },
instance_group [ { count: 1 kind : KIND_GPU gpus:[0] } ]
parameters [
]
"""

TORCH_DENSE_CONFIG = """name: "dense_test"
platform: "pytorch_libtorch"
max_batch_size: 0
input: [ { name: "mlp.Linear_layer_1" data_type: TYPE_FP32 dims: [-1] } ]
output: [ { name: "prediction" data_type: TYPE_FP32 dims: [-1] } ]
"""

TRT_DENSE_CONFIG = """platform: "tensorrt_plan"
default_model_filename: "dense_dynamic.trt"
backend: "tensorrt"
max_batch_size: 0
input [ { name: "vectors" data_type: TYPE_FP32 dims: [1024] reshape: { shape: [32,32] } } ]
output [ { name: "prediction" data_type: TYPE_FP32 dims: [-1, 1] } ]
instance_group [ { kind: KIND_GPU } ]
"""


def ensemble_config(max_batch_size: int, dims: str, out: str, **steps: str) -> str:
    steps_text = ENSEMBLE_STEPS
    for key, value in steps.items():
        steps_text = steps_text.replace("{" + key + "}", value)
    return (f'name: "ensemble_model"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
            + ENSEMBLE_IO.replace("{dims}", dims).replace("{out}", out) + steps_text)


def table(path: Path, keys: np.ndarray, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((keys.size, dim)).astype(np.float32)
    write_sparse_model(path, keys.astype(np.int64), vectors)
    return vectors


def hps_model_entry(name: str, sparse: list[str], dims: list[int], maxnum: list[int], max_batch: int,
                    defaults: list[float], **extra) -> dict:
    return {"model": name, "sparse_files": sparse, "num_of_worker_buffer_in_pool": 3,
            "embedding_table_names": [f"{name}_{i}" for i in range(len(sparse))],
            "embedding_vecsize_per_table": dims, "maxnum_catfeature_query_per_table_per_sample": maxnum,
            "default_value_for_each_table": defaults, "deployed_device_list": [0], "max_batch_size": max_batch,
            "cache_refresh_percentage_per_iteration": 0.2, "gpucacheper": 1.0, "gpucache": True, **extra}


def convert(repo: Path, ps_json: Path, out: Path) -> Path:
    assert hps_main(["triton", "convert", str(repo), "--out", str(out), "--config", str(ps_json)]) == 0
    return out


class ReshapeDense(tf.Module):
    """The sample's ReshapeDenseModel: flat input_1 (-1,) → reshape (-1, 48) → MLP → output_1 (samples, 1)."""

    def __init__(self, width: int, seed: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.width = width
        self.w1 = tf.Variable(rng.standard_normal((width, 8)).astype(np.float32) / np.sqrt(width))
        self.w2 = tf.Variable(rng.standard_normal((8, 1)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="input_1")])
    def __call__(self, inputs):
        hidden = tf.nn.relu(tf.matmul(tf.reshape(inputs, [-1, self.width]), self.w1))
        return {"output_1": tf.sigmoid(tf.matmul(hidden, self.w2))}


class OnlyMLP(torch.nn.Module):
    """The sample's OnlyMLP: flat input reshaped to (-1, 32), Linear/ReLU layers, sigmoid score."""

    def __init__(self, dim: int):
        super().__init__()
        self.emb_dim = dim
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8),
                                       torch.nn.ReLU())
        self.predict = torch.nn.Sequential(torch.nn.Linear(8, 1), torch.nn.Sigmoid())

    def forward(self, x):
        return self.predict(self.mlp(x.reshape(-1, self.emb_dim)))


def make_wdl(root: Path) -> dict:
    repo = root / "embedding"
    version = repo / "hps_wdl" / "1"
    version.mkdir(parents=True)
    (repo / "hps_wdl" / "config.pbtxt").write_text(HPS_WDL_CONFIG)
    wide = table(version / "wdl0_sparse_20000.model", np.arange(0, 4000, 2), 1, seed=11)
    deep = table(version / "wdl1_sparse_20000.model", np.arange(100_000, 103_000), 16, seed=12)
    ps = {"supportlonglong": True,
          "volatile_db": {"type": "hash_map", "user_name": "default", "num_partitions": 8,
                          "max_get_batch_size": 100000, "max_set_batch_size": 100000,
                          "overflow_policy": "evict_oldest", "overflow_margin": 10000000,
                          "overflow_resolution_target": 0.8, "initial_cache_rate": 1.0},
          "persistent_db": {"type": "disabled"},
          "models": [hps_model_entry("hps_wdl", ["/hps_infer/embedding/hps_wdl/1/wdl0_sparse_20000.model",
                                                 "/hps_infer/embedding/hps_wdl/1/wdl1_sparse_20000.model"],
                                     [1, 16], [2, 26], 1024, [0.0, 0.0], hit_rate_threshold=0.9, gpucacheper=0.5)]}
    (root / "hps.json").write_text(json.dumps(ps, indent=4))
    return {"repo": repo, "ps_json": root / "hps.json", "wide": wide, "deep": deep}


def make_tf(root: Path) -> dict:
    repo = root / "hps_demo"
    for name in ("hps_embedding", "tf_reshape_dense_model", "ensemble_model"):
        (repo / name / "1").mkdir(parents=True)
    (repo / "hps_embedding" / "config.pbtxt").write_text(HPS_EMBEDDING_CONFIG)
    vectors = table(repo / "hps_embedding" / "1" / "naive_dnn_sparse.model", np.arange(1000), 16, seed=13)
    ps = {"supportlonglong": True, "models": [hps_model_entry(
        "hps_embedding", ["/hps_demo/hps_embedding/1/naive_dnn_sparse.model"], [16], [3], 65536, [1.0],
        hit_rate_threshold=1.0)]}
    ps_json = repo / "hps_embedding" / "hps_embedding.json"
    ps_json.write_text(json.dumps(ps, indent=4))
    (repo / "tf_reshape_dense_model" / "config.pbtxt").write_text(TF_DENSE_CONFIG)
    dense = ReshapeDense(48, seed=14)
    saved = repo / "tf_reshape_dense_model" / "1" / "model.savedmodel"
    tf.saved_model.save(dense, str(saved), signatures={"serving_default": dense.__call__})
    (repo / "ensemble_model" / "config.pbtxt").write_text(ensemble_config(
        0, "-1, -1", "-1, 1", emb="hps_embedding", dense="tf_reshape_dense_model", dense_in="input_1",
        dense_out="output_1"))
    return {"repo": repo, "ps_json": ps_json, "vectors": vectors, "saved": saved}


def make_torch(root: Path, trt: bool = False) -> dict:
    repo = root / "model"
    (repo / "hps_test" / "0").mkdir(parents=True)
    (repo / "hps_test" / "config.pbtxt").write_text(HPS_TEST_CONFIG)
    vectors = table(repo / "hps_test" / "0" / "hps_sparse.model", np.arange(1000), 32, seed=15)
    ps = {"models": [hps_model_entry("hps_test", ["model/hps_test/0/hps_sparse.model"], [32], [1], 32, [0.0],
                                     embedding_table_names=["0"], hit_rate_threshold=1.1,
                                     num_of_refresher_buffer_in_pool=0, cache_refresh_percentage_per_iteration=0)]}
    (repo / "hps.json").write_text(json.dumps(ps, indent=4))
    torch.manual_seed(16)
    (repo / "dense_test" / "0").mkdir(parents=True)
    (repo / "dense_test" / "config.pbtxt").write_text(TORCH_DENSE_CONFIG)
    torch.jit.script(OnlyMLP(32).eval()).save(str(repo / "dense_test" / "0" / "model.pt"))
    dense, dense_in = "dense_test", "mlp.Linear_layer_1"
    if trt:
        (repo / "dense_trt" / "0").mkdir(parents=True)
        (repo / "dense_trt" / "config.pbtxt").write_text(TRT_DENSE_CONFIG)
        (repo / "dense_trt" / "0" / "dense_dynamic.trt").write_bytes(b"a TensorRT engine")
        dense, dense_in = "dense_trt", "vectors"
    (repo / "ensemble_model" / "1").mkdir(parents=True)
    (repo / "ensemble_model" / "config.pbtxt").write_text(ensemble_config(
        32, "-1", "-1", emb="hps_test", dense=dense, dense_in=dense_in, dense_out="prediction"))
    return {"repo": repo, "ps_json": repo / "hps.json", "vectors": vectors,
            "torchscript": repo / "dense_test" / "0" / "model.pt"}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    wdl, tf_sample, torch_sample = make_wdl(root / "wdl"), make_tf(root / "tf"), make_torch(root / "torch")
    for sample in (wdl, tf_sample, torch_sample):
        sample["converted"] = convert(sample["repo"], sample["ps_json"], sample["repo"].parent / "converted")
    servers = []
    try:
        servers.append(serve(tf_sample["converted"], http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=240,
                             extra_args=[f"--model-repository={wdl['converted']}"]))
        servers.append(serve(torch_sample["converted"], http_port=0, grpc_port=0, metrics_port=0,
                             ready_timeout_s=240))
        clients = [http.InferenceServerClient(s.url_http) for s in servers]
        yield {"root": root, "wdl": wdl, "tf": tf_sample, "torch": torch_sample, "main": clients[0],
               "torch_client": clients[1]}
        for client in clients:
            client.close()
    finally:
        for server in servers:
            server.stop()


def infer(client, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    tensors = []
    for name, array in inputs.items():
        tensor = http.InferInput(name, list(array.shape), {np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32",
                                                           np.dtype(np.float32): "FP32"}[array.dtype])
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return client.infer(model, tensors, outputs=[http.InferRequestedOutput(output)]).as_numpy(output)


def in_process_lookup(converted: Path, model: str, per_table: list[np.ndarray]) -> np.ndarray:
    import hps

    with hps.HPS(converted / model / f"{model}.json", show_progress=False) as ps:
        return np.concatenate([ps.lookup(keys, model, t).reshape(-1) for t, keys in enumerate(per_table)])


def test_wdl_sample_two_tables_output0_is_1d(samples):
    """The sample's client: 10 samples, KEYS (1, 10×2 + 10×26) int64, NUMKEYS [[20, 260]] → OUTPUT0 (20×1 + 260×16,)."""
    wdl = samples["wdl"]
    rng = np.random.default_rng(1)
    wide_keys = rng.choice(np.arange(0, 4000, 2), 20)
    wide_keys[3] = 1                                     # a miss: default 0.0
    deep_keys = rng.integers(100_000, 103_000, 260)
    keys = np.concatenate([wide_keys, deep_keys]).reshape(1, -1).astype(np.int64)
    out = infer(samples["main"], "hps_wdl", {"KEYS": keys, "NUMKEYS": np.array([[20, 260]], np.int32)}, "OUTPUT0")
    assert out.shape == (20 * 1 + 260 * 16,) and out.dtype == np.float32   # 1-D, as HugeCTR's backend answers
    expected = in_process_lookup(wdl["converted"], "hps_wdl", [wide_keys, deep_keys])
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[:3], wdl["wide"][wide_keys[:3] // 2, 0])
    assert out[3] == 0.0
    np.testing.assert_array_equal(out[20:36], wdl["deep"][deep_keys[0] - 100_000])


def test_tf_ensemble_sample(samples):
    """The sample's mock request: EMB_KEY (1024, 3) int64, EMB_N_KEY [[3072]] → DENSE_OUTPUT (1024, 1)."""
    sample = samples["tf"]
    cfg = (sample["converted"] / "tf_reshape_dense_model" / "config.pbtxt").read_text()
    assert 'backend: "python"' in cfg and "tensorflow_savedmodel" not in cfg
    keys = np.random.default_rng(2).integers(1, 10, (1024, 3)).astype(np.int64)
    keys[5, 1] = 5000                                    # a miss: default 1.0
    out = infer(samples["main"], "ensemble_model",
                {"EMB_KEY": keys, "EMB_N_KEY": np.full((1, 1), 1024 * 3, np.int32)}, "DENSE_OUTPUT")
    vectors = in_process_lookup(sample["converted"], "hps_embedding", [keys.reshape(-1)])
    np.testing.assert_array_equal(vectors[(5 * 3 + 1) * 16:(5 * 3 + 2) * 16], np.ones(16, np.float32))
    loaded = tf.saved_model.load(str(sample["saved"]))
    expected = loaded.signatures["serving_default"](input_1=tf.constant(vectors))["output_1"].numpy()
    assert out.shape == (1024, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    direct = infer(samples["main"], "hps_embedding", {"KEYS": keys.reshape(1, -1),
                                                     "NUMKEYS": np.array([[3072]], np.int32)}, "OUTPUT0")
    assert direct.shape == (3072 * 16,)
    np.testing.assert_array_equal(direct, vectors)


def test_torch_ensemble_sample(samples):
    """The sample's requests: hps_test with KEYS (1, 32), NUMKEYS [[32]] → OUTPUT0 (1024,); the ensemble with
    EMB_KEY (1, 32) → DENSE_OUTPUT = the TorchScript dense model on the 32 looked-up vectors."""
    sample, client = samples["torch"], samples["torch_client"]
    keys = np.random.default_rng(3).integers(0, 999, (1, 32)).astype(np.int64)
    numkeys = np.array([[32]], np.int32)
    vectors = in_process_lookup(sample["converted"], "hps_test", [keys.reshape(-1)])
    direct = infer(client, "hps_test", {"KEYS": keys, "NUMKEYS": numkeys}, "OUTPUT0")
    assert direct.shape == (32 * 32,)
    np.testing.assert_array_equal(direct, vectors)
    np.testing.assert_array_equal(direct.reshape(32, 32), sample["vectors"][keys[0]])
    out = infer(client, "ensemble_model", {"EMB_KEY": keys, "EMB_N_KEY": numkeys}, "DENSE_OUTPUT")
    module = torch.jit.load(str(sample["torchscript"]))
    with torch.no_grad():
        expected = module(torch.from_numpy(vectors)).numpy()
    assert out.shape == expected.shape == (32, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    one = infer(client, "ensemble_model", {"EMB_KEY": np.array([[123]], np.int64),
                                           "EMB_N_KEY": np.array([[1]], np.int32)}, "DENSE_OUTPUT")
    with torch.no_grad():
        assert np.allclose(one, module(torch.from_numpy(sample["vectors"][123])).numpy(), rtol=1e-5, atol=1e-6)


def test_tensorrt_sample_fails_clearly_and_leaves_nothing(tmp_path, capsys):
    sample = make_torch(tmp_path / "trt", trt=True)
    out = tmp_path / "trt" / "converted"
    assert hps_main(["triton", "convert", str(sample["repo"]), "--out", str(out),
                     "--config", str(sample["ps_json"])]) == 2
    err = capsys.readouterr().err
    assert "dense_trt" in err and "'tensorrt' backend" in err and "hps triton build --dense" in err
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "trt").iterdir()) == ["model"]   # no temporary directory left
    # told that the target server has TensorRT, convert keeps the plan as it is
    assert hps_main(["triton", "convert", str(sample["repo"]), "--out", str(out), "--config",
                     str(sample["ps_json"]), "--backend", "tensorrt"]) == 0
    assert (out / "dense_trt" / "config.pbtxt").read_text() == TRT_DENSE_CONFIG


def test_failed_in_place_convert_changes_nothing(tmp_path):
    sample = make_torch(tmp_path / "trt", trt=True)
    before = {p: p.read_bytes() for p in sample["repo"].rglob("*") if p.is_file()}
    assert hps_main(["triton", "convert", str(sample["repo"]), "--config", str(sample["ps_json"])]) == 2
    after = {p: p.read_bytes() for p in sample["repo"].rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in (tmp_path / "trt").iterdir()) == ["model"]
    shutil.rmtree(sample["repo"] / "dense_trt")
    (sample["repo"] / "ensemble_model" / "config.pbtxt").write_text(ensemble_config(
        32, "-1", "-1", emb="hps_test", dense="dense_test", dense_in="mlp.Linear_layer_1", dense_out="prediction"))
    original = (sample["repo"] / "hps_test" / "config.pbtxt").read_text()
    assert hps_main(["triton", "convert", str(sample["repo"]), "--config", str(sample["ps_json"])]) == 0
    assert (sample["repo"] / "hps_test" / "config.pbtxt.hugectr").read_text() == original
    assert 'backend: "python"' in (sample["repo"] / "dense_test" / "config.pbtxt").read_text()
    assert sorted(p.name for p in (tmp_path / "trt").iterdir()) == ["model"]
