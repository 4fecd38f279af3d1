"""Property tests of the HCTR decoder: whatever bytes arrive on a topic, `decode_message` returns a
consistent batch or raises `UpdateError` — never another exception (which would stop or stall a
consumer) and never a batch that disagrees with the header."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hps.errors import UpdateError
from hps.update.message import HEADER_BYTES, MAGIC_BYTES, decode_message, encode_messages, parse_header

KEY_DTYPES = st.sampled_from(["int64", "uint32"])
#: Any uint32, with the edges drawn often: 0, odd, the largest floats-per-vector numpy can hold, 2^31, 2^32 - 4.
VALUE_SIZES = st.one_of(st.integers(0, 2**32 - 1),
                        st.sampled_from([0, 1, 3, 4, 2**31 - 4100, 2**31 - 4096, 2**31 - 4092, 2**31 - 4,
                                         2**31, 2**32 - 8, 2**32 - 4, 2**32 - 1]))
BODIES = st.one_of(st.just(b""), st.binary(max_size=128))
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(payload: bytes, key_dtype: str) -> None:
    """`decode_message(payload)` is a consistent batch or an `UpdateError`."""
    try:
        keys, vectors = decode_message(payload, key_dtype=key_dtype, where="topic t partition 0 offset 1")
    except UpdateError as exc:
        assert "topic t partition 0 offset 1" in str(exc)
        return
    value_size = struct.unpack_from("<I", payload, 4)[0]
    key_bytes = 8 if key_dtype == "int64" else 4
    n = (len(payload) - HEADER_BYTES) // (key_bytes + value_size)
    assert payload[:4] == MAGIC_BYTES
    assert keys.dtype == np.int64 and keys.shape == (n,)
    assert vectors.dtype == np.float32 and vectors.shape == (n, value_size // 4)
    assert parse_header(payload, key_dtype=key_dtype) == (value_size, n)


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[bytes, str]:
    key_dtype = draw(KEY_DTYPES)
    n = draw(st.integers(0, 6))
    dim = draw(st.integers(1, 5))
    high = 2**32 - 1 if key_dtype == "uint32" else 2**63 - 1
    low = 0 if key_dtype == "uint32" else -(2**63)
    keys = np.array(draw(st.lists(st.integers(low, high), min_size=n, max_size=n)), dtype=np.int64)
    vectors = np.array(draw(st.lists(st.floats(width=32, allow_nan=False), min_size=n * dim, max_size=n * dim)),
                       dtype=np.float32).reshape(n, dim)
    if n == 0:  # a beacon: header only
        return MAGIC_BYTES + struct.pack("<I", 4 * dim), key_dtype
    return encode_messages(keys, vectors, key_dtype=key_dtype)[0], key_dtype


@SETTINGS
@given(st.binary(max_size=256), KEY_DTYPES)
def test_random_bytes(payload: bytes, key_dtype: str) -> None:
    _check(payload, key_dtype)


@SETTINGS
@given(BODIES, VALUE_SIZES, KEY_DTYPES)
@example(b"", 2**32 - 4, "int64")       # a "beacon" with a huge value_size: numpy refused its dtype (ValueError)
def test_hctr_header_with_any_value_size_and_body(body: bytes, value_size: int, key_dtype: str) -> None:
    """Right magic, any value_size (0, odd, huge like 0xFFFFFFFC), any body (zero keys included)."""
    _check(MAGIC_BYTES + struct.pack("<I", value_size) + body, key_dtype)


@SETTINGS
@given(valid_messages(), st.data())
def test_valid_messages_round_trip_and_mutations_are_caught(message: tuple[bytes, str], data: st.DataObject) -> None:
    payload, key_dtype = message
    keys, vectors = decode_message(payload, key_dtype=key_dtype)
    assert encode_messages(keys, vectors, key_dtype=key_dtype) == ([payload] if len(keys) else [])
    cut = data.draw(st.integers(0, len(payload)), label="truncate at")
    _check(payload[:cut], key_dtype)                                     # truncated anywhere
    magic = data.draw(st.binary(min_size=4, max_size=4), label="magic")
    _check(magic + payload[4:], key_dtype)                               # wrong (or right) magic
    size = data.draw(VALUE_SIZES, label="value_size")
    _check(payload[:4] + struct.pack("<I", size) + payload[8:], key_dtype)  # wrong sizes, huge ones
    extra = data.draw(st.binary(max_size=16), label="trailing bytes")
    _check(payload + extra, key_dtype)
    other = "uint32" if key_dtype == "int64" else "int64"
    _check(payload, other)                                               # read with the other key width
