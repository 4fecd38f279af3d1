"""hps.metrics: /metrics over HTTP from `HPS(metrics_port=...)` and `hps serve-metrics`; names, types and
exact values after known traffic; values that move between scrapes; Kafka source counters."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import hps
from hps.errors import ConfigError
from hps.metrics import FAMILIES, HpsCollector, samples
from hps.model_format import write_sparse_model
from tests.kafka_fixture import kafka_brokers  # noqa: F401  (fixture)

ROWS, DIM = 100, 4
TABLE = {"model": "m", "table": "sparse_embedding0"}
#: 10 keys per lookup: 8 in the table (0..99), 2 in no tier.
KEYS = np.array([0, 1, 2, 3, 4, 5, 6, 7, 1000, 1001], dtype=np.int64)


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    write_sparse_model(root / "t0", np.arange(ROWS, dtype=np.int64), np.ones((ROWS, DIM), np.float32))
    return root / "t0"


def config(sparse, cache: bool) -> dict:
    return {"volatile_db": {"type": "hash_map"},
            "models": [{"model": "m", "sparse_files": [str(sparse)], "embedding_vecsize_per_table": [DIM],
                        "maxnum_catfeature_query_per_table_per_sample": [10], "default_value_for_each_table": [0.0],
                        "deployed_device_list": [0], "gpucache": cache, "gpucacheper": 0.5,
                        "hit_rate_threshold": 1.0}]}


def scrape(url: str) -> dict[str, tuple[str, dict]]:
    """{family name: (type, {(sample name, sorted labels): value})} of one GET."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        out[name] = (family.type, values)
    return out


def value(metrics, family: str, sample: str | None = None, **labels: str) -> float:
    return metrics[family][1][(sample or family, tuple(sorted({**TABLE, **labels}.items())))]


@pytest.mark.parametrize("cache", [False, True])
def test_scrape_after_known_traffic(sparse, cache):
    with hps.HPS(config(sparse, cache), show_progress=False, metrics_port=0) as ps:
        for _ in range(3):
            ps.lookup(KEYS, "m", 0)
        metrics = scrape(ps.metrics_server.url)

    assert {name: kind for name, (kind, _) in metrics.items()} == {
        name: kind for name, (kind, _, _) in FAMILIES.items()}
    assert value(metrics, "hps_lookups_total") == 3
    # without a cache every lookup asks the volatile tier; with one, the first fills it (defaults included)
    volatile, cached = (8, 20) if cache else (24, 0)
    keys = {level: value(metrics, "hps_keys_total", level=level) for level in ("cache", "volatile", "persistent",
                                                                               "default")}
    assert keys == {"cache": cached, "volatile": volatile, "persistent": 0, "default": 30 - cached - volatile}
    tier_keys = {(dict(labels)["tier"], dict(labels)["outcome"]): v
                 for (_, labels), v in metrics["hps_tier_keys_total"][1].items()}
    expected = {("volatile", "hit"): volatile, ("volatile", "miss"): 30 - cached - volatile,
                ("volatile", "unavailable"): 0}
    if cache:
        expected |= {("cache", "hit"): 20, ("cache", "miss"): 10}
    assert tier_keys == expected
    assert value(metrics, "hps_lookup_seconds", "hps_lookup_seconds_count") == 3
    assert value(metrics, "hps_lookup_seconds", "hps_lookup_seconds_bucket", le="+Inf") == 3
    assert 0 < value(metrics, "hps_lookup_seconds", "hps_lookup_seconds_sum") < 30
    assert value(metrics, "hps_tier_seconds", "hps_tier_seconds_count", tier="volatile") == (1 if cache else 3)
    assert value(metrics, "hps_tier_rows", tier="volatile") == ROWS
    assert value(metrics, "hps_tier_bytes", tier="volatile") > ROWS * DIM * 4
    if cache:
        assert value(metrics, "hps_tier_seconds", "hps_tier_seconds_count", tier="cache") == 3
        assert value(metrics, "hps_cache_rows", device="cpu") == 10
        assert value(metrics, "hps_cache_capacity_rows", device="cpu") >= 50
        assert value(metrics, "hps_cache_bytes", device="cpu") >= 50 * DIM * 4
    else:
        assert not metrics["hps_cache_rows"][1]


def test_values_move_between_scrapes(sparse):
    """Every lookup up to the scrape counts, counters and gauges alike, with no request in between."""
    with hps.HPS(config(sparse, cache=True), show_progress=False, metrics_port=0) as ps:
        url = ps.metrics_server.url
        ps.lookup(KEYS, "m", 0)
        before = scrape(url)
        ps.lookup(KEYS, "m", 0)
        ps.lookup(np.arange(20, 30, dtype=np.int64), "m", 0)
        ps.volatile.insert_or_assign("hps_et.m.sparse_embedding0", np.arange(500, 505, dtype=np.int64),
                                     np.zeros((5, DIM), np.float32))
        after = scrape(url)
    assert value(after, "hps_lookups_total") - value(before, "hps_lookups_total") == 2
    assert value(after, "hps_keys_total", level="cache") - value(before, "hps_keys_total", level="cache") == 10
    assert value(after, "hps_keys_total", level="volatile") - value(before, "hps_keys_total", level="volatile") == 10
    assert value(after, "hps_cache_rows", device="cpu") - value(before, "hps_cache_rows", device="cpu") == 10
    assert value(after, "hps_tier_rows", tier="volatile") == ROWS + 5
    count = ("hps_lookup_seconds", "hps_lookup_seconds_count")
    assert value(after, *count) - value(before, *count) == 2


def test_volatile_unavailable_keys_and_errors(sparse):
    with hps.HPS(config(sparse, cache=False), show_progress=False) as ps:
        ps._models["m"].stats[0].count_volatile_error(7)  # what the tier chain counts when a Redis node is down
        families = {(name, s[0], tuple(sorted(s[1].items()))): s[2] for name, _, s in samples(HpsCollector(ps))}
    assert families[("hps_tier_keys_total", "hps_tier_keys_total",
                     tuple(sorted({**TABLE, "tier": "volatile", "outcome": "unavailable"}.items())))] == 7
    assert families[("hps_tier_errors_total", "hps_tier_errors_total",
                     tuple(sorted({**TABLE, "tier": "volatile"}.items())))] == 1


def test_endpoint_on_loopback_closed_by_close(sparse):
    ps = hps.HPS(config(sparse, cache=False), show_progress=False, metrics_port=0)
    server = ps.metrics_server
    assert server.address == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
    assert "hps_lookups_total" in scrape(server.url)
    ps.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=2)
    with socket.socket() as s:  # the port is free again (for a server: SO_REUSEADDR, as prometheus_client's)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))
        s.listen()


def test_port_in_use_is_a_config_error_and_nothing_stays_open(sparse):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"metrics_port: cannot serve /metrics on 127.0.0.1:{port}"):
            hps.HPS(config(sparse, cache=False), show_progress=False, metrics_port=port)


def test_kafka_sources_read_at_scrape_time():
    stats = {"messages": 12, "pairs_applied": 300, "batches_applied": 4, "messages_skipped": 3,
             "skipped_malformed": 2, "skipped_kafka_key": 0, "skipped_dim_mismatch": 1, "skipped_unknown_table": 0,
             "skipped_rejected": 0, "apply_failures": 1, "commits": 4, "commit_failures": 0, "client_errors": 2,
             "lag": 7}
    source = SimpleNamespace(name="volatile:hps_volatile_group", stats=stats, running=True)
    ps = SimpleNamespace(_models={}, volatile=None, persistent=None, update_sources=[source])
    collector = HpsCollector(ps)

    def read():
        return {(s[0], tuple(sorted(s[1].items()))): s[2] for _, _, s in samples(collector)}

    got = read()
    tier = (("tier", "volatile"),)
    assert got[("hps_kafka_messages_received_total", tier)] == 12
    assert got[("hps_kafka_updates_applied_total", tier)] == 300
    assert got[("hps_kafka_messages_skipped_total", (("reason", "malformed"), *tier))] == 2
    assert got[("hps_kafka_messages_skipped_total", (("reason", "dim_mismatch"), *tier))] == 1
    assert got[("hps_kafka_commits_total", (("outcome", "ok"), *tier))] == 4
    assert got[("hps_kafka_source_up", tier)] == 1
    assert got[("hps_kafka_consumer_lag", tier)] == 7
    stats["messages"] += 5  # the source's live dict: the next scrape sees it
    assert read()[("hps_kafka_messages_received_total", tier)] == 17
    source.running = False
    assert read()[("hps_kafka_source_up", tier)] == 0


@pytest.mark.slow
def test_serve_metrics_command(sparse, tmp_path):
    import json

    ps_json = tmp_path / "ps.json"
    ps_json.write_text(json.dumps(config(sparse, cache=False)))
    proc = subprocess.Popen([sys.executable, "-m", "hps.cli.main", "serve-metrics", str(ps_json), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = ""
        while "metrics on" not in line:
            line = proc.stderr.readline()
            assert line, "hps serve-metrics exited before serving"
        url = line.split("metrics on ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        metrics = scrape(url)
        assert value(metrics, "hps_tier_rows", tier="volatile") == ROWS
        assert value(metrics, "hps_lookups_total") == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_metrics_of_a_running_hps(kafka_brokers, sparse, monkeypatch):  # noqa: F811 (fixture)
    """Updates applied and messages skipped by reason, from a real broker, on /metrics."""
    import json
    import time

    pytest.importorskip("confluent_kafka")
    from hps.update.publisher import KafkaPublisher
    from tests.kafka_fixture import TEST_CONSUMER_CONFIG

    monkeypatch.setenv("HPS_KAFKA_CONSUMER_CONFIG", json.dumps(TEST_CONSUMER_CONFIG))
    cfg = config(sparse, cache=False)
    cfg["volatile_db"]["update_filters"] = [".+"]
    cfg["update_source"] = {"type": "kafka_message_queue", "brokers": kafka_brokers, "poll_timeout_ms": 20,
                            "max_batch_size": 8192, "failure_backoff_ms": 20}
    with hps.HPS(cfg, show_progress=False, metrics_port=0) as ps:
        with KafkaPublisher(kafka_brokers, num_key_groups=1) as pub:
            for _ in range(2):  # vectors of dim 2 for a dim-4 table
                pub.publish("m", "sparse_embedding0", np.arange(3, dtype=np.int64), np.zeros((3, 2), np.float32))
            pub.publish("m", "sparse_embedding0", np.arange(200, 250, dtype=np.int64), np.ones((50, DIM), np.float32))
        volatile = ("tier", "volatile"),
        deadline = time.monotonic() + 30
        while True:
            metrics = scrape(ps.metrics_server.url)
            applied = metrics["hps_kafka_updates_applied_total"][1].get(("hps_kafka_updates_applied_total", volatile))
            if applied == 50 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert applied == 50
    skipped = metrics["hps_kafka_messages_skipped_total"][1]
    assert skipped[("hps_kafka_messages_skipped_total", (("reason", "dim_mismatch"), *volatile))] == 2
    assert metrics["hps_kafka_messages_received_total"][1][("hps_kafka_messages_received_total", volatile)] >= 3
    assert metrics["hps_kafka_source_up"][1][("hps_kafka_source_up", volatile)] == 1
    assert metrics["hps_kafka_consumer_lag"][1][("hps_kafka_consumer_lag", volatile)] == 0  # caught up
    assert value(metrics, "hps_tier_rows", tier="volatile") == ROWS + 50


def test_fused_tables(sparse, tmp_path):
    """fuse_embedding_table: lookup_many's passes count under the fused table, whose cache is reported once."""
    write_sparse_model(tmp_path / "t1", np.arange(1000, 1000 + ROWS, dtype=np.int64), np.ones((ROWS, DIM), np.float32))
    cfg = config(sparse, cache=True)
    model = cfg["models"][0]
    model.update(sparse_files=[str(sparse), str(tmp_path / "t1")], embedding_table_names=["a", "b"],
                 embedding_vecsize_per_table=[DIM, DIM], maxnum_catfeature_query_per_table_per_sample=[10, 10],
                 default_value_for_each_table=[0.0, 0.0])
    cfg["fuse_embedding_table"] = True
    with hps.HPS(cfg, show_progress=False, metrics_port=0) as ps:
        ps.lookup_many([np.arange(5), np.arange(1000, 1005)], "m", [0, 1])
        metrics = scrape(ps.metrics_server.url)
    lookups = {dict(labels)["table"]: v for (_, labels), v in metrics["hps_lookups_total"][1].items()}
    fused = [name for name in lookups if name not in ("a", "b")]
    assert len(fused) == 1 and lookups[fused[0]] == 1
    keys = sum(v for (_, labels), v in metrics["hps_keys_total"][1].items() if dict(labels)["table"] == fused[0])
    assert keys == 10
    assert {dict(labels)["table"] for (_, labels) in metrics["hps_cache_rows"][1]} == set(fused)
    assert {dict(labels)["table"] for (_, labels) in metrics["hps_tier_rows"][1]} == set(fused)
    assert value(metrics, "hps_tier_rows", table=fused[0], tier="volatile") == 2 * ROWS
