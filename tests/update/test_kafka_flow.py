"""Publisher → real tansu broker → KafkaUpdateSource → a real hash-map tier, exact values."""

from __future__ import annotations

import logging
import struct
import threading
import time

import numpy as np
import pytest

from hps.config import HashMapConfig, KafkaConfig
from hps.errors import BackendError
from hps.config.tags import make_tag
from hps.storage.partition import partition_of
from hps.update import persistent_group_id, volatile_group_id
from hps.update.message import decode_message, encode_messages
from hps.update.publisher import KafkaPublisher
from hps.update.source import KafkaUpdateSource, select_topics
from tests.kafka_fixture import TEST_CONSUMER_CONFIG, kafka_brokers  # noqa: F401  (fixture)

pytestmark = pytest.mark.kafka
confluent_kafka = pytest.importorskip("confluent_kafka")

MODEL, TABLE, DIM = "m", "t", 8
TAG = make_tag(MODEL, TABLE)


def _source_config(brokers: str, **kw: int) -> KafkaConfig:
    params = dict(poll_timeout_ms=50, max_batch_size=400, failure_backoff_ms=20, max_commit_interval=16)
    params.update(kw)
    return KafkaConfig(brokers=brokers, **params)


class Tier:
    """A hash-map tier with an apply() that the source calls; optional failure injection."""

    def __init__(self) -> None:
        from hps.storage.hash_map import HashMapBackend

        self.backend = HashMapBackend(HashMapConfig(num_partitions=2))
        self.calls: list[tuple[str, int, int]] = []
        self.fail_after: int | None = None   # raise on every call once this many calls succeeded
        self.fail_once = False
        self._lock = threading.Lock()

    def apply(self, tag: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        assert keys.dtype == np.int64 and vectors.dtype == np.float32 and vectors.shape == (len(keys), vectors.shape[1])
        with self._lock:
            if self.fail_once:
                self.fail_once = False
                raise BackendError("tier down (injected, once)")
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise BackendError("tier down (injected)")
            self.backend.create_table(tag, vectors.shape[1])
            self.backend.insert_or_assign(tag, keys, vectors)
            self.calls.append((tag, len(keys), vectors.shape[1]))

    def matches(self, keys: np.ndarray, vectors: np.ndarray, tag: str = TAG) -> bool:
        if tag not in self.backend.tables():
            return False
        got, found = self.backend.find(tag, keys)
        return bool(found.all() and np.array_equal(got, vectors))


def _wait(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def _versions(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = rng.choice(np.arange(-10**6, 10**6, dtype=np.int64), size=n, replace=False)
    v1 = rng.standard_normal((n, DIM)).astype(np.float32)
    v2 = v1 + 100.0
    return keys, v1, v2


def _source(brokers: str, tier: Tier, group: str = "g", **kw: int) -> KafkaUpdateSource:
    return KafkaUpdateSource(_source_config(brokers, **kw), group_id=group, update_filters=(".+",), tags=[TAG],
                             apply=tier.apply, consumer_config=TEST_CONSUMER_CONFIG)


def test_select_topics_and_group_ids() -> None:
    tags = ["hps_et.a.t0", "hps_et.a.t1", "hps_et.b.x", "hps_et.hps_c.y"]
    assert select_topics(tags, [".+"]) == sorted(tags)
    assert select_topics(tags, ["^hps_.+$"]) == sorted(tags)      # HugeCTR's default: every table here
    assert select_topics(tags, ["^a$"]) == ["hps_et.a.t0", "hps_et.a.t1"]
    assert select_topics(tags, ["b", "hps_c"]) == ["hps_et.b.x", "hps_et.hps_c.y"]
    assert select_topics(tags, ["a|b"]) == ["hps_et.a.t0", "hps_et.a.t1", "hps_et.b.x"]
    assert select_topics(tags, []) == []
    assert volatile_group_id(True, "h1") == "hps.volatile"
    assert volatile_group_id(False, "h1") == "hps.volatile.h1"
    assert persistent_group_id("h1") == "hps.persistent.h1"


def test_publish_routes_key_groups_and_applies_exact_values(kafka_brokers: str) -> None:
    keys, v1, v2 = _versions(3000)
    with KafkaPublisher(kafka_brokers, num_key_groups=8, send_buffer_bytes=2048) as pub:
        assert pub.publish(MODEL, TABLE, keys, v1) > 8
        pub.publish(MODEL, TABLE, keys[::3], v2[::3])
        pub.flush()
        assert pub.partition_count(TAG) == 8

    # Raw check of the wire: no Kafka key, HCTR payloads, key group g on partition g % 8.
    raw = confluent_kafka.Consumer({"bootstrap.servers": kafka_brokers, "group.id": "raw",
                                    "enable.partition.eof": True, "enable.auto.commit": False})
    raw.assign([confluent_kafka.TopicPartition(TAG, p, confluent_kafka.OFFSET_BEGINNING) for p in range(8)])
    eof: set[int] = set()
    seen = 0
    deadline = time.monotonic() + 20
    while len(eof) < 8 and time.monotonic() < deadline:
        msg = raw.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            eof.add(msg.partition())
            continue
        assert msg.key() is None and len(msg.value()) <= 2048
        k, v = decode_message(msg.value())
        assert v.shape[1] == DIM
        assert (partition_of(k, 8) == msg.partition()).all()
        seen += len(k)
    raw.close()
    assert seen == 3000 + 1000

    tier = Tier()
    with _source(kafka_brokers, tier) as source:
        final = v1.copy()
        final[::3] = v2[::3]
        assert _wait(lambda: tier.matches(keys, final)), source.stats
        assert source.wait_until_idle(20)
    assert max(n for _, n, _ in tier.calls) <= 400 + 2048 // (8 + 4 * DIM)


def test_at_least_once_after_consumer_stops_mid_stream(kafka_brokers: str) -> None:
    keys, v1, v2 = _versions(4000, seed=2)
    with KafkaPublisher(kafka_brokers, send_buffer_bytes=1024) as pub:
        pub.publish(MODEL, TABLE, keys, v1)
        pub.publish(MODEL, TABLE, keys, v2)
        total_messages = pub.messages_sent
    tier = Tier()
    tier.fail_after = 3                      # the tier "goes down" after 3 batches
    first = _source(kafka_brokers, tier, group="alo").start()
    assert _wait(lambda: first.stats["apply_failures"] > 0)
    first.close()                            # stopped while retrying: the failing batch is not committed
    applied_before = sum(n for _, n, _ in tier.calls)
    assert 0 < applied_before < 8000
    assert not tier.matches(keys, v2)

    tier.fail_after = None
    with _source(kafka_brokers, tier, group="alo") as second:
        assert _wait(lambda: tier.matches(keys, v2)), second.stats
    assert first.stats["commits"] > 0
    assert second.stats["messages"] < total_messages   # resumed from the committed offsets, not from 0


def test_malformed_messages_are_skipped_and_logged(kafka_brokers: str, caplog: pytest.LogCaptureFixture) -> None:
    good1 = encode_messages(np.array([1, 2], np.int64), np.ones((2, DIM), np.float32))[0]
    good2 = encode_messages(np.array([2, 3], np.int64), np.full((2, DIM), 2.0, np.float32))[0]
    bad = [b"XCTR" + good1[4:],                                      # bad magic
           good1[:-3],                                               # truncated pair
           b"HCTR" + struct.pack("<I", 6) + bytes(14),               # value_size not a multiple of 4
           b"HCT"]                                                   # shorter than the header
    with KafkaPublisher(kafka_brokers) as pub:
        pub.partition_count(TAG)
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka_brokers})
    producer.produce(TAG, value=good1, partition=0)
    for payload in bad:
        producer.produce(TAG, value=payload, partition=0)
    producer.produce(TAG, value=good1, key=b"k", partition=0)        # keyed: HugeCTR discards these
    producer.produce(TAG, value=b"HCTR" + struct.pack("<I", 4 * DIM), partition=0)  # beacon
    producer.produce(TAG, value=good2, partition=0)
    assert producer.flush(10) == 0

    tier = Tier()
    caplog.set_level(logging.DEBUG, logger="hps.update.source")  # each message named at DEBUG
    with _source(kafka_brokers, tier, group="bad") as source:
        expected = np.array([[1.0] * DIM, [2.0] * DIM, [2.0] * DIM], np.float32)
        assert _wait(lambda: tier.matches(np.array([1, 2, 3]), expected)), source.stats
        assert source.wait_until_idle(20)
        assert source.stats["messages_skipped"] == 5
        assert source.stats["skipped_malformed"] == 4 and source.stats["skipped_kafka_key"] == 1
    text = caplog.text
    for offset, what in [(1, "bad magic"), (2, "truncated pair"), (3, "value_size 6"), (4, "shorter"),
                         (5, "Kafka key")]:
        assert f"topic {TAG} partition 0 offset {offset}: " in text and what in text


def test_apply_failure_is_retried_and_nothing_is_lost(kafka_brokers: str) -> None:
    keys, v1, _ = _versions(1000, seed=3)
    with KafkaPublisher(kafka_brokers, send_buffer_bytes=4096) as pub:
        pub.publish(MODEL, TABLE, keys, v1)
    tier = Tier()
    tier.fail_once = True
    with _source(kafka_brokers, tier, group="retry") as source:
        assert _wait(lambda: tier.matches(keys, v1)), source.stats
        assert source.stats["apply_failures"] == 1
        assert source.stats["pairs_applied"] == 1000


def test_value_size_change_flushes_the_buffer_first(kafka_brokers: str) -> None:
    with KafkaPublisher(kafka_brokers, num_key_groups=1) as pub:
        pub.publish(MODEL, TABLE, np.array([1, 2]), np.ones((2, 4), np.float32))
        pub.publish(MODEL, TABLE, np.array([3]), np.ones((1, 8), np.float32))
    seen: list[tuple[int, int]] = []
    source = KafkaUpdateSource(_source_config(kafka_brokers), group_id="vs", update_filters=(".+",), tags=[TAG],
                               apply=lambda tag, k, v: seen.append((len(k), v.shape[1])),
                               consumer_config=TEST_CONSUMER_CONFIG)
    with source:
        assert _wait(lambda: len(seen) == 2)
    assert seen == [(2, 4), (1, 8)]


def test_last_update_of_a_key_wins_within_a_batch(kafka_brokers: str) -> None:
    keys = np.array([5, 6, 5, 5, 6], np.int64)
    vectors = np.arange(5 * DIM, dtype=np.float32).reshape(5, DIM)
    with KafkaPublisher(kafka_brokers) as pub:
        pub.publish(MODEL, TABLE, keys, vectors)
    tier = Tier()
    with _source(kafka_brokers, tier, group="dup"):
        assert _wait(lambda: tier.matches(np.array([5, 6]), vectors[[3, 4]]))


def _replay(path, tier: Tier) -> int:
    """Apply the complete records of a consumer_proc log file to `tier`; returns pairs replayed."""
    data = path.read_bytes() if path.exists() else b""
    pos = total = 0
    while pos + 16 <= len(data):
        n, dim = np.frombuffer(data, np.int64, 2, pos)
        end = pos + 16 + 8 * n + 4 * n * dim
        if end > len(data):
            break  # torn last record: it was never committed, the next consumer re-applies it
        keys = np.frombuffer(data, np.int64, n, pos + 16)
        vectors = np.frombuffer(data, np.float32, n * dim, pos + 16 + 8 * n).reshape(n, dim)
        tier.apply(TAG, keys.copy(), vectors.copy())
        pos, total = end, total + int(n)
    return total


def test_at_least_once_after_consumer_process_is_killed(kafka_brokers: str, tmp_path) -> None:
    """SIGKILL a consumer process mid-stream, restart it (a new process of the same group), SIGKILL
    it again, then finish in-process: every update arrives; each process resumes from the offsets
    the one before it committed."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    keys, v1, v2 = _versions(3000, seed=4)
    with KafkaPublisher(kafka_brokers, send_buffer_bytes=1024) as pub:
        pub.publish(MODEL, TABLE, keys, v1)
        pub.publish(MODEL, TABLE, keys, v2)
    root = Path(__file__).resolve().parents[2]
    tier = Tier()
    replayed = []
    for run in range(2):
        log_file = tmp_path / f"applied-{run}.bin"  # one file per process: a kill may tear its last record
        proc = subprocess.Popen([sys.executable, "-m", "tests.update.consumer_proc", "log", kafka_brokers, "kill",
                                 TAG, str(log_file)], cwd=root, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            assert _wait(lambda: log_file.exists() and log_file.stat().st_size > 3 * (8 + 4 * DIM) * 100)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        replayed.append(_replay(log_file, tier))
    assert 0 < replayed[0] < 6000 and 0 < replayed[1] < 6000
    with _source(kafka_brokers, tier, group="kill") as last:
        assert _wait(lambda: tier.matches(keys, v2)), last.stats
        assert last.wait_until_idle(20)
    assert last.stats["pairs_applied"] < 6000 and last.stats["messages_skipped"] == 0  # resumed, nothing skipped


def test_publish_sparse_model_and_npy(kafka_brokers: str, tmp_path) -> None:
    from hps.model_format import write_sparse_model
    from hps.update.publisher import publish_npy, publish_sparse_model

    keys, v1, v2 = _versions(1500, seed=5)
    write_sparse_model(tmp_path / "t.model", keys, v1)
    progress: list[tuple[int, int]] = []
    assert publish_sparse_model(kafka_brokers, MODEL, TABLE, tmp_path / "t.model", DIM, chunk_rows=500,
                                progress=lambda done, total: progress.append((done, total))) == 1500
    assert progress == [(500, 1500), (1000, 1500), (1500, 1500)]
    np.save(tmp_path / "k.npy", keys[:700].astype(np.int32))  # int32 keys are widened
    np.save(tmp_path / "v.npy", v2[:700])
    assert publish_npy(kafka_brokers, MODEL, TABLE, tmp_path / "k.npy", tmp_path / "v.npy", chunk_rows=256) == 700
    final = v1.copy()
    final[:700] = v2[:700]
    tier = Tier()
    with _source(kafka_brokers, tier, group="files") as source:
        assert _wait(lambda: tier.matches(keys, final)), source.stats


def test_set_tags_subscribes_to_a_hot_added_table(kafka_brokers: str) -> None:
    other = make_tag("m2", "t")
    tier = Tier()
    with KafkaPublisher(kafka_brokers) as pub:
        pub.publish(MODEL, TABLE, np.array([1]), np.ones((1, DIM), np.float32))
        pub.publish("m2", "t", np.array([2]), np.full((1, DIM), 2.0, np.float32))
    with _source(kafka_brokers, tier, group="hot") as source:
        assert _wait(lambda: tier.matches(np.array([1]), np.ones((1, DIM), np.float32)))
        assert other not in tier.backend.tables()
        source.set_tags([TAG, other])
        assert source.topics == sorted([TAG, other])
        assert _wait(lambda: tier.matches(np.array([2]), np.full((1, DIM), 2.0, np.float32), tag=other))
