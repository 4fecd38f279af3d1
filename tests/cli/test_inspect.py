"""`hps inspect`: sizes readable at 80 columns and when piped, totals by where they live, the loading
peak against this machine's RAM, `--json`; `--keys`: hit rate per gpucacheper from a key sample."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hps.cli import inspect as inspect_command
from hps.cli.main import main
from hps.cli.text_output import Output
from hps.config.parse import parse_config
from hps.model_format import write_sparse_model
from hps.sizing import estimate_memory, machine_ram_bytes, memory_totals, replay_hit_rates

from .conftest import model_entry, write_ps_json


@pytest.fixture()
def two_models(tmp_path):
    """Two models (one with a long table name), 10,000 and 4,000 rows, a hash map and RocksDB."""
    write_sparse_model(tmp_path / "a", np.arange(10_000, dtype=np.int64), np.zeros((10_000, 16), np.float32))
    write_sparse_model(tmp_path / "b", np.arange(4_000, dtype=np.int64), np.zeros((4_000, 128), np.float32))
    return write_ps_json(tmp_path, [
        model_entry("ranking_model_v2", ["a", "b"], 16, embedding_table_names=["user_id_embedding_table", "item"],
                    gpucacheper=0.1),
        model_entry("m2", ["a"], 16, use_static_table=True)],
        volatile_db={"type": "hash_map"}, persistent_db={"type": "rocks_db", "path": str(tmp_path / "rdb")})


def _fix_dims(ps):
    ps.write_text(ps.read_text().replace('"embedding_vecsize_per_table": [16, 16]',
                                         '"embedding_vecsize_per_table": [16, 128]'))
    return ps


def test_piped_output_is_plain_text_within_80_columns(two_models, capsys):
    assert main(["inspect", str(_fix_dims(two_models))]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "\x1b" not in out and "━" not in out and "│" not in out  # no colour, no box drawing
    assert all(line.strip() for line in lines), "a blank line"
    assert max(map(len, lines)) <= 80, max(lines, key=len)
    text = " ".join(out.split())
    for words in ("host memory, loaded", "host memory, loading peak", "device memory", "disk (RocksDB)",
                  "this machine's RAM", "user_id_embedding_table", "10,000", "available"):
        assert words in text, words


def test_terminal_output_fits_80_columns(two_models, capsys, monkeypatch):
    import io

    stream = io.StringIO()
    monkeypatch.setattr(inspect_command, "Output", lambda: Output(stream, rich=True, width=80))
    assert main(["inspect", str(_fix_dims(two_models))]) == 0
    lines = stream.getvalue().splitlines()
    assert max(map(len, lines)) <= 80 and any("loading peak" in line for line in lines)
    assert capsys.readouterr().out == ""


def test_json_totals_and_peak(two_models, capsys):
    ps = _fix_dims(two_models)
    assert main(["inspect", str(ps), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(t["model"], t["table"], t["rows"], t["dim"]) for t in doc["tables"]] == [
        ("ranking_model_v2", "user_id_embedding_table", 10_000, 16), ("ranking_model_v2", "item", 4_000, 128),
        ("m2", "sparse_embedding0", 10_000, 16)]
    mem = doc["memory"]
    volatile = sum(t["volatile_bytes"] for t in doc["tables"])
    caches = sum(t["cache_bytes"] for t in doc["tables"])
    on_host = mem["caches_on"] == "host"
    assert mem["host_bytes"] == volatile + (caches if on_host else 0)
    assert mem["device_bytes"] == (0 if on_host else caches)
    assert mem["disk_bytes"] == sum(t["persistent_bytes"] for t in doc["tables"]) > 0
    chunk = 2 * 10_000 * (8 + 4 * 128)  # two loading chunks of the largest table at the widest dim
    assert mem["peak_host_bytes"] == max(10 * 10_000, mem["host_bytes"] + chunk)
    assert mem["ram_total_bytes"] >= mem["ram_available_bytes"] > 0


def test_memory_totals_place_caches_on_the_gpu_or_the_host(two_models):
    config = parse_config(json.loads(_fix_dims(two_models).read_text()), base_dir=str(two_models.parent))
    estimates = estimate_memory(config)
    gpu, cpu = memory_totals(config, estimates, gpu=True), memory_totals(config, estimates, gpu=False)
    caches = sum(e.cache_bytes for e in estimates)
    assert gpu.device_bytes == caches and cpu.device_bytes == 0
    assert cpu.host_bytes - gpu.host_bytes == caches
    total, available = machine_ram_bytes()
    assert total >= available > 0


def _zipf_keys(n: int, rows: int, seed: int = 0) -> np.ndarray:
    return ((np.random.default_rng(seed).zipf(1.2, n) - 1) % rows).astype(np.int64)


def test_keys_sample_hit_rate_rises_with_gpucacheper_and_reaches_the_ceiling(tmp_path, capsys):
    rows = 10_000
    write_sparse_model(tmp_path / "t", np.arange(rows, dtype=np.int64), np.zeros((rows, 8), np.float32))
    ps = write_ps_json(tmp_path, [model_entry("m", ["t"], 8, max_batch_size=1000)])
    np.save(tmp_path / "keys.npy", _zipf_keys(300_000, rows).reshape(-1, 4))  # 2-D: rows are samples
    plot = tmp_path / "hit.png"
    args = ["inspect", str(ps), "--keys", str(tmp_path / "keys.npy"), "--json"]
    if _has_matplotlib():
        args += ["--plot", str(plot)]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)["hit_rates"]
    points = doc["points"]
    assert [p["gpucacheper"] for p in points] == [0.05, 0.1, 0.2, 0.5, 1.0]
    rates = [p["hit_rate"] for p in points]
    assert rates == sorted(rates) and rates[0] < rates[-1] - 0.05
    assert rates[-1] == pytest.approx(points[-1]["ceiling"])  # every key hits after its first touch
    assert rates[-1] > 0.9
    assert [p["cache_bytes"] for p in points] == sorted(p["cache_bytes"] for p in points)
    assert "set-associative LRU, 16 ways" in points[0]["policy"] and "CpuEmbeddingCache" in doc["policy"]
    assert doc["batch_keys"] == 1000 and doc["num_keys"] == 300_000
    if _has_matplotlib():
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def test_keys_table_when_piped(small_table, tmp_path, capsys):
    np.save(tmp_path / "k.npy", np.arange(0, 300, 3, dtype=np.int64).repeat(3))
    assert main(["inspect", str(small_table), "--keys", str(tmp_path / "k.npy"), "--gpucacheper", "0.5,1",
                 "--batch", "10", "--ways", "4"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 80
    text = " ".join(out.split())
    assert "gpucacheper cache rows hit rate memory policy" in text
    assert "set-associative LRU, 4 ways" in text and "ceiling:" in text and "policy: replayed through" in text


@pytest.mark.parametrize("argv, words", [
    (["--plot", "x.png"], "--plot works with --keys"),
    (["--keys", "missing.npy"], "does not exist"),
    (["--keys", "k.txt"], "expected a .npy file"),
    (["--keys", "float.npy"], "integer keys"),
    (["--keys", "k.npy", "--gpucacheper", "0.1,abc"], "--gpucacheper"),
    (["--keys", "k.npy", "--gpucacheper", "1.5"], "outside (0, 1]"),
    (["--keys", "k.npy", "--batch", "0"], "--batch 0"),
])
def test_keys_errors_name_the_flag(small_table, tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "k.npy", np.arange(10, dtype=np.int64))
    np.save(tmp_path / "float.npy", np.zeros(3))
    assert main(["inspect", str(small_table), *argv]) == 2
    assert words in capsys.readouterr().err


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=200), st.integers(1, 9), st.integers(1, 12))
def test_one_set_replays_like_an_exact_lru(keys, batch, capacity):
    """With one set (ways = capacity), the replay is a fully associative LRU: compare with an
    OrderedDict LRU fed the same batches (probe the batch, then insert its distinct misses)."""
    config = parse_config({"models": [model_entry("m", ["x"], 1)]}, base_dir="/tmp")
    rows = 10_000  # capacity 64 rows at 0.0064: one set of 64 ways
    (point,) = replay_hit_rates(np.array(keys, np.int64), config.models[0], rows, 1, [0.0064], batch, ways=64)
    lru: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for start in range(0, len(keys), batch):
        part = keys[start:start + batch]
        found = [k in lru for k in part]
        for k, f in zip(part, found):
            if f:
                hits += 1
                lru.move_to_end(k)
        for k in sorted({k for k, f in zip(part, found) if not f}):
            lru[k] = None
            if len(lru) > 64:
                lru.popitem(last=False)
    assert point.capacity_rows == 64 and point.hits == hits
