"""`hps lookup`: one vector per line, defaults marked, rows read from the sparse files directly."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hps.cli import lookup as lookup_command
from hps.cli.main import main
from hps.model_format import SparseModel, write_sparse_model

from .conftest import model_entry, write_ps_json


def test_one_line_per_key_with_defaults_marked_and_no_blank_line(small_table, capsys):
    assert main(["lookup", str(small_table), "3", "1000", "-3", "297", "3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "3\tfound\t1.0 1.25 1.5 1.75",
        "1000\tdefault\t7.0 7.0 7.0 7.0",
        "-3\tdefault\t7.0 7.0 7.0 7.0",
        "297\tfound\t99.0 99.25 99.5 99.75",
        "3\tfound\t1.0 1.25 1.5 1.75",
    ]
    assert out.endswith("5\n") and "\n\n" not in out and not out.startswith("\n")


def test_json(small_table, capsys):
    assert main(["lookup", str(small_table), "--json", "6", "7"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["model"], doc["table"], doc["table_id"], doc["dim"], doc["source"]) == (
        "m", "sparse_embedding0", 0, 4, "sparse files")
    assert doc["keys"] == [{"key": 6, "default": False, "vector": [2.0, 2.25, 2.5, 2.75]},
                           {"key": 7, "default": True, "vector": [7.0] * 4}]


def test_model_is_optional_with_one_model_and_named_with_several(tmp_path, capsys):
    write_sparse_model(tmp_path / "a", np.arange(4, dtype=np.int64), np.ones((4, 2), np.float32))
    write_sparse_model(tmp_path / "b", np.arange(4, dtype=np.int64), np.full((4, 3), 2, np.float32))
    ps = write_ps_json(tmp_path, [model_entry("ma", ["a"], 2), model_entry("mb", ["a", "b"], 2)])
    ps.write_text(ps.read_text().replace('"embedding_vecsize_per_table": [2, 2]',
                                         '"embedding_vecsize_per_table": [2, 3]'))
    assert main(["lookup", str(ps), "1"]) == 2
    err = capsys.readouterr().err
    assert "2 models (ma, mb)" in err and "--model" in err
    assert main(["lookup", str(ps), "--model", "mb", "--table", "sparse_embedding1", "1"]) == 0
    assert capsys.readouterr().out == "1\tfound\t2.0 2.0 2.0\n"
    assert main(["lookup", str(ps), "--model", "mb", "--table", "5", "1"]) == 2
    assert "--table 5: model 'mb'" in capsys.readouterr().err


def test_reads_only_the_rows_it_needs(tmp_path, capsys, monkeypatch):
    """A 2M-row, dim-512 table (4 GiB of vectors, a sparse file here): two keys without an HPS, the
    whole table never read (tracemalloc peak 40x below the table's size)."""
    rows, dim = 2_000_000, 512
    table = tmp_path / "big"
    table.mkdir()
    keys = np.random.default_rng(1).permutation(rows).astype(np.int64) * 7
    keys.tofile(table / "key")
    with open(table / "emb_vector", "wb") as f:
        f.truncate(rows * dim * 4)  # zeros, taking no disk
    ps = write_ps_json(tmp_path, [model_entry("big", ["big"], dim, default=-1.0)], volatile_db={"type": "hash_map"})

    def refuse(*args, **kwargs):
        raise AssertionError("hps lookup started an HPS / streamed the whole table")

    monkeypatch.setattr("hps.HPS", refuse)
    monkeypatch.setattr(SparseModel, "iter_chunks", refuse)
    wanted = [int(keys[12345]), int(keys[-1]), 1]  # 1 is no multiple of 7: absent
    tracemalloc.start()
    try:
        assert main(["lookup", str(ps), *map(str, wanted)]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [[str(wanted[0]), "found"], [str(wanted[1]), "found"],
                                                         ["1", "default"]]
    assert lines[2].split("\t")[2] == " ".join(["-1.0"] * dim)
    # ~18 MiB of key scan + the ps.json reader's 64 MiB read buffer: far from the table's 4 GiB
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-50, 50), unique=True, min_size=1, max_size=40),
       st.lists(st.integers(-60, 60), min_size=1, max_size=20), st.integers(1, 7))
def test_find_rows_matches_a_dict(file_keys, asked, chunk_rows):
    """`find_rows` over any key file and chunk size answers like a dict of key → row."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        keys = np.array(file_keys, dtype=np.int64)
        write_sparse_model(f"{tmp}/t", keys, np.zeros((len(keys), 1), np.float32))
        sparse = SparseModel(f"{tmp}/t", 1)
        old = lookup_command.SCAN_CHUNK_ROWS
        lookup_command.SCAN_CHUNK_ROWS = chunk_rows
        try:
            rows = lookup_command.find_rows(sparse, np.array(asked, dtype=np.int64))
        finally:
            lookup_command.SCAN_CHUNK_ROWS = old
    where = {k: i for i, k in enumerate(file_keys)}
    assert rows.tolist() == [where.get(k, -1) for k in asked]


def test_through_hps_answers_as_the_server_and_marks_defaults(small_table, capsys):
    assert main(["lookup", str(small_table), "--through-hps", "4", "6", "4", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["source"] == "hps"
    assert [(k["key"], k["default"], k["vector"][0]) for k in doc["keys"]] == [(4, True, 7.0), (6, False, 2.0),
                                                                               (4, True, 7.0)]


def test_help_says_where_the_rows_come_from(capsys):
    with pytest.raises(SystemExit):
        main(["lookup", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "memory-mapped" in out and "--through-hps" in out and "no HPS, no tiers" in out
