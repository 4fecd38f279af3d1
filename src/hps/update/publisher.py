"""Publish embedding updates to Kafka in HugeCTR's format, for trainers and `hps publish`.

Same wire behaviour as HugeCTR's `KafkaMessageSink` (reference §2.12): topic
`hps_et.<model>.<table>`, pairs grouped into `num_key_groups` key groups by
`rrxmrrxmsx_0(key) % num_key_groups`, key group g sent to Kafka partition
`g % partition_count`, messages of at most `send_buffer_bytes`, no Kafka message key.
Every key group lands on one partition, so the updates of one key stay in order.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import numpy as np

from hps.errors import UpdateError, require
from hps.storage.base import make_tag
from hps.storage.partition import partition_of
from hps.update.message import encode_messages



class KafkaPublisher:
    """A producer of HCTR update messages.

    `brokers`: librdkafka bootstrap list ("host:port,host:port"; ';' is accepted as HugeCTR's docs
    write it). `producer_config`: extra librdkafka properties with '_' for '.', or a dict passed
    as `config={...}` (e.g. `config={"linger.ms": 0}`). Idempotence is on by default so retries
    cannot reorder the updates of a key.
    """

    def __init__(self, brokers: str, *, num_key_groups: int = 8, send_buffer_bytes: int = 262144,
                 key_dtype: str = "int64", config: dict[str, Any] | None = None, **producer_config: Any) -> None:
        kafka = require("confluent_kafka", "kafka")
        admin = require("confluent_kafka.admin", "kafka")
        if num_key_groups < 1:
            raise UpdateError(f"KafkaPublisher: num_key_groups must be >= 1, got {num_key_groups}")
        self.brokers = brokers.replace(";", ",")
        self.num_key_groups = int(num_key_groups)
        self.send_buffer_bytes = int(send_buffer_bytes)
        self.key_dtype = key_dtype
        conf: dict[str, Any] = {
            "bootstrap.servers": self.brokers,
            "enable.idempotence": True,
            "message.max.bytes": self.send_buffer_bytes + 1024,
            "linger.ms": 2,
        }
        conf.update({k.replace("_", "."): v for k, v in producer_config.items()})
        conf.update(config or {})
        self._kafka = kafka
        self._admin_mod = admin
        self._producer = kafka.Producer(conf)
        self._admin = admin.AdminClient({"bootstrap.servers": self.brokers})
        self._partitions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._closed = False
        self.messages_sent = 0
        self.pairs_sent = 0

    # -- topics ---------------------------------------------------------------------------------------
    def partition_count(self, topic: str, timeout_s: float = 10.0) -> int:
        """Partitions of `topic`, creating it with `num_key_groups` partitions when missing."""
        count = self._partitions.get(topic)
        if count:
            return count
        deadline = time.monotonic() + timeout_s
        created = False
        while True:
            # all topics: a metadata request naming the topic would auto-create it with the broker's default
            meta = self._admin.list_topics(timeout=max(0.1, deadline - time.monotonic()))
            info = meta.topics.get(topic)
            if info is not None and info.error is None and info.partitions:
                self._partitions[topic] = len(info.partitions)
                return len(info.partitions)
            if not created:
                futures = self._admin.create_topics(
                    [self._admin_mod.NewTopic(topic, num_partitions=self.num_key_groups, replication_factor=1)])
                try:
                    futures[topic].result(timeout=max(0.1, deadline - time.monotonic()))
                except self._kafka.KafkaException as exc:
                    if exc.args[0].code() != self._kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                        raise UpdateError(f"cannot create Kafka topic {topic!r} on {self.brokers}: {exc}") from exc
                created = True
            if time.monotonic() > deadline:
                raise UpdateError(f"Kafka topic {topic!r} on {self.brokers} has no partitions after {timeout_s} s")
            time.sleep(0.05)

    # -- publishing -----------------------------------------------------------------------------------
    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(f"topic {msg.topic()} partition {msg.partition()}: {err}")

    def _produce(self, topic: str, partition: int, payload: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value=payload, partition=partition, on_delivery=self._on_delivery)
                return
            except BufferError:  # local queue full: let librdkafka send, then retry
                self._producer.poll(0.05)

    def publish(self, model_name: str, table_name: str, keys: np.ndarray, vectors: np.ndarray) -> int:
        """Queue updates `keys: (n,) int64 → vectors: (n, dim) float32` of table `<model>.<table>`.

        Pairs are grouped by key group (order kept within a group), encoded into messages of at most
        `send_buffer_bytes`, and produced to `hps_et.<model>.<table>`. Returns the number of
        messages queued; call `flush()` to wait for the broker's acknowledgements."""
        if self._closed:
            raise UpdateError("KafkaPublisher is closed")
        keys = np.asarray(keys)
        vectors = np.asarray(vectors, dtype=np.float32)
        if keys.ndim != 1 or vectors.ndim != 2 or vectors.shape[0] != keys.shape[0]:
            raise UpdateError(f"publish {model_name}.{table_name}: keys must be (n,) and vectors (n, dim); "
                              f"got keys {keys.shape}, vectors {vectors.shape}")
        if keys.dtype.kind not in "iu":
            raise UpdateError(f"publish {model_name}.{table_name}: keys must be integers, got {keys.dtype}")
        keys = keys.astype(np.int64, copy=False)
        if keys.shape[0] == 0:
            return 0
        topic = make_tag(model_name, table_name)
        count = self.partition_count(topic)
        groups = partition_of(keys, self.num_key_groups)
        order = np.argsort(groups, kind="stable")
        bounds = np.searchsorted(groups[order], np.arange(self.num_key_groups + 1))
        sent = 0
        for g in range(self.num_key_groups):
            sel = order[bounds[g]:bounds[g + 1]]
            if sel.size == 0:
                continue
            for payload in encode_messages(keys[sel], vectors[sel], self.send_buffer_bytes, self.key_dtype):
                self._produce(topic, g % count, payload)
                sent += 1
        self._producer.poll(0)
        self.messages_sent += sent
        self.pairs_sent += int(keys.shape[0])
        return sent

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued message is acknowledged; `UpdateError` on failures or timeout."""
        if self._producer is None:
            raise UpdateError("KafkaPublisher is closed")
        remaining = self._producer.flush(timeout_s)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise UpdateError(f"{len(errors)} update message(s) to {self.brokers} failed, first: {errors[0]}")
        if remaining:
            raise UpdateError(f"{remaining} update message(s) to {self.brokers} still unacknowledged "
                              f"after {timeout_s} s")

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush, then release the producer; later `publish` calls raise `UpdateError`."""
        if self._closed:
            return
        try:
            self.flush(timeout_s)
        finally:
            self._closed = True
            close = getattr(self._producer, "close", None)  # confluent-kafka >= 2.5
            if close is not None:
                close()
            self._producer = self._admin = None

    def __enter__(self) -> "KafkaPublisher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _report(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def publish_sparse_model(brokers: str, model_name: str, table_name: str, sparse_model_dir: str | os.PathLike,
                         dim: int, *, chunk_rows: int = 65536, num_key_groups: int = 8,
                         send_buffer_bytes: int = 262144, progress: Callable[[int, int], None] | None = None,
                         **producer_config: Any) -> int:
    """Publish every row of a sparse model directory (`key` int64, `emb_vector` float32[dim]) as
    updates of `hps_et.<model>.<table>`, in `chunk_rows` chunks. `progress(done_rows, total_rows)`
    is called after each chunk. Returns the number of rows published (after a successful flush)."""
    from hps.model_format import SparseModel

    model = SparseModel(sparse_model_dir, dim)
    total = int(model.num_rows)
    done = 0
    with KafkaPublisher(brokers, num_key_groups=num_key_groups, send_buffer_bytes=send_buffer_bytes,
                        **producer_config) as pub:
        for keys, vectors in model.iter_chunks(chunk_rows):
            pub.publish(model_name, table_name, np.asarray(keys), np.asarray(vectors))
            done += int(len(keys))
            _report(progress, done, total)
    return done


def publish_npy(brokers: str, model_name: str, table_name: str, keys_npy: str | os.PathLike,
                vectors_npy: str | os.PathLike, *, chunk_rows: int = 65536, num_key_groups: int = 8,
                send_buffer_bytes: int = 262144, progress: Callable[[int, int], None] | None = None,
                **producer_config: Any) -> int:
    """Publish `keys_npy: (n,) int64|int32` and `vectors_npy: (n, dim) float32` (.npy files, memory
    mapped) as updates of `hps_et.<model>.<table>`. Returns the number of rows published."""
    keys = np.load(keys_npy, mmap_mode="r")
    vectors = np.load(vectors_npy, mmap_mode="r")
    if keys.ndim != 1 or vectors.ndim != 2 or keys.shape[0] != vectors.shape[0]:
        raise UpdateError(f"publish_npy: {keys_npy} must be (n,) and {vectors_npy} (n, dim); "
                          f"got {keys.shape} and {vectors.shape}")
    total = int(keys.shape[0])
    with KafkaPublisher(brokers, num_key_groups=num_key_groups, send_buffer_bytes=send_buffer_bytes,
                        **producer_config) as pub:
        for start in range(0, total, chunk_rows):
            stop = min(total, start + chunk_rows)
            pub.publish(model_name, table_name, np.asarray(keys[start:stop]), np.asarray(vectors[start:stop]))
            _report(progress, stop, total)
    return total
