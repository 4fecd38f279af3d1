"""The seed's inference side (HPS + TF, then the Triton ensemble) as a script, on hps.

Needs the output of 01_model_training.py. It

1. loads the sparse model into hps (`hps.tensorflow.Init` with <out>/ps.json),
2. rebuilds the model: `hps.tensorflow.LookupLayer` → reshape (B, 48) → the saved dense model,
3. checks its predictions (eager call and `model.predict`) against the trained TF model's
   (<out>/reference.npz): prints `max abs diff: <value>`, fails above 1e-4,
4. if `hps.serving.triton` and a tritonserver are available: builds the seed's ensemble repository
   (hps_embedding → dense ONNX → ensemble_model) under <out>/triton_repo, serves it, sends
   EMB_KEY (B, 3) int64 and EMB_N_KEY [[B*3]] int32, and checks DENSE_OUTPUT the same way
   (ONNX Runtime and TensorFlow round differently: the check is relative, 1e-5); else it says why
   it skips that part.

Run:  python 02_inference.py --out ./hps_demo_tf [--no-triton]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

SLOT_NUM = 3
EMBED_VEC_SIZE = 16
MODEL_NAME = "hps_embedding"
TF_TOLERANCE = 1e-4
TRITON_RTOL = 1e-5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: the directory 01 wrote, and whether to try the Triton part."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="./hps_demo_tf", help="the output directory of 01_model_training.py")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton ensemble part")
    return parser.parse_args(argv)


def build_hps_model(tf, hps_tf, dense_model_path: str):
    """keys (B, 3) int64 → hps LookupLayer (B, 3, 16) → (B, 48) → dense SavedModel → logits (B, 1) float32."""
    keras = tf.keras
    inputs = keras.Input(shape=(SLOT_NUM,), dtype="int64", name="input_keys")
    vectors = hps_tf.LookupLayer(model_name=MODEL_NAME, table_id=0, emb_vec_size=EMBED_VEC_SIZE,
                                 name="hps_lookup")(inputs)
    flat = keras.layers.Reshape((SLOT_NUM * EMBED_VEC_SIZE,))(vectors)
    logits = keras.layers.TFSMLayer(dense_model_path, call_endpoint="serve", name="dense")(flat)
    return keras.Model(inputs, logits, name="hps_tf_model")


def check(name: str, got: np.ndarray, expected: np.ndarray, atol: float, rtol: float = 0.0) -> bool:
    """Print `max abs diff` of got vs expected (both (B, 1) float32); True when within atol + rtol·|expected|."""
    got = np.asarray(got, dtype=np.float32).reshape(expected.shape)
    diff = np.abs(got - expected)
    ok = bool(np.all(diff <= atol + rtol * np.abs(expected)))
    print(f"{name}: max abs diff: {diff.max():.3g} (max |logit| {np.abs(expected).max():.4g}) "
          f"{'OK' if ok else 'MISMATCH'}", flush=True)
    return ok


def run_triton(out: str, keys: np.ndarray, expected: np.ndarray) -> bool | None:
    """Serve the seed's ensemble through hps.serving.triton and check DENSE_OUTPUT; None when skipped."""
    try:
        from hps.serving.triton import build_repository, find_tritonserver, serve
    except ImportError as exc:
        print(f"Triton part skipped: hps.serving.triton is not available ({exc})")
        return None
    try:
        find_tritonserver()
        import tritonclient.http as httpclient
    except Exception as exc:  # noqa: BLE001 - any reason means: no server to run here
        print(f"Triton part skipped: no usable tritonserver / tritonclient ({exc})")
        return None
    repo = build_repository(os.path.join(out, "ps.json"), os.path.join(out, "naive_dnn_dense.onnx"),
                            os.path.join(out, "triton_repo"), batch_size_hint=len(keys), overwrite=True)
    print(f"Triton repository: {repo}", flush=True)
    with serve(repo, http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=180) as server:
        client = httpclient.InferenceServerClient(url=server.url_http)
        emb_key = httpclient.InferInput("EMB_KEY", list(keys.shape), "INT64")
        emb_key.set_data_from_numpy(keys.astype(np.int64))
        emb_n_key = httpclient.InferInput("EMB_N_KEY", [1, 1], "INT32")
        emb_n_key.set_data_from_numpy(np.array([[keys.size]], dtype=np.int32))
        result = client.infer("ensemble_model", [emb_key, emb_n_key],
                              outputs=[httpclient.InferRequestedOutput("DENSE_OUTPUT")])
        dense_output = result.as_numpy("DENSE_OUTPUT")
        print(f"Triton ensemble_model: DENSE_OUTPUT shape {dense_output.shape}")
    return check("Triton ensemble vs trained TF model", dense_output, expected, atol=TF_TOLERANCE, rtol=TRITON_RTOL)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import hps.tensorflow as hps_tf

    out = args.out
    reference = np.load(os.path.join(out, "reference.npz"))
    keys, expected = reference["keys"], reference["logits"]
    print(hps_tf.Init(global_batch_size=len(keys), ps_config_file=os.path.join(out, "ps.json")))
    model = build_hps_model(tf, hps_tf, os.path.join(out, "naive_dnn_dense.model"))
    model.summary()

    ok = check("hps LookupLayer model (eager) vs trained TF model", model(tf.constant(keys)).numpy(), expected,
               atol=TF_TOLERANCE)
    ok &= check("hps LookupLayer model (predict) vs trained TF model",
                model.predict(keys, batch_size=len(keys), verbose=0), expected, atol=TF_TOLERANCE)

    if args.no_triton:
        print("Triton part skipped: --no-triton")
    else:
        hps_tf.Shutdown()  # release the RocksDB lock for the server's own hps
        triton_ok = run_triton(out, keys, expected)
        ok &= triton_ok is not False
    print("all checks passed" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
