"""A real, throw-away Redis Cluster on 127.0.0.1 for tests and benchmarks (no mocks).

    with redis_cluster(masters=3) as cluster:
        cluster.address           # "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
        cluster.kill(0)           # SIGKILL master 0 (its slots stay assigned to it)
        cluster.restart(0)        # start it again from the same dir / nodes.conf; it rejoins
        cluster.pause(1); cluster.resume(1)   # SIGSTOP / SIGCONT: a hung node
        cluster.wait_ok()         # every running master reports cluster_state:ok
        cluster.flushall()
        cluster.master_of_slot(s) # index of the master that was given slot s at creation

    with redis_cluster(masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        cluster.wait_replicated() # every replica has its master's writes so far
        cluster.kill(0)           # node 3 (master 0's replica) takes over master 0's slots
        cluster.wait_failover(0)  # ... returns once it serves them as a master

    with redis_cluster(masters=1, tls=True) as cluster:   # TLS-only ports, TLS cluster bus
        cluster.tls_files         # {"ca": ca.crt, "cert": redis.crt, "key": redis.key}, CN redis.localhost

Needs Debian's `redis-server` on PATH (package redis-server); `redis_server_available()` says
whether it is there, so tests can skip with a clear reason. Masters are started as child
processes (no --daemonize) on fresh random ports whose cluster-bus port (+10000) is free too,
with persistence off; slots are split evenly with CLUSTER ADDSLOTSRANGE and the nodes are
joined with CLUSTER MEET. Startup takes about 2 s (Redis delays a new master's `ok` state).
With `replicas=r`, nodes masters..masters*(1+r)-1 are replicas: node masters*k + i replicates
master i (CLUSTER REPLICATE), and startup waits until each has synced.

pytest: `from tests.redis_cluster_fixture import redis_cluster_module` gives a ready
module-scoped fixture (3 masters; skips when redis-server is missing); or write your own:

    @pytest.fixture(scope="module")
    def cluster():
        with redis_cluster(3) as c:
            yield c
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

NUM_SLOTS = 16384


def redis_server_available() -> bool:
    """True when a `redis-server` binary is on PATH."""
    return shutil.which("redis-server") is not None


def make_test_certificates(directory: str | Path) -> dict[str, str]:
    """A throw-away CA and a certificate it signed for CN redis.localhost (EC P-256, 2 days), made
    with the openssl CLI; returns the paths {"ca", "cert", "key"} (cert/key serve as client too)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=hps-test-ca")
    run("req", *ec, "-keyout", "redis.key", "-out", "redis.csr", "-subj", "/CN=redis.localhost")
    run("x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "redis.crt", "-days", "2")
    return {"ca": str(d / "ca.crt"), "cert": str(d / "redis.crt"), "key": str(d / "redis.key")}


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _fresh_ports(count: int) -> list[int]:
    """`count` random ports in [20000, 45000) whose cluster-bus ports (+10000) are free too."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    ports: list[int] = []
    while len(ports) < count:
        p = rng.randrange(20000, 45000)
        if p in ports or p + 10000 in ports or p - 10000 in ports:
            continue
        if _port_free(p) and _port_free(p + 10000):
            ports.append(p)
    return ports


class RedisClusterProcesses:
    """A running local cluster of `masters` redis-server masters and `replicas` replicas of each."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 5000, directory: str | None = None,
                 tls: bool = False, replicas: int = 0) -> None:
        if masters < 1:
            raise ValueError(f"a cluster needs at least one master, got {masters}")
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server redis-tools)")
        self._exe = exe
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="hps-rcluster-"))
        self.node_timeout_ms = node_timeout_ms
        self.masters = masters
        total = masters * (1 + replicas)
        self.ports = _fresh_ports(total)
        self._procs: list[subprocess.Popen | None] = [None] * total
        self.tls_files: dict[str, str] | None = None
        try:
            if tls:
                self.tls_files = make_test_certificates(self.dir / "tls")
            for i in range(total):
                self._spawn(i)
            self._wait_ping(range(total))
            self._create()
            self.wait_ok()
            if replicas:
                self._replicate()
        except BaseException:
            self.close()
            raise

    # -- addresses -------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """Seed list in ps.json form: "127.0.0.1:p1,127.0.0.1:p2,..." (the masters)."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports[:self.masters])

    def master_of_slot(self, slot: int | np.ndarray) -> int | np.ndarray:
        """Index of the master that was given `slot` (int or array of ints) at creation."""
        return np.asarray(slot) * self.masters // NUM_SLOTS if not isinstance(slot, int) else \
            slot * self.masters // NUM_SLOTS

    def node_name(self, i: int) -> str:
        """"127.0.0.1:<port>" of master `i`."""
        return f"127.0.0.1:{self.ports[i]}"

    def client(self, i: int, **kwargs):
        """A plain redis-py client of master `i` (no cluster routing)."""
        import redis

        if self.tls_files is not None:
            kwargs = {"ssl": True, "ssl_ca_certs": self.tls_files["ca"], "ssl_check_hostname": False, **kwargs}
        return redis.Redis(host="127.0.0.1", port=self.ports[i], **kwargs)

    # -- process control ---------------------------------------------------------------------
    def _spawn(self, i: int) -> None:
        port = self.ports[i]
        node_dir = self.dir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        if self.tls_files is None:
            listen = ["--port", str(port)]
        else:
            t = self.tls_files
            listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", t["cert"], "--tls-key-file", t["key"],
                      "--tls-ca-cert-file", t["ca"], "--tls-cluster", "yes", "--tls-auth-clients", "optional"]
        args = [self._exe, *listen, "--bind", "127.0.0.1", "--protected-mode", "yes",
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-replica-validity-factor", "0",
                "--repl-diskless-sync-delay", "0",
                "--dir", str(node_dir),
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--logfile", str(node_dir / "redis.log")]
        self._procs[i] = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)

    def pid(self, i: int) -> int:
        """Process id of master `i` (it must be running)."""
        proc = self._procs[i]
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"master {i} ({self.node_name(i)}) is not running")
        return proc.pid

    def kill(self, i: int) -> None:
        """SIGKILL master `i` and wait for it to exit (its port refuses connections at once)."""
        proc = self._procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self._procs[i] = None

    def restart(self, i: int, wait: bool = True) -> None:
        """Start master `i` again from its directory (same nodes.conf: same id, same slots).

        With `wait`, returns once it answers PING (not necessarily cluster_state:ok yet)."""
        self.kill(i)
        self._spawn(i)
        if wait:
            self._wait_ping([i])

    def pause(self, i: int) -> None:
        """SIGSTOP master `i`: it accepts connections but never answers (a hung node)."""
        os.kill(self.pid(i), signal.SIGSTOP)

    def resume(self, i: int) -> None:
        """SIGCONT master `i` after `pause`."""
        os.kill(self.pid(i), signal.SIGCONT)

    # -- cluster setup ---------------------------------------------------------------------------
    def _wait_ping(self, which, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        for i in which:
            c = self.client(i, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                while True:
                    try:
                        if c.ping():
                            break
                    except Exception:
                        if self._procs[i] is None or self._procs[i].poll() is not None:
                            raise RuntimeError(f"redis-server {self.node_name(i)} exited; see "
                                               f"{self.dir / str(self.ports[i]) / 'redis.log'}")
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"redis-server {self.node_name(i)} did not answer PING "
                                               f"within {timeout_s} s")
                        time.sleep(0.02)
            finally:
                c.close()

    def _create(self) -> None:
        n = self.masters
        bounds = [NUM_SLOTS * i // n for i in range(n + 1)]
        clients = [self.client(i) for i in range(len(self.ports))]
        try:
            for i, c in enumerate(clients[:n]):
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
            for c in clients[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0])
        finally:
            for c in clients:
                c.close()

    def _replicate(self, timeout_s: float = 30.0) -> None:
        """CLUSTER REPLICATE every replica to its master, then wait until each has synced."""
        ids = []
        for i in range(self.masters):
            c = self.client(i)
            try:
                ids.append(c.execute_command("CLUSTER", "MYID"))
            finally:
                c.close()
        deadline = time.monotonic() + timeout_s
        for i in range(self.masters, len(self.ports)):
            c = self.client(i, socket_timeout=2)
            try:
                c.execute_command("CLUSTER", "REPLICATE", ids[i % self.masters])
            finally:
                c.close()
        for i in range(self.masters, len(self.ports)):
            c = self.client(i, socket_timeout=2)
            try:
                while c.info("replication").get("master_link_status") != "up":
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"replica {self.node_name(i)} did not sync within {timeout_s} s")
                    time.sleep(0.05)
            finally:
                c.close()

    def wait_replicated(self, timeout_s: float = 10.0) -> None:
        """Wait until every running replica has applied all its master's writes so far
        (replication is asynchronous: a master killed earlier loses what its replicas lacked)."""
        deadline = time.monotonic() + timeout_s
        for m in range(self.masters):
            if self._procs[m] is None:
                continue
            c = self.client(m)
            try:
                offset = c.info("replication")["master_repl_offset"]
            finally:
                c.close()
            for i in range(self.masters + m, len(self.ports), self.masters):
                if self._procs[i] is None:
                    continue
                r = self.client(i)
                try:
                    while r.info("replication").get("slave_repl_offset", -1) < offset:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"replica {self.node_name(i)} did not catch up within {timeout_s} s")
                        time.sleep(0.02)
                finally:
                    r.close()

    def wait_failover(self, master: int, timeout_s: float = 30.0) -> int:
        """After `kill(master)`: wait until one of its replicas serves its slots; returns its index."""
        deadline = time.monotonic() + timeout_s
        while True:
            for i in range(self.masters + master % self.masters, len(self.ports), self.masters):
                if self._procs[i] is None:
                    continue
                c = self.client(i, socket_timeout=0.5, socket_connect_timeout=0.5)
                try:
                    role = c.execute_command("ROLE")[0]
                    info = c.execute_command("CLUSTER", "INFO")
                    if role == b"master" and b"cluster_state:ok" in info:
                        return i
                except Exception:
                    pass
                finally:
                    c.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica of master {master} took over within {timeout_s} s")
            time.sleep(0.05)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Wait until every running master says cluster_state:ok and knows all masters."""
        deadline = time.monotonic() + timeout_s
        running = [i for i, p in enumerate(self._procs) if p is not None and p.poll() is None]
        for i in running:
            c = self.client(i, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                while True:
                    try:
                        info = c.execute_command("CLUSTER", "INFO")
                        info = info.decode() if isinstance(info, bytes) else str(info)
                        known = int(info.split("cluster_known_nodes:")[1].split()[0])
                        if "cluster_state:ok" in info and known == len(self.ports):
                            break
                    except Exception:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"cluster node {self.node_name(i)} not ok within {timeout_s} s")
                    time.sleep(0.05)
            finally:
                c.close()

    def flushall(self) -> None:
        """FLUSHALL on every running master (replicas follow)."""
        for i, p in enumerate(self._procs):
            if p is not None and p.poll() is None:
                c = self.client(i)
                try:
                    c.flushall()
                except Exception as exc:  # a replica refuses writes (READONLY): its master flushes it
                    if "READONLY" not in str(exc) and "read only" not in str(exc):
                        raise
                finally:
                    c.close()

    def close(self) -> None:
        """Stop every master (SIGTERM, then SIGKILL after 5 s) and remove the directory."""
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                except OSError:
                    pass
                proc.terminate()
        for i, proc in enumerate(self._procs):
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            self._procs[i] = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisClusterProcesses":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def redis_cluster(masters: int = 3, node_timeout_ms: int = 5000, tls: bool = False,
                  replicas: int = 0) -> Iterator[RedisClusterProcesses]:
    """Start a local `masters`-node Redis Cluster (TLS-only with `tls`, `replicas` replicas per master),
    yield it, stop it and remove its files."""
    cluster = RedisClusterProcesses(masters, node_timeout_ms=node_timeout_ms, tls=tls, replicas=replicas)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def redis_cluster_module() -> Iterator[RedisClusterProcesses]:
    """Module-scoped 3-master cluster; skips the module's tests when redis-server is missing."""
    if not redis_server_available():
        pytest.skip("redis-server is not on PATH (apt-get install redis-server redis-tools)")
    with redis_cluster(3) as cluster:
        yield cluster
