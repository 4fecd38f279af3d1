"""HugeCTR's key → partition mixer `rrxmrrxmsx_0` (reference §2.10), shared by the hash map,
Redis Cluster layout and Kafka key groups. Bit-exact with HugeCTR 4.2+."""

from __future__ import annotations

import numba
import numpy as np

_M1 = np.uint64(0xA24BAED4963EE407)
_M2 = np.uint64(0x9FB21C651E98DF25)


@numba.njit(inline="always")
def _rotr(x, n):
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@numba.njit(inline="always")
def rrxmrrxmsx_0_scalar(x: np.uint64) -> np.uint64:
    """Mix one uint64 key (numba-callable)."""
    x = x ^ _rotr(x, 25) ^ _rotr(x, 50)
    x = x * _M1
    x = x ^ _rotr(x, 24) ^ _rotr(x, 49)
    x = x * _M2
    return x ^ (x >> np.uint64(28))


@numba.njit(cache=True)
def _partitions(keys: np.ndarray, num_partitions: int) -> np.ndarray:
    out = np.empty(keys.shape[0], dtype=np.int64)
    n = np.uint64(num_partitions)
    for i in range(keys.shape[0]):
        out[i] = np.int64(rrxmrrxmsx_0_scalar(np.uint64(keys[i])) % n)
    return out


def rrxmrrxmsx_0(keys: np.ndarray) -> np.ndarray:
    """Mix `keys: (n,) int64|uint64` → `(n,) uint64` (vectorized numpy; no JIT needed)."""
    x = np.asarray(keys).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= ((x >> np.uint64(25)) | (x << np.uint64(39))) ^ ((x >> np.uint64(50)) | (x << np.uint64(14)))
        x *= _M1
        x ^= ((x >> np.uint64(24)) | (x << np.uint64(40))) ^ ((x >> np.uint64(49)) | (x << np.uint64(15)))
        x *= _M2
        x ^= x >> np.uint64(28)
    return x


def partition_of(keys: np.ndarray, num_partitions: int) -> np.ndarray:
    """`rrxmrrxmsx_0(key) % num_partitions` for `keys: (n,) int64` → `(n,) int64` partition ids."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    return _partitions(keys, int(num_partitions))
