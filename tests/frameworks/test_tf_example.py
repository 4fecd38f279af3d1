"""The seed notebook's scripts (examples/hps_triton_ensemble) run end to end, each in a subprocess:
01 trains and writes the models, 02 serves them through hps (and Triton, when it is installed)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hps_triton_ensemble"

pytestmark = [
    pytest.mark.tf, pytest.mark.slow,
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("tensorflow", "tf2onnx", "onnx")),
                       reason="needs the tf and onnx extras"),  # found, not imported: the scripts import them
]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(EXAMPLE / script), *args], capture_output=True, text=True,
                          env=env, timeout=480)
    assert done.returncode == 0, f"{script} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_seed_training_and_inference_scripts(tmp_path):
    out = tmp_path / "hps_demo_tf"
    log = _run("01_model_training.py", "--out", str(out), "--batch-size", "128", "--steps", "3")
    assert "Step 2, loss:" in log and "onnx model checked" in log
    for name in ("naive_dnn_dense.model", "naive_dnn_reshape_dense.model", "naive_dnn_sparse.model",
                 "naive_dnn_dense.onnx", "ps.json", "reference.npz"):
        assert (out / name).exists(), name
    assert (out / "naive_dnn_sparse.model" / "key").stat().st_size == 30000 * 8
    assert (out / "naive_dnn_sparse.model" / "emb_vector").stat().st_size == 30000 * 16 * 4

    log = _run("02_inference.py", "--out", str(out))
    diffs = [float(v) for v in re.findall(r"model \((?:eager|predict)\) vs trained TF model: max abs diff: (\S+)", log)]
    assert len(diffs) == 2 and max(diffs) < 1e-4, log
    assert "all checks passed" in log
    assert "Triton ensemble vs trained TF model: max abs diff" in log or "Triton part skipped" in log, log
