"""A dead broker is one clear line, settings librdkafka refuses are `ConfigError`s naming them, and
a source closes promptly whatever its `poll_timeout_ms`."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hps.config import KafkaConfig
from hps.errors import ConfigError, UpdateError
from tests.kafka_fixture import TEST_CONSUMER_CONFIG, free_port, kafka_brokers  # noqa: F401  (fixture)

pytestmark = pytest.mark.kafka
pytest.importorskip("confluent_kafka")

ROOT = Path(__file__).resolve().parents[2]
TAG = "hps_et.m.t"


def _dead_broker() -> str:
    return f"127.0.0.1:{free_port()}"


def _source(config: KafkaConfig, group: str = "g", apply=lambda *a: None):
    from hps.update.source import KafkaUpdateSource

    return KafkaUpdateSource(config, group_id=group, update_filters=(".+",), tags=[TAG],
                             apply=apply, consumer_config=TEST_CONSUMER_CONFIG)


def test_publisher_to_a_dead_broker_is_one_update_error(capfd: pytest.CaptureFixture,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from hps.update.publisher import KafkaPublisher

    brokers = _dead_broker()
    caplog.set_level(logging.WARNING)
    start = time.monotonic()
    with pytest.raises(UpdateError, match=rf"cannot reach Kafka broker {brokers}: .*Connection refused"):
        with KafkaPublisher(brokers, connect_timeout_s=1.0) as pub:
            pub.publish("m", "t", np.arange(3), np.ones((3, 4), np.float32))
    assert time.monotonic() - start < 4
    assert capfd.readouterr().err == ""      # librdkafka printed nothing of its own
    assert caplog.records == []


def test_source_on_a_dead_broker_logs_one_line_and_closes_at_once(capfd: pytest.CaptureFixture,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    brokers = _dead_broker()
    caplog.set_level(logging.WARNING)
    source = _source(KafkaConfig(brokers=brokers, poll_timeout_ms=50)).start()
    time.sleep(2.5)                          # librdkafka retries the connection many times meanwhile
    start = time.monotonic()
    source.close()
    assert time.monotonic() - start < 5 and not source.running
    assert capfd.readouterr().err == ""
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and f"cannot reach Kafka broker {brokers}" in lines[0], lines
    assert source.stats["client_errors"] >= 2


def test_cli_publish_to_a_dead_broker_prints_one_line(tmp_path: Path) -> None:
    np.save(tmp_path / "k.npy", np.arange(5, dtype=np.int64))
    np.save(tmp_path / "v.npy", np.ones((5, 4), np.float32))
    brokers = _dead_broker()
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "from hps.cli.main import main; raise SystemExit(main())",
                           "publish", "--brokers", brokers, "--model", "m", "--table", "t",
                           "--keys", str(tmp_path / "k.npy"), "--vectors", str(tmp_path / "v.npy")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hps: error: cannot reach Kafka broker " + brokers) and "refused" in lines[0]
    assert elapsed < 15, elapsed             # the 5-s default deadline, plus the interpreter's start


@pytest.mark.parametrize("field, value, setting", [
    ("receive_buffer_size", 3_000_000_000, "update_source.receive_buffer_size"),
    ("metadata_refresh_interval_ms", 10**9, "update_source.metadata_refresh_interval_ms"),
])
def test_source_setting_out_of_librdkafka_range_is_a_config_error(field: str, value: int, setting: str) -> None:
    source = _source(KafkaConfig(brokers=_dead_broker(), **{field: value}))
    with pytest.raises(ConfigError, match=rf"{setting} .*was refused: .*outside allowed range"):
        source.start()
    assert not source.running


def test_source_refused_consumer_property_is_named() -> None:
    from hps.update.source import KafkaUpdateSource

    source = KafkaUpdateSource(KafkaConfig(brokers=_dead_broker()), group_id="g", update_filters=(".+",),
                               tags=[TAG], apply=lambda *a: None, consumer_config={"session.timeout.ms": -5})
    with pytest.raises(ConfigError, match=r"librdkafka property session\.timeout\.ms = -5 was refused"):
        source.start()


def test_publisher_setting_out_of_range_is_a_config_error() -> None:
    from hps.update.publisher import KafkaPublisher

    with pytest.raises(ConfigError, match=r"send_buffer_bytes \(librdkafka message\.max\.bytes = 2000001024\) "
                                          r"was refused"):
        KafkaPublisher(_dead_broker(), send_buffer_bytes=2_000_000_000)


def test_close_is_prompt_with_a_long_poll_timeout(kafka_brokers: str) -> None:
    """poll_timeout_ms=60000 used to make close() wait 30 s and leave the thread running."""
    from hps.update.publisher import KafkaPublisher

    with KafkaPublisher(kafka_brokers) as pub:
        pub.publish("m", "t", np.arange(3), np.ones((3, 4), np.float32))
    applied: list[int] = []
    source = _source(KafkaConfig(brokers=kafka_brokers, poll_timeout_ms=60000), group="long",
                     apply=lambda tag, k, v: applied.append(len(k))).start()
    try:
        deadline = time.monotonic() + 20
        while sum(applied) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sum(applied) == 3             # a lone update does not wait for the 60-s poll
        time.sleep(0.5)                      # now idle, inside a poll
        start = time.monotonic()
        source.close()
        assert time.monotonic() - start < 5
        assert not source.running
    finally:
        source.close()
