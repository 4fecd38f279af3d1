"""A second consumer joins the group while a table's tier is down on the first: the partitions it
takes over are re-read from the committed offsets by the newcomer, those the first one keeps are
rewound and retried there; once the tier is back, every update is applied (at-least-once)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hps.errors import BackendError
from hps.update.publisher import KafkaPublisher
from hps.update.source import KafkaUpdateSource
from tests.kafka_fixture import TEST_CONSUMER_CONFIG, kafka_brokers  # noqa: F401  (fixture)
from tests.update.test_kafka_flow import MODEL, TABLE, TAG, Tier, _source_config, _versions, _wait

pytestmark = pytest.mark.kafka
pytest.importorskip("confluent_kafka")


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_rebalance_while_a_table_backs_off_loses_nothing(kafka_brokers: str, strategy: str) -> None:
    keys, v1, _ = _versions(2000, seed=31)
    with KafkaPublisher(kafka_brokers, send_buffer_bytes=1024) as pub:
        pub.publish(MODEL, TABLE, keys, v1)
    tier = Tier()                      # one shared tier (as a Redis Cluster shared by both servers)
    down = threading.Event()
    down.set()

    def failing(tag: str, k: np.ndarray, v: np.ndarray) -> None:
        if down.is_set():
            raise BackendError("tier down (injected)")
        tier.apply(tag, k, v)

    conf = {**TEST_CONSUMER_CONFIG, "partition.assignment.strategy": strategy}
    first = KafkaUpdateSource(_source_config(kafka_brokers), group_id=f"rb-{strategy}", update_filters=(".+",),
                              tags=[TAG], apply=failing, consumer_config=conf).start()
    second = None
    try:
        assert _wait(lambda: first.stats["apply_failures"] >= 5, 20), first.stats
        second = KafkaUpdateSource(_source_config(kafka_brokers), group_id=f"rb-{strategy}",
                                   update_filters=(".+",), tags=[TAG], apply=tier.apply,
                                   consumer_config=conf).start()
        assert _wait(lambda: second.stats["pairs_applied"] > 0, 20), (first.stats, second.stats)
        assert not tier.matches(keys, v1)             # the first one's partitions are still pending
        down.clear()
        assert _wait(lambda: tier.matches(keys, v1), 20), (first.stats, second.stats)
    finally:
        first.close()
        if second is not None:
            second.close()
    assert first.stats["messages_skipped"] == second.stats["messages_skipped"] == 0
