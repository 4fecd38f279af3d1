"""hps statistics as Triton custom metrics (python-backend `MetricFamily`, Triton 2.51+).

They appear on Triton's own metrics endpoint (`--metrics-port`, /metrics) beside Triton's
nv_inference_* metrics, labelled by hps model, table and level:

    hps_lookups_total{model,table}            lookups (one per table per request)
    hps_keys_total{model,table}               keys looked up
    hps_hits_total{model,table,level}         keys answered by level: cache, volatile, persistent, default
    hps_hit_rate{model,table,level}           hits / keys since start
    hps_lookup_latency_us{model,table,quantile}   lookup latency p50 / p99 over the recent window (µs)
    hps_tier_latency_us{model,table,level,quantile}  per-tier find latency, when stats() gives
                                              "tier_latency_us": {level: {"p50", "p99"}}
    hps_cache_rows{model,table}, hps_cache_capacity_rows{model,table}
    hps_volatile_errors_total{model,table}

`metric_samples` reads `HPS.stats()` into (family, labels, value) rows (pure, testable);
`TritonMetricsExporter` pushes them from inside the python stub.
"""

from __future__ import annotations

import time
from typing import Any

#: name → (kind, description); kind "counter" values are cumulative and exported as increments.
FAMILIES: dict[str, tuple[str, str]] = {
    "hps_lookups_total": ("counter", "hps lookups (one per table per request)"),
    "hps_keys_total": ("counter", "keys looked up by hps"),
    "hps_hits_total": ("counter", "keys answered per hps level (cache, volatile, persistent, default)"),
    "hps_hit_rate": ("gauge", "fraction of keys answered per hps level since start"),
    "hps_lookup_latency_us": ("gauge", "hps lookup latency in microseconds over the recent window"),
    "hps_tier_latency_us": ("gauge", "hps per-tier find latency in microseconds over the recent window"),
    "hps_cache_rows": ("gauge", "rows in the hps embedding cache"),
    "hps_cache_capacity_rows": ("gauge", "capacity of the hps embedding cache in rows"),
    "hps_volatile_errors_total": ("counter", "volatile-tier failures seen by hps lookups"),
}

Sample = tuple[str, dict[str, str], float]


def metric_samples(stats: dict[str, Any]) -> list[Sample]:
    """`HPS.stats()` → [(family name, labels, value)] for the families in `FAMILIES`.

    stats: {"models": {model: {table: {"lookups", "keys", "hits": {level: n}, "hit_rate": {level: r},
    "latency_us": {"p50", "p99"}, "cache_rows", "cache_capacity_rows", "volatile_errors"}}}};
    missing or None entries are skipped."""
    out: list[Sample] = []
    for model, tables in (stats.get("models") or {}).items():
        for table, snap in (tables or {}).items():
            base = {"model": str(model), "table": str(table)}

            def add(name: str, value: Any, **labels: str) -> None:
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out.append((name, {**base, **labels}, float(value)))

            add("hps_lookups_total", snap.get("lookups"))
            add("hps_keys_total", snap.get("keys"))
            for level, n in (snap.get("hits") or {}).items():
                add("hps_hits_total", n, level=str(level))
            for level, rate in (snap.get("hit_rate") or {}).items():
                add("hps_hit_rate", rate, level=str(level))
            latency = snap.get("latency_us") or {}
            for key, quantile in (("p50", "0.5"), ("p99", "0.99")):
                add("hps_lookup_latency_us", latency.get(key), quantile=quantile)
            for level, tier in (snap.get("tier_latency_us") or {}).items():
                for key, quantile in (("p50", "0.5"), ("p99", "0.99")):
                    add("hps_tier_latency_us", (tier or {}).get(key), level=str(level), quantile=quantile)
            add("hps_cache_rows", snap.get("cache_rows"))
            add("hps_cache_capacity_rows", snap.get("cache_capacity_rows"))
            add("hps_volatile_errors_total", snap.get("volatile_errors"))
    return out


class TritonMetricsExporter:
    """Copies `ps.stats()` into Triton custom metrics at most every `interval_s` seconds.

    pb_utils: the `triton_python_backend_utils` module of the running stub; ps: an `hps.HPS`."""

    def __init__(self, pb_utils: Any, ps: Any, triton_model: str, interval_s: float = 1.0):
        family_cls = pb_utils.MetricFamily
        kinds = {"counter": family_cls.COUNTER, "gauge": family_cls.GAUGE}
        self._families = {name: family_cls(name=name, description=desc, kind=kinds[kind])
                          for name, (kind, desc) in FAMILIES.items()}
        self._ps = ps
        self._triton_model = triton_model
        self._interval_s = interval_s
        self._metrics: dict[tuple, Any] = {}
        self._last: dict[tuple, float] = {}
        self._last_update = float("-inf")
        self.update()

    def maybe_update(self) -> None:
        """`update()` if `interval_s` has passed since the last one."""
        if time.monotonic() - self._last_update >= self._interval_s:
            self.update()

    def update(self) -> None:
        """Push the current statistics: counters by their increase, gauges by value."""
        self._last_update = time.monotonic()
        for name, labels, value in metric_samples(self._ps.stats()):
            key = (name, tuple(sorted(labels.items())))
            metric = self._metrics.get(key)
            if metric is None:
                metric = self._metrics[key] = self._families[name].Metric(labels=labels)
            if FAMILIES[name][0] == "counter":
                delta = value - self._last.get(key, 0.0)
                if delta > 0:
                    metric.increment(delta)
                self._last[key] = max(value, self._last.get(key, 0.0))
            else:
                metric.set(value)
