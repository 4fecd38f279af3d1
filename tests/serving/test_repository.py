"""Model repository writer: layout, per-model ps.json, configs, HugeCTR conversion, hot-add dirs."""

import json
import shutil

import numpy as np
import pytest

from hps.config import load_config
from hps.errors import ConfigError
from hps.model_format.reader import SparseModel
from hps.serving.triton import add_model_to_repository, build_repository, convert_hugectr_repository
from hps.serving.triton import config_text
from hps.serving.triton.errors import RepositoryError
from tests.serving.conftest import write_ps_json, write_table


def test_build_repository_layout(seed_model, tmp_path):
    repo = build_repository(seed_model["ps_json"], seed_model["dense"], tmp_path / "repo")
    emb = repo / "hps_embedding"
    assert (emb / "1" / "model.py").is_file() and (repo / "dense_model" / "1" / "model.py").is_file()
    assert (repo / "dense_model" / "1" / "naive_dnn_dense.onnx").is_file()
    assert (repo / "ensemble_model" / "1").is_dir() and not any((repo / "ensemble_model" / "1").iterdir())
    raw = json.loads((emb / "hps_embedding.json").read_text())
    assert raw["models"][0]["sparse_files"] == ["1/naive_dnn_sparse.model"]
    assert raw["volatile_db"]["type"] == "hash_map" and raw["models"][0]["max_batch_size"] == 1024
    table = SparseModel(load_config(emb / "hps_embedding.json").models[0].sparse_files[0], 16)
    np.testing.assert_array_equal(np.asarray(table.vectors), seed_model["vectors"])
    cfg = (emb / "config.pbtxt").read_text()
    assert config_text.top_level_field(cfg, "backend") == "python"
    assert 'name: "KEYS" data_type: TYPE_INT64 dims: [ -1, -1 ]' in cfg
    assert 'name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ]' in cfg and "max_batch_size: 0" in cfg
    dense = (repo / "dense_model" / "config.pbtxt").read_text()
    assert '"width" value: { string_value: "48" }' in dense
    ens = (repo / "ensemble_model" / "config.pbtxt").read_text()
    assert 'model_name: "hps_embedding"' in ens and 'model_name: "dense_model"' in ens


def test_build_repository_refuses_mistakes(seed_model, tmp_path):
    with pytest.raises(RepositoryError, match="dense model file not found"):
        build_repository(seed_model["ps_json"], tmp_path / "none.onnx", tmp_path / "r1")
    build_repository(seed_model["ps_json"], seed_model["dense"], tmp_path / "r2")
    with pytest.raises(RepositoryError, match="already exists"):
        build_repository(seed_model["ps_json"], seed_model["dense"], tmp_path / "r2")
    build_repository(seed_model["ps_json"], seed_model["dense"], tmp_path / "r2", overwrite=True)
    from tests.serving.conftest import write_dense_onnx

    wrong = write_dense_onnx(tmp_path / "wrong.onnx", 40)
    with pytest.raises(RepositoryError, match="takes 40 floats per sample but the embedding model gives 48"):
        build_repository(seed_model["ps_json"], wrong, tmp_path / "r3")
    two = json.loads(seed_model["ps_json"].read_text())
    two["models"].append({**two["models"][0], "model": "other"})
    both = seed_model["root"] / "two.json"
    both.write_text(json.dumps(two))
    with pytest.raises(ConfigError, match="say which one"):
        build_repository(both, seed_model["dense"], tmp_path / "r4")
    repo = build_repository(both, seed_model["dense"], tmp_path / "r4", model_name="other", copy_sparse=False)
    raw = json.loads((repo / "other" / "other.json").read_text())
    assert [m["model"] for m in raw["models"]] == ["other"]
    assert raw["models"][0]["sparse_files"] == [str(seed_model["root"] / "naive_dnn_sparse.model")]


def test_tensorrt_plan_gets_the_seeds_config(seed_model, tmp_path):
    plan = tmp_path / "naive_dnn_dense.trt"
    plan.write_bytes(b"not a real engine")
    repo = build_repository(seed_model["ps_json"], plan, tmp_path / "repo", dense_name="trt_naive_dnn_dense")
    cfg = (repo / "trt_naive_dnn_dense" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in cfg and "dims: [ 49152 ]" in cfg and "shape: [ 1024, 48 ]" in cfg
    assert 'output_map { key: "fc_3" value: "DENSE_OUTPUT" }' in (repo / "ensemble_model" / "config.pbtxt").read_text()


def make_hugectr_repository(root, seed_model):
    """The seed's notebook-02 repository: hps_embedding with backend "hps", the sparse model copied into 1/,
    a ps.json pointing at /hps_demo/... (not existing here), and a TF dense model we keep as is."""
    repo = root / "hps_demo"
    (repo / "hps_embedding" / "1").mkdir(parents=True)
    shutil.copytree(seed_model["root"] / "naive_dnn_sparse.model", repo / "hps_embedding" / "1" / "naive_dnn_sparse.model")
    from tests.serving.test_config_text import HUGECTR_CONFIG

    (repo / "hps_embedding" / "config.pbtxt").write_text(HUGECTR_CONFIG)
    (repo / "tf_reshape_dense_model" / "1").mkdir(parents=True)
    (repo / "tf_reshape_dense_model" / "config.pbtxt").write_text(
        'name: "tf_reshape_dense_model"\nplatform: "tensorflow_savedmodel"\nmax_batch_size: 0\n')
    ps = write_ps_json(repo / "hps_embedding" / "hps_embedding.json", "hps_embedding",
                       ["/hps_demo/hps_embedding/1/naive_dnn_sparse.model"], [16], [3])
    return repo, ps


def test_convert_hugectr_repository(seed_model, tmp_path):
    repo, ps = make_hugectr_repository(tmp_path, seed_model)
    out = tmp_path / "converted"
    # the TF model has no SavedModel here: on a server without tensorflow it could not run, and convert says so
    with pytest.raises(RepositoryError, match=f"{repo}/tf_reshape_dense_model/1/model.savedmodel: tensorflow model"):
        convert_hugectr_repository(repo, out, ps, backends={"python"})
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["hps_demo"]
    # a server with the tensorflow backend keeps it as it is
    assert convert_hugectr_repository(repo, out, ps, backends={"python", "tensorflow"}) == ["hps_embedding"]
    emb = out / "hps_embedding"
    assert config_text.top_level_field((emb / "config.pbtxt").read_text(), "backend") == "python"
    assert (emb / "config.pbtxt.hugectr").read_text().count('backend: "hps"') == 1
    assert (emb / "1" / "model.py").is_file()
    assert json.loads((emb / "hps_embedding.json").read_text())["models"][0]["sparse_files"] == [
        "1/naive_dnn_sparse.model"]
    assert (out / "tf_reshape_dense_model" / "config.pbtxt").read_text().startswith('name: "tf_reshape_dense_model"')
    assert config_text.top_level_field((repo / "hps_embedding" / "config.pbtxt").read_text(), "backend") == "hps"
    with pytest.raises(RepositoryError, match="no model with backend"):
        convert_hugectr_repository(out, None, ps)


def test_add_model_to_repository(seed_model, tmp_path):
    repo = build_repository(seed_model["ps_json"], seed_model["dense"], tmp_path / "repo")
    write_table(tmp_path / "new.model", np.arange(50), 8, seed=3)
    ps = write_ps_json(tmp_path / "new.json", "new_model", ["new.model"], [8], [1])
    model_dir = add_model_to_repository(repo, ps)
    assert model_dir == repo / "new_model" and (model_dir / "1" / "new.model" / "key").is_file()
    assert 'name: "new_model"' in (model_dir / "config.pbtxt").read_text()
    with pytest.raises(RepositoryError, match="already exists"):
        add_model_to_repository(repo, ps)


def test_fused_layout(seed_model, tmp_path):
    repo = build_repository(seed_model["ps_json"], seed_model["dense"], tmp_path / "repo", layout="fused")
    assert sorted(p.name for p in repo.iterdir()) == ["ensemble_model"]
    model = repo / "ensemble_model"
    cfg = (model / "config.pbtxt").read_text()
    assert config_text.top_level_field(cfg, "backend") == "python" and 'name: "EMB_N_KEY"' in cfg
    assert '"dense_file" value: { string_value: "naive_dnn_dense.onnx" }' in cfg
    assert (model / "1" / "naive_dnn_dense.onnx").is_file() and (model / "1" / "naive_dnn_sparse.model").is_dir()
    assert json.loads((model / "hps_embedding.json").read_text())["models"][0]["model"] == "hps_embedding"
    with pytest.raises(RepositoryError, match="layout must be"):
        build_repository(seed_model["ps_json"], seed_model["dense"], tmp_path / "r2", layout="flat")


def test_several_instances_need_a_read_only_rocksdb(seed_model, tmp_path):
    raw = json.loads(seed_model["ps_json"].read_text())
    raw["persistent_db"] = {"type": "rocks_db", "path": str(tmp_path / "rocks")}
    ps = tmp_path / "rocks.json"
    ps.write_text(json.dumps({**raw, "models": [{**raw["models"][0],
                                                 "sparse_files": [str(seed_model["root"] / "naive_dnn_sparse.model")]}]}))
    with pytest.raises(RepositoryError, match="RocksDB allows one writer"):
        build_repository(ps, seed_model["dense"], tmp_path / "repo", instance_count=2)
    repo = build_repository(ps, seed_model["dense"], tmp_path / "repo", instance_count=1)
    assert json.loads((repo / "hps_embedding" / "hps_embedding.json").read_text())["persistent_db"]["path"] == str(
        tmp_path / "rocks")


def test_failed_convert_leaves_nothing_behind(seed_model, tmp_path):
    repo, _ = make_hugectr_repository(tmp_path, seed_model)
    wrong = write_ps_json(tmp_path / "other.json", "other_model", [str(seed_model["root"] / "naive_dnn_sparse.model")],
                          [16], [3])
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    out = tmp_path / "converted"
    with pytest.raises(RepositoryError, match="no model 'hps_embedding'"):
        convert_hugectr_repository(repo, out, wrong, backends={"python", "tensorflow"})
    with pytest.raises(RepositoryError, match="no model 'hps_embedding'"):
        convert_hugectr_repository(repo, None, wrong, backends={"python", "tensorflow"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hps_demo", "other.json"]   # no output, no temp dir
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    with pytest.raises(RepositoryError, match="cannot be inside the repository"):
        convert_hugectr_repository(repo, repo / "converted", wrong)
    out.mkdir()  # an empty output directory is fine, and is replaced whole
    assert convert_hugectr_repository(repo, out, tmp_path / "hps_demo" / "hps_embedding" / "hps_embedding.json",
                                      backends={"python", "tensorflow"}) == ["hps_embedding"]
    assert (out / "hps_embedding" / "config.pbtxt.hugectr").is_file()
