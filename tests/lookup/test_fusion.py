"""Table fusion (`fuse_embedding_table`): fused and unfused models answer every key alike.

Each table's keys are its own id range (HugeCTR's requirement for fusion: no key in two tables);
unknown keys (in no table) get the default of the table they were asked of.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hps
from hps.errors import KeyInputError, ModelFormatError, UnknownModelError
from hps.lookup.fusion import FUSED_TABLE_NAME
from hps.model_format import write_sparse_model

DIMS = (8, 8, 4, 8, 4)
DEFAULTS = (0.0, 0.0, 1.5, 0.5, 1.5)   # tables 0 and 3 share dim 8 but not the default
ROWS = 60
SPAN = 1000                            # table t holds keys t*SPAN .. t*SPAN + 2*ROWS (every second one)
MAXNUM = 3
BATCH = 32

#: (cache variant name, model keys): a whole-table CPU cache, a set-associative LRU that misses (tiers
#: answer), a static table, no cache at all.
CACHES = {
    "whole": {"gpucacheper": 1.0},
    "lru": {"gpucacheper": 0.3},
    "static": {"embedding_cache_type": "static"},
    "no_cache": {"gpucache": False},
}


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    rng = np.random.default_rng(0)
    out = []
    for t, dim in enumerate(DIMS):
        keys = t * SPAN + 2 * np.arange(ROWS, dtype=np.int64)
        vectors = rng.standard_normal((ROWS, dim)).astype(np.float32)
        write_sparse_model(root / f"t{t}", keys, vectors)
        out.append((str(root / f"t{t}"), keys, vectors))
    return out


def config(tables, fuse: bool, model_fuse: bool | None = None, **model) -> dict:
    entry = {"model": "m", "sparse_files": [p for p, _, _ in tables],
             "embedding_table_names": [f"table{t}" for t in range(len(tables))],
             "embedding_vecsize_per_table": list(DIMS[:len(tables)]),
             "maxnum_catfeature_query_per_table_per_sample": [MAXNUM] * len(tables),
             "default_value_for_each_table": list(DEFAULTS[:len(tables)]), "deployed_device_list": [0],
             "max_batch_size": BATCH, "hit_rate_threshold": 1.0, **model}
    if model_fuse is not None:
        entry["fuse_embedding_table"] = model_fuse
    return {"supportlonglong": True, "fuse_embedding_table": fuse,
            "volatile_db": {"type": "hash_map", "num_partitions": 2}, "models": [entry]}


def expected(tables, t: int, query: np.ndarray) -> np.ndarray:
    _, keys, vectors = tables[t]
    out = np.full(query.shape + (DIMS[t],), DEFAULTS[t], np.float32)
    own = (query >= t * SPAN) & (query < t * SPAN + 2 * ROWS) & (query % 2 == 0)
    out[own] = vectors[(query[own] - t * SPAN) // 2]
    return out


def queries(rng: np.random.Generator, shape=(BATCH, MAXNUM)) -> list[np.ndarray]:
    """Per table: its own keys (present and absent ones of its range) and keys in no table."""
    out = []
    for t in range(len(DIMS)):
        own = t * SPAN + rng.integers(0, 2 * ROWS + 4, shape)
        unknown = rng.integers(10**6, 10**7, shape)
        out.append(np.where(rng.random(shape) < 0.8, own, unknown).astype(np.int64))
    return out


@pytest.fixture(scope="module", params=list(CACHES))
def servers(request, tables):
    with hps.HPS(config(tables, False, **CACHES[request.param]), show_progress=False) as plain, \
            hps.HPS(config(tables, True, **CACHES[request.param]), show_progress=False) as fused:
        yield plain, fused


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), order=st.permutations(range(len(DIMS))))
def test_fused_answers_every_key_as_unfused(servers, tables, seed, order):
    plain, fused = servers
    keys = queries(np.random.default_rng(seed))
    asked = [keys[t] for t in order]
    many = fused.lookup_many(asked, "m", list(order))
    for (t, query), vectors in zip(zip(order, asked), many):
        want = expected(tables, t, query)
        np.testing.assert_array_equal(plain.lookup(query, "m", t), want)
        np.testing.assert_array_equal(vectors, want)                 # one pass per fused table
        np.testing.assert_array_equal(fused.lookup(query, "m", t), want)  # per-table calls still work
        assert vectors.dtype == np.float32 and vectors.shape == query.shape + (DIMS[t],)


def test_every_key_of_every_table_and_unknown_keys_get_their_tables_default(servers, tables):
    plain, fused = servers
    ids = list(range(len(DIMS)))
    every = [np.concatenate([keys, [10**9 + t, -5]]) for t, (_, keys, _) in enumerate(tables)]
    for chunk in range(0, ROWS + 2, BATCH * MAXNUM):
        asked = [k[chunk:chunk + BATCH * MAXNUM] for k in every]
        for t, (a, b) in enumerate(zip(plain.lookup_many(asked, "m", ids), fused.lookup_many(asked, "m", ids))):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(b, expected(tables, t, asked[t]))
    unknown = np.array([10**9 + 7], np.int64)
    for t in ids:  # the default of the table asked, though tables 0 and 3 share dim 8
        np.testing.assert_array_equal(fused.lookup(unknown, "m", t), np.full((1, DIMS[t]), DEFAULTS[t], np.float32))


def test_tables_of_one_dim_and_default_share_one_stored_table_and_cache(tables):
    with hps.HPS(config(tables, True), show_progress=False) as ps:
        # (dim 4, default 1.5): tables 2, 4 → fused_embedding0; (8, 0.0): 0, 1 → 1; (8, 0.5): 3 → 2
        assert sorted(ps.volatile.tables()) == [f"hps_et.m.{FUSED_TABLE_NAME.format(i)}" for i in range(3)]
        runtime = ps._models["m"]
        assert runtime.fused.plan.fused_of == (1, 1, 0, 2, 0)
        assert runtime.replica(0, 0).cache is runtime.replica(1, 0).cache
        assert runtime.replica(2, 0).cache is runtime.replica(4, 0).cache
        assert runtime.replica(0, 0).cache is not runtime.replica(3, 0).cache
        assert ps.volatile.size("hps_et.m.fused_embedding1") == 2 * ROWS
        names = set(ps.stats()["models"]["m"])
        assert {f"table{t}" for t in range(5)} | {"fused_embedding0", "fused_embedding1", "fused_embedding2"} == names


@pytest.mark.parametrize("fuse,model_fuse", [(False, None), (False, True), (True, False)])
def test_without_fusion_nothing_changes(tables, fuse, model_fuse):
    with hps.HPS(config(tables, fuse, model_fuse), show_progress=False) as ps:
        assert sorted(ps.volatile.tables()) == sorted(f"hps_et.m.table{t}" for t in range(5))
        assert ps._models["m"].fused is None
        keys = queries(np.random.default_rng(1))
        for t, vectors in enumerate(ps.lookup_many(keys, "m", range(5))):  # lookup_many works unfused too
            np.testing.assert_array_equal(vectors, expected(tables, t, keys[t]))


def test_overlapping_keys_are_refused_naming_the_tables_and_a_key(tmp_path, tables):
    clash = tables[1][1][:10].copy()
    clash[3] = tables[0][1][7]  # one key of table0 also in the new table1
    write_sparse_model(tmp_path / "clash", clash, np.ones((10, 8), np.float32))
    bad = [tables[0], (str(tmp_path / "clash"), clash, None)]
    with pytest.raises(ModelFormatError, match=rf"model 'm': fuse_embedding_table: tables 'table0' \(.*t0\), "
                                               rf"'table1' \(.*clash\) share key {int(tables[0][1][7])} "
                                               rf"\(1 keys are in more than one"):
        hps.HPS(config(bad, True), show_progress=False)
    with hps.HPS(config(bad, False), show_progress=False) as ps:  # unfused, the same files are fine
        assert ps.lookup(clash[3:4], "m", 1).tolist() == [[1.0] * 8]


def test_interleaved_but_disjoint_keys_are_accepted(tmp_path):
    odd, even = np.arange(1, 200, 2, dtype=np.int64), np.arange(0, 200, 2, dtype=np.int64)
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal((100, 4)).astype(np.float32) for _ in range(2)]
    write_sparse_model(tmp_path / "odd", odd, rows[0])
    write_sparse_model(tmp_path / "even", even, rows[1])
    two = [(str(tmp_path / "odd"), odd, rows[0]), (str(tmp_path / "even"), even, rows[1])]
    cfg = config(two, True)
    cfg["models"][0].update(embedding_vecsize_per_table=[4, 4], default_value_for_each_table=[0.0, 0.0])
    with hps.HPS(cfg, show_progress=False) as ps:
        a, b = ps.lookup_many([odd[:50], even[:50]], "m", [0, 1])
        np.testing.assert_array_equal(a, rows[0][:50])
        np.testing.assert_array_equal(b, rows[1][:50])


@pytest.mark.parametrize("cache", ["whole", "lru", "static"])
def test_updates_of_an_original_table_reach_the_fused_storage(tables, cache):
    with hps.HPS(config(tables, False, **CACHES[cache]), show_progress=False) as plain, \
            hps.HPS(config(tables, True, **CACHES[cache]), show_progress=False) as ps:
        keys = tables[1][1][:5]
        for server in (plain, ps):
            np.testing.assert_array_equal(server.lookup(keys, "m", 1), tables[1][2][:5])  # now cached
        new_keys = np.concatenate([keys, [1 * SPAN + 999]])            # one key table1 never had
        new = np.full((6, 8), 7.0, np.float32)
        for server in (plain, ps):
            server.apply_update("hps_et.m.table1", new_keys, new, tier="volatile")
        assert "hps_et.m.table1" not in ps.volatile.tables()
        vectors, found = ps.volatile.find("hps_et.m.fused_embedding1", new_keys)
        assert found.all() and (vectors == 7.0).all()
        want = plain.lookup(new_keys, "m", 1)  # a static table serves only its own keys' updates
        np.testing.assert_array_equal(want[:5], new[:5])
        np.testing.assert_array_equal(ps.lookup(new_keys, "m", 1), want)
        np.testing.assert_array_equal(ps.lookup_many([new_keys, tables[0][1][:2]], "m", [1, 0])[0], want)
        np.testing.assert_array_equal(ps.lookup(tables[0][1][:5], "m", 0), tables[0][2][:5])  # neighbours kept
        ps.refresh("m")
        np.testing.assert_array_equal(ps.lookup(new_keys, "m", 1), want)


def test_remove_model_drops_the_fused_tables(tables):
    with hps.HPS(config(tables, True), show_progress=False) as ps:
        ps.remove_model("m", drop_tables=True)
        assert ps.volatile.tables() == []


def test_lookup_many_checks_its_arguments_per_table(tables):
    with hps.HPS(config(tables, True), show_progress=False) as ps:
        ok = np.zeros(4, np.int64)
        with pytest.raises(KeyInputError, match="2 key arrays for 3 table ids"):
            ps.lookup_many([ok, ok], "m", [0, 1, 3])
        with pytest.raises(UnknownModelError, match=r"table_id 9 out of range"):
            ps.lookup_many([ok, ok], "m", [0, 9])
        with pytest.raises(KeyInputError, match=rf"table 1 \(table1\): {BATCH * MAXNUM + 1} keys exceed"):
            ps.lookup_many([ok, np.zeros(BATCH * MAXNUM + 1, np.int64)], "m", [0, 1])
        with pytest.raises(KeyInputError, match=r"table 0 \(table0\): keys must be int64 or int32"):
            ps.lookup_many([ok.astype(np.float32), ok], "m", [0, 1])
        # lists, int32, a (tables, n) array, one table twice
        two = np.array([[0, 2], [SPAN, SPAN + 2]], np.int32)
        a, b, c = ps.lookup_many([two[0].tolist(), two[1], two[0]], "m", [0, 1, 0])
        np.testing.assert_array_equal(a, tables[0][2][:2])
        np.testing.assert_array_equal(b, tables[1][2][:2])
        np.testing.assert_array_equal(c, a)
        assert [v.shape for v in ps.lookup_many(np.stack([two[0], two[0]]), "m", [0, 0])] == [(2, 8), (2, 8)]


def test_torch_keys_come_back_as_tensors(tables):
    torch = pytest.importorskip("torch")
    with hps.HPS(config(tables, True), show_progress=False) as ps:
        keys = queries(np.random.default_rng(2))
        many = ps.lookup_many([torch.from_numpy(k) for k in keys], "m", range(5))
        for t, vectors in enumerate(many):
            assert isinstance(vectors, torch.Tensor) and vectors.shape == keys[t].shape + (DIMS[t],)
            np.testing.assert_array_equal(vectors.numpy(), expected(tables, t, keys[t]))
        mixed = ps.lookup_many([torch.from_numpy(keys[0]), keys[1]], "m", [0, 1])  # mixed: one table at a time
        np.testing.assert_array_equal(mixed[0].numpy(), expected(tables, 0, keys[0]))
        np.testing.assert_array_equal(mixed[1], expected(tables, 1, keys[1]))


def test_uint32_keys_when_supportlonglong_is_false(tables):
    cfg = config(tables, True)
    cfg["supportlonglong"] = False
    with hps.HPS(cfg, show_progress=False) as ps:
        keys = [np.array([t * SPAN, t * SPAN + 2], np.uint32) for t in range(5)]
        for t, vectors in enumerate(ps.lookup_many(keys, "m", range(5))):
            np.testing.assert_array_equal(vectors, tables[t][2][:2])
        with pytest.raises(KeyInputError, match="supportlonglong is false"):
            ps.lookup_many([np.array([-1], np.int64), keys[1]], "m", [0, 1])


def _count_passes(monkeypatch) -> dict[int, int]:
    """Calls of `TableLookup.lookup` per instance (id), counted from now on."""
    from hps.lookup.pipeline import TableLookup

    calls: dict[int, int] = {}
    original = TableLookup.lookup

    def counted(self, *args, **kwargs):
        calls[id(self)] = calls.get(id(self), 0) + 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TableLookup, "lookup", counted)
    return calls


def test_one_pass_per_fused_table(tables, monkeypatch):
    with hps.HPS(config(tables, True), show_progress=False) as ps:
        fused = ps._models["m"].fused
        calls = _count_passes(monkeypatch)
        ps.lookup_many(queries(np.random.default_rng(4)), "m", range(5))
        # tables 2+4 and 0+1 in one pass each; table 3 alone (its own fused table) through its replica
        assert calls == {id(fused.passes[(0, 0)]): 1, id(fused.passes[(1, 0)]): 1,
                         id(ps._models["m"].replica(3, 0)): 1}


@pytest.mark.parametrize("cache", ["lru", "whole", "static"])
def test_gpu_cache_pipeline_fused_in_one_pass(tables, monkeypatch, gpu_cache_device, cache):
    """The GPU cache's code (Triton kernels; on a machine without a GPU in the CPU interpreter): one
    cache probe per fused table, torch and numpy keys, the same vectors as unfused."""
    import torch

    device = gpu_cache_device
    small = dict(CACHES[cache], max_batch_size=8)
    with hps.HPS(config(tables, False, **small), show_progress=False) as plain, \
            hps.HPS(config(tables, True, **small), show_progress=False) as ps:
        fused = ps._models["m"].fused
        assert fused.passes[(1, 0)].takes_torch
        keys = queries(np.random.default_rng(5), shape=(8, 2))
        calls = _count_passes(monkeypatch)
        as_numpy = ps.lookup_many(keys, "m", range(5))
        assert calls[id(fused.passes[(1, 0)])] == 1 and calls[id(fused.passes[(0, 0)])] == 1
        as_torch = ps.lookup_many([torch.from_numpy(k).to(device) for k in keys], "m", range(5))
        for t in range(5):
            want = plain.lookup(keys[t], "m", t)
            np.testing.assert_array_equal(want, expected(tables, t, keys[t]))
            np.testing.assert_array_equal(as_numpy[t], want)
            assert as_torch[t].device.type == torch.device(device).type
            np.testing.assert_array_equal(as_torch[t].cpu().numpy(), want)


@pytest.mark.parametrize("cache", ["whole", "lru"])
def test_concurrent_per_table_lookups_share_the_fused_cache_exactly(tables, cache):
    """HugeCTR's layers call one table each from the graph's threads: with fusion they share one cache."""
    from concurrent.futures import ThreadPoolExecutor

    with hps.HPS(config(tables, True, **CACHES[cache]), show_progress=False) as ps:
        def worker(seed: int) -> bool:
            rng = np.random.default_rng(seed)
            for _ in range(20):
                keys = queries(rng)
                t = int(rng.integers(0, len(DIMS)))
                if not np.array_equal(ps.lookup(keys[t], "m", t), expected(tables, t, keys[t])):
                    return False
                if not all(np.array_equal(v, expected(tables, i, keys[i]))
                           for i, v in enumerate(ps.lookup_many(keys, "m", range(len(DIMS))))):
                    return False
            return True

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert all(pool.map(worker, range(8)))


def test_a_key_of_another_table_of_the_same_fused_table_answers_that_row(tables):
    """What fusion means (HugeCTR's too): one row per key in the fused table, so table 0 asked for a key of
    table 1 answers table 1's row; unfused, table 0 answers its default. Tables of other fused tables are
    unaffected."""
    foreign = tables[1][1][:3]
    with hps.HPS(config(tables, False), show_progress=False) as plain, \
            hps.HPS(config(tables, True), show_progress=False) as fused:
        np.testing.assert_array_equal(plain.lookup(foreign, "m", 0), np.full((3, 8), DEFAULTS[0], np.float32))
        np.testing.assert_array_equal(fused.lookup(foreign, "m", 0), tables[1][2][:3])
        np.testing.assert_array_equal(fused.lookup(foreign, "m", 3), np.full((3, 8), DEFAULTS[3], np.float32))


def test_a_prefilled_fused_cache_is_sized_once(tmp_path, monkeypatch):
    """A fused table is as large as its members together: its whole-table cache is sized for the rows
    before the pre-fill instead of growing (and rehashing) chunk by chunk (a 26 × 200k-row model took
    3.6 s to start instead of 0.8)."""
    from hps.storage import hash_map

    files = []
    for t in range(8):
        files.append(str(tmp_path / f"t{t}"))
        write_sparse_model(files[-1], t * 20_000 + np.arange(20_000, dtype=np.int64), np.zeros((20_000, 4), np.float32))
    rehashes = []
    real = hash_map.K.rehash
    monkeypatch.setattr(hash_map.K, "rehash", lambda *args: rehashes.append(1) or real(*args))
    cfg = {"supportlonglong": True, "fuse_embedding_table": True,
           "volatile_db": {"type": "hash_map", "num_partitions": 1},
           "models": [{"model": "m", "sparse_files": files, "embedding_vecsize_per_table": [4] * 8,
                       "maxnum_catfeature_query_per_table_per_sample": [1] * 8, "default_value_for_each_table": [0.0],
                       "deployed_device_list": [0], "gpucacheper": 1.0, "cache_refresh_percentage_per_iteration": 1.0}]}
    with hps.HPS(cfg, show_progress=False) as ps:
        assert ps.lookup(np.array([7 * 20_000 + 5]), "m", 7).shape == (1, 4)
    assert len(rehashes) <= 2  # the volatile tier's table and the cache's, each sized once
