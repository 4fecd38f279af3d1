"""Publish embedding updates to Kafka in HugeCTR's format, for trainers and `hps publish`.

Same wire behaviour as HugeCTR's `KafkaMessageSink` (reference §2.12): topic
`hps_et.<model>.<table>`, pairs grouped into `num_key_groups` key groups by
`rrxmrrxmsx_0(key) % num_key_groups`, key group g sent to Kafka partition
`g % partition_count`, messages of at most `send_buffer_bytes`, no Kafka message key.
Every key group lands on one partition, so the updates of one key stay in order.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

import numpy as np

from hps.errors import UpdateError, require
from hps.config.tags import make_tag
from hps.storage.partition import partition_of
from hps.update.kafka_client import client_logging, make_client
from hps.update.message import encode_messages

log = logging.getLogger(__name__)

#: How long a message may wait for the broker's acknowledgement before it is reported as failed
#: (librdkafka `message.timeout.ms`; its own default is 5 minutes).
MESSAGE_TIMEOUT_MS = 20000

#: How long the first contact with the brokers (a topic's metadata) may take.
CONNECT_TIMEOUT_S = 5.0

_SETTINGS = {"bootstrap.servers": "brokers", "message.max.bytes": "send_buffer_bytes",
             "message.timeout.ms": "message_timeout_ms"}


class KafkaPublisher:
    """A producer of HCTR update messages.

    `brokers`: librdkafka bootstrap list ("host:port,host:port"; ';' is accepted as HugeCTR's docs
    write it). `ps_config`: the serving side's ps.json (path, dict or `PsConfig`); when given,
    `publish` refuses a model or table that is not in it (a typo would otherwise create a new
    topic that nothing reads) and vectors whose dim is not the table's, and the key encoding follows
    its `supportlonglong`. `connect_timeout_s`: how long the first contact with the brokers may take
    before `UpdateError`; `message_timeout_ms`: how long a message may wait for its acknowledgement.
    `producer_config`: extra librdkafka properties with '_' for '.', or a dict passed as
    `config={...}` (e.g. `config={"linger.ms": 0}`). Idempotence is on by default so retries cannot
    reorder the updates of a key. librdkafka's own logs go to the `hps.update.publisher` logger;
    failures are `UpdateError`s that name the brokers, and a setting librdkafka refuses is a
    `ConfigError` naming it.
    """

    def __init__(self, brokers: str, *, num_key_groups: int = 8, send_buffer_bytes: int = 262144,
                 key_dtype: str | None = None, ps_config: Any = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, message_timeout_ms: int = MESSAGE_TIMEOUT_MS,
                 config: dict[str, Any] | None = None, **producer_config: Any) -> None:
        kafka = require("confluent_kafka", "kafka")
        admin = require("confluent_kafka.admin", "kafka")
        if num_key_groups < 1:
            raise UpdateError(f"KafkaPublisher: num_key_groups must be >= 1, got {num_key_groups}")
        self.ps_config = None
        self.config_name = ""
        if ps_config is not None:
            from hps.config import load_config

            self.ps_config = load_config(ps_config)
            self.config_name = str(ps_config) if isinstance(ps_config, (str, os.PathLike)) else "the ps config"
        self.brokers = brokers.replace(";", ",")
        self.num_key_groups = int(num_key_groups)
        self.send_buffer_bytes = int(send_buffer_bytes)
        self.key_dtype = key_dtype or (self.ps_config.key_dtype if self.ps_config is not None else "int64")
        self.connect_timeout_s = float(connect_timeout_s)
        producer_logging, self._producer_errors = client_logging(log, "publisher")
        admin_logging, self._admin_errors = client_logging(log, "publisher admin")
        conf: dict[str, Any] = {
            "bootstrap.servers": self.brokers,
            "enable.idempotence": True,
            "message.max.bytes": self.send_buffer_bytes + 1024,
            "message.timeout.ms": int(message_timeout_ms),
            "linger.ms": 2,
            **producer_logging,
        }
        conf.update({k.replace("_", "."): v for k, v in producer_config.items()})
        conf.update(config or {})
        self._kafka = kafka
        self._admin_mod = admin
        self._producer = make_client(kafka.Producer, conf, _SETTINGS, f"Kafka publisher to {self.brokers}")
        self._admin = make_client(admin.AdminClient, {"bootstrap.servers": self.brokers, **admin_logging},
                                  _SETTINGS, f"Kafka publisher to {self.brokers}")
        self._partitions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._closed = False
        self.messages_sent = 0
        self.pairs_sent = 0

    # -- checks ---------------------------------------------------------------------------------------
    def table_dim(self, model_name: str, table_name: str) -> int | None:
        """The dim of table `<model>.<table>` in `ps_config` (None without one).

        Raises `UpdateError` naming the table and the known tables when it is not there."""
        if self.ps_config is None:
            return None
        known = [f"{t.model_name}.{t.name}" for m in self.ps_config.models for t in m.tables]
        for model in self.ps_config.models:
            for table in model.tables:
                if model.name == model_name and table.name == table_name:
                    return int(table.dim)
        raise UpdateError(f"publish: table {model_name}.{table_name} is not in {self.config_name}; known tables: "
                          f"{', '.join(known) or 'none'} (the topic would be hps_et.{model_name}.{table_name}, "
                          f"which no server reads)")

    def _unreachable(self, what: str, exc: Any = None) -> str:
        seen = self._producer_errors.last or self._admin_errors.last
        reason = seen or (exc.args[0].str() if exc is not None and exc.args and hasattr(exc.args[0], "str")
                          else str(exc or "no answer"))
        return f"cannot reach Kafka broker {self.brokers}: {what}: {reason}"

    # -- topics ---------------------------------------------------------------------------------------
    def partition_count(self, topic: str, timeout_s: float | None = None) -> int:
        """Partitions of `topic`, creating it with `num_key_groups` partitions when missing.

        Raises `UpdateError` naming the brokers when they do not answer within `timeout_s`
        (default `connect_timeout_s`)."""
        count = self._partitions.get(topic)
        if count:
            return count
        if self._closed:
            raise UpdateError("KafkaPublisher is closed")
        timeout_s = self.connect_timeout_s if timeout_s is None else float(timeout_s)
        deadline = time.monotonic() + timeout_s
        created = False
        while True:
            # all topics: a metadata request naming the topic would auto-create it with the broker's default
            try:
                meta = self._admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            except self._kafka.KafkaException as exc:
                self._producer.poll(0)  # serves error_cb: the reason (e.g. connection refused)
                self._admin.poll(0)
                if time.monotonic() >= deadline:
                    raise UpdateError(self._unreachable(f"no metadata for topic {topic} within {timeout_s:g} s",
                                                        exc)) from None
                continue
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
                        raise UpdateError(f"cannot create Kafka topic {topic!r} on {self.brokers}: "
                                          f"{exc.args[0].str()}") from None
                except Exception as exc:  # concurrent.futures.TimeoutError
                    raise UpdateError(self._unreachable(f"creating topic {topic} took over {timeout_s:g} s",
                                                        exc)) from None
                created = True
            if time.monotonic() > deadline:
                raise UpdateError(f"Kafka topic {topic!r} on {self.brokers} has no partitions after {timeout_s:g} s")
            time.sleep(0.05)

    # -- publishing -----------------------------------------------------------------------------------
    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(f"topic {msg.topic()} partition {msg.partition()}: {err.str()}")

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
        messages queued; call `flush()` to wait for the broker's acknowledgements. With a
        `ps_config`, a table that is not in it or vectors of another dim raise `UpdateError`."""
        if self._closed:
            raise UpdateError("KafkaPublisher is closed")
        keys = np.asarray(keys)
        vectors = np.asarray(vectors, dtype=np.float32)
        if keys.ndim != 1 or vectors.ndim != 2 or vectors.shape[0] != keys.shape[0]:
            raise UpdateError(f"publish {model_name}.{table_name}: keys must be (n,) and vectors (n, dim); "
                              f"got keys {keys.shape}, vectors {vectors.shape}")
        if keys.dtype.kind not in "iu":
            raise UpdateError(f"publish {model_name}.{table_name}: keys must be integers, got {keys.dtype}")
        dim = self.table_dim(model_name, table_name)
        if dim is not None and vectors.shape[1] != dim:
            raise UpdateError(f"publish {model_name}.{table_name}: vectors have dim {vectors.shape[1]}, but the "
                              f"table has dim {dim} in {self.config_name}")
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
            seen = self._producer_errors.last
            raise UpdateError(f"{len(errors)} update message(s) to Kafka broker {self.brokers} failed, first: "
                              f"{errors[0]}" + (f" (last client error: {seen})" if seen else ""))
        if remaining:
            raise UpdateError(self._unreachable(f"{remaining} update message(s) still unacknowledged after "
                                                f"{timeout_s:g} s"))

    def abort(self) -> None:
        """Drop what is queued and release the producer at once (no flush; nothing is reported)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._producer.purge()
            self._producer.flush(0)
        except Exception as exc:  # pragma: no cover
            log.debug("purging the publisher's queue failed: %s", exc)
        self._release()

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush, then release the producer; later `publish` calls raise `UpdateError`."""
        if self._closed:
            return
        try:
            self.flush(timeout_s)
        except UpdateError:
            self._closed = True
            try:
                self._producer.purge()
            finally:
                self._release()
            raise
        self._closed = True
        self._release()

    def _release(self) -> None:
        close = getattr(self._producer, "close", None)  # confluent-kafka >= 2.5
        if close is not None:
            close()
        self._producer = self._admin = None

    def __enter__(self) -> "KafkaPublisher":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:  # publishing failed: do not wait up to a flush timeout on top of it
            self.abort()
        else:
            self.close()


def _report(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def publish_sparse_model(brokers: str, model_name: str, table_name: str, sparse_model_dir: str | os.PathLike,
                         dim: int | None = None, *, chunk_rows: int = 65536, num_key_groups: int = 8,
                         send_buffer_bytes: int = 262144, progress: Callable[[int, int], None] | None = None,
                         ps_config: Any = None, **producer_config: Any) -> int:
    """Publish every row of a sparse model directory (`key` int64, `emb_vector` float32[dim]) as
    updates of `hps_et.<model>.<table>`, in `chunk_rows` chunks. `progress(done_rows, total_rows)`
    is called after each chunk. With `ps_config` (see `KafkaPublisher`), the table must be in it and
    `dim` defaults to the table's (a different `dim` is refused). Returns the number of rows
    published (after a successful flush)."""
    from hps.model_format import SparseModel

    with KafkaPublisher(brokers, num_key_groups=num_key_groups, send_buffer_bytes=send_buffer_bytes,
                        ps_config=ps_config, **producer_config) as pub:
        table_dim = pub.table_dim(model_name, table_name)
        if dim is None:
            if table_dim is None:
                raise UpdateError(f"publish_sparse_model {sparse_model_dir}: needs the dim (or a ps_config "
                                  f"that has table {model_name}.{table_name})")
            dim = table_dim
        elif table_dim is not None and int(dim) != table_dim:
            raise UpdateError(f"publish {model_name}.{table_name}: dim {dim} given, but the table has dim "
                              f"{table_dim} in {pub.config_name}")
        model = SparseModel(sparse_model_dir, int(dim))
        total = int(model.num_rows)
        done = 0
        for keys, vectors in model.iter_chunks(chunk_rows):
            pub.publish(model_name, table_name, np.asarray(keys), np.asarray(vectors))
            done += int(len(keys))
            _report(progress, done, total)
    return done


def publish_npy(brokers: str, model_name: str, table_name: str, keys_npy: str | os.PathLike,
                vectors_npy: str | os.PathLike, *, chunk_rows: int = 65536, num_key_groups: int = 8,
                send_buffer_bytes: int = 262144, progress: Callable[[int, int], None] | None = None,
                ps_config: Any = None, **producer_config: Any) -> int:
    """Publish `keys_npy: (n,) int64|int32` and `vectors_npy: (n, dim) float32` (.npy files, memory
    mapped) as updates of `hps_et.<model>.<table>`. With `ps_config` (see `KafkaPublisher`) the
    table and dim are checked before anything is sent. Returns the number of rows published."""
    keys = np.load(keys_npy, mmap_mode="r")
    vectors = np.load(vectors_npy, mmap_mode="r")
    if keys.ndim != 1 or vectors.ndim != 2 or keys.shape[0] != vectors.shape[0]:
        raise UpdateError(f"publish_npy: {keys_npy} must be (n,) and {vectors_npy} (n, dim); "
                          f"got {keys.shape} and {vectors.shape}")
    total = int(keys.shape[0])
    with KafkaPublisher(brokers, num_key_groups=num_key_groups, send_buffer_bytes=send_buffer_bytes,
                        ps_config=ps_config, **producer_config) as pub:
        dim = pub.table_dim(model_name, table_name)
        if dim is not None and vectors.shape[1] != dim:
            raise UpdateError(f"publish {model_name}.{table_name}: {vectors_npy} has dim {vectors.shape[1]}, but "
                              f"the table has dim {dim} in {pub.config_name}")
        for start in range(0, total, chunk_rows):
            stop = min(total, start + chunk_rows)
            pub.publish(model_name, table_name, np.asarray(keys[start:stop]), np.asarray(vectors[start:stop]))
            _report(progress, stop, total)
    return total
