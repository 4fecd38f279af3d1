"""HugeCTR's TensorFlow users' code runs unchanged: the calls of HugeCTR's hps_tf unit test
(hps_tf/test/unit/test_hps.py) and notebooks (hierarchical_parameter_server_demo,
hps_multi_table_sparse_input_demo, hps_pretrained_model_training_demo, hps_table_fusion_demo,
hps_tensorflow_triton_deployment_demo), written again on small tables made here.

In this process (Keras 3): `hps.Init(global_batch_size=..., ps_config_file=...)`, layers without a file
that use the Init-ed one, numpy keys straight into a layer, `tf.nn.embedding_lookup(_sparse)` as the
reference, `@tf.function` inference over a `tf.data` pipeline, training a new head on looked-up
embeddings under `tf.distribute.MirroredStrategy`, a subclassed model holding one LookupLayer per
table. In two Keras 2 subprocesses (TF_USE_LEGACY_KERAS=1, as HugeCTR's containers ran): the notebooks'
save-then-load flows: models saved before their ps.json exists and without `Init`, then
`tf.keras.models.load_model(dir)` (no custom_objects) in a fresh process after `Init`, a relative
`ps_config_file` rewritten after saving (table fusion), and a Triton-style serving signature.
Embeddings are compared exactly with rows read straight from the sparse files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
hps_tf = pytest.importorskip("hps.tensorflow")

import hierarchical_parameter_server as hps  # noqa: E402 - HugeCTR's spelling, as its users import it

from hps.model_format import write_sparse_model  # noqa: E402

pytestmark = pytest.mark.tf

GLOBAL_BATCH = 32
DEFAULT_VALUE = 1.0
# test_hps.py's layout: model "foo" with one table, model "bar" with two of other sizes; int32 keys
UNIT_MODELS = {"foo": {"vocab": [300], "dims": [16], "nnz": [10]},
               "bar": {"vocab": [200, 50], "dims": [8, 4], "nnz": [3, 5]}}


def _write_table(directory: Path, keys: np.ndarray, dim: int, seed: int) -> str:
    """A sparse model directory with `keys` (written shuffled) and random float32 rows; its path."""
    rng = np.random.default_rng(seed)
    keys = rng.permutation(np.asarray(keys, np.int64))
    write_sparse_model(directory, keys, rng.random((len(keys), dim), dtype=np.float32))
    return str(directory)


def _model_entry(name: str, files: list[str], dims: list[int], nnz: list[int], max_batch_size: int) -> dict:
    return {"model": name, "sparse_files": files, "num_of_worker_buffer_in_pool": 3,
            "embedding_table_names": [f"sparse_embedding{i}" for i in range(len(files))],
            "embedding_vecsize_per_table": dims, "maxnum_catfeature_query_per_table_per_sample": nnz,
            "default_value_for_each_table": [DEFAULT_VALUE] * len(files), "deployed_device_list": [0],
            "max_batch_size": max_batch_size, "cache_refresh_percentage_per_iteration": 0.2,
            "hit_rate_threshold": 1.0, "gpucacheper": 1.0, "gpucache": True}


def from_files(table_dir: str, keys: np.ndarray) -> np.ndarray:
    """keys (...) → (..., dim) float32 from the raw `key` / `emb_vector` files; DEFAULT_VALUE for absent keys."""
    file_keys = np.fromfile(os.path.join(table_dir, "key"), dtype="<i8")
    rows = np.fromfile(os.path.join(table_dir, "emb_vector"), dtype="<f4").reshape(len(file_keys), -1)
    order = np.argsort(file_keys)
    flat = np.asarray(keys, np.int64).ravel()
    pos = np.minimum(np.searchsorted(file_keys[order], flat), len(file_keys) - 1)
    found = file_keys[order][pos] == flat
    out = np.full((flat.size, rows.shape[1]), DEFAULT_VALUE, np.float32)
    out[found] = rows[order][pos[found]]
    return out.reshape(np.shape(keys) + (rows.shape[1],))


def _table_params(table_dir: str, vocab: int) -> np.ndarray:
    """The table as a (vocab, dim) params array for tf.nn.embedding_lookup (keys 0..vocab-1)."""
    return from_files(table_dir, np.arange(vocab))


def _sparse_keys(rng: np.random.Generator, num_samples: int, vocab: int, max_nnz: int, dtype) -> tf.SparseTensor:
    """test_hps.py's _generate_sparse_keys: 1..max_nnz sorted entries per sample, random keys."""
    mask = rng.random((num_samples, max_nnz)) < 0.5
    mask[np.arange(num_samples), rng.integers(0, max_nnz, num_samples)] = True
    indices = np.argwhere(mask).astype(np.int64)
    values = rng.integers(0, vocab, len(indices)).astype(dtype)
    return tf.sparse.SparseTensor(indices=indices, values=values, dense_shape=(num_samples, max_nnz))


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    """test_hps.py's hps.json (supportlonglong false), Init-ed as HugeCTR's test does. Init is once per
    process in HugeCTR: this module gets its own default so that other modules' Init calls don't leak in."""
    directory = tmp_path_factory.mktemp("hps_tf_unit")
    files = {name: [_write_table(directory / f"{name}_sparse_{i}.model", np.arange(vocab), dim, seed=i + 3 * j)
                    for i, (vocab, dim) in enumerate(zip(spec["vocab"], spec["dims"]))]
             for j, (name, spec) in enumerate(UNIT_MODELS.items())}
    config = {"supportlonglong": False, "models": [
        _model_entry(name, files[name], spec["dims"], spec["nnz"], GLOBAL_BATCH) for name, spec in UNIT_MODELS.items()]}
    path = directory / "hps.json"
    path.write_text(json.dumps(config, indent=4))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hps_tf, "_default_path", [])
        assert hps.Init(ps_config_file=str(path), global_batch_size=GLOBAL_BATCH) == "OK"
        yield str(path), files


def test_unit_lookup_layer_equals_embedding_lookup(unit):
    _, files = unit
    rng = np.random.default_rng(0)
    for name, spec in UNIT_MODELS.items():
        for table_id, (vocab, dim, nnz) in enumerate(zip(spec["vocab"], spec["dims"], spec["nnz"])):
            lookup_layer = hps.LookupLayer(model_name=name, table_id=table_id, emb_vec_size=dim,
                                           emb_vec_dtype=tf.float32)
            dense_keys = rng.integers(0, vocab, size=(GLOBAL_BATCH, nnz), dtype=np.int32)
            embeddings = lookup_layer(dense_keys)  # numpy keys, as test_hps.py passes them
            embeddings_gt = tf.nn.embedding_lookup(params=_table_params(files[name][table_id], vocab),
                                                   ids=dense_keys)
            assert bool(tf.reduce_all(tf.equal(embeddings, embeddings_gt))), (name, table_id)


def test_unit_sparse_lookup_layer_equals_embedding_lookup_sparse(unit):
    _, files = unit
    rng = np.random.default_rng(1)
    for name, spec in UNIT_MODELS.items():
        for table_id, (vocab, dim, nnz) in enumerate(zip(spec["vocab"], spec["dims"], spec["nnz"])):
            sparse_lookup_layer = hps.SparseLookupLayer(model_name=name, table_id=table_id, emb_vec_size=dim,
                                                        emb_vec_dtype=tf.float32)
            sparse_keys = _sparse_keys(rng, GLOBAL_BATCH, vocab, nnz, np.int32)
            embeddings = sparse_lookup_layer(sp_ids=sparse_keys, sp_weights=None, combiner="mean")
            embeddings_gt = tf.nn.embedding_lookup_sparse(params=_table_params(files[name][table_id], vocab),
                                                          sp_ids=sparse_keys, sp_weights=None, combiner="mean")
            assert bool(tf.reduce_all(tf.equal(embeddings, embeddings_gt))), (name, table_id)


def test_infer_step_in_tf_function_over_a_dataset(unit):
    """LookupLayer's docstring example and the demos' inference loop: @tf.function over tf.data batches."""
    _, files = unit
    lookup_layer = hps.LookupLayer(model_name="bar", table_id=1, emb_vec_size=4, emb_vec_dtype=tf.float32)

    @tf.function
    def _infer_step(inputs):
        return lookup_layer(inputs)

    keys = np.random.default_rng(2).integers(0, 60, size=(3 * 8, 5), dtype=np.int32)  # 50..59 are misses
    labels = np.zeros((len(keys), 1), np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((keys, labels)).batch(8, drop_remainder=True)
    for i, (inputs, _) in enumerate(dataset):
        np.testing.assert_array_equal(_infer_step(inputs).numpy(), from_files(files["bar"][1], keys[8 * i:8 * i + 8]))
    assert i == 2


def test_pretrained_embeddings_train_a_new_head(unit):
    """hps_pretrained_model_training_demo: Init inside MirroredStrategy.scope(), a SparseLookupLayer under a new
    Dense head, trained with GradientTape through strategy.run, eagerly and in tf.function (the lookup op itself
    is not differentiable, like tf.numpy_function's PyFunc: no gradient is asked of it)."""
    path, files = unit
    slot_num, max_nnz, dim, dense_dim = 2, 3, 8, 5

    class PreTrainedEmbedding(tf.keras.models.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.sparse_lookup_layer = hps.SparseLookupLayer(model_name="bar", table_id=0, emb_vec_size=dim,
                                                             emb_vec_dtype=tf.float32)
            self.new_fc = tf.keras.layers.Dense(units=1, activation="sigmoid", name="new_fc")

        def call(self, inputs, training=True):
            embeddings = tf.reshape(self.sparse_lookup_layer(sp_ids=inputs[0], sp_weights=None, combiner="mean"),
                                    shape=[-1, slot_num * dim])
            return self.new_fc(tf.concat([embeddings, inputs[1]], axis=1)), embeddings

    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        assert hps.Init(global_batch_size=GLOBAL_BATCH, ps_config_file=path) == "OK"
        model = PreTrainedEmbedding()
        optimizer = tf.keras.optimizers.Adam(learning_rate=0.1)
    loss_fn = tf.keras.losses.BinaryCrossentropy()

    rng = np.random.default_rng(3)
    batch = 4
    sparse_keys = _sparse_keys(rng, batch * slot_num, 200, max_nnz, np.int32)  # (batch * slot_num, max_nnz)
    dense = rng.random((batch, dense_dim), dtype=np.float32)
    labels = rng.integers(0, 2, (batch, 1)).astype(np.float32)

    def _train_step(inputs, labels):
        with tf.GradientTape() as tape:
            logit, embeddings = model(inputs)
            loss = loss_fn(labels, logit)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, embeddings, grads

    losses = []
    for step in (_train_step, _train_step, tf.function(_train_step), tf.function(_train_step)):  # eager, then graphs
        loss, embeddings, grads = strategy.run(step, args=([sparse_keys, dense], labels))
        losses.append(float(loss))
    assert len(grads) == 2 and all(g is not None for g in grads)  # the head's kernel and bias only
    assert losses[-1] < losses[0]
    expected = tf.nn.embedding_lookup_sparse(_table_params(files["bar"][0], 200), sparse_keys, None, combiner="mean")
    np.testing.assert_array_equal(embeddings.numpy(), tf.reshape(expected, [-1, slot_num * dim]).numpy())


@pytest.mark.filterwarnings("ignore:fuse_embedding_table:UserWarning")
def test_table_fusion_model_with_one_layer_per_table(tmp_path):
    """hps_table_fusion_demo's InferenceModel: a list of LookupLayers with their own ps_config_file and names,
    int32 keys (supportlonglong false), tables with disjoint key ranges, one Dense over their concatenation.
    (Its summary() applies tf ops to symbolic Keras tensors, which Keras 3 refuses: the Keras 2 test runs it.)"""
    num_tables, vocab, dim, num_query_key, batch = 3, 20, 8, 4, 16
    files = [_write_table(tmp_path / f"embeddings/table{i}", np.arange(i * vocab, (i + 1) * vocab), dim, seed=i)
             for i in range(num_tables)]
    config = {"supportlonglong": False, "fuse_embedding_table": True, "models": [
        _model_entry(f"{num_tables}_table", files, [dim] * num_tables, [num_query_key] * num_tables, batch)]}
    path = tmp_path / f"{num_tables}_table.json"
    path.write_text(json.dumps(config))

    class InferenceModel(tf.keras.models.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.lookup_layers = [hps.LookupLayer(model_name=f"{num_tables}_table", table_id=i, emb_vec_size=dim,
                                                  emb_vec_dtype=np.float32, ps_config_file=str(path),
                                                  global_batch_size=batch, name=f"embedding_lookup{i}")
                                  for i in range(num_tables)]
            self.fc = tf.keras.layers.Dense(units=1, kernel_initializer="ones", bias_initializer="zeros", name="fc")

        def call(self, inputs):
            embeddings = [tf.reshape(layer(x), shape=[-1, num_query_key * dim])
                          for layer, x in zip(self.lookup_layers, inputs)]
            return self.fc(tf.concat(embeddings, axis=1))

    model = InferenceModel()
    rng = np.random.default_rng(4)
    inputs = [rng.integers(i * vocab, (i + 1) * vocab, (batch, num_query_key)).astype(np.int32)
              for i in range(num_tables)]
    expected = sum(from_files(files[i], inputs[i]).reshape(batch, -1).sum(axis=1, dtype=np.float64)
                   for i in range(num_tables))
    np.testing.assert_allclose(model(inputs).numpy()[:, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(tf.function(model)(inputs).numpy()[:, 0], expected, rtol=1e-5)


# ---- Keras 2 subprocesses: the notebooks' save-then-load flows --------------------------------------------------

NB = dict(slot_num=3, vocab_per_slot=10, dim=16, batch=8, iters=2,   # hierarchical_parameter_server_demo
          mt_slots=(2, 2), mt_dims=(8, 4), mt_nnz=3, mt_vocab=(30, 20),  # hps_multi_table_sparse_input_demo
          num_tables=3, fusion_vocab=20, fusion_dim=8, num_query_key=4,   # hps_table_fusion_demo
          triton_slots=5, triton_dim=8, dense_dim=4, triton_vocab=40)     # hps_tensorflow_triton_deployment_demo

# Saving: no ps.json exists yet for the first, second and fourth model and nothing calls Init (as in the
# notebooks); the fusion model's ps.json exists and is rewritten with fuse_embedding_table true after saving.
SAVE_NOTEBOOKS = textwrap.dedent(r'''
    import json, sys
    import numpy as np
    import tensorflow as tf
    import hierarchical_parameter_server as hps

    a = json.loads(sys.argv[1])
    assert tf.keras.layers.Layer.__module__.startswith("tf_keras"), "Keras 2 expected"

    # hierarchical_parameter_server_demo: a dense model saved apart, loaded inside the inference model
    inputs = tf.keras.Input(shape=(a["slot_num"] * a["dim"],))
    dense_model = tf.keras.models.Model(inputs, tf.keras.layers.Dense(1, kernel_initializer="ones", name="fc_2")(inputs))
    dense_model.save("naive_dnn_dense.model")

    class NaiveDnn(tf.keras.models.Model):
        def __init__(self, slot_num, embed_vec_size, dense_model_path, **kwargs):
            super().__init__(**kwargs)
            self.slot_num, self.embed_vec_size = slot_num, embed_vec_size
            self.lookup_layer = hps.LookupLayer(model_name="naive_dnn", table_id=0, emb_vec_size=embed_vec_size,
                                                emb_vec_dtype=tf.float32, name="lookup")
            self.dense_model = tf.keras.models.load_model(dense_model_path)

        def call(self, inputs):
            embedding_vector = self.lookup_layer(inputs)
            embedding_vector = tf.reshape(embedding_vector, shape=[-1, self.slot_num * self.embed_vec_size])
            return self.dense_model(embedding_vector), embedding_vector

    model = NaiveDnn(a["slot_num"], a["dim"], "naive_dnn_dense.model")
    _, _ = model(tf.keras.Input(shape=(a["slot_num"],), dtype=tf.int64))
    model.save("naive_dnn_tf_saved_model")

    # hps_multi_table_sparse_input_demo: SparseLookupLayer on a sparse Input and LookupLayer, no file
    class MultiTable(tf.keras.models.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.sparse_lookup_layer = hps.SparseLookupLayer(model_name="multi_table_sparse_input", table_id=0,
                                                             emb_vec_size=a["mt_dims"][0], emb_vec_dtype=tf.float32)
            self.lookup_layer = hps.LookupLayer(model_name="multi_table_sparse_input", table_id=1,
                                                emb_vec_size=a["mt_dims"][1], emb_vec_dtype=tf.float32)

        def call(self, inputs):
            embeddings0 = tf.reshape(self.sparse_lookup_layer(sp_ids=inputs[0], sp_weights=None, combiner="mean"),
                                     shape=[-1, a["mt_slots"][0] * a["mt_dims"][0]])
            embeddings1 = tf.reshape(self.lookup_layer(inputs[1]), shape=[-1, a["mt_slots"][1] * a["mt_dims"][1]])
            return embeddings0, embeddings1

    model = MultiTable()
    _, _ = model([tf.keras.Input(shape=(a["mt_nnz"],), sparse=True, dtype=tf.int64),
                  tf.keras.Input(shape=(a["mt_slots"][1],), dtype=tf.int64)])
    model.save("multi_table_sparse_input_tf_saved_model")

    # hps_table_fusion_demo: relative ps_config_file, int32 keys, a list input; ps.json rewritten after saving
    name = str(a["num_tables"]) + "_table"

    class Fusion(tf.keras.models.Model):
        def __init__(self, num_tables, **kwargs):
            super().__init__(**kwargs)
            self.lookup_layers = [hps.LookupLayer(model_name=name, table_id=i, emb_vec_size=a["fusion_dim"],
                                                  emb_vec_dtype=np.float32, ps_config_file=name + ".json",
                                                  global_batch_size=a["batch"], name="embedding_lookup" + str(i))
                                  for i in range(num_tables)]
            self.fc = tf.keras.layers.Dense(units=1, kernel_initializer="ones", bias_initializer="zeros", name="fc")

        def call(self, inputs):
            embeddings = [tf.reshape(self.lookup_layers[i](inputs[i]), shape=[-1, a["num_query_key"] * a["fusion_dim"]])
                          for i in range(len(inputs))]
            return self.fc(tf.concat(embeddings, axis=1))

        def summary(self):  # the demo's: a functional model over this call (tf ops on Keras 2 symbolic tensors)
            inputs = [tf.keras.Input(shape=(a["num_query_key"],), dtype=tf.int32) for _ in self.lookup_layers]
            return tf.keras.models.Model(inputs=inputs, outputs=self.call(inputs)).summary()

    model = Fusion(a["num_tables"])
    model.summary()
    model([np.random.randint(i * a["fusion_vocab"], (i + 1) * a["fusion_vocab"], (a["batch"], a["num_query_key"]))
           .astype(np.int32) for i in range(a["num_tables"])])
    model.save(name + ".savedmodel")
    config = json.load(open(name + ".json"))
    config["fuse_embedding_table"] = True
    json.dump(config, open(name + ".json", "w"), indent=4)

    # hps_tensorflow_triton_deployment_demo: the layer's ps_config_file is written after saving
    class Triton(tf.keras.models.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.lookup_layer = hps.LookupLayer(model_name="hps_tf_triton", table_id=0, emb_vec_size=a["triton_dim"],
                                                emb_vec_dtype=tf.float32,
                                                ps_config_file=a["triton_repo"] + "hps_tf_triton.json",
                                                global_batch_size=a["batch"], name="lookup")
            self.fc = tf.keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros")

        def call(self, inputs):
            embedding_vector = tf.reshape(self.lookup_layer(inputs[0]), [-1, a["triton_slots"] * a["triton_dim"]])
            return self.fc(tf.concat([embedding_vector, inputs[1]], axis=1))

    model = Triton()
    _ = model([tf.keras.Input(shape=(a["triton_slots"],), dtype=tf.int64),
               tf.keras.Input(shape=(a["dense_dim"],), dtype=tf.float32)])
    model.save("hps_tf_triton_tf_saved_model")
    print("SAVED")
''')

# Loading, as the notebooks' inference_with_saved_model: Init, then tf.keras.models.load_model without
# custom_objects; the fusion and Triton models find their own files (no Init for them).
LOAD_NOTEBOOKS = textwrap.dedent(r'''
    import json, sys
    import numpy as np
    import tensorflow as tf
    import hierarchical_parameter_server as hps

    a = json.loads(sys.argv[1])
    data = np.load("inputs.npz")
    out = {}
    hps.Init(global_batch_size=a["batch"], ps_config_file="hps.json")

    model = tf.keras.models.load_model("naive_dnn_tf_saved_model")
    dataset = tf.data.Dataset.from_tensor_slices((data["naive_keys"], data["naive_labels"])).batch(a["batch"])
    out["naive_logit"], out["naive_emb"] = [np.concatenate(v) for v in zip(*[
        [t.numpy() for t in model(id_tensors)] for id_tensors, _ in dataset])]

    model = tf.keras.models.load_model("multi_table_sparse_input_tf_saved_model")
    sparse = tf.sparse.SparseTensor(data["mt_indices"], data["mt_values"], data["mt_shape"])
    sparse_keys = tf.sparse.reshape(sparse, [-1, sparse.shape[-1]])
    embeddings0, embeddings1 = model([sparse_keys, tf.constant(data["mt_dense"])])
    out["mt_emb0"], out["mt_emb1"] = embeddings0.numpy(), embeddings1.numpy()

    model = tf.keras.models.load_model(str(a["num_tables"]) + "_table.savedmodel")
    out["fusion_logit"] = model([data["fusion%d" % i] for i in range(a["num_tables"])]).numpy()

    model = tf.keras.models.load_model("model_repo/hps_tf_triton/1/model.savedmodel")
    out["triton_logit"] = model([data["triton_keys"], data["triton_dense"]]).numpy()
    serving = tf.saved_model.load("model_repo/hps_tf_triton/1/model.savedmodel").signatures["serving_default"]
    out["triton_signature"] = list(serving(**dict(zip(sorted(serving.structured_input_signature[1]),
        [tf.constant(data["triton_keys"]), tf.constant(data["triton_dense"])]))).values())[0].numpy()
    np.savez("loaded.npz", **out)
    print("LOADED")
''')


def _run_keras2(script: str, cwd: Path) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "TF_USE_LEGACY_KERAS": "1"}
    done = subprocess.run([sys.executable, "-c", script, json.dumps({**NB, "triton_repo": "model_repo/hps_tf_triton/"})],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert done.returncode == 0, f"failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tf_keras") is None, reason="needs tf-keras (the tf extra)")
def test_notebooks_save_then_load_in_a_fresh_keras2_process(tmp_path):
    n = NB
    rng = np.random.default_rng(6)
    # the fusion model's ps.json exists before saving (relative sparse_files, as the demo writes them)
    fusion_files = [_write_table(tmp_path / f"embeddings/table{i}", np.arange(i * n["fusion_vocab"], (i + 1) * n["fusion_vocab"]),
                                 n["fusion_dim"], seed=10 + i) for i in range(n["num_tables"])]
    name = f"{n['num_tables']}_table"
    fusion = _model_entry(name, [os.path.relpath(f, tmp_path) for f in fusion_files], [n["fusion_dim"]] * n["num_tables"],
                          [n["num_query_key"]] * n["num_tables"], n["batch"])
    fusion["default_value_for_each_table"] = [0.0]  # the demo gives one value for all tables
    (tmp_path / f"{name}.json").write_text(json.dumps({"supportlonglong": False, "fuse_embedding_table": False,
                                                       "models": [fusion]}))
    assert "SAVED" in _run_keras2(SAVE_NOTEBOOKS, tmp_path)
    assert json.loads((tmp_path / f"{name}.json").read_text())["fuse_embedding_table"] is True

    # written after saving, as the notebooks do: the tables, hps.json (two notebooks' models), the Triton repo
    naive = _write_table(tmp_path / "naive_dnn_sparse.model", np.arange(n["slot_num"] * n["vocab_per_slot"]), n["dim"], 20)
    mt = [_write_table(tmp_path / f"multi_table_sparse_input_sparse_{i}.model", np.arange(n["mt_vocab"][i]),
                       n["mt_dims"][i], 21 + i) for i in range(2)]
    (tmp_path / "hps.json").write_text(json.dumps({"supportlonglong": True, "models": [
        _model_entry("naive_dnn", [naive], [n["dim"]], [n["slot_num"]], n["batch"]),
        _model_entry("multi_table_sparse_input", mt, list(n["mt_dims"]),
                     [n["mt_slots"][0] * n["mt_nnz"], n["mt_slots"][1]], n["batch"])]}))
    repo = tmp_path / "model_repo" / "hps_tf_triton"
    (repo / "1").mkdir(parents=True)
    (tmp_path / "hps_tf_triton_tf_saved_model").rename(repo / "1" / "model.savedmodel")
    triton = _write_table(repo / "hps_tf_triton_sparse_0.model", np.arange(n["triton_vocab"]), n["triton_dim"], 23)
    (repo / "hps_tf_triton.json").write_text(json.dumps({"supportlonglong": True, "models": [
        _model_entry("hps_tf_triton", [triton], [n["triton_dim"]], [n["triton_slots"]], n["batch"])]}))

    batch = n["batch"]
    naive_keys = np.concatenate([rng.integers(s * n["vocab_per_slot"], (s + 1) * n["vocab_per_slot"], (batch * n["iters"], 1))
                                 for s in range(n["slot_num"])], axis=1).astype(np.int64)
    naive_keys[0, 0] = 10_000  # a key no table holds: the default value
    mt_mask = rng.random((batch, n["mt_slots"][0], n["mt_nnz"])) < 0.5
    mt_mask[:, :, 0] = True
    mt_indices = np.argwhere(mt_mask).astype(np.int64)
    mt_values = rng.integers(0, n["mt_vocab"][0], len(mt_indices)).astype(np.int64)
    inputs = dict(naive_keys=naive_keys, naive_labels=np.zeros((len(naive_keys), 1), np.int64),
                  mt_indices=mt_indices, mt_values=mt_values,
                  mt_shape=np.array([batch, n["mt_slots"][0], n["mt_nnz"]], np.int64),
                  mt_dense=rng.integers(0, n["mt_vocab"][1], (batch, n["mt_slots"][1])).astype(np.int64),
                  triton_keys=rng.integers(0, n["triton_vocab"], (batch, n["triton_slots"])).astype(np.int64),
                  triton_dense=rng.random((batch, n["dense_dim"]), dtype=np.float32),
                  **{f"fusion{i}": rng.integers(i * n["fusion_vocab"], (i + 1) * n["fusion_vocab"],
                                                (batch, n["num_query_key"])).astype(np.int32)
                     for i in range(n["num_tables"])})
    np.savez(tmp_path / "inputs.npz", **inputs)
    assert "LOADED" in _run_keras2(LOAD_NOTEBOOKS, tmp_path)
    got = np.load(tmp_path / "loaded.npz")

    naive_emb = from_files(naive, naive_keys).reshape(len(naive_keys), -1)
    np.testing.assert_array_equal(got["naive_emb"], naive_emb)
    np.testing.assert_allclose(got["naive_logit"][:, 0], naive_emb.sum(axis=1), rtol=1e-5)
    sparse = tf.sparse.reshape(tf.SparseTensor(mt_indices, mt_values, inputs["mt_shape"]), [-1, n["mt_nnz"]])
    mt_emb0 = tf.nn.embedding_lookup_sparse(_table_params(mt[0], n["mt_vocab"][0]), sparse, None, combiner="mean")
    np.testing.assert_array_equal(got["mt_emb0"], mt_emb0.numpy().reshape(batch, -1))
    np.testing.assert_array_equal(got["mt_emb1"], from_files(mt[1], inputs["mt_dense"]).reshape(batch, -1))
    fusion_expected = sum(from_files(fusion_files[i], inputs[f"fusion{i}"]).reshape(batch, -1).sum(axis=1, dtype=np.float64)
                          for i in range(n["num_tables"]))
    np.testing.assert_allclose(got["fusion_logit"][:, 0], fusion_expected, rtol=1e-5)
    triton_expected = (from_files(triton, inputs["triton_keys"]).reshape(batch, -1).sum(axis=1, dtype=np.float64)
                       + inputs["triton_dense"].sum(axis=1, dtype=np.float64))
    np.testing.assert_allclose(got["triton_logit"][:, 0], triton_expected, rtol=1e-5)
    np.testing.assert_array_equal(got["triton_signature"], got["triton_logit"])
