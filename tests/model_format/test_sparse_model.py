"""The sparse model reader and writers: round trips, byte identity with the seed notebook,
and every malformed directory."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from hps.errors import HpsError, ModelFormatError
from hps.model_format import SparseModel, write_from_numpy_table, write_sparse_model


def seed_convert_to_sparse_model(embeddings_weights, embedding_table_path, embedding_vec_size):
    """The seed notebook's `convert_to_sparse_model` (seed/000_ab3b9a3cb1ffad31.txt), with
    `os.system("mkdir -p ...")` replaced by `os.makedirs`: one struct.pack per key and row."""
    os.makedirs(embedding_table_path, exist_ok=True)
    with open(f"{embedding_table_path}/key", "wb") as key_file, open(
        f"{embedding_table_path}/emb_vector", "wb"
    ) as vec_file:
        for key in range(embeddings_weights.shape[0]):
            vec = embeddings_weights[key]
            key_file.write(struct.pack("q", key))
            vec_file.write(struct.pack(str(embedding_vec_size) + "f", *vec))


def _table(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def _write_raw(path: Path, keys: bytes, vectors: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "key").write_bytes(keys)
    (path / "emb_vector").write_bytes(vectors)
    return path


def test_round_trip(tmp_path):
    keys = np.array([7, -3, 2**62, 0, 41], dtype=np.int64)
    vectors = _table(5, 3)
    model = write_sparse_model(tmp_path / "t", keys, vectors)
    assert isinstance(model, SparseModel)
    assert (model.num_rows, model.dim, len(model)) == (5, 3, 5)
    assert model.path == tmp_path / "t"
    assert model.keys.dtype == np.int64 and model.keys.shape == (5,)
    assert model.vectors.dtype == np.float32 and model.vectors.shape == (5, 3)
    np.testing.assert_array_equal(model.keys, keys)
    np.testing.assert_array_equal(model.vectors, vectors)
    assert not model.keys.flags.writeable and not model.vectors.flags.writeable
    reopened = SparseModel(str(tmp_path / "t"), 3)
    np.testing.assert_array_equal(reopened.vectors, vectors)
    model.check_unique_keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temp dirs left behind


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_byte_identical_with_the_seed_converter(tmp_path, dtype):
    table = (_table(37, 16, seed=1) * 1.1).astype(dtype)
    seed_convert_to_sparse_model(table, str(tmp_path / "seed"), 16)
    write_from_numpy_table(tmp_path / "ours", table, chunk_rows=5)
    for name in ("key", "emb_vector"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "seed" / name).read_bytes()


def test_write_casts_keys_and_vectors(tmp_path):
    model = write_sparse_model(tmp_path / "t", np.array([3, 1, 2], dtype=np.int32), np.arange(6).reshape(3, 2))
    assert model.keys.tolist() == [3, 1, 2]
    np.testing.assert_array_equal(model.vectors, np.arange(6, dtype=np.float32).reshape(3, 2))


def test_streamed_chunks_equal_the_whole(tmp_path):
    table = _table(103, 4, seed=2)
    keys = np.random.default_rng(3).permutation(1000)[:103].astype(np.int64)
    model = write_sparse_model(tmp_path / "t", keys, table, chunk_rows=10)
    chunks = list(model.iter_chunks(chunk_rows=8))
    assert [c[0].shape[0] for c in chunks] == [8] * 12 + [7]
    for chunk_keys, chunk_vectors in chunks:
        assert chunk_keys.dtype == np.int64 and chunk_vectors.dtype == np.float32
        assert chunk_vectors.shape[1] == 4 and chunk_vectors.flags.writeable
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), keys)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), table)
    (whole_keys, whole_vectors), = list(model.iter_chunks())
    np.testing.assert_array_equal(whole_vectors, table)
    with pytest.raises(ModelFormatError, match="chunk_rows"):
        next(model.iter_chunks(0))


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(ModelFormatError, match=f"{tmp_path / 'nope'}.*does not exist"):
        SparseModel(tmp_path / "nope", 4)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="not a directory"):
        SparseModel(tmp_path / "file", 4)
    (tmp_path / "only_key").mkdir()
    (tmp_path / "only_key" / "key").write_bytes(bytes(8))
    with pytest.raises(ModelFormatError, match=r"only_key/emb_vector is missing.*\['key'\]"):
        SparseModel(tmp_path / "only_key", 4)
    (tmp_path / "only_vec").mkdir()
    (tmp_path / "only_vec" / "emb_vector").write_bytes(bytes(16))
    with pytest.raises(ModelFormatError, match="only_vec/key is missing"):
        SparseModel(tmp_path / "only_vec", 4)


def test_bad_dim(tmp_path):
    path = _write_raw(tmp_path / "t", bytes(8), bytes(16))
    for dim in (0, -1, 2.0, True):
        with pytest.raises(ModelFormatError, match="dim must be a positive integer"):
            SparseModel(path, dim)


def test_empty_key_file(tmp_path):
    path = _write_raw(tmp_path / "t", b"", b"")
    with pytest.raises(ModelFormatError, match=f"{path}/key is empty"):
        SparseModel(path, 4)


def test_key_size_not_a_multiple_of_8(tmp_path):
    path = _write_raw(tmp_path / "t", bytes(8 * 3 + 5), bytes(4 * 4 * 3))
    with pytest.raises(ModelFormatError, match=f"{path}/key holds 29 bytes, not a multiple of 8.*3 whole keys and 5 stray"):
        SparseModel(path, 4)


def test_vector_size_not_a_multiple_of_the_row(tmp_path):
    path = _write_raw(tmp_path / "t", bytes(8 * 10), bytes(4 * 10 * 5))  # really dim 5
    with pytest.raises(ModelFormatError) as info:
        SparseModel(path, 4)
    message = str(info.value)
    assert f"{path}/emb_vector holds 200 bytes, not a multiple of 4 x dim 4 = 16" in message
    assert "10 keys" in message and "dim 5" in message and "embedding_vecsize_per_table" in message


def test_key_and_vector_counts_disagree(tmp_path):
    path = _write_raw(tmp_path / "t", bytes(8 * 30000), bytes(480000))
    with pytest.raises(ModelFormatError) as info:
        SparseModel(path, 16)
    message = str(info.value)
    assert (
        f"{path}/emb_vector holds 480000 bytes = 7500 rows of dim 16, but {path}/key holds 30000 keys"
        in message
    )
    assert "dim 4" in message and "is embedding_vecsize_per_table right?" in message
    assert SparseModel(path, 4).num_rows == 30000


def test_slot_id_size_is_checked_and_meta_ignored(tmp_path):
    path = _write_raw(tmp_path / "t", np.arange(4, dtype="<i8").tobytes(), bytes(4 * 2 * 4))
    (path / "meta").write_bytes(b"anything")
    (path / "slot_id").write_bytes(bytes(8 * 4))
    assert SparseModel(path, 2).num_rows == 4
    (path / "slot_id").write_bytes(bytes(8 * 3))
    with pytest.raises(ModelFormatError, match=f"{path}/slot_id holds 24 bytes = 3 slot ids, but {path}/key holds 4 keys"):
        SparseModel(path, 2)


def test_duplicate_keys_in_a_file(tmp_path):
    keys = np.array([5, 9, 5, 1, 9, 5, 2], dtype="<i8")
    path = _write_raw(tmp_path / "t", keys.tobytes(), bytes(4 * 7))
    model = SparseModel(path, 1)  # the constructor does not read the data
    with pytest.raises(ModelFormatError) as info:
        model.check_unique_keys()
    message = str(info.value)
    assert f"{path}/key holds 7 keys of which 2 appear more than once (3 duplicate rows)" in message
    assert "e.g. key 5 at rows 0, 2, 5" in message


def test_writer_rejects_bad_input_without_leaving_files(tmp_path):
    target = tmp_path / "t"
    cases = [
        (np.array([1, 2, 1]), np.zeros((3, 2)), "2 of the 3 keys|1 of the 3 keys"),
        (np.array([1, 2]), np.zeros((3, 2)), "2 keys but 3 vector rows"),
        (np.zeros((2, 1), dtype=np.int64), np.zeros((2, 2)), "keys must be 1-D"),
        (np.array([1.0, 2.0]), np.zeros((2, 2)), "keys must be integers"),
        (np.array([1, 2]), np.zeros(2), "vectors must be 2-D"),
        (np.array([1, 2]), np.array([["a", "b"], ["c", "d"]]), "vectors must be real"),
        (np.array([], dtype=np.int64), np.zeros((0, 2)), "no rows"),
        (np.array([2**64 - 1], dtype=np.uint64), np.zeros((1, 2)), "does not fit"),
    ]
    for keys, vectors, message in cases:
        with pytest.raises(ModelFormatError, match=message):
            write_sparse_model(target, keys, vectors)
    assert list(tmp_path.iterdir()) == []


def test_duplicate_report_counts_each_key_once(tmp_path):
    with pytest.raises(ModelFormatError, match="1 of the 4 keys appear more than once \\(2 duplicate rows\\), e.g. key 7"):
        write_sparse_model(tmp_path / "t", np.array([7, 7, 3, 7]), np.zeros((4, 1)))


def test_existing_directory_needs_overwrite(tmp_path):
    write_from_numpy_table(tmp_path / "t", np.ones((3, 2)))
    with pytest.raises(ModelFormatError, match="already exists; pass overwrite=True"):
        write_from_numpy_table(tmp_path / "t", np.zeros((4, 2)))
    assert SparseModel(tmp_path / "t", 2).num_rows == 3
    model = write_from_numpy_table(tmp_path / "t", np.zeros((4, 2)), overwrite=True)
    assert model.num_rows == 4 and not model.vectors.any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_writer_creates_parents_and_streams_memmaps(tmp_path):
    source = write_from_numpy_table(tmp_path / "src", _table(50, 3))
    copy = write_sparse_model(tmp_path / "a" / "b" / "copy", source.keys, source.vectors, chunk_rows=7)
    assert (copy.path / "key").read_bytes() == (source.path / "key").read_bytes()
    assert (copy.path / "emb_vector").read_bytes() == (source.path / "emb_vector").read_bytes()


def test_errors_are_hps_errors():
    assert issubclass(ModelFormatError, HpsError)


_KILLED_WRITER = """
import os, sys, time
import numpy as np
from hps.model_format import writer

def hang(fd):
    print("writing", flush=True)
    time.sleep(600)

writer.os.fsync = hang  # stop inside the write, after the temporary directory was made
writer.write_sparse_model(sys.argv[1], np.arange(100), np.ones((100, 4)))
"""


def test_a_killed_writer_leaves_no_temp_dir_after_the_next_write(tmp_path):
    import signal
    import subprocess
    import sys

    target = tmp_path / "t0"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".t0.tmp-"), left
    other = tmp_path / ".t1.tmp-host-1-abcdefgh"
    other.mkdir()  # another target's: not ours to remove
    write_sparse_model(target, np.arange(3), np.ones((3, 2)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["t0", other.name])
    # a writer that is still running (here: our parent process) keeps its directory
    live = tmp_path / left[0].replace(f"-{proc.pid}-", f"-{os.getppid()}-")
    live.mkdir()
    write_sparse_model(target, np.arange(3), np.ones((3, 2)), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["t0", live.name, other.name])
