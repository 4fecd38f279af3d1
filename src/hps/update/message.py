"""HugeCTR's "HCTR" Kafka message format: encode and decode, batch first (reference §2.12).

A message is, little-endian::

    uint32 magic = 'H' | 'C'<<8 | 'T'<<16 | 'R'<<24   (the bytes b"HCTR")
    uint32 value_size                                  (bytes per vector: 4 * dim)
    repeated [key (8 bytes int64, or 4 bytes uint32) | value (value_size bytes of float32)]

A header-only message is a *beacon* and carries no update. Messages are decoded with
`np.frombuffer` and a packed structured dtype `(key, value float32[dim])`: no per-pair loop.
"""

from __future__ import annotations

import struct

import numpy as np

from hps.errors import UpdateError

#: The magic number, as the little-endian uint32 HugeCTR writes (bytes b"HCTR").
MAGIC = ord("H") | ord("C") << 8 | ord("T") << 16 | ord("R") << 24
MAGIC_BYTES = b"HCTR"
HEADER_BYTES = 8
#: The largest value_size accepted: a (key, vector) pair must fit numpy's structured dtype (a C int of
#: bytes). Vectors are never near this (dim 128 is 512 bytes); a header claiming more is corrupt.
MAX_VALUE_SIZE = 2**31 - 4096
_HEADER = struct.Struct("<II")

#: Key encodings HugeCTR used: `long long` (supportlonglong, default) or `unsigned int`.
KEY_DTYPES = {"int64": np.dtype("<i8"), "uint32": np.dtype("<u4")}


def key_dtype_of(key_dtype: str) -> np.dtype:
    """The wire dtype of keys: "int64" → `<i8`, "uint32" → `<u4`; `UpdateError` otherwise."""
    try:
        return KEY_DTYPES[key_dtype]
    except KeyError:
        raise UpdateError(f"unknown key dtype {key_dtype!r}; expected one of {sorted(KEY_DTYPES)}") from None


def pair_dtype(dim: int, key_dtype: str = "int64") -> np.dtype:
    """Packed structured dtype of one (key, vector) pair: `key` int64|uint32, `value` float32[dim]."""
    return np.dtype([("key", key_dtype_of(key_dtype)), ("value", "<f4", (int(dim),))])


def parse_header(payload: bytes | memoryview, where: str = "message", key_dtype: str = "int64") -> tuple[int, int]:
    """Validate a message's header and length without copying it.

    Returns `(value_size_bytes, num_pairs)`; `num_pairs == 0` for a beacon. Raises `UpdateError`
    naming `where` (e.g. "topic hps_et.m.t partition 3 offset 17") and the byte position for a
    message shorter than the header, a bad magic, a value_size that is 0, not a multiple of 4 or
    over `MAX_VALUE_SIZE`, or a body that is not a whole number of pairs."""
    size = len(payload)
    if size < HEADER_BYTES:
        raise UpdateError(f"{where}: {size} bytes, shorter than the {HEADER_BYTES}-byte HCTR header "
                          f"(bytes 0..{size}: {bytes(payload[:HEADER_BYTES]).hex()})")
    magic, value_size = _HEADER.unpack_from(payload, 0)
    if magic != MAGIC:
        raise UpdateError(f"{where}: bad magic at byte 0: {bytes(payload[:4])!r} (0x{magic:08x}), "
                          f"expected {MAGIC_BYTES!r} (0x{MAGIC:08x})")
    if value_size == 0 or value_size % 4:
        raise UpdateError(f"{where}: value_size {value_size} at byte 4 is not a positive multiple of 4 "
                          f"(bytes per float32 vector)")
    if value_size > MAX_VALUE_SIZE:
        raise UpdateError(f"{where}: value_size {value_size} at byte 4 is larger than any vector "
                          f"(at most {MAX_VALUE_SIZE} bytes)")
    pair_bytes = key_dtype_of(key_dtype).itemsize + value_size
    body = size - HEADER_BYTES
    if body % pair_bytes:
        whole = body // pair_bytes
        raise UpdateError(f"{where}: truncated pair at byte {HEADER_BYTES + whole * pair_bytes}: message is "
                          f"{size} bytes, not {HEADER_BYTES} + k x {pair_bytes} (key + {value_size}-byte value); "
                          f"{whole} whole pairs then {body % pair_bytes} stray bytes")
    return value_size, body // pair_bytes


def decode_body(body: bytes | memoryview, value_size: int, key_dtype: str = "int64") -> tuple[np.ndarray, np.ndarray]:
    """Decode concatenated pairs (no header) of one `value_size`.

    Returns `(keys: (n,) int64, vectors: (n, value_size // 4) float32)`, both C-contiguous copies."""
    pairs = np.frombuffer(body, dtype=pair_dtype(value_size // 4, key_dtype))
    keys = pairs["key"].astype(np.int64)
    vectors = np.ascontiguousarray(pairs["value"], dtype=np.float32)
    return keys, vectors


def decode_message(payload: bytes | memoryview, key_dtype: str = "int64",
                   where: str = "message") -> tuple[np.ndarray, np.ndarray]:
    """Decode one HCTR message.

    Returns `(keys: (n,) int64, vectors: (n, dim) float32)` with `dim = value_size // 4`; a beacon
    gives `n == 0`. Raises `UpdateError` for a bad magic, a value_size that is 0 or not a multiple
    of 4, or a length that is not `8 + k * (key bytes + value_size)`."""
    value_size, _ = parse_header(payload, where, key_dtype)
    return decode_body(memoryview(payload)[HEADER_BYTES:], value_size, key_dtype)


def encode_messages(keys: np.ndarray, vectors: np.ndarray, max_message_bytes: int = 262144,
                    key_dtype: str = "int64") -> list[bytes]:
    """Encode `keys: (n,) int64` and `vectors: (n, dim) float32` as HCTR messages.

    Each message holds as many whole pairs as fit in `max_message_bytes` (header included), in
    input order. Returns a list of `bytes` (empty for n == 0). Raises `UpdateError` when shapes
    disagree, keys do not fit `key_dtype`, or not even one pair fits in `max_message_bytes`."""
    keys = np.asarray(keys)
    vectors = np.asarray(vectors)
    if keys.ndim != 1 or vectors.ndim != 2 or vectors.shape[0] != keys.shape[0] or vectors.shape[1] < 1:
        raise UpdateError(f"encode_messages: keys must be (n,) and vectors (n, dim >= 1); "
                          f"got keys {keys.shape}, vectors {vectors.shape}")
    if keys.dtype.kind not in "iu":
        raise UpdateError(f"encode_messages: keys must be integers, got {keys.dtype}")
    n, dim = vectors.shape
    kd = key_dtype_of(key_dtype)
    if kd == np.dtype("<u4") and n and (keys.min() < 0 or keys.max() > np.iinfo(np.uint32).max):
        raise UpdateError("encode_messages: keys do not fit uint32 (supportlonglong=false)")
    value_size = 4 * dim
    pair_bytes = kd.itemsize + value_size
    per_message = (int(max_message_bytes) - HEADER_BYTES) // pair_bytes
    if per_message < 1:
        raise UpdateError(f"encode_messages: max_message_bytes {max_message_bytes} cannot hold one pair of "
                          f"{pair_bytes} bytes after the {HEADER_BYTES}-byte header")
    pairs = np.empty(n, dtype=pair_dtype(dim, key_dtype))
    pairs["key"] = keys
    pairs["value"] = vectors
    header = _HEADER.pack(MAGIC, value_size)
    raw = memoryview(pairs.view(np.uint8))
    step = per_message * pair_bytes
    return [header + raw[i:i + step] for i in range(0, n * pair_bytes, step)]
