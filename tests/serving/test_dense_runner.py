"""DenseRunner: ONNX (dynamic and fixed batch) and TorchScript on the flat OUTPUT0 vectors."""

import numpy as np
import pytest

from hps.serving.triton.dense_runner import DenseRunner, dense_kind
from hps.serving.triton.errors import RepositoryError, RequestError
from tests.serving.conftest import write_dense_onnx


def reference(path, batch):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_1": batch})[0]


def test_onnx_dynamic_batch(tmp_path):
    path = write_dense_onnx(tmp_path / "d.onnx", 48)
    runner = DenseRunner(path)
    assert runner.width == 48 and runner.fixed_batch is None and runner.output_name == "fc_3"
    batch = np.random.default_rng(0).standard_normal((5, 48)).astype(np.float32)
    out = runner(batch.ravel())
    assert out.shape == (5, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(path, batch), rtol=1e-6)


def test_onnx_fixed_batch_is_chunked_and_padded(tmp_path):
    path = write_dense_onnx(tmp_path / "d.onnx", 8, batch=4)  # like the seed's ONNX, fixed to 1,024
    runner = DenseRunner(path, width=8)
    assert runner.fixed_batch == 4
    batch = np.random.default_rng(1).standard_normal((10, 8)).astype(np.float32)
    padded = np.concatenate([batch, np.zeros((2, 8), np.float32)])
    expected = np.concatenate([reference(path, padded[i:i + 4]) for i in range(0, 12, 4)])[:10]
    np.testing.assert_allclose(runner(batch.ravel()), expected, rtol=1e-6)


def test_width_mismatch_and_bad_input(tmp_path):
    path = write_dense_onnx(tmp_path / "d.onnx", 48)
    with pytest.raises(RepositoryError, match="takes 48 floats per sample but the embedding model gives 64"):
        DenseRunner(path, width=64)
    runner = DenseRunner(path)
    with pytest.raises(RequestError, match="not a whole number of samples of 48"):
        runner(np.zeros(50, np.float32))
    with pytest.raises(RequestError, match="must be FP32"):
        runner(np.zeros(48, np.float64))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript(tmp_path):
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(12, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    path = tmp_path / "dense.pt"
    torch.jit.script(module).save(str(path))
    runner = DenseRunner(path, width=12)
    batch = np.random.default_rng(2).standard_normal((3, 12)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(runner(batch.ravel()), expected, rtol=1e-5)


def test_kinds(tmp_path):
    assert dense_kind("a.onnx") == "onnx" and dense_kind("a.pt") == "torchscript" and dense_kind("a.plan") == "tensorrt"
    with pytest.raises(RepositoryError, match="unknown dense model type"):
        dense_kind("model.savedmodel")
    with pytest.raises(RepositoryError, match="not found"):
        DenseRunner(tmp_path / "missing.onnx")


def test_onnx_session_never_spins(tmp_path):
    from hps.serving.triton.dense_runner import ORT_SESSION_CONFIG

    runner = DenseRunner(write_dense_onnx(tmp_path / "d.onnx", 48), threads=2)
    options = runner._session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    for key, value in ORT_SESSION_CONFIG.items():
        assert options.get_session_config_entry(key) == value
