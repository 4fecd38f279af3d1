"""`HPS.lookup_many`'s one-pass path for fused tables (`hps.lookup.fusion._one_pass_numpy`): numpy int64
keys of tables that all live in one fused table, the same table ids call after call. It must answer
exactly what per-table `lookup` calls answer, look a `(tables, n)` array up without copying it, do
no per-table work, and hand every other kind of call (other dtypes, torch, bad keys, bool ids) to
the general path, which checks them per table as before."""

from __future__ import annotations

import numpy as np
import pytest

import hps
from hps.errors import KeyInputError
from tests.lookup.test_fusion import BATCH, DIMS, MAXNUM, SPAN, config, expected, tables  # noqa: F401

#: Tables 0 and 1 (dim 8, default 0.0) form fused_embedding1; 2 and 4 (dim 4, default 1.5) fused_embedding0.
PAIR, PAIR_INDEX = [0, 1], 1
QUAD = [2, 4, 4, 2]


def _keys(rng: np.random.Generator, ids: list[int], n: int) -> list[np.ndarray]:
    """Per table id: n keys of its range (present and absent ones) and keys in no table."""
    out = []
    for t in ids:
        own = t * SPAN + rng.integers(0, 130, n)
        out.append(np.where(rng.random(n) < 0.8, own, rng.integers(10**6, 10**7, n)).astype(np.int64))
    return out


@pytest.fixture
def ps(tables):  # noqa: F811
    with hps.HPS(config(tables, True), show_progress=False) as server:
        yield server


def test_repeated_calls_answer_as_per_table_lookups(ps, tables):  # noqa: F811
    rng = np.random.default_rng(1)
    for ids in (PAIR, QUAD):
        for n in (1, 5, BATCH * MAXNUM):
            for _ in range(3):  # the first call takes the general path and keeps the plan; the others not
                keys = _keys(rng, ids, n)
                for given in (keys, np.stack(keys), tuple(keys)):
                    got = ps.lookup_many(given, "m", ids)
                    assert len(got) == len(ids)
                    for t, k, vectors in zip(ids, keys, got):
                        assert type(vectors) is np.ndarray and vectors.shape == (n, DIMS[t])
                        np.testing.assert_array_equal(vectors, expected(tables, t, k))
                        np.testing.assert_array_equal(vectors, ps.lookup(k, "m", t))
    # unequal sizes per table
    keys = [_keys(rng, [t], n)[0] for t, n in zip(QUAD, (1, 7, 3, 96))]
    for _ in range(2):
        for t, k, vectors in zip(QUAD, keys, ps.lookup_many(keys, "m", QUAD)):
            np.testing.assert_array_equal(vectors, expected(tables, t, k))


def test_a_tables_by_keys_array_is_looked_up_without_a_copy(ps, monkeypatch):
    from hps.lookup.pipeline import TableLookup

    seen = []
    original = TableLookup.lookup

    def spy(self, keys, *args, **kwargs):
        seen.append((id(self), keys))
        return original(self, keys, *args, **kwargs)

    keys = np.stack(_keys(np.random.default_rng(2), PAIR, 40))
    ps.lookup_many(keys, "m", PAIR)  # general path: keeps the plan
    monkeypatch.setattr(TableLookup, "lookup", spy)
    vectors = ps.lookup_many(keys, "m", PAIR)
    fused = ps._models["m"].fused
    assert len(seen) == 1 and seen[0][0] == id(fused.passes[(PAIR_INDEX, 0)])
    assert np.shares_memory(seen[0][1], keys), "the (tables, n) keys were copied"
    # equal-sized results are the rows of one (tables, n, dim) array
    assert vectors[0].base is not None and vectors[0].base is vectors[1].base


def test_no_per_table_work_once_the_call_is_known(ps, monkeypatch):
    keys = _keys(np.random.default_rng(3), QUAD, 16)
    want = ps.lookup_many(keys, "m", QUAD)

    def per_table(*args, **kwargs):
        raise AssertionError("per-table work on the one-pass path")

    monkeypatch.setattr(type(ps), "_replica", per_table)
    monkeypatch.setattr(type(ps), "_validate_keys", per_table)
    monkeypatch.setattr(type(ps), "lookup", per_table)
    for a, b in zip(ps.lookup_many(keys, "m", QUAD), want):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ps.lookup_many(np.stack(keys), "m", QUAD), want):
        np.testing.assert_array_equal(a, b)


def test_other_calls_take_the_general_path_and_its_checks(ps, tables):  # noqa: F811
    rng = np.random.default_rng(4)
    keys = _keys(rng, PAIR, 8)
    ps.lookup_many(keys, "m", PAIR)  # the plan of PAIR is kept
    # int32 keys: converted per table, same answers
    for t, k, vectors in zip(PAIR, keys, ps.lookup_many([k.astype(np.int32) for k in keys], "m", PAIR)):
        np.testing.assert_array_equal(vectors, expected(tables, t, k))
    # 2-D keys per table keep their shape
    shaped = [k.reshape(2, 4) for k in keys]
    assert [v.shape for v in ps.lookup_many(shaped, "m", PAIR)] == [(2, 4, 8), (2, 4, 8)]
    # errors name the table, as before
    with pytest.raises(KeyInputError, match=rf"table 1 \(table1\): {BATCH * MAXNUM + 1} keys exceed"):
        ps.lookup_many([keys[0], np.zeros(BATCH * MAXNUM + 1, np.int64)], "m", PAIR)
    with pytest.raises(KeyInputError, match=r"table 0 \(table0\): keys must be int64 or int32"):
        ps.lookup_many([keys[0].astype(np.float64), keys[1]], "m", PAIR)
    with pytest.raises(KeyInputError, match="2 key arrays for 3 table ids"):
        ps.lookup_many(keys, "m", PAIR + [0])
    # True == 1 and False == 0: bool table ids are refused, not served by the plan of [0, 1]
    with pytest.raises(Exception, match="table_id"):
        ps.lookup_many(keys, "m", [False, True])
    # empty keys
    empty = ps.lookup_many([np.zeros(0, np.int64), keys[1]], "m", PAIR)
    assert empty[0].shape == (0, 8)
    np.testing.assert_array_equal(empty[1], expected(tables, 1, keys[1]))
    # a list of keys of tables in two fused tables: two passes, same answers
    mixed_ids = [0, 2, 1, 4]
    mixed = _keys(rng, mixed_ids, 6)
    for t, k, vectors in zip(mixed_ids, mixed, ps.lookup_many(mixed, "m", mixed_ids)):
        np.testing.assert_array_equal(vectors, expected(tables, t, k))
