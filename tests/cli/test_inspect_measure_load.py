"""`hps inspect --measure-load`: the config loaded in a child process, its measured peak and steady RSS
beside the estimates (text within 80 columns, and in --json); a failed load raises the child's error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hps.cli import inspect as inspect_command
from hps.cli.main import main
from hps.errors import ModelFormatError
from hps.model_format import write_sparse_model

from .conftest import model_entry, write_ps_json

ROWS, DIM = 200_000, 32


@pytest.fixture()
def table(tmp_path):
    """One model, one table of 200,000 × 32 float32 rows (25.6 MB), a hash map."""
    write_sparse_model(tmp_path / "t0", np.arange(ROWS, dtype=np.int64), np.ones((ROWS, DIM), np.float32))
    return write_ps_json(tmp_path, [model_entry("m", ["t0"], DIM)], volatile_db={"type": "hash_map"})


def test_json_reports_the_measured_peak_and_steady_rss(table, capsys):
    assert main(["inspect", str(table), "--measure-load", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    m = doc["measured_load"]
    assert 0 < m["rss_before_bytes"] < m["steady_rss_bytes"] <= m["peak_rss_bytes"]
    assert m["peak_over_steady"] == pytest.approx(m["peak_rss_bytes"] / m["steady_rss_bytes"])
    assert m["steady_rss_bytes"] - m["rss_before_bytes"] >= ROWS * DIM * 4  # the table is resident
    assert m["seconds"] > 0 and m["peak_source"]
    assert set(m["models"]) == {"m"} and m["models"]["m"]["peak_rss_bytes"] <= m["peak_rss_bytes"]
    assert "peak_host_bytes" in doc["memory"]  # the estimate stays beside it


def test_text_shows_measured_beside_estimated_within_80_columns(table, capsys):
    assert main(["inspect", str(table), "--measure-load"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 80
    text = " ".join(out.split())
    for words in ("memory (estimates)", "memory (measured: a load in a child process", "peak RSS",
                  "steady RSS", "peak / steady RSS", "estimate"):
        assert words in text, words


def test_without_the_flag_nothing_is_loaded(table, capsys, monkeypatch):
    monkeypatch.setattr(inspect_command, "measure_load", lambda path: pytest.fail("loaded without --measure-load"))
    assert main(["inspect", str(table), "--json"]) == 0
    assert "measured_load" not in json.loads(capsys.readouterr().out)


def test_a_failed_load_raises_the_childs_error(tmp_path):
    folder = tmp_path / "t0"  # a duplicate key, written raw: the loader's validation rejects the file
    folder.mkdir()
    np.array([1, 2, 2, 3], dtype="<i8").tofile(folder / "key")
    np.zeros((4, DIM), "<f4").tofile(folder / "emb_vector")
    ps = write_ps_json(tmp_path, [model_entry("m", ["t0"], DIM)], volatile_db={"type": "hash_map"})
    with pytest.raises(ModelFormatError, match="--measure-load.*child process.*duplicate"):
        inspect_command.measure_load(str(ps))
