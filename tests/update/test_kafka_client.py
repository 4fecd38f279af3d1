"""librdkafka client helpers: the rate-limited log and settings refused by librdkafka (no broker needed)."""

from __future__ import annotations

import logging

import pytest

from hps.errors import ConfigError
from hps.update.kafka_client import RateLimitedLog, client_logging, make_client


def test_rate_limited_log_writes_one_line_per_key_and_interval(caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import hps.update.kafka_client as kc

    now = [100.0]
    monkeypatch.setattr(kc.time, "monotonic", lambda: now[0])
    limiter = RateLimitedLog(logging.getLogger("hps.test.ratelimit"), interval_s=10)
    caplog.set_level(logging.INFO, logger="hps.test.ratelimit")
    written = [limiter.log(logging.ERROR, "t1", "table %s failed", "t1") for _ in range(400)]
    assert written.count(True) == 1
    assert limiter.log(logging.ERROR, "t2", "table %s failed", "t2")      # another key: its own budget
    now[0] += 10.5
    assert limiter.log(logging.ERROR, "t1", "table %s failed", "t1")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["table t1 failed", "table t2 failed", "table t1 failed (399 more like it in the last 10 s)"]
    limiter.forget("t1")
    assert limiter.log(logging.ERROR, "t1", "back")


def test_librdkafka_lines_go_to_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("hps.test.rdkafka")
    props, errors = client_logging(logger, "src")
    caplog.set_level(logging.DEBUG, logger="hps.test.rdkafka")
    for _ in range(50):  # connection failures: DEBUG only (error_cb says it once, in our words)
        props["logger"].log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect failed")
    for _ in range(50):  # other warnings: kept, rate-limited
        props["logger"].log(logging.WARNING, "%s [%s] %s", "SESSTMOUT", "rdkafka#consumer-1", "session timed out")
    assert {r.levelno for r in caplog.records if "Connect failed" in r.getMessage()} == {logging.DEBUG}
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

    class Err:
        def str(self) -> str:
            return "1/1 brokers are down"

        def name(self) -> str:
            return "_ALL_BROKERS_DOWN"

    props["error_cb"](Err())
    assert errors.last == "1/1 brokers are down" and errors.all_brokers_down and errors.count == 1


def test_make_client_names_the_refused_setting() -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    conf = {"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": 5}
    with pytest.raises(ConfigError, match=r"my publisher: send_buffer_bytes \(librdkafka message\.max\.bytes = 5\) "
                                          r"was refused: .*outside allowed range"):
        make_client(confluent_kafka.Producer, conf, {"message.max.bytes": "send_buffer_bytes"}, "my publisher")
    with pytest.raises(ConfigError, match=r"librdkafka property no\.such\.property = 1 was refused"):
        make_client(confluent_kafka.Producer, {"no.such.property": 1}, {}, "my publisher")
