"""Restarts lose nothing: updates survive a SIGKILL or a graceful restart in every tier, a load
killed midway is detected and redone (or refused when read_only), unchanged files are not re-imported.

The rule (hps.lookup.loading): RocksDB records, per table, the sparse files it was loaded from
(path, size, mtime, sampled hash) once the load completed; a start with the same files keeps the
table as it is (updates included), changed files reload it, an interrupted load is reloaded. The
in-process tiers (hash map, caches) start from the files plus the rows RocksDB was updated with.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import hps
from hps.errors import HpsError
from hps.model_format import write_sparse_model

DIM = 8
ROWS = 1000
TAG = "hps_et.m.t0"


def _vectors(keys: np.ndarray, salt: float = 0.0) -> np.ndarray:
    return (keys[:, None] * 0.25 + np.arange(DIM)[None, :] + salt).astype(np.float32)


@pytest.fixture
def sparse(tmp_path):
    keys = np.arange(ROWS, dtype=np.int64) * 3 + 1
    write_sparse_model(tmp_path / "t0", keys, _vectors(keys))
    return keys


def _config(tmp_path, volatile: bool = True, read_only: bool = False, cache: str = "dynamic") -> dict:
    cfg = {"supportlonglong": True,
           "models": [{"model": "m", "sparse_files": [str(tmp_path / "t0")], "embedding_table_names": ["t0"],
                       "embedding_vecsize_per_table": [DIM], "maxnum_catfeature_query_per_table_per_sample": [4],
                       "default_value_for_each_table": [-7.0], "deployed_device_list": [0],
                       "max_batch_size": 1024, "hit_rate_threshold": 1.0, "gpucacheper": 0.2,
                       "embedding_cache_type": cache}],
           "persistent_db": {"type": "rocks_db", "path": str(tmp_path / "rocksdb"), "num_threads": 2,
                             "read_only": read_only}}
    if volatile:
        cfg["volatile_db"] = {"type": "hash_map", "num_partitions": 2}
    return cfg


_CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import hps
    cfg, plan = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    ps = hps.HPS(cfg, show_progress=False)
    for step in plan:
        keys = np.array(step["keys"], dtype=np.int64)
        vectors = np.array(step["vectors"], dtype=np.float32)
        ps.apply_update("hps_et.m.t0", keys, vectors, tier=step["tier"])
    print("applied", flush=True)
    if "--close" in sys.argv:
        ps.close()
        print("closed", flush=True)
    else:
        time.sleep(600)
""")


def _run_child(cfg: dict, plan: list[dict], close: bool) -> None:
    """Start an HPS in a child, apply `plan`'s updates, then SIGKILL it (or close it)."""
    args = [sys.executable, "-c", _CHILD, json.dumps(cfg), json.dumps(plan)] + (["--close"] if close else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "applied", proc.stderr.read()
        if close:
            assert proc.wait(timeout=60) == 0, proc.stderr.read()
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _plan(keys: np.ndarray) -> tuple[list[dict], dict[int, np.ndarray]]:
    """Updates as the Kafka consumers apply them: each batch to the volatile then the persistent tier;
    some keys updated twice (the last wins), some new keys not in the files."""
    first = keys[::40]
    second = keys[::80]
    new = np.array([10**9, 10**9 + 5], dtype=np.int64)
    batches = [(first, _vectors(first, 100.0)), (second, _vectors(second, 200.0)), (new, _vectors(new, 300.0))]
    plan, latest = [], {}
    for k, v in batches:
        for tier in ("volatile", "persistent"):
            plan.append({"keys": k.tolist(), "vectors": v.tolist(), "tier": tier})
        latest.update({int(key): vec for key, vec in zip(k, v)})
    return plan, latest


def _check_every_tier(ps: hps.HPS, keys: np.ndarray, latest: dict[int, np.ndarray], whole_rows: bool = True) -> None:
    """Every tier answers each updated key's latest vector and (when it holds the file rows, i.e.
    not for a static table, which lives whole in its cache) every other key its file vector."""
    all_keys = np.concatenate([keys, np.array(sorted(set(latest) - set(keys.tolist())), dtype=np.int64)])
    want = np.concatenate([_vectors(keys), np.zeros((len(all_keys) - len(keys), DIM), np.float32)])
    for i, k in enumerate(all_keys.tolist()):
        if k in latest:
            want[i] = latest[k]
    tiers: list = [("lookup", ps.lookup(all_keys, "m", 0))]
    for name, backend in (("volatile", ps.volatile), ("persistent", ps.persistent)):
        if backend is not None:
            got, found = backend.find(TAG, all_keys)
            must = np.ones(len(all_keys), bool) if whole_rows else np.isin(all_keys, list(latest))
            assert found[must].all(), f"{name}: {int((~found[must]).sum())} keys missing"
            tiers.append((name, got, found))
    for name, got, *found in tiers:
        wrong = ~(got == want).all(axis=1) & (found[0] if found else True)
        assert not wrong.any(), f"{name}: {int(wrong.sum())} of {len(all_keys)} keys answer a stale vector, " \
                                f"e.g. key {int(all_keys[wrong][0])}"


@pytest.mark.parametrize("close", [False, True], ids=["sigkill", "graceful"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_restart_keeps_every_applied_update(tmp_path, sparse, close, cache):
    cfg = _config(tmp_path, cache=cache)
    plan, latest = _plan(sparse)
    _run_child(cfg, plan, close)
    with hps.HPS(cfg, show_progress=False) as ps:
        _check_every_tier(ps, sparse, latest, whole_rows=cache == "dynamic")
    with hps.HPS(cfg, show_progress=False) as ps:  # a second restart, with no update in between
        _check_every_tier(ps, sparse, latest, whole_rows=cache == "dynamic")


def test_restart_without_volatile_tier_keeps_updates(tmp_path, sparse):
    cfg = _config(tmp_path, volatile=False)
    plan, latest = _plan(sparse)
    _run_child(cfg, [p for p in plan if p["tier"] == "persistent"], close=False)
    with hps.HPS(cfg, show_progress=False) as ps:
        _check_every_tier(ps, sparse, latest)


def test_changed_files_reload_the_table(tmp_path, sparse):
    cfg = _config(tmp_path)
    plan, _ = _plan(sparse)
    _run_child(cfg, plan, close=True)
    time.sleep(0.01)
    write_sparse_model(tmp_path / "t0", sparse, _vectors(sparse, 0.5), overwrite=True)  # a new model version
    with hps.HPS(cfg, show_progress=False) as ps:
        for backend in (ps.volatile, ps.persistent):
            got, found = backend.find(TAG, sparse)
            assert found.all()
            np.testing.assert_array_equal(got, _vectors(sparse, 0.5))
        new = np.array([10**9], dtype=np.int64)  # keys of the old version's updates are gone too
        assert not ps.persistent.find(TAG, new)[1].any()
        np.testing.assert_array_equal(ps.lookup(sparse, "m", 0), _vectors(sparse, 0.5))


_LOADER = textwrap.dedent("""
    import sys
    import hps
    from hps.lookup import loading
    loading.LOAD_CHUNK_ROWS = 1 << 14
    import json
    cfg = json.loads(sys.argv[1])
    hps.HPS(cfg, show_progress=False)
    print("loaded", flush=True)
""")


@pytest.mark.parametrize("then_read_only", [False, True], ids=["reload", "read_only"])
def test_load_killed_midway_is_detected(tmp_path, then_read_only):
    rows = 400_000
    keys = np.arange(rows, dtype=np.int64)
    write_sparse_model(tmp_path / "t0", keys, np.broadcast_to(np.arange(DIM, dtype=np.float32), (rows, DIM)))
    cfg = _config(tmp_path, volatile=False)
    db = tmp_path / "rocksdb"
    proc = subprocess.Popen([sys.executable, "-c", _LOADER, json.dumps(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        # kill once the import has begun: the first chunk's SST was ingested into the table
        while not any(name.endswith(".sst") for name in (os.listdir(db) if db.exists() else ())):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if then_read_only:
        with pytest.raises(HpsError, match=f"{TAG}.*(incomplete|interrupted)"):
            hps.HPS(_config(tmp_path, volatile=False, read_only=True), show_progress=False)
    with hps.HPS(cfg, show_progress=False) as ps:
        assert ps.persistent.size(TAG) == rows
        sample = np.arange(0, rows, 997, dtype=np.int64)
        got, found = ps.persistent.find(TAG, sample)
        assert found.all()
        np.testing.assert_array_equal(got, np.broadcast_to(np.arange(DIM, dtype=np.float32), (len(sample), DIM)))
    with hps.HPS(_config(tmp_path, volatile=False, read_only=True), show_progress=False) as ps:
        assert ps.persistent.find(TAG, sample)[1].all()


def test_unchanged_files_are_not_imported_again(tmp_path, sparse, monkeypatch):
    cfg = _config(tmp_path)
    with hps.HPS(cfg, show_progress=False):
        pass
    from hps.storage.rocksdb import RocksDBBackend

    def refuse(self, tag, keys, vectors):
        raise AssertionError(f"re-imported {tag} although its files did not change")

    monkeypatch.setattr(RocksDBBackend, "bulk_load", refuse)
    with hps.HPS(cfg, show_progress=False) as ps:
        np.testing.assert_array_equal(ps.lookup(sparse[:50], "m", 0), _vectors(sparse[:50]))


def test_restored_table_lays_updates_over_the_files(tmp_path):
    from hps.lookup.loading import RestoredTable
    from hps.model_format import SparseModel

    keys = np.random.default_rng(1).permutation(50_000)[:20_000].astype(np.int64)
    write_sparse_model(tmp_path / "t", keys, _vectors(keys))
    sparse = SparseModel(tmp_path / "t", DIM)
    updated = np.sort(np.concatenate([keys[:300], [10**12, -5]])).astype(np.int64)  # 300 in the file, 2 new
    present = np.ones(len(updated), bool)
    present[np.isin(updated, keys[:10])] = False  # erased since the load
    vectors = np.where(present[:, None], _vectors(updated, 9.0), 0).astype(np.float32)
    assert RestoredTable.over(sparse, updated[:0], vectors[:0], present[:0]) is sparse
    table = RestoredTable(sparse, updated, vectors, present)
    assert table.num_rows == 20_000 - 10 + 2 and table.dim == DIM
    got_keys, got_vectors = map(np.concatenate, zip(*table.iter_chunks(3000)))
    assert len(got_keys) == table.num_rows and len(np.unique(got_keys)) == table.num_rows
    np.testing.assert_array_equal(got_keys[:-2], keys[10:])  # file order, the erased ones left out
    assert sorted(got_keys[-2:].tolist()) == [-5, 10**12]  # then the new keys
    want = {int(k): v for k, v in zip(keys, _vectors(keys))}
    want.update({int(k): v for k, v, p in zip(updated, vectors, present) if p})
    np.testing.assert_array_equal(got_vectors, np.stack([want[int(k)] for k in got_keys]))
