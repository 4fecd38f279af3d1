"""The `hps` command: inspect, lookup, convert, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hps.cli.main import main
from hps.model_format import SparseModel, write_sparse_model


@pytest.fixture()
def ps_json(tmp_path):
    write_sparse_model(tmp_path / "t0", np.arange(100, dtype=np.int64), np.ones((100, 4), np.float32) * 0.5)
    cfg = {"supportlonglong": True, "volatile_db": {"type": "hash_map"},
           "models": [{"model": "m", "sparse_files": ["t0"], "embedding_vecsize_per_table": [4],
                       "maxnum_catfeature_query_per_table_per_sample": [2], "default_value_for_each_table": [7.0],
                       "deployed_device_list": [0]}]}
    path = tmp_path / "ps.json"
    path.write_text(json.dumps(cfg))
    return path


def test_inspect_prints_rows_dims_and_memory(ps_json, capsys):
    assert main(["inspect", str(ps_json)]) == 0
    out = capsys.readouterr().out
    assert "100" in out and "KiB" in out and "hash_map" in out


def test_lookup_prints_vectors_and_defaults(ps_json, capsys):
    assert main(["lookup", str(ps_json), "--model", "m", "3", "1000"]) == 0
    out = capsys.readouterr().out
    assert "0.5" in out and "7." in out


def test_errors_exit_2_with_a_message(ps_json, capsys):
    assert main(["lookup", str(ps_json), "--model", "nope", "3"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["inspect", str(ps_json.parent / "missing.json")]) == 2


def test_convert_npy(tmp_path, capsys):
    table = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    np.save(tmp_path / "table.npy", table)
    assert main(["convert", str(tmp_path / "table.npy"), str(tmp_path / "out.model")]) == 0
    model = SparseModel(tmp_path / "out.model", 8)
    np.testing.assert_array_equal(np.asarray(model.vectors), table)
    assert "50 rows of dim 8" in capsys.readouterr().out


def test_triton_build_writes_the_seed_repository(ps_json, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    width = 2 * 4  # maxnum 2 keys × dim 4
    weight = helper.make_tensor("w", TensorProto.FLOAT, [width, 1], [0.1] * width)
    graph = helper.make_graph([helper.make_node("MatMul", ["input_1", "w"], ["output_1"])], "dense",
                              [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info("output_1", TensorProto.FLOAT, [None, 1])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "dense.onnx")
    repo = tmp_path / "repo"
    assert main(["triton", "build", "--config", str(ps_json), "--dense", str(tmp_path / "dense.onnx"),
                 "--out", str(repo)]) == 0
    assert {p.name for p in repo.iterdir()} == {"m", "dense_model", "ensemble_model"}
    config = (repo / "m" / "config.pbtxt").read_text()
    assert 'name: "KEYS"' in config and "TYPE_INT64" in config and 'name: "OUTPUT0"' in config
    assert "EMB_KEY" in (repo / "ensemble_model" / "config.pbtxt").read_text()


@pytest.mark.parametrize("extra, kind, cache_bytes", [
    ({"gpucacheper": 0.5}, "dynamic 50%", 64 * (16 + 16)),    # buckets (at least 64 rows): key + score per slot
    ({"gpucacheper": 1.0}, "dynamic 100%", 100 * (16 + 24)),  # whole table: a linear-probing index
    ({"use_static_table": True}, "static", 100 * (16 + 24)),
])
def test_cache_memory_estimate_follows_the_cache_built(ps_json, extra, kind, cache_bytes):
    from hps.config.parse import parse_config
    from hps.sizing import estimate_memory

    cfg = json.loads(ps_json.read_text())
    cfg["models"][0].update(extra)
    (estimate,) = estimate_memory(parse_config(cfg, base_dir=str(ps_json.parent)))
    assert (estimate.cache_kind, estimate.cache_bytes) == (kind, cache_bytes)
