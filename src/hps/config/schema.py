"""Typed, frozen config objects for a HugeCTR ps.json (reference/hugectr-hps.md §1).

Attribute names are HugeCTR's JSON key names (so users find what they wrote), except
`ModelConfig.name` for the JSON key `model`. Each field's metadata carries its JSON type,
aliases and range check; `hps.config.parse` reads it, `to_dict` writes it back.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from hps.errors import UnknownModelError
from hps.storage.base import make_tag

UINT64_MAX = 2**64 - 1


def _f(default: Any = None, *, kind: str, aliases: tuple[str, ...] = (), json: str | None = None,
       check: tuple[str, Any] | None = None, required: bool = False, choices: dict[str, str] | None = None,
       default_factory: Any = None) -> Any:
    """A config field: `kind` is bool|int|float|str|list[int]|list[float]|list[str]|enum."""
    meta = {"kind": kind, "aliases": aliases, "json": json, "check": check, "required": required,
            "choices": choices}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


OVERFLOW_POLICIES = {
    "evict_random": "evict_random", "random": "evict_random",
    "evict_least_used": "evict_least_used", "least_used": "evict_least_used",
    "evict_oldest": "evict_oldest", "oldest": "evict_oldest",
}
CACHE_TYPES = {"dynamic": "dynamic", "static": "static", "uvm": "uvm", "stochastic": "dynamic"}


@dataclass(frozen=True)
class VolatileDatabaseConfig:
    """Keys shared by every `volatile_db` type (reference §1.3)."""

    type: str = "hash_map"
    num_partitions: int = _f(min(16, os.cpu_count() or 1), kind="int", check=("min", 1))
    max_batch_size: int = _f(65536, kind="int", check=("min", 1),
                             aliases=("max_get_batch_size", "max_set_batch_size"))
    overflow_margin: int = _f(UINT64_MAX, kind="int", check=("min", 1))
    overflow_policy: str = _f("evict_random", kind="enum", choices=OVERFLOW_POLICIES)
    overflow_resolution_target: float = _f(0.8, kind="float", check=("open01", None))
    initialize_after_startup: bool = _f(True, kind="bool")
    initial_cache_rate: float = _f(1.0, kind="float", check=("closed01", None))
    cache_missed_embeddings: bool = _f(False, kind="bool")
    update_filters: tuple[str, ...] = _f(kind="list[str]", default_factory=lambda: ("^hps_.+$",))
    refresh_time_after_fetch: bool = _f(False, kind="bool")  # legacy (pre-23.02), ignored

    @property
    def overflow_target_rows(self) -> int:
        """Rows a partition is shrunk to once it reaches `overflow_margin`."""
        return int(round(self.overflow_margin * self.overflow_resolution_target))


@dataclass(frozen=True)
class HashMapConfig(VolatileDatabaseConfig):
    """`volatile_db.type` hash_map / parallel_hash_map (and multi_process_hash_map, run in-process)."""

    allocation_rate: int = _f(268435456, kind="int", check=("min", 1))
    shared_memory_size: int = _f(17179869184, kind="int", check=("min", 1))
    shared_memory_name: str = _f("hctr_mp_hash_map_database", kind="str")
    shared_memory_auto_remove: bool = _f(True, kind="bool")


@dataclass(frozen=True)
class RedisClusterConfig(VolatileDatabaseConfig):
    """`volatile_db.type` redis_cluster: a Redis Cluster shared by many hps processes."""

    type: str = "redis_cluster"
    address: str = _f("127.0.0.1:7000", kind="str")
    user_name: str = _f("default", kind="str")
    password: str = _f("", kind="str")
    num_node_connections: int = _f(5, kind="int", check=("min", 1))
    enable_tls: bool = _f(False, kind="bool")
    tls_ca_certificate: str = _f("cacertbundle.crt", kind="str")
    tls_client_certificate: str = _f("client_cert.pem", kind="str")
    tls_client_key: str = _f("client_key.pem", kind="str")
    tls_server_name_identification: str = _f("redis.localhost", kind="str")

    @property
    def nodes(self) -> list[tuple[str, int]]:
        """Seed nodes parsed from `address` ("host:port,host:port" or ';'-separated)."""
        out = []
        for part in self.address.replace(";", ",").split(","):
            part = part.strip()
            if part:
                host, _, port = part.rpartition(":")
                out.append((host or "127.0.0.1", int(port or 7000)))
        return out


@dataclass(frozen=True)
class RocksDBConfig:
    """`persistent_db.type` rocks_db (reference §1.4)."""

    type: str = "rocks_db"
    path: str = _f(os.path.join(tempfile.gettempdir(), "rocksdb"), kind="str")
    num_threads: int = _f(16, kind="int", check=("min", 1))
    read_only: bool = _f(False, kind="bool")
    max_batch_size: int = _f(65536, kind="int", check=("min", 1),
                             aliases=("max_get_batch_size", "max_set_batch_size"))
    update_filters: tuple[str, ...] = _f(kind="list[str]", default_factory=lambda: ("^hps_.+$",))
    initialize_after_startup: bool = _f(True, kind="bool")


@dataclass(frozen=True)
class KafkaConfig:
    """`update_source.type` kafka_message_queue (reference §1.5)."""

    type: str = "kafka_message_queue"
    brokers: str = _f("127.0.0.1:9092", kind="str")
    metadata_refresh_interval_ms: int = _f(30000, kind="int", check=("min", 1))
    receive_buffer_size: int = _f(262144, kind="int", check=("min", 1),
                                  aliases=("max_receive_buffer_size",))
    poll_timeout_ms: int = _f(500, kind="int", check=("min", 1))
    max_batch_size: int = _f(8192, kind="int", check=("min", 1))
    failure_backoff_ms: int = _f(50, kind="int", check=("min", 0))
    max_commit_interval: int = _f(32, kind="int", check=("min", 1))


@dataclass(frozen=True)
class TableConfig:
    """One embedding table of a model, gathered from the model's per-table lists."""

    model_name: str
    table_id: int
    name: str
    sparse_file: str
    dim: int
    maxnum_keys_per_sample: int
    default_value: float

    @property
    def tag(self) -> str:
        """`hps_et.<model>.<table>`: storage table, column family and Kafka topic name."""
        return make_tag(self.model_name, self.name)


@dataclass(frozen=True)
class ModelConfig:
    """One entry of `models[]` (reference §1.2)."""

    name: str = _f("", kind="str", json="model", required=True)
    sparse_files: tuple[str, ...] = _f(kind="list[str]", required=True, default_factory=tuple,
                                       aliases=("sparse_model_files",))
    embedding_vecsize_per_table: tuple[int, ...] = _f(kind="list[int]", required=True,
                                                      default_factory=tuple, check=("min", 1))
    maxnum_catfeature_query_per_table_per_sample: tuple[int, ...] = _f(
        kind="list[int]", required=True, default_factory=tuple, check=("min", 1))
    default_value_for_each_table: tuple[float, ...] = _f(kind="list[float]", required=True,
                                                         default_factory=tuple)
    deployed_device_list: tuple[int, ...] = _f(kind="list[int]", required=True, default_factory=tuple,
                                               check=("min", 0), aliases=("deployed_devices",))
    embedding_table_names: tuple[str, ...] = _f(kind="list[str]", default_factory=tuple)
    max_batch_size: int = _f(64, kind="int", check=("min", 1), aliases=("max_batchsize",))
    num_of_worker_buffer_in_pool: int = _f(1, kind="int", check=("min", 1),
                                           aliases=("number_of_worker_buffers_in_pool",))
    num_of_refresher_buffer_in_pool: int = _f(1, kind="int", check=("min", 1),
                                              aliases=("number_of_refresh_buffers_in_pool",))
    cache_refresh_percentage_per_iteration: float = _f(0.0, kind="float", check=("closed01", None))
    hit_rate_threshold: float = _f(0.9, kind="float")
    gpucacheper: float = _f(0.2, kind="float", check=("closed01", None), aliases=("cache_size_percentage",))
    gpucache: bool = _f(True, kind="bool", aliases=("use_gpu_embedding_cache",))
    embedding_cache_type: str = _f("dynamic", kind="enum", choices=CACHE_TYPES)
    use_static_table: bool = _f(False, kind="bool")
    use_context_stream: bool = _f(True, kind="bool")
    use_hctr_cache_implementation: bool = _f(True, kind="bool")
    thread_pool_size: int = _f(16, kind="int", check=("min", 1))
    init_ec: bool = _f(True, kind="bool")
    enable_pagelock: bool = _f(False, kind="bool")
    fp8_quant: bool = _f(False, kind="bool")
    fuse_embedding_table: bool = _f(True, kind="bool")
    refresh_delay: float = _f(0.0, kind="float", check=("min", 0))
    refresh_interval: float = _f(0.0, kind="float", check=("min", 0))
    dense_file: str = _f("", kind="str", aliases=("dense_model_file",))  # legacy, ignored
    network_file: str = _f("", kind="str")  # legacy, ignored
    maxnum_des_feature_per_sample: int = _f(26, kind="int")  # legacy, ignored
    label_dim: int = _f(1, kind="int")  # legacy, ignored
    slot_num: int = _f(10, kind="int")  # legacy, ignored

    @property
    def num_tables(self) -> int:
        return len(self.sparse_files)

    @cached_property
    def tables(self) -> tuple[TableConfig, ...]:
        """Per-table view of the parallel per-model lists."""
        return tuple(
            TableConfig(self.name, i, self.embedding_table_names[i], self.sparse_files[i],
                        self.embedding_vecsize_per_table[i],
                        self.maxnum_catfeature_query_per_table_per_sample[i],
                        self.default_value_for_each_table[i])
            for i in range(self.num_tables)
        )

    @property
    def cache_type(self) -> str:
        """Effective cache type: `use_static_table` forces "static"."""
        return "static" if self.use_static_table else self.embedding_cache_type

    def table(self, table_id: int) -> TableConfig:
        """Table `table_id`, or `UnknownModelError` naming the valid range."""
        if not isinstance(table_id, int) or isinstance(table_id, bool) or not 0 <= table_id < self.num_tables:
            raise UnknownModelError(
                f"model {self.name!r}: table_id {table_id!r} out of range [0, {self.num_tables})")
        return self.tables[table_id]

    def max_keys_per_call(self, table_id: int) -> int:
        """The most keys one lookup of table `table_id` may carry: max_batch_size × maxnum[t]."""
        return self.max_batch_size * self.maxnum_catfeature_query_per_table_per_sample[table_id]


@dataclass(frozen=True)
class PsConfig:
    """A whole ps.json: global key type, shared tiers, update source and the models."""

    supportlonglong: bool = _f(True, kind="bool", aliases=("i64_input_key",))
    fuse_embedding_table: bool = _f(False, kind="bool")
    volatile_db: HashMapConfig | RedisClusterConfig | None = None
    persistent_db: RocksDBConfig | None = None
    update_source: KafkaConfig | None = None
    models: tuple[ModelConfig, ...] = ()
    #: Directory relative sparse_files / paths were resolved against (the ps.json's folder).
    base_dir: str = ""

    def model(self, name: str) -> ModelConfig:
        """The model called `name`, or `UnknownModelError` listing the served ones."""
        for m in self.models:
            if m.name == name:
                return m
        raise UnknownModelError(f"unknown model {name!r}; served models: {[m.name for m in self.models]}")

    @property
    def key_dtype(self) -> str:
        """"int64" when supportlonglong, else "uint32" (HugeCTR's unsigned 32-bit keys)."""
        return "int64" if self.supportlonglong else "uint32"

    def to_dict(self) -> dict[str, Any]:
        """The ps.json dict, with HugeCTR key names (round-trips through `load_config`)."""
        out: dict[str, Any] = _section_to_dict(self, skip=("volatile_db", "persistent_db", "update_source",
                                                           "models", "base_dir"))
        for name in ("volatile_db", "persistent_db", "update_source"):
            section = getattr(self, name)
            if section is not None:
                out[name] = _section_to_dict(section)
        out["models"] = [_section_to_dict(m) for m in self.models]
        return out


def _section_to_dict(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        out[f.metadata.get("json") or f.name] = list(value) if isinstance(value, tuple) else value
    return out
