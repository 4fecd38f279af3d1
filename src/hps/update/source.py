"""The Kafka update source: a background consumer that applies HCTR messages to a tier.

Behaviour follows HugeCTR's `KafkaMessageSource` (reference §2.12, §1.5), without its stalls:

- one consumer per tier, subscribed (consumer group protocol) to the topics `hps_et.<model>.<table>`
  of the tables this HPS serves that pass the tier's `update_filters`;
- per-topic buffers, delivered to `apply(tag, keys, vectors)` when `max_batch_size` keys are
  buffered, when `max_commit_interval` messages of the topic were received, when a partition
  reaches its end, and as soon as no further message is waiting in the client's queue (so a lone
  update is applied at once, while a backlog still forms full batches); messages of another
  value_size start a new batch;
- offsets are committed (synchronously) only after `apply` returned: at-least-once;
- **transient failures are retried, per table.** When `apply` raises `BackendError` (a Redis node
  or RocksDB that is down) or `OSError`, the batch stays buffered and uncommitted, the table's
  partitions are paused, and the batch is tried again every `failure_backoff_ms`, while the other
  tables go on being consumed and applied. Closing the source leaves it uncommitted: the next
  consumer of the group applies it again. An `apply` raising `hps.errors.ClosedError` (the HPS or
  tier was closed) stops the source at once;
- **a message that cannot be applied is skipped, counted and committed past**, never retried:
  a malformed message (bad magic, bad value_size, truncated pair), a message with a Kafka key,
  a vector size that is not the table's dim (when the source knows the dims), a table that is
  not served, or a batch that `apply` rejects with any other error (then each message of the batch
  is tried alone, and only those rejected are skipped). `stats["messages_skipped"]` counts them,
  `stats["skipped_<reason>"]` by reason; one ERROR line per table and reason every
  `kafka_client.LOG_INTERVAL_S` seconds says it (with how many were held back), each message is
  named at DEBUG. Beacons (header only) carry nothing and are committed past;
- within one delivered batch, the last update of a key wins (the batch is deduplicated keeping
  the last occurrence); the updates of one key always travel in one partition, so in order;
- the consumer polls in slices of at most 0.1 s, whatever `poll_timeout_ms` is, so `close()`
  returns promptly; librdkafka's own logs and errors go to Python logging, rate-limited (a dead
  broker is one WARNING line every few seconds, naming the broker).

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
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from hps.config.schema import KafkaConfig
from hps.errors import BackendError, ClosedError, UpdateError, require
from hps.config.tags import TAG_PREFIX
from hps.update.kafka_client import RateLimitedLog, client_logging, make_client
from hps.update.message import HEADER_BYTES, decode_body, parse_header

log = logging.getLogger(__name__)

#: `apply(tag, keys: (n,) int64, vectors: (n, dim) float32)`; raise `BackendError` to have the
#: batch retried, any other exception to have it skipped.
ApplyFn = Callable[[str, np.ndarray, np.ndarray], None]

#: `dim_of(tag)`: the served table's dim, or None when no table of this HPS has that tag.
DimFn = Callable[[str], "int | None"]

CONSUMER_CONFIG_ENV = "HPS_KAFKA_CONSUMER_CONFIG"

#: Errors of `apply` that a later attempt may not meet (a tier that is down); all others skip the batch.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (BackendError, OSError)

#: Reasons a message is skipped (each one is `stats["skipped_<reason>"]`).
SKIP_REASONS = ("malformed", "kafka_key", "dim_mismatch", "unknown_table", "rejected")

#: The longest one poll blocks, whatever `poll_timeout_ms`: how quickly `close()` is noticed.
POLL_SLICE_S = 0.1

#: librdkafka property → the ps.json setting it comes from (for `ConfigError` messages).
_SETTINGS = {"bootstrap.servers": "update_source.brokers",
             "max.partition.fetch.bytes": "update_source.receive_buffer_size",
             "fetch.message.max.bytes": "update_source.receive_buffer_size",  # librdkafka's alias of the above
             "fetch.wait.max.ms": "update_source.poll_timeout_ms",
             "topic.metadata.refresh.interval.ms": "update_source.metadata_refresh_interval_ms"}


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
class _Segment:
    """Consecutive messages of one topic and one value_size, received but not yet applied nor committed."""

    value_size: int = 0
    payloads: list[bytes] = field(default_factory=list)
    num_keys: int = 0
    num_messages: int = 0
    #: partition → offset of the first / last message consumed (applied or skipped) in this segment.
    first: dict[int, int] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)

    def note(self, partition: int, offset: int) -> None:
        self.first.setdefault(partition, offset)
        self.offsets[partition] = offset
        self.num_messages += 1


@dataclass
class _TopicState:
    """A topic's pending segments (in arrival order) and its retry state after a transient failure."""

    segments: deque[_Segment] = field(default_factory=deque)
    retry_at: float = 0.0          # time.monotonic() of the next attempt; 0 when not backing off
    failures: int = 0              # failed attempts of the head segment
    paused: list[Any] = field(default_factory=list)  # TopicPartitions paused while backing off


_NO_CHECK = object()


class KafkaUpdateSource:
    """Consume `hps_et.<model>.<table>` topics and hand decoded batches to `apply` (at-least-once).

    `config`: the ps.json `update_source`. `group_id`: the consumer group (see
    `hps.update.volatile_group_id`). `update_filters`: the tier's filters. `tags`: the tables this
    HPS serves; the selected ones are subscribed (`set_tags` changes them at run time).
    `apply(tag, keys: (n,) int64, vectors: (n, dim) float32)` runs on the consumer thread.
    `key_dtype`: "int64" or "uint32" (ps.json `supportlonglong=false`). `dims`: the served tables'
    dims, as a mapping tag → dim or a function `dim_of(tag) -> int | None`; when given, a message
    whose vector size is not its table's dim, or of a table not served, is skipped before `apply`.
    """

    def __init__(self, config: KafkaConfig, *, group_id: str, update_filters: Sequence[str],
                 tags: Iterable[str], apply: ApplyFn, key_dtype: str = "int64",
                 consumer_config: dict[str, Any] | None = None, name: str = "",
                 dims: Mapping[str, int] | DimFn | None = None, replay_from_start: bool = False) -> None:
        self._kafka = require("confluent_kafka", "kafka")
        self.config = config
        self.group_id = group_id
        self.update_filters = tuple(update_filters)
        compile_filters(self.update_filters)  # fail early on a bad regex
        self.key_dtype = key_dtype
        self.name = name or group_id
        self._apply = apply
        self._dims: DimFn | None = (dims.get if isinstance(dims, Mapping) else dims)
        self._dim_cache: dict[str, Any] = {}
        self._topics = select_topics(tags, self.update_filters)
        self._new_topics: list[str] | None = None
        self._rlog = RateLimitedLog(log)
        client_props, self._client_errors = client_logging(log, self.name, self._on_client_error)
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
            **client_props,
        }
        env = os.environ.get(CONSUMER_CONFIG_ENV)
        if env:
            try:
                extra = json.loads(env)
                if not isinstance(extra, dict):
                    raise TypeError(f"a {type(extra).__name__}")
            except (ValueError, TypeError) as exc:
                raise UpdateError(f"${CONSUMER_CONFIG_ENV} is not a JSON object of librdkafka properties: "
                                  f"{exc}") from exc
            conf.update(extra)
        conf.update(consumer_config or {})
        self._consumer_conf = conf
        self._state: dict[str, _TopicState] = {}
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._assigned: set[tuple[str, int]] = set()
        #: Messages behind each partition's newest offset, as of this thread's last poll of it.
        self._lag: dict[tuple[str, int], int] = {}
        #: Partitions to read from their first offset when this process first gets them, whatever the
        #: group committed: a tier rebuilt at every start (an in-process hash map) replays every update.
        self._replay_from_start = replay_from_start
        self._replayed: set[tuple[str, int]] = set()
        self._eof: set[tuple[str, int]] = set()
        self._idle_seq = 0
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self._started = False
        self._error: BaseException | None = None
        self.stats: dict[str, int] = {"messages": 0, "pairs_applied": 0, "batches_applied": 0,
                                      "messages_skipped": 0, **{f"skipped_{r}": 0 for r in SKIP_REASONS},
                                      "apply_failures": 0, "commits": 0, "commit_failures": 0, "client_errors": 0}

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

    @property
    def retrying(self) -> list[str]:
        """Topics whose pending batch failed transiently and waits for its next attempt."""
        return sorted(t for t, s in list(self._state.items()) if s.retry_at)

    def set_tags(self, tags: Iterable[str]) -> None:
        """Replace the served tables (hot add / remove of a model); the consumer resubscribes."""
        self._new_topics = select_topics(tags, self.update_filters)

    def start(self) -> "KafkaUpdateSource":
        """Create the consumer and start the background thread (idempotent).

        Raises `ConfigError` naming the setting when librdkafka refuses one."""
        if self._started:
            return self
        self._consumer = make_client(self._kafka.Consumer, self._consumer_conf, _SETTINGS,
                                     f"Kafka consumer {self.name} of {self.config.brokers}")
        self._started = True
        self._thread = threading.Thread(target=self._run, name=f"hps-kafka-{self.name}", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread: deliver what is buffered (one attempt), commit what was applied, leave
        the group. Unapplied messages stay uncommitted and are consumed again later. Returns within
        about `timeout_s` (the consumer polls in 0.1-s slices; leaving the group of a dead broker
        may take longer, then the thread finishes in the background and this is logged)."""
        if not self._started or self._stop.is_set():
            self._stop.set()
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("%s: consumer thread did not stop within %.1f s (leaving the group of %s)",
                            self.name, timeout_s, self.config.brokers)

    def wait_until_idle(self, timeout_s: float = 30.0) -> bool:
        """Block until the consumer, after this call, has reached the end of every assigned partition,
        applied and committed everything, and seen two empty polls since. True if so within
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

    # -- client callbacks ---------------------------------------------------------------------------
    def _on_client_error(self, err: Any) -> None:
        self.stats["client_errors"] += 1
        if err.fatal():
            log.error("%s: fatal Kafka client error from %s: %s", self.name, self.config.brokers, err.str())
            return
        down = err.name() in ("_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE")
        self._rlog.log(logging.WARNING, ("client", "down" if down else err.name()),
                       "%s: %s Kafka broker %s: %s%s", self.name, "cannot reach" if down else "error from",
                       self.config.brokers, err.str(),
                       "; updates wait until it is back" if down else "")

    # -- consumer thread ----------------------------------------------------------------------------
    def _subscribe(self, consumer: Any) -> None:
        if self._new_topics is not None:
            self._topics, self._new_topics = self._new_topics, None
            self._dim_cache.clear()
        if self._topics:
            consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                               on_lost=self._on_lost)
        else:
            consumer.unsubscribe()

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self._assigned.update((p.topic, p.partition) for p in partitions)
        fresh = [p for p in partitions if (p.topic, p.partition) not in self._replayed]
        if self._replay_from_start and fresh:
            for p in fresh:
                p.offset = self._kafka.OFFSET_BEGINNING
                self._replayed.add((p.topic, p.partition))
            cooperative = "cooperative" in str(self._consumer_conf.get("partition.assignment.strategy", ""))
            (consumer.incremental_assign if cooperative else consumer.assign)(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        for topic in [t for t in self._state if any((t, p) in revoked for p in self._partitions_of(t))]:
            closing_while_down = self._stop.is_set() and self._state[topic].retry_at
            if closing_while_down or not self._flush(topic, final=True):
                self._drop(topic, revoked)
        for tp in revoked:
            self._assigned.discard(tp)
            self._eof.discard(tp)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        log.warning("%s: partitions lost (commits for them will fail; they are re-consumed by the group)",
                    self.name)
        self._on_revoke(consumer, partitions)

    def _partitions_of(self, topic: str) -> list[int]:
        state = self._state.get(topic)
        parts = {p for t, p in self._assigned if t == topic}
        if state is not None:
            for seg in state.segments:
                parts.update(seg.first)
        return sorted(parts)

    def _run(self) -> None:
        consumer = self._consumer
        slice_s = min(POLL_SLICE_S, self.config.poll_timeout_ms / 1000.0)
        drain = max(1, self.config.max_commit_interval)
        try:
            self._subscribe(consumer)
            while not self._stop.is_set():
                if self._new_topics is not None:
                    self._flush_all()
                    self._subscribe(consumer)
                wait_s = self._retry_due(slice_s)
                msg = consumer.poll(wait_s)
                if msg is None:
                    self._flush_all()
                    self._note_idle()
                    continue
                more = consumer.consume(num_messages=drain, timeout=0)
                for m in (msg, *more):
                    self._handle(m)
                self._note_lag(consumer, (msg, *more))
                if len(more) < drain:  # nothing else waiting locally: apply now, not after a poll timeout
                    self._flush_all()
        except BaseException as exc:  # pragma: no cover - unexpected; keep it visible
            self._error = exc
            log.exception("%s: Kafka update source stopped on an unexpected error", self.name)
        finally:
            try:  # one last attempt for what is buffered; a table whose tier is down stays uncommitted
                for topic in [t for t, state in self._state.items() if not state.retry_at]:
                    self._flush(topic, final=True)
            finally:
                try:
                    consumer.close()
                except Exception as exc:  # pragma: no cover
                    log.warning("%s: closing the Kafka consumer failed: %s", self.name, exc)
                with self._cond:
                    self._cond.notify_all()

    def _note_lag(self, consumer: Any, messages: tuple[Any, ...]) -> None:
        """`stats["lag"]`: messages behind the newest offsets, summed over the partitions, from the high
        watermarks the consumer cached with its last fetch (on this thread: other threads would wait
        for the consumer's lock for seconds)."""
        newest: dict[tuple[str, int], int] = {}
        for m in messages:
            if m.error() is None:
                newest[(m.topic(), m.partition())] = m.offset()
        for (topic, partition), offset in newest.items():
            try:
                _, high = consumer.get_watermark_offsets(self._kafka.TopicPartition(topic, partition), cached=True)
            except Exception:  # noqa: BLE001 - lag is a statistic; never stop consuming for it
                continue
            if high is not None and high >= 0:
                self._lag[(topic, partition)] = max(0, high - offset - 1)
        self.stats["lag"] = sum(self._lag.get(tp, 0) for tp in self._assigned)

    def _retry_due(self, slice_s: float) -> float:
        """Attempt the batches whose backoff has passed; returns how long the next poll may block."""
        wait_s = slice_s
        now = time.monotonic()
        for topic, state in list(self._state.items()):
            if state.retry_at:
                if state.retry_at <= now:
                    self._flush(topic)
                    now = time.monotonic()
                state = self._state.get(topic)
                if state is not None and state.retry_at:
                    wait_s = min(wait_s, max(0.0, state.retry_at - now))
        return wait_s

    def _note_idle(self) -> None:
        if self._assigned and self._assigned <= self._eof and not self._state:
            with self._cond:
                self._idle_seq += 1
                self._cond.notify_all()

    def _dim(self, topic: str) -> Any:
        """The topic's table dim, None when no served table has that tag, `_NO_CHECK` without dims."""
        if self._dims is None:
            return _NO_CHECK
        try:
            return self._dim_cache[topic]
        except KeyError:
            try:
                dim = self._dims(topic)
            except Exception as exc:  # e.g. the served models changing meanwhile: check nothing this time
                log.debug("%s: dim of %s unknown for now: %s", self.name, topic, exc)
                return _NO_CHECK
            self._dim_cache[topic] = dim
            return dim

    def _skip(self, topic: str, reason: str, count: int, detail: str) -> None:
        """Count `count` skipped messages of `topic`; log `detail` at DEBUG and once in a while at ERROR."""
        self.stats["messages_skipped"] += count
        self.stats[f"skipped_{reason}"] += count
        log.debug("skipping update message: %s", detail)
        self._rlog.log(logging.ERROR, (topic, reason), "%s: skipped update message(s) of %s (%s), committed past "
                       "them: %s", self.name, topic, reason, detail)

    def _handle(self, msg: Any) -> None:
        kafka = self._kafka
        err = msg.error()
        topic, partition = msg.topic(), msg.partition()
        if err is not None:
            if err.code() == kafka.KafkaError._PARTITION_EOF:
                self._eof.add((topic, partition))
                self._lag[(topic, partition)] = 0
                self._flush(topic)
            elif err.code() == kafka.KafkaError.UNKNOWN_TOPIC_OR_PART:
                log.debug("%s: topic %s does not exist yet", self.name, topic)
            else:
                self._rlog.log(logging.ERROR, ("kafka", topic, err.code()), "%s: Kafka error on topic %s "
                               "partition %s: %s", self.name, topic, partition, err)
            return
        self._eof.discard((topic, partition))
        self.stats["messages"] += 1
        offset = msg.offset()
        where = f"{self.name}: topic {topic} partition {partition} offset {offset}"
        payload = msg.value() or b""
        num_pairs = value_size = 0
        try:
            if msg.key() is not None:
                self._skip(topic, "kafka_key", 1, f"{where}: message has a Kafka key "
                           f"({bytes(msg.key()[:16]).hex()}); HCTR update messages carry none")
            else:
                value_size, num_pairs = parse_header(payload, where, self.key_dtype)
        except UpdateError as exc:
            self._skip(topic, "malformed", 1, str(exc))
        if num_pairs:
            dim = self._dim(topic)
            if dim is None:
                self._skip(topic, "unknown_table", 1, f"{where}: no served table has tag {topic}")
                num_pairs = 0
            elif dim is not _NO_CHECK and value_size != 4 * dim:
                self._skip(topic, "dim_mismatch", 1, f"{where}: vectors of {value_size // 4} floats "
                           f"(value_size {value_size}), but table {topic} has dim {dim}")
                num_pairs = 0
        state = self._state.get(topic)
        if state is None:
            state = self._state[topic] = _TopicState()
        seg = state.segments[-1] if state.segments else None
        if num_pairs:
            if seg is None or self._full(seg) or (seg.payloads and seg.value_size != value_size):
                seg = _Segment()
                state.segments.append(seg)
            seg.value_size = value_size
            seg.payloads.append(payload)
            seg.num_keys += num_pairs
        elif seg is None:
            seg = _Segment()
            state.segments.append(seg)
        seg.note(partition, offset)
        if self._full(seg):
            self._flush(topic)

    def _full(self, seg: _Segment) -> bool:
        return seg.num_keys >= self.config.max_batch_size or seg.num_messages >= self.config.max_commit_interval

    def _flush_all(self) -> None:
        for topic in list(self._state):
            self._flush(topic)

    def _flush(self, topic: str, final: bool = False) -> bool:
        """Apply the topic's pending segments in order and commit past those applied or skipped.

        A topic backing off is left alone until its time, unless `final` (close, revoke: one attempt,
        no backoff). Returns True when nothing of the topic is left pending."""
        state = self._state.get(topic)
        if state is None:
            return True
        if state.retry_at and not final and time.monotonic() < state.retry_at:
            return False
        done: dict[int, int] = {}
        while state.segments:
            if not self._apply_segment(topic, state.segments[0]):
                break
            done.update(state.segments.popleft().offsets)
        if done:
            self._commit(topic, done)
        if state.segments:
            if not final and not self._stop.is_set():
                state.failures += 1
                state.retry_at = time.monotonic() + self.config.failure_backoff_ms / 1000.0
                self._pause(topic, state)
            return False
        if state.failures:
            self._rlog.forget((topic, "retry"))
            log.warning("%s: updates of %s applied again after %d failed attempt(s)", self.name, topic,
                        state.failures)
        self._resume(state)
        del self._state[topic]
        return True

    def _apply_segment(self, topic: str, seg: _Segment) -> bool:
        """Apply one segment. True when it is done with (applied, or skipped as unappliable); False
        when it must stay pending (a transient failure, or the target was closed)."""
        if not seg.payloads:
            return True
        body = b"".join(memoryview(p)[HEADER_BYTES:] for p in seg.payloads)
        keys, vectors = keep_last(*decode_body(body, seg.value_size, self.key_dtype))
        outcome = self._try_apply(topic, keys, vectors, seg)
        if outcome == "rejected" and len(seg.payloads) > 1:
            for payload in seg.payloads:  # find the culprits: apply the messages one by one, in order
                k, v = keep_last(*decode_body(memoryview(payload)[HEADER_BYTES:], seg.value_size, self.key_dtype))
                one = self._try_apply(topic, k, v, seg, skip_count=1)
                if one in ("retry", "closed"):
                    return False  # the whole segment again later: re-applying the first ones is harmless
            return True
        return outcome in ("applied", "rejected")

    def _try_apply(self, topic: str, keys: np.ndarray, vectors: np.ndarray, seg: _Segment,
                   skip_count: int | None = None) -> str:
        """One `apply` call: "applied", "rejected" (skipped when `skip_count` is given or the segment
        has one message), "retry" (transient) or "closed"."""
        try:
            self._apply(topic, keys, vectors)
        except ClosedError as exc:  # the HPS / tier is gone: stop, leave the batch uncommitted
            log.info("%s: target closed, stopping; %d updates of %s left uncommitted: %s", self.name,
                     keys.shape[0], topic, exc)
            self._stop.set()
            return "closed"
        except TRANSIENT_ERRORS as exc:
            self.stats["apply_failures"] += 1
            self._rlog.log(logging.ERROR, (topic, "retry"), "%s: applying %d updates of %s failed, retrying every "
                           "%d ms (other tables go on): %s: %s", self.name, keys.shape[0], topic,
                           self.config.failure_backoff_ms, type(exc).__name__, exc)
            return "retry"
        except Exception as exc:
            if skip_count is None and len(seg.payloads) > 1:
                return "rejected"
            parts = ", ".join(f"partition {p} offsets {seg.first[p]}..{o}" for p, o in sorted(seg.offsets.items()))
            self._skip(topic, "rejected", skip_count or seg.num_messages,
                       f"{self.name}: {keys.shape[0]} updates of {topic} ({parts}) rejected by the tier: "
                       f"{type(exc).__name__}: {exc}")
            return "rejected"
        self.stats["pairs_applied"] += int(keys.shape[0])
        self.stats["batches_applied"] += 1
        return "applied"

    def _pause(self, topic: str, state: _TopicState) -> None:
        """Stop fetching `topic` while its batch backs off (bounds memory; other topics go on)."""
        if state.paused:
            return
        tps = [self._kafka.TopicPartition(t, p) for t, p in sorted(self._assigned) if t == topic]
        if not tps:
            return
        try:
            self._consumer.pause(tps)
            state.paused = tps
        except self._kafka.KafkaException as exc:  # pragma: no cover - e.g. mid-rebalance
            log.debug("%s: pausing %s failed: %s", self.name, topic, exc)

    def _resume(self, state: _TopicState) -> None:
        tps = [tp for tp in state.paused if (tp.topic, tp.partition) in self._assigned]
        state.paused = []
        if tps:
            try:
                self._consumer.resume(tps)
            except self._kafka.KafkaException as exc:  # pragma: no cover
                log.debug("%s: resuming %s failed: %s", self.name, tps, exc)

    def _drop(self, topic: str, revoked: set[tuple[str, int]]) -> None:
        """Forget the topic's pending segments (uncommitted: the partitions' next owner reads them
        again); partitions that stay assigned are rewound to their first pending offset."""
        state = self._state.pop(topic)
        first: dict[int, int] = {}
        for seg in state.segments:
            for p, o in seg.first.items():
                first[p] = min(o, first.get(p, o))
        self._resume(state)
        for p, o in first.items():
            if (topic, p) in self._assigned and (topic, p) not in revoked:
                try:
                    self._consumer.seek(self._kafka.TopicPartition(topic, p, o))
                    log.debug("%s: %s partition %d rewound to offset %d (kept, its batch dropped)", self.name,
                              topic, p, o)
                except self._kafka.KafkaException as exc:  # pragma: no cover
                    log.warning("%s: rewinding %s partition %d to offset %d failed: %s", self.name, topic, p, o, exc)
        n = sum(s.num_messages for s in state.segments)
        log.info("%s: %d pending message(s) of %s left uncommitted on revoke", self.name, n, topic)

    def _commit(self, topic: str, offsets: dict[int, int]) -> None:
        tps = [self._kafka.TopicPartition(topic, p, o + 1) for p, o in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
            self.stats["commits"] += 1
        except self._kafka.KafkaException as exc:
            self.stats["commit_failures"] += 1
            self._rlog.log(logging.WARNING, (topic, "commit"), "%s: committing offsets of %s %s failed (those "
                           "updates will be re-applied later): %s", self.name, topic,
                           {p: o + 1 for p, o in offsets.items()}, exc)
