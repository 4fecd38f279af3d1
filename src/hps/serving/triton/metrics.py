"""hps metrics on Triton's own metrics endpoint (python-backend `MetricFamily`, Triton 2.51+).

The samples are those of `hps.metrics.HpsCollector` (one code path with `HPS(metrics_port=...)` and
`hps serve-metrics`): the families of `hps.metrics.FAMILIES`, with the same names and labels, appear on
Triton's `--metrics-port` /metrics beside its nv_inference_* metrics. Triton's custom metrics are
pushed, not collected at scrape time, so `TritonMetricsExporter` copies the collector's samples into
them from a background thread every `interval_s` seconds (and after a batch of requests when
`interval_s` has passed): the values are at most `interval_s` old, busy or idle.

Triton's python backend can only `observe()` single values into a histogram, not set its buckets,
so each hps histogram goes out as its series: `<name>_bucket{le}`, `<name>_sum` and `<name>_count`,
typed counter (`histogram_quantile()` and `rate()` work on them as on any histogram).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from hps.metrics import FAMILIES as HPS_FAMILIES
from hps.metrics import HpsCollector, Sample, samples

#: name → (kind, description) of every family hps exports (`hps.metrics.FAMILIES`).
FAMILIES: dict[str, tuple[str, str]] = {name: (kind, doc) for name, (kind, _, doc) in HPS_FAMILIES.items()}


def metric_samples(ps: Any) -> list[tuple[str, str, str, Sample]]:
    """The samples to push for `ps` (an `hps.HPS`): [(Triton family name, "counter" | "gauge",
    description, (sample name, labels, value))]."""
    out = []
    for family, kind, sample in samples(HpsCollector(ps)):
        doc = FAMILIES[family][1]
        if kind == "histogram":  # hps_lookup_seconds_bucket, _sum, _count
            out.append((sample[0], "counter", f"{doc} ({sample[0][len(family) + 1:]} of the histogram)", sample))
        else:
            out.append((family, kind, doc, sample))
    return out


class TritonMetricsExporter:
    """Copies `ps`'s metrics into Triton custom metrics every `interval_s` seconds from a daemon
    thread (`interval_s` 0: after every batch of requests, through `maybe_update`); `close()` stops it.

    pb_utils: the `triton_python_backend_utils` module of the running stub; ps: an `hps.HPS`."""

    def __init__(self, pb_utils: Any, ps: Any, triton_model: str, interval_s: float = 1.0,
                 start_thread: bool = True) -> None:
        family_cls = pb_utils.MetricFamily
        self._kinds = {"counter": family_cls.COUNTER, "gauge": family_cls.GAUGE}
        self._family_cls = family_cls
        self._families: dict[str, Any] = {}
        self._ps = ps
        self._triton_model = triton_model
        self._interval_s = float(interval_s)
        self._metrics: dict[tuple, Any] = {}
        self._last: dict[tuple, float] = {}
        self._last_update = float("-inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._logger = getattr(pb_utils, "Logger", None)
        self.update()
        self._thread: threading.Thread | None = None
        if start_thread and self._interval_s > 0:
            self._thread = threading.Thread(target=self._run, name=f"hps-triton-metrics-{triton_model}", daemon=True)
            self._thread.start()

    def maybe_update(self) -> None:
        """`update()` if `interval_s` has passed since the last one."""
        if time.monotonic() - self._last_update >= self._interval_s:
            self.update()

    def update(self) -> None:
        """Push the current values: counters by their increase, gauges by value."""
        with self._lock:
            self._last_update = time.monotonic()
            for family, kind, doc, (name, labels, value) in metric_samples(self._ps):
                key = (name, tuple(sorted(labels.items())))
                metric = self._metrics.get(key)
                if metric is None:
                    fam = self._families.get(family)
                    if fam is None:
                        fam = self._families[family] = self._family_cls(name=family, description=doc,
                                                                        kind=self._kinds[kind])
                    metric = self._metrics[key] = fam.Metric(labels=labels)
                if kind == "counter":
                    delta = value - self._last.get(key, 0.0)
                    if delta > 0:
                        metric.increment(delta)
                    self._last[key] = max(value, self._last.get(key, 0.0))
                else:
                    metric.set(value)

    def close(self) -> None:
        """Stop the background thread (idempotent); call before closing the HPS."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.update()
            except Exception as exc:  # noqa: BLE001 - metrics must never take the model down
                if self._logger is not None:
                    self._logger.log_warn(f"hps model {self._triton_model}: metrics update failed: {exc}")
                if self._stop.wait(10 * self._interval_s):
                    return
