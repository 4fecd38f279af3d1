"""Disk faults name their cause: a full disk under RocksDB, a read-only mount (tmpfs mounts; root only).

A small tmpfs stands in for the disk: `mount -t tmpfs -o size=2m`, remounted read-only where needed.
Where mounting is not permitted (not root, a container without CAP_SYS_ADMIN) the tests are skipped.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import numpy as np
import pytest

import hps
from hps.config.schema import RocksDBConfig
from hps.errors import BackendError, HpsError
from hps.model_format import write_sparse_model
from hps.storage.rocksdb import RocksDBBackend

TAG = "hps_et.m.t0"
DIM = 16


def _mount(path, *options: str) -> None:
    result = subprocess.run(["mount", *options, str(path)], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}): "
                    f"the disk-fault tests need root with mount permission")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    _mount(mnt, "-t", "tmpfs", "-o", "size=2m", "tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _backend(path, **kwargs) -> RocksDBBackend:
    return RocksDBBackend(RocksDBConfig(path=str(path), num_threads=2, **kwargs))


def test_write_on_a_full_disk_names_the_cause(small_disk):
    b = _backend(small_disk / "db", max_batch_size=20_000)
    b.create_table(TAG, DIM)
    keys = np.arange(50_000, dtype=np.int64)
    with pytest.raises(BackendError) as info:
        b.insert_or_assign(TAG, keys, np.ones((50_000, DIM), np.float32))
    message = str(info.value)
    assert str(small_disk / "db") in message and TAG in message
    assert "No space left on device" in message and "20000 records" in message
    with pytest.raises(BackendError, match="No space left on device"):
        b.bulk_load(TAG, keys, np.ones((50_000, DIM), np.float32))
    b.close()  # the write failed first: closing does not raise a second, unrelated error


def test_model_load_onto_a_full_disk_reports_the_load_error(tmp_path, small_disk):
    rows = 60_000
    keys = np.arange(rows, dtype=np.int64)
    vectors = np.random.default_rng(0).standard_normal((rows, DIM)).astype(np.float32)  # incompressible
    write_sparse_model(tmp_path / "t0", keys, vectors)
    cfg = {"supportlonglong": True,
           "models": [{"model": "m", "sparse_files": [str(tmp_path / "t0")], "embedding_table_names": ["t0"],
                       "embedding_vecsize_per_table": [DIM], "maxnum_catfeature_query_per_table_per_sample": [1],
                       "default_value_for_each_table": [0.0], "deployed_device_list": [0]}],
           "persistent_db": {"type": "rocks_db", "path": str(small_disk / "db"), "num_threads": 2}}
    with pytest.raises(HpsError) as info:
        hps.HPS(cfg, show_progress=False)
    message = str(info.value)
    assert "No space left on device" in message and str(small_disk / "db") in message, message
    assert "previous error" not in message and "already consumed" not in message


def test_read_only_database_on_a_read_only_mount(small_disk):
    b = _backend(small_disk / "db")
    b.create_table(TAG, 4)
    keys = np.arange(100, dtype=np.int64)
    vectors = np.arange(400, dtype=np.float32).reshape(100, 4)
    b.insert_or_assign(TAG, keys, vectors)
    b.close()
    before = sorted(os.listdir(small_disk / "db"))
    _mount(small_disk, "-o", "remount,ro")
    ro = _backend(small_disk / "db", read_only=True)
    try:
        got, found = ro.find(TAG, keys)  # dim recorded: no create_table needed
        assert found.all()
        np.testing.assert_array_equal(got, vectors)
        assert ro.tables() == [TAG]
    finally:
        ro.close()
    assert sorted(os.listdir(small_disk / "db")) == before
    with pytest.raises(BackendError, match="cannot create the directory|Read-only file system"):
        _backend(small_disk / "other")  # a writable database cannot be made there: the error says why
