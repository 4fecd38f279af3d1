"""A model holding hps layers, saved in one process, loads and runs in another that imported hps, under
Keras 3 and under Keras 2 (`tf-keras`, `TF_USE_LEGACY_KERAS=1`, as HugeCTR's containers ran it).

HugeCTR-era graphs failed here with "Could not find callback with key=pyfunc_16 in the registry"
(hps_table_fusion_demo.ipynb, test/integration/test_hps_table_fusion.py): a `tf.numpy_function`
callback lives only in the process that traced it. Every format is covered: `tf.saved_model.save` +
`tf.saved_model.load` (both Keras), `.keras` + `keras.models.load_model` and `model.export` (Keras 3),
Keras-2 SavedModel directories (a functional and a subclassed model, no `custom_objects`, as the
notebooks load them) and `.h5`. A functional model also goes through `tf.saved_model.save`
and its `serving_default` signature. Each Keras version costs two subprocesses: one saves, one loads.
Answers are compared exactly with rows read straight from the sparse files.
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

from hps.model_format import write_sparse_model

pytestmark = [
    pytest.mark.tf, pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs the tf extra"),
]

DIMS = (8, 4)            # table 0 (dense ids), table 1 (sparse ids)
ROWS = 50
SLOTS = 3
NNZ = 4
BATCH = 8
DEFAULT_VALUE = 0.75

# The saving process: every format this Keras can write. argv: out dir, ps.json path, inputs .npz.
SAVE = textwrap.dedent(r'''
    import sys
    import numpy as np
    import tensorflow as tf
    import hierarchical_parameter_server as hps

    out, ps_json, inputs_npz = sys.argv[1:4]
    SLOTS, NNZ, DIMS, BATCH = {SLOTS}, {NNZ}, {DIMS}, {BATCH}
    keras = tf.keras
    legacy = keras.layers.Layer.__module__.startswith("tf_keras")
    print("KERAS", "2" if legacy else "3")
    kwargs = dict(emb_vec_dtype=tf.float32, ps_config_file=ps_json, global_batch_size=BATCH)
    dense = hps.LookupLayer(model_name="m", table_id=0, emb_vec_size=DIMS[0], name="lookup", **kwargs)
    sparse = hps.SparseLookupLayer(model_name="m", table_id=1, emb_vec_size=DIMS[1], name="sparse_lookup",
                                   **kwargs)

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.dense, self.sparse = dense, sparse

        @tf.function(input_signature=[tf.TensorSpec([None, SLOTS], tf.int64),
                                      tf.SparseTensorSpec([None, NNZ], tf.int64)])
        def serve(self, ids, sp_ids):
            return {{"dense": self.dense(ids), "sparse": self.sparse(sp_ids, None, combiner="sum")}}

    data = np.load(inputs_npz)
    ids = tf.constant(data["ids"])
    sp_ids = tf.SparseTensor(data["sp_indices"], data["sp_values"], data["sp_shape"])
    serving = Serving()
    before = serving.serve(ids, sp_ids)  # this process runs the graph too: its own callbacks exist
    tf.saved_model.save(serving, out + "/tf_saved_model")

    inputs = keras.Input(shape=(SLOTS,), dtype="int64")
    functional = keras.Model(inputs, keras.layers.Flatten()(dense(inputs)))
    tf.saved_model.save(functional, out + "/functional_tf_saved_model")  # its serving_default signature
    if legacy:
        functional.save(out + "/functional_savedmodel")          # Keras 2's default: a SavedModel directory
        functional.save(out + "/functional.h5")

        class InferenceModel(keras.models.Model):                 # the notebooks' shape, not registered
            def __init__(self, **kw):
                super().__init__(**kw)
                self.lookup_layer = hps.LookupLayer("m", 0, DIMS[0], tf.float32, ps_json, BATCH, name="lookup")

            def call(self, inputs):
                return tf.reshape(self.lookup_layer(inputs), [-1, SLOTS * DIMS[0]])

        subclassed = InferenceModel()
        subclassed(keras.Input(shape=(SLOTS,), dtype=tf.int64))
        subclassed.save(out + "/subclassed_savedmodel")
    else:
        functional.save(out + "/functional.keras")
        functional.export(out + "/exported")                      # Keras 3's SavedModel
    np.savez(out + "/saver.npz", dense=before["dense"].numpy(), sparse=before["sparse"].numpy(),
             functional=functional(ids).numpy())
    print("SAVED")
''')

# The loading process: imports hps (nothing else of the saver), loads every format, runs it.
LOAD = textwrap.dedent(r'''
    import sys
    import numpy as np
    import tensorflow as tf
    import hps.tensorflow

    out, inputs_npz = sys.argv[1:3]
    keras = tf.keras
    legacy = keras.layers.Layer.__module__.startswith("tf_keras")
    data = np.load(inputs_npz)
    ids = tf.constant(data["ids"])
    sp_ids = tf.SparseTensor(data["sp_indices"], data["sp_values"], data["sp_shape"])
    results = {{}}
    loaded = tf.saved_model.load(out + "/tf_saved_model")
    answer = loaded.serve(ids, sp_ids)
    results["tf_dense"], results["tf_sparse"] = answer["dense"].numpy(), answer["sparse"].numpy()
    serving = tf.saved_model.load(out + "/functional_tf_saved_model").signatures["serving_default"]
    (name,) = serving.structured_input_signature[1]
    (results["functional_tf_saved_model"],) = [t.numpy() for t in serving(**{{name: ids}}).values()]
    if legacy:
        for name in ("functional_savedmodel", "functional.h5", "subclassed_savedmodel"):
            model = keras.models.load_model(out + "/" + name)
            results[name] = model(ids).numpy()
            results[name + "_predict"] = model.predict(data["ids"], batch_size=4, verbose=0)
    else:
        model = keras.models.load_model(out + "/functional.keras")
        assert type(model.get_layer("lookup")) is hps.tensorflow.LookupLayer, type(model.get_layer("lookup"))
        results["functional.keras"] = model(ids).numpy()
        results["functional.keras_predict"] = model.predict(data["ids"], batch_size=4, verbose=0)
        results["exported"] = tf.saved_model.load(out + "/exported").serve(ids).numpy()
    np.savez(out + "/loaded.npz", **results)
    print("LOADED", "2" if legacy else "3")
''')


def _tables(directory: Path) -> tuple[str, list[np.ndarray]]:
    """Two tables (keys shuffled in the files) and their ps.json; (ps.json path, tables indexed by key)."""
    rng = np.random.default_rng(5)
    files, tables = [], []
    for table_id, dim in enumerate(DIMS):
        keys = rng.permutation(ROWS).astype(np.int64)
        vectors = rng.standard_normal((ROWS, dim)).astype(np.float32)
        files.append(str(directory / f"table{table_id}"))
        write_sparse_model(files[-1], keys, vectors)
        by_key = np.empty_like(vectors)
        by_key[keys] = vectors
        tables.append(by_key)
    config = {"supportlonglong": True, "models": [{
        "model": "m", "sparse_files": files, "embedding_table_names": ["t0", "t1"],
        "embedding_vecsize_per_table": list(DIMS), "maxnum_catfeature_query_per_table_per_sample": [SLOTS, NNZ],
        "default_value_for_each_table": [DEFAULT_VALUE] * 2, "deployed_device_list": [0],
        "max_batch_size": BATCH, "gpucache": True, "gpucacheper": 1.0, "hit_rate_threshold": 1.0}]}
    path = directory / "ps.json"
    path.write_text(json.dumps(config))
    return str(path), tables


def _from_files(ps_json: str, table_id: int, keys: np.ndarray) -> np.ndarray:
    """keys (...) → (..., dim) float32 read straight from the table's raw `key` / `emb_vector` files."""
    table_dir = json.loads(Path(ps_json).read_text())["models"][0]["sparse_files"][table_id]
    file_keys = np.fromfile(os.path.join(table_dir, "key"), dtype="<i8")
    rows = np.fromfile(os.path.join(table_dir, "emb_vector"), dtype="<f4").reshape(len(file_keys), -1)
    out = np.full(keys.shape + (rows.shape[1],), DEFAULT_VALUE, np.float32)
    where = {int(k): i for i, k in enumerate(file_keys)}
    for index in np.ndindex(keys.shape):
        if int(keys[index]) in where:
            out[index] = rows[where[int(keys[index])]]
    return out


def _inputs(directory: Path) -> tuple[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(9)
    ids = rng.integers(0, ROWS + 5, size=(BATCH, SLOTS)).astype(np.int64)  # some ids miss: default value
    mask = rng.random((BATCH, NNZ)) < 0.6
    mask[:, 0] = True
    sp_indices = np.argwhere(mask).astype(np.int64)
    sp_values = rng.integers(0, ROWS, size=len(sp_indices)).astype(np.int64)
    data = dict(ids=ids, sp_indices=sp_indices, sp_values=sp_values, sp_shape=np.array([BATCH, NNZ], np.int64))
    path = directory / "inputs.npz"
    np.savez(path, **data)
    return str(path), data


def _run(script: str, args: list[str], legacy_keras: bool, cwd: Path) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_USE_LEGACY_KERAS", None)
    if legacy_keras:
        env["TF_USE_LEGACY_KERAS"] = "1"   # read when TensorFlow is first imported
    source = script.format(SLOTS=SLOTS, NNZ=NNZ, DIMS=DIMS, BATCH=BATCH)
    done = subprocess.run([sys.executable, "-c", source, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)
    assert done.returncode == 0, f"failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout


@pytest.mark.parametrize("legacy_keras", [False, True], ids=["keras3", "keras2"])
def test_saved_in_one_process_runs_in_another(tmp_path, legacy_keras):
    if legacy_keras and importlib.util.find_spec("tf_keras") is None:
        pytest.skip("needs tf-keras (the tf extra)")
    ps_json, _ = _tables(tmp_path)
    inputs_npz, data = _inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    log = _run(SAVE, [str(out), ps_json, inputs_npz], legacy_keras, tmp_path)
    assert f"KERAS {2 if legacy_keras else 3}" in log and "SAVED" in log, log
    log = _run(LOAD, [str(out), inputs_npz], legacy_keras, tmp_path)
    assert f"LOADED {2 if legacy_keras else 3}" in log, log

    dense = _from_files(ps_json, 0, data["ids"])
    sparse_rows = _from_files(ps_json, 1, data["sp_values"])
    sparse = np.zeros((BATCH, DIMS[1]), np.float32)
    np.add.at(sparse, data["sp_indices"][:, 0], sparse_rows)  # combiner "sum"
    saver = np.load(out / "saver.npz")
    loaded = dict(np.load(out / "loaded.npz"))
    np.testing.assert_array_equal(saver["dense"], dense)
    np.testing.assert_array_equal(loaded.pop("tf_dense"), dense)
    np.testing.assert_allclose(loaded.pop("tf_sparse"), sparse, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(saver["sparse"], np.load(out / "loaded.npz")["tf_sparse"])
    expected = {"functional_savedmodel", "functional.h5", "subclassed_savedmodel"} if legacy_keras else \
        {"functional.keras", "exported"}
    expected.add("functional_tf_saved_model")
    assert {name.removesuffix("_predict") for name in loaded} == expected
    for name, got in loaded.items():
        np.testing.assert_array_equal(got, dense.reshape(BATCH, -1), err_msg=name)
