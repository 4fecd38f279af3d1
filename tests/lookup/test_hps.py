"""`hps.HPS` end to end on the CPU tiers: the lookup chain, bad input, updates, models, concurrency."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import hps
from hps.errors import ClosedError, HpsError, KeyInputError, ModelFormatError, UnknownModelError
from hps.model_format import write_sparse_model

DIM0, DIM1 = 16, 4
ROWS = 3000


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Two sparse models: table 0 keys 0..2999 (dim 16), table 1 keys 10**12 + 7·i (dim 4)."""
    root = tmp_path_factory.mktemp("sparse")
    rng = np.random.default_rng(0)
    keys0 = np.arange(ROWS, dtype=np.int64)
    vecs0 = rng.standard_normal((ROWS, DIM0)).astype(np.float32)
    keys1 = 10**12 + 7 * np.arange(500, dtype=np.int64)
    vecs1 = rng.standard_normal((500, DIM1)).astype(np.float32)
    write_sparse_model(root / "t0", keys0, vecs0)
    write_sparse_model(root / "t1", keys1, vecs1)
    return {"root": root, "keys0": keys0, "vecs0": vecs0, "keys1": keys1, "vecs1": vecs1}


def make_config(tables, tmp_path, volatile=True, persistent=True, **model_overrides):
    entry = {"model": "m", "sparse_files": [str(tables["root"] / "t0"), str(tables["root"] / "t1")],
             "embedding_table_names": ["t0", "t1"], "embedding_vecsize_per_table": [DIM0, DIM1],
             "maxnum_catfeature_query_per_table_per_sample": [26, 2], "default_value_for_each_table": [-1.0, 2.5],
             "deployed_device_list": [0], "max_batch_size": 1024, "hit_rate_threshold": 1.0, "gpucacheper": 0.5}
    entry.update(model_overrides)
    cfg = {"supportlonglong": True, "models": [entry]}
    if volatile:
        cfg["volatile_db"] = {"type": "hash_map", "num_partitions": 3}
    if persistent:
        cfg["persistent_db"] = {"type": "rocks_db", "path": str(tmp_path / "rocksdb")}
    return cfg


def expected(tables, keys, table=0):
    """Reference vectors: the file's rows, the default value for unknown keys."""
    ks, vs = (tables["keys0"], tables["vecs0"]) if table == 0 else (tables["keys1"], tables["vecs1"])
    index = {int(k): i for i, k in enumerate(ks)}
    default = -1.0 if table == 0 else 2.5
    flat = np.asarray(keys).reshape(-1)
    out = np.full((len(flat), vs.shape[1]), default, dtype=np.float32)
    for j, k in enumerate(flat.tolist()):
        if k in index:
            out[j] = vs[index[k]]
    return out.reshape(*np.shape(keys), vs.shape[1])


@pytest.mark.parametrize("volatile,persistent", [(True, True), (True, False), (False, True), (False, False)])
def test_lookup_through_every_tier_combination(tables, tmp_path, volatile, persistent):
    cfg = make_config(tables, tmp_path, volatile, persistent)
    with hps.HPS(cfg, show_progress=False) as ps:
        keys = np.array([[0, 5, 2999, 3000], [7, 7, -3, 1]], dtype=np.int64)
        for _ in range(2):  # cold, then from the cache
            got = ps.lookup(keys, "m", 0)
            np.testing.assert_array_equal(got, expected(tables, keys))  # no tier: an in-process hash map
        keys1 = np.concatenate([tables["keys1"][:10], [5]])
        got1 = ps.lookup(keys1, "m", 1)
        assert got1.shape == (11, DIM1)
        if volatile or persistent:
            np.testing.assert_array_equal(got1, expected(tables, keys1, table=1))


def test_key_dtypes_and_array_kinds(tables, tmp_path):
    torch = pytest.importorskip("torch")
    with hps.HPS(make_config(tables, tmp_path), show_progress=False) as ps:
        ref = expected(tables, [[1, 2], [3, 4]])
        np.testing.assert_array_equal(ps.lookup(np.array([[1, 2], [3, 4]], dtype=np.int32), "m", 0), ref)
        np.testing.assert_array_equal(ps.lookup([[1, 2], [3, 4]], "m", 0), ref)
        out = ps.lookup(torch.tensor([[1, 2], [3, 4]], dtype=torch.int32), "m", 0)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2, 2, DIM0)
        np.testing.assert_array_equal(out.numpy(), ref)


def test_counts_per_level_in_stats(tables, tmp_path):
    with hps.HPS(make_config(tables, tmp_path), show_progress=False) as ps:
        ps.lookup(np.array([1, 2, 2, 999999]), "m", 0)
        ps.lookup(np.array([1, 2]), "m", 0)
        s = ps.stats()["models"]["m"]["t0"]
        assert s["lookups"] == 2 and s["keys"] == 6
        assert s["hits"]["volatile"] == 3 and s["hits"]["default"] == 1 and s["hits"]["cache"] == 2
        assert s["latency_us"]["p50"] > 0 and s["cache_capacity_rows"] >= ROWS // 2
        assert s["tier_latency_us"]["volatile"]["samples"] == 1 and s["tier_latency_us"]["volatile"]["p50"] > 0
        assert s["tier_latency_us"]["persistent"]["samples"] == 1  # asked for the one volatile miss


def test_persistent_only_hits_promote_into_volatile(tables, tmp_path):
    cfg = make_config(tables, tmp_path)
    cfg["volatile_db"]["cache_missed_embeddings"] = True
    with hps.HPS(cfg, show_progress=False) as ps:
        tag = "hps_et.m.t0"
        ps.volatile.erase(tag, np.array([42], dtype=np.int64))
        np.testing.assert_array_equal(ps.lookup(np.array([42]), "m", 0), expected(tables, [42]))
        assert ps.stats()["models"]["m"]["t0"]["hits"]["persistent"] == 1
        deadline = time.time() + 5
        while not ps.volatile.find(tag, np.array([42], dtype=np.int64))[1][0]:
            assert time.time() < deadline, "key 42 was not promoted into the volatile tier"
            time.sleep(0.01)


def test_asynchronous_misses_return_defaults_then_values(tables, tmp_path):
    with hps.HPS(make_config(tables, tmp_path, hit_rate_threshold=0.0), show_progress=False) as ps:
        keys = np.array([10, 11, 12])
        assert (ps.lookup(keys, "m", 0) == -1.0).all()  # this batch gets the default value
        deadline = time.time() + 5
        while not np.array_equal(ps.lookup(keys, "m", 0), expected(tables, keys)):
            assert time.time() < deadline, "the background insert never reached the cache"
            time.sleep(0.01)


def test_gpucache_off_reads_the_tiers(tables, tmp_path):
    with hps.HPS(make_config(tables, tmp_path, gpucache=False), show_progress=False) as ps:
        keys = np.array([3, 3000, 4])
        np.testing.assert_array_equal(ps.lookup(keys, "m", 0), expected(tables, keys))
        assert ps.stats()["models"]["m"]["t0"]["cache_capacity_rows"] == 0


def test_static_table_holds_everything_without_tiers(tables, tmp_path):
    cfg = make_config(tables, tmp_path, volatile=False, persistent=False, embedding_cache_type="static")
    with hps.HPS(cfg, show_progress=False) as ps:
        keys = tables["keys0"][::7]
        np.testing.assert_array_equal(ps.lookup(keys, "m", 0), expected(tables, keys))
        assert (ps.lookup(np.array([-5]), "m", 0) == -1.0).all()


def test_prefill_warms_the_cache(tables, tmp_path):
    cfg = make_config(tables, tmp_path, cache_refresh_percentage_per_iteration=0.2, gpucacheper=1.0)
    with hps.HPS(cfg, show_progress=False) as ps:
        # at gpucacheper 1.0 the CPU and the GPU cache both hold every row (no set collisions, HugeCTR #278)
        assert ps.stats()["models"]["m"]["t0"]["cache_rows"] == ROWS
        ps.lookup(tables["keys0"][:500], "m", 0)
        assert ps.stats()["models"]["m"]["t0"]["hits"]["cache"] == 500


@pytest.mark.parametrize("keys,message", [
    (np.array([1.0, 2.0]), "keys must be int64 or int32, got float64"),
    (np.array(["a"]), "keys must be int64 or int32"),
    (np.int64(3), "at least one dimension"),
    (np.zeros(1024 * 26 + 1, dtype=np.int64), r"26625 keys exceed max_batch_size 1024 × .*\[0\] 26 = 26624"),
])
def test_bad_keys(tables, tmp_path, keys, message):
    with hps.HPS(make_config(tables, tmp_path), show_progress=False) as ps:
        before = ps.volatile.size("hps_et.m.t0")
        with pytest.raises(KeyInputError, match=message):
            ps.lookup(keys, "m", 0)
        assert ps.volatile.size("hps_et.m.t0") == before


def test_unknown_model_table_device_and_closed(tables, tmp_path):
    ps = hps.HPS(make_config(tables, tmp_path), show_progress=False)
    with pytest.raises(UnknownModelError, match="unknown model 'x'"):
        ps.lookup([1], "x", 0)
    with pytest.raises(UnknownModelError, match=r"table_id 2 out of range \[0, 2\)"):
        ps.lookup([1], "m", 2)
    with pytest.raises(UnknownModelError, match="device_id 3"):
        ps.lookup([1], "m", 0, device_id=3)
    ps.close()
    ps.close()
    with pytest.raises(ClosedError):
        ps.lookup([1], "m", 0)


def test_uint32_keys_are_range_checked(tables, tmp_path):
    cfg = make_config(tables, tmp_path)
    cfg["supportlonglong"] = False
    cfg["models"][0]["sparse_files"] = cfg["models"][0]["sparse_files"][:1]
    for key in ("embedding_table_names", "embedding_vecsize_per_table",
                "maxnum_catfeature_query_per_table_per_sample", "default_value_for_each_table"):
        cfg["models"][0][key] = cfg["models"][0][key][:1]
    with hps.HPS(cfg, show_progress=False) as ps:
        np.testing.assert_array_equal(ps.lookup(np.array([1, 2], dtype=np.uint32), "m", 0), expected(tables, [1, 2]))
        with pytest.raises(KeyInputError, match="supportlonglong is false"):
            ps.lookup(np.array([-1]), "m", 0)


def test_a_bad_table_file_loads_nothing(tables, tmp_path):
    bad = tmp_path / "bad"
    write_sparse_model(bad, np.arange(10, dtype=np.int64), np.zeros((10, DIM1), np.float32))
    (bad / "emb_vector").write_bytes(b"\0" * 4 * DIM1 * 9)  # one row short
    cfg = make_config(tables, tmp_path)
    cfg["models"][0]["sparse_files"][1] = str(bad)
    with pytest.raises(ModelFormatError, match="bad/emb_vector"):
        hps.HPS(cfg, show_progress=False)
    with hps.HPS(make_config(tables, tmp_path, persistent=False), show_progress=False) as ps:
        assert ps.volatile.size("hps_et.m.t0") == ROWS  # a fresh start is unaffected


def test_apply_update_reaches_tiers_and_cache(tables, tmp_path):
    with hps.HPS(make_config(tables, tmp_path), show_progress=False) as ps:
        keys = np.array([1, 2, 777777], dtype=np.int64)
        ps.lookup(keys, "m", 0)  # now cached
        new = np.full((3, DIM0), 9.0, dtype=np.float32)
        ps.apply_update("hps_et.m.t0", keys, new, tier="volatile")
        got = ps.lookup(keys, "m", 0)
        np.testing.assert_array_equal(got, new)  # visible at once, cache included
        vectors, found = ps.volatile.find("hps_et.m.t0", keys)
        assert found.all() and (vectors == 9.0).all()
        with pytest.raises(HpsError, match="no served table"):
            ps.apply_update("hps_et.m.nope", keys, new, tier="volatile")
        with pytest.raises(KeyInputError, match="vectors of shape"):
            ps.apply_update("hps_et.m.t0", keys, new[:, :3], tier="volatile")


def test_refresh_rereads_cached_keys(tables, tmp_path):
    with hps.HPS(make_config(tables, tmp_path, persistent=False), show_progress=False) as ps:
        keys = np.array([5, 6], dtype=np.int64)
        ps.lookup(keys, "m", 0)
        ps.volatile.insert_or_assign("hps_et.m.t0", keys, np.full((2, DIM0), 4.0, np.float32))
        np.testing.assert_array_equal(ps.lookup(keys, "m", 0), expected(tables, keys))  # stale cache
        assert ps.refresh("m") >= 2
        assert (ps.lookup(keys, "m", 0) == 4.0).all()


def test_add_and_remove_model(tables, tmp_path):
    with hps.HPS(make_config(tables, tmp_path), show_progress=False) as ps:
        extra = dict(make_config(tables, tmp_path)["models"][0], model="m2")
        ps.add_model(extra)
        assert set(ps.model_names) == {"m", "m2"}
        np.testing.assert_array_equal(ps.lookup([8], "m2", 0), expected(tables, [8]))
        with pytest.raises(HpsError, match="already served"):
            ps.add_model(extra)
        ps.remove_model("m2", drop_tables=True)
        assert "hps_et.m2.t0" not in ps.volatile.tables()
        with pytest.raises(UnknownModelError):
            ps.lookup([8], "m2", 0)


def test_lookup_fromdlpack_fills_the_callers_buffer(tables, tmp_path):
    torch = pytest.importorskip("torch")
    with hps.HPS(make_config(tables, tmp_path), show_progress=False) as ps:
        out = torch.zeros(3, DIM0)
        ps.lookup_fromdlpack(torch.tensor([1, 2, 3]), out, "m", 0)
        np.testing.assert_array_equal(out.numpy(), expected(tables, [1, 2, 3]))
        with pytest.raises(KeyInputError, match="at least 48"):
            ps.lookup_fromdlpack(torch.tensor([1, 2, 3]), torch.zeros(10), "m", 0)


def test_concurrent_lookups_and_updates_never_tear_rows(tables, tmp_path):
    with hps.HPS(make_config(tables, tmp_path, gpucacheper=0.2), show_progress=False) as ps:
        keys = np.arange(200, dtype=np.int64)
        versions = [np.full((200, DIM0), v, dtype=np.float32) for v in (1.0, 2.0)]
        stop = threading.Event()
        errors: list[str] = []

        def reader() -> None:
            rng = np.random.default_rng(threading.get_ident() % 2**32)
            while not stop.is_set():
                got = ps.lookup(rng.choice(keys, 64), "m", 0)
                rows_ok = (got == got[:, :1]).all(axis=1)  # every row constant: one whole version
                if not rows_ok.all():
                    errors.append(f"torn row {got[~rows_ok][0]}")

        ps.apply_update("hps_et.m.t0", keys, versions[0], tier="volatile")
        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for i in range(60):
            ps.apply_update("hps_et.m.t0", keys, versions[i % 2], tier="volatile")
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]


def test_a_failed_hot_add_leaves_no_table_behind(tables, tmp_path, monkeypatch):
    import hps.parameter_server as server

    with hps.HPS(make_config(tables, tmp_path), show_progress=False) as ps:
        before = set(ps.volatile.tables())
        real_make_cache = server.make_cache

        def make_cache(model, table, *args, **kwargs):
            if table.table_id == 1:
                raise HpsError(f"no memory for {table.tag}")
            return real_make_cache(model, table, *args, **kwargs)

        monkeypatch.setattr(server, "make_cache", make_cache)
        with pytest.raises(HpsError, match="no memory for hps_et.m2.t1"):
            ps.add_model(dict(make_config(tables, tmp_path)["models"][0], model="m2"))
        assert set(ps.volatile.tables()) == before and "m2" not in ps.model_names
        np.testing.assert_array_equal(ps.lookup([8], "m", 0), expected(tables, [8]))
