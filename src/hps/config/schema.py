"""Typed, frozen config objects for a HugeCTR ps.json (reference/hugectr-hps.md §1).

Attribute names are HugeCTR's JSON key names (so users find what they wrote), except
`ModelConfig.name` for the JSON key `model`. Each field's metadata carries its JSON type,
aliases, range check and whether it is a secret; `hps.config.parse` reads it, `to_dict`
writes it back. Secrets (the Redis password) never show in `repr()` / `str()`: they read
`'***'` there and in `PsConfig.to_dict(redact_secrets=True)`, the form for logs and displays.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from hps.errors import ConfigError, UnknownModelError
from hps.config.tags import make_tag

UINT64_MAX = 2**64 - 1
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
#: The longest refresh period / delay accepted, in seconds (about 31 years; `threading` waits
#: overflow near 2**33 s, and an infinite period would kill the refresher thread).
MAX_REFRESH_S = 1e9
#: What `secret` fields show in `repr()` and in `to_dict(redact_secrets=True)`.
REDACTED = "***"


def _f(default: Any = None, *, kind: str, aliases: tuple[str, ...] = (), json: str | None = None,
       check: tuple[str, Any] | None = None, required: bool = False, choices: dict[str, str] | None = None,
       default_factory: Any = None, secret: bool = False, nonempty: bool = False, merge: bool = False,
       also: tuple[Any, ...] = ()) -> Any:
    """A config field: `kind` is bool|int|float|str|list[int]|list[float]|list[str]|enum.

    `check` is ("min", lo), ("range", (lo, hi)), ("closed01", None) or ("open01", None); an int
    without an upper bound in `check` must still fit int64; values in `also` are accepted
    outside the range (a "-1 means off" value). `secret` values never show in
    `repr()` or error messages; `nonempty` strings (or list items) may not be "". With `merge`,
    the key and its aliases may be given together (see `hps.config.parse._merge_names`);
    otherwise that is an error."""
    meta = {"kind": kind, "aliases": aliases, "json": json, "check": check, "required": required,
            "choices": choices, "secret": secret, "nonempty": nonempty, "merge": merge,
            "also": also}
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
    num_partitions: int = _f(min(16, os.cpu_count() or 1), kind="int", check=("range", (1, INT32_MAX)))
    #: Legacy `max_get_batch_size` / `max_set_batch_size` (pre-23.02) are read as this key; given
    #: together, `max_batch_size` wins, else the smaller legacy value (`parse._merge_names`).
    max_batch_size: int = _f(65536, kind="int", check=("range", (1, INT32_MAX)),
                             aliases=("max_get_batch_size", "max_set_batch_size"), merge=True)
    overflow_margin: int = _f(UINT64_MAX, kind="int", check=("range", (1, UINT64_MAX)))
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
    """`volatile_db.type` hash_map / parallel_hash_map, and multi_process_hash_map (the same map in
    /dev/shm, shared by the processes of a host: `hps.storage.shared_hash_map`)."""

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
    password: str = _f("", kind="str", secret=True)
    num_node_connections: int = _f(5, kind="int", check=("range", (1, 65536)))
    enable_tls: bool = _f(False, kind="bool")
    tls_ca_certificate: str = _f("cacertbundle.crt", kind="str")
    tls_client_certificate: str = _f("client_cert.pem", kind="str")
    tls_client_key: str = _f("client_key.pem", kind="str")
    tls_server_name_identification: str = _f("redis.localhost", kind="str")

    def __repr__(self) -> str:
        return _repr_hiding_secrets(self)

    @property
    def nodes(self) -> list[tuple[str, int]]:
        """Seed nodes parsed from `address` ("host:port,host:port" or ';'-separated; a missing host
        is 127.0.0.1, a missing port 7000); `ConfigError` for a bad port (checked at parse time)."""
        return parse_host_ports(self.address, default_port=7000, where="volatile_db.address")


@dataclass(frozen=True)
class RocksDBConfig:
    """`persistent_db.type` rocks_db (reference §1.4)."""

    type: str = "rocks_db"
    path: str = _f(os.path.join(tempfile.gettempdir(), "rocksdb"), kind="str", nonempty=True)
    num_threads: int = _f(16, kind="int", check=("range", (1, 1024)))  # RocksDB background threads
    read_only: bool = _f(False, kind="bool")
    max_batch_size: int = _f(65536, kind="int", check=("range", (1, INT32_MAX)),
                             aliases=("max_get_batch_size", "max_set_batch_size"), merge=True)
    update_filters: tuple[str, ...] = _f(kind="list[str]", default_factory=lambda: ("^hps_.+$",))
    initialize_after_startup: bool = _f(True, kind="bool")


@dataclass(frozen=True)
class KafkaConfig:
    """`update_source.type` kafka_message_queue (reference §1.5).

    Ranges are librdkafka's where a value goes to it: `metadata_refresh_interval_ms` is
    `topic.metadata.refresh.interval.ms` (librdkafka takes -1 .. 3600000, -1 turning the periodic
    refresh off; hps takes -1 or 10 .. 3600000, not a refresh every few milliseconds),
    `receive_buffer_size` + 1024 must fit `max.partition.fetch.bytes` (at most 10**9); timeouts
    and counts are positive C ints, and `failure_backoff_ms` is 1 ms .. 1 h (0 would retry a
    failing tier in a busy loop)."""

    type: str = "kafka_message_queue"
    brokers: str = _f("127.0.0.1:9092", kind="str")
    metadata_refresh_interval_ms: int = _f(30000, kind="int", check=("range", (10, 3_600_000)), also=(-1,))
    receive_buffer_size: int = _f(262144, kind="int", check=("range", (1, 1_000_000_000 - 1024)),
                                  aliases=("max_receive_buffer_size",))
    poll_timeout_ms: int = _f(500, kind="int", check=("range", (1, INT32_MAX)))
    max_batch_size: int = _f(8192, kind="int", check=("range", (1, INT32_MAX)))
    failure_backoff_ms: int = _f(50, kind="int", check=("range", (1, 3_600_000)))
    max_commit_interval: int = _f(32, kind="int", check=("range", (1, INT32_MAX)))

    @property
    def broker_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of each broker in `brokers` (',' or ';'-separated, optional `proto://`)."""
        return parse_host_ports(self.brokers, default_port=9092, where="update_source.brokers", schemes=True)


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
                                       aliases=("sparse_model_files",), nonempty=True)
    embedding_vecsize_per_table: tuple[int, ...] = _f(kind="list[int]", required=True,
                                                      default_factory=tuple, check=("range", (1, INT32_MAX)))
    maxnum_catfeature_query_per_table_per_sample: tuple[int, ...] = _f(
        kind="list[int]", required=True, default_factory=tuple, check=("range", (1, INT32_MAX)))
    default_value_for_each_table: tuple[float, ...] = _f(kind="list[float]", required=True,
                                                         default_factory=tuple)
    deployed_device_list: tuple[int, ...] = _f(kind="list[int]", required=True, default_factory=tuple,
                                               check=("range", (0, INT32_MAX)), aliases=("deployed_devices",))
    embedding_table_names: tuple[str, ...] = _f(kind="list[str]", default_factory=tuple)
    max_batch_size: int = _f(64, kind="int", check=("range", (1, INT32_MAX)), aliases=("max_batchsize",))
    num_of_worker_buffer_in_pool: int = _f(1, kind="int", check=("range", (1, INT32_MAX)),
                                           aliases=("number_of_worker_buffers_in_pool",))
    #: 0 is allowed, as in HugeCTR (its TRT benchmark notebook and PyTorch Triton sample use it).
    num_of_refresher_buffer_in_pool: int = _f(1, kind="int", check=("range", (0, INT32_MAX)),
                                              aliases=("number_of_refresh_buffers_in_pool",))
    cache_refresh_percentage_per_iteration: float = _f(0.0, kind="float", check=("closed01", None))
    hit_rate_threshold: float = _f(0.9, kind="float")
    gpucacheper: float = _f(0.2, kind="float", check=("closed01", None), aliases=("cache_size_percentage",))
    gpucache: bool = _f(True, kind="bool", aliases=("use_gpu_embedding_cache",))
    embedding_cache_type: str = _f("dynamic", kind="enum", choices=CACHE_TYPES)
    use_static_table: bool = _f(False, kind="bool")
    use_context_stream: bool = _f(True, kind="bool")
    use_hctr_cache_implementation: bool = _f(True, kind="bool")
    thread_pool_size: int = _f(16, kind="int", check=("range", (1, 65536)))
    init_ec: bool = _f(True, kind="bool")
    enable_pagelock: bool = _f(False, kind="bool")
    fp8_quant: bool = _f(False, kind="bool")
    fuse_embedding_table: bool = _f(True, kind="bool")
    refresh_delay: float = _f(0.0, kind="float", check=("range", (0, MAX_REFRESH_S)))
    refresh_interval: float = _f(0.0, kind="float", check=("range", (0, MAX_REFRESH_S)))
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

    def to_dict(self, *, redact_secrets: bool = False) -> dict[str, Any]:
        """The ps.json dict, with HugeCTR key names (round-trips through `load_config`).

        It holds the Redis password, as a ps.json must (the Triton repository writer uses it);
        pass `redact_secrets=True` for anything shown or logged: set secrets then read '***'."""
        out: dict[str, Any] = _section_to_dict(self, redact_secrets, skip=("volatile_db", "persistent_db",
                                                                           "update_source", "models", "base_dir"))
        for name in ("volatile_db", "persistent_db", "update_source"):
            section = getattr(self, name)
            if section is not None:
                out[name] = _section_to_dict(section, redact_secrets)
        out["models"] = [_section_to_dict(m, redact_secrets) for m in self.models]
        return out


def _section_to_dict(obj: Any, redact_secrets: bool, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if redact_secrets and f.metadata.get("secret") and value:
            value = REDACTED
        out[f.metadata.get("json") or f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _repr_hiding_secrets(obj: Any) -> str:
    """The dataclass repr, with set `secret` fields shown as '***'."""
    parts = []
    for f in fields(obj):
        if f.repr:
            value = getattr(obj, f.name)
            parts.append(f"{f.name}={REDACTED!r}" if f.metadata.get("secret") and value else f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def parse_host_ports(text: str, *, default_port: int, where: str, schemes: bool = False) -> list[tuple[str, int]]:
    """(host, port) pairs of "host:port,host:port" (',' or ';'-separated; "[v6]:port" for IPv6;
    a missing host is 127.0.0.1, a missing port `default_port`); with `schemes`, a leading
    "proto://" on each entry (librdkafka's broker syntax) is skipped.

    `ConfigError` naming `where` for an empty list, a port that is not a number in 1..65535,
    an unbracketed IPv6 host, a host with blanks, or credentials (`user:pw@host`, never echoed)."""
    out = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if schemes and "://" in part:
            part = part.split("://", 1)[1]
        if "@" in part:  # user:password@host would put a secret in messages and logs
            raise ConfigError(f"{where}: entry {len(out) + 1} holds '@': credentials do not go in an address "
                              "(Redis takes user_name / password)")
        if part.startswith("["):
            host, sep, rest = part[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ConfigError(f"{where}: {part!r} is not [IPv6]:port")
            port = rest[1:]
        else:
            host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
            if ":" in host:
                raise ConfigError(f"{where}: {part!r}: write an IPv6 host in brackets, as [::1]:{default_port}")
        if any(c.isspace() for c in host):
            raise ConfigError(f"{where}: host {host!r} contains blanks")
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"{where}: port {port!r} of {part!r} is not a number in 1..65535")
        out.append((host or "127.0.0.1", int(port) if port else default_port))
    if not out:
        raise ConfigError(f"{where}: {text!r} names no host")
    return out
