"""The Prometheus registry that `HPS` and Triton both export.

`HpsCollector(ps)` is a prometheus_client `Collector`: each `collect()` (one per scrape) reads the
live state of one `HPS` — the per-table counters its lookups bump (`hps.lookup.stats.TableStats`),
its caches and tiers, its Kafka update sources — so the numbers reflect every lookup up to the
scrape, and the lookup path never calls prometheus_client. Names follow Prometheus conventions:
base units (seconds, bytes), `_total` for counters, labels for dimensions (`FAMILIES` lists them).

Kafka consumer lag comes from each source's own thread, which notes it after every poll
(`hps.update.source`): confluent-kafka's consumer, called from the scrape thread while its own thread
polls, answered `get_watermark_offsets(cached=True)` in 1 to 42 s (tansu, confluent-kafka 2.16).

Where it is exported:
  - `HPS(..., metrics_port=9100)` or `serve_metrics(ps, port)`: an HTTP `/metrics` endpoint of its own
    (127.0.0.1 unless told otherwise), closed by `HPS.close()` / `MetricsServer.close()`;
  - `hps serve-metrics ps.json --port 9100`: a process serving an HPS and its metrics (a sidecar);
  - `hps triton serve`: the embedding model pushes the same samples into Triton's own `/metrics`
    (`hps.serving.triton.metrics`), from `samples()` below.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from hps.errors import ConfigError, HpsError
from hps.lookup.stats import LEVELS, TIERS

log = logging.getLogger(__name__)

_TABLE = ("model", "table")

#: name (as exposed) → (type, label names, help). The one list of what hps exports.
FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "hps_lookups_total": ("counter", _TABLE, "hps lookup calls (one per table per request)"),
    "hps_keys_total": ("counter", (*_TABLE, "level"),
                       "keys looked up, by the level that answered them: cache, volatile, persistent, default"),
    "hps_tier_keys_total": ("counter", (*_TABLE, "tier", "outcome"),
                            "keys asked of each tier (cache: every key probed; volatile, persistent: the unique "
                            "misses of the levels above), by outcome: hit, miss, unavailable (volatile node down)"),
    "hps_lookup_seconds": ("histogram", _TABLE, "hps lookup latency in seconds (whole lookups)"),
    "hps_tier_seconds": ("histogram", (*_TABLE, "tier"),
                         "latency in seconds of the cache probe and of each call into a storage tier"),
    "hps_tier_errors_total": ("counter", (*_TABLE, "tier"),
                              "storage tier calls that failed (their keys went on to the next tier)"),
    "hps_async_inserts_total": ("counter", _TABLE, "background cache inserts of missed keys"),
    "hps_cache_rows": ("gauge", (*_TABLE, "device"), "rows in the embedding cache"),
    "hps_cache_capacity_rows": ("gauge", (*_TABLE, "device"), "capacity of the embedding cache in rows"),
    "hps_cache_bytes": ("gauge", (*_TABLE, "device"), "memory held by the embedding cache in bytes"),
    "hps_tier_rows": ("gauge", ("tier", *_TABLE),
                      "rows of each table in a storage tier (RocksDB: its estimate-num-keys)"),
    "hps_tier_bytes": ("gauge", ("tier", *_TABLE),
                       "memory of each table in a storage tier in bytes (in-process hash maps only)"),
    "hps_kafka_messages_received_total": ("counter", ("tier",), "HCTR messages received by a Kafka update source"),
    "hps_kafka_messages_skipped_total": ("counter", ("tier", "reason"),
                                         "messages skipped and committed past, by reason"),
    "hps_kafka_updates_applied_total": ("counter", ("tier",), "(key, vector) updates applied to the tier"),
    "hps_kafka_batches_applied_total": ("counter", ("tier",), "update batches applied to the tier"),
    "hps_kafka_apply_failures_total": ("counter", ("tier",),
                                       "batches the tier refused for a while (retried after failure_backoff_ms)"),
    "hps_kafka_commits_total": ("counter", ("tier", "outcome"), "offset commits, by outcome: ok, failed"),
    "hps_kafka_client_errors_total": ("counter", ("tier",), "errors reported by the Kafka client"),
    "hps_kafka_source_up": ("gauge", ("tier",), "1 while the update source's consumer thread runs, else 0"),
    "hps_kafka_consumer_lag": ("gauge", ("tier",), "messages behind the newest offsets of the source's "
                               "partitions, as of its last poll"),
}

#: One exported sample: (sample name, labels, value); histogram samples carry `_bucket` (with `le`),
#: `_sum`, `_count` suffixes, counters `_total`.
Sample = tuple[str, dict[str, str], float]


class HpsCollector(Collector):
    """prometheus_client collector of one `HPS` (anything with `HPS`'s `_models`, `volatile`,
    `persistent` and `update_sources`): reads its state at every `collect()`."""

    def __init__(self, ps: Any) -> None:
        self._ps = ps

    def describe(self) -> list[Metric]:
        """The families without samples (so registering reads nothing)."""
        return [_family(name) for name in FAMILIES]

    def collect(self) -> Iterator[Metric]:
        """One `Metric` per family of `FAMILIES`, with the values of now."""
        families = {name: _family(name) for name in FAMILIES}
        if not getattr(self._ps, "_closed", False):
            self._lookup_samples(families)
            self._tier_samples(families)
            self._kafka_samples(families)
        yield from families.values()

    # -- readers ----------------------------------------------------------------------------------
    def _tables(self) -> list[tuple[str, str, Any, list[Any]]]:
        """[(model, table name, its `TableStats`, its caches)]: every served table, then every fused table
        (`fuse_embedding_table`: its `lookup_many` passes have their own stats, and the caches are its)."""
        out = []
        # HPS._models: {name: runtime with .config.tables, .stats (per table id), .replicas {(table, device):
        # lookup}, .fused (None, or FusedLookups with .plan.fused, .stats, .passes {(index, device): lookup})}
        for model, runtime in list(getattr(self._ps, "_models", {}).items()):
            replicas = list(runtime.replicas.items())
            for table, stats in zip(runtime.config.tables, runtime.stats):
                out.append((model, table.name, stats,
                            [r.cache for (t, _), r in replicas if t == table.table_id and r.cache is not None]))
            fused = getattr(runtime, "fused", None)
            if fused is not None:
                passes = list(fused.passes.items())
                for table, stats in zip(fused.plan.fused, fused.stats):
                    out.append((model, table.config.name, stats,
                                [r.cache for (i, _), r in passes if i == table.index and r.cache is not None]))
        return out

    def _lookup_samples(self, f: dict[str, Metric]) -> None:
        has = {tier: getattr(self._ps, tier, None) is not None for tier in TIERS}
        tables = self._tables()
        for model, name, stats, caches in tables:
            c = stats.counters()
            base = [model, name]
            f["hps_lookups_total"].add_metric(base, c["lookups"])
            hits = c["hits"]
            for level in LEVELS:
                f["hps_keys_total"].add_metric([*base, level], hits[level])
            keys = f["hps_tier_keys_total"]
            if caches:
                keys.add_metric([*base, "cache", "hit"], hits["cache"])
                keys.add_metric([*base, "cache", "miss"], c["cache_misses"])
            for tier in TIERS:
                if has[tier]:
                    asked, found = c["tier_keys_asked"][tier], c["tier_keys_found"][tier]
                    keys.add_metric([*base, tier, "hit"], found)
                    keys.add_metric([*base, tier, "miss"], asked - found)
            if has["volatile"]:
                keys.add_metric([*base, "volatile", "unavailable"], c["volatile_unavailable_keys"])
                f["hps_tier_errors_total"].add_metric([*base, "volatile"], c["volatile_errors"])
            f["hps_async_inserts_total"].add_metric(base, c["async_inserts"])
            hist = c["histograms"]
            _add_histogram(f["hps_lookup_seconds"], base, hist["lookup"])
            for tier in (["cache"] if caches else []) + [t for t in TIERS if has[t]]:
                _add_histogram(f["hps_tier_seconds"], [*base, tier], hist[tier])
        seen: set[int] = set()  # a fused table's caches also serve its member tables: report them once, as its
        for model, name, _, caches in reversed(tables):
            for cache in caches:
                if id(cache) in seen:
                    continue
                seen.add(id(cache))
                where = [model, name, str(cache.device)]
                _try(f["hps_cache_rows"], where, cache.size)
                _try(f["hps_cache_capacity_rows"], where, lambda cache=cache: cache.capacity_rows)
                _try(f["hps_cache_bytes"], where, lambda cache=cache: _cache_bytes(cache))

    def _tier_samples(self, f: dict[str, Metric]) -> None:
        for tier in TIERS:
            backend = getattr(self._ps, tier, None)
            if backend is None:
                continue
            rows = getattr(backend, "estimated_size", None) or backend.size  # RocksDB's size() iterates
            nbytes = getattr(backend, "memory_bytes", None)
            for model, runtime in list(getattr(self._ps, "_models", {}).items()):
                # the tiers' tables: one per table, or one per fused table (fuse_embedding_table)
                stored = getattr(runtime, "stored_tag", lambda t: t.tag)
                for tag in dict.fromkeys(stored(t) for t in runtime.config.tables):
                    labels = [tier, model, tag.split(".", 2)[-1]]
                    _try(f["hps_tier_rows"], labels, lambda: rows(tag))
                    if nbytes is not None:
                        _try(f["hps_tier_bytes"], labels, lambda: nbytes(tag))

    def _kafka_samples(self, f: dict[str, Metric]) -> None:
        for source in list(getattr(self._ps, "update_sources", None) or []):
            tier = str(getattr(source, "name", "")).split(":", 1)[0] or "unknown"
            stats = dict(source.stats)
            labels = [tier]
            f["hps_kafka_messages_received_total"].add_metric(labels, stats.get("messages", 0))
            for key, value in stats.items():
                if key.startswith("skipped_"):
                    f["hps_kafka_messages_skipped_total"].add_metric([tier, key[len("skipped_"):]], value)
            f["hps_kafka_updates_applied_total"].add_metric(labels, stats.get("pairs_applied", 0))
            f["hps_kafka_batches_applied_total"].add_metric(labels, stats.get("batches_applied", 0))
            f["hps_kafka_apply_failures_total"].add_metric(labels, stats.get("apply_failures", 0))
            f["hps_kafka_commits_total"].add_metric([tier, "ok"], stats.get("commits", 0))
            f["hps_kafka_commits_total"].add_metric([tier, "failed"], stats.get("commit_failures", 0))
            f["hps_kafka_client_errors_total"].add_metric(labels, stats.get("client_errors", 0))
            f["hps_kafka_source_up"].add_metric(labels, 1.0 if getattr(source, "running", False) else 0.0)
            f["hps_kafka_consumer_lag"].add_metric(labels, stats.get("lag", 0))


def registry_for(ps: Any) -> CollectorRegistry:
    """A new registry holding only `HpsCollector(ps)` (not prometheus_client's global one, so that
    several `HPS` in one process each export their own)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(HpsCollector(ps))
    return registry


def samples(collector: Collector) -> list[tuple[str, str, Sample]]:
    """[(family name as `FAMILIES` spells it, type, (sample name, labels, value))] of one `collect()`."""
    out = []
    for family in collector.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out.append((name, family.type, (s.name, dict(s.labels), float(s.value))))
    return out


@dataclass
class MetricsServer:
    """An HTTP server answering `/metrics` (Prometheus text format) from a registry, on its own thread."""

    address: str
    port: int
    _httpd: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port (idempotent)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5.0)
            self._httpd = None


def serve_metrics(ps: Any, port: int, address: str = "127.0.0.1") -> MetricsServer:
    """Serve `ps`'s metrics on `http://address:port/metrics` (port 0: any free port, see `.port`).

    Raises `ConfigError` naming the address when the port cannot be bound."""
    from prometheus_client import start_http_server

    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"metrics_port must be an int in 0..65535, got {port!r}")
    try:
        httpd, thread = start_http_server(port, addr=address, registry=registry_for(ps))
    except OSError as exc:
        raise ConfigError(f"metrics_port: cannot serve /metrics on {address}:{port}: {exc}") from exc
    thread.name = f"hps-metrics-{httpd.server_address[1]}"
    return MetricsServer(address, int(httpd.server_address[1]), httpd, thread)


# -- helpers ----------------------------------------------------------------------------------------
def _family(name: str) -> Metric:
    kind, labels, doc = FAMILIES[name]
    cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}[kind]
    return cls(name, doc, labels=list(labels))


def _add_histogram(family: Any, labels: list[str], hist: Any) -> None:
    buckets = [(_le(bound), float(n)) for bound, n in hist.cumulative()]
    family.add_metric(labels, buckets, hist.sum_s)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _try(family: Any, labels: list[str], read: Any) -> None:
    """Add `read()` as a sample; a tier or cache that cannot answer now (down, closed) is left out."""
    try:
        value = read()
    except HpsError as exc:
        log.debug("metric %s%s not read: %s", family.name, labels, exc)
        return
    family.add_metric(labels, float(value))


def _cache_bytes(cache: Any) -> int:
    """Memory a cache holds: its `memory_bytes()` where it has one, else the sum of its arrays
    (numpy or torch) and of the tables of a hash map it wraps."""
    fn = getattr(cache, "memory_bytes", None)
    if callable(fn):
        return int(fn())
    total = 0
    for value in vars(cache).values():
        if isinstance(value, np.ndarray) or type(value).__name__ == "Tensor":
            total += int(value.nbytes)
        elif callable(getattr(value, "memory_bytes", None)) and callable(getattr(value, "tables", None)):
            total += sum(int(value.memory_bytes(tag)) for tag in value.tables())
    return total
