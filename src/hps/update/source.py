"""The Kafka update source: a background consumer that applies HCTR messages to a tier.

Behaviour follows HugeCTR's `KafkaMessageSource` (reference §2.12, §1.5):

- one consumer per tier, subscribed (consumer group protocol) to the topics `hps_et.<model>.<table>`
  of the tables this HPS serves that pass the tier's `update_filters`;
- per-topic buffers, delivered to `apply(tag, keys, vectors)` when `max_batch_size` keys are
  buffered, when `max_commit_interval` messages of the topic were received, when a poll times out
  (`poll_timeout_ms`) or a partition reaches its end, and before a change of value_size; and (not
  in HugeCTR) as soon as no further message is waiting in the client's queue, so a lone update is
  applied at once instead of after a poll timeout, while a backlog still forms full batches;
- offsets are committed (synchronously) only after `apply` returned: at-least-once. If `apply`
  raises, the same batch is retried every `failure_backoff_ms` until it succeeds or the source is
  closed (then it is not committed and is consumed again by the next consumer of the group); an
  `apply` raising `hps.errors.ClosedError` (the HPS or tier was closed) stops the source at once;
- a malformed message (bad magic, bad value_size, truncated pair) or a message with a Kafka key is
  skipped with a logged error naming topic / partition / offset; beacons (header only) are ignored;
  both still advance the committed offset.
- within one delivered batch, the last update of a key wins (the batch is deduplicated keeping
  the last occurrence); the updates of one key always travel in one partition, so in order.

**update_filters.** HugeCTR composes each filter as `^hps_et\\.` + filter + `\\..+$` over the
topic, so a filter was meant as a regex on the *model name*; its default `^hps_.+$` then became
unmatchable (§1.9 #8). Here a filter selects a table when, with a leading `^` and trailing `$`
stripped, it matches the whole model name, or when the filter as written matches the whole topic
name. So `[".+"]` (the docs' examples) and the default `["^hps_.+$"]` select every table,
`["^my_model$"]` selects the tables of `my_model`, and `[]` disables the tier's source.

librdkafka properties the ps.json cannot express (e.g. `session.timeout.ms`) come from the
`consumer_config` argument, over the JSON object in the environment variable
`HPS_KAFKA_CONSUMER_CONFIG`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from hps.config.schema import KafkaConfig
from hps.errors import ClosedError, UpdateError, require
from hps.storage.base import TAG_PREFIX
from hps.update.message import HEADER_BYTES, decode_body, parse_header

log = logging.getLogger(__name__)

#: `apply(tag, keys: (n,) int64, vectors: (n, dim) float32)`; raise to have the batch retried.
ApplyFn = Callable[[str, np.ndarray, np.ndarray], None]

CONSUMER_CONFIG_ENV = "HPS_KAFKA_CONSUMER_CONFIG"


def compile_filters(update_filters: Iterable[str]) -> list[tuple[re.Pattern[str], re.Pattern[str] | None]]:
    """Compile each filter into (model-name pattern, whole-topic pattern); `UpdateError` on a bad regex."""
    out = []
    for flt in update_filters:
        core = flt[1:] if flt.startswith("^") else flt
        if core.endswith("$") and not core.endswith("\\$"):
            core = core[:-1]
        try:
            model_pattern = re.compile(rf"(?:{core})")
        except re.error as exc:
            raise UpdateError(f"update_filters: {flt!r} is not a valid regular expression: {exc}") from exc
        try:
            topic_pattern: re.Pattern[str] | None = re.compile(flt)
        except re.error:
            topic_pattern = None
        out.append((model_pattern, topic_pattern))
    return out


def split_tag(tag: str) -> tuple[str, str]:
    """`hps_et.<model>.<table>` → (model, table); `UpdateError` for another shape."""
    prefix = TAG_PREFIX + "."
    if not tag.startswith(prefix) or "." not in tag[len(prefix):]:
        raise UpdateError(f"{tag!r} is not a table tag of the form {TAG_PREFIX}.<model>.<table>")
    model, _, table = tag[len(prefix):].rpartition(".")
    return model, table


def select_topics(tags: Iterable[str], update_filters: Iterable[str]) -> list[str]:
    """The tags (`hps_et.<model>.<table>`) selected by `update_filters` (see the module docstring)."""
    patterns = compile_filters(update_filters)
    out = []
    for tag in tags:
        model, _ = split_tag(tag)
        if any(mp.fullmatch(model) or (tp is not None and tp.fullmatch(tag)) for mp, tp in patterns):
            out.append(tag)
    return sorted(set(out))


def keep_last(keys: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deduplicate `keys: (n,) int64` keeping each key's last row of `vectors: (n, dim) float32`
    (arrival order kept); returns the inputs unchanged when there are no duplicates."""
    n = keys.shape[0]
    _, first_in_reversed = np.unique(keys[::-1], return_index=True)
    if first_in_reversed.shape[0] == n:
        return keys, vectors
    idx = np.sort(n - 1 - first_in_reversed)
    return keys[idx], vectors[idx]


@dataclass
class _TopicBuffer:
    """Messages of one topic received but not yet applied (and not yet committed)."""

    value_size: int = 0
    payloads: list[bytes] = field(default_factory=list)
    num_keys: int = 0
    num_messages: int = 0
    #: partition → offset of the last message consumed (applied or skipped) in this buffer.
    offsets: dict[int, int] = field(default_factory=dict)


class KafkaUpdateSource:
    """Consume `hps_et.<model>.<table>` topics and hand decoded batches to `apply` (at-least-once).

    `config`: the ps.json `update_source`. `group_id`: the consumer group (see
    `hps.update.volatile_group_id`). `update_filters`: the tier's filters. `tags`: the tables this
    HPS serves; the selected ones are subscribed (`set_tags` changes them at run time).
    `apply(tag, keys: (n,) int64, vectors: (n, dim) float32)` runs on the consumer thread.
    `key_dtype`: "int64" or "uint32" (ps.json `supportlonglong=false`).
    """

    def __init__(self, config: KafkaConfig, *, group_id: str, update_filters: Sequence[str],
                 tags: Iterable[str], apply: ApplyFn, key_dtype: str = "int64",
                 consumer_config: dict[str, Any] | None = None, name: str = "") -> None:
        self._kafka = require("confluent_kafka", "kafka")
        self.config = config
        self.group_id = group_id
        self.update_filters = tuple(update_filters)
        compile_filters(self.update_filters)  # fail early on a bad regex
        self.key_dtype = key_dtype
        self.name = name or group_id
        self._apply = apply
        self._topics = select_topics(tags, self.update_filters)
        self._new_topics: list[str] | None = None
        conf: dict[str, Any] = {
            "bootstrap.servers": config.brokers.replace(";", ","),
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "topic.metadata.refresh.interval.ms": config.metadata_refresh_interval_ms,
            # a message may be up to receive_buffer_size (+ overhead); librdkafka's defaults hold 1 MiB
            # per partition fetch (do not lower fetch.max.bytes: tansu then stalls for seconds)
            "max.partition.fetch.bytes": max(1048576, config.receive_buffer_size + 1024),
            "fetch.wait.max.ms": min(500, config.poll_timeout_ms),
            "client.id": f"hps-{self.name}",
        }
        env = os.environ.get(CONSUMER_CONFIG_ENV)
        if env:
            try:
                conf.update(json.loads(env))
            except (ValueError, TypeError) as exc:
                raise UpdateError(f"${CONSUMER_CONFIG_ENV} is not a JSON object of librdkafka properties: "
                                  f"{exc}") from exc
        conf.update(consumer_config or {})
        self._consumer_conf = conf
        self._buffers: dict[str, _TopicBuffer] = {}
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._assigned: set[tuple[str, int]] = set()
        self._eof: set[tuple[str, int]] = set()
        self._idle_seq = 0
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self._started = False
        self._error: BaseException | None = None
        self.stats: dict[str, int] = {"messages": 0, "pairs_applied": 0, "batches_applied": 0, "skipped": 0,
                                      "apply_failures": 0, "commits": 0, "commit_failures": 0}

    # -- public -------------------------------------------------------------------------------------
    @property
    def topics(self) -> list[str]:
        """The topics this source consumes (selected tags)."""
        return list(self._new_topics if self._new_topics is not None else self._topics)

    @property
    def running(self) -> bool:
        """True while the consumer thread runs (False before start, after close, or after a crash:
        see `error`)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """The unexpected exception that stopped the consumer thread, if any (it is also logged)."""
        return self._error

    def set_tags(self, tags: Iterable[str]) -> None:
        """Replace the served tables (hot add / remove of a model); the consumer resubscribes."""
        self._new_topics = select_topics(tags, self.update_filters)

    def start(self) -> "KafkaUpdateSource":
        """Create the consumer and start the background thread (idempotent)."""
        if self._started:
            return self
        self._consumer = self._kafka.Consumer(self._consumer_conf)
        self._started = True
        self._thread = threading.Thread(target=self._run, name=f"hps-kafka-{self.name}", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the thread: deliver what is buffered (one attempt), commit what was applied, leave
        the group. Unapplied messages stay uncommitted and are consumed again later."""
        if not self._started or self._stop.is_set():
            self._stop.set()
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("%s: consumer thread did not stop within %.1f s", self.name, timeout_s)

    def wait_until_idle(self, timeout_s: float = 30.0) -> bool:
        """Block until the consumer, after this call, has reached the end of every assigned partition,
        applied and committed everything, and seen two poll timeouts since. True if so within
        `timeout_s` (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            start = self._idle_seq
            while self._idle_seq < start + 2:
                if self._error is not None or self._stop.is_set():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def __enter__(self) -> "KafkaUpdateSource":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- consumer thread ----------------------------------------------------------------------------
    def _subscribe(self, consumer: Any) -> None:
        if self._new_topics is not None:
            self._topics, self._new_topics = self._new_topics, None
        if self._topics:
            consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                               on_lost=self._on_lost)
        else:
            consumer.unsubscribe()

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self._assigned.update((p.topic, p.partition) for p in partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._deliver_all(retry=True)
        for p in partitions:
            self._assigned.discard((p.topic, p.partition))
            self._eof.discard((p.topic, p.partition))

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        log.warning("%s: partitions lost (commits for them will fail; they are re-consumed by the group)",
                    self.name)
        self._on_revoke(consumer, partitions)

    def _run(self) -> None:
        consumer = self._consumer
        poll_s = self.config.poll_timeout_ms / 1000.0
        drain = max(1, self.config.max_commit_interval)
        try:
            self._subscribe(consumer)
            while not self._stop.is_set():
                if self._new_topics is not None:
                    self._deliver_all(retry=True)
                    self._subscribe(consumer)
                msg = consumer.poll(poll_s)
                if msg is None:
                    self._deliver_all(retry=True)
                    self._note_idle()
                    continue
                more = consumer.consume(num_messages=drain, timeout=0)
                for m in (msg, *more):
                    self._handle(m)
                if len(more) < drain:  # nothing else waiting locally: apply now, not after a poll timeout
                    self._deliver_all(retry=True)
        except BaseException as exc:  # pragma: no cover - unexpected; keep it visible
            self._error = exc
            log.exception("%s: Kafka update source stopped on an unexpected error", self.name)
        finally:
            try:
                self._deliver_all(retry=False)
            finally:
                try:
                    consumer.close()
                except Exception as exc:  # pragma: no cover
                    log.warning("%s: closing the Kafka consumer failed: %s", self.name, exc)
                with self._cond:
                    self._cond.notify_all()

    def _note_idle(self) -> None:
        if self._assigned and self._assigned <= self._eof and not self._buffers:
            with self._cond:
                self._idle_seq += 1
                self._cond.notify_all()

    def _handle(self, msg: Any) -> None:
        kafka = self._kafka
        err = msg.error()
        topic, partition = msg.topic(), msg.partition()
        if err is not None:
            if err.code() == kafka.KafkaError._PARTITION_EOF:
                self._eof.add((topic, partition))
                self._deliver(topic, retry=True)
            elif err.code() == kafka.KafkaError.UNKNOWN_TOPIC_OR_PART:
                log.debug("%s: topic %s does not exist yet", self.name, topic)
            else:
                log.error("%s: Kafka error on topic %s partition %s: %s", self.name, topic, partition, err)
                self._stop.wait(self.config.failure_backoff_ms / 1000.0)
            return
        self._eof.discard((topic, partition))
        self.stats["messages"] += 1
        offset = msg.offset()
        where = f"{self.name}: topic {topic} partition {partition} offset {offset}"
        payload = msg.value() or b""
        buf = self._buffers.get(topic)
        try:
            if msg.key() is not None:
                raise UpdateError(f"{where}: message has a Kafka key ({bytes(msg.key()[:16]).hex()}); "
                                  f"HCTR update messages carry none")
            value_size, num_pairs = parse_header(payload, where, self.key_dtype)
        except UpdateError as exc:
            log.error("skipping malformed update message: %s", exc)
            self.stats["skipped"] += 1
            value_size, num_pairs = 0, 0
        if buf is not None and num_pairs and buf.payloads and buf.value_size != value_size:
            self._deliver(topic, retry=True)
            buf = None
        if buf is None:
            buf = self._buffers.setdefault(topic, _TopicBuffer())
        if num_pairs:
            buf.value_size = value_size
            buf.payloads.append(payload)
            buf.num_keys += num_pairs
        buf.num_messages += 1
        buf.offsets[partition] = offset
        if buf.num_keys >= self.config.max_batch_size or buf.num_messages >= self.config.max_commit_interval:
            self._deliver(topic, retry=True)

    def _deliver_all(self, retry: bool) -> None:
        for topic in list(self._buffers):
            self._deliver(topic, retry)

    def _deliver(self, topic: str, retry: bool) -> bool:
        """Apply the topic's buffer (retrying while `retry` and not closing), then commit its offsets.

        Returns False when the batch was not applied (left buffered, uncommitted)."""
        buf = self._buffers.get(topic)
        if buf is None:
            return True
        if buf.payloads:
            body = b"".join(memoryview(p)[HEADER_BYTES:] for p in buf.payloads)
            keys, vectors = decode_body(body, buf.value_size, self.key_dtype)
            keys, vectors = keep_last(keys, vectors)
            while True:
                try:
                    self._apply(topic, keys, vectors)
                    break
                except ClosedError as exc:  # the HPS / tier is gone: stop, leave the batch uncommitted
                    log.info("%s: target closed, stopping; %d updates of %s left uncommitted: %s", self.name,
                             keys.shape[0], topic, exc)
                    self._stop.set()
                    return False
                except Exception as exc:
                    self.stats["apply_failures"] += 1
                    log.error("%s: applying %d updates of %s failed (retry in %d ms): %s: %s", self.name,
                              keys.shape[0], topic, self.config.failure_backoff_ms, type(exc).__name__, exc)
                    if not retry or self._stop.wait(self.config.failure_backoff_ms / 1000.0):
                        return False
            self.stats["pairs_applied"] += int(keys.shape[0])
            self.stats["batches_applied"] += 1
        del self._buffers[topic]
        self._commit(topic, buf.offsets)
        return True

    def _commit(self, topic: str, offsets: dict[int, int]) -> None:
        tps = [self._kafka.TopicPartition(topic, p, o + 1) for p, o in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
            self.stats["commits"] += 1
        except self._kafka.KafkaException as exc:
            self.stats["commit_failures"] += 1
            log.warning("%s: committing offsets of %s %s failed (those updates will be re-applied later): %s",
                        self.name, topic, {p: o + 1 for p, o in offsets.items()}, exc)
