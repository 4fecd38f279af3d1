"""`hps demo` (the seed pipeline) end to end, on small sizes."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def test_demo_reproduces_the_native_predictions(tmp_path):
    from hps.demo import run_demo

    lines: list[str] = []
    max_diff = run_demo(tmp_path, global_batch_size=1024, num_requests=5, with_triton=False, log=lines.append)
    assert max_diff < 1e-4
    report = "\n".join(lines)
    assert "max abs diff:" in report and "rows loaded: 30000" in report and "hit rates:" in report
    assert (tmp_path / "naive_dnn_sparse.model" / "key").stat().st_size == 30000 * 8
    assert (tmp_path / "naive_dnn_dense.onnx").exists() and (tmp_path / "hps_embedding.json").exists()
