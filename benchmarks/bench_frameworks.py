"""Framework layers: per-batch latency of models using the hps layers beside the same models on
framework-native embeddings, in one run (report "frameworks-cpu").

TensorFlow: a Keras model keys (B, 3) int64 → embedding (B, 3, 16) → reshape (B, 48) → Dense 256 → 128 → 1
(the seed's DNN), with `hps.tensorflow.LookupLayer` beside the same model with `tf.nn.embedding_lookup`
on a tf.Variable, called eagerly and through `tf.function` (graph mode: the hps lookup is a
`tf.numpy_function`). PyTorch: `hps.torch.LookupLayer` beside `torch.nn.Embedding`, alone and in the
same DNN. Also `HPS.lookup` on numpy keys alone, the floor of the hps paths.

The table (30,000 × 16 float32, random) lives in a temp dir; the hps config is a hash_map volatile tier
and a CPU embedding cache pre-filled with the whole table (all hits, the steady state of a hot model).
Each call takes the next of 16 pre-generated batches of uniform random keys.

Run:  python benchmarks/bench_frameworks.py [--batch 1024] [--repeat 200]
      python benchmarks/bench_frameworks.py --skip-tf --torch-device cuda   (GPU machine: report frameworks-gpu)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import VM_NOTE, percentile, time_calls, write_results  # noqa: E402

VOCAB = 30000
DIM = 16
SLOTS = 3
NUM_BATCHES = 16
MODEL = "bench"


def build_table(directory: Path, batch: int) -> tuple[str, np.ndarray]:
    """Write the sparse model and ps.json under `directory`; returns (ps.json path, table (VOCAB, DIM))."""
    from hps.model_format import write_sparse_model

    table = np.random.default_rng(0).standard_normal((VOCAB, DIM)).astype(np.float32)
    write_sparse_model(directory / "table", np.arange(VOCAB, dtype=np.int64), table)
    config = {
        "supportlonglong": True,
        "volatile_db": {"type": "hash_map", "num_partitions": 2},
        "models": [{
            "model": MODEL, "sparse_files": [str(directory / "table")], "embedding_vecsize_per_table": [DIM],
            "maxnum_catfeature_query_per_table_per_sample": [SLOTS], "default_value_for_each_table": [0.0],
            "deployed_device_list": [0], "max_batch_size": batch, "gpucache": True, "gpucacheper": 1.0,
            "cache_refresh_percentage_per_iteration": 1.0, "hit_rate_threshold": 1.0,
        }],
    }
    path = directory / "ps.json"
    path.write_text(json.dumps(config))
    return str(path), table


def cycle(batches: list[Any]) -> Callable[[], Any]:
    """A function returning the next batch of `batches` on each call, round robin."""
    state = [0]

    def next_batch() -> Any:
        state[0] = (state[0] + 1) % len(batches)
        return batches[state[0]]

    return next_batch


#: A pair is timed for at least this long: a 20 µs call then gets ~50,000 samples a side, and its p50
#: no longer moves with a few milliseconds of the VM's noise.
PAIR_SECONDS = 2.0


def time_pair(ours: Callable[[], Any], base: Callable[[], Any], repeat: int,
              block: int = 10) -> tuple[list[float], list[float]]:
    """Seconds per call of `ours` and `base`, measured in alternating blocks of `block` calls (after 10
    warm-up calls each), so that load from other work on a shared machine hits both alike; at least
    `repeat` calls each and `PAIR_SECONDS` in all."""
    t_ours: list[float] = []
    t_base: list[float] = []
    time_calls(ours, repeat=0, warmup=10)
    time_calls(base, repeat=0, warmup=10)
    start = time.perf_counter()
    while len(t_ours) < repeat or time.perf_counter() - start < PAIR_SECONDS:
        t_ours += time_calls(ours, repeat=block, warmup=0)
        t_base += time_calls(base, repeat=block, warmup=0)
    return t_ours, t_base


def row(path: str, api: str, ours: list[float], base: list[float] | None, baseline: str, batch: int) -> dict[str, Any]:
    """One result line: p50 / p99 in µs of ours and the baseline, and the p50 ratio."""
    p50, p99 = percentile(ours, 50) * 1e6, percentile(ours, 99) * 1e6
    out = {"path": path, "api": api, "batch": f"{batch} x {SLOTS} keys", "p50_us": p50, "p99_us": p99}
    if base is not None:
        b50, b99 = percentile(base, 50) * 1e6, percentile(base, 99) * 1e6
        out.update(baseline=baseline, base_p50_us=b50, base_p99_us=b99, ratio_p50=p50 / b50, ratio_p99=p99 / b99)
    else:
        out.update(baseline="-", base_p50_us=float("nan"), base_p99_us=float("nan"), ratio_p50=float("nan"),
                   ratio_p99=float("nan"))
    return out


def bench_tensorflow(ps_json: str, table: np.ndarray, keys: list[np.ndarray], repeat: int) -> list[dict[str, Any]]:
    """The seed DNN with the hps LookupLayer vs with tf.nn.embedding_lookup on a tf.Variable."""
    import tensorflow as tf

    import hps.tensorflow as hps_tf

    keras = tf.keras
    batch = keys[0].shape[0]
    hps_tf.Init(global_batch_size=batch, ps_config_file=ps_json)

    class VariableLookup(keras.layers.Layer):
        """tf.nn.embedding_lookup on a (VOCAB, DIM) variable holding `table`."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.params = keras.Variable(table, name="params", trainable=False)

        def call(self, ids):
            return tf.nn.embedding_lookup(self.params.value, ids)

    def dnn(lookup: keras.layers.Layer) -> keras.Model:
        inputs = keras.Input(shape=(SLOTS,), dtype="int64")
        x = keras.layers.Reshape((SLOTS * DIM,))(lookup(inputs))
        for i, units in enumerate((256, 128, 1)):
            x = keras.layers.Dense(units, name=f"fc_{i + 1}")(x)
        return keras.Model(inputs, x)

    ours = dnn(hps_tf.LookupLayer(MODEL, 0, DIM))
    base = dnn(VariableLookup())
    for a, b in zip(ours.layers, base.layers):
        if a.weights:
            b.set_weights(a.get_weights())
    tf_keys = [tf.constant(k) for k in keys]
    np.testing.assert_allclose(ours(tf_keys[0]).numpy(), base(tf_keys[0]).numpy(), rtol=1e-5, atol=1e-4)

    rows = []
    spec = [tf.TensorSpec([None, SLOTS], tf.int64)]
    for mode in ("eager", "tf.function"):
        if mode == "eager":
            f_ours, f_base = ours, base
        else:
            f_ours = tf.function(lambda x: ours(x), input_signature=spec)
            f_base = tf.function(lambda x: base(x), input_signature=spec)
        k_ours, k_base = cycle(tf_keys), cycle(tf_keys)
        t_ours, t_base = time_pair(lambda: f_ours(k_ours()).numpy(), lambda: f_base(k_base()).numpy(), repeat)
        rows.append(row(f"TF Keras DNN, {mode}", "hps.tensorflow.LookupLayer", t_ours, t_base,
                        "tf.nn.embedding_lookup(tf.Variable)", batch))

    lookup_ours, lookup_base = hps_tf.LookupLayer(MODEL, 0, DIM), VariableLookup()
    f_ours = tf.function(lambda x: lookup_ours(x), input_signature=spec)
    f_base = tf.function(lambda x: lookup_base(x), input_signature=spec)
    k_ours, k_base = cycle(tf_keys), cycle(tf_keys)
    t_ours, t_base = time_pair(lambda: f_ours(k_ours()).numpy(), lambda: f_base(k_base()).numpy(), repeat)
    rows.append(row("TF lookup only, tf.function", "hps.tensorflow.LookupLayer", t_ours, t_base,
                    "tf.nn.embedding_lookup(tf.Variable)", batch))
    hps_tf.Shutdown()
    return rows


def bench_torch(ps_json: str, table: np.ndarray, keys: list[np.ndarray], repeat: int,
                device: str = "cpu") -> list[dict[str, Any]]:
    """hps.torch.LookupLayer vs torch.nn.Embedding, alone and in the seed DNN (eager, no_grad), keys and
    models on `device` (a CUDA device: synchronized after each call)."""
    import torch

    import hps.torch as hps_torch

    batch = keys[0].shape[0]
    ours = hps_torch.LookupLayer(ps_json, MODEL, 0, DIM)
    base = torch.nn.Embedding.from_pretrained(torch.from_numpy(table)).to(device)
    torch_keys = [torch.from_numpy(k).to(device) for k in keys]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def dnn(lookup: torch.nn.Module) -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(lookup, torch.nn.Flatten(1), torch.nn.Linear(SLOTS * DIM, 256),
                                   torch.nn.Linear(256, 128), torch.nn.Linear(128, 1)).to(device).eval()

    def timed(module: torch.nn.Module) -> Callable[[], None]:
        next_keys = cycle(torch_keys)

        def call() -> None:
            module(next_keys())
            sync()
        return call

    rows = []
    with torch.no_grad():
        torch.testing.assert_close(ours(torch_keys[0]), base(torch_keys[0]))
        for name, m_ours, m_base in (("torch lookup only", ours, base), ("torch DNN", dnn(ours), dnn(base))):
            t_ours, t_base = time_pair(timed(m_ours), timed(m_base), repeat)
            rows.append(row(f"{name}, eager, {device}", "hps.torch.LookupLayer", t_ours, t_base,
                            "torch.nn.Embedding", batch))
        if device == "cpu":
            # hps looks up on the calling thread; nn.Embedding's gather splits over torch's intra-op threads
            # (2 here). One thread each, as a server running one worker per core would:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                t_ours, t_base = time_pair(timed(ours), timed(base), repeat)
            finally:
                torch.set_num_threads(threads)
            rows.append(row("torch lookup only, eager, cpu, 1 intra-op thread", "hps.torch.LookupLayer", t_ours,
                            t_base, "torch.nn.Embedding", batch))
    return rows


def bench_hps_lookup(ps_json: str, keys: list[np.ndarray], repeat: int,
                     device: str = "cpu") -> tuple[list[dict[str, Any]], float]:
    """HPS.lookup alone (numpy keys; torch keys on `device` too when it is a GPU): what every framework
    path above pays at least. Returns the rows and the cache hit rate seen."""
    from hps import HPS

    with HPS(ps_json, show_progress=False) as ps:
        k = cycle(keys)
        rows = [row("HPS.lookup alone (numpy keys)", "hps.HPS.lookup", time_calls(lambda: ps.lookup(k(), MODEL, 0),
                    repeat=repeat, warmup=10), None, "", keys[0].shape[0])]
        if device.startswith("cuda"):
            import torch

            gpu_keys = cycle([torch.from_numpy(x).to(device) for x in keys])

            def call() -> None:
                ps.lookup(gpu_keys(), MODEL, 0, device_id=torch.device(device).index or 0)
                torch.cuda.synchronize()

            rows.append(row(f"HPS.lookup alone (torch keys on {device})", "hps.HPS.lookup",
                            time_calls(call, repeat=repeat, warmup=10), None, "", keys[0].shape[0]))
        stats = ps.stats()["models"][MODEL]
        hit_rate = next(iter(stats.values()))["hit_rate"]["cache"]
    return rows, hit_rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hps framework layers vs native embeddings")
    parser.add_argument("--batch", type=int, default=1024, help="samples per call (3 keys each)")
    parser.add_argument("--repeat", type=int, default=1000, help="timed calls per measurement")
    parser.add_argument("--skip-tf", action="store_true", help="leave out the TensorFlow part")
    parser.add_argument("--torch-device", default="cpu", help="device of the torch part: cpu | cuda[:i] "
                        "(cuda writes the report frameworks-gpu)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rng = np.random.default_rng(1)
    keys = [rng.integers(0, VOCAB, size=(args.batch, SLOTS), dtype=np.int64) for _ in range(NUM_BATCHES)]
    on_gpu = args.torch_device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="hps-bench-frameworks-") as tmp:
        ps_json, table = build_table(Path(tmp), args.batch)
        rows, hit_rate = bench_hps_lookup(ps_json, keys, args.repeat, args.torch_device)
        if not args.skip_tf:
            rows += bench_tensorflow(ps_json, table, keys, args.repeat)
        rows += bench_torch(ps_json, table, keys, args.repeat, args.torch_device)
    notes = (f"Per-batch latency (host-synchronous, p50/p99 of at least {args.repeat} calls a side and "
             f"{PAIR_SECONDS:g} s a pair after 10 warm-up calls, ours and the baseline timed in alternating "
             f"blocks of 10 calls); "
             f"{'torch on ' + args.torch_device + ', ' if on_gpu else 'CPU only, '}"
             f"table {VOCAB} x {DIM} float32, int64 keys uniform over the table; dynamic embedding cache "
             f"(gpucacheper 1.0, pre-filled from the file): cache hit rate {hit_rate:.1%} in the HPS.lookup run, "
             f"the rest from the hash_map tier. DNN = reshape (B, 48) → Dense/Linear 256 → 128 → 1. "
             f"ratio = ours / baseline; target on the CPU: ratio_p50 ≤ 1.5 (Keras model, torch layer)."
             f"{'' if on_gpu else ' ' + VM_NOTE}")
    write_results("frameworks-gpu" if on_gpu else "frameworks-cpu", "gpu" if on_gpu else "cpu", rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
