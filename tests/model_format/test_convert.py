"""Converters: PyTorch modules, state_dicts and tensors; `convert_file` on .npy and .pt."""

from __future__ import annotations

import numpy as np
import pytest

from hps.errors import ModelFormatError
from hps.model_format import SparseModel, convert_file, write_from_torch

torch = pytest.importorskip("torch")


class _TwoTables(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.user = torch.nn.Embedding(6, 4)
        self.item = torch.nn.Embedding(5, 4)
        self.bias = torch.nn.Parameter(torch.zeros(4))


def _weight(rows: int = 6, dim: int = 4) -> "torch.Tensor":
    generator = torch.Generator().manual_seed(0)
    return torch.randn(rows, dim, generator=generator)


def test_from_embedding_module(tmp_path):
    embedding = torch.nn.Embedding(6, 4)
    model = write_from_torch(tmp_path / "t", embedding)
    assert (model.num_rows, model.dim) == (6, 4)
    assert model.keys.tolist() == list(range(6))
    np.testing.assert_array_equal(model.vectors, embedding.weight.detach().numpy())


def test_from_state_dict_tensor_and_keys(tmp_path):
    weight = _weight()
    keys = torch.tensor([10, 20, 30, 40, 50, 60])
    model = write_from_torch(tmp_path / "sd", {"emb.weight": weight, "step": torch.tensor(3)}, keys=keys)
    assert model.keys.tolist() == [10, 20, 30, 40, 50, 60]
    np.testing.assert_array_equal(model.vectors, weight.numpy())
    model = write_from_torch(tmp_path / "tensor", weight.double(), keys=np.arange(6) * 2)
    np.testing.assert_array_equal(model.vectors, weight.numpy())
    assert model.keys.tolist() == [0, 2, 4, 6, 8, 10]


def test_ambiguous_state_dict_lists_candidates(tmp_path):
    module = _TwoTables()
    with pytest.raises(ModelFormatError, match=r"2 2-D floating tensors \(user.weight \(6, 4\), item.weight \(5, 4\)\)"):
        write_from_torch(tmp_path / "t", module)
    model = write_from_torch(tmp_path / "t", module, param_name="item.weight")
    np.testing.assert_array_equal(model.vectors, module.item.weight.detach().numpy())
    with pytest.raises(ModelFormatError, match=r"no tensor named 'nope'; tensors: bias \(4,\), user.weight"):
        write_from_torch(tmp_path / "u", module.state_dict(), param_name="nope")
    with pytest.raises(ModelFormatError, match="must be 2-D"):
        write_from_torch(tmp_path / "u", module, param_name="bias")
    with pytest.raises(ModelFormatError, match="expected a tensor, an nn.Module or a state_dict"):
        write_from_torch(tmp_path / "u", [1, 2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_convert_npy_with_and_without_keys(tmp_path):
    table = _weight(7, 3).numpy()
    np.save(tmp_path / "table.npy", table)
    np.save(tmp_path / "keys.npy", np.arange(7, dtype=np.int32) + 100)
    model = convert_file(tmp_path / "table.npy", tmp_path / "out")
    assert isinstance(model, SparseModel) and model.keys.tolist() == list(range(7))
    np.testing.assert_array_equal(model.vectors, table)
    model = convert_file(tmp_path / "table.npy", tmp_path / "out2", keys_path=tmp_path / "keys.npy")
    assert model.keys.tolist() == list(range(100, 107))
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(ModelFormatError, match=r"flat.npy holds an array of shape \(5,\)"):
        convert_file(tmp_path / "flat.npy", tmp_path / "out3")
    np.save(tmp_path / "short_keys.npy", np.arange(3))
    with pytest.raises(ModelFormatError, match="3 keys but 7 vector rows"):
        convert_file(tmp_path / "table.npy", tmp_path / "out3", keys_path=tmp_path / "short_keys.npy")
    assert not (tmp_path / "out3").exists()


def test_convert_torch_checkpoints(tmp_path):
    module = _TwoTables()
    torch.save(module.state_dict(), tmp_path / "sd.pt")
    model = convert_file(tmp_path / "sd.pt", tmp_path / "a", param_name="user.weight")
    np.testing.assert_array_equal(model.vectors, module.user.weight.detach().numpy())
    torch.save({"model": module.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    model = convert_file(tmp_path / "ckpt.pth", tmp_path / "b", param_name="model.item.weight")
    np.testing.assert_array_equal(model.vectors, module.item.weight.detach().numpy())
    embedding = torch.nn.Embedding(9, 2)
    torch.save(embedding, tmp_path / "module.pt")  # a pickled module, not a state_dict
    with pytest.raises(ModelFormatError, match="allow_pickle"):  # refused by default: it runs code
        convert_file(tmp_path / "module.pt", tmp_path / "d")
    assert not (tmp_path / "d").exists()
    with pytest.warns(UserWarning, match="runs code"):
        model = convert_file(tmp_path / "module.pt", tmp_path / "c", allow_pickle=True)
    np.testing.assert_array_equal(model.vectors, embedding.weight.detach().numpy())


class _Crafted:
    """A checkpoint payload whose unpickling creates a file: what a malicious .pt would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hps_convert_never_unpickles_by_default(tmp_path, capsys):
    from hps.cli.main import main

    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(3, 2), "payload": _Crafted(str(marker))}, tmp_path / "evil.pt")
    assert not marker.exists()
    assert main(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--allow-pickle" in err and "evil.pt" in err and "runs code" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    with pytest.raises(ModelFormatError, match="allow_pickle=True"):
        convert_file(tmp_path / "evil.pt", tmp_path / "out")
    assert not marker.exists()
    # the explicit opt-in loads it (and so runs its code), with a warning
    with pytest.warns(UserWarning, match="runs code"):
        assert main(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "out"), "--allow-pickle",
                     "--param", "weight"]) == 0
    assert marker.exists()


def test_convert_bad_inputs(tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        convert_file(tmp_path / "missing.npy", tmp_path / "o")
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(ModelFormatError, match="suffix '.csv'; supported: .npy, .pt, .pth"):
        convert_file(tmp_path / "table.csv", tmp_path / "o")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFormatError, match="garbage.pt"):
        convert_file(tmp_path / "garbage.pt", tmp_path / "o")
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    with pytest.raises(ModelFormatError, match="garbage.npy"):
        convert_file(tmp_path / "garbage.npy", tmp_path / "o")
    assert not (tmp_path / "o").exists()
