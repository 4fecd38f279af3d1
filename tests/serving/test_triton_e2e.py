"""End to end: a real tritonserver on 127.0.0.1 serving an hps repository, queried with tritonclient
over HTTP and gRPC. One server for the module (explicit model control):

  hps_embedding + dense_model + ensemble_model   built by build_repository (the seed's ensemble)
  wdl                                            a HugeCTR `backend: "hps"` model (2 tables), converted
  new_model                                      added to the running server (HugeCTR issue #451)
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.request

import numpy as np
import pytest

import hps
from hps.serving.triton import ServerError, add_model_to_repository, build_repository, convert_hugectr_repository, serve
from hps.serving.triton.dense_runner import DenseRunner
from hps.serving.triton.embedding_io import make_request
from tests.serving.conftest import write_ps_json, write_table

# HugeCTR's plain HPS-backend sample (reference §4): max_batch_size 1024, dims [-1], GPU instance
WDL_HUGECTR_CONFIG = """name: "wdl"
backend: "hps"
max_batch_size: 1024
input [ { name: "KEYS" data_type: TYPE_INT64 dims: [ -1 ] },
        { name: "NUMKEYS" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
version_policy: { specific: { versions: 1 } }
instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]
parameters [ { key: "refresh_interval" value: { string_value: "0" } },
             { key: "freeze_sparse" value: { string_value: "false" } } ]
"""

pytestmark = [pytest.mark.triton, pytest.mark.slow]
http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def deployment(seed_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    repo = build_repository(seed_model["ps_json"], seed_model["dense"], root / "repo", metrics_interval_s=0)
    build_repository(seed_model["ps_json"], seed_model["dense"], repo, layout="fused", ensemble_name="fused_model")
    # a HugeCTR repository model: backend "hps", sparse files copied into 1/, ps.json elsewhere
    wdl_dir = repo / "wdl" / "1"
    wdl_dir.mkdir(parents=True)
    wide = write_table(wdl_dir / "wdl_wide.model", np.arange(0, 1000, 2), 4, seed=5)
    deep = write_table(wdl_dir / "wdl_deep.model", np.arange(10_000, 12_000), 8, seed=6)
    (repo / "wdl" / "config.pbtxt").write_text(WDL_HUGECTR_CONFIG)
    legacy_ps = write_ps_json(root / "hugectr_ps.json", "wdl", ["/models/wdl/1/wdl_wide.model",
                              "/models/wdl/1/wdl_deep.model"], [4, 8], [2, 26], max_batch_size=10,
                              defaults=[0.25, -1.0])
    assert convert_hugectr_repository(repo, None, legacy_ps, metrics_interval_s=0) == ["wdl"]
    server = serve(repo, http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=180, model_control="explicit")
    clients = {"http": http.InferenceServerClient(server.url_http),
               "grpc": grpc.InferenceServerClient(server.url_grpc)}
    ps = hps.HPS(repo / "hps_embedding" / "hps_embedding.json")
    wdl_ps = hps.HPS(repo / "wdl" / "wdl.json")
    yield {"root": root, "repo": repo, "server": server, "clients": clients, "ps": ps, "wdl_ps": wdl_ps,
           "wide": wide, "deep": deep, "dense": DenseRunner(seed_model["dense"])}
    for client in clients.values():
        client.close()
    ps.close()
    wdl_ps.close()
    server.stop()


def infer(clients, protocol: str, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    module = http if protocol == "http" else grpc
    tensors = []
    for name, array in inputs.items():
        dtype = {np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32"}[array.dtype]
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = clients[protocol].infer(model, tensors, outputs=[module.InferRequestedOutput(output)])
    return result.as_numpy(output)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("samples", [1, 1024])
def test_ensemble_equals_in_process(deployment, protocol, samples):
    keys = np.random.default_rng(samples).integers(0, 30000, (samples, 3)).astype(np.int64)
    keys[0, 0] = 99_999_999  # a miss: the table's default value
    out = infer(deployment["clients"], protocol, "ensemble_model",
                {"EMB_KEY": keys, "EMB_N_KEY": np.array([[keys.size]], np.int32)}, "DENSE_OUTPUT")
    vectors = deployment["ps"].lookup(keys.reshape(-1), "hps_embedding", 0)
    assert out.shape == (samples, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out, deployment["dense"](vectors.reshape(-1)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_fused_layout_answers_like_the_ensemble(deployment, protocol):
    keys = np.random.default_rng(7).integers(0, 30000, (64, 3)).astype(np.int64)
    inputs = {"EMB_KEY": keys, "EMB_N_KEY": np.array([[keys.size]], np.int32)}
    fused = infer(deployment["clients"], protocol, "fused_model", inputs, "DENSE_OUTPUT")
    np.testing.assert_array_equal(fused, infer(deployment["clients"], protocol, "ensemble_model", inputs,
                                               "DENSE_OUTPUT"))
    with pytest.raises(InferenceServerException, match="adds up to 3 keys but KEYS holds 192"):
        infer(deployment["clients"], protocol, "fused_model", {**inputs, "EMB_N_KEY": np.array([[3]], np.int32)},
              "DENSE_OUTPUT")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_converted_hugectr_model_two_tables(deployment, protocol):
    wide_keys = np.array([0, 2, 998, 3, 40, 40], np.int64)   # 3 is a miss
    deep_keys = np.arange(10_000, 10_052, dtype=np.int64)
    deep_keys[5] = 5                                          # a miss
    keys, numkeys = make_request([wide_keys, deep_keys])
    out = infer(deployment["clients"], protocol, "wdl", {"KEYS": keys, "NUMKEYS": numkeys}, "OUTPUT0")
    assert out.shape == (6 * 4 + 52 * 8,)  # 1-D whatever max_batch_size says, as HugeCTR's backend answers
    ps = deployment["wdl_ps"]
    expected = np.concatenate([ps.lookup(wide_keys, "wdl", 0).ravel(), ps.lookup(deep_keys, "wdl", 1).ravel()])
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[:4], deployment["wide"][0])
    np.testing.assert_array_equal(out[12:16], np.full(4, 0.25, np.float32))


BAD_REQUESTS = [
    ({"KEYS": np.arange(6, dtype=np.int64).reshape(1, 6), "NUMKEYS": np.array([[2, 3]], np.int32)},
     "adds up to 5 keys but KEYS holds 6"),
    ({"KEYS": np.arange(6, dtype=np.int64).reshape(1, 6), "NUMKEYS": np.array([[6]], np.int32)},
     "NUMKEYS has 1 entries but the model has 2 table"),
    ({"KEYS": np.arange(281, dtype=np.int64).reshape(1, -1), "NUMKEYS": np.array([[20, 261]], np.int32)},
     "more than max_batch_size 10"),
    ({"KEYS": np.arange(6, dtype=np.int32).reshape(1, 6), "NUMKEYS": np.array([[2, 4]], np.int32)},
     "KEYS"),
    ({"KEYS": np.arange(6, dtype=np.int64).reshape(1, 6)}, "NUMKEYS"),
]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("inputs,message", BAD_REQUESTS)
def test_bad_requests_get_error_responses(deployment, protocol, inputs, message):
    with pytest.raises(InferenceServerException, match=re.escape(message)):
        infer(deployment["clients"], protocol, "wdl", inputs, "OUTPUT0")
    keys, numkeys = make_request([[0, 2], [10_000]])
    assert infer(deployment["clients"], protocol, "wdl", {"KEYS": keys, "NUMKEYS": numkeys}, "OUTPUT0").shape == (16,)


def scrape(server) -> dict[str, float]:
    text = urllib.request.urlopen(server.url_metrics, timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("hps_")}


def test_metrics_on_tritons_endpoint(deployment):
    keys, numkeys = make_request([[0, 2, 3], [10_000, 1]])
    infer(deployment["clients"], "http", "wdl", {"KEYS": keys, "NUMKEYS": numkeys}, "OUTPUT0")
    metrics = scrape(deployment["server"])
    labels = 'model="wdl",table="wdl_t0"'
    hits = {level: metrics[f'hps_keys_total{{level="{level}",{labels}}}']
            for level in ("cache", "volatile", "persistent", "default")}
    assert sum(hits.values()) >= 3 and hits["default"] >= 1
    count = metrics[f"hps_lookup_seconds_count{{{labels}}}"]
    assert count >= 1 and metrics[f'hps_lookup_seconds_bucket{{le="+Inf",{labels}}}'] == count
    assert metrics[f"hps_lookup_seconds_sum{{{labels}}}"] > 0
    assert any(k.startswith("hps_keys_total") and 'model="hps_embedding"' in k for k in metrics)


def test_unload_and_load(deployment):
    server, clients = deployment["server"], deployment["clients"]
    server.unload_model("wdl")
    assert not server.is_model_ready("wdl")
    keys, numkeys = make_request([[0], [10_000]])
    with pytest.raises(InferenceServerException):
        infer(clients, "http", "wdl", {"KEYS": keys, "NUMKEYS": numkeys}, "OUTPUT0")
    server.load_model("wdl")
    assert server.is_model_ready("wdl")
    out = infer(clients, "grpc", "wdl", {"KEYS": keys, "NUMKEYS": numkeys}, "OUTPUT0")
    np.testing.assert_array_equal(out.ravel()[:4], deployment["wide"][0])
    with pytest.raises(ServerError, match="no_such_model"):
        server.load_model("no_such_model")


def test_hot_add_model_not_in_the_original_ps_json(deployment):
    root, server, clients = deployment["root"], deployment["server"], deployment["clients"]
    vectors = write_table(root / "retrained.model", np.arange(500, 600), 8, seed=9)
    ps_json = write_ps_json(root / "new_model.json", "new_model", ["retrained.model"], [8], [1])
    add_model_to_repository(deployment["repo"], ps_json, metrics_interval_s=0)
    server.load_model("new_model")
    keys, numkeys = make_request([[500, 599, 7]])
    for protocol in ("http", "grpc"):
        out = infer(clients, protocol, "new_model", {"KEYS": keys, "NUMKEYS": numkeys}, "OUTPUT0").reshape(3, 8)
        np.testing.assert_array_equal(out[:2], vectors[[0, 99]])
        np.testing.assert_array_equal(out[2], np.full(8, 0.5, np.float32))
    assert any('model="new_model"' in k for k in scrape(server))
    keys = np.array([[1, 2, 3]], np.int64)
    assert infer(clients, "http", "ensemble_model", {"EMB_KEY": keys, "EMB_N_KEY": np.array([[3]], np.int32)},
                 "DENSE_OUTPUT").shape == (1, 1)
    server.unload_model("new_model")
    shutil.rmtree(deployment["repo"] / "new_model")


def test_stop_leaves_nothing_behind(deployment):
    server = deployment["server"]
    for client in deployment["clients"].values():
        client.close()
    assert server.shm_regions(), "the python backend should hold shared-memory regions while serving"
    pid = server.process.pid
    server.stop()
    assert not server.is_alive() and server.shm_regions() == []
    assert server.guard_process is None or server.guard_process.poll() is not None  # the HTTP guard front too
    with pytest.raises(ProcessLookupError):
        import os

        os.killpg(pid, 0)  # no python stub left in the server's process group
    assert json.loads((deployment["repo"] / "wdl" / "wdl.json").read_text())["models"][0]["model"] == "wdl"
