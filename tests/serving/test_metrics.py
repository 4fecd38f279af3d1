"""hps statistics → Triton custom metric samples; counters pushed as increments."""

from hps.serving.triton.metrics import FAMILIES, TritonMetricsExporter, metric_samples

STATS = {"models": {"m": {"t0": {
    "lookups": 2, "keys": 10, "hits": {"cache": 6, "volatile": 3, "persistent": 0, "default": 1},
    "hit_rate": {"cache": 0.6, "volatile": 0.3, "persistent": 0.0, "default": 0.1},
    "latency_us": {"p50": 12.5, "p99": None, "samples": 2}, "cache_rows": 7, "cache_capacity_rows": 100,
    "volatile_errors": 0, "tier_latency_us": {"volatile": {"p50": 3.0, "p99": 9.0}}}}}}


def test_metric_samples():
    samples = {(name, tuple(sorted(labels.items()))): value for name, labels, value in metric_samples(STATS)}
    assert samples[("hps_hits_total", (("level", "cache"), ("model", "m"), ("table", "t0")))] == 6
    assert samples[("hps_lookup_latency_us", (("model", "m"), ("quantile", "0.5"), ("table", "t0")))] == 12.5
    assert ("hps_lookup_latency_us", (("model", "m"), ("quantile", "0.99"), ("table", "t0"))) not in samples
    assert samples[("hps_keys_total", (("model", "m"), ("table", "t0")))] == 10
    assert samples[("hps_tier_latency_us", (("level", "volatile"), ("model", "m"), ("quantile", "0.99"),
                                            ("table", "t0")))] == 9.0
    assert {name for name, _ in samples} <= set(FAMILIES)


class FakeMetric:
    def __init__(self):
        self.value = 0.0

    def increment(self, v):
        self.value += v

    def set(self, v):
        self.value = v


class FakeFamily:
    COUNTER, GAUGE = "counter", "gauge"
    made: dict = {}

    def __init__(self, name, description, kind):
        self.name = name

    def Metric(self, labels):
        return FakeFamily.made.setdefault((self.name, tuple(sorted(labels.items()))), FakeMetric())


class FakePbUtils:
    MetricFamily = FakeFamily


class FakePs:
    def __init__(self):
        self.stats_value = STATS

    def stats(self):
        return self.stats_value


def test_exporter_increments_counters_by_delta():
    ps = FakePs()
    TritonMetricsExporter(FakePbUtils, ps, "m", interval_s=0).update()
    lookups = FakeFamily.made[("hps_lookups_total", (("model", "m"), ("table", "t0")))]
    assert lookups.value == 2  # created + update with unchanged stats: no double counting
    ps.stats_value = {"models": {"m": {"t0": {**STATS["models"]["m"]["t0"], "lookups": 5}}}}
    exporter = TritonMetricsExporter(FakePbUtils, ps, "m", interval_s=0)
    assert lookups.value == 7  # a fresh exporter (new stub process) counts from its own zero
    exporter.maybe_update()
    assert lookups.value == 7
