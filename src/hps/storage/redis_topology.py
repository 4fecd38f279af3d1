"""The Redis Cluster's topology for the volatile tier: node connections, the slot map, node
failures, and the pipelined round trip to every node at once.

- `connection_kwargs` / `sni_connection_class`: redis-py connection options from ps.json.
- `ClusterTopology`: which master serves each of the 16384 slots (read with CLUSTER SLOTS), one
  redis-py connection pool per node, and `round_trip(plan)`: build one `NodeBatch` per node,
  write every node's pipeline, then read every reply (the sockets do the waiting, no client
  threads).

Node failures stay local to the node's keys:
- a node that refuses, times out (`timeout_ms`, per socket operation) or drops the connection
  is marked down: for `retry_after_ms` nothing is sent to it (calls that need it learn so at
  once, without waiting), then a background probe (PING) decides whether it is back; a hung
  node is waited for once, not once per call;
- a read round trip (`partial=True`) returns what the other nodes answered and names the nodes
  that could not be asked; a write round trip raises `BackendError` naming them, and sends
  nothing at all when a node it needs is known down or refuses the connection;
- the slot map is re-read after a failure, a redirect (MOVED / ASK, retried once) or a probe,
  from a node that is not down: a hung node is never asked for it. A replica promoted by a
  failover is found that way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from hps.errors import BackendError, require
from hps.storage.redis_protocol import HmgetSink, read_hmget

if TYPE_CHECKING:
    from hps.config.schema import RedisClusterConfig

log = logging.getLogger(__name__)
NUM_SLOTS = 16384


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


def checkout(pool: Any) -> Any:
    """A connection from a redis-py pool (redis-py 5 wants a command name, 6+ takes none)."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("HMGET")


@dataclass(eq=False)
class ClusterNode:
    """One Redis node: `name` "host:port" and `redis_connection`, a redis-py client on its own pool."""

    name: str
    host: str
    port: int
    redis_connection: Any

    @property
    def pool(self) -> Any:
        return self.redis_connection.connection_pool


@dataclass
class NodeBatch:
    """Commands for one node: RESP pieces to write, and what each reply belongs to.

    `node` is None for slots no master serves (their commands fail without being sent)."""

    name: str
    node: ClusterNode | None
    pieces: list = field(default_factory=list)
    tickets: list = field(default_factory=list)  # one entry per command, in send order
    sink: HmgetSink | None = None  # HMGET-only batch whose replies are parsed by numba

    def add(self, ticket: Any, *pieces: bytes | memoryview) -> None:
        self.pieces.extend(pieces)
        self.tickets.append(ticket)


@dataclass
class RoundTrip:
    """What one round trip got: `(ticket, reply)` of every answered command whose ticket is not
    None, and `failed`: node name → why its commands got no answer (only with `partial`)."""

    replies: list[tuple[Any, Any]]
    failed: dict[str, str]
    batches: dict[str, NodeBatch]


class _Redirect(Exception):
    """Internal: a MOVED / ASK / TRYAGAIN reply; refresh the slot map and retry once."""


class ClusterTopology:
    """Slot map, node connections and node health of one Redis Cluster (see module doc).

    `ClusterTopology(config, timeout_ms=2000, retry_after_ms=1000)` reads the slot map from the
    first seed of `config.address` that answers; raises `BackendError` when none does."""

    def __init__(self, config: RedisClusterConfig, timeout_ms: int = 2000, retry_after_ms: int = 1000) -> None:
        self._redis = require("redis", "redis")
        self._exc = require("redis.exceptions", "redis")
        retry = require("redis.retry", "redis")
        backoff = require("redis.backoff", "redis")
        self.config = config
        self.timeout_ms = int(timeout_ms)
        self.retry_after_ms = int(retry_after_ms)
        self._io_errors = (self._exc.ConnectionError, self._exc.TimeoutError, OSError)
        # No retries inside redis-py: a failed node is marked down here instead.
        self._client_kwargs = {**connection_kwargs(config, self.timeout_ms), "retry": retry.Retry(backoff.NoBackoff(), 0)}
        self._sni = sni_connection_class(config.tls_server_name_identification) if config.enable_tls else None
        self._nodes: dict[str, ClusterNode] = {}
        self._owner: list[ClusterNode | None] = [None] * NUM_SLOTS
        self._masters: list[ClusterNode] = []
        self._down: dict[str, tuple[float, str]] = {}  # node name → (time of the next probe, last error)
        self._probing: set[str] = set()
        self._map_lock = threading.Lock()
        self._down_lock = threading.Lock()
        self.gate = threading.BoundedSemaphore(int(config.num_node_connections))
        self.stale = True
        self._closed = False
        self._seeds = [self._node(h, p) for h, p in config.nodes]
        if not self._seeds:
            raise BackendError(f"redis_cluster: volatile_db.address {config.address!r} names no node")
        why = self._load_slot_map()
        if why is not None:
            self.close()
            raise BackendError(f"redis_cluster: cannot reach the cluster at {config.address!r}: {why}")

    def close(self) -> None:
        """Disconnect every node; probes still running end on their own."""
        self._closed = True
        for node in list(self._nodes.values()):
            try:
                node.pool.disconnect()
            except Exception:  # closing a half-dead cluster client must not raise
                pass

    # -- slot map ------------------------------------------------------------------------------
    def refresh(self, what: str) -> None:
        """Re-read the slot map if it is stale, from a node that is not down.

        When no node can answer, the old map stays (its nodes' keys fail on their own);
        raises `BackendError` only if there never was a map."""
        if not self.stale:
            return
        why = self._load_slot_map()
        if why is not None and not self._masters:
            raise BackendError(f"redis_cluster: {what}: cannot read the slot map from {self.config.address!r}: {why}")

    def primaries(self, what: str) -> list[ClusterNode]:
        """The masters, each with `.name` and `.redis_connection` (a redis-py client)."""
        self.refresh(what)
        return list(self._masters)

    def batch_for(self, batches: dict[str, NodeBatch], slot: int, what: str) -> NodeBatch:
        """The batch (in `batches`, by node name) of the master serving `slot`, made on first use."""
        node = self._owner[slot]
        name = node.name if node is not None else f"(no master serves slot {slot})"
        batch = batches.get(name)
        if batch is None:
            batch = batches[name] = NodeBatch(name, node)
        return batch

    def _node(self, host: str, port: int) -> ClusterNode:
        name = f"{host}:{port}"
        node = self._nodes.get(name)
        if node is None:
            client = self._redis.Redis(host=host, port=port, **self._client_kwargs)
            if self._sni is not None:
                client.connection_pool.connection_class = self._sni
            node = self._nodes[name] = ClusterNode(name, host, port, client)
        return node

    def _load_slot_map(self) -> str | None:
        """Read CLUSTER SLOTS from the first node not down that answers: the current masters,
        then other known nodes, then the seeds. Returns None, or why no node answered."""
        with self._map_lock:
            if not self.stale and self._masters:
                return None  # another thread just did it
            now = time.monotonic()
            order = [*self._masters, *self._nodes.values(), *self._seeds]
            asked: set[str] = set()
            errors = []
            for node in order:
                if node.name in asked or self.down_reason(node.name, now, probe=False) is not None:
                    continue
                asked.add(node.name)
                try:
                    reply = self._command(node, "CLUSTER", "SLOTS")
                except self._io_errors as exc:
                    self._mark_down(node.name, str(exc) or type(exc).__name__)
                    errors.append(f"node {node.name}: {exc}")
                    continue
                except self._exc.RedisError as exc:
                    errors.append(f"node {node.name} answered: {exc}")
                    continue
                owner: list[ClusterNode | None] = [None] * NUM_SLOTS
                masters: dict[str, ClusterNode] = {}
                for entry in reply:
                    start, end, master = int(entry[0]), int(entry[1]), entry[2]
                    host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
                    if host in ("", "?"):  # "the host you asked"
                        host = node.host
                    m = self._node(host, int(master[1]))
                    owner[start:end + 1] = [m] * (end + 1 - start)
                    masters[m.name] = m
                self._owner, self._masters = owner, list(masters.values())
                self.stale = False
                return None
            return "; ".join(errors) or "every known node is down"

    def _command(self, node: ClusterNode, *args: Any) -> Any:
        """One command on `node` through its pool (raises redis-py's errors)."""
        pool = node.pool
        conn = checkout(pool)
        try:
            conn.send_command(*args, check_health=False)
            return conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    # -- node health ---------------------------------------------------------------------------
    def down_reason(self, name: str, now: float | None = None, probe: bool = True) -> str | None:
        """Why node `name` is not asked now, or None when it is up. Once `retry_after_ms` has
        passed, starts a background probe (with `probe`); the node stays down until it answers."""
        entry = self._down.get(name)
        if entry is None:
            return None
        retry_at, why = entry
        now = time.monotonic() if now is None else now
        if now < retry_at:
            return f"{why} (not retried for another {retry_at - now:.2f} s)"
        if probe:
            self._start_probe(name)
        return f"{why} (being probed)"

    def _mark_down(self, name: str, why: str) -> None:
        with self._down_lock:
            self._down[name] = (time.monotonic() + self.retry_after_ms / 1000.0, why)
        self.stale = True

    def _start_probe(self, name: str) -> None:
        with self._down_lock:
            if name in self._probing or self._closed:
                return
            self._probing.add(name)
        threading.Thread(target=self._probe, args=(name,), daemon=True, name=f"hps-redis-probe-{name}").start()

    def _probe(self, name: str) -> None:
        """PING a down node (bounded by `timeout_ms`): up again, or down for another `retry_after_ms`."""
        node = self._nodes[name]
        try:
            if self._closed:
                return
            node.pool.disconnect(inuse_connections=False)  # idle sockets to it are stale
            self._command(node, "PING")
        except Exception as exc:  # noqa: BLE001 - any failure keeps it down
            self._mark_down(name, str(exc) or type(exc).__name__)
        else:
            with self._down_lock:
                self._down.pop(name, None)
            log.info("redis_cluster: node %s answers again", name)
            self.stale = True  # it may have been failed over meanwhile: re-read who serves what
        finally:
            with self._down_lock:
                self._probing.discard(name)

    # -- round trips ---------------------------------------------------------------------------
    def round_trip(self, tag: str, nkeys: int, plan: Callable[[dict], None], partial: bool = False) -> RoundTrip:
        """Build per-node batches with `plan(batches)`, write them all, then read all replies.

        With `partial` (reads), nodes that cannot be asked or that answer an error are listed in
        the result's `failed` and the other nodes' replies are returned; without it, any such
        node raises `BackendError` naming it (before anything is sent, when that is known first)."""
        for attempt in (0, 1):
            self.refresh(f"table {tag}")
            batches: dict[str, NodeBatch] = {}
            plan(batches)
            try:
                return self._exchange(tag, nkeys, batches, partial)
            except _Redirect as exc:
                self.stale = True
                if attempt:
                    raise BackendError(f"redis_cluster: table {tag}: slots keep moving ({nkeys} keys): "
                                       f"{exc}") from exc
        raise AssertionError("unreachable")

    def _failure(self, tag: str, nkeys: int, batches: dict, failed: dict[str, str], sent: bool) -> BackendError:
        detail = "; ".join(f"node {n}: {m}" for n, m in failed.items())
        after = ("the other nodes carried out their commands (writes are upserts: retrying is safe)" if sent
                 else "nothing was sent")
        return BackendError(f"redis_cluster: table {tag}: {len(failed)} of {len(batches)} node(s) failed "
                            f"({nkeys} keys): {detail}; {after}")

    def _exchange(self, tag: str, nkeys: int, batches: dict[str, NodeBatch], partial: bool) -> RoundTrip:
        exc_mod = self._exc
        io_errors = self._io_errors
        failed: dict[str, str] = {}
        broken: dict[str, str] = {}  # failed on the socket: marked down
        errors: dict[str, list[str]] = {}
        redirect = None
        cluster_down = False
        out: list[tuple[Any, Any]] = []
        now = time.monotonic()
        for name, batch in batches.items():
            if batch.node is None:
                failed[name] = "no master serves it"
                self.stale = True
                continue
            why = self.down_reason(name, now)
            if why is not None:
                failed[name] = why
        if failed and not partial:
            raise self._failure(tag, nkeys, batches, failed, sent=False)
        conns: dict[str, Any] = {}
        sent: set[str] = set()
        completed = False
        with self.gate:
            try:
                for name, batch in batches.items():  # connect to every node first: a refused connection
                    if name in failed:               # costs a write nothing half-applied
                        continue
                    try:
                        conns[name] = checkout(batch.node.pool)
                    except io_errors as exc:
                        failed[name] = broken[name] = str(exc) or type(exc).__name__
                if failed and not partial:
                    raise self._failure(tag, nkeys, batches, failed, sent=False)
                for name, conn in conns.items():  # write every node's pipeline
                    try:
                        sent.add(name)
                        conn.send_packed_command([b"".join(batches[name].pieces)], check_health=False)
                    except io_errors as exc:
                        failed[name] = broken[name] = str(exc) or type(exc).__name__
                for name, conn in conns.items():  # then read them all
                    if name in failed:
                        continue
                    batch = batches[name]
                    if batch.sink is not None:
                        try:
                            for msg in read_hmget(conn, batch.sink, exc_mod.ConnectionError):
                                if msg.startswith(("MOVED", "ASK", "TRYAGAIN")):
                                    redirect = f"node {name}: {msg}"
                                else:
                                    errors.setdefault(name, []).append(msg)
                                    cluster_down = cluster_down or msg.startswith("CLUSTERDOWN")
                        except io_errors as exc:
                            failed[name] = broken[name] = str(exc) or type(exc).__name__
                        continue
                    for ticket in batch.tickets:
                        try:
                            reply = conn.read_response()
                        except exc_mod.ResponseError as exc:
                            msg = str(exc)
                            if isinstance(exc, (exc_mod.AskError, exc_mod.TryAgainError)) or \
                                    msg.startswith(("MOVED", "ASK", "TRYAGAIN")):
                                redirect = f"node {name}: {msg}"
                            else:
                                errors.setdefault(name, []).append(msg)
                                cluster_down = cluster_down or isinstance(exc, exc_mod.ClusterDownError)
                            continue
                        except io_errors as exc:
                            failed[name] = broken[name] = str(exc) or type(exc).__name__
                            break
                        if ticket is not None:
                            out.append((ticket, reply))
                completed = True
            finally:
                for name, conn in conns.items():
                    if name in failed or (name in sent and not completed):  # replies may be left unread
                        conn.disconnect()
                    batches[name].node.pool.release(conn)
                for name in broken:  # idle sockets to a broken node are stale too
                    batches[name].node.pool.disconnect(inuse_connections=False)
        for name, why in broken.items():
            self._mark_down(name, why)
        if cluster_down:
            self.stale = True
        if redirect is not None:
            raise _Redirect(redirect)
        if partial:
            for name, msgs in errors.items():
                failed.setdefault(name, "answered: " + "; ".join(msgs[:3]))
            return RoundTrip(out, failed, batches)
        if failed:
            raise self._failure(tag, nkeys, batches, failed, sent=True)
        if errors:
            raise BackendError(f"redis_cluster: table {tag} ({nkeys} keys): " +
                               "; ".join(f"node {n} answered: {m}" for n, ms in errors.items() for m in ms[:3]))
        return RoundTrip(out, {}, batches)
