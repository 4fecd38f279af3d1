"""Property test (issue 14 item 7): malformed inference requests against ONE running server.

hypothesis generates KEYS / NUMKEYS requests with wrong or huge shapes, wrong datatypes, counts that do not
add up, empty inputs, huge NUMKEYS, missing and extra inputs, JSON or binary data, and sends each to one
tritonserver (module fixture, started as `hps triton serve` starts it) serving an hps model with HugeCTR's
I/O (2 tables, dims 4 and 8, 2 and 26 keys per sample, max_batch_size 10). Each request gets either a
4xx error or exactly the answer an in-memory oracle computes from the tables; a request that is valid
always gets its answer. Afterwards the server still answers a good request exactly.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hps.serving.triton import add_model_to_repository, serve
from tests.serving.conftest import write_ps_json, write_table

pytestmark = [pytest.mark.triton, pytest.mark.slow]

MODEL = "props"
DIMS, MAXNUM, MAX_BATCH, DEFAULTS = (4, 8), (2, 26), 10, (0.25, -1.0)
WIDE_KEYS, DEEP_KEYS = np.arange(0, 1000, 2), np.arange(10_000, 12_000)
NP_DTYPES = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "UINT8": np.uint8, "BOOL": np.bool_}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("props")
    wide = write_table(root / "wide.model", WIDE_KEYS, DIMS[0], seed=21)
    deep = write_table(root / "deep.model", DEEP_KEYS, DIMS[1], seed=22)
    ps = write_ps_json(root / f"{MODEL}.json", MODEL, [str(root / "wide.model"), str(root / "deep.model")],
                       list(DIMS), list(MAXNUM), max_batch_size=MAX_BATCH, defaults=list(DEFAULTS))
    (root / "repo").mkdir()
    add_model_to_repository(root / "repo", ps, metrics_interval_s=0)
    server = serve(root / "repo", http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=180)
    tables = [dict(zip(WIDE_KEYS.tolist(), wide)), dict(zip(DEEP_KEYS.tolist(), deep))]
    yield {"server": server, "tables": tables}
    server.stop()


def oracle(tables, keys: list[int], numkeys: list[int]) -> np.ndarray:
    """OUTPUT0 of a valid request: each table's vectors (or its default) for its keys, table-major."""
    out, start = [], 0
    for t, count in enumerate(numkeys):
        for key in keys[start:start + count]:
            out.append(tables[t].get(key, np.full(DIMS[t], DEFAULTS[t], np.float32)))
        start += count
    return np.concatenate(out).astype(np.float32) if out else np.empty(0, np.float32)


def is_valid(keys, numkeys, spec) -> bool:
    if spec["keys_dtype"] != "INT64" or spec["numkeys_dtype"] != "INT32" or spec["missing"] or spec["extra"]:
        return False
    if spec["keys_shape"] != [1, len(keys)] or spec["numkeys_shape"] != [1, len(numkeys)]:
        return False
    if len(numkeys) != 2 or min(numkeys) < 0 or sum(numkeys) != len(keys):
        return False
    samples = math.ceil(len(keys) / sum(MAXNUM))
    return samples <= MAX_BATCH and all(n <= MAX_BATCH * m for n, m in zip(numkeys, MAXNUM))


key_values = st.one_of(st.sampled_from(WIDE_KEYS.tolist() + DEEP_KEYS.tolist()),
                       st.integers(0, 20_000), st.integers(-2**63, 2**63 - 1))
dims = st.one_of(st.integers(0, 3), st.sampled_from([2**31 - 1, 2**32, 2**40, 2**62]))


MUTATIONS = ["counts", "keys_dtype", "numkeys_dtype", "keys_shape", "numkeys_shape", "missing", "extra"]


@st.composite
def requests(draw):
    """(keys, numkeys, spec): a valid request with 0 to 3 things broken (about half of them unbroken)."""
    keys = draw(st.lists(key_values, max_size=40))
    split = draw(st.integers(0, min(len(keys), MAX_BATCH * MAXNUM[0])))
    numkeys = [split, len(keys) - split]
    spec = {"keys_dtype": "INT64", "numkeys_dtype": "INT32", "keys_shape": [1, len(keys)],
            "numkeys_shape": [1, 2], "binary": draw(st.booleans()), "missing": None, "extra": False}
    broken = draw(st.one_of(st.just(set()), st.sets(st.sampled_from(MUTATIONS), min_size=1, max_size=3)))
    if "counts" in broken:
        numkeys = draw(st.lists(st.one_of(st.integers(-3, 300), st.just(2**31 - 1), st.just(-2**31)), max_size=4))
        spec["numkeys_shape"] = [1, len(numkeys)]
    if "keys_dtype" in broken:
        spec["keys_dtype"] = draw(st.sampled_from(["INT32", "FP32", "UINT8", "BOOL"]))
    if "numkeys_dtype" in broken:
        spec["numkeys_dtype"] = draw(st.sampled_from(["INT64", "FP32"]))
    if "keys_shape" in broken:
        spec["keys_shape"] = draw(st.one_of(st.just([len(keys)]), st.lists(dims, min_size=0, max_size=3)))
    if "numkeys_shape" in broken:
        spec["numkeys_shape"] = draw(st.lists(dims, min_size=0, max_size=3))
    if "missing" in broken:
        spec["missing"] = draw(st.sampled_from(["KEYS", "NUMKEYS"]))
    spec["extra"] = "extra" in broken
    return keys, numkeys, spec


def encode(keys, numkeys, spec) -> tuple[bytes, dict[str, str]]:
    """The HTTP body (JSON, or JSON header + binary tensors) of a request built from `spec`."""
    inputs, blobs = [], []
    for name, values, dtype, shape in (("KEYS", keys, spec["keys_dtype"], spec["keys_shape"]),
                                       ("NUMKEYS", numkeys, spec["numkeys_dtype"], spec["numkeys_shape"])):
        if spec["missing"] == name:
            continue
        item = {"name": name, "shape": shape, "datatype": dtype}
        if spec["binary"]:
            raw = np.array(values, dtype=object).astype(NP_DTYPES[dtype]).tobytes() if values else b""
            item["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            item["data"] = [v if dtype in ("INT64", "INT32") else float(v) if dtype == "FP32" else 1
                            for v in values]
        inputs.append(item)
    if spec["extra"]:
        inputs.append({"name": "EXTRA", "shape": [1], "datatype": "INT32", "data": [0]})
    header = json.dumps({"inputs": inputs, "outputs": [{"name": "OUTPUT0"}]}).encode()
    if not spec["binary"]:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}


def send(server, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{server.url_http}/v2/models/{MODEL}/infer", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(request=requests())
def test_malformed_requests_get_4xx_or_the_exact_answer(served, request):
    keys, numkeys, spec = request
    # out-of-range values for a narrow dtype cannot be encoded; the JSON form sends them as they are
    if spec["binary"] and not all(_fits(v, spec["keys_dtype"]) for v in keys):
        spec = {**spec, "binary": False}
    if spec["binary"] and not all(_fits(v, spec["numkeys_dtype"]) for v in numkeys):
        spec = {**spec, "binary": False}
    status, answer = send(served["server"], *encode(keys, numkeys, spec))
    valid = is_valid(keys, numkeys, spec)
    event(f"HTTP {status}, {'valid' if valid else 'invalid'} request")
    assert status == 200 or 400 <= status < 500, (status, answer)
    if valid:
        assert status == 200, answer
    if status == 200:
        assert valid, f"accepted an invalid request: {spec}"
        output = answer["outputs"][0]
        assert output["shape"] == [sum(n * d for n, d in zip(numkeys, DIMS))]
        np.testing.assert_array_equal(np.array(output["data"], np.float32), oracle(served["tables"], keys, numkeys))
    else:
        assert answer.get("error")


def _fits(value: int, dtype: str) -> bool:
    if dtype in ("FP32", "BOOL"):
        return True
    info = np.iinfo(NP_DTYPES[dtype])
    return info.min <= value <= info.max


def test_the_server_still_answers_exactly(served):
    assert served["server"].is_alive()
    keys, numkeys = [0, 998, 7, 10_001, 3], [3, 2]
    status, answer = send(served["server"], *encode(keys, numkeys, {
        "keys_dtype": "INT64", "numkeys_dtype": "INT32", "keys_shape": [1, 5], "numkeys_shape": [1, 2],
        "binary": False, "missing": None, "extra": False}))
    assert status == 200
    np.testing.assert_array_equal(np.array(answer["outputs"][0]["data"], np.float32),
                                  oracle(served["tables"], keys, numkeys))
