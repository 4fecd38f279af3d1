"""`stats["lag"]` of an update source: messages behind the newest offsets, noted by its own thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hps.update.publisher import KafkaPublisher
from tests.kafka_fixture import kafka_brokers  # noqa: F401  (fixture)
from tests.update.test_kafka_flow import MODEL, TABLE, _versions
from tests.update.test_unappliable import _start

pytestmark = pytest.mark.kafka
pytest.importorskip("confluent_kafka")


def test_lag_counts_the_backlog_and_falls_to_zero(kafka_brokers: str) -> None:
    keys, v1, _ = _versions(8, seed=3)
    with KafkaPublisher(kafka_brokers, num_key_groups=1) as pub:
        for _ in range(200):  # 200 messages on one partition
            pub.publish(MODEL, TABLE, keys, v1)
    gate = threading.Event()

    def slow_apply(tag: str, k: np.ndarray, v: np.ndarray) -> None:
        gate.wait(10)  # the tier holds the first batch: the rest of the backlog waits behind it

    source = _start(kafka_brokers, slow_apply, "lag")
    try:
        deadline = time.monotonic() + 20
        while source.stats.get("lag", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert 0 < source.stats["lag"] < 200
        gate.set()
        deadline = time.monotonic() + 20
        while source.stats.get("lag", 1) != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert source.stats["lag"] == 0
    finally:
        gate.set()
        source.close()
