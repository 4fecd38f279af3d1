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
The wire format lives in `redis_protocol`, the slot map, node connections, the round trip and
node failures in `redis_topology`; this module holds the layout and the backend's semantics.
All nodes' pipelines are written before any reply is read, so the nodes work in parallel
without client threads: the sockets do the waiting, and parsing holds the GIL anyway.
`num_node_connections` bounds the connections per node, i.e. how many calls (from several
threads) run at once.

Failures stay local to the failed node's keys (`redis_topology` has the details): a node that
refuses, times out (`timeout_ms`, default 2 s, per socket operation) or drops the connection is
marked down and not sent anything for `retry_after_ms` (default 1 s), after which a background
PING decides whether it is back; a hung node is waited for once, not once per call, and the
slot map is re-read from nodes that are up. `find` still reads the other nodes' keys and raises
`PartialBackendError` with `vectors`, `found` and `unavailable` (the down nodes' keys), naming
the nodes; the tier chain sends only those keys on to the persistent tier. Writes, erases and
the other calls raise `BackendError` naming the node(s); a write needing a node known to be down
or refusing connections sends nothing at all; one whose node fails mid-way can leave the other
nodes' rows written (an upsert, so retrying is safe, as the Kafka consumer does). A MOVED/ASK
reply (resharding, failover) refreshes the slot map and retries once. Shapes and dtypes are
checked before anything is sent.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numba
import numpy as np

from hps.errors import BackendError, ClosedError, KeyInputError, PartialBackendError, require
from hps.storage.partition import partition_of
from hps.storage.redis_protocol import KEY_DTYPES, HmgetSink, field_records, flat, pair_records, resp_head
from hps.storage.redis_topology import ClusterTopology, NodeBatch, connection_kwargs, sni_connection_class

log = logging.getLogger(__name__)
__all__ = ["RedisClusterBackend", "connection_kwargs", "hash_key", "sni_connection_class", "tag_of_hash_key"]

if TYPE_CHECKING:
    from hps.config.schema import RedisClusterConfig

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
    32-bit keys (`supportlonglong` false); a node that failed is not sent anything for
    `retry_after_ms`, then probed in the background (calls needing it meanwhile fail at once:
    `PartialBackendError` for `find`, `BackendError` otherwise)."""

    name = "redis_cluster"
    is_shared = True

    def __init__(self, config: RedisClusterConfig, timeout_ms: int = 2000, key_bytes: int = 8,
                 retry_after_ms: int = 1000) -> None:
        if key_bytes not in KEY_DTYPES:
            raise BackendError(f"redis_cluster: key_bytes must be 8 or 4, got {key_bytes!r}")
        self._crc = require("redis.crc", "redis")
        self._exc = require("redis.exceptions", "redis")
        self.config = config
        self.timeout_ms = int(timeout_ms)
        self.retry_after_ms = int(retry_after_ms)
        self.key_bytes = int(key_bytes)
        self._num_partitions = int(config.num_partitions)
        self._batch = int(config.max_batch_size)
        self._margin = int(config.overflow_margin)
        self._target = int(config.overflow_target_rows)
        self._policy = config.overflow_policy
        self._tables: dict[str, _Table] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._rng = np.random.default_rng()
        self._topology = ClusterTopology(config, self.timeout_ms, self.retry_after_ms)

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
        for node in self._topology.primaries("(tables)"):
            why = self._topology.down_reason(node.name)
            if why is not None:
                raise BackendError(f"redis_cluster: listing tables: node {node.name} is down: {why}")
            try:
                with self._topology.gate:
                    names = list(node.redis_connection.scan_iter(match=b"hps_et{*}v", count=1000))
            except self._exc.RedisError as exc:
                self._topology.stale = True
                raise BackendError(f"redis_cluster: listing tables: node {node.name} failed: {exc}") from exc
            found.update(tag for tag in map(tag_of_hash_key, names) if tag is not None)
        return sorted(found)

    def drop_table(self, tag: str) -> None:
        """DEL every partition hash (values and metadata) of `tag` and forget it here."""
        t = self._table(tag)

        def plan(batches):
            for p in range(self._num_partitions):
                b = self._batch_for(batches, t, p)
                b.add(p, resp_head([b"DEL", t.hv[p], t.ht[p]], 0))

        self._topology.round_trip(t.tag, 0, plan)
        with self._lock:
            self._tables.pop(tag, None)

    # -- batch operations ----------------------------------------------------------------------
    def find(self, tag: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`keys: (n,) int64` → `(vectors: (n, dim) float32, found: (n,) bool)`; misses unspecified.

        When some nodes cannot be asked (down, hung, or answering an error such as CLUSTERDOWN),
        the other nodes' keys are still read, and `PartialBackendError` carries `vectors`,
        `found` and `unavailable: (n,) bool` (the keys whose node could not be asked)."""
        t = self._table(tag)
        keys = self._keys(tag, keys)
        n = keys.shape[0]
        out = np.empty((n, t.dim), np.float32)
        found = np.zeros(n, np.bool_)
        if n == 0:
            return out, found
        g = self._group(keys)
        rec = field_records(g.keys, self.key_bytes)
        row_bytes = 4 * t.dim
        out_u8 = out.view(np.uint8)
        per_value = 1 + len(str(row_bytes)) + 2 + row_bytes + 2  # "$64\r\n" + row + "\r\n"
        sinks: list[HmgetSink] = []
        spans: dict[str, list[tuple[int, int]]] = {}  # node → its ranges of partition-sorted rows

        def plan(batches):
            sinks.clear()
            spans.clear()
            found[:] = False
            for p, a, b in g.chunks(self._batch):
                batch = self._batch_for(batches, t, p)
                if batch.sink is None:
                    batch.sink = HmgetSink(g.order, out_u8, found, row_bytes)
                    sinks.append(batch.sink)
                batch.add(a, resp_head([b"HMGET", t.hv[p]], b - a), flat(rec, a, b))
                batch.sink.starts.append(a)
                batch.sink.capacity += 24 + (b - a) * per_value
                spans.setdefault(batch.name, []).append((a, b))

        trip = self._topology.round_trip(tag, n, plan, partial=True)
        bad = sum(s.bad for s in sinks)
        if bad:
            raise BackendError(f"redis_cluster: table {tag}: {bad} of {n} values read back do not hold "
                               f"{t.dim} float32 ({row_bytes} bytes); is the table's dim right?")
        unavailable = None
        if trip.failed:
            lost_sorted = np.zeros(n, np.bool_)
            for name in trip.failed:
                for a, b in spans.get(name, ()):
                    lost_sorted[a:b] = True
            unavailable = np.empty(n, np.bool_)
            unavailable[g.order] = lost_sorted
            found &= ~unavailable
        if self._policy != "evict_random":
            hit_sorted = found[g.order]
            if hit_sorted.any():
                self._touch(t, g.keys[hit_sorted], g.parts_sorted[hit_sorted])
        if unavailable is not None:
            detail = "; ".join(f"node {name}: {why}" for name, why in trip.failed.items())
            raise PartialBackendError(
                f"redis_cluster: table {tag}: {int(unavailable.sum())} of {n} keys not asked, "
                f"{len(trip.failed)} of {len(trip.batches)} node(s) failed: {detail}",
                out, found, unavailable, tuple(trip.failed))
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
        rec = pair_records(g.keys, values, self.key_bytes)
        meta = self._meta_records(g.keys) if self._policy != "evict_random" else None
        check_size = self._margin < _NO_LIMIT

        def plan(batches):
            for p, a, b in g.chunks(self._batch):
                batch = self._batch_for(batches, t, p)
                batch.add(None, resp_head([b"HSET", t.hv[p]], 2 * (b - a)), flat(rec, a, b))
                self._add_meta(batch, t, p, meta, a, b)
                if check_size and b == g.ends[p]:
                    batch.add(p, resp_head([b"HLEN", t.hv[p]], 0))

        replies = self._topology.round_trip(tag, n, plan).replies
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
        rec = field_records(g.keys, self.key_bytes)

        def plan(batches):
            for p, a, b in g.chunks(self._batch):
                batch = self._batch_for(batches, t, p)
                batch.add("v", resp_head([b"HDEL", t.hv[p]], b - a), flat(rec, a, b))
                batch.add(None, resp_head([b"HDEL", t.ht[p]], b - a), flat(rec, a, b))

        return sum(int(r) for k, r in self._topology.round_trip(tag, n, plan).replies if k == "v")

    def size(self, tag: str) -> int:
        """Rows in table `tag`: the sum of HLEN over its value hashes."""
        t = self._table(tag)

        def plan(batches):
            for p in range(self._num_partitions):
                self._batch_for(batches, t, p).add(p, resp_head([b"HLEN", t.hv[p]], 0))

        return sum(int(r) for _, r in self._topology.round_trip(tag, 0, plan).replies)

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
        self._topology.close()

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
            return pair_records(keys, now, self.key_bytes)
        return field_records(keys, self.key_bytes)

    def _add_meta(self, batch: NodeBatch, t: _Table, p: int, meta: np.ndarray | None, a: int, b: int) -> None:
        if meta is None:
            return
        if self._policy == "evict_oldest":
            batch.add(None, resp_head([b"HSET", t.ht[p]], 2 * (b - a)), flat(meta, a, b))
        else:
            batch.add(None, resp_head([b"EVAL", _LFU_INCREMENT, b"1", t.ht[p]], b - a), flat(meta, a, b))

    def _touch(self, t: _Table, keys: np.ndarray, parts: np.ndarray) -> None:
        """Refresh access metadata of found `keys` (sorted by partition `parts`).

        Metadata only orders evictions: a node failing here is marked down (the next call
        reports its keys) but does not fail the lookup whose rows were already read."""
        meta = self._meta_records(keys)
        ends = np.cumsum(np.bincount(parts, minlength=self._num_partitions))
        g = _Grouping(keys, None, parts, ends)

        def plan(batches):
            for p, a, b in g.chunks(self._batch):
                self._add_meta(self._batch_for(batches, t, p), t, p, meta, a, b)

        trip = self._topology.round_trip(t.tag, keys.shape[0], plan, partial=True)
        if trip.failed:
            log.warning("redis_cluster: table %s: access metadata of %d keys not refreshed: %s", t.tag,
                        keys.shape[0], "; ".join(f"node {n}: {m}" for n, m in trip.failed.items()))

    def _batch_for(self, batches: dict, t: _Table, p: int) -> NodeBatch:
        return self._topology.batch_for(batches, int(t.slots[p]), f"table {t.tag}: partition {p}")

    def _decode_rows(self, t: _Table, ks: list[bytes], vs: list[bytes], row_bytes: int):
        kb, vb = b"".join(ks), b"".join(vs)
        kw = self.key_bytes
        if len(kb) != kw * len(ks) or len(vb) != row_bytes * len(vs) or \
                any(len(v) != row_bytes for v in vs) or any(len(k) != kw for k in ks):
            raise BackendError(f"redis_cluster: table {t.tag}: a hash holds fields that are not {kw}-byte keys "
                               f"or values that are not {t.dim} float32")
        return (self._decode_keys(kb),
                np.frombuffer(vb, "<f4").astype(np.float32).reshape(len(vs), t.dim))

    def _hscan(self, t: _Table, p: int, cursor: bytes, count: int) -> tuple[bytes, list[bytes]]:
        def plan(batches):
            self._batch_for(batches, t, p).add(0, resp_head([b"HSCAN", t.hv[p], cursor, b"COUNT",
                                                               b"%d" % count], 0))

        (_, reply), = self._topology.round_trip(t.tag, 0, plan).replies
        return reply[0], reply[1]

    def _partition_dump(self, t: _Table, p: int) -> tuple[list[bytes], list[bytes]]:
        """(HKEYS of the value hash, HGETALL of the metadata hash) of partition `p`."""
        def plan(batches):
            b = self._batch_for(batches, t, p)
            b.add("k", resp_head([b"HKEYS", t.hv[p]], 0))
            if self._policy != "evict_random":
                b.add("m", resp_head([b"HGETALL", t.ht[p]], 0))

        got = dict(self._topology.round_trip(t.tag, 0, plan).replies)
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
        rec = field_records(victims, self.key_bytes)
        for a in range(0, victims.shape[0], self._batch):
            b = min(a + self._batch, victims.shape[0])

            def plan(batches, a=a, b=b):
                nb = self._batch_for(batches, t, p)
                nb.add(None, resp_head([b"HDEL", t.hv[p]], b - a), flat(rec, a, b))
                nb.add(None, resp_head([b"HDEL", t.ht[p]], b - a), flat(rec, a, b))
                nb.add("n", resp_head([b"HLEN", t.hv[p]], 0))

            (_, left), = self._topology.round_trip(t.tag, b - a, plan).replies
            if int(left) <= self._target:
                break

    def _decode_keys(self, raw: bytes) -> np.ndarray:
        """Concatenated hash fields → `(m,) int64` keys."""
        return np.frombuffer(raw, KEY_DTYPES[self.key_bytes]).astype(np.int64)

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
