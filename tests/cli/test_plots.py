"""PNG plots: `hps inspect --plot` and the benchmarks' `harness.plot`; without matplotlib the CLI says
which extra to install and the benchmarks write their tables without the picture."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path

import pytest

from hps.errors import MissingDependencyError
from hps.sizing import HitRate

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def harness(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import harness as module

    monkeypatch.setattr(module, "RESULTS", tmp_path)
    return module


@pytest.fixture()
def no_matplotlib(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def _points():
    return [HitRate(p, int(1000 * p), "set-associative LRU, 16 ways", 100, int(90 * p), 0.95, int(4e4 * p), 0.1)
            for p in (0.1, 0.5, 1.0)]


def test_harness_plot_writes_a_png(harness, tmp_path):
    pytest.importorskip("matplotlib")
    path = harness.plot("r", "latency", [1, 10, 100], {"ours": [1, 2, 3], "baseline": [2, 3, 4]}, "batch", "ms",
                        logx=True)
    assert path == tmp_path / "r_latency.png" and path.read_bytes()[:8] == PNG


def test_harness_plot_skips_without_matplotlib(harness, tmp_path, no_matplotlib, capsys):
    assert harness.plot("r", "x", [1, 2], {"a": [1, 2]}, "x", "y") is None
    assert "matplotlib is not installed" in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_hit_rate_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from hps.cli.hit_rate_plot import plot_hit_rates

    plot_hit_rates(_points(), tmp_path / "h.png", "title")
    assert (tmp_path / "h.png").read_bytes()[:8] == PNG


def test_hit_rate_plot_names_the_extra_without_matplotlib(tmp_path, no_matplotlib):
    from hps.cli.hit_rate_plot import plot_hit_rates

    with pytest.raises(MissingDependencyError, match=r"hierarchical-parameter-server\[plot\]"):
        plot_hit_rates(_points(), tmp_path / "h.png", "title")
