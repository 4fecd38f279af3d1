"""Whatever a caller passes to `HPS.lookup`, it gets exact vectors or a `KeyInputError` /
`UnknownModelError` naming what is wrong, and the server stays exact afterwards."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hps
from hps.errors import HpsError, KeyInputError, UnknownModelError
from hps.model_format import write_sparse_model

ROWS, DIM = 100, 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("args")
    vectors = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)
    write_sparse_model(root / "t0", np.arange(ROWS, dtype=np.int64), vectors)
    write_sparse_model(root / "t1", np.arange(ROWS, dtype=np.int64), -vectors)
    config = {"supportlonglong": True, "volatile_db": {"type": "hash_map"},
              "models": [{"model": "m", "sparse_files": [str(root / "t0"), str(root / "t1")],
                          "embedding_vecsize_per_table": [DIM, DIM],
                          "maxnum_catfeature_query_per_table_per_sample": [8, 8],
                          "default_value_for_each_table": [0.5, 0.5], "deployed_device_list": [0],
                          "max_batch_size": 16, "hit_rate_threshold": 1.0}]}
    with hps.HPS(config, show_progress=False) as ps:
        yield ps, vectors


def assert_still_exact(ps, vectors):
    keys = np.array([0, 7, 99, 7])
    np.testing.assert_array_equal(ps.lookup(keys, "m", 0), vectors[keys])
    np.testing.assert_array_equal(ps.lookup(keys, "m", 1), -vectors[keys])


@pytest.mark.parametrize("table_id", [True, False, 0.0, 1.0, [0], (0,), "0", None, np.bool_(True)])
def test_table_id_must_be_an_integer(server, table_id):
    ps, vectors = server
    with pytest.raises(UnknownModelError, match="table_id must be an integer"):
        ps.lookup(np.array([1, 2]), "m", table_id)
    assert_still_exact(ps, vectors)


@pytest.mark.parametrize("device_id", [True, 0.0, [0], {"a": 1}])
def test_device_id_must_be_an_integer(server, device_id):
    ps, vectors = server
    with pytest.raises(UnknownModelError, match="device_id must be an integer"):
        ps.lookup(np.array([1, 2]), "m", 0, device_id)


def test_numpy_integer_ids_are_integers(server):
    ps, vectors = server
    np.testing.assert_array_equal(ps.lookup(np.array([3]), "m", np.int64(1), np.int32(0)), -vectors[[3]])


@pytest.mark.parametrize("keys,message", [
    ([[1, 2], [3]], "rectangular array of integers"),                  # ragged
    ([[1, 2], [3, [4]]], "rectangular array of integers"),
    (np.zeros((1,) * 32, dtype=np.int64), "at most 16"),               # rank 32: no room for the vector axis
    (np.array([2**63, 1], dtype=np.uint64), "below 2\\*\\*63"),       # would wrap to key -2**63
    (np.array([2**64 - 1], dtype=np.uint64), "below 2\\*\\*63"),      # would wrap to key -1
])
def test_bad_key_arrays(server, keys, message):
    ps, vectors = server
    with pytest.raises(KeyInputError, match=message):
        ps.lookup(keys, "m", 0)
    assert_still_exact(ps, vectors)


def test_uint64_keys_below_2_63_are_served(server):
    ps, vectors = server
    np.testing.assert_array_equal(ps.lookup(np.array([5, 6], dtype=np.uint64), "m", 0), vectors[[5, 6]])


def test_torch_sparse_meta_and_uint64_keys(server):
    torch = pytest.importorskip("torch")
    ps, vectors = server
    dense = torch.tensor([[1, 2], [3, 4]])
    for keys in (dense.to_sparse(), torch.empty(4, dtype=torch.int64, device="meta")):
        with pytest.raises(KeyInputError, match="dense tensor"):
            ps.lookup(keys, "m", 0)
    if hasattr(torch, "uint64"):
        with pytest.raises(KeyInputError, match="below 2\\*\\*63"):
            ps.lookup(torch.tensor([-1], dtype=torch.int64).view(torch.uint64), "m", 0)
    np.testing.assert_array_equal(ps.lookup(dense, "m", 0).numpy(), vectors[[[1, 2], [3, 4]]])
    assert_still_exact(ps, vectors)


ANY_KEYS = st.one_of(
    hnp.arrays(st.sampled_from([np.int64, np.int32, np.uint32, np.uint64, np.int8, np.float32, np.bool_]),
               hnp.array_shapes(min_dims=0, max_dims=4, max_side=9)),
    st.recursive(st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=3) | st.none(),
                 lambda children: st.lists(children, max_size=5), max_leaves=20),
)
ANY_ID = st.one_of(st.integers(-3, 3), st.booleans(), st.floats(-2, 2), st.none(), st.text(max_size=2),
                   st.lists(st.integers(0, 2), max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=ANY_KEYS, model=st.sampled_from(["m", "x", "", None, 3]), table_id=ANY_ID, device_id=ANY_ID)
def test_any_arguments_give_vectors_or_an_hps_error(server, keys, model, table_id, device_id):
    ps, vectors = server
    try:
        got = ps.lookup(keys, model, table_id, device_id)
    except HpsError:
        pass
    else:  # anything accepted is answered exactly
        flat = np.asarray(keys).reshape(-1).astype(np.int64)
        table = vectors if table_id == 0 else -vectors
        want = np.where(((flat >= 0) & (flat < ROWS))[:, None], table[np.clip(flat, 0, ROWS - 1)], np.float32(0.5))
        np.testing.assert_array_equal(np.asarray(got).reshape(-1, DIM), want)
    assert_still_exact(ps, vectors)
