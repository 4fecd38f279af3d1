"""A message that cannot be applied never stalls a table; a tier that is down stalls only its table.

- wrong dim (the source knows the dims, or the tier rejects the batch), unknown table, a batch in
  which one message is rejected: skipped, counted, logged a few times at most, committed past;
- a transient `BackendError` of one table: that table is retried every `failure_backoff_ms`, the
  others go on, nothing is lost or committed before it is applied.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from hps.errors import BackendError, KeyInputError
from hps.config.tags import make_tag
from hps.update.publisher import KafkaPublisher
from hps.update.source import KafkaUpdateSource
from tests.kafka_fixture import TEST_CONSUMER_CONFIG, kafka_brokers  # noqa: F401  (fixture)
from tests.update.test_kafka_flow import DIM, MODEL, TABLE, TAG, Tier, _source_config, _versions, _wait

pytestmark = pytest.mark.kafka
pytest.importorskip("confluent_kafka")


def _start(brokers: str, apply, group: str, tags=(TAG,), **kw) -> KafkaUpdateSource:
    return KafkaUpdateSource(_source_config(brokers), group_id=group, update_filters=(".+",), tags=list(tags),
                             apply=apply, consumer_config=TEST_CONSUMER_CONFIG, **kw).start()


def _error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("hps.update") and r.levelno >= logging.WARNING]


def _publish_bad_then_good(brokers: str, keys: np.ndarray, good: np.ndarray, n_bad: int = 3) -> None:
    with KafkaPublisher(brokers, num_key_groups=1) as pub:
        for i in range(n_bad):  # well-formed HCTR messages of dim 4 for a dim-8 table
            pub.publish(MODEL, TABLE, keys[:5], np.full((5, 4), 7.0 + i, np.float32))
        pub.publish(MODEL, TABLE, keys, good)


@pytest.mark.parametrize("check", ["source_dims", "tier_rejects"])
def test_wrong_dim_is_skipped_committed_past_and_never_reread(kafka_brokers: str, check: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """HugeCTR users' trap: one message of the wrong dim was retried forever (399 failures in 20 s)
    and blocked every later update of its table, also after a restart."""
    keys, v1, _ = _versions(300, seed=11)
    _publish_bad_then_good(kafka_brokers, keys, v1)
    tier = Tier()

    def rejecting_apply(tag: str, k: np.ndarray, v: np.ndarray) -> None:  # what HPS.apply_update does
        if v.shape[1] != DIM:
            raise KeyInputError(f"update of {tag}: vectors of shape {v.shape} for {len(k)} keys of dim {DIM}")
        tier.apply(tag, k, v)

    kw = {"dims": {TAG: DIM}} if check == "source_dims" else {}
    caplog.set_level(logging.INFO, logger="hps.update")
    source = _start(kafka_brokers, rejecting_apply, "wrongdim", **kw)
    try:
        assert _wait(lambda: tier.matches(keys, v1), 20), source.stats
        assert source.wait_until_idle(20)
        reason = "dim_mismatch" if check == "source_dims" else "rejected"
        assert source.stats["messages_skipped"] == 3 == source.stats[f"skipped_{reason}"], source.stats
        assert source.stats["apply_failures"] == 0
    finally:
        source.close()
    lines = _error_lines(caplog)
    assert 1 <= len(lines) <= 2, lines                              # rate-limited, not one per attempt
    assert TAG in lines[0] and reason in lines[0]

    restarted = _start(kafka_brokers, rejecting_apply, "wrongdim", **kw)
    try:
        assert restarted.wait_until_idle(20)
        assert restarted.stats["messages"] == 0, restarted.stats   # committed past: nothing is read again
    finally:
        restarted.close()


def test_unknown_table_is_skipped(kafka_brokers: str) -> None:
    other = make_tag("gone", "t")
    with KafkaPublisher(kafka_brokers) as pub:
        pub.publish("gone", "t", np.array([1]), np.ones((1, DIM), np.float32))
        pub.publish(MODEL, TABLE, np.array([2]), np.ones((1, DIM), np.float32))
    tier = Tier()
    source = _start(kafka_brokers, tier.apply, "unknown", tags=(TAG, other), dims={TAG: DIM})  # "gone" not served
    try:
        assert _wait(lambda: tier.matches(np.array([2]), np.ones((1, DIM), np.float32)), 20)
        assert source.wait_until_idle(20)
        assert source.stats["skipped_unknown_table"] == 1 and other not in tier.backend.tables()
    finally:
        source.close()


def test_one_rejected_message_in_a_batch_loses_only_itself(kafka_brokers: str) -> None:
    """A batch of several messages that the tier rejects is applied message by message: only the
    message the tier rejects (here: a key it refuses) is skipped."""
    keys, v1, _ = _versions(200, seed=12)
    with KafkaPublisher(kafka_brokers, num_key_groups=1, send_buffer_bytes=8 + 10 * (8 + 4 * DIM)) as pub:
        pub.publish(MODEL, TABLE, keys[:100], v1[:100])
        pub.publish(MODEL, TABLE, np.array([666], np.int64), np.ones((1, DIM), np.float32))
        pub.publish(MODEL, TABLE, keys[100:], v1[100:])
    tier = Tier()

    def apply(tag: str, k: np.ndarray, v: np.ndarray) -> None:
        if (k == 666).any():
            raise KeyInputError(f"update of {tag}: key 666 is out of range")
        tier.apply(tag, k, v)

    source = _start(kafka_brokers, apply, "bisect")
    try:
        assert _wait(lambda: tier.matches(keys, v1), 20), source.stats
        assert source.wait_until_idle(20)
        assert source.stats["skipped_rejected"] == 1, source.stats
        assert not tier.backend.find(TAG, np.array([666], np.int64))[1].any()
    finally:
        source.close()


def test_tier_down_for_one_table_does_not_block_the_others(kafka_brokers: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """BackendError on table A: A is retried every failure_backoff_ms (20 ms here) while B's updates go
    on being applied; once A's tier is back, A's updates arrive, and a restart re-reads nothing."""
    tag_b = make_tag(MODEL, "other")
    keys, v1, v2 = _versions(400, seed=13)
    tier = Tier()
    a_down = threading.Event()
    a_down.set()

    def apply(tag: str, k: np.ndarray, v: np.ndarray) -> None:
        if tag == TAG and a_down.is_set():
            raise BackendError(f"volatile tier: redis node 127.0.0.1:1 refused the batch of {tag}")
        tier.apply(tag, k, v)

    with KafkaPublisher(kafka_brokers, send_buffer_bytes=1024) as pub:
        pub.publish(MODEL, TABLE, keys, v1)
        pub.publish(MODEL, "other", keys, v1)
    caplog.set_level(logging.INFO, logger="hps.update")
    source = _start(kafka_brokers, apply, "down", tags=(TAG, tag_b))
    try:
        assert _wait(lambda: tier.matches(keys, v1, tag=tag_b), 20), source.stats
        with KafkaPublisher(kafka_brokers, send_buffer_bytes=1024) as pub:   # B goes on while A is down
            pub.publish(MODEL, "other", keys, v2)
            pub.publish(MODEL, TABLE, keys, v2)
        assert _wait(lambda: tier.matches(keys, v2, tag=tag_b), 20), source.stats
        assert _wait(lambda: source.stats["apply_failures"] >= 10, 10)
        assert TAG in source.retrying and TAG not in tier.backend.tables()
        assert source.stats["messages_skipped"] == 0
        a_down.clear()
        assert _wait(lambda: tier.matches(keys, v2), 20), source.stats
        assert source.wait_until_idle(20)
        assert source.retrying == []
    finally:
        source.close()
    lines = [line for line in _error_lines(caplog) if "failed, retrying" in line]
    assert 1 <= len(lines) <= 2, lines        # dozens of failed attempts, one line (rate-limited)

    restarted = _start(kafka_brokers, apply, "down", tags=(TAG, tag_b))
    try:
        assert restarted.wait_until_idle(20)
        assert restarted.stats["messages"] == 0, restarted.stats
    finally:
        restarted.close()


def test_transient_failure_left_uncommitted_when_closed(kafka_brokers: str) -> None:
    """At-least-once for retried batches: closed while A's tier is down, the next consumer of the
    group applies A's updates."""
    keys, v1, _ = _versions(300, seed=14)
    with KafkaPublisher(kafka_brokers) as pub:
        pub.publish(MODEL, TABLE, keys, v1)
    tier = Tier()
    tier.fail_after = 0
    first = _start(kafka_brokers, tier.apply, "alo2")
    try:
        assert _wait(lambda: first.stats["apply_failures"] >= 3, 20)
    finally:
        first.close()
    tier.fail_after = None
    second = _start(kafka_brokers, tier.apply, "alo2")
    try:
        assert _wait(lambda: tier.matches(keys, v1), 20), second.stats
    finally:
        second.close()
