"""hps metrics pushed into Triton custom metrics: the families of hps.metrics, counters as increments,
histograms as their series, kept fresh by a background thread (no request needed)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import hps
from hps.metrics import FAMILIES as HPS_FAMILIES
from hps.model_format import write_sparse_model
from hps.serving.triton.metrics import FAMILIES, TritonMetricsExporter, metric_samples

LABELS = (("model", "m"), ("table", "sparse_embedding0"))


class FakeMetric:
    def __init__(self):
        self.value = 0.0

    def increment(self, v):
        assert v > 0
        self.value += v

    def set(self, v):
        self.value = v


class FakeFamily:
    """pb_utils.MetricFamily: records every family made and its metrics by labels."""

    COUNTER, GAUGE = "counter", "gauge"
    made: dict = {}
    kinds: dict = {}

    def __init__(self, name, description, kind):
        assert description
        self.name = name
        FakeFamily.kinds[name] = kind

    def Metric(self, labels):
        return FakeFamily.made.setdefault((self.name, tuple(sorted(labels.items()))), FakeMetric())


class FakePbUtils:
    MetricFamily = FakeFamily


@pytest.fixture()
def ps(tmp_path):
    FakeFamily.made.clear()
    FakeFamily.kinds.clear()
    write_sparse_model(tmp_path / "t0", np.arange(100, dtype=np.int64), np.ones((100, 4), np.float32))
    config = {"volatile_db": {"type": "hash_map"},
              "models": [{"model": "m", "sparse_files": [str(tmp_path / "t0")], "embedding_vecsize_per_table": [4],
                          "maxnum_catfeature_query_per_table_per_sample": [10], "default_value_for_each_table": [0.0],
                          "deployed_device_list": [0], "gpucache": False}]}
    with hps.HPS(config, show_progress=False) as server:
        yield server


def value(name, **labels):
    return FakeFamily.made[(name, tuple(sorted({**dict(LABELS), **labels}.items())))].value


def test_families_are_hps_metrics_families():
    assert FAMILIES == {name: (kind, doc) for name, (kind, _, doc) in HPS_FAMILIES.items()}


def test_samples_and_kinds(ps):
    ps.lookup(np.array([1, 2, 500]), "m", 0)
    pushed = {(family, kind) for family, kind, _, _ in metric_samples(ps)}
    assert ("hps_keys_total", "counter") in pushed and ("hps_tier_rows", "gauge") in pushed
    # Triton cannot set a histogram's buckets: its series go out as counters
    assert {("hps_lookup_seconds_bucket", "counter"), ("hps_lookup_seconds_sum", "counter"),
            ("hps_lookup_seconds_count", "counter")} <= pushed


def test_exporter_increments_counters_by_delta(ps):
    ps.lookup(np.arange(10), "m", 0)
    exporter = TritonMetricsExporter(FakePbUtils, ps, "m", interval_s=0)
    assert value("hps_lookups_total") == 1
    assert value("hps_keys_total", level="volatile") == 10
    assert value("hps_lookup_seconds_count") == 1 and value("hps_lookup_seconds_bucket", le="+Inf") == 1
    assert FakeFamily.kinds["hps_lookup_seconds_bucket"] == "counter"
    exporter.update()  # unchanged stats: no double counting
    assert value("hps_lookups_total") == 1
    ps.lookup(np.arange(10), "m", 0)
    ps.lookup(np.arange(10), "m", 0)
    exporter.maybe_update()
    assert value("hps_lookups_total") == 3 and value("hps_keys_total", level="volatile") == 30
    assert value("hps_tier_rows", tier="volatile") == 100
    TritonMetricsExporter(FakePbUtils, ps, "m", interval_s=0)  # a new stub process counts from its own zero
    assert value("hps_lookups_total") == 6


def test_exporter_stays_fresh_without_requests(ps):
    """The stale value of issue 18 (hps_lookups_total 1 after 204 requests): values pushed only when a
    request came. A background thread now pushes every interval_s, with no request."""
    exporter = TritonMetricsExporter(FakePbUtils, ps, "m", interval_s=0.05)
    try:
        assert value("hps_lookups_total") == 0
        for _ in range(204):
            ps.lookup(np.arange(10), "m", 0)
        deadline = time.monotonic() + 5
        while value("hps_lookups_total") != 204 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert value("hps_lookups_total") == 204
        assert value("hps_keys_total", level="volatile") == 2040
    finally:
        exporter.close()
    assert not exporter._thread.is_alive()


@pytest.mark.triton
@pytest.mark.slow
def test_tritons_metrics_port_is_fresh_without_requests(seed_model, tmp_path):
    """hps triton serve: the stub's thread pushes every metrics_interval_s; the last requests show up with
    no request after them, histograms as their series."""
    import urllib.request

    http = pytest.importorskip("tritonclient.http")
    from hps.serving.triton import build_repository, serve
    from hps.serving.triton.embedding_io import make_request

    repo = build_repository(seed_model["ps_json"], seed_model["dense"], tmp_path / "repo", metrics_interval_s=0.2)
    server = serve(repo, http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=180)
    client = http.InferenceServerClient(server.url_http)
    try:
        keys, numkeys = make_request([np.array([0, 1, 2, 10**9], np.int64)])
        for _ in range(25):
            inputs = [http.InferInput("KEYS", keys.shape, "INT64"), http.InferInput("NUMKEYS", numkeys.shape, "INT32")]
            inputs[0].set_data_from_numpy(keys)
            inputs[1].set_data_from_numpy(numkeys)
            client.infer("hps_embedding", inputs)
        labels = 'model="hps_embedding",table="hps_embedding_t0"'
        deadline = time.monotonic() + 10
        while True:
            text = urllib.request.urlopen(server.url_metrics, timeout=5).read().decode()
            metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("hps_")}
            if metrics.get(f"hps_lookups_total{{{labels}}}") == 25 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert metrics[f"hps_lookups_total{{{labels}}}"] == 25
        assert sum(metrics[f'hps_keys_total{{level="{level}",{labels}}}']
                   for level in ("cache", "volatile", "persistent", "default")) == 100
        assert metrics[f"hps_lookup_seconds_count{{{labels}}}"] == 25
        assert "# TYPE hps_lookup_seconds_bucket counter" in text
    finally:
        client.close()
        server.stop()
