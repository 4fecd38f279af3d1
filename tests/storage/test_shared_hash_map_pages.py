"""The shared hash map's segments on 2 MiB pages (`hps.storage.shared_hash_map_pages`): a large
segment is mapped with 2 MiB page-table entries in the owner and in a secondary process (what the
in-process map's numpy arrays get from transparent huge pages), 4 KiB ones when turned off, and a
process keeps no mapping of a segment it no longer uses. Read from /proc/self/smaps, independently
of the backend."""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing as mp
import os
import uuid

import numpy as np
import pytest

from hps.config.schema import HashMapConfig
from hps.storage import shared_hash_map_pages as P
from hps.storage.shared_hash_map import SharedHashMapBackend
from tests.storage.test_shared_hash_map import shm_name  # noqa: F401  (fixture)

TAG = "hps_et.shm.pages"
DIM = 16
ROWS = 120_000  # a ~10 MiB segment: four whole 2 MiB ranges at least

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm") or not os.path.exists("/proc/self/smaps"),
                                reason="Linux shared memory and /proc/self/smaps needed")


def _collapse_supported() -> bool:
    """Whether this kernel collapses a /dev/shm file's pages (MADV_COLLAPSE, Linux ≥ 6.1, shmem not denied)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    path = f"/dev/shm/hps_probe_{uuid.uuid4().hex[:8]}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, 4 << 20)
        mapping = P.map_segment(fd, 4 << 20, collapse=True, huge=True)
        return mapping.aligned and mapping.huge_page_bytes() >= 2 << 20
    finally:
        os.close(fd)
        os.unlink(path)


needs_collapse = pytest.mark.skipif(not _collapse_supported(), reason="this kernel does not collapse shmem pages")


def _config(name: str, owner: bool = True) -> HashMapConfig:
    return HashMapConfig(type="multi_process_hash_map", shared_memory_name=name, initialize_after_startup=owner)


def _keys(n: int) -> np.ndarray:
    return ((np.arange(n, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)).view(np.int64)


def _rows(keys: np.ndarray) -> np.ndarray:
    return (keys[:, None] % 9973).astype(np.float32) + np.arange(DIM, dtype=np.float32)


def _smaps(prefix: str) -> dict[str, dict[str, int]]:
    """{path: {field: kB}} of this process's mappings of files starting with `prefix`."""
    out: dict[str, dict[str, int]] = {}
    current = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                current = head[5] if len(head) >= 6 and head[5].startswith(prefix) else None
                if current is not None:
                    out.setdefault(current, {})
            elif current is not None and len(head) >= 2 and head[0].endswith(":") and head[1].isdigit():
                fields = out[current]
                fields[head[0][:-1]] = fields.get(head[0][:-1], 0) + int(head[1])
    return out


def _data_segment(smaps: dict[str, dict[str, int]], base: str) -> dict[str, int]:
    data = {p: f for p, f in smaps.items() if p.rsplit(".", 1)[-1].isdigit() and p.startswith(base + ".")}
    assert len(data) == 1, f"one data segment mapped, got {sorted(data)}"
    return next(iter(data.values()))


def _load(backend: SharedHashMapBackend) -> None:
    backend.create_table(TAG, DIM)
    backend.reserve(TAG, ROWS)
    keys = _keys(ROWS)
    backend.insert_or_assign(TAG, keys, _rows(keys))
    backend.mark_loaded(TAG)


def _secondary(name: str, queue) -> None:
    try:
        b = SharedHashMapBackend(_config(name, owner=False), attach_timeout_s=30)
        b.create_table(TAG, DIM)
        keys = _keys(ROWS)[::7]
        vectors, found = b.find(TAG, keys)
        exact = bool(found.all() and np.array_equal(vectors, _rows(keys)))
        segment = _data_segment(_smaps(b.base_path(TAG)), b.base_path(TAG))
        queue.put((exact, segment.get("ShmemPmdMapped", 0) * 1024, b.memory_bytes(TAG), b.huge_page_bytes(TAG)))
        b.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


@needs_collapse
def test_owner_and_secondary_map_a_large_table_on_2mib_pages(shm_name):
    owner = SharedHashMapBackend(_config(shm_name))
    try:
        _load(owner)
        base = owner.base_path(TAG)
        whole = owner.memory_bytes(TAG) // (2 << 20) * (2 << 20)
        assert whole >= 8 << 20
        mine = _data_segment(_smaps(base), base)
        assert mine.get("ShmemPmdMapped", 0) * 1024 == whole, mine
        assert owner.huge_page_bytes(TAG) == whole
        queue = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(target=_secondary, args=(shm_name, queue), daemon=True)
        proc.start()
        got = queue.get(timeout=120)
        proc.join(30)
        assert not isinstance(got, str), got
        exact, pmd_bytes, nbytes, reported = got
        assert exact
        assert pmd_bytes == nbytes // (2 << 20) * (2 << 20) == reported
    finally:
        owner.close()


def test_huge_pages_off_maps_4kib_entries_and_answers_the_same(shm_name, monkeypatch):
    monkeypatch.setattr(P, "HUGE_PAGES", False)
    b = SharedHashMapBackend(_config(shm_name))
    try:
        _load(b)
        base = b.base_path(TAG)
        assert _data_segment(_smaps(base), base).get("ShmemPmdMapped", 0) == 0
        assert b.huge_page_bytes(TAG) == 0
        keys = _keys(ROWS)
        vectors, found = b.find(TAG, keys)
        assert found.all() and np.array_equal(vectors, _rows(keys))
    finally:
        b.close()


def test_growth_keeps_rows_and_unmaps_the_old_segments(shm_name):
    """Each growth maps a new generation; the old one's mapping goes with its last array (no mappings
    pile up in a long-running process), and every row stays exact."""
    b = SharedHashMapBackend(_config(shm_name))
    try:
        b.create_table(TAG, DIM)
        base = b.base_path(TAG)
        keys = _keys(ROWS)
        for part in np.array_split(np.arange(ROWS), 6):  # several generations, the last ones ≥ 2 MiB
            b.insert_or_assign(TAG, keys[part], _rows(keys[part]))
        data = [p for p in _smaps(base) if p.rsplit(".", 1)[-1].isdigit()]
        assert len(data) == 1, data
        vectors, found = b.find(TAG, keys)
        assert found.all() and np.array_equal(vectors, _rows(keys))
        b.erase(TAG, keys[:1000])
        _, found = b.find(TAG, keys[:2000])
        assert not found[:1000].any() and found[1000:].all()
    finally:
        b.close()
    assert not [p for p in _smaps(base)], "close leaves no mapping"


def test_a_small_segment_maps_plainly():
    """Below 2 MiB nothing is aligned or collapsed (a 4 KiB-page table costs nothing extra)."""
    path = f"/dev/shm/hps_probe_{uuid.uuid4().hex[:8]}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, 64 << 10)
        mapping = P.map_segment(fd, 64 << 10, collapse=True, huge=True)
        assert not mapping.aligned and mapping.huge_page_bytes() == 0
        view = np.frombuffer(mapping.buffer, np.uint8)
        view[:] = 3
        assert os.pread(fd, 4, 100) == b"\x03" * 4
        assert isinstance(mapping.buffer, mmap.mmap)
    finally:
        os.close(fd)
        os.unlink(path)
