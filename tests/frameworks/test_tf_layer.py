"""hps.tensorflow: Init, LookupLayer and SparseLookupLayer (eager, tf.function, Keras) and their errors.

The only test module that imports TensorFlow in-process (it is slow to import)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
hps_tf = pytest.importorskip("hps.tensorflow")

from hps.errors import ConfigError, HpsError, KeyInputError  # noqa: E402
from hps.registry import is_loaded  # noqa: E402

from .conftest import DEFAULT_VALUE, DIM, KEYS_PER_SAMPLE, MAX_BATCH_SIZE, expected_vectors  # noqa: E402

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def ps(small_model):
    """(ps.json path, table) of a model Init-ed for this module."""
    path, table = small_model
    assert hps_tf.Init(global_batch_size=MAX_BATCH_SIZE, ps_config_file=path) == "OK"
    return path, table


def _layer(path: str, **kwargs):
    return hps_tf.LookupLayer(model_name="m", table_id=0, emb_vec_size=DIM, ps_config_file=path, **kwargs)


def _sparse_layer(path: str):
    return hps_tf.SparseLookupLayer(model_name="m", table_id=0, emb_vec_size=DIM, ps_config_file=path)


def _sparse_input():
    indices = [[0, 0], [0, 1], [0, 2], [2, 0], [2, 1], [3, 0]]
    ids = tf.SparseTensor(indices, tf.constant([3, 7, 3, 1, 200, 5], tf.int64), [5, 4])  # 200: a miss
    weights = tf.SparseTensor(indices, [1.0, 2.0, 0.5, 3.0, 1.0, 2.0], [5, 4])
    return ids, weights


def test_init_is_idempotent_and_checks_the_batch(ps):
    path, _ = ps
    assert hps_tf.Init(MAX_BATCH_SIZE, path) == "OK"
    assert is_loaded(path)
    with pytest.raises(ConfigError, match="max_batch_size"):
        hps_tf.Init(MAX_BATCH_SIZE + 1, path)
    with pytest.raises(ConfigError, match="global_batch_size"):
        hps_tf.Init(0, path)


def test_init_from_threads_loads_once(make_model):
    path, _ = make_model()
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(hps_tf.Init(4, path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["OK"] * 4
    server = hps_tf._server(path, 4)
    assert hps_tf._server(path, 4) is server


@pytest.mark.parametrize("shape", [(5,), (4, 3), (2, 3, 2)])
def test_lookup_eager_matches_the_table(ps, shape):
    path, table = ps
    ids = np.random.default_rng(0).integers(0, 80, size=shape)  # ids >= 64 miss: default value
    out = _layer(path)(tf.constant(ids, tf.int64))
    assert out.dtype == tf.float32 and tuple(out.shape) == shape + (DIM,)
    np.testing.assert_array_equal(out.numpy(), expected_vectors(table, ids))


def test_lookup_uses_init_when_the_layer_has_no_file(ps):
    _, table = ps
    layer = hps_tf.LookupLayer("m", 0, DIM)
    np.testing.assert_array_equal(layer(tf.constant([[1, 2]], tf.int64)).numpy(), table[[[1, 2]]])


def test_lookup_in_tf_function_and_keras_model(ps):
    path, table = ps
    layer = _layer(path)
    ids = np.array([[1, 2, 3], [63, 64, 0]], np.int64)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int64)])
    def f(x):
        out = layer(x)
        assert out.shape.as_list() == [None, 3, DIM]  # static shape from emb_vec_size
        return out

    np.testing.assert_array_equal(f(ids).numpy(), expected_vectors(table, ids))
    inputs = tf.keras.Input(shape=(3,), dtype="int64")
    model = tf.keras.Model(inputs, tf.keras.layers.Flatten()(layer(inputs)))
    predicted = model.predict(ids, batch_size=2, verbose=0)
    np.testing.assert_array_equal(predicted, expected_vectors(table, ids).reshape(2, -1))
    assert layer.get_config()["emb_vec_size"] == DIM


def test_graph_lookup_sees_online_updates(ps):
    path, table = ps
    layer = _layer(path)
    f = tf.function(lambda x: layer(x))
    ids = tf.constant([[11, 12]], tf.int64)
    np.testing.assert_array_equal(f(ids).numpy()[0, 0], table[11])
    server = hps_tf._server(path, 1)
    new = np.full((1, DIM), 9.0, np.float32)
    server.apply_update(server.config.model("m").table(0).tag, np.array([11]), new, "volatile")
    np.testing.assert_array_equal(f(ids).numpy()[0, 0], new[0])  # stateful: not constant-folded
    server.apply_update(server.config.model("m").table(0).tag, np.array([11]), table[11:12], "volatile")


def test_max_norm_matches_tf_embedding_lookup(ps):
    path, table = ps
    ids = tf.constant([[1, 5, 9], [2, 4, 6]], tf.int64)
    expected = tf.nn.embedding_lookup(tf.constant(table), ids, max_norm=1.0)
    np.testing.assert_allclose(_layer(path)(ids, max_norm=1.0).numpy(), expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("combiner", ["mean", "sum", "sqrtn"])
def test_sparse_lookup_matches_embedding_lookup_sparse(ps, combiner):
    path, table = ps
    layer = _sparse_layer(path)
    params = tf.constant(np.concatenate([table, np.full((200 - table.shape[0] + 1, DIM), DEFAULT_VALUE,
                                                        np.float32)]))
    sp_ids, sp_weights = _sparse_input()
    for weights in (sp_weights, None):
        for max_norm in (None, 1.5):
            expected = tf.nn.embedding_lookup_sparse(params, sp_ids, weights, combiner=combiner, max_norm=max_norm)
            got = layer(sp_ids, weights, combiner=combiner, max_norm=max_norm)
            np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    graph = tf.function(lambda i, w: layer(i, w, combiner=combiner))(sp_ids, sp_weights)
    expected = tf.nn.embedding_lookup_sparse(params, sp_ids, sp_weights, combiner=combiner)
    np.testing.assert_allclose(graph.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    assert graph.shape[-1] == DIM


def test_int32_keys_with_supportlonglong_false(small_model_i32):
    path, table = small_model_i32
    ids = np.array([[0, 5], [63, 1]], np.int32)
    out = _layer(path)(tf.constant(ids))
    np.testing.assert_array_equal(out.numpy(), table[ids])
    with pytest.raises(KeyInputError, match="supportlonglong=false.*int32"):
        _layer(path)(tf.constant(ids, tf.int64))


@pytest.mark.parametrize("ids", [tf.constant([[1.0, 2.0]]), tf.constant([[1, 2]], tf.int32),
                                 tf.constant([[1, 2]], tf.uint8)])
def test_wrong_id_dtype_raises(ps, ids):
    with pytest.raises(KeyInputError, match="ids"):
        _layer(ps[0])(ids)


def test_wrong_rank_raises(ps):
    with pytest.raises(KeyInputError, match="rank"):
        _layer(ps[0])(tf.constant(3, tf.int64))
    sp_ids = tf.SparseTensor([[0, 0, 0]], tf.constant([1], tf.int64), [1, 1, 1])
    with pytest.raises(KeyInputError, match="rank 2"):
        _sparse_layer(ps[0])(sp_ids, None)


def test_sparse_input_errors(ps):
    layer = _sparse_layer(ps[0])
    sp_ids, sp_weights = _sparse_input()
    with pytest.raises(KeyInputError, match="SparseTensor"):
        layer(tf.constant([[1, 2]], tf.int64), None)
    with pytest.raises(KeyInputError, match="sp_weights"):
        layer(sp_ids, tf.constant([1.0]))
    with pytest.raises(ConfigError, match="combiner"):
        layer(sp_ids, sp_weights, combiner="max")
    with pytest.raises(KeyInputError, match="dense tensor"):
        _layer(ps[0])(sp_ids)


def test_emb_vec_size_and_dtype_mismatch_raise(ps):
    with pytest.raises(ConfigError, match="emb_vec_size 4 does not match.*dim 8"):
        hps_tf.LookupLayer("m", 0, 4, ps_config_file=ps[0])
    with pytest.raises(ConfigError, match="emb_vec_size"):  # the Init-ed HPS's config
        hps_tf.LookupLayer("m", 0, 4)
    with pytest.raises(ConfigError, match="float32"):
        hps_tf.LookupLayer("m", 0, DIM, emb_vec_dtype=tf.float16)
    with pytest.raises(HpsError, match="unknown model"):
        hps_tf.LookupLayer("nope", 0, DIM, ps_config_file=ps[0])


def test_too_many_keys_raise_but_flat_keys_within_the_limit_work(ps):
    path, table = ps
    limit = MAX_BATCH_SIZE * KEYS_PER_SAMPLE  # HugeCTR's limit: keys per call, not the first dimension
    flat = np.arange(limit, dtype=np.int64) % 64
    np.testing.assert_array_equal(_layer(path)(tf.constant(flat)).numpy(), table[flat])
    ids = np.zeros((MAX_BATCH_SIZE + 1, KEYS_PER_SAMPLE), np.int64)
    with pytest.raises(KeyInputError, match="max_batch_size"):
        _layer(path)(tf.constant(ids))
    graph = tf.function(lambda x: _layer(path)(x), input_signature=[tf.TensorSpec([None, KEYS_PER_SAMPLE], tf.int64)])
    with pytest.raises(tf.errors.OpError, match="exceed max_batch_size"):  # raised inside the graph
        graph(ids)


def test_layer_without_file_or_init_raises(monkeypatch):
    monkeypatch.setattr(hps_tf, "_default_path", [])
    with pytest.raises(HpsError, match="Init"):
        hps_tf.LookupLayer("m", 0, DIM)(tf.constant([[1]], tf.int64))


def test_lazy_init_and_shutdown(make_model):
    path, table = make_model()
    layer = _layer(path, global_batch_size=2)
    np.testing.assert_array_equal(layer(tf.constant([[3]], tf.int64)).numpy()[0, 0], table[3])
    assert hps_tf._server(path, 2) is not None


def test_hierarchical_parameter_server_is_hps_tensorflow():
    """HugeCTR's `import hierarchical_parameter_server as hps` works as is (the installed package)."""
    import hierarchical_parameter_server as hugectr_hps

    import hps

    for name in ("Init", "LookupLayer", "SparseLookupLayer", "Shutdown"):
        assert getattr(hugectr_hps, name) is getattr(hps_tf, name), name
    assert hugectr_hps.__version__ == hps_tf.__version__ == hps.__version__
    assert {"Init", "LookupLayer", "SparseLookupLayer", "__version__"} <= set(hugectr_hps.__all__)


def test_layer_reads_its_ps_json_at_first_use(tmp_path):
    """HugeCTR's Triton demo builds (and traces, and saves) the model before it writes ps.json."""
    from .conftest import write_small_model

    directory = tmp_path / "written_later"
    path = str(directory / "ps.json")  # nothing there yet
    layer = hps_tf.LookupLayer("m", 0, DIM, tf.float32, ps_config_file=path, global_batch_size=4)
    sparse = hps_tf.SparseLookupLayer("m", 0, DIM, tf.float32, ps_config_file=path, global_batch_size=4)
    graph = tf.function(lambda x: layer(x), input_signature=[tf.TensorSpec([None, 2], tf.int64)])
    graph.get_concrete_function()  # traced before the file exists
    inputs = tf.keras.Input(shape=(2,), dtype="int64")
    model = tf.keras.Model(inputs, layer(inputs))
    assert not is_loaded(path)

    directory.mkdir()
    written, table = write_small_model(directory)
    assert written == path
    ids = np.array([[1, 2], [70, 5]], np.int64)
    np.testing.assert_array_equal(graph(ids).numpy(), expected_vectors(table, ids))  # first use: a graph
    np.testing.assert_array_equal(layer(tf.constant(ids)).numpy(), expected_vectors(table, ids))
    np.testing.assert_array_equal(model.predict(ids, verbose=0), expected_vectors(table, ids))
    sp_ids = tf.SparseTensor([[0, 0], [1, 0]], tf.constant([3, 4], tf.int64), [2, 2])
    np.testing.assert_array_equal(sparse(sp_ids, None).numpy(), table[[3, 4]])
    with pytest.raises(ConfigError, match="emb_vec_size 4"):  # loaded now: checked at construction again
        hps_tf.LookupLayer("m", 0, 4, ps_config_file=path)


def test_graph_lookup_token_names_the_table_and_resolves_in_a_fresh_registry(ps, monkeypatch):
    """The op's token carries the lookup; a process that never traced it (here: an emptied cache of
    callbacks) resolves it from the token alone. Other tokens are answered as before."""
    from tensorflow.python.ops import script_ops

    path, table = ps
    layer = _layer(path, global_batch_size=8)
    graph = tf.function(lambda x: layer(x), input_signature=[tf.TensorSpec([None, 3], tf.int64)])
    ops = [op for op in graph.get_concrete_function().graph.get_operations() if op.type == "PyFunc"]
    assert len(ops) == 1
    token = ops[0].get_attr("token").decode()
    assert token.startswith("hps_lookup:v1:")
    assert hps_tf._TableLookup.from_token(token) == hps_tf._TableLookup("m", 0, DIM, path, 8)

    monkeypatch.setattr(hps_tf, "_resolved", {})
    ids = np.array([[1, 2, 3]], np.int64)
    np.testing.assert_array_equal(graph(ids).numpy(), expected_vectors(table, ids))
    assert list(hps_tf._resolved) == [token]
    assert script_ops._py_funcs.get("pyfunc_987654321") is None  # not ours: TF's own error path
    with pytest.raises(ConfigError, match="malformed lookup op token"):
        script_ops._py_funcs.get("hps_lookup:v1:{not json")
    with pytest.raises(ConfigError, match="malformed lookup op token"):
        script_ops._py_funcs.get('hps_lookup:v1:{"model_name":"m"}')
