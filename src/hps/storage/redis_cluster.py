"""`RedisClusterBackend`: the shared volatile tier on a Redis Cluster, in HugeCTR's layout.

Layout (reference §2.3, §2.10 and HugeCTR's `redis_backend.cpp`), readable as HugeCTR left it:

- table tag `hps_et.<model>.<table>`, partition `p = rrxmrrxmsx_0(key) % num_partitions`;
- hash `hps_et{<tag>/p<p>}v`: field = the raw 8-byte little-endian key, value = the raw
  float32 vector (dim × 4 bytes);
- hash `hps_et{<tag>/p<p>}t`: access metadata of the same fields, per `overflow_policy`:
  `evict_oldest` → the last access time as a raw 8-byte little-endian `time_t` (seconds),
  `evict_least_used` → the access count as a decimal string (HINCRBY), `evict_random` →
  nothing (HugeCTR 24.x writes no metadata for it either).
  The `{…}` hash tag puts both hashes of a partition in one slot, hence on one node.

Speed: every key batch is grouped by partition (a numba counting sort), partitions by node,
and each node gets one pipelined write holding all its HMGET / HSET / HDEL commands (chunked by
`max_batch_size`). Requests are RESP-encoded by numpy (a field is a fixed 14-byte record
`$8\r\n<key>\r\n`, an HSET pair a fixed-width record), so no Python object is made per key on
the way out. HMGET replies are parsed by a numba scanner straight from the socket bytes into the
output rows (no bytes object per value either); other replies go through redis-py's parser.
All nodes' pipelines are written before any reply is read, so the nodes work in parallel
without client threads: the sockets do the waiting, and parsing holds the GIL anyway.
`num_node_connections` bounds the connections per node, i.e. how many calls (from several
threads) run at once.

Failures: a node that refuses, times out (`timeout_ms`, default 2 s, per socket operation) or
answers an error makes the call raise `BackendError` naming the node(s), the table tag and the
key count; the slot map is refreshed on the next call, so the backend recovers by itself once
the node is back. A node that failed to answer is skipped for `retry_after_ms` (default 1 s):
calls that need it fail at once instead of each waiting out the timeout of a hung node. A MOVED/ASK reply (resharding) refreshes the slot map and retries once.
Shapes and dtypes are checked before anything is sent; a node failing in the middle of an
insert can leave the other nodes' rows written (an upsert, so retrying is safe).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numba
import numpy as np

from hps.errors import BackendError, ClosedError, KeyInputError, require
from hps.storage.partition import partition_of

if TYPE_CHECKING:
    from hps.config.schema import RedisClusterConfig

_CRLF = np.frombuffer(b"\r\n", np.uint8)
_KEY_DTYPES = {8: "<i8", 4: "<u4"}  # HugeCTR's `long long` keys, or `unsigned int` (i64_input_key false)
_NO_LIMIT = 2**63  # overflow_margin at or above this never triggers (HugeCTR's default is 2^64-1)
# Server-side loop: one command per partition chunk instead of one HINCRBY per key. A field
# that holds no count (older HugeCTR wrote a raw time_t for every policy) restarts at 1.
_LFU_INCREMENT = (b"for i = 1, #ARGV do "
                  b"local r = redis.pcall('HINCRBY', KEYS[1], ARGV[i], 1) "
                  b"if type(r) == 'table' and r.err then redis.call('HSET', KEYS[1], ARGV[i], '1') end "
                  b"end return #ARGV")


def hash_key(tag: str, partition: int, suffix: str) -> bytes:
    """HugeCTR's Redis hash name `hps_et{<tag>/p<partition>}<suffix>` (suffix "v" or "t")."""
    return f"hps_et{{{tag}/p{partition}}}{suffix}".encode()


def tag_of_hash_key(name: bytes | str) -> str | None:
    """The table tag inside a value-hash name `hps_et{<tag>/p<n>}v`, or None if it is not one."""
    s = name.decode(errors="replace") if isinstance(name, bytes) else name
    if not (s.startswith("hps_et{") and s.endswith("}v")):
        return None
    inner = s[len("hps_et{"):-2]
    tag, sep, part = inner.rpartition("/p")
    return tag if sep and tag and part.isdigit() else None


def connection_kwargs(config: RedisClusterConfig, timeout_ms: int = 2000) -> dict[str, Any]:
    """redis-py keyword arguments for every node connection, from the ps.json `volatile_db` keys.

    Credentials are sent only when `password` is set (as HugeCTR's redis++ does); with
    `enable_tls`, `tls_ca_certificate` is a CA file or directory (`ssl_ca_certs` / `ssl_ca_path`),
    client certificate and key are used when both files exist, and connections present
    `tls_server_name_identification` as SNI (`sni_connection_class`, installed by the backend);
    like hiredis, the peer certificate is verified against the CA but the host name is not."""
    timeout_s = timeout_ms / 1000.0
    kw: dict[str, Any] = {
        "max_connections": int(config.num_node_connections),
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "socket_keepalive": True,
        "protocol": 2,  # RESP2, as HugeCTR's hiredis: no push messages, stale sockets are detected
    }
    if config.password:
        kw["username"] = config.user_name or None
        kw["password"] = config.password
    if config.enable_tls:
        kw["ssl"] = True
        kw["ssl_cert_reqs"] = "required"
        kw["ssl_check_hostname"] = False
        if os.path.isdir(config.tls_ca_certificate):
            kw["ssl_ca_path"] = config.tls_ca_certificate
        else:
            kw["ssl_ca_certs"] = config.tls_ca_certificate
        if os.path.isfile(config.tls_client_certificate) and os.path.isfile(config.tls_client_key):
            kw["ssl_certfile"] = config.tls_client_certificate
            kw["ssl_keyfile"] = config.tls_client_key
    return kw


def sni_connection_class(server_name: str) -> type:
    """An `SSLConnection` subclass that sends `server_name` as SNI instead of the host it dials.

    redis-py offers no SNI option and its `Redis` client forces `SSLConnection` when `ssl` is
    set, so the backend installs this class on every node's connection pool."""
    connection = require("redis.connection", "redis")

    def _wrap_socket_with_ssl(self, sock):
        host = self.host
        self.host = server_name
        try:
            return connection.SSLConnection._wrap_socket_with_ssl(self, sock)
        finally:
            self.host = host

    return type("HpsSniSSLConnection", (connection.SSLConnection,),
                {"_wrap_socket_with_ssl": _wrap_socket_with_ssl, "server_name": server_name})


# -- RESP encoding with numpy -------------------------------------------------------------------

def _resp_head(args: list[bytes], more: int) -> bytes:
    """RESP array header for `len(args) + more` arguments, followed by `args` as bulk strings."""
    out = [b"*%d\r\n" % (len(args) + more)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _field_records(keys: np.ndarray, key_bytes: int = 8) -> np.ndarray:
    """`keys: (n,) int64` → `(n, key_bytes + 6) uint8` RESP bulk strings `$8\\r\\n<LE key>\\r\\n`
    (`key_bytes` 8: int64 keys; 4: uint32 keys, HugeCTR's 32-bit key mode)."""
    n = keys.shape[0]
    rec = np.empty((n, key_bytes + 6), np.uint8)
    rec[:, :4] = np.frombuffer(b"$%d\r\n" % key_bytes, np.uint8)
    raw = np.ascontiguousarray(keys).astype(_KEY_DTYPES[key_bytes], copy=False)
    rec[:, 4:4 + key_bytes] = raw.view(np.uint8).reshape(n, key_bytes)
    rec[:, 4 + key_bytes:] = _CRLF
    return rec


def _pair_records(keys: np.ndarray, values: np.ndarray, key_bytes: int = 8) -> np.ndarray:
    """`keys: (n,) int64`, `values: (n, b) uint8` → `(n, w) uint8` RESP field/value pairs."""
    n, b = values.shape
    head = np.frombuffer(b"$%d\r\n" % b, np.uint8)
    f = key_bytes + 6
    w = f + head.size + b + 2
    rec = np.empty((n, w), np.uint8)
    rec[:, :f] = _field_records(keys, key_bytes)
    rec[:, f:f + head.size] = head
    rec[:, f + head.size:w - 2] = values
    rec[:, w - 2:] = _CRLF
    return rec


def _flat(rec: np.ndarray, a: int, b: int) -> memoryview:
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
def _consume_hmget(buf, length, state, starts, order, row_bytes, out, found):
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


@numba.njit(cache=True)
def _partition_order(parts, num_partitions):
    """Stable counting sort: `order` such that `parts[order]` is ascending, and each partition's end."""
    ends = np.zeros(num_partitions, np.int64)
    for p in parts:
        ends[p] += 1
    ends = np.cumsum(ends)
    nxt = ends.copy()
    nxt[1:] = ends[:-1]
    nxt[0] = 0
    order = np.empty(parts.shape[0], np.int64)
    for i in range(parts.shape[0]):
        order[nxt[parts[i]]] = i
        nxt[parts[i]] += 1
    return order, ends


@dataclass
class _HmgetSink:
    """Output of one node's HMGET replies: command i fills sorted rows from starts[i]."""

    order: np.ndarray  # (n,) original position of each sorted row
    out: np.ndarray  # (n, row_bytes) uint8 view of the float32 result
    found: np.ndarray  # (n,) bool
    row_bytes: int
    starts: list = field(default_factory=list)
    capacity: int = 64
    bad: int = 0


# -- plan of one pipelined round trip ---------------------------------------------------------

@dataclass
class _NodeBatch:
    """Commands for one node: RESP pieces to write, and what each reply belongs to."""

    node: Any
    pieces: list = field(default_factory=list)
    tickets: list = field(default_factory=list)  # one entry per command, in send order
    sink: _HmgetSink | None = None  # HMGET-only batch whose replies are parsed by numba

    def add(self, ticket: Any, *pieces: bytes | memoryview) -> None:
        self.pieces.extend(pieces)
        self.tickets.append(ticket)


class _Redirect(Exception):
    """Internal: a MOVED / ASK / TRYAGAIN reply; refresh the slot map and retry once."""


@dataclass
class _Table:
    tag: str
    dim: int
    hv: list[bytes]
    ht: list[bytes]
    slots: np.ndarray  # (num_partitions,) slot of each partition's hash pair


class RedisClusterBackend:
    """Volatile tier `redis_cluster`: HugeCTR's Redis Cluster layout, batch-first (see module doc).

    `RedisClusterBackend(config, timeout_ms=2000, key_bytes=8, retry_after_ms=1000)`:
    `config.address` lists seed nodes; `timeout_ms` bounds every connect / socket read;
    `key_bytes` is the hash-field width, 8 for int64 keys or 4 for a cluster HugeCTR filled with
    32-bit keys (`supportlonglong` false); a node that failed is not tried again for
    `retry_after_ms` (calls needing it raise `BackendError` at once)."""

    name = "redis_cluster"
    is_shared = True

    def __init__(self, config: RedisClusterConfig, timeout_ms: int = 2000, key_bytes: int = 8,
                 retry_after_ms: int = 1000) -> None:
        if key_bytes not in _KEY_DTYPES:
            raise BackendError(f"redis_cluster: key_bytes must be 8 or 4, got {key_bytes!r}")
        cluster = require("redis.cluster", "redis")
        self._crc = require("redis.crc", "redis")
        self._exc = require("redis.exceptions", "redis")
        retry = require("redis.retry", "redis")
        backoff = require("redis.backoff", "redis")
        self.config = config
        self.timeout_ms = int(timeout_ms)
        self.retry_after_ms = int(retry_after_ms)
        self._down: dict[str, tuple[float, str]] = {}  # node name → (retry time, last error)
        self.key_bytes = int(key_bytes)
        self._num_partitions = int(config.num_partitions)
        self._batch = int(config.max_batch_size)
        self._margin = int(config.overflow_margin)
        self._target = int(config.overflow_target_rows)
        self._policy = config.overflow_policy
        self._tables: dict[str, _Table] = {}
        self._lock = threading.Lock()
        self._gate = threading.BoundedSemaphore(int(config.num_node_connections))
        self._stale = False
        self._closed = False
        self._rng = np.random.default_rng()
        self._sni = sni_connection_class(config.tls_server_name_identification) if config.enable_tls else None
        seeds = [cluster.ClusterNode(h, p) for h, p in config.nodes]
        if not seeds:
            raise BackendError(f"redis_cluster: volatile_db.address {config.address!r} names no node")
        try:
            self._rc = cluster.RedisCluster(
                startup_nodes=seeds, require_full_coverage=False,
                retry=retry.Retry(backoff.NoBackoff(), 0), **connection_kwargs(config, self.timeout_ms))
        except Exception as exc:  # redis raises several unrelated classes here
            raise BackendError(f"redis_cluster: cannot reach the cluster at {config.address!r}: {exc}") from exc
        self._install_sni()

    # -- tables ----------------------------------------------------------------------------------
    def create_table(self, tag: str, dim: int) -> None:
        """Open table `tag` of `dim`-float rows (nothing is stored in Redis but rows)."""
        self._check_open()
        dim = int(dim)
        if dim < 1:
            raise BackendError(f"redis_cluster: table {tag}: dim must be >= 1, got {dim}")
        with self._lock:
            known = self._tables.get(tag)
            if known is not None:
                if known.dim != dim:
                    raise BackendError(f"redis_cluster: table {tag} is open with dim {known.dim}, not {dim}")
                return
            p = self._num_partitions
            hv = [hash_key(tag, i, "v") for i in range(p)]
            slots = np.array([self._crc.key_slot(h) for h in hv], dtype=np.int64)
            self._tables[tag] = _Table(tag, dim, hv, [hash_key(tag, i, "t") for i in range(p)], slots)

    def tables(self) -> list[str]:
        """Tags open here plus every tag with a value hash on any master (SCAN `hps_et{*}v`)."""
        self._check_open()
        found = set(self._tables)
        for node in self._primaries("(tables)"):
            try:
                with self._gate:
                    names = list(node.redis_connection.scan_iter(match=b"hps_et{*}v", count=1000))
            except self._exc.RedisError as exc:
                self._stale = True
                raise BackendError(f"redis_cluster: listing tables: node {node.name} failed: {exc}") from exc
            found.update(tag for tag in map(tag_of_hash_key, names) if tag is not None)
        return sorted(found)

    def drop_table(self, tag: str) -> None:
        """DEL every partition hash (values and metadata) of `tag` and forget it here."""
        t = self._table(tag)

        def plan(batches):
            for p in range(self._num_partitions):
                b = self._batch_for(batches, t, p)
                b.add(p, _resp_head([b"DEL", t.hv[p], t.ht[p]], 0))

        self._round_trip(t.tag, 0, plan)
        with self._lock:
            self._tables.pop(tag, None)

    # -- batch operations ----------------------------------------------------------------------
    def find(self, tag: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`keys: (n,) int64` → `(vectors: (n, dim) float32, found: (n,) bool)`; misses unspecified."""
        t = self._table(tag)
        keys = self._keys(tag, keys)
        n = keys.shape[0]
        out = np.empty((n, t.dim), np.float32)
        found = np.zeros(n, np.bool_)
        if n == 0:
            return out, found
        g = self._group(keys)
        rec = _field_records(g.keys, self.key_bytes)
        row_bytes = 4 * t.dim
        out_u8 = out.view(np.uint8)
        per_value = 1 + len(str(row_bytes)) + 2 + row_bytes + 2  # "$64\r\n" + row + "\r\n"
        sinks: list[_HmgetSink] = []

        def plan(batches):
            sinks.clear()
            found[:] = False
            for p, a, b in g.chunks(self._batch):
                batch = self._batch_for(batches, t, p)
                if batch.sink is None:
                    batch.sink = _HmgetSink(g.order, out_u8, found, row_bytes)
                    sinks.append(batch.sink)
                batch.add(a, _resp_head([b"HMGET", t.hv[p]], b - a), _flat(rec, a, b))
                batch.sink.starts.append(a)
                batch.sink.capacity += 24 + (b - a) * per_value

        self._round_trip(tag, n, plan)
        bad = sum(s.bad for s in sinks)
        if bad:
            raise BackendError(f"redis_cluster: table {tag}: {bad} of {n} values read back do not hold "
                               f"{t.dim} float32 ({row_bytes} bytes); is the table's dim right?")
        if self._policy != "evict_random":
            hit_sorted = found[g.order]
            if hit_sorted.any():
                self._touch(t, g.keys[hit_sorted], g.parts_sorted[hit_sorted])
        return out, found

    def insert_or_assign(self, tag: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert `keys: (n,) int64` → `vectors: (n, dim) float32`; then resolve overflowing partitions."""
        t = self._table(tag)
        keys = self._keys(tag, keys)
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape != (keys.shape[0], t.dim) or \
                not (np.issubdtype(vectors.dtype, np.floating) or np.issubdtype(vectors.dtype, np.integer)):
            raise BackendError(f"redis_cluster: table {tag}: vectors of shape {vectors.shape} dtype "
                               f"{vectors.dtype} do not match {keys.shape[0]} keys × dim {t.dim} float32; "
                               f"nothing written")
        n = keys.shape[0]
        if n == 0:
            return
        g = self._group(keys)
        values = np.ascontiguousarray(vectors[g.order], dtype="<f4").view(np.uint8).reshape(n, 4 * t.dim)
        rec = _pair_records(g.keys, values, self.key_bytes)
        meta = self._meta_records(g.keys) if self._policy != "evict_random" else None
        check_size = self._margin < _NO_LIMIT

        def plan(batches):
            for p, a, b in g.chunks(self._batch):
                batch = self._batch_for(batches, t, p)
                batch.add(None, _resp_head([b"HSET", t.hv[p]], 2 * (b - a)), _flat(rec, a, b))
                self._add_meta(batch, t, p, meta, a, b)
                if check_size and b == g.ends[p]:
                    batch.add(p, _resp_head([b"HLEN", t.hv[p]], 0))

        replies = self._round_trip(tag, n, plan)
        if check_size:
            full = [p for p, r in replies if p is not None and int(r) >= self._margin]
            for p in full:
                self._resolve_overflow(t, p)

    def erase(self, tag: str, keys: np.ndarray) -> int:
        """HDEL `keys: (n,) int64` from values and metadata; returns how many were present."""
        t = self._table(tag)
        keys = self._keys(tag, keys)
        n = keys.shape[0]
        if n == 0:
            return 0
        g = self._group(keys)
        rec = _field_records(g.keys, self.key_bytes)

        def plan(batches):
            for p, a, b in g.chunks(self._batch):
                batch = self._batch_for(batches, t, p)
                batch.add("v", _resp_head([b"HDEL", t.hv[p]], b - a), _flat(rec, a, b))
                batch.add(None, _resp_head([b"HDEL", t.ht[p]], b - a), _flat(rec, a, b))

        return sum(int(r) for k, r in self._round_trip(tag, n, plan) if k == "v")

    def size(self, tag: str) -> int:
        """Rows in table `tag`: the sum of HLEN over its value hashes."""
        t = self._table(tag)

        def plan(batches):
            for p in range(self._num_partitions):
                self._batch_for(batches, t, p).add(p, _resp_head([b"HLEN", t.hv[p]], 0))

        return sum(int(r) for _, r in self._round_trip(tag, 0, plan))

    def items(self, tag: str, batch_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """HSCAN every value hash; yields `(keys: (m,) int64, vectors: (m, dim) float32)`, m ≤ batch_rows.

        Redis's HSCAN guarantee applies: rows present for the whole scan are returned; a hash
        resized by concurrent writes may repeat a row."""
        t = self._table(tag)
        batch_rows = max(1, int(batch_rows))
        row_bytes = 4 * t.dim
        pend_k: list[bytes] = []
        pend_v: list[bytes] = []
        for p in range(self._num_partitions):
            cursor = b"0"
            while True:
                cursor, flat = self._hscan(t, p, cursor, batch_rows)
                pend_k.extend(flat[0::2])
                pend_v.extend(flat[1::2])
                while len(pend_k) >= batch_rows or (pend_k and p == self._num_partitions - 1
                                                     and cursor in (b"0", 0)):
                    yield self._decode_rows(t, pend_k[:batch_rows], pend_v[:batch_rows], row_bytes)
                    del pend_k[:batch_rows], pend_v[:batch_rows]
                if cursor in (b"0", 0):
                    break

    def close(self) -> None:
        """Disconnect from every node; later calls raise `ClosedError`."""
        if self._closed:
            return
        self._closed = True
        try:
            self._rc.close()
        except Exception:  # closing a half-dead cluster client must not raise
            pass

    def __enter__(self) -> "RedisClusterBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers: validation and grouping -----------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("redis_cluster backend is closed")

    def _table(self, tag: str) -> _Table:
        self._check_open()
        t = self._tables.get(tag)
        if t is None:
            raise BackendError(f"redis_cluster: unknown table {tag}; call create_table({tag!r}, dim) first")
        return t

    def _keys(self, tag: str, keys: np.ndarray) -> np.ndarray:
        k = np.asarray(keys)
        if k.ndim != 1 or not (np.issubdtype(k.dtype, np.integer) or k.size == 0):
            raise KeyInputError(f"redis_cluster: table {tag}: keys must be a 1-d integer array, "
                                f"got shape {k.shape} dtype {k.dtype}")
        k = np.ascontiguousarray(k).view(np.int64) if k.dtype == np.uint64 else \
            np.ascontiguousarray(k, dtype=np.int64)
        if self.key_bytes == 4 and k.size and (k.min() < 0 or k.max() > 0xFFFFFFFF):
            raise KeyInputError(f"redis_cluster: table {tag}: {k.size} keys include values outside "
                                f"uint32, but the cluster holds 32-bit keys")
        return k

    def _group(self, keys: np.ndarray) -> "_Grouping":
        parts = partition_of(keys, self._num_partitions)
        order, ends = _partition_order(parts, self._num_partitions)
        return _Grouping(keys[order], order, parts[order], ends)

    def _meta_records(self, keys: np.ndarray) -> np.ndarray:
        if self._policy == "evict_oldest":
            now = np.full((keys.shape[0], 1), int(time.time()), dtype="<i8").view(np.uint8)
            return _pair_records(keys, now, self.key_bytes)
        return _field_records(keys, self.key_bytes)

    def _add_meta(self, batch: _NodeBatch, t: _Table, p: int, meta: np.ndarray | None, a: int, b: int) -> None:
        if meta is None:
            return
        if self._policy == "evict_oldest":
            batch.add(None, _resp_head([b"HSET", t.ht[p]], 2 * (b - a)), _flat(meta, a, b))
        else:
            batch.add(None, _resp_head([b"EVAL", _LFU_INCREMENT, b"1", t.ht[p]], b - a), _flat(meta, a, b))

    def _touch(self, t: _Table, keys: np.ndarray, parts: np.ndarray) -> None:
        """Refresh access metadata of found `keys` (sorted by partition `parts`)."""
        meta = self._meta_records(keys)
        ends = np.cumsum(np.bincount(parts, minlength=self._num_partitions))
        g = _Grouping(keys, None, parts, ends)

        def plan(batches):
            for p, a, b in g.chunks(self._batch):
                self._add_meta(self._batch_for(batches, t, p), t, p, meta, a, b)

        self._round_trip(t.tag, keys.shape[0], plan)

    def _decode_rows(self, t: _Table, ks: list[bytes], vs: list[bytes], row_bytes: int):
        kb, vb = b"".join(ks), b"".join(vs)
        kw = self.key_bytes
        if len(kb) != kw * len(ks) or len(vb) != row_bytes * len(vs) or \
                any(len(v) != row_bytes for v in vs) or any(len(k) != kw for k in ks):
            raise BackendError(f"redis_cluster: table {t.tag}: a hash holds fields that are not {kw}-byte keys "
                               f"or values that are not {t.dim} float32")
        return (self._decode_keys(kb),
                np.frombuffer(vb, "<f4").astype(np.float32).reshape(len(vs), t.dim))

    # -- helpers: routing and I/O ---------------------------------------------------------------
    def _refresh(self, what: str) -> None:
        with self._lock:
            if not self._stale:
                return
            try:
                self._rc.nodes_manager.initialize()
            except Exception as exc:
                raise BackendError(f"redis_cluster: {what}: cannot refresh the slot map from "
                                   f"{self.config.address!r}: {exc}") from exc
            self._install_sni()
            self._stale = False

    def _install_sni(self) -> None:
        """Make every node pool open SNI connections (the slot-map bootstrap itself uses the host)."""
        if self._sni is None:
            return
        for node in list(self._rc.nodes_manager.nodes_cache.values()):
            pool = node.redis_connection.connection_pool
            if pool.connection_class is not self._sni:
                pool.connection_class = self._sni
                pool.disconnect(inuse_connections=False)

    def _primaries(self, what: str) -> list:
        if self._stale:
            self._refresh(what)
        return self._rc.get_primaries()

    def _batch_for(self, batches: dict, t: _Table, p: int) -> _NodeBatch:
        try:
            node = self._rc.nodes_manager.get_node_from_slot(int(t.slots[p]))
        except Exception as exc:
            self._stale = True
            raise BackendError(f"redis_cluster: table {t.tag}: no node serves partition {p} "
                               f"(slot {int(t.slots[p])}): {exc}") from exc
        batch = batches.get(node.name)
        if batch is None:
            batch = batches[node.name] = _NodeBatch(node)
        return batch

    def _round_trip(self, tag: str, nkeys: int, plan) -> list[tuple[Any, Any]]:
        """Build per-node batches with `plan(batches)`, write them all, then read all replies.

        Returns `(ticket, reply)` for every command whose ticket is not None."""
        for attempt in (0, 1):
            if self._stale:
                self._refresh(f"table {tag}")
            batches: dict[str, _NodeBatch] = {}
            plan(batches)
            try:
                return self._exchange(tag, nkeys, batches)
            except _Redirect as exc:
                self._stale = True
                if attempt:
                    raise BackendError(f"redis_cluster: table {tag}: slots keep moving ({nkeys} keys): "
                                       f"{exc}") from exc
        raise AssertionError("unreachable")

    def _exchange(self, tag: str, nkeys: int, batches: dict[str, _NodeBatch]) -> list[tuple[Any, Any]]:
        exc_mod = self._exc
        io_errors = (exc_mod.ConnectionError, exc_mod.TimeoutError, OSError)
        failed: dict[str, str] = {}
        errors: list[str] = []
        redirect = None
        cluster_down = False
        out: list[tuple[Any, Any]] = []
        conns: dict[str, Any] = {}
        completed = False
        skipped: set[str] = set()
        with self._gate:
            try:
                now = time.monotonic()
                for name, batch in batches.items():  # write every node's pipeline first
                    down = self._down.get(name)
                    if down is not None and now < down[0]:
                        failed[name] = f"{down[1]} (not retried for another {down[0] - now:.2f} s)"
                        skipped.add(name)
                        continue
                    try:
                        conn = _checkout(batch.node.redis_connection.connection_pool)
                    except io_errors as exc:
                        failed[name] = str(exc)
                        continue
                    conns[name] = conn
                    try:
                        conn.send_packed_command([b"".join(batch.pieces)], check_health=False)
                    except io_errors as exc:
                        failed[name] = str(exc)
                for name, conn in conns.items():  # then read them all
                    if name in failed:
                        continue
                    if batches[name].sink is not None:
                        try:
                            for msg in self._read_hmget(conn, batches[name]):
                                if msg.startswith(("MOVED", "ASK", "TRYAGAIN")):
                                    redirect = f"node {name}: {msg}"
                                else:
                                    errors.append(f"node {name} answered: {msg}")
                                    cluster_down = cluster_down or msg.startswith("CLUSTERDOWN")
                        except io_errors as exc:
                            failed[name] = str(exc) or type(exc).__name__
                            conn.disconnect()
                        continue
                    for ticket in batches[name].tickets:
                        try:
                            reply = conn.read_response()
                        except exc_mod.ResponseError as exc:
                            msg = str(exc)
                            if isinstance(exc, (exc_mod.AskError, exc_mod.TryAgainError)) or \
                                    msg.startswith(("MOVED", "ASK", "TRYAGAIN")):
                                redirect = f"node {name}: {msg}"
                            else:
                                errors.append(f"node {name} answered: {msg}")
                                cluster_down = cluster_down or isinstance(exc, exc_mod.ClusterDownError)
                            continue
                        except io_errors as exc:
                            failed[name] = str(exc)
                            conn.disconnect()
                            break
                        if ticket is not None:
                            out.append((ticket, reply))
                completed = True
            finally:
                for name, conn in conns.items():
                    pool = batches[name].node.redis_connection.connection_pool
                    if name in failed or not completed:  # replies may be left unread
                        conn.disconnect()
                    pool.release(conn)
                for name in failed:  # idle sockets to a failed node are stale too
                    batches[name].node.redis_connection.connection_pool.disconnect(inuse_connections=False)
        retry_at = time.monotonic() + self.retry_after_ms / 1000.0
        for name in batches:
            if name not in failed:
                self._down.pop(name, None)
            elif name not in skipped:
                self._down[name] = (retry_at, failed[name])
        if failed:
            self._stale = True
            detail = "; ".join(f"node {n}: {m}" for n, m in failed.items())
            raise BackendError(f"redis_cluster: table {tag}: {len(failed)} of {len(batches)} node(s) "
                               f"failed ({nkeys} keys): {detail}")
        if errors:
            self._stale = self._stale or cluster_down
            raise BackendError(f"redis_cluster: table {tag} ({nkeys} keys): " + "; ".join(errors[:3]))
        if redirect is not None:
            raise _Redirect(redirect)
        return out

    def _read_hmget(self, conn: Any, batch: _NodeBatch) -> list[str]:
        """Read `batch`'s HMGET replies from the connection's socket with `_consume_hmget`.

        The pool hands out connections with nothing pending (redis-py checks), and exactly
        these replies are read, so the connection stays in step for redis-py's own parser.
        Returns the error replies' messages (each skipped)."""
        sock = getattr(conn, "_sock", None)
        if sock is None:
            raise self._exc.ConnectionError("connection lost before reading replies")
        sink = batch.sink
        starts = np.asarray(sink.starts, dtype=np.int64)
        buf = np.empty(sink.capacity, np.uint8)
        view = memoryview(buf)
        length = 0
        state = np.array([0, 0, -1, 0, 0, 0], np.int64)
        messages: list[str] = []
        while True:
            status = _consume_hmget(buf, length, state, starts, sink.order, sink.row_bytes, sink.out, sink.found)
            if status == 1:
                break
            if status == 2:
                messages.append(bytes(buf[state[0] + 1:state[5]]).decode(errors="replace"))
                state[0], state[1], state[2] = state[5] + 2, state[1] + 1, -1
                continue
            if status == 3:
                raise self._exc.ConnectionError(f"reply is not RESP at byte {int(state[0])}")
            if length == buf.shape[0]:
                bigger = np.empty(2 * buf.shape[0], np.uint8)
                bigger[:length] = buf[:length]
                buf, view = bigger, memoryview(bigger)
            got = sock.recv_into(view[length:])
            if got == 0:
                raise self._exc.ConnectionError("connection closed by the server")
            length += got
        sink.bad += int(state[4])
        return messages

    def _hscan(self, t: _Table, p: int, cursor: bytes, count: int) -> tuple[bytes, list[bytes]]:
        def plan(batches):
            self._batch_for(batches, t, p).add(0, _resp_head([b"HSCAN", t.hv[p], cursor, b"COUNT",
                                                               b"%d" % count], 0))

        (_, reply), = self._round_trip(t.tag, 0, plan)
        return reply[0], reply[1]

    def _partition_dump(self, t: _Table, p: int) -> tuple[list[bytes], list[bytes]]:
        """(HKEYS of the value hash, HGETALL of the metadata hash) of partition `p`."""
        def plan(batches):
            b = self._batch_for(batches, t, p)
            b.add("k", _resp_head([b"HKEYS", t.hv[p]], 0))
            if self._policy != "evict_random":
                b.add("m", _resp_head([b"HGETALL", t.ht[p]], 0))

        got = dict(self._round_trip(t.tag, 0, plan))
        return got["k"], got.get("m", [])

    def _resolve_overflow(self, t: _Table, p: int) -> None:
        """Evict from partition `p` per policy, in `max_batch_size` HDEL batches, down to the target."""
        fields, meta_flat = self._partition_dump(t, p)
        excess = len(fields) - self._target
        if excess <= 0:
            return  # another process resolved it
        kw = self.key_bytes
        fields = [f for f in fields if len(f) == kw] if any(len(f) != kw for f in fields) else fields
        keys = self._decode_keys(b"".join(fields))
        if self._policy == "evict_random":
            victims = keys[self._rng.permutation(keys.shape[0])[:excess]]
        else:
            score = np.zeros(keys.shape[0], np.int64)  # rows without metadata go first
            if isinstance(meta_flat, dict):  # RESP3 map
                mk, mv = list(meta_flat.keys()), list(meta_flat.values())
            else:  # RESP2 flat array
                mk, mv = meta_flat[0::2], meta_flat[1::2]
            ok = [i for i, k in enumerate(mk) if len(k) == kw]
            if ok:
                mkeys = self._decode_keys(b"".join(mk[i] for i in ok))
                mval = self._parse_meta([mv[i] for i in ok])
                srt = np.argsort(mkeys)
                pos = np.clip(np.searchsorted(mkeys[srt], keys), 0, len(ok) - 1)
                hit = mkeys[srt][pos] == keys
                score[hit] = mval[srt][pos][hit]
            victims = keys[np.argsort(score, kind="stable")[:excess]]
        rec = _field_records(victims, self.key_bytes)
        for a in range(0, victims.shape[0], self._batch):
            b = min(a + self._batch, victims.shape[0])

            def plan(batches, a=a, b=b):
                nb = self._batch_for(batches, t, p)
                nb.add(None, _resp_head([b"HDEL", t.hv[p]], b - a), _flat(rec, a, b))
                nb.add(None, _resp_head([b"HDEL", t.ht[p]], b - a), _flat(rec, a, b))
                nb.add("n", _resp_head([b"HLEN", t.hv[p]], 0))

            (_, left), = self._round_trip(t.tag, b - a, plan)
            if int(left) <= self._target:
                break

    def _decode_keys(self, raw: bytes) -> np.ndarray:
        """Concatenated hash fields → `(m,) int64` keys."""
        return np.frombuffer(raw, _KEY_DTYPES[self.key_bytes]).astype(np.int64)

    def _parse_meta(self, values: list[bytes]) -> np.ndarray:
        """Metadata values → int64 scores: 8-byte LE time_t (oldest) or decimal counts (least used)."""
        if self._policy == "evict_oldest":
            if all(len(v) == 8 for v in values):
                return np.frombuffer(b"".join(values), "<i8").astype(np.int64)
            return np.array([int.from_bytes(v[:8].ljust(8, b"\0"), "little", signed=True) for v in values],
                            dtype=np.int64)
        try:
            return np.array(values, dtype="S24").astype(np.int64)
        except ValueError:
            return np.array([int(v) if v.strip(b"-").isdigit() else 0 for v in values], dtype=np.int64)


def _checkout(pool: Any) -> Any:
    """A connection from a redis-py pool (redis-py 5 wants a command name, 6+ takes none)."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("HMGET")


@dataclass
class _Grouping:
    """Keys sorted by partition: `keys[i] = original[order[i]]`, partition p spans [ends[p-1], ends[p])."""

    keys: np.ndarray
    order: np.ndarray | None
    parts_sorted: np.ndarray
    ends: np.ndarray

    def chunks(self, batch: int) -> Iterator[tuple[int, int, int]]:
        """(partition, start, stop) ranges of at most `batch` keys, non-empty partitions only."""
        start = 0
        for p, end in enumerate(self.ends.tolist()):
            for a in range(start, end, batch):
                yield p, a, min(a + batch, end)
            start = end
