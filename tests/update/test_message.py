"""HCTR message format: round trips and every malformed case."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from hps.errors import UpdateError
from hps.update.message import MAGIC, MAGIC_BYTES, decode_message, encode_messages, parse_header


def _data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = rng.integers(-2**62, 2**62, size=n, dtype=np.int64)
    return keys, rng.standard_normal((n, dim)).astype(np.float32)


def test_magic_is_hctr() -> None:
    assert struct.pack("<I", MAGIC) == MAGIC_BYTES == b"HCTR"


@pytest.mark.parametrize("dim", [1, 3, 16, 128])
def test_round_trip_splits_by_size(dim: int) -> None:
    keys, vectors = _data(1000, dim)
    max_bytes = 8 + 37 * (8 + 4 * dim) + 5  # 37 pairs per message, 5 spare bytes
    messages = encode_messages(keys, vectors, max_bytes)
    assert len(messages) == -(-1000 // 37)
    assert all(len(m) <= max_bytes for m in messages)
    assert all(m[:4] == b"HCTR" and struct.unpack_from("<I", m, 4)[0] == 4 * dim for m in messages)
    parts = [decode_message(m) for m in messages]
    got_keys = np.concatenate([k for k, _ in parts])
    got_vectors = np.concatenate([v for _, v in parts])
    assert got_keys.dtype == np.int64 and got_vectors.dtype == np.float32
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(got_vectors, vectors)


def test_wire_layout_is_key_then_vector_little_endian() -> None:
    msg = encode_messages(np.array([7, -1], np.int64), np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))[0]
    expected = b"HCTR" + struct.pack("<I", 8) + struct.pack("<qff", 7, 1.0, 2.0) + struct.pack("<qff", -1, 3.0, 4.0)
    assert msg == expected


def test_uint32_keys() -> None:
    keys = np.array([0, 5, 2**32 - 1], np.int64)
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    msg = encode_messages(keys, vectors, key_dtype="uint32")[0]
    assert len(msg) == 8 + 3 * (4 + 8)
    k, v = decode_message(msg, key_dtype="uint32")
    np.testing.assert_array_equal(k, keys)
    np.testing.assert_array_equal(v, vectors)
    with pytest.raises(UpdateError, match="uint32"):
        encode_messages(np.array([-1]), vectors[:1], key_dtype="uint32")


def test_beacon_and_empty() -> None:
    assert encode_messages(np.empty(0, np.int64), np.empty((0, 4), np.float32)) == []
    k, v = decode_message(b"HCTR" + struct.pack("<I", 16))
    assert k.shape == (0,) and v.shape == (0, 4)


def test_bad_magic() -> None:
    with pytest.raises(UpdateError, match="bad magic at byte 0"):
        decode_message(b"HCTX" + struct.pack("<I", 4) + bytes(12), where="topic t partition 1 offset 2")
    with pytest.raises(UpdateError, match="topic t partition 1 offset 2"):
        decode_message(b"RTCH" + struct.pack("<I", 4), where="topic t partition 1 offset 2")


def test_short_message() -> None:
    with pytest.raises(UpdateError, match="shorter than the 8-byte HCTR header"):
        decode_message(b"HCTR\x04")


@pytest.mark.parametrize("value_size", [0, 6])
def test_bad_value_size(value_size: int) -> None:
    with pytest.raises(UpdateError, match=f"value_size {value_size} at byte 4"):
        decode_message(b"HCTR" + struct.pack("<I", value_size) + bytes(8 + 8))


def test_truncated_pair() -> None:
    msg = encode_messages(*_data(3, 4))[0]
    with pytest.raises(UpdateError, match=r"truncated pair at byte 56: .* 2 whole pairs then 20 stray bytes"):
        decode_message(msg[:-4])
    assert parse_header(msg) == (16, 3)


def test_encode_rejects_bad_input() -> None:
    keys, vectors = _data(4, 4)
    with pytest.raises(UpdateError, match="cannot hold one pair"):
        encode_messages(keys, vectors, max_message_bytes=8 + 8 + 15)
    with pytest.raises(UpdateError, match="keys must be"):
        encode_messages(keys[:3], vectors)
    with pytest.raises(UpdateError, match="integers"):
        encode_messages(keys.astype(np.float64), vectors)
