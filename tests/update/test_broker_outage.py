"""The broker goes away mid-stream and comes back: no update is lost (at-least-once), the consumer
and the publisher recover by themselves, and the outage is a few log lines, not hundreds.

tansu keeps its data in memory, so the outage is a TCP link that is cut and restored on the same
port (tests/kafka_fixture.py `kafka_broker_with_outage`); the SIGKILLed consumer process is
tests/update/test_kafka_flow.py::test_at_least_once_after_consumer_process_is_killed.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from hps.update.publisher import KafkaPublisher
from hps.update.source import KafkaUpdateSource
from tests.kafka_fixture import TEST_CONSUMER_CONFIG, kafka_broker_with_outage
from tests.update.test_kafka_flow import MODEL, TABLE, TAG, Tier, _source_config, _versions, _wait

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
pytest.importorskip("confluent_kafka")

#: Reconnect quickly after the outage (librdkafka backs off up to 10 s by default).
FAST_RECONNECT = {"reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 500}


def test_no_update_lost_when_the_broker_goes_away_mid_stream(caplog: pytest.LogCaptureFixture,
                                                             capfd: pytest.CaptureFixture) -> None:
    keys, v1, v2 = _versions(3000, seed=21)
    caplog.set_level(logging.WARNING)
    with kafka_broker_with_outage() as link:
        pub = KafkaPublisher(link.brokers, send_buffer_bytes=1024, config=FAST_RECONNECT)
        pub.publish(MODEL, TABLE, keys, v1)
        pub.flush()

        tier = Tier()
        slow = threading.Event()
        slow.set()

        def apply(tag: str, k: np.ndarray, v: np.ndarray) -> None:
            if slow.is_set():
                time.sleep(0.03)   # a slow tier: the outage comes while the stream is being consumed
            tier.apply(tag, k, v)

        source = KafkaUpdateSource(_source_config(link.brokers, max_batch_size=200), group_id="outage",
                                   update_filters=(".+",), tags=[TAG], apply=apply,
                                   consumer_config={**TEST_CONSUMER_CONFIG, **FAST_RECONNECT}).start()
        try:
            assert _wait(lambda: len(tier.calls) >= 3, 20), source.stats
            link.cut()                                   # the broker "dies" mid-stream
            assert not tier.matches(keys, v1)
            pub.publish(MODEL, TABLE, keys, v2)          # queued by the producer while the broker is away
            time.sleep(2.0)                              # longer than the consumer's session: it is evicted
            link.restore()
            slow.clear()
            pub.flush(30)                                # the producer delivers its queue after the restart
            assert _wait(lambda: tier.matches(keys, v2), 40), source.stats
            assert source.running and source.wait_until_idle(20)
        finally:
            source.close()
            pub.close()

        # A new consumer of the group starts from the committed offsets: nothing left behind.
        again = Tier()
        restarted = KafkaUpdateSource(_source_config(link.brokers), group_id="outage", update_filters=(".+",),
                                      tags=[TAG], apply=again.apply, consumer_config=TEST_CONSUMER_CONFIG).start()
        try:
            assert restarted.wait_until_idle(20)
            assert restarted.stats["pairs_applied"] < 6000
        finally:
            restarted.close()
    assert capfd.readouterr().err == ""                  # librdkafka printed nothing of its own
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("hps.update")]
    assert len(lines) <= 12, lines
