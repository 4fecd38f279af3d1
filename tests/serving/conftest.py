"""Fixtures for the Triton deployment tests: sparse models, ps.json files and ONNX dense models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hps.model_format.writer import write_sparse_model


def write_table(path: Path, keys: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Write a sparse model directory with random vectors; returns the (n, dim) float32 vectors."""
    vectors = np.random.default_rng(seed).standard_normal((keys.size, dim)).astype(np.float32)
    write_sparse_model(path, keys.astype(np.int64), vectors)
    return vectors


def write_ps_json(path: Path, model: str, tables: list[str], dims: list[int], maxnum: list[int],
                  max_batch_size: int = 1024, defaults: list[float] | None = None) -> Path:
    """A HugeCTR ps.json for one model with a hash_map volatile tier and no GPU cache."""
    config = {
        "supportlonglong": True,
        "volatile_db": {"type": "hash_map", "num_partitions": 2},
        "models": [{
            "model": model,
            "sparse_files": tables,
            "embedding_table_names": [f"{model}_t{i}" for i in range(len(tables))],
            "embedding_vecsize_per_table": dims,
            "maxnum_catfeature_query_per_table_per_sample": maxnum,
            "default_value_for_each_table": defaults or [0.5] * len(tables),
            "deployed_device_list": [0],
            "max_batch_size": max_batch_size,
            "gpucache": False,
            "hit_rate_threshold": 1.0,
        }],
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def write_dense_onnx(path: Path, width: int, batch: int | None = None, hidden: int = 32, seed: int = 0,
                     input_name: str = "input_1", output_name: str = "fc_3") -> Path:
    """A small MLP (width → hidden → 1, ReLU, sigmoid) as ONNX, with a fixed or dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32)
    b1 = rng.standard_normal(hidden).astype(np.float32) * 0.1
    w2 = (rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32)
    nodes = [helper.make_node("MatMul", [input_name, "w1"], ["h0"]),
             helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]),
             helper.make_node("MatMul", ["h2", "w2"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], [output_name])]
    graph = helper.make_graph(
        nodes, "dense",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch if batch else "batch", width])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch if batch else "batch", 1])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                     numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def seed_model(tmp_path_factory) -> dict:
    """The seed's setup: one table (vocab 30,000, dim 16, 3 keys per sample) and a dense MLP over 48 floats."""
    root = tmp_path_factory.mktemp("seed")
    keys = np.arange(30000, dtype=np.int64)
    vectors = write_table(root / "naive_dnn_sparse.model", keys, 16, seed=1)
    ps_json = write_ps_json(root / "hps_embedding.json", "hps_embedding", ["naive_dnn_sparse.model"], [16], [3])
    dense = write_dense_onnx(root / "naive_dnn_dense.onnx", 48)
    return {"root": root, "keys": keys, "vectors": vectors, "ps_json": ps_json, "dense": dense}
