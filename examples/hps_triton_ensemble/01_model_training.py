"""The seed notebook (HPS + Triton ensemble, 01_model_training) as a script, on hps.

Trains the tutorial's DNN (3 slots, vocabulary [0, 30000), 16-float embeddings in one variable
looked up with `tf.nn.embedding_lookup`, Dense 256 → 128 → 1) on mock data, then splits it the way
the notebook does:

    <out>/naive_dnn_dense.model/          the dense layers, a SavedModel (input (None, 48) float32)
    <out>/naive_dnn_reshape_dense.model/  the same behind a reshape: input_1 (-1,) float32 → output_1 (B, 1)
    <out>/naive_dnn_sparse.model/         the embedding table in HugeCTR's sparse model format
    <out>/naive_dnn_dense.onnx            the dense layers in ONNX (opset 13, input_1 (None, 48))
    <out>/ps.json                         hps config: hash_map + rocks_db (<out>/rocksdb), CPU cache
    <out>/reference.npz                   keys (B, 3) int64 and the trained model's logits (B, 1), for 02

Run:  python 01_model_training.py --out ./hps_demo_tf [--batch-size 1024] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

SLOT_NUM = 3
EMBED_VEC_SIZE = 16
MAX_VOCABULARY_SIZE = 30000
VOCABULARY_RANGE_PER_SLOT = [[0, 10000], [10000, 20000], [20000, 30000]]
MODEL_NAME = "hps_embedding"  # the seed's Triton model name
TABLE_NAME = "sparse_embedding1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: output directory, global batch size, training steps, ONNX opset, seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="./hps_demo_tf", help="output directory (created)")
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch size (the seed used 65536)")
    parser.add_argument("--steps", type=int, default=10, help="training iterations")
    parser.add_argument("--opset", type=int, default=13, help="ONNX opset (the seed used 10; >= 13 here)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the mock data")
    return parser.parse_args(argv)


def generate_random_samples(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mock data: keys (num_samples, 3) int64, slot s drawn from its vocabulary range; labels (num_samples, 1) int64."""
    keys = np.concatenate([rng.integers(low, high, size=(num_samples, 1), dtype=np.int64)
                           for low, high in VOCABULARY_RANGE_PER_SLOT], axis=1)
    labels = rng.integers(0, 2, size=(num_samples, 1), dtype=np.int64)
    return keys, labels


def build_dense_model_class(tf):
    """The seed's `DenseModel`, with the embedding table a tracked Keras variable (Keras 3 does not
    track a bare tf.Variable); `tf.nn.embedding_lookup` reads the underlying tf.Variable."""
    keras = tf.keras

    class DenseModel(keras.Model):
        """ids (B, 3) int64 → (logit (B, 1), embedding_vector (B, 48)) float32."""

        def __init__(self, init_tensors: np.ndarray, slot_num: int, embed_vec_size: int, **kwargs):
            super().__init__(**kwargs)
            self.slot_num = slot_num
            self.embed_vec_size = embed_vec_size
            self.params = keras.Variable(init_tensors, name="params")
            self.fc_1 = keras.layers.Dense(256, kernel_initializer="ones", bias_initializer="zeros", name="fc_1")
            self.fc_2 = keras.layers.Dense(128, kernel_initializer="ones", bias_initializer="zeros", name="fc_2")
            self.fc_3 = keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros", name="fc_3")

        def call(self, inputs):
            embedding_vector = tf.nn.embedding_lookup(params=self.params.value, ids=inputs)
            embedding_vector = tf.reshape(embedding_vector, shape=[-1, self.slot_num * self.embed_vec_size])
            logit = self.fc_3(self.fc_2(self.fc_1(embedding_vector)))
            return logit, embedding_vector

    return DenseModel


def train(tf, args: argparse.Namespace, rng: np.random.Generator):
    """Train the seed's DNN for args.steps steps of args.batch_size samples; returns the model."""
    init_tensors = np.ones((MAX_VOCABULARY_SIZE, EMBED_VEC_SIZE), dtype=np.float32)
    model = build_dense_model_class(tf)(init_tensors, SLOT_NUM, EMBED_VEC_SIZE)
    optimizer = tf.keras.optimizers.Adam(learning_rate=0.1)
    loss_fn = tf.keras.losses.BinaryCrossentropy(from_logits=True)

    @tf.function
    def train_step(inputs, labels):
        with tf.GradientTape() as tape:
            logit, embedding_vector = model(inputs)
            loss = loss_fn(labels, logit)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    keys, labels = generate_random_samples(args.batch_size * args.steps, rng)
    dataset = tf.data.Dataset.from_tensor_slices((keys, labels.astype(np.float32)))
    for i, (ids, y) in enumerate(dataset.batch(args.batch_size, drop_remainder=True)):
        loss = train_step(ids, y)
        print("-" * 20, f"Step {i}, loss: {float(loss)}", "-" * 20, flush=True)
    return model


def save_dense_model(tf, trained_model, path: str):
    """The dense layers (fc_1 → fc_2 → fc_3, trained weights shared) as a SavedModel: (None, 48) float32 → (None, 1)."""
    inputs = tf.keras.Input(shape=(SLOT_NUM * EMBED_VEC_SIZE,), dtype="float32", name="input_1")
    outputs = trained_model.fc_3(trained_model.fc_2(trained_model.fc_1(inputs)))
    dense_model = tf.keras.Model(inputs, outputs, name="tf_dense_model")
    dense_model.summary()
    dense_model.export(path, format="tf_saved_model", verbose=False)
    return dense_model


def save_reshape_dense_model(tf, dense_model_path: str, path: str) -> None:
    """The seed's `ReshapeDenseModel`: the loaded dense SavedModel behind a reshape of the flat HPS output,
    saved with the Triton TF-backend signature input_1 (-1,) float32 → output_1 (B, 1) float32."""

    class ReshapeDenseModel(tf.Module):
        def __init__(self, slot_num: int, embed_vec_size: int, dense_model_path: str):
            super().__init__()
            self.width = slot_num * embed_vec_size
            self.dense_model = tf.saved_model.load(dense_model_path)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="input_1")])
        def __call__(self, inputs):
            return {"output_1": self.dense_model.serve(tf.reshape(inputs, [-1, self.width]))}

    model = ReshapeDenseModel(SLOT_NUM, EMBED_VEC_SIZE, dense_model_path)
    test_input = np.random.default_rng(1).random(96).astype(np.float32)
    output = model(tf.constant(test_input))["output_1"]
    print(f"For reshape dense model, input shape is:{test_input.shape} output shape is:{tuple(output.shape)}")
    tf.saved_model.save(model, path, signatures={"serving_default": model.__call__})


def convert_to_onnx(tf, dense_model_path: str, onnx_path: str, opset: int) -> None:
    """The dense SavedModel → ONNX through tf2onnx.from_function: input_1 (None, 48) float32 → (None, 1)."""
    import onnx
    import tf2onnx

    loaded = tf.saved_model.load(dense_model_path)
    spec = [tf.TensorSpec((None, SLOT_NUM * EMBED_VEC_SIZE), tf.float32, name="input_1")]
    function = tf.function(lambda x: loaded.serve(x), input_signature=spec)
    tf2onnx.convert.from_function(function, input_signature=spec, opset=opset, output_path=onnx_path)
    print("loading onnx")
    onnx.checker.check_model(onnx.load(onnx_path))
    print("onnx model checked")


def write_ps_json(out: str, sparse_path: str, max_batch_size: int) -> str:
    """The hps config of the seed's hps_embedding model (the one `hps demo` uses): hash_map volatile tier,
    RocksDB under <out>/rocksdb, the embedding cache holding the whole table. Returns <out>/ps.json."""
    from hps.demo import ps_config

    config = ps_config(os.path.abspath(sparse_path), os.path.join(os.path.abspath(out), "rocksdb"), max_batch_size)
    path = os.path.join(out, "ps.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from hps.config import load_config
    from hps.model_format import write_sparse_model

    start = time.perf_counter()
    out = args.out
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    tf.random.set_seed(args.seed)

    trained_model = train(tf, args, rng)
    embedding_weights = trained_model.params.numpy()

    dense_path = os.path.join(out, "naive_dnn_dense.model")
    save_dense_model(tf, trained_model, dense_path)
    save_reshape_dense_model(tf, dense_path, os.path.join(out, "naive_dnn_reshape_dense.model"))

    sparse_path = os.path.join(out, "naive_dnn_sparse.model")
    write_sparse_model(sparse_path, np.arange(embedding_weights.shape[0], dtype=np.int64), embedding_weights,
                       overwrite=True)
    print(f"sparse model: {embedding_weights.shape[0]} keys x {embedding_weights.shape[1]} floats -> {sparse_path}")

    convert_to_onnx(tf, dense_path, os.path.join(out, "naive_dnn_dense.onnx"), args.opset)

    ps_json = write_ps_json(out, sparse_path, max_batch_size=max(args.batch_size, 1024))
    load_config(ps_json)  # fail here, not in 02, if the config is wrong
    print(f"ps.json: {ps_json}")

    keys, _ = generate_random_samples(args.batch_size, rng)
    logits, _ = trained_model(tf.constant(keys))
    np.savez(os.path.join(out, "reference.npz"), keys=keys, logits=logits.numpy())
    print(f"reference: {keys.shape[0]} samples -> {os.path.join(out, 'reference.npz')}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
