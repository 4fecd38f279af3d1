"""Storage tiers behind one `KeyValueBackend` protocol; `make_backend` maps config to class."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hps.storage.base import KeyValueBackend, make_tag

if TYPE_CHECKING:
    from hps.config.schema import HashMapConfig, RedisClusterConfig, RocksDBConfig

__all__ = ["KeyValueBackend", "make_backend", "make_tag"]


def make_backend(config: HashMapConfig | RedisClusterConfig | RocksDBConfig | None,
                 key_bytes: int = 8) -> KeyValueBackend | None:
    """The one place that maps a tier's config to its backend class (None → tier disabled).

    `key_bytes` is 4 for `supportlonglong: false` (HugeCTR stores 32-bit keys raw in Redis)."""
    from hps.config.schema import HashMapConfig, RedisClusterConfig, RocksDBConfig

    if config is None:
        return None
    if isinstance(config, HashMapConfig) and config.type == "multi_process_hash_map":
        from hps.storage.shared_hash_map import SharedHashMapBackend

        return SharedHashMapBackend(config)
    if isinstance(config, HashMapConfig):
        from hps.storage.hash_map import HashMapBackend

        return HashMapBackend(config)
    if isinstance(config, RedisClusterConfig):
        from hps.storage.redis_cluster import RedisClusterBackend

        return RedisClusterBackend(config, key_bytes=key_bytes)
    if isinstance(config, RocksDBConfig):
        from hps.storage.rocksdb import RocksDBBackend

        return RocksDBBackend(config)
    raise TypeError(f"no storage backend for {type(config).__name__}")
