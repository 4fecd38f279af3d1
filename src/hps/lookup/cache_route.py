"""Whether a host (numpy) cache is worth probing: `CacheRoute`, measured per table replica.

A CPU cache sits in the same memory as the in-process hash map behind it: a cache hit costs
about what the map's find costs, and every miss pays the probe, a dedupe, the insert (with its
evictions) and a merge on top of the map's find. Measured on the 2-vCPU VM (20 M × 64 rows,
1,024 × 26 keys, gpucacheper 0.1): 18.5–23 ms through the cache against 2.4 ms without it.
In front of a slow tier (Redis, RocksDB) the cache wins instead. So the route is measured,
not guessed: each lookup's seconds per key feed a moving average of its route (through the
cache, or straight to the tiers), the cheaper route serves, and one lookup in `EXPLORE_EVERY`
takes the other route so that its average follows the traffic (a cold or changed cache, a
tier that got slower). The first `WARMUP_LOOKUPS` lookups always go through the cache; the next
ones go to the tiers until one of them has been measured (not `EXPLORE_EVERY` lookups later: a
cache slower than its tier would serve that many lookups first).

Bypassing the cache changes no answer: the tiers hold every row the cache holds (online updates
reach both), and a bypassed lookup gets exact vectors where the cache path might have given the
default value under `hit_rate_threshold` < 1. Its keys count as answered by the tier that did.
"""

from __future__ import annotations

import threading

#: Lookups that always go through the cache before the route is measured.
WARMUP_LOOKUPS = 16
#: One lookup in this many takes the route the averages do not pick.
EXPLORE_EVERY = 32
#: Weight of the newest lookup in a route's moving average of seconds per key.
EWMA_WEIGHT = 0.2


class CacheRoute:
    """Picks, per lookup, between probing the cache and going straight to the tiers.

    `use_cache()` says which route the next lookup takes; `record(via_cache, keys, seconds)`
    reports what it cost. Thread-safe enough for many callers: the counters are updated under a
    lock, and a race only changes which route one lookup takes."""

    def __init__(self, explore_every: int = EXPLORE_EVERY, warmup_lookups: int = WARMUP_LOOKUPS) -> None:
        self._explore_every = max(2, int(explore_every))
        self._warmup = int(warmup_lookups)
        self._lookups = 0
        #: Moving averages of seconds per key, through the cache and straight to the tiers (None: unmeasured).
        self.cache_s_per_key: float | None = None
        self.tier_s_per_key: float | None = None
        self._lock = threading.Lock()

    def prefers_cache(self) -> bool:
        """The route the averages pick (the cache until the tiers' route has been measured)."""
        tier, cache = self.tier_s_per_key, self.cache_s_per_key
        return tier is None or cache is None or cache <= tier

    def use_cache(self) -> bool:
        """True when the next lookup should probe the cache, False to ask the tiers directly."""
        with self._lock:
            self._lookups += 1
            count = self._lookups
        if count <= self._warmup:
            return True
        if self.tier_s_per_key is None:  # the tiers' route is not measured yet: measure it now
            return False
        prefer = self.prefers_cache()
        explore = count % self._explore_every == 0
        return prefer != explore

    def record(self, via_cache: bool, num_keys: int, seconds: float) -> None:
        """Report a lookup of `num_keys` keys that took `seconds` through the cache (`via_cache`)
        or straight to the tiers."""
        if num_keys <= 0:
            return
        per_key = seconds / num_keys
        with self._lock:
            if via_cache:
                old = self.cache_s_per_key
                self.cache_s_per_key = per_key if old is None else old + EWMA_WEIGHT * (per_key - old)
            else:
                old = self.tier_s_per_key
                self.tier_s_per_key = per_key if old is None else old + EWMA_WEIGHT * (per_key - old)

    def snapshot(self) -> dict:
        """`{"route": "cache" | "tiers", "cache_us_per_key", "tier_us_per_key"}` (None: unmeasured)."""
        as_us = lambda s: None if s is None else s * 1e6  # noqa: E731
        return {"route": "cache" if self.prefers_cache() else "tiers",
                "cache_us_per_key": as_us(self.cache_s_per_key), "tier_us_per_key": as_us(self.tier_s_per_key)}
