"""A served Triton survives its clients and is not an open code-upload API (issue 14).

One server for the module, started as `hps triton serve` starts it by default (model control "none",
inputs limited by the guard front because the bundled Triton 2.51 has no --http-max-input-size), serving
an hps model with HugeCTR's I/O: 2 tables (dims 4 and 8, 2 and 26 keys per sample, max_batch_size 10).
Raw HTTP (urllib) is used where the status code matters; tritonclient's gRPC for gRPC codes.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from hps.serving.triton import add_model_to_repository, serve
from tests.serving.conftest import write_ps_json, write_table

pytestmark = [pytest.mark.triton, pytest.mark.slow]
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "wdl"
BOMB = {"inputs": [{"name": "KEYS", "shape": [1, 1099511627776], "datatype": "INT64", "data": [1]},
                   {"name": "NUMKEYS", "shape": [1, 2], "datatype": "INT32", "data": [1, 0]}]}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    wide = write_table(root / "wide.model", np.arange(0, 1000, 2), 4, seed=5)
    deep = write_table(root / "deep.model", np.arange(10_000, 12_000), 8, seed=6)
    ps = write_ps_json(root / "wdl.json", MODEL, [str(root / "wide.model"), str(root / "deep.model")], [4, 8],
                       [2, 26], max_batch_size=10, defaults=[0.25, -1.0])
    (root / "repo").mkdir()
    add_model_to_repository(root / "repo", ps, metrics_interval_s=0)
    server = serve(root / "repo", http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=180)
    yield {"root": root, "server": server, "wide": wide, "deep": deep}
    server.stop()


def post(server, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{server.url_http}{path}", data=body,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def infer_json(server, keys: list[int], numkeys: list[int], **overrides) -> tuple[int, dict]:
    body = {"inputs": [{"name": "KEYS", "shape": [1, len(keys)], "datatype": "INT64", "data": keys},
                       {"name": "NUMKEYS", "shape": [1, len(numkeys)], "datatype": "INT32", "data": numkeys}]}
    for index, fields in overrides.items():
        body["inputs"][int(index[1:])].update(fields)
    return post(server, f"/v2/models/{MODEL}/infer", json.dumps(body).encode())


def assert_good_request_exact(served) -> None:
    status, answer = infer_json(served["server"], [0, 998, 10_001], [2, 1])
    assert status == 200, answer
    out = np.array(answer["outputs"][0]["data"], np.float32)
    assert answer["outputs"][0]["shape"] == [16]
    np.testing.assert_array_equal(out, np.concatenate([served["wide"][[0, 499]].ravel(), served["deep"][1]]))


def test_default_serve_refuses_model_upload_and_its_code_never_runs(served):
    server, marker = served["server"], served["root"] / "uploaded-code-ran"
    code = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
            "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n")
    config = {"name": "evil", "backend": "python", "max_batch_size": 0,
              "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [-1]}],
              "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [-1]}]}
    body = {"parameters": {"config": json.dumps(config),
                           "file:1/model.py": base64.b64encode(code.encode()).decode()}}
    status, answer = post(server, "/v2/repository/models/evil/load", json.dumps(body).encode())
    assert status >= 400 and "not allowed" in answer["error"]
    client = grpcclient.InferenceServerClient(server.url_grpc)
    try:
        with pytest.raises(InferenceServerException, match="not allowed"):
            client.load_model("evil", config=json.dumps(config), files={"file:1/model.py": code.encode()})
        with pytest.raises(InferenceServerException, match="not allowed"):
            client.unload_model(MODEL)
    finally:
        client.close()
    time.sleep(1.0)
    assert not marker.exists(), "the uploaded model's code ran"
    assert not (server.repo / "evil").exists()
    assert_good_request_exact(served)


def test_shape_bomb_gets_400_and_the_server_stays_up(served):
    """One JSON input declaring 1 TiB elements with one data element killed Triton 2.51 (std::bad_alloc)."""
    status, answer = post(served["server"], f"/v2/models/{MODEL}/infer", json.dumps(BOMB).encode())
    assert status == 400 and "takes at most" in answer["error"]
    assert served["server"].is_alive()
    assert_good_request_exact(served)


def test_grpc_shape_bomb_is_invalid_argument(served):
    """gRPC sizes inputs from the bytes sent: Triton itself refuses the same bomb there."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(served["server"].url_grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        for name, datatype, shape in (("KEYS", "INT64", [1, 1099511627776]), ("NUMKEYS", "INT32", [1, 2])):
            tensor = request.inputs.add(name=name, datatype=datatype)
            tensor.shape.extend(shape)
        request.inputs[0].contents.int64_contents.extend([1])
        request.inputs[1].contents.int_contents.extend([1, 0])
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert served["server"].is_alive()
    assert_good_request_exact(served)


def test_other_oversized_or_inconsistent_http_requests_get_400(served):
    server = served["server"]
    # JSON data that does not fill its declared (small) shape: Triton itself answers 500 for this
    status, answer = infer_json(server, [0, 2], [2, 0], i0={"shape": [1, 5]})
    assert status == 400 and "holds 5 elements but 'data' has 2" in answer["error"]
    # a gzip body that inflates to more than the limit
    bomb = gzip.compress(b" " * (server.max_input_bytes * 4 + (1 << 20)))
    status, answer = post(server, f"/v2/models/{MODEL}/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 400 and "inflates past" in answer["error"]
    # a gzip body within the limit is inflated and answered
    good = json.dumps({"inputs": [{"name": "KEYS", "shape": [1, 1], "datatype": "INT64", "data": [0]},
                                  {"name": "NUMKEYS", "shape": [1, 2], "datatype": "INT32", "data": [1, 0]}]})
    status, answer = post(server, f"/v2/models/{MODEL}/infer", gzip.compress(good.encode()),
                          {"Content-Encoding": "gzip"})
    assert status == 200 and answer["outputs"][0]["data"] == served["wide"][0].tolist()
    # a declared body larger than the limit is refused before it is read
    with socket.create_connection(server.url_http.split(":")) as sock:
        sock.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 40}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    assert_good_request_exact(served)


CLIENT_MISTAKES = [
    ({"i0": {"shape": [2]}, "keys": [0, 2]}, "unexpected shape"),                      # KEYS rank 1, not [-1, -1]
    ({"i0": {"datatype": "FP32"}}, "data-type is 'FP32'"),                              # wrong dtype
    ({"i1": {"datatype": "INT64"}}, "data-type is 'INT64'"),
    ({"numkeys": [1, 2]}, "adds up to 3 keys but KEYS holds 2"),                        # NUMKEYS ≠ KEYS
    ({"numkeys": [2]}, "NUMKEYS has 1 entries but the model has 2 table"),
    ({"numkeys": [-1, 3]}, "negative count"),
    ({"keys": list(range(281)), "numkeys": [20, 261]}, "more than max_batch_size 10"),  # too many keys
    ({"numkeys": [2147483647, 2]}, "adds up to"),
]


@pytest.mark.parametrize("mistake,message", CLIENT_MISTAKES)
def test_client_mistakes_are_http_400_and_grpc_invalid_argument(served, mistake, message):
    mistake = dict(mistake)
    keys, numkeys = mistake.pop("keys", [0, 2]), mistake.pop("numkeys", [2, 0])
    status, answer = infer_json(served["server"], keys, numkeys, **mistake)
    assert status == 400 and message in answer["error"], answer
    body = {"inputs": [{"name": "KEYS", "shape": [1, len(keys)], "datatype": "INT64"},
                       {"name": "NUMKEYS", "shape": [1, len(numkeys)], "datatype": "INT32"}]}
    for index, fields in mistake.items():
        body["inputs"][int(index[1:])].update(fields)
    client = grpcclient.InferenceServerClient(served["server"].url_grpc)
    try:
        inputs = []
        for spec, values in zip(body["inputs"], (keys, numkeys)):
            tensor = grpcclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
            dtype = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32}[spec["datatype"]]
            tensor.set_data_from_numpy(np.array(values, dtype).reshape(spec["shape"]))
            inputs.append(tensor)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, inputs)
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and message in caught.value.message()
    finally:
        client.close()
    assert_good_request_exact(served)


def test_logging_and_trace_settings_are_closed_to_clients(served):
    server = served["server"]
    status, answer = post(server, "/v2/logging", json.dumps({"log_verbose_level": 3}).encode())
    assert status == 403 and "restricted" in answer["error"]
    status, _ = post(server, "/v2/trace/setting", json.dumps({"trace_rate": "1"}).encode())
    assert status == 403
    client = grpcclient.InferenceServerClient(server.url_grpc)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.update_log_settings({"log_verbose_level": 3})
    finally:
        client.close()
    assert_good_request_exact(served)
