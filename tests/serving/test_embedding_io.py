"""HugeCTR HPS-backend request format: splitting KEYS by NUMKEYS, limits, table-major OUTPUT0."""

import numpy as np
import pytest

from hps.serving.triton.embedding_io import EmbeddingSpec, lookup_request, make_request, num_samples, split_keys
from hps.serving.triton.errors import RequestError

SPEC = EmbeddingSpec("wdl", dims=(4, 2), maxnum_keys_per_sample=(2, 26), max_batch_size=10)


def fake_lookup(keys: np.ndarray, table: int) -> np.ndarray:
    dim = SPEC.dims[table]
    return (keys[:, None] * 10 + np.arange(dim) + 1000 * table).astype(np.float32)


def test_split_keys_table_major():
    keys, numkeys = make_request([np.arange(20), np.arange(100, 360)])
    assert keys.shape == (1, 280) and numkeys.tolist() == [[20, 260]]  # reference §3.6 example
    parts = split_keys(keys, numkeys, SPEC)
    assert [p.tolist() for p in parts] == [list(range(20)), list(range(100, 360))]


def test_lookup_request_concatenates_table_major():
    keys, numkeys = make_request([[1, 2], [7, 8, 9]])
    out = lookup_request(keys, numkeys, SPEC, fake_lookup)
    expected = np.concatenate([fake_lookup(np.array([1, 2]), 0).ravel(), fake_lookup(np.array([7, 8, 9]), 1).ravel()])
    assert out.dtype == np.float32 and out.shape == (2 * 4 + 3 * 2,)
    np.testing.assert_array_equal(out, expected)


def test_empty_table_and_any_input_shape():
    keys = np.array([[5], [6], [7]], dtype=np.int64)  # (3, 1) like a per-sample client layout
    out = lookup_request(keys, np.array([0, 3], np.int32), SPEC, fake_lookup)
    np.testing.assert_array_equal(out, fake_lookup(np.array([5, 6, 7]), 1).ravel())


def test_num_samples_rounds_up():
    assert num_samples(28, SPEC) == 1 and num_samples(29, SPEC) == 2 and num_samples(280, SPEC) == 10


@pytest.mark.parametrize("keys,numkeys,message", [
    (np.arange(5), np.array([2, 2], np.int32), "adds up to 4 keys but KEYS holds 5"),
    (np.arange(4), np.array([4], np.int32), "1 entries but the model has 2 table"),
    (np.arange(4), np.array([5, -1], np.int32), "negative"),
    (np.arange(4.0), np.array([2, 2], np.int32), "KEYS must be INT64"),
    (np.arange(4), np.array([2.0, 2.0]), "NUMKEYS must be INT32"),
    (np.arange(281), np.array([21, 260], np.int32), "11 samples"),
    (np.arange(40), np.array([21, 19], np.int32), "table 0 got 21 keys"),
])
def test_bad_requests_name_the_problem(keys, numkeys, message):
    with pytest.raises(RequestError, match=message):
        split_keys(keys, numkeys, SPEC)


def test_single_table_answers_the_lookup_flat():
    spec = EmbeddingSpec("seed", dims=(16,), maxnum_keys_per_sample=(3,), max_batch_size=1024)
    keys = np.arange(12, dtype=np.int64).reshape(4, 3)  # the seed's EMB_KEY (samples, 3)
    lookup = lambda k, t: (k[:, None] * 100 + np.arange(16)).astype(np.float64)  # noqa: E731 (converted to FP32)
    out = lookup_request(keys, np.array([[12]], np.int32), spec, lookup)
    assert out.dtype == np.float32 and out.shape == (12 * 16,) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, lookup(keys.reshape(-1), 0).ravel())
    empty = lookup_request(np.empty((1, 0), np.int64), np.array([[0]], np.int32), spec, lookup)
    assert empty.dtype == np.float32 and empty.shape == (0,)
