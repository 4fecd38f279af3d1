"""Per-table lookup statistics: hits per level, misses, errors, latency percentiles."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

LEVELS = ("cache", "volatile", "persistent", "default")
#: Codes of `LEVELS` in the per-key source arrays returned by the tier chain.
CACHE, VOLATILE, PERSISTENT, DEFAULT = range(4)
LATENCY_WINDOW = 4096


@dataclass
class TableStats:
    """Counters of one (model, table); updated by the pipeline under a lock, read by `snapshot`."""

    lookups: int = 0
    #: Keys answered per level, indexed by the level codes above (Python ints: cheaper to bump).
    level_hits: list[int] = field(default_factory=lambda: [0] * len(LEVELS))
    volatile_errors: int = 0
    #: Keys the volatile tier could not ask (their node down), sent on to the persistent tier.
    volatile_unavailable_keys: int = 0
    async_inserts: int = 0
    _latencies_s: np.ndarray = field(default_factory=lambda: np.zeros(LATENCY_WINDOW))
    _latency_count: int = 0
    #: Per storage tier ("volatile", "persistent"): a window of call latencies and its fill count.
    _tier_latencies_s: dict[str, np.ndarray] = field(
        default_factory=lambda: {t: np.zeros(LATENCY_WINDOW) for t in ("volatile", "persistent")})
    _tier_counts: dict[str, int] = field(default_factory=lambda: {"volatile": 0, "persistent": 0})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, level_hits: np.ndarray, seconds: float) -> None:
        """Count one lookup whose keys were answered `level_hits[i]` times by level `LEVELS[i]`."""
        counts = level_hits.tolist()
        with self._lock:
            self.lookups += 1
            for level, count in enumerate(counts):
                self.level_hits[level] += count
            self._latencies_s[self._latency_count % LATENCY_WINDOW] = seconds
            self._latency_count += 1

    def record_cache_hits(self, count: int, seconds: float) -> None:
        """Count one lookup of `count` keys, all answered by the cache (the hot path: no arrays)."""
        with self._lock:
            self.lookups += 1
            self.level_hits[CACHE] += count
            self._latencies_s[self._latency_count % LATENCY_WINDOW] = seconds
            self._latency_count += 1

    def record_tier(self, tier: str, seconds: float) -> None:
        """Count one call into storage tier `tier` ("volatile" | "persistent") that took `seconds`."""
        with self._lock:
            self._tier_latencies_s[tier][self._tier_counts[tier] % LATENCY_WINDOW] = seconds
            self._tier_counts[tier] += 1

    def count_volatile_error(self, unavailable_keys: int = 0) -> None:
        """Count one failed volatile-tier call that left `unavailable_keys` keys unasked."""
        with self._lock:
            self.volatile_errors += 1
            self.volatile_unavailable_keys += unavailable_keys

    def count_async_insert(self) -> None:
        with self._lock:
            self.async_inserts += 1

    def snapshot(self) -> dict:
        """A plain dict: lookups, keys, hits and hit_rate per level, errors, latency p50/p99 in µs
        (whole lookups, and per storage tier call in `tier_latency_us`)."""
        with self._lock:
            window = self._latencies_s[: min(self._latency_count, LATENCY_WINDOW)].copy()
            tier_windows = {t: w[: min(self._tier_counts[t], LATENCY_WINDOW)].copy()
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
