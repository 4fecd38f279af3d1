"""RESP2/RESP3 wire format for the Redis Cluster tier, batch-first (no Python object per key).

- Requests: `resp_head` writes a command's array header and its leading arguments; a batch of
  hash fields is a fixed-width numpy record per key (`field_records`: `$8\r\n<LE key>\r\n`;
  `pair_records`: field + value for HSET), sent as one memoryview (`flat`).
- Replies: `consume_hmget` (numba) parses HMGET replies straight from the socket bytes into the
  output rows; `read_hmget` drives it from a connection's socket. Other replies go through
  redis-py's parser.

This module knows nothing about slots, nodes or tables (see `redis_topology` and
`redis_cluster`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

_CRLF = np.frombuffer(b"\r\n", np.uint8)
#: Hash-field dtype per key width: HugeCTR's `long long` keys, or `unsigned int` (i64_input_key false).
KEY_DTYPES = {8: "<i8", 4: "<u4"}


def resp_head(args: list[bytes], more: int) -> bytes:
    """RESP array header for `len(args) + more` arguments, followed by `args` as bulk strings."""
    out = [b"*%d\r\n" % (len(args) + more)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def field_records(keys: np.ndarray, key_bytes: int = 8) -> np.ndarray:
    """`keys: (n,) int64` → `(n, key_bytes + 6) uint8` RESP bulk strings `$8\\r\\n<LE key>\\r\\n`
    (`key_bytes` 8: int64 keys; 4: uint32 keys, HugeCTR's 32-bit key mode)."""
    n = keys.shape[0]
    rec = np.empty((n, key_bytes + 6), np.uint8)
    rec[:, :4] = np.frombuffer(b"$%d\r\n" % key_bytes, np.uint8)
    raw = np.ascontiguousarray(keys).astype(KEY_DTYPES[key_bytes], copy=False)
    rec[:, 4:4 + key_bytes] = raw.view(np.uint8).reshape(n, key_bytes)
    rec[:, 4 + key_bytes:] = _CRLF
    return rec


def pair_records(keys: np.ndarray, values: np.ndarray, key_bytes: int = 8) -> np.ndarray:
    """`keys: (n,) int64`, `values: (n, b) uint8` → `(n, w) uint8` RESP field/value pairs."""
    n, b = values.shape
    head = np.frombuffer(b"$%d\r\n" % b, np.uint8)
    f = key_bytes + 6
    w = f + head.size + b + 2
    rec = np.empty((n, w), np.uint8)
    rec[:, :f] = field_records(keys, key_bytes)
    rec[:, f:f + head.size] = head
    rec[:, f + head.size:w - 2] = values
    rec[:, w - 2:] = _CRLF
    return rec


def flat(rec: np.ndarray, a: int, b: int) -> memoryview:
    return memoryview(rec[a:b].reshape(-1))


# -- HMGET replies parsed straight from the socket bytes into the output rows --------------------

@numba.njit(cache=True, inline="always")
def _line_end(buf, pos, length):
    """Index of the CR of the first CRLF at or after `pos`, or -1 when not all there yet."""
    for i in range(pos, length - 1):
        if buf[i] == 13 and buf[i + 1] == 10:
            return i
    return -1


@numba.njit(cache=True, inline="always")
def _int_at(buf, a, b):
    neg = buf[a] == 45
    v = 0
    for i in range(a + 1 if neg else a, b):
        v = v * 10 + (buf[i] - 48)
    return -v if neg else v


@numba.njit(cache=True)
def consume_hmget(buf, length, state, starts, order, row_bytes, out, found):
    """Parse RESP2/RESP3 HMGET replies in `buf[state[0]:length]`, resumable.

    `state` = [pos, command, elements left (-1: header next), sorted row, wrong-size count, eol];
    command i's elements are sorted rows starts[i], starts[i]+1, ...; a value of `row_bytes` bytes
    is copied into `out[order[row]]` and marks `found[order[row]]`. Returns 1 when every reply is
    consumed, 0 when more bytes are needed, 2 at an error reply (line state[0]..state[5]; the
    caller skips it), 3 on bytes that are not RESP."""
    pos, cmd, left, row, bad = state[0], state[1], state[2], state[3], state[4]
    status = 1
    while cmd < starts.shape[0]:
        if left < 0:
            eol = _line_end(buf, pos, length)
            if eol < 0:
                status = 0
                break
            c = buf[pos]
            if c == 42:  # '*' array header
                left = _int_at(buf, pos + 1, eol)
                pos = eol + 2
                row = starts[cmd]
                if left <= 0:
                    cmd += 1
                    left = -1
                continue
            state[5] = eol
            status = 2 if c == 45 else 3  # '-' error reply
            break
        eol = _line_end(buf, pos, length)
        if eol < 0:
            status = 0
            break
        c = buf[pos]
        if c == 36:  # '$' bulk string (or $-1 nil)
            n = _int_at(buf, pos + 1, eol)
            if n >= 0:
                end = eol + 2 + n
                if end + 2 > length:
                    status = 0
                    break
                if n == row_bytes:
                    dst = order[row]
                    out[dst, :] = buf[eol + 2:end]
                    found[dst] = True
                else:
                    bad += 1
                pos = end + 2
            else:
                pos = eol + 2
        elif c == 95:  # '_' RESP3 null
            pos = eol + 2
        else:
            state[5] = eol
            status = 3
            break
        row += 1
        left -= 1
        if left == 0:
            cmd += 1
            left = -1
    state[0], state[1], state[2], state[3], state[4] = pos, cmd, left, row, bad
    return status


@dataclass
class HmgetSink:
    """Output of one node's HMGET replies: command i fills sorted rows from starts[i]."""

    order: np.ndarray  # (n,) original position of each sorted row
    out: np.ndarray  # (n, row_bytes) uint8 view of the float32 result
    found: np.ndarray  # (n,) bool
    row_bytes: int
    starts: list = field(default_factory=list)
    capacity: int = 64
    bad: int = 0


def read_hmget(conn: Any, sink: HmgetSink, connection_error: type[Exception]) -> list[str]:
    """Read `sink`'s HMGET replies from a redis-py connection's socket with `consume_hmget`.

    The pool hands out connections with nothing pending (redis-py checks), and exactly
    these replies are read, so the connection stays in step for redis-py's own parser.
    Returns the error replies' messages (each skipped); raises `connection_error` when the
    socket is gone or the bytes are not RESP (socket timeouts propagate as raised)."""
    sock = getattr(conn, "_sock", None)
    if sock is None:
        raise connection_error("connection lost before reading replies")
    starts = np.asarray(sink.starts, dtype=np.int64)
    buf = np.empty(sink.capacity, np.uint8)
    view = memoryview(buf)
    length = 0
    state = np.array([0, 0, -1, 0, 0, 0], np.int64)
    messages: list[str] = []
    while True:
        status = consume_hmget(buf, length, state, starts, sink.order, sink.row_bytes, sink.out, sink.found)
        if status == 1:
            break
        if status == 2:
            messages.append(bytes(buf[state[0] + 1:state[5]]).decode(errors="replace"))
            state[0], state[1], state[2] = state[5] + 2, state[1] + 1, -1
            continue
        if status == 3:
            raise connection_error(f"reply is not RESP at byte {int(state[0])}")
        if length == buf.shape[0]:
            bigger = np.empty(2 * buf.shape[0], np.uint8)
            bigger[:length] = buf[:length]
            buf, view = bigger, memoryview(bigger)
        got = sock.recv_into(view[length:])
        if got == 0:
            raise connection_error("connection closed by the server")
        length += got
    sink.bad += int(state[4])
    return messages
