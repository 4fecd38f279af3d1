"""The Redis Cluster's topology for the volatile tier: node connections, the slot map, redirects
and node failures, and the pipelined round trip to every node at once.

- `connection_kwargs` / `sni_connection_class`: redis-py connection options from ps.json.
- `ClusterTopology`: which node serves a slot, the per-node connection pools, and
  `round_trip(plan)`: build one `NodeBatch` per node, write every node's pipeline, then read
  every reply (the sockets do the waiting, no client threads).
- Failures: a node that refuses, times out (`timeout_ms`, per socket operation) or answers an
  error makes the round trip raise `BackendError` naming the node(s); the slot map is
  refreshed on the next call. A node that failed to answer is skipped for `retry_after_ms`. A
  MOVED/ASK reply refreshes the slot map and retries once.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from hps.errors import BackendError, require
from hps.storage.redis_protocol import HmgetSink, read_hmget

if TYPE_CHECKING:
    from hps.config.schema import RedisClusterConfig


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


@dataclass
class NodeBatch:
    """Commands for one node: RESP pieces to write, and what each reply belongs to."""

    node: Any
    pieces: list = field(default_factory=list)
    tickets: list = field(default_factory=list)  # one entry per command, in send order
    sink: HmgetSink | None = None  # HMGET-only batch whose replies are parsed by numba

    def add(self, ticket: Any, *pieces: bytes | memoryview) -> None:
        self.pieces.extend(pieces)
        self.tickets.append(ticket)


class _Redirect(Exception):
    """Internal: a MOVED / ASK / TRYAGAIN reply; refresh the slot map and retry once."""


class ClusterTopology:
    """Slot map and node connections of one Redis Cluster (see module doc)."""

    def __init__(self, config: RedisClusterConfig, timeout_ms: int = 2000, retry_after_ms: int = 1000) -> None:
        cluster = require("redis.cluster", "redis")
        self._exc = require("redis.exceptions", "redis")
        retry = require("redis.retry", "redis")
        backoff = require("redis.backoff", "redis")
        self.config = config
        self.timeout_ms = int(timeout_ms)
        self.retry_after_ms = int(retry_after_ms)
        self._down: dict[str, tuple[float, str]] = {}  # node name → (retry time, last error)
        self._lock = threading.Lock()
        self.gate = threading.BoundedSemaphore(int(config.num_node_connections))
        self.stale = False
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

    def close(self) -> None:
        try:
            self._rc.close()
        except Exception:  # closing a half-dead cluster client must not raise
            pass

    # -- helpers: routing and I/O ---------------------------------------------------------------
    def refresh(self, what: str) -> None:
        """Re-read the slot map if it is stale (after a node failure or a redirect)."""
        with self._lock:
            if not self.stale:
                return
            try:
                self._rc.nodes_manager.initialize()
            except Exception as exc:
                raise BackendError(f"redis_cluster: {what}: cannot refresh the slot map from "
                                   f"{self.config.address!r}: {exc}") from exc
            self._install_sni()
            self.stale = False

    def _install_sni(self) -> None:
        """Make every node pool open SNI connections (the slot-map bootstrap itself uses the host)."""
        if self._sni is None:
            return
        for node in list(self._rc.nodes_manager.nodes_cache.values()):
            pool = node.redis_connection.connection_pool
            if pool.connection_class is not self._sni:
                pool.connection_class = self._sni
                pool.disconnect(inuse_connections=False)

    def primaries(self, what: str) -> list:
        """The masters, each with `.name` and `.redis_connection` (a redis-py client)."""
        if self.stale:
            self.refresh(what)
        return self._rc.get_primaries()

    def node_for_slot(self, slot: int, what: str) -> Any:
        """The master serving `slot`; raises `BackendError` (and marks the map stale) when none does."""
        try:
            return self._rc.nodes_manager.get_node_from_slot(int(slot))
        except Exception as exc:
            self.stale = True
            raise BackendError(f"redis_cluster: {what}: no node serves slot {int(slot)}: {exc}") from exc

    def batch_for(self, batches: dict, slot: int, what: str) -> NodeBatch:
        """The batch (in `batches`, by node name) of the node serving `slot`, made on first use."""
        node = self.node_for_slot(slot, what)
        batch = batches.get(node.name)
        if batch is None:
            batch = batches[node.name] = NodeBatch(node)
        return batch

    def round_trip(self, tag: str, nkeys: int, plan: Callable[[dict], None]) -> list[tuple[Any, Any]]:
        """Build per-node batches with `plan(batches)`, write them all, then read all replies.

        Returns `(ticket, reply)` for every command whose ticket is not None."""
        for attempt in (0, 1):
            if self.stale:
                self.refresh(f"table {tag}")
            batches: dict[str, NodeBatch] = {}
            plan(batches)
            try:
                return self._exchange(tag, nkeys, batches)
            except _Redirect as exc:
                self.stale = True
                if attempt:
                    raise BackendError(f"redis_cluster: table {tag}: slots keep moving ({nkeys} keys): "
                                       f"{exc}") from exc
        raise AssertionError("unreachable")

    def _exchange(self, tag: str, nkeys: int, batches: dict[str, NodeBatch]) -> list[tuple[Any, Any]]:
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
        with self.gate:
            try:
                now = time.monotonic()
                for name, batch in batches.items():  # write every node's pipeline first
                    down = self._down.get(name)
                    if down is not None and now < down[0]:
                        failed[name] = f"{down[1]} (not retried for another {down[0] - now:.2f} s)"
                        skipped.add(name)
                        continue
                    try:
                        conn = checkout(batch.node.redis_connection.connection_pool)
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
                            for msg in read_hmget(conn, batches[name].sink, exc_mod.ConnectionError):
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
            self.stale = True
            detail = "; ".join(f"node {n}: {m}" for n, m in failed.items())
            raise BackendError(f"redis_cluster: table {tag}: {len(failed)} of {len(batches)} node(s) "
                               f"failed ({nkeys} keys): {detail}")
        if errors:
            self.stale = self.stale or cluster_down
            raise BackendError(f"redis_cluster: table {tag} ({nkeys} keys): " + "; ".join(errors[:3]))
        if redirect is not None:
            raise _Redirect(redirect)
        return out

