"""Recycled memory for the large float32 results of host lookups.

A fresh result array costs its first-touch page faults: 1 M keys of dim 128 are a 512 MB result, and
on our 2-vCPU VMs allocating and filling one took 115–230 ms, more than the hash-map find that fills it
(and the faults scale worse over cores than the find: they were the serial part of a 1 M-key lookup
split over the cores, benchmarks/results/cpu-miss-path.md). numpy returns such an array's memory to
the kernel when it is dropped, so the next lookup faults it in again.

`empty_float32(rows, dim)` hands out large results whose memory comes back here when the caller drops
the last array (or view, or tensor) that uses it: the next result of the same size reuses it, its pages
already resident. Arrays below `MIN_BYTES` are plain `np.empty` (the allocator reuses those itself);
at most `POOL_BYTES` of dropped results are kept (the oldest go first). Contents are uninitialised, as
`np.empty`'s: every caller writes every row.
"""

from __future__ import annotations

import threading

import numpy as np

#: Results smaller than this are plain `np.empty` arrays (glibc reuses heap memory up to 32 MiB).
MIN_BYTES = 32 << 20
#: At most this many bytes of dropped results are kept for reuse.
POOL_BYTES = 1 << 30

_lock = threading.RLock()  # re-entrant: a lease collected while this thread holds it gives back safely
_free: list[np.ndarray] = []  # dropped results' buffers, oldest first
_free_bytes = 0


class _Lease:
    """The owner of one handed-out buffer: the result array's `base`. When the last array using it
    is gone, the buffer goes back to the pool."""

    __slots__ = ("_buffer", "__array_interface__")

    def __init__(self, buffer: np.ndarray, shape: tuple[int, int]) -> None:
        self._buffer = buffer
        self.__array_interface__ = {"shape": shape, "typestr": "<f4", "data": (buffer.ctypes.data, False),
                                    "version": 3}

    def __del__(self) -> None:
        try:
            _give_back(self._buffer)
        except Exception:  # noqa: BLE001 - interpreter shutdown: the module may be gone; the memory is freed
            pass


def empty_float32(rows: int, dim: int) -> np.ndarray:
    """An uninitialised C-contiguous writable `(rows, dim) float32` array; from recycled memory when
    it is at least `MIN_BYTES` and a dropped result of the same size is kept."""
    nbytes = rows * dim * 4
    if nbytes < MIN_BYTES:
        return np.empty((rows, dim), dtype=np.float32)
    global _free_bytes
    buffer = None
    with _lock:
        for i in range(len(_free) - 1, -1, -1):
            if _free[i].nbytes == nbytes:
                buffer = _free.pop(i)
                _free_bytes -= nbytes
                break
    if buffer is None:
        buffer = np.empty(nbytes // 4, dtype=np.float32)
    return np.asarray(_Lease(buffer, (rows, dim)))


def pooled_bytes() -> int:
    """Bytes of dropped results kept for reuse now."""
    return _free_bytes


def clear() -> None:
    """Release every kept buffer."""
    global _free_bytes
    with _lock:
        _free.clear()
        _free_bytes = 0


def _give_back(buffer: np.ndarray) -> None:
    global _free_bytes
    if buffer.nbytes > POOL_BYTES:
        return
    with _lock:
        _free.append(buffer)
        _free_bytes += buffer.nbytes
        while _free_bytes > POOL_BYTES:
            _free_bytes -= _free.pop(0).nbytes
