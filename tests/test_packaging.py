"""The published package: `hierarchical-parameter-server` (imported as `hps`) builds, installs and looks up.

`make dist` builds the sdist and the wheel with `python -m build`; this test does the same on a
copy of the sources (so the shared tree gets no build/ or egg-info), installs the wheel built from
the sdist into a fresh venv with its core dependencies from PyPI, and runs `hps --version`, a
lookup through `hps lookup` and through Python there, and a missing-extra message.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import hps
from hps.errors import DISTRIBUTION

ROOT = Path(__file__).resolve().parents[1]


def test_distribution_name_and_version_come_from_one_place():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "hierarchical-parameter-server"
    assert "version" in project["dynamic"]  # from hps.__version__


def test_version_flag_prints_the_version(capsys):
    from hps.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"hps {hps.__version__} ({DISTRIBUTION}")


def test_missing_extra_messages_name_the_published_package():
    from hps.errors import MissingDependencyError, require

    with pytest.raises(MissingDependencyError, match=r"pip install 'hierarchical-parameter-server\[torch\]'"):
        require("a_module_that_does_not_exist_anywhere", "torch")
    sources = [p for p in (ROOT / "src").rglob("*.py") if "pip install 'hps[" in p.read_text()]
    assert not sources, f"messages still name the PyPI package 'hps' (someone else's): {sources}"


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _copy_sources(dst: Path) -> Path:
    """pyproject.toml, README.md and src/ (no caches, no egg-info) in `dst`."""
    dst.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    shutil.copytree(ROOT / "src", dst / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    return dst


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert run.returncode == 0, f"{' '.join(map(str, cmd))} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    return run


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_looks_up(tmp_path):
    pytest.importorskip("build", reason="python -m build (dev extra) builds the sdist and the wheel")
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable: the fresh venv gets the core dependencies from it")
    sources = _copy_sources(tmp_path / "src-copy")
    dist = tmp_path / "dist"
    # what `make dist` runs (without isolation: this venv's setuptools, no download)
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(sources)])
    version = hps.__version__
    wheel = dist / f"hierarchical_parameter_server-{version}-py3-none-any.whl"
    sdist = dist / f"hierarchical_parameter_server-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("hps/__init__.py", "hps/py.typed", "hps/serving/triton/model.py", "hps/cli/main.py",
                   "hierarchical_parameter_server/__init__.py"):
        assert needed in names, f"{needed} missing from {wheel.name}"
    metadata = zipfile.ZipFile(wheel).read(f"hierarchical_parameter_server-{version}.dist-info/METADATA").decode()
    assert f"Name: {DISTRIBUTION}" in metadata and f"Version: {version}" in metadata
    assert "Provides-Extra: triton" in metadata and "Provides-Extra: torch" in metadata

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py, hps_cmd = venv / "bin" / "python", venv / "bin" / "hps"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], env=env)

    assert _run([str(hps_cmd), "--version"], env=env).stdout.startswith(f"hps {version} ({DISTRIBUTION}")
    work = tmp_path / "work"
    work.mkdir()
    script = """
import json, numpy as np, hps
from hps.model_format import write_sparse_model
assert hps.__file__.startswith(%(venv)r), hps.__file__          # the installed wheel, not the source tree
write_sparse_model("t0", np.arange(100, dtype=np.int64), np.full((100, 4), 0.5, np.float32))
json.dump({"volatile_db": {"type": "hash_map"},
           "models": [{"model": "m", "sparse_files": ["t0"], "embedding_vecsize_per_table": [4],
                       "maxnum_catfeature_query_per_table_per_sample": [2], "default_value_for_each_table": [7.0],
                       "deployed_device_list": [0], "gpucache": False}]}, open("ps.json", "w"))
with hps.HPS("ps.json", show_progress=False) as ps:
    print(json.dumps(ps.lookup(np.array([3, 1000]), "m", 0).tolist()))
"""
    out = _run([str(py), "-c", script % {"venv": str(venv)}], env=env, cwd=work).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [[0.5] * 4, [7.0] * 4]
    looked_up = _run([str(hps_cmd), "lookup", "ps.json", "--model", "m", "3"], env=env, cwd=work).stdout
    assert "0.5" in looked_up
    # an extra that is not installed is named by its published name
    missing = subprocess.run([str(py), "-c", "from hps.errors import require; require('torch', 'torch')"],
                             capture_output=True, text=True, env=env, cwd=work, timeout=120)
    assert missing.returncode != 0
    assert "pip install 'hierarchical-parameter-server[torch]'" in missing.stderr
