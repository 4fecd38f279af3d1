"""`hps demo` end to end on small sizes, and the README's getting-started chain run verbatim.

The README's first screen is: `make demo` (which runs `hps demo`: artefacts kept in ./hps-demo),
then its Python snippet. These tests run that chain: a quick demo into `hps-demo/` under a
temporary working directory, then the snippet's code block extracted from README.md (so the
README and this test cannot drift apart).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK = {"global_batch_size": 1024, "iter_num": 2, "num_requests": 3, "request_batch": 64, "with_triton": False}


def readme_python_snippet() -> str:
    """The first ```python block of README.md (the getting-started snippet)."""
    match = re.search(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert match, "README.md has no ```python block"
    return match.group(1)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A quick demo's folder, `<tmp>/hps-demo` (the default name), shared by the tests below."""
    from hps.demo import DEFAULT_OUT, run_demo

    root = tmp_path_factory.mktemp("cwd") / DEFAULT_OUT
    lines: list[str] = []
    max_diff = run_demo(root, log=lines.append, **QUICK)
    assert max_diff < 1e-4
    root.joinpath("report.txt").write_text("\n".join(lines))
    return root


def test_demo_keeps_its_artefacts_and_reports_them(demo_dir):
    report = demo_dir.joinpath("report.txt").read_text()
    assert "max abs diff" in report and "rows loaded: 30000" in report and "hit rates:" in report
    assert (demo_dir / "naive_dnn_sparse.model" / "key").stat().st_size == 30000 * 8
    assert (demo_dir / "naive_dnn_dense.onnx").is_file()
    assert (demo_dir / "ps.json").is_file() and not (demo_dir / "hps_embedding.json").exists()
    assert (demo_dir / "model_repository" / "ensemble_model" / "config.pbtxt").is_file()
    assert (demo_dir / "model_repository" / "hps_embedding" / "config.pbtxt").is_file()
    # every artefact the report names exists, and it names the folder
    assert f"artefacts kept in {demo_dir}/" in report
    for name in ("ps.json", "naive_dnn_sparse.model/", "naive_dnn_dense.onnx", "rocksdb/", "model_repository/"):
        assert f"  {name}" in report
        assert (demo_dir / name.rstrip("/")).exists()
    assert "seed" not in report.lower()


def test_readme_snippet_runs_verbatim_after_the_demo(demo_dir, monkeypatch, capsys):
    """The README's snippet, as written, from the folder `make demo` ran in."""
    monkeypatch.chdir(demo_dir.parent)
    namespace: dict = {}
    exec(compile(readme_python_snippet(), str(README), "exec"), namespace)  # noqa: S102 - our own README
    vectors = namespace["vectors"]
    assert vectors.shape == (1, 3, 16) and vectors.dtype == np.float32
    # the trained rows, not the default value (1.0) of missing keys
    from hps.model_format import SparseModel

    table = SparseModel(demo_dir / "naive_dnn_sparse.model", 16)
    np.testing.assert_array_equal(vectors[0], np.asarray(table.vectors)[[3, 10_007, 20_011]])
    assert capsys.readouterr().out.strip()


def test_readme_first_screen_names_the_demo_folder():
    """The snippet opens the folder the demo writes by default, and the first screen says how to get there."""
    from hps.demo import DEFAULT_OUT

    text = README.read_text()
    first_screen = text[:text.index("```python")]
    assert "make demo" in first_screen and f"{DEFAULT_OUT}/" in first_screen
    assert f"{DEFAULT_OUT}/ps.json" in readme_python_snippet()


def test_a_second_demo_replaces_the_first(demo_dir, tmp_path):
    """Rerunning into the same folder works (its own files are replaced; RocksDB reloads the new files)."""
    from hps.demo import run_demo

    assert run_demo(demo_dir, log=lambda line: None, **QUICK) < 1e-4


def test_demo_refuses_a_folder_holding_other_files(tmp_path):
    from hps.demo import run_demo
    from hps.errors import HpsError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(HpsError, match="not empty and holds no earlier demo"):
        run_demo(tmp_path, log=lambda line: None, **QUICK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_cli_demo_without_out_keeps_hps_demo(tmp_path, monkeypatch, capsys):
    """`hps demo` (what `make demo` runs) leaves ./hps-demo behind and prints where it is."""
    import hps.demo
    from hps.cli.main import main

    real = hps.demo.run_demo
    seen: dict = {}

    def quick(out_dir, **kwargs):
        seen.update(out_dir=out_dir, **kwargs)
        return real(out_dir, **{**kwargs, **QUICK})

    monkeypatch.setattr(hps.demo, "run_demo", quick)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--no-triton"]) == 0
    assert seen["out_dir"] == "hps-demo"
    assert (tmp_path / "hps-demo" / "ps.json").is_file()
    assert (tmp_path / "hps-demo" / "model_repository").is_dir()
    assert "artefacts kept in hps-demo/" in capsys.readouterr().out
