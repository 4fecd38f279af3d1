"""Per-table lookup statistics: hits per level, keys asked of each tier, errors, latencies.

The pipeline bumps plain Python counters under one lock per lookup (a few hundred ns); nothing
here talks to Prometheus. `hps.metrics` reads `TableStats.counters()` when `/metrics` is scraped,
so the exported values reflect every lookup up to the scrape.

Latencies are kept twice: cumulative histogram buckets (`LATENCY_BUCKETS_S`, exported as
Prometheus histograms in seconds) and a window of the last `LATENCY_WINDOW` values (the p50 / p99
of `snapshot()`).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from dataclasses import dataclass, field

import numpy as np

LEVELS = ("cache", "volatile", "persistent", "default")
#: Codes of `LEVELS` in the per-key source arrays returned by the tier chain.
CACHE, VOLATILE, PERSISTENT, DEFAULT = range(4)
LATENCY_WINDOW = 4096
#: Upper bounds (seconds, `le`) of the latency histogram buckets; a last +Inf bucket follows.
LATENCY_BUCKETS_S = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
                     1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The storage tiers, as `record_tier` names them.
TIERS = ("volatile", "persistent")


class Histogram:
    """Latency histogram: per-bucket counts (not cumulative; +Inf last) and their sum in seconds.

    Not locked: its owner (`TableStats`) holds the lock around `observe` and `copy`."""

    __slots__ = ("buckets", "sum_s")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.sum_s = 0.0

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds

    def copy(self) -> "Histogram":
        out = Histogram()
        out.buckets, out.sum_s = list(self.buckets), self.sum_s
        return out

    def __add__(self, other: "Histogram") -> "Histogram":
        out = Histogram()
        out.buckets = [a + b for a, b in zip(self.buckets, other.buckets)]
        out.sum_s = self.sum_s + other.sum_s
        return out

    def cumulative(self) -> list[tuple[float, int]]:
        """[(le, observations ≤ le)] for every bound then +Inf (Prometheus `_bucket` samples)."""
        total, out = 0, []
        for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), self.buckets):
            total += n
            out.append((bound, total))
        return out


@dataclass
class TableStats:
    """Counters of one (model, table); updated by the pipeline under a lock, read by `snapshot`
    and `counters`.

    The all-hit path (`record_cache_hits`) bumps one histogram: its lookups' time is the cache
    probe's as well; `counters()` adds it to the other lookups' histograms."""

    lookups: int = 0
    #: Keys answered per level, indexed by the level codes above (Python ints: cheaper to bump).
    level_hits: list[int] = field(default_factory=lambda: [0] * len(LEVELS))
    volatile_errors: int = 0
    #: Keys the volatile tier could not ask (their node down), sent on to the persistent tier.
    volatile_unavailable_keys: int = 0
    async_inserts: int = 0
    #: Keys probed in the cache and not found there (a lookup that bypasses or has no cache adds none).
    cache_misses: int = 0
    #: Per storage tier: keys asked (unique: misses are deduplicated before the tiers) and found.
    tier_keys_asked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    tier_keys_found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    #: Latencies: all-hit lookups ("hit"); the other lookups, whole ("lookup") and their cache probe
    #: ("cache"); each storage tier call.
    histograms: dict[str, Histogram] = field(
        default_factory=lambda: {t: Histogram() for t in ("hit", "lookup", "cache", *TIERS)})
    _latencies_s: list[float] = field(default_factory=lambda: [0.0] * LATENCY_WINDOW)
    _latency_count: int = 0
    #: Per storage tier ("volatile", "persistent"): a window of call latencies and its fill count.
    _tier_latencies_s: dict[str, list[float]] = field(
        default_factory=lambda: {t: [0.0] * LATENCY_WINDOW for t in TIERS})
    _tier_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._hit = self.histograms["hit"]

    def record(self, level_hits: np.ndarray, seconds: float, cache_seconds: float | None = None) -> None:
        """Count one lookup whose keys were answered `level_hits[i]` times by level `LEVELS[i]`,
        that took `seconds` in all, `cache_seconds` of them probing the cache (None: no cache probed)."""
        counts = level_hits.tolist()
        hist = self.histograms
        with self._lock:
            self.lookups += 1
            for level, count in enumerate(counts):
                self.level_hits[level] += count
            self._latencies_s[self._latency_count % LATENCY_WINDOW] = seconds
            self._latency_count += 1
            hist["lookup"].observe(seconds)
            if cache_seconds is not None:
                hist["cache"].observe(cache_seconds)
                self.cache_misses += sum(counts) - counts[CACHE]

    def record_cache_hits(self, count: int, seconds: float) -> None:
        """Count one lookup of `count` keys, all answered by the cache (the hot path: no arrays);
        its `seconds` are the cache probe's as well."""
        bucket = bisect_left(LATENCY_BUCKETS_S, seconds)
        hit = self._hit
        with self._lock:
            self.lookups += 1
            self.level_hits[CACHE] += count
            i = self._latency_count
            self._latencies_s[i % LATENCY_WINDOW] = seconds
            self._latency_count = i + 1
            hit.buckets[bucket] += 1
            hit.sum_s += seconds

    def record_tier(self, tier: str, seconds: float, asked: int = 0, found: int = 0) -> None:
        """Count one call into storage tier `tier` ("volatile" | "persistent") that took `seconds`
        and found `found` of the `asked` keys it was given."""
        with self._lock:
            self._tier_latencies_s[tier][self._tier_counts[tier] % LATENCY_WINDOW] = seconds
            self._tier_counts[tier] += 1
            self.histograms[tier].observe(seconds)
            self.tier_keys_asked[tier] += asked
            self.tier_keys_found[tier] += found

    def count_volatile_error(self, unavailable_keys: int = 0) -> None:
        """Count one failed volatile-tier call that left `unavailable_keys` keys unasked."""
        with self._lock:
            self.volatile_errors += 1
            self.volatile_unavailable_keys += unavailable_keys

    def count_async_insert(self) -> None:
        with self._lock:
            self.async_inserts += 1

    def counters(self) -> dict:
        """A consistent copy of the cumulative counters, for `hps.metrics` at scrape time:
        lookups, hits per level, cache_misses, tier_keys_asked / tier_keys_found per tier,
        volatile_errors, volatile_unavailable_keys, async_inserts, and `histograms`: {timed: `Histogram`}
        for "lookup" (whole lookups), "cache" (cache probes), "volatile", "persistent" (tier calls)."""
        with self._lock:
            out = {"lookups": self.lookups, "hits": dict(zip(LEVELS, self.level_hits)),
                   "cache_misses": self.cache_misses,
                   "tier_keys_asked": dict(self.tier_keys_asked), "tier_keys_found": dict(self.tier_keys_found),
                   "volatile_errors": self.volatile_errors,
                   "volatile_unavailable_keys": self.volatile_unavailable_keys,
                   "async_inserts": self.async_inserts}
            hist = {t: h.copy() for t, h in self.histograms.items()}
        hit = hist.pop("hit")
        out["histograms"] = {**hist, "lookup": hist["lookup"] + hit, "cache": hist["cache"] + hit}
        return out

    def snapshot(self) -> dict:
        """A plain dict: lookups, keys, hits and hit_rate per level, errors, latency p50/p99 in µs
        (whole lookups, and per storage tier call in `tier_latency_us`)."""
        with self._lock:
            window = np.array(self._latencies_s[: min(self._latency_count, LATENCY_WINDOW)])
            tier_windows = {t: np.array(w[: min(self._tier_counts[t], LATENCY_WINDOW)])
                            for t, w in self._tier_latencies_s.items()}
            hits = dict(zip(LEVELS, self.level_hits))
            out = {"lookups": self.lookups, "keys": sum(hits.values()), "hits": hits,
                   "volatile_errors": self.volatile_errors,
                   "volatile_unavailable_keys": self.volatile_unavailable_keys, "async_inserts": self.async_inserts}
        out["hit_rate"] = {level: (n / out["keys"] if out["keys"] else 0.0) for level, n in hits.items()}
        out["latency_us"] = _percentiles_us(window)
        out["tier_latency_us"] = {t: _percentiles_us(w) for t, w in tier_windows.items()}
        return out


def _percentiles_us(window_s: np.ndarray) -> dict:
    if not len(window_s):
        return {"p50": None, "p99": None, "samples": 0}
    p50, p99 = np.percentile(window_s, [50, 99]) * 1e6
    return {"p50": float(p50), "p99": float(p99), "samples": int(len(window_s))}
