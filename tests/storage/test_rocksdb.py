"""RocksDBBackend: the backend contract, persistence, read-only access, bulk load, bad values."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hps.config.schema import RocksDBConfig
from hps.errors import BackendError, ClosedError, HpsError
from hps.storage.rocksdb import RocksDBBackend
from tests.storage.backend_contract import BackendContract, _rows

TAG = "hps_et.rdb.t0"


def _backend(path, **kwargs) -> RocksDBBackend:
    return RocksDBBackend(RocksDBConfig(path=str(path), num_threads=2, **kwargs))


class TestRocksDBContract(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path):
        b = _backend(tmp_path / "db", max_batch_size=4096)
        yield b
        b.close()


def test_reopen_in_same_process_keeps_data(tmp_path):
    b = _backend(tmp_path / "db")
    b.create_table(TAG, 6)
    keys = np.array([3, -3, 2**63 - 1, -(2**63)], dtype=np.int64)
    b.insert_or_assign(TAG, keys, _rows(keys, dim=6))
    items = list(b.items(TAG))  # a finished iterator must not keep the DB locked
    assert sum(len(k) for k, _ in items) == 4
    b.close()
    with pytest.raises(ClosedError):
        b.find(TAG, keys)
    b = _backend(tmp_path / "db")
    assert b.tables() == [TAG]
    vectors, found = b.find(TAG, keys)  # dim recorded: no create_table needed
    assert found.all()
    np.testing.assert_array_equal(vectors, _rows(keys, dim=6))
    with pytest.raises(BackendError, match=TAG):
        b.create_table(TAG, 7)
    b.close()


def test_read_only_reads_and_refuses_writes(tmp_path):
    b = _backend(tmp_path / "db")
    b.create_table(TAG, 4)
    keys = np.arange(100, dtype=np.int64)
    b.insert_or_assign(TAG, keys, _rows(keys, dim=4))
    b.close()
    ro = _backend(tmp_path / "db", read_only=True)
    ro.create_table(TAG, 4)
    vectors, found = ro.find(TAG, keys)
    assert found.all() and ro.size(TAG) == 100
    np.testing.assert_array_equal(vectors, _rows(keys, dim=4))
    with pytest.raises(HpsError, match="read_only.*hps_et.rdb.t0"):
        ro.insert_or_assign(TAG, keys[:1], _rows(keys[:1], dim=4))
    with pytest.raises(HpsError, match="read_only"):
        ro.erase(TAG, keys[:1])
    with pytest.raises(HpsError, match="read_only.*create.*hps_et.rdb.other"):
        ro.create_table("hps_et.rdb.other", 4)
    ro.close()
    with pytest.raises(BackendError, match="no database"):
        _backend(tmp_path / "missing", read_only=True)


def test_bulk_load_in_several_chunks(tmp_path):
    b = _backend(tmp_path / "db", max_batch_size=1000)
    b.create_table(TAG, 3)
    rng = np.random.default_rng(5)
    keys = rng.choice(2**63 - 1, size=20_000, replace=False).astype(np.int64) - 2**62
    assert b.is_empty(TAG)
    for chunk in np.array_split(keys, 4):  # disjoint chunks, overlapping byte ranges
        b.bulk_load(TAG, chunk, _rows(chunk, dim=3))
    assert not b.is_empty(TAG) and b.estimated_size(TAG) > 0
    dup = np.array([keys[0], keys[0]], dtype=np.int64)  # reloading a key overrides it; last wins
    b.bulk_load(TAG, dup, np.stack([_rows(dup[:1], dim=3, salt=1)[0], _rows(dup[:1], dim=3, salt=2)[0]]))
    assert b.size(TAG) == keys.shape[0]
    vectors, found = b.find(TAG, keys)
    assert found.all()
    np.testing.assert_array_equal(vectors[1:], _rows(keys[1:], dim=3))
    np.testing.assert_array_equal(vectors[0], _rows(keys[:1], dim=3, salt=2)[0])
    seen = np.concatenate([k for k, _ in b.items(TAG, batch_rows=3000)])
    # items come in RocksDB byte order = order of the byte-swapped keys
    swapped = seen.astype("<i8").view("<u8").byteswap()
    assert (swapped[1:] > swapped[:-1]).all()
    assert np.array_equal(np.sort(seen), np.sort(keys))
    b.close()


def test_values_of_the_wrong_size_raise_naming_the_tag(tmp_path):
    from rocksdict import Options, Rdict

    path = str(tmp_path / "db")
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    db = Rdict(path, opts)
    cf = db.create_column_family(TAG, Options(raw_mode=True))  # a HugeCTR-style DB: no recorded dim
    cf[np.int64(1).astype("<i8").tobytes()] = np.ones(4, "<f4").tobytes()
    cf[np.int64(2).astype("<i8").tobytes()] = np.ones(5, "<f4").tobytes()
    del cf
    db.close()
    b = _backend(path)
    with pytest.raises(BackendError, match=TAG):
        b.create_table(TAG, 5)  # the first value has 16 bytes, not 20
    b.create_table(TAG, 4)
    vectors, found = b.find(TAG, np.array([1, 3], dtype=np.int64))
    assert found.tolist() == [True, False]
    with pytest.raises(BackendError, match=f"{TAG}.*20 bytes, expected 16"):
        b.find(TAG, np.array([1, 2], dtype=np.int64))
    with pytest.raises(BackendError, match=TAG):
        list(b.items(TAG))
    b.close()


def test_load_records_and_the_update_log(tmp_path):
    b = _backend(tmp_path / "db")
    b.create_table(TAG, 2)
    assert b.load_record(TAG) is None
    keys = np.arange(10, dtype=np.int64)
    b.begin_load(TAG, 2, {"files": "v1"}, reset=False)
    assert b.load_record(TAG)["state"] == "loading"
    b.bulk_load(TAG, keys, _rows(keys, dim=2))
    b.insert_or_assign(TAG, keys[:1], _rows(keys[:1], dim=2, salt=1))  # during the load: not an update
    assert b.updated_rows(TAG)[0].size == 0
    b.finish_load(TAG, 10)
    record = b.load_record(TAG)
    assert record["state"] == "complete" and record["source"] == {"files": "v1"} and record["rows"] == 10
    b.insert_or_assign(TAG, np.array([7, 3, 100, 7]), _rows(np.array([7, 3, 100, 7]), dim=2, salt=2))
    b.close()
    b = _backend(tmp_path / "db")  # the log survives a reopen, and writes after it are logged too
    assert b.tables() == [TAG]  # the update log is no table
    assert b.erase(TAG, np.array([4])) == 1
    keys_u, vectors_u, present = b.updated_rows(TAG)
    assert keys_u.tolist() == [3, 4, 7, 100] and present.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(vectors_u[[0, 2, 3]], _rows(np.array([3, 7, 100]), dim=2, salt=2))
    b.begin_load(TAG, 2, {"files": "v2"}, reset=True)  # a new version: rows and log dropped
    assert b.is_empty(TAG) and b.updated_rows(TAG)[0].size == 0
    b.finish_load(TAG, 0)
    b.drop_table(TAG)
    assert b.load_record(TAG) is None and b.tables() == []
    b.close()
    with pytest.raises(BackendError, match="finish_load without begin_load"):
        b = _backend(tmp_path / "db")
        b.create_table(TAG, 2)
        try:
            b.finish_load(TAG, 0)
        finally:
            b.close()


def test_read_only_open_writes_nothing(tmp_path):
    b = _backend(tmp_path / "db")
    b.create_table(TAG, 4)
    b.insert_or_assign(TAG, np.arange(5), _rows(np.arange(5), dim=4))
    b.close()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "db").iterdir()}
    ro = _backend(tmp_path / "db", read_only=True)
    assert ro.find(TAG, np.arange(5))[1].all()
    other = _backend(tmp_path / "db", read_only=True)  # several readers at once: no lock taken
    assert other.size(TAG) == 5
    other.close()
    ro.close()
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "db").iterdir()} == before


def test_read_only_views_of_killed_processes_are_removed(tmp_path):
    import subprocess
    import sys
    import tempfile

    b = _backend(tmp_path / "db")
    b.create_table(TAG, 4)
    b.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tempfile.mkdtemp(prefix=f"hps-rocksdb-ro-{int(dead.stdout)}-")  # as a killed reader leaves it
    ro = _backend(tmp_path / "db", read_only=True)
    view = ro._view_dir
    assert view is not None and os.path.isdir(view) and not os.path.exists(stale)
    ro.close()
    assert not os.path.exists(view)
