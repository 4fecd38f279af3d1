"""Property test of the sparse model reader: whatever bytes the `key`, `emb_vector` and `slot_id`
files hold, `SparseModel` opens a consistent table or raises `ModelFormatError` naming the path;
never another exception."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hps.errors import ModelFormatError
from hps.model_format import SparseModel

_file = st.one_of(st.none(), st.binary(max_size=200),
                  st.integers(0, 40).map(lambda n: np.arange(n, dtype="<i8").tobytes()))


@st.composite
def _table_files(draw) -> tuple[bytes | None, bytes | None, bytes | None, int]:
    """Unrelated random files, or a consistent table (rows, dim) whose files are then maybe cut,
    padded or swapped: (key, emb_vector, slot_id, dim)."""
    if draw(st.booleans()):
        return draw(_file), draw(_file), draw(_file), draw(st.integers(-2, 9))
    rows, dim = draw(st.integers(1, 30)), draw(st.integers(1, 6))
    keys = draw(st.one_of(st.just(np.arange(rows, dtype="<i8")),
                          st.lists(st.integers(-2**63, 2**63 - 1), min_size=rows, max_size=rows)
                          .map(lambda ks: np.array(ks, dtype="<i8"))))
    key = keys.tobytes()
    emb_vector = draw(st.binary(min_size=4 * rows * dim, max_size=4 * rows * dim))  # any float bits, NaN too
    slot_id = draw(st.sampled_from([None, key]))
    edit = draw(st.sampled_from(["none", "cut_key", "pad_vector", "cut_vector", "dim", "swap"]))
    if edit == "cut_key":
        key = key[:draw(st.integers(0, len(key) - 1))]
    elif edit == "pad_vector":
        emb_vector += draw(st.binary(min_size=1, max_size=40))
    elif edit == "cut_vector":
        emb_vector = emb_vector[:draw(st.integers(0, len(emb_vector) - 1))]
    elif edit == "dim":
        dim = draw(st.integers(-1, 12).filter(lambda d: d != dim))
    elif edit == "swap":
        key, emb_vector = emb_vector, key
    return key, emb_vector, slot_id, dim


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=_table_files(), key_is_dir=st.booleans(), chunk_rows=st.integers(1, 7))
def test_any_bytes_open_validly_or_raise_model_format_error(files, key_is_dir, chunk_rows):
    key, emb_vector, slot_id, dim = files
    root = Path(tempfile.mkdtemp(prefix="hps-prop-"))
    table = root / "t"
    try:
        table.mkdir()
        for name, content in (("key", key), ("emb_vector", emb_vector), ("slot_id", slot_id)):
            if content is not None:
                (table / name).write_bytes(content)
        if key_is_dir and key is None:
            (table / "key").mkdir()
        try:
            model = SparseModel(table, dim)
        except ModelFormatError as exc:
            assert str(table) in str(exc), str(exc)
            return
        event("opened")  # it opened: the sizes must describe one consistent table
        assert dim >= 1 and key is not None and emb_vector is not None
        assert model.num_rows >= 1 and len(key) == 8 * model.num_rows
        assert len(emb_vector) == 4 * dim * model.num_rows
        assert model.keys.shape == (model.num_rows,) and model.vectors.shape == (model.num_rows, dim)
        chunks = list(model.iter_chunks(chunk_rows))
        np.testing.assert_array_equal(np.concatenate([k for k, _ in chunks]), np.frombuffer(key, "<i8"))
        np.testing.assert_array_equal(np.concatenate([v for _, v in chunks]).reshape(-1),
                                      np.frombuffer(emb_vector, "<f4"))
        try:
            model.check_unique_keys()
        except ModelFormatError as exc:
            assert str(table / "key") in str(exc)
            assert len(np.unique(np.frombuffer(key, "<i8"))) < model.num_rows
        fingerprint = model.fingerprint()
        assert fingerprint["files"]["key"]["size"] == len(key)
        del model, chunks
    finally:
        shutil.rmtree(root, ignore_errors=True)
