"""The GPU deployment (`build_repository(device="gpu")`), on a machine without a GPU.

What can run without a GPU runs here: the configs written (KIND_GPU instances, the python backend's
FORCE_CPU_ONLY_INPUT_TENSORS "no", a host tier the instances share in the ps.json), the memory each
instance takes, the torch / DLPack request path in process, and a real tritonserver serving the GPU
layout with its instances switched to KIND_CPU (the one thing a GPU-less Triton refuses): the models
then take their tensors through DLPack on the CPU, the same code the GPU runs, and answer exactly the
sparse files' vectors and the dense model's predictions; two instances map one shared host tier.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import hps
from hps.config import load_config
from hps.serving.triton import build_repository
from hps.serving.triton.dense_runner import DenseRunner
from hps.serving.triton.embedding_io import (EmbeddingSpec, lookup_request, lookup_request_tensor, make_request)
from hps.serving.triton.errors import RepositoryError, RequestError
from hps.serving.triton.gpu_layout import instance_memory, shared_memory_bytes
from hps.serving.triton.repository import add_model_to_repository
from hps.sizing import cache_table_bytes
from tests.serving.conftest import write_dense_onnx, write_ps_json, write_table

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda:0" if ON_GPU else "cpu"


def write_dense_torchscript(path: Path, width: int, hidden: int = 32, seed: int = 0) -> Path:
    """A small MLP (width → hidden → 1, ReLU, sigmoid) as TorchScript (the GPU layout's dense model)."""
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1),
                                torch.nn.Sigmoid())
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    torch.jit.script(model.eval()).save(str(path))
    return path


def read(repo: Path, model: str) -> str:
    return (repo / model / "config.pbtxt").read_text()


def ps_of(repo: Path, model: str, hps_model: str | None = None) -> dict:
    """The ps.json written for Triton model `model` (named after the hps model it serves)."""
    return json.loads((repo / model / f"{hps_model or model}.json").read_text())


@pytest.fixture(scope="module")
def dense_pt(seed_model) -> Path:
    return write_dense_torchscript(seed_model["root"] / "naive_dnn_dense.pt", 48)


# --- configs ------------------------------------------------------------------------------------


def test_gpu_layout_configs(seed_model, dense_pt, tmp_path):
    repo = build_repository(seed_model["ps_json"], dense_pt, tmp_path / "repo", device="gpu", instance_count=3,
                            dense_instance_count=1)
    emb, dense = read(repo, "hps_embedding"), read(repo, "dense_model")
    assert "instance_group [ { count: 3 kind: KIND_GPU gpus: [ 0 ] } ]" in emb
    assert "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]" in dense
    for text in (emb, dense):
        assert 'parameters { key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no" } }' in text
        assert "KIND_CPU" not in text
    assert "dense_file" in dense and "naive_dnn_dense.pt" in dense
    assert 'platform: "ensemble"' in read(repo, "ensemble_model")
    # the CPU layout is as it was: KIND_CPU, inputs forced to the host, one tier per instance
    cpu = build_repository(seed_model["ps_json"], dense_pt, tmp_path / "cpu", instance_count=3)
    for model in ("hps_embedding", "dense_model"):
        assert "instance_group [ { count: 3 kind: KIND_CPU } ]" in read(cpu, model)
        assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in read(cpu, model)
    assert ps_of(cpu, "hps_embedding")["volatile_db"]["type"] == "hash_map"


def test_gpu_fused_layout_and_chosen_gpus(seed_model, dense_pt, tmp_path):
    repo = build_repository(seed_model["ps_json"], dense_pt, tmp_path / "repo", layout="fused", device="gpu",
                            gpus=[1, 3], instance_count=2)
    text = read(repo, "ensemble_model")
    assert "instance_group [ { count: 2 kind: KIND_GPU gpus: [ 1, 3 ] } ]" in text
    assert 'string_value: "no"' in text and 'name: "EMB_KEY"' in text and "naive_dnn_dense.pt" in text
    with pytest.raises(RepositoryError, match="device must be one of"):
        build_repository(seed_model["ps_json"], dense_pt, tmp_path / "x", device="tpu")
    with pytest.raises(RepositoryError, match="gpus \\[0\\] given for device 'cpu'"):
        build_repository(seed_model["ps_json"], dense_pt, tmp_path / "y", gpus=[0])
    with pytest.raises(RepositoryError, match="distinct GPU ids"):
        build_repository(seed_model["ps_json"], dense_pt, tmp_path / "z", device="gpu", gpus=[0, 0])


def test_instances_share_the_host_tier(seed_model, dense_pt, tmp_path):
    two = build_repository(seed_model["ps_json"], dense_pt, tmp_path / "two", device="gpu", instance_count=2)
    volatile = ps_of(two, "hps_embedding")["volatile_db"]
    assert volatile["type"] == "multi_process_hash_map" and volatile["num_partitions"] == 2  # the user's keys kept
    assert volatile["initialize_after_startup"] is True and volatile["shared_memory_auto_remove"] is True
    assert re.fullmatch(r"hps_hps_embedding_[0-9a-f]{8}", volatile["shared_memory_name"])
    config = load_config(seed_model["ps_json"])
    assert volatile["shared_memory_size"] == shared_memory_bytes(config.models[0], 2)
    assert volatile["shared_memory_size"] > 30000 * (16 * 4 + 16)  # the rows and their slots fit
    again = build_repository(seed_model["ps_json"], dense_pt, tmp_path / "again", device="gpu", instance_count=4)
    assert ps_of(again, "hps_embedding")["volatile_db"]["shared_memory_name"] != volatile["shared_memory_name"]
    # one instance keeps its in-process map; so does a user who says no; a CPU deployment may ask for it
    one = build_repository(seed_model["ps_json"], dense_pt, tmp_path / "one", device="gpu")
    assert ps_of(one, "hps_embedding")["volatile_db"]["type"] == "hash_map"
    no = build_repository(seed_model["ps_json"], dense_pt, tmp_path / "no", device="gpu", instance_count=2,
                          shared_host_tier=False)
    assert ps_of(no, "hps_embedding")["volatile_db"]["type"] == "hash_map"
    cpu = build_repository(seed_model["ps_json"], dense_pt, tmp_path / "cpu", instance_count=2, shared_host_tier=True)
    assert ps_of(cpu, "hps_embedding")["volatile_db"]["type"] == "multi_process_hash_map"
    fused = build_repository(seed_model["ps_json"], dense_pt, tmp_path / "fused", device="gpu", instance_count=2,
                             layout="fused", ensemble_name="fused_model")
    assert ps_of(fused, "fused_model", "hps_embedding")["volatile_db"]["type"] == "multi_process_hash_map"


@pytest.mark.parametrize("volatile, kept", [
    ({"type": "redis_cluster", "address": "127.0.0.1:7000"}, "redis_cluster"),
    ({"type": "multi_process_hash_map", "shared_memory_name": "mine"}, "multi_process_hash_map"),
    (None, "multi_process_hash_map"),  # no volatile_db: hps would keep the rows in each instance
])
def test_shared_host_tier_from_the_users_config(seed_model, dense_pt, tmp_path, volatile, kept):
    raw = json.loads(Path(seed_model["ps_json"]).read_text())
    raw["models"][0]["sparse_files"] = [str(seed_model["root"] / "naive_dnn_sparse.model")]
    if volatile is None:
        raw.pop("volatile_db")
    else:
        raw["volatile_db"] = volatile
    (tmp_path / "ps.json").write_text(json.dumps(raw))
    repo = build_repository(tmp_path / "ps.json", dense_pt, tmp_path / "repo", device="gpu", instance_count=2)
    written = ps_of(repo, "hps_embedding")["volatile_db"]
    assert written["type"] == kept
    if volatile is not None:
        assert written == volatile  # the user's shared tier as they wrote it


def test_lazy_volatile_tier_in_front_of_rocksdb_stays_per_instance(seed_model, dense_pt, tmp_path):
    raw = json.loads(Path(seed_model["ps_json"]).read_text())
    raw["models"][0]["sparse_files"] = [str(seed_model["root"] / "naive_dnn_sparse.model")]
    raw["volatile_db"].update(initialize_after_startup=False, cache_missed_embeddings=True)
    raw["persistent_db"] = {"type": "rocks_db", "path": str(tmp_path / "rocks"), "read_only": True}
    (tmp_path / "ps.json").write_text(json.dumps(raw))
    repo = build_repository(tmp_path / "ps.json", dense_pt, tmp_path / "repo", device="gpu", instance_count=2)
    assert ps_of(repo, "hps_embedding")["volatile_db"] == raw["volatile_db"]


def test_static_cache_needs_no_host_tier(seed_model, dense_pt, tmp_path):
    raw = json.loads(Path(seed_model["ps_json"]).read_text())
    raw["models"][0].update(gpucache=True, use_static_table=True,
                            sparse_files=[str(seed_model["root"] / "naive_dnn_sparse.model")])
    (tmp_path / "ps.json").write_text(json.dumps(raw))
    repo = build_repository(tmp_path / "ps.json", dense_pt, tmp_path / "repo", device="gpu", instance_count=2)
    assert ps_of(repo, "hps_embedding")["volatile_db"]["type"] == "hash_map"


def test_memory_per_instance(seed_model):
    raw = json.loads(Path(seed_model["ps_json"]).read_text())
    raw["models"][0].update(gpucache=True, gpucacheper=0.5, deployed_device_list=[0, 1],
                            sparse_files=[str(seed_model["root"] / "naive_dnn_sparse.model")])
    config = load_config(raw)
    one_gpu_cache = cache_table_bytes(15000, 16, whole_table=False)  # 30,000 rows × 0.5 on one GPU
    shared = instance_memory(config, "hps_embedding", 4)
    assert shared.gpu_cache_bytes_per_instance == one_gpu_cache and shared.gpu_bytes == 4 * one_gpu_cache
    assert shared.host_tier_copies == 1 and shared.host_tier == "multi_process_hash_map"
    assert 30000 * 64 < shared.host_tier_bytes == shared.host_bytes < 30000 * 64 * 2
    private = instance_memory(config, "hps_embedding", 4, shared=False)
    assert private.host_tier_copies == 4 and private.host_bytes == 4 * shared.host_tier_bytes
    assert instance_memory(config, "hps_embedding", 1).host_tier_copies == 1
    with pytest.raises(RepositoryError, match="at least 1"):
        instance_memory(config, "hps_embedding", 0)


def test_cli_build_flags(seed_model, dense_pt, tmp_path, capsys):
    from hps.cli.main import main

    repo = tmp_path / "repo"
    assert main(["triton", "build", "--config", str(seed_model["ps_json"]), "--dense", str(dense_pt), "--out",
                 str(repo), "--device", "gpu", "--instances", "2", "--dense-instances", "1", "--gpus", "0"]) == 0
    assert "count: 2 kind: KIND_GPU gpus: [ 0 ]" in read(repo, "hps_embedding")
    assert "count: 1 kind: KIND_GPU gpus: [ 0 ]" in read(repo, "dense_model")
    assert ps_of(repo, "hps_embedding")["volatile_db"]["type"] == "multi_process_hash_map"
    out = capsys.readouterr().out
    assert "GPU cache" in out and "per instance" in out
    assert main(["triton", "build", "--config", str(seed_model["ps_json"]), "--dense", str(dense_pt), "--out",
                 str(tmp_path / "b"), "--device", "gpu", "--instances", "2", "--no-shared-host-tier"]) == 0
    assert ps_of(tmp_path / "b", "hps_embedding")["volatile_db"]["type"] == "hash_map"
    other = write_ps_json(tmp_path / "other.json", "other", [str(seed_model["root"] / "naive_dnn_sparse.model")],
                          [16], [1])
    assert main(["triton", "add-model", str(repo), "--config", str(other), "--device", "gpu", "--instances", "2"]) == 0
    assert "count: 2 kind: KIND_GPU gpus: [ 0 ]" in read(repo, "other")
    assert ps_of(repo, "other")["volatile_db"]["type"] == "multi_process_hash_map"


def test_cli_serve_cuda_memory_pool(monkeypatch, tmp_path, capsys):
    import hps.serving.triton as triton
    from hps.cli.main import main

    seen = {}
    monkeypatch.setattr(triton, "serve_forever", lambda repo, **kw: seen.update(kw) or 0)
    assert main(["triton", "serve", str(tmp_path), "--cuda-memory-pool", "0:2147483648",
                 "--cuda-memory-pool", "1:1024"]) == 0
    assert seen["extra_args"] == ["--cuda-memory-pool-byte-size=0:2147483648", "--cuda-memory-pool-byte-size=1:1024"]
    assert main(["triton", "serve", str(tmp_path), "--cuda-memory-pool", "2GiB"]) == 2
    assert "must be GPU:BYTES" in capsys.readouterr().err


# --- the torch / DLPack request path, in process -------------------------------------------------


def test_torch_request_path_equals_the_numpy_one(seed_model):
    ps = hps.HPS(seed_model["ps_json"], show_progress=False)
    try:
        spec = EmbeddingSpec.from_model_config(ps.config.model("hps_embedding"))
        keys = np.random.default_rng(3).integers(0, 30000, (8, 3)).astype(np.int64)
        keys[0, 0] = 77_777_777  # a miss: the default value
        numkeys = np.array([[keys.size]], np.int32)
        expected = lookup_request(keys, numkeys, spec, lambda k, t: ps.lookup(k, "hps_embedding", t))
        calls = []

        def lookup(k, t, out):
            calls.append((k.dtype, k.device.type, out))
            return ps.lookup(k, "hps_embedding", t, out=out)

        # int32 keys (a client may send them through a cast): one int64 copy, then the same answer
        got = lookup_request_tensor(torch.from_numpy(keys.astype(np.int32)), numkeys, spec, lookup, device="cpu")
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (8 * 3 * 16,)
        np.testing.assert_array_equal(got.numpy(), expected)
        assert calls == [(torch.int64, "cpu", None)]
        np.testing.assert_array_equal(got.numpy()[:16], np.full(16, 0.5, np.float32))
        np.testing.assert_array_equal(got.numpy()[16:32], seed_model["vectors"][keys[0, 1]])
        empty = lookup_request_tensor(torch.empty((1, 0), dtype=torch.int64), np.array([[0]], np.int32), spec, lookup)
        assert empty.shape == (0,)
        with pytest.raises(RequestError, match="adds up to 3 keys but KEYS holds 24"):
            lookup_request_tensor(torch.from_numpy(keys), np.array([[3]], np.int32), spec, lookup)
        with pytest.raises(RequestError, match="KEYS must be INT64"):
            lookup_request_tensor(torch.zeros(3), np.array([[3]], np.int32), spec, lookup)
    finally:
        ps.close()


@pytest.mark.parametrize("fused", [False, True])
def test_torch_request_path_several_tables(tmp_path, fused):
    """Table-major OUTPUT0 from torch keys: per table into views of one output, or one lookup_many pass."""
    a = write_table(tmp_path / "a.model", np.arange(0, 100), 8, seed=1)
    b = write_table(tmp_path / "b.model", np.arange(1000, 1200), 8, seed=2)
    c = write_table(tmp_path / "c.model", np.arange(5000, 5050), 4, seed=3)
    path = write_ps_json(tmp_path / "m.json", "m", ["a.model", "b.model", "c.model"], [8, 8, 4], [2, 3, 1])
    raw = json.loads(path.read_text())
    raw["fuse_embedding_table"] = fused
    ps = hps.HPS(_with_paths(raw, tmp_path), show_progress=False)
    try:
        spec = EmbeddingSpec.from_model_config(ps.config.model("m"))
        ka, kb, kc = np.array([3, 99, 4]), np.array([1000, 1199, 777_777, 1001]), np.array([5049, 5000])
        keys, numkeys = make_request([ka, kb, kc])
        used = []

        def lookup(k, t, out):
            used.append("lookup")
            return ps.lookup(k, "m", t, out=out)

        def many(keys_per_table, table_ids):
            used.append(("many", tuple(table_ids)))
            return ps.lookup_many(keys_per_table, "m", table_ids)

        got = lookup_request_tensor(torch.from_numpy(keys), numkeys, spec, lookup,
                                    lookup_many=many if fused else None).numpy()
        expected = np.concatenate([a[[3, 99, 4]].ravel(), b[[0, 199]].ravel(), np.full(8, 0.5, np.float32),
                                   b[[1]].ravel(), c[[49, 0]].ravel()])
        np.testing.assert_array_equal(got, expected)
        assert used == ([("many", (0, 1, 2))] if fused else ["lookup"] * 3)
        # a table with no keys in the request
        keys, numkeys = make_request([ka, [], kc])
        got = lookup_request_tensor(torch.from_numpy(keys), numkeys, spec, lookup,
                                    lookup_many=many if fused else None).numpy()
        np.testing.assert_array_equal(got, np.concatenate([a[[3, 99, 4]].ravel(), c[[49, 0]].ravel()]))
    finally:
        ps.close()


def _with_paths(raw: dict, root: Path) -> dict:
    raw["models"][0]["sparse_files"] = [str(root / p) for p in raw["models"][0]["sparse_files"]]
    return raw


def test_dense_runner_tensors(seed_model, dense_pt):
    flat = np.random.default_rng(5).standard_normal(7 * 48).astype(np.float32)
    ts = DenseRunner(dense_pt, width=48)
    out = ts.run_tensor(torch.from_numpy(flat))
    assert isinstance(out, torch.Tensor) and out.shape == (7, 1) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), ts(flat))
    assert ts.on_gpu is False and ts.note is None
    onnx = DenseRunner(write_dense_onnx(seed_model["root"] / "fixed.onnx", 48, batch=4), width=48)
    np.testing.assert_allclose(onnx.run_tensor(torch.from_numpy(flat)).numpy(), onnx(flat), rtol=1e-6)
    with pytest.raises(RequestError, match="not a whole number of samples"):
        ts.run_tensor(torch.zeros(50))
    with pytest.raises(RequestError, match="must be FP32"):
        ts.run_tensor(torch.zeros(48, dtype=torch.float64))
    with pytest.raises(RepositoryError, match="device must be"):
        DenseRunner(dense_pt, width=48, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RepositoryError, match="sees no CUDA device"):
            DenseRunner(dense_pt, width=48, device="cuda:0")
    else:  # TorchScript on the GPU: GPU tensors in and out
        gpu = DenseRunner(dense_pt, width=48, device="cuda:0")
        answer = gpu.run_tensor(torch.from_numpy(flat).to("cuda:0"))
        assert gpu.on_gpu and answer.is_cuda and answer.shape == (7, 1)
        np.testing.assert_allclose(answer.cpu().numpy(), ts(flat), rtol=1e-5, atol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    onnx_gpu = DenseRunner(seed_model["dense"], width=48, device="cuda:0") if (
        torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers()) else None
    if onnx_gpu is not None:
        source = torch.from_numpy(flat).to(DEVICE)
        if "CUDAExecutionProvider" in ort.get_available_providers():  # bound to GPU memory
            assert onnx_gpu.on_gpu and onnx_gpu.run_tensor(source).is_cuda
        else:  # on the CPU, said once
            assert not onnx_gpu.on_gpu and "no CUDAExecutionProvider" in onnx_gpu.note
        np.testing.assert_allclose(onnx_gpu.run_tensor(source).cpu().numpy(), onnx_gpu(flat), rtol=1e-5, atol=1e-6)


# HugeCTR's style of repository (reference §4): the hps backend on a GPU, a TorchScript dense model in
# Triton's pytorch backend, the ensemble; `convert_hugectr_repository(device="gpu")` keeps the GPU instances
HUGECTR_WDL = """name: "wdl"
backend: "hps"
max_batch_size: 0
input [ { name: "KEYS" data_type: TYPE_INT64 dims: [ -1, -1 ] },
        { name: "NUMKEYS" data_type: TYPE_INT32 dims: [ -1, -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
version_policy: { specific: { versions: 1 } }
instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0 ] } ]
parameters [ { key: "refresh_interval" value: { string_value: "0" } } ]
"""
HUGECTR_DENSE = """name: "wdl_dense"
platform: "pytorch_libtorch"
max_batch_size: 0
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ -1, 1 ] } ]
instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]
"""
WDL_WIDTH = 2 * 4 + 26 * 8  # floats per sample of the wdl model's OUTPUT0


class RowSums(torch.nn.Module):
    def forward(self, x):
        return (x.reshape(-1, 216) * 0.5).sum(1, keepdim=True)


def write_hugectr_wdl(root: Path) -> dict:
    """A HugeCTR repository (wdl: 2 tables, dims 4 and 8; wdl_dense: TorchScript; wdl_ensemble) + its ps.json."""
    from hps.serving.triton import config_text

    repo = root / "hugectr"
    (repo / "wdl" / "1").mkdir(parents=True)
    wide = write_table(repo / "wdl" / "1" / "wdl_wide.model", np.arange(0, 1000, 2), 4, seed=5)
    deep = write_table(repo / "wdl" / "1" / "wdl_deep.model", np.arange(10_000, 12_000), 8, seed=6)
    (repo / "wdl" / "config.pbtxt").write_text(HUGECTR_WDL)
    (repo / "wdl_dense" / "1").mkdir(parents=True)
    torch.jit.script(RowSums()).save(str(repo / "wdl_dense" / "1" / "model.pt"))
    (repo / "wdl_dense" / "config.pbtxt").write_text(HUGECTR_DENSE)
    (repo / "wdl_ensemble" / "1").mkdir(parents=True)
    (repo / "wdl_ensemble" / "config.pbtxt").write_text(config_text.ensemble_config(
        "wdl_ensemble", "wdl", "wdl_dense", dense_input="INPUT__0", dense_output="OUTPUT__0"))
    ps = write_ps_json(root / "hugectr_ps.json", "wdl", ["/models/wdl/1/wdl_wide.model",
                       "/models/wdl/1/wdl_deep.model"], [4, 8], [2, 26], max_batch_size=10, defaults=[0.25, -1.0])
    raw = json.loads(ps.read_text())
    raw["volatile_db"] = {"type": "redis_cluster", "address": "127.0.0.1:7000"}  # not connected: only written
    (root / "redis_ps.json").write_text(json.dumps(raw))
    return {"repo": repo, "ps_json": ps, "wide": wide, "deep": deep}


def test_convert_hugectr_repository_for_the_gpu(tmp_path):
    from hps.serving.triton import convert_hugectr_repository

    wdl = write_hugectr_wdl(tmp_path)
    assert convert_hugectr_repository(wdl["repo"], tmp_path / "gpu", wdl["ps_json"], backends={"python"},
                                      device="gpu") == ["wdl", "wdl_dense"]
    for model in ("wdl", "wdl_dense"):
        text = read(tmp_path / "gpu", model)
        assert 'backend: "python"' in text and "KIND_CPU" not in text
        assert 'parameters { key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no" } }' in text
    assert "instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0 ] } ]" in read(tmp_path / "gpu", "wdl")
    assert "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]" in read(tmp_path / "gpu", "wdl_dense")
    convert_hugectr_repository(wdl["repo"], tmp_path / "cpu", wdl["ps_json"], backends={"python"})
    for model in ("wdl", "wdl_dense"):
        assert "kind: KIND_CPU" in read(tmp_path / "cpu", model)
        assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in read(tmp_path / "cpu", model)
    with pytest.raises(RepositoryError, match="device must be one of"):
        convert_hugectr_repository(wdl["repo"], tmp_path / "x", wdl["ps_json"], device="npu")


def test_add_model_for_the_gpu(tmp_path, seed_model):
    wdl = write_hugectr_wdl(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    raw = json.loads((tmp_path / "redis_ps.json").read_text())
    raw["models"][0]["sparse_files"] = [str(wdl["repo"] / "wdl" / "1" / n) for n in ("wdl_wide.model",
                                                                                       "wdl_deep.model")]
    (tmp_path / "wdl.json").write_text(json.dumps(raw))
    add_model_to_repository(repo, tmp_path / "wdl.json", device="gpu", instance_count=3)
    assert "count: 3 kind: KIND_GPU gpus: [ 0 ]" in read(repo, "wdl") and 'string_value: "no"' in read(repo, "wdl")
    assert ps_of(repo, "wdl")["volatile_db"]["type"] == "redis_cluster"  # shared already: as the user wrote it


def test_backend_runner_tensors(tmp_path):
    from hps.serving.triton.backend_runner import BackendRunner

    class Two(torch.nn.Module):
        def forward(self, a, b):
            return a * 2 + b, a - b

    torch.jit.script(Two()).save(str(tmp_path / "two.pt"))
    runner = BackendRunner("pytorch", tmp_path / "two.pt", ["b", "a"], ["OUT__1", "OUT__0"])
    a, b = torch.arange(4, dtype=torch.float32), torch.ones(4)
    out = runner.run_tensors({"a": a, "b": b})
    assert isinstance(out["OUT__0"], torch.Tensor) and runner.on_gpu is False
    torch.testing.assert_close(out["OUT__0"], a * 2 + b)
    torch.testing.assert_close(out["OUT__1"], a - b)
    with pytest.raises(RequestError, match="needs inputs"):
        runner.run_tensors({"a": a})
    with pytest.raises(RequestError, match="rejects the request"):
        runner.run_tensors({"a": a, "b": torch.ones(3)})
    if not torch.cuda.is_available():
        with pytest.raises(RepositoryError, match="sees no CUDA device"):
            BackendRunner("pytorch", tmp_path / "two.pt", ["a", "b"], ["x", "y"], device="cuda:0")


# --- the python models in process, with a stand-in for triton_python_backend_utils ----------------
# On a machine with a GPU these run the KIND_GPU path itself (CUDA keys, the GPU cache, GPU tensors
# handed on); without one, the same models on a KIND_CPU instance with FORCE_CPU_ONLY_INPUT_TENSORS "no".

class _Tensor:
    """pb_utils.Tensor as the python backend has it: numpy or DLPack in, DLPack or numpy out."""

    def __init__(self, name, data):
        self._name, self.data = name, data

    def name(self):
        return self._name

    def is_cpu(self):
        return not (isinstance(self.data, torch.Tensor) and self.data.is_cuda)

    def as_numpy(self):
        if not self.is_cpu():
            raise RuntimeError("as_numpy() of a GPU tensor")  # as the python backend refuses it
        return self.data.numpy() if isinstance(self.data, torch.Tensor) else np.asarray(self.data)

    def to_dlpack(self):
        data = self.data if isinstance(self.data, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(self.data))
        return torch.utils.dlpack.to_dlpack(data)

    @staticmethod
    def from_dlpack(name, capsule):
        return _Tensor(name, torch.utils.dlpack.from_dlpack(capsule))


def _fake_pb_utils():
    import types

    class TritonError:
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message, code=None):
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    class Logger:
        lines: list = []

        @classmethod
        def log_info(cls, message):
            cls.lines.append(message)

        log_warn = log_error = log_info

    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor, module.TritonError, module.InferenceResponse = _Tensor, TritonError, InferenceResponse
    module.Logger = Logger
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    module.triton_string_to_numpy = lambda t: {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}[t]
    return module


def _load_model(repo: Path, name: str, monkeypatch, kind: str):
    """Import `<repo>/<name>/1/model.py` with the stand-in pb_utils and initialize it as Triton would."""
    import importlib.util

    pb = _fake_pb_utils()
    monkeypatch.setitem(__import__("sys").modules, "triton_python_backend_utils", pb)
    text = read(repo, name)
    inputs, outputs = re.split(r"^output \[", text, maxsplit=1, flags=re.MULTILINE)
    tensor = r'\{ name: "([^"]+)" data_type: (TYPE_\w+)'
    config = {"name": name,
              "parameters": {k: {"string_value": v} for k, v in
                             re.findall(r'key: "([^"]+)" value: \{ string_value: "([^"]*)" \}', text)},
              "input": [{"name": n, "data_type": t} for n, t in re.findall(tensor, inputs)],
              "output": [{"name": n, "data_type": t} for n, t in re.findall(tensor, outputs)]}
    spec = importlib.util.spec_from_file_location(f"_hps_triton_{name}", repo / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(repo / name), "model_name": name,
                      "model_version": "1", "model_instance_kind": kind, "model_instance_device_id": "0"})
    return model, pb


@pytest.fixture()
def gpu_repo(seed_model, dense_pt, tmp_path):
    raw = json.loads(Path(seed_model["ps_json"]).read_text())
    raw["models"][0].update(gpucache=True, gpucacheper=0.5,
                            sparse_files=[str(seed_model["root"] / "naive_dnn_sparse.model")])
    (tmp_path / "ps.json").write_text(json.dumps(raw))
    repo = build_repository(tmp_path / "ps.json", dense_pt, tmp_path / "repo", device="gpu", metrics_interval_s=0)
    build_repository(tmp_path / "ps.json", dense_pt, repo, layout="fused", ensemble_name="fused_model", device="gpu",
                     metrics_interval_s=0)
    if not ON_GPU:
        on_cpu_instances(repo)
    return repo


@pytest.mark.parametrize("keys_on", ["host", "device"])
def test_python_models_in_process(gpu_repo, seed_model, dense_pt, monkeypatch, keys_on):
    kind = "GPU" if ON_GPU else "CPU"
    interpret = not ON_GPU and os.environ.get("TRITON_INTERPRET") == "1"
    if interpret:  # the GPU cache's code on CPU tensors (Triton's interpreter): the lookup path a GPU takes
        monkeypatch.setenv("HPS_DEVICE", "interpret")
    emb, pb = _load_model(gpu_repo, "hps_embedding", monkeypatch, kind)
    assert emb.ps._models["hps_embedding"].replicas[(0, 0)].takes_torch == (ON_GPU or interpret)
    dense, _ = _load_model(gpu_repo, "dense_model", monkeypatch, kind)
    fused, _ = _load_model(gpu_repo, "fused_model", monkeypatch, kind)
    try:
        assert emb.dlpack and str(emb.device) == DEVICE and dense.dlpack and fused.dlpack
        assert any(f"tensors through DLPack on {DEVICE}" in line for line in pb.Logger.lines)
        keys = np.random.default_rng(2).integers(0, 30000, (64, 3)).astype(np.int64)
        vectors = seed_model["vectors"][keys.reshape(-1)]
        keys[0, 0], vectors[0] = 12_345_678, 0.5  # a miss: the default value
        key_data = torch.from_numpy(keys).to(DEVICE) if keys_on == "device" else keys
        numkeys = np.array([[keys.size]], np.int32)
        for _ in range(2):  # cold (the tiers), then warm (the cache)
            [response] = emb.execute([{"KEYS": _Tensor("KEYS", key_data), "NUMKEYS": _Tensor("NUMKEYS", numkeys)}])
            assert response.error is None, response.error.message
            [out] = response.output_tensors
            assert isinstance(out.data, torch.Tensor) and str(out.data.device) == DEVICE  # no host round trip
            np.testing.assert_array_equal(out.data.cpu().numpy(), vectors.reshape(-1))
        [prediction] = dense.execute([{"input_1": _Tensor("input_1", out.data)}])
        assert prediction.error is None, prediction.error.message
        [pred] = prediction.output_tensors
        # predictions (4 bytes a sample, for the client) come back in host memory, copied in the stub
        assert str(pred.data.device) == "cpu" and tuple(pred.data.shape) == (64, 1)
        expected = DenseRunner(dense_pt, width=48)(vectors.reshape(-1))
        np.testing.assert_allclose(pred.data.cpu().numpy(), expected, rtol=1e-5, atol=1e-6)
        [both] = fused.execute([{"EMB_KEY": _Tensor("EMB_KEY", key_data), "EMB_N_KEY": _Tensor("EMB_N_KEY", numkeys)}])
        assert both.error is None, both.error.message
        assert str(both.output_tensors[0].data.device) == "cpu"
        np.testing.assert_allclose(both.output_tensors[0].data.cpu().numpy(), expected, rtol=1e-5, atol=1e-6)
        [bad] = emb.execute([{"KEYS": _Tensor("KEYS", key_data),
                              "NUMKEYS": _Tensor("NUMKEYS", np.array([[3]], np.int32))}])
        assert bad.error.code == "INVALID_ARG" and "adds up to 3 keys but KEYS holds 192" in bad.error.message
    finally:
        for model in (emb, dense, fused):
            if hasattr(model, "finalize"):
                model.finalize()


# --- a real tritonserver serving the GPU layout on CPU instances -----------------------------------


def on_cpu_instances(repo: Path) -> None:
    """Switch every KIND_GPU instance group of `repo` to KIND_CPU (a tritonserver without a GPU refuses
    KIND_GPU); everything else, FORCE_CPU_ONLY_INPUT_TENSORS "no" included, stays as built."""
    for cfg in repo.glob("*/config.pbtxt"):
        cfg.write_text(re.sub(r"kind: KIND_GPU( gpus: \[[^\]]*\])?", "kind: KIND_CPU", cfg.read_text()))


@pytest.fixture(scope="module")
def served(seed_model, dense_pt, tmp_path_factory):
    http = pytest.importorskip("tritonclient.http")
    from hps.serving.triton import convert_hugectr_repository, serve

    root = tmp_path_factory.mktemp("gpu_layout")
    repo = build_repository(seed_model["ps_json"], dense_pt, root / "repo", device="gpu", instance_count=2,
                            dense_instance_count=1, metrics_interval_s=0)
    build_repository(seed_model["ps_json"], dense_pt, repo, layout="fused", ensemble_name="fused_model",
                     device="gpu", metrics_interval_s=0)
    wdl = write_hugectr_wdl(root)  # converted for the GPU, its models copied beside the others
    convert_hugectr_repository(wdl["repo"], root / "converted", wdl["ps_json"], backends={"python"}, device="gpu",
                               metrics_interval_s=0)
    for model in ("wdl", "wdl_dense", "wdl_ensemble"):
        shutil.copytree(root / "converted" / model, repo / model)
    wide, deep = wdl["wide"], wdl["deep"]
    on_cpu_instances(repo)
    server = serve(repo, http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=240)
    client = http.InferenceServerClient(server.url_http)
    yield {"repo": repo, "server": server, "client": client, "http": http, "wide": wide, "deep": deep,
           "dense": DenseRunner(dense_pt, width=48)}
    client.close()
    server.stop()


def infer(served, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    http = served["http"]
    tensors = []
    for name, array in inputs.items():
        tensor = http.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "INT32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return served["client"].infer(model, tensors, outputs=[http.InferRequestedOutput(output)]).as_numpy(output)


@pytest.mark.triton
@pytest.mark.slow
def test_served_through_dlpack_equals_the_sparse_file_and_the_dense_model(served, seed_model):
    log = Path(served["server"].log_path).read_text()
    assert log.count("tensors through DLPack on cpu") == 5  # 2 hps_embedding instances, fused_model, 2 wdl
    assert "dense model dense_model: torchscript naive_dnn_dense.pt, 48 floats per sample, DLPack tensors" in log
    assert "model wdl_dense: pytorch model model.pt run by hps in the python backend (DLPack tensors on cpu;" in log
    keys = np.random.default_rng(11).integers(0, 30000, (256, 3)).astype(np.int64)
    vectors = seed_model["vectors"][keys.reshape(-1)]
    keys[0, 0], vectors[0] = 99_999_999, 0.5  # a miss: the table's default value
    out = infer(served, "hps_embedding", {"KEYS": keys, "NUMKEYS": np.array([[keys.size]], np.int32)}, "OUTPUT0")
    assert out.shape == (keys.size * 16,) and out.dtype == np.float32
    np.testing.assert_array_equal(out, vectors.reshape(-1))
    expected = served["dense"](vectors.reshape(-1))
    for model in ("ensemble_model", "fused_model"):
        pred = infer(served, model, {"EMB_KEY": keys, "EMB_N_KEY": np.array([[keys.size]], np.int32)}, "DENSE_OUTPUT")
        assert pred.shape == (256, 1)
        np.testing.assert_allclose(pred, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.triton
@pytest.mark.slow
def test_served_two_tables_and_bad_requests(served):
    from tritonclient.utils import InferenceServerException

    wide_keys = np.array([0, 2, 998, 3, 40, 40], np.int64)   # 3 is a miss
    deep_keys = np.arange(10_000, 10_052, dtype=np.int64)
    deep_keys[5] = 5                                          # a miss
    keys, numkeys = make_request([wide_keys, deep_keys])
    out = infer(served, "wdl", {"KEYS": keys, "NUMKEYS": numkeys}, "OUTPUT0")
    wide, deep = served["wide"], served["deep"]
    expected_wide = np.concatenate([wide[[0, 1, 499]], np.full((1, 4), 0.25, np.float32), wide[[20, 20]]])
    expected_deep = deep[np.arange(52)].copy()
    expected_deep[5] = -1.0
    np.testing.assert_array_equal(out, np.concatenate([expected_wide.ravel(), expected_deep.ravel()]))
    # the converted TorchScript dense model (backend_model.py, DLPack path) behind it, in the ensemble
    samples_keys, samples_counts = make_request([np.arange(0, 12, 2), np.arange(10_000, 10_078)])  # 3 samples
    pred = infer(served, "wdl_ensemble", {"EMB_KEY": samples_keys, "EMB_N_KEY": samples_counts}, "DENSE_OUTPUT")
    vectors = infer(served, "wdl", {"KEYS": samples_keys, "NUMKEYS": samples_counts}, "OUTPUT0")
    assert pred.shape == (3, 1)
    np.testing.assert_array_equal(pred, RowSums()(torch.from_numpy(vectors.copy())).numpy())
    with pytest.raises(InferenceServerException, match="adds up to 5 keys but KEYS holds 6"):
        infer(served, "wdl", {"KEYS": np.arange(6, dtype=np.int64).reshape(1, 6),
                              "NUMKEYS": np.array([[2, 3]], np.int32)}, "OUTPUT0")
    with pytest.raises(InferenceServerException, match="more than max_batch_size 10"):
        infer(served, "wdl", {"KEYS": np.arange(281, dtype=np.int64).reshape(1, -1),
                              "NUMKEYS": np.array([[20, 261]], np.int32)}, "OUTPUT0")
    assert infer(served, "wdl", {"KEYS": keys, "NUMKEYS": numkeys}, "OUTPUT0").shape == out.shape  # still serving
    empty = infer(served, "hps_embedding", {"KEYS": np.empty((1, 0), np.int64), "NUMKEYS": np.array([[0]], np.int32)},
                  "OUTPUT0")
    assert empty.shape == (0,) and empty.dtype == np.float32


@pytest.mark.triton
@pytest.mark.slow
def test_two_instances_map_one_host_tier(served):
    """Both hps_embedding stub processes map the same /dev/shm segment: the table is held once."""
    from hps.storage.shared_hash_map import SHM_DIR

    name = ps_of(served["repo"], "hps_embedding")["volatile_db"]["shared_memory_name"]
    segments = sorted(p for p in os.listdir(SHM_DIR) if p.startswith(name + ".") and p.rsplit(".", 1)[-1].isdigit())
    assert len(segments) == 1, segments  # one table, one data segment
    segment = os.path.join(SHM_DIR, segments[0])
    mapping = []
    for pid in _stub_pids(served["server"].process.pid):
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        if segment in maps:
            mapping.append(pid)
    assert len(mapping) == 2, (segment, mapping)


def _stub_pids(server_pid: int) -> list[int]:
    """The python stub processes of a tritonserver (its process group)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) == server_pid and int(entry) != server_pid:
                pids.append(int(entry))
        except OSError:
            continue
    return pids
