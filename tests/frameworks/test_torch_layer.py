"""hps.torch: LookupLayer values, the hps::lookup custom op under torch.compile / torch.export /
torch.jit.trace / torch.jit.script, errors. TorchScript as HugeCTR's users use it (fork / wait, save, load in
another process): tests/compat/test_torch_torchscript.py."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hps_torch = pytest.importorskip("hps.torch")

from hps.errors import ConfigError, KeyInputError, UnknownModelError  # noqa: E402

from .conftest import DIM, KEYS_PER_SAMPLE, MAX_BATCH_SIZE, expected_vectors  # noqa: E402


class _Model(torch.nn.Module):
    """keys (B, 3) → hps lookup → flatten → Linear → (B, 1)."""

    def __init__(self, path: str):
        super().__init__()
        self.lookup = hps_torch.LookupLayer(path, "m", 0, DIM)
        self.fc = torch.nn.Linear(3 * DIM, 1)

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        return self.fc(self.lookup(keys).flatten(1))


def test_lookup_matches_the_table(small_model):
    path, table = small_model
    keys = torch.tensor([[0, 5, 63, 64], [1, 2, 3, -1]])  # 64 and -1 miss: default value
    out = hps_torch.LookupLayer(path, "m", 0, DIM)(keys)
    assert out.dtype == torch.float32 and out.shape == (2, 4, DIM) and out.device == keys.device
    np.testing.assert_array_equal(out.numpy(), expected_vectors(table, keys.numpy()))
    transposed = keys.t().contiguous().t()  # a strided view: same values
    np.testing.assert_array_equal(hps_torch.LookupLayer(path, "m", 0, DIM)(transposed).numpy(), out.numpy())


def test_int32_keys_with_supportlonglong_false(small_model_i32):
    path, table = small_model_i32
    keys = torch.tensor([[0, 5], [63, 1]], dtype=torch.int32)
    np.testing.assert_array_equal(hps_torch.LookupLayer(path, "m", 0, DIM)(keys).numpy(), table[keys.numpy()])
    with pytest.raises(KeyInputError, match="supportlonglong=false"):
        hps_torch.LookupLayer(path, "m", 0, DIM)(keys.long())


def test_torch_compile_fullgraph(small_model):
    path, _ = small_model
    model = _Model(path).eval()
    keys = torch.tensor([[1, 2, 3], [4, 5, 70]])
    compiled = torch.compile(model, fullgraph=True)  # one opaque custom op: no graph break
    with torch.no_grad():
        torch.testing.assert_close(compiled(keys), model(keys))


def test_torch_export_with_dynamic_batch(small_model):
    path, _ = small_model
    model = _Model(path).eval()
    keys = torch.tensor([[1, 2, 3], [4, 5, 6]])
    batch = torch.export.Dim("batch", max=MAX_BATCH_SIZE)
    exported = torch.export.export(model, (keys,), dynamic_shapes={"keys": {0: batch}})
    assert "torch.ops.hps.lookup.default" in exported.graph_module.code
    other = torch.tensor([[7, 8, 9]] * 5)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(other), model(other))


def test_op_registration_passes_opcheck(small_model, small_model_i32):
    """The hps::lookup op's schema, fake (meta) kernel and autograd registration agree with its kernel."""
    for path, dtype in ((small_model[0], torch.int64), (small_model_i32[0], torch.int32)):
        keys = torch.tensor([[1, 2, 3], [4, 5, 70]], dtype=dtype)
        results = torch.library.opcheck(torch.ops.hps.lookup.default, (keys, path, "m", 0, DIM))
        assert set(results.values()) == {"SUCCESS"}, results


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_torch_jit_trace_records_the_op(small_model):
    """A trace records the hps::lookup op, not the vectors of the example keys as a constant."""
    path, table = small_model
    model = _Model(path).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, (torch.tensor([[1, 2, 3], [4, 5, 6]]),))
        assert "ops.hps.lookup" in traced.lookup.code
        other = torch.tensor([[7, 8, 9], [10, 11, 70], [12, 13, 14]])
        torch.testing.assert_close(traced(other), model(other), rtol=0, atol=0)
        layer = torch.jit.trace(hps_torch.LookupLayer(path, "m", 0, DIM), (torch.tensor([[1, 2]]),))
        np.testing.assert_array_equal(layer(other).numpy(), expected_vectors(table, other.numpy()))


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_torch_jit_script_matches_eager(small_model):
    path, table = small_model
    model = _Model(path).eval()
    scripted = torch.jit.script(model)
    keys = torch.tensor([[7, 8, 9], [10, 11, 70]])
    with torch.no_grad():
        torch.testing.assert_close(scripted(keys), model(keys), rtol=0, atol=0)
    np.testing.assert_array_equal(scripted.lookup(keys).numpy(), expected_vectors(table, keys.numpy()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_keys_stay_on_the_device(small_model):
    path, table = small_model
    keys = torch.tensor([[1, 2], [3, 4]], device="cuda")
    out = hps_torch.LookupLayer(path, "m", 0, DIM)(keys)
    assert out.device == keys.device and out.dtype == torch.float32
    np.testing.assert_array_equal(out.cpu().numpy(), table[keys.cpu().numpy()])


@pytest.mark.parametrize("keys", [torch.tensor([[1.0, 2.0]]), torch.tensor([[1, 2]], dtype=torch.int32),
                                  torch.tensor([[1, 2]], dtype=torch.uint8)])
def test_wrong_dtype_raises(small_model, keys):
    with pytest.raises(KeyInputError, match="keys"):
        hps_torch.LookupLayer(small_model[0], "m", 0, DIM)(keys)


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2), ()])
def test_wrong_rank_raises(small_model, shape):
    with pytest.raises(KeyInputError, match=r"\(batch, keys per sample\)"):
        hps_torch.LookupLayer(small_model[0], "m", 0, DIM)(torch.zeros(shape, dtype=torch.int64))


def test_dim_model_table_and_batch_errors(small_model):
    path, _ = small_model
    with pytest.raises(ConfigError, match="emb_vec_size 4 does not match"):
        hps_torch.LookupLayer(path, "m", 0, 4)
    with pytest.raises(ConfigError, match="emb_vec_size"):
        torch.ops.hps.lookup(torch.zeros((1, 1), dtype=torch.int64), path, "m", 0, 4)
    with pytest.raises(UnknownModelError):
        hps_torch.LookupLayer(path, "nope", 0, DIM)
    with pytest.raises(UnknownModelError):
        hps_torch.LookupLayer(path, "m", 3, DIM)
    with pytest.raises(KeyInputError, match="max_batch_size"):
        hps_torch.LookupLayer(path, "m", 0, DIM)(torch.zeros((MAX_BATCH_SIZE + 1, KEYS_PER_SAMPLE), dtype=torch.int64))


def test_a_relative_ps_config_file_follows_the_working_directory(tmp_path, monkeypatch):
    """The same relative spelling names another ps.json after a chdir (it was resolved once per process)."""
    from hps.registry import real_path

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ps.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "a")
    first = real_path("ps.json")
    monkeypatch.chdir(tmp_path / "b")
    assert real_path("ps.json") != first and real_path("ps.json").endswith("b/ps.json")
