"""BackendRunner: framework models run as Triton's tensorflow / pytorch / onnxruntime backends would run them."""

from __future__ import annotations

import numpy as np
import pytest

from hps.serving.triton.backend_runner import BackendRunner, backend_of
from hps.serving.triton.errors import RepositoryError, RequestError
from tests.serving.conftest import write_dense_onnx


def test_backend_of():
    assert backend_of(None, "tensorflow_savedmodel") == "tensorflow"
    assert backend_of(None, "pytorch_libtorch") == "pytorch"
    assert backend_of("tensorrt", "tensorrt_plan") == "tensorrt"
    assert backend_of("hps", None) == "hps" and backend_of(None, None) is None


def test_onnx_by_name(tmp_path):
    path = write_dense_onnx(tmp_path / "model.onnx", 12, input_name="vectors", output_name="prediction")
    runner = BackendRunner("onnxruntime", path, ["vectors"], ["prediction"])
    batch = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
    out = runner({"vectors": batch})
    assert list(out) == ["prediction"] and out["prediction"].shape == (3, 1)
    with pytest.raises(RequestError, match="rejects the request"):
        runner({"vectors": batch[:, :5]})
    with pytest.raises(RequestError, match="needs inputs"):
        runner({})


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_torchscript_argument_names_suffixes_and_order(tmp_path):
    torch = pytest.importorskip("torch")

    class Two(torch.nn.Module):
        def forward(self, a, b):
            return a * 2 + b, a - b

    path = tmp_path / "model.pt"
    torch.jit.script(Two()).save(str(path))
    a, b = np.arange(4, dtype=np.float32), np.ones(4, np.float32)
    by_name = BackendRunner("pytorch", path, ["b", "a"], ["OUT__1", "OUT__0"])   # config order ≠ forward order
    out = by_name({"a": a, "b": b})
    np.testing.assert_array_equal(out["OUT__0"], a * 2 + b)
    np.testing.assert_array_equal(out["OUT__1"], a - b)
    by_suffix = BackendRunner("pytorch", path, ["INPUT__1", "INPUT__0"], ["x", "y"])
    out = by_suffix({"INPUT__0": a, "INPUT__1": b})
    np.testing.assert_array_equal(out["x"], a * 2 + b)
    in_order = BackendRunner("pytorch", path, ["first", "second"], ["x", "y"])
    np.testing.assert_array_equal(in_order({"first": b, "second": a})["y"], b - a)
    with pytest.raises(RepositoryError, match="torch.jit.load cannot load"):
        (tmp_path / "bad.pt").write_bytes(b"not a model")
        BackendRunner("pytorch", tmp_path / "bad.pt", ["a"], ["b"])


@pytest.mark.tf
def test_tensorflow_savedmodel_signature(tmp_path):
    tf = pytest.importorskip("tensorflow")

    class Reshape(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="input_1")])
        def __call__(self, x):
            return {"output_1": tf.reduce_sum(tf.reshape(x, [-1, 4]), axis=1, keepdims=True)}

    module = Reshape()
    tf.saved_model.save(module, str(tmp_path / "model.savedmodel"), signatures={"serving_default": module.__call__})
    runner = BackendRunner("tensorflow", tmp_path / "model.savedmodel", ["input_1"], ["output_1"])
    out = runner({"input_1": np.arange(8, dtype=np.float32)})["output_1"]
    np.testing.assert_array_equal(out, [[6.0], [22.0]])
    with pytest.raises(RequestError, match="rejects the request"):
        runner({"input_1": np.arange(6, dtype=np.float32)})   # not a whole number of rows of 4
    with pytest.raises(RepositoryError, match="not inputs of the SavedModel"):
        BackendRunner("tensorflow", tmp_path / "model.savedmodel", ["dense_input"], ["output_1"])
    with pytest.raises(RepositoryError, match="no python runner"):
        BackendRunner("tensorrt", tmp_path / "model.savedmodel", ["a"], ["b"])
