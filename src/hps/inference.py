"""hps.inference: HugeCTR's `hugectr.inference` Python API by its names, over `hps.HPS` (reference §3.1).

HugeCTR users change only their imports; both of HugeCTR's modules map here:

    # from hugectr import DatabaseType_t
    # from hugectr.inference import HPS, ParameterServerConfig, InferenceParams, VolatileDatabaseParams
    from hps.inference import HPS, ParameterServerConfig, InferenceParams, VolatileDatabaseParams, DatabaseType_t

    ps_config = ParameterServerConfig(
        emb_table_name={"hps_demo": ["sparse_embedding1", "sparse_embedding2"]},
        embedding_vec_size={"hps_demo": [16, 32]},
        max_feature_num_per_sample_per_emb_table={"hps_demo": [2, 2]},
        inference_params_array=[InferenceParams(
            model_name="hps_demo", max_batchsize=1024, hit_rate_threshold=1.0, dense_model_file="",
            sparse_model_files=["hps_demo0_sparse_1000.model", "hps_demo1_sparse_1000.model"],
            deployed_devices=[0], use_gpu_embedding_cache=True, cache_size_percentage=0.5,
            i64_input_key=True)],
        volatile_db=VolatileDatabaseParams(DatabaseType_t.hash_map))
    hps = HPS(ps_config)                                   # or HPS("ps.json")
    vectors = hps.lookup(keys, "hps_demo", 0)             # (n,) int64 -> (n, 16) float32 numpy
    hps.lookup_fromdlpack(torch.utils.dlpack.to_dlpack(keys_t), torch.utils.dlpack.to_dlpack(out_t),
                          "hps_demo", 0)                  # out_t now holds the vectors

The parameter classes are thin: they check each argument's type when it is set (constructor or
attribute), and `ParameterServerConfig.to_dict()` builds the ps.json dict that `hps.config` parses;
`HPS` is `hps.HPS` on that config. Names, positional order and defaults are HugeCTR 24.x's pybind
ones (`HugeCTR/include/pybind/hps_wrapper.hpp`), including its Python-only defaults
(`number_of_worker_buffers_in_pool=2`, `VolatileDatabaseParams()` = parallel_hash_map, so a
`ParameterServerConfig` without `volatile_db` has a CPU hash map tier). As in HugeCTR:
`ParameterServerConfig`'s three per-model maps give the table names, dims and keys per sample (the
`InferenceParams` lists of the same meaning are not used), its `volatile_db` / `persistent_db` /
`update_source` replace those of each `InferenceParams`, table fusion is off on this path, and a
`default_value_for_each_table` shorter than the tables is filled with its first value. Legacy dense
inference fields (`use_mixed_precision`, `scaler`, `use_algorithm_search`, `use_cuda_graph`,
`non_trainable_params_file`, `device_id`, ...) are accepted and ignored.

Differences, on purpose: a wrong type or an unknown enum name raises `ConfigError` naming the argument
(pybind raised a TypeError listing every overload); enum arguments also take HugeCTR's config strings
("redis", "rocksdb", "dynamic"); keys outside uint32 with `i64_input_key=False` raise `KeyInputError`
instead of being truncated; `lookup` takes keys of any shape `S` and returns `S + (dim,)`.
"""

from __future__ import annotations

import enum
import numbers
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

import numpy as np

from hps import parameter_server
from hps.config import HashMapConfig, PsConfig, RedisClusterConfig, parse_config
from hps.config.parse import PERSISTENT_TYPES, UPDATE_SOURCE_TYPES, VOLATILE_TYPES, ConfigWarning
from hps.config.schema import OVERFLOW_POLICIES
from hps.errors import ConfigError

__all__ = ["HPS", "DatabaseOverflowPolicy_t", "DatabaseType_t", "EmbeddingCacheType_t", "InferenceParams",
           "ParameterServerConfig", "PersistentDatabaseParams", "UpdateSourceParams", "UpdateSourceType_t",
           "VolatileDatabaseParams"]


# ---------------------------------------------------------------------------------------------- enums
class _HugeCTREnum(enum.Enum):
    """An enum with HugeCTR's value names and C++ values; `Enum("redis")` also takes config strings."""

    def __int__(self) -> int:
        return self.value

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            name = _ENUM_ALIASES[cls.__name__].get(value.lower())
            if name is not None:
                return cls[name]
        raise ConfigError(f"{cls.__name__}: unknown value {value!r}; expected one of "
                          f"{[m.name for m in cls]} (or HugeCTR's config strings for them)")


class DatabaseType_t(_HugeCTREnum):  # noqa: N801 - HugeCTR's name
    """`hugectr.DatabaseType_t`: the `type` of a volatile or persistent database."""

    disabled = 0
    hash_map = 1
    parallel_hash_map = 2
    multi_process_hash_map = 3
    redis_cluster = 4
    rocks_db = 5


class DatabaseOverflowPolicy_t(_HugeCTREnum):  # noqa: N801
    """`hugectr.DatabaseOverflowPolicy_t`: which entries a full volatile-database partition evicts."""

    evict_random = 0
    evict_least_used = 1
    evict_oldest = 2


class UpdateSourceType_t(_HugeCTREnum):  # noqa: N801
    """`hugectr.UpdateSourceType_t`: where online updates come from."""

    null = 0
    kafka_message_queue = 1


class EmbeddingCacheType_t(_HugeCTREnum):  # noqa: N801
    """`hugectr.inference.EmbeddingCacheType_t`: the GPU embedding cache's kind."""

    Dynamic = 0
    Static = 1
    UVM = 2
    stochastic = 3  # parsed by HugeCTR, runs as Dynamic


# pybind's export_values(): hugectr.inference.Dynamic etc.
Dynamic, Static, UVM = EmbeddingCacheType_t.Dynamic, EmbeddingCacheType_t.Static, EmbeddingCacheType_t.UVM

_ENUM_ALIASES: dict[str, dict[str, str]] = {
    "DatabaseType_t": {alias: canonical or "disabled" for alias, canonical in {**VOLATILE_TYPES,
                                                                                **PERSISTENT_TYPES}.items()},
    "DatabaseOverflowPolicy_t": dict(OVERFLOW_POLICIES),
    "UpdateSourceType_t": {alias: canonical or "null" for alias, canonical in UPDATE_SOURCE_TYPES.items()},
    "EmbeddingCacheType_t": {m.name.lower(): m.name for m in EmbeddingCacheType_t},
}


# ---------------------------------------------------------------------------------------------- arguments
_REQUIRED: Any = object()


@dataclass(frozen=True)
class _Arg:
    """One constructor argument / attribute: its HugeCTR name, kind, default and allowed enum values.

    kind: "bool" | "int" | "uint" | "float" | "str" | "path" | "list[<kind>]" | "dict[<kind>]" |
    an enum class | a parameter class (by name inside a list kind)."""

    name: str
    kind: Any
    default: Any = _REQUIRED
    factory: Callable[[], Any] | None = None
    allowed: tuple[Any, ...] = ()


class _Params:
    """Base of the parameter classes: HugeCTR's positional order and keywords, a type check on every set."""

    _ARGS: ClassVar[tuple[_Arg, ...]] = ()
    #: legacy keyword → the argument it sets (None: accepted and ignored, with a ConfigWarning)
    _LEGACY: ClassVar[dict[str, str | None]] = {}
    #: attribute alias → argument (HugeCTR's struct member names where the keyword differs)
    _ATTR_ALIASES: ClassVar[dict[str, str]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self).__name__
        if len(args) > len(self._ARGS):
            raise ConfigError(f"{cls}: takes at most {len(self._ARGS)} positional arguments, got {len(args)}")
        values = {arg.name: value for arg, value in zip(self._ARGS, args)}
        names = {arg.name for arg in self._ARGS}
        for key, value in kwargs.items():
            target = key if key in names else self._LEGACY.get(key, "?")
            if target == "?":
                raise ConfigError(f"{cls}: unknown keyword argument {key!r}; expected one of {sorted(names)}")
            if target is None:
                warnings.warn(f"{cls}: legacy argument {key!r} is ignored", ConfigWarning, stacklevel=2)
                continue
            if target in values and (key == target or values[target] != value):
                raise ConfigError(f"{cls}: argument {target!r} given twice"
                                  + (f" (as {key!r})" if key != target else ""))
            values[target] = value
        for arg in self._ARGS:
            if arg.name in values:
                setattr(self, arg.name, values[arg.name])
            elif arg.default is not _REQUIRED or arg.factory is not None:
                setattr(self, arg.name, arg.factory() if arg.factory else arg.default)
            else:
                raise ConfigError(f"{cls}: required argument {arg.name!r} is missing")

    def __setattr__(self, name: str, value: Any) -> None:
        name = self._ATTR_ALIASES.get(name, name)
        arg = next((a for a in self._ARGS if a.name == name), None)
        if arg is None:
            raise ConfigError(f"{type(self).__name__} has no argument {name!r}")
        object.__setattr__(self, name, _convert(value, arg, f"{type(self).__name__}.{name}"))

    def __getattr__(self, name: str) -> Any:  # only for names not found normally: the aliases
        target = type(self)._ATTR_ALIASES.get(name)
        if target is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self, target)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, a.name) == getattr(other, a.name)
                                                 for a in self._ARGS)

    __hash__ = None  # type: ignore[assignment] - mutable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{a.name}={getattr(self, a.name)!r}' for a in self._ARGS)})"


def _convert(value: Any, arg: _Arg, where: str, kind: Any = None) -> Any:
    """`value` checked and normalised for `kind` (default `arg.kind`); `ConfigError` naming `where`."""
    kind = arg.kind if kind is None else kind
    if isinstance(kind, str) and kind.startswith("list["):
        if isinstance(value, (str, bytes, dict)) or not isinstance(value, (list, tuple, np.ndarray)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        return [_convert(v, arg, f"{where}[{i}]", kind[5:-1]) for i, v in enumerate(value)]
    if isinstance(kind, str) and kind.startswith("dict["):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a dict of model name → list, got {_describe(value)}")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: keys must be model names (str), got {_describe(key)}")
            out[key] = _convert(item, arg, f"{where}[{key!r}]", kind[5:-1])
        return out
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError(f"{where}: expected True or False, got {_describe(value)}")
        return bool(value)
    if kind in ("int", "uint"):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        if kind == "uint" and value < 0:
            raise ConfigError(f"{where}: expected a non-negative integer, got {value!r}")
        return int(value)
    if kind == "float":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        return value
    if kind == "path":
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{where}: expected a path (str), got {_describe(value)}")
        return os.fspath(value)
    if isinstance(kind, type) and issubclass(kind, _HugeCTREnum):
        if not isinstance(value, (kind, str)):
            raise ConfigError(f"{where}: expected {kind.__name__}, got {_describe(value)}")
        try:
            member = kind(value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if arg.allowed and member not in arg.allowed:
            raise ConfigError(f"{where}: {member} is not allowed here; expected one of "
                              f"{[str(m) for m in arg.allowed]}")
        return member
    kind = globals()[kind] if isinstance(kind, str) else kind  # a parameter class named in a list kind
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _json_value(value: Any) -> Any:
    return value.name if isinstance(value, _HugeCTREnum) else value


# ---------------------------------------------------------------------------------------------- parameters
_VOLATILE = (DatabaseType_t.disabled, DatabaseType_t.hash_map, DatabaseType_t.parallel_hash_map,
             DatabaseType_t.multi_process_hash_map, DatabaseType_t.redis_cluster)


class VolatileDatabaseParams(_Params):
    """`hugectr.inference.VolatileDatabaseParams(type=DatabaseType_t.parallel_hash_map, address=..., ...)`:
    the CPU-memory tier (ps.json `volatile_db`, reference §1.3). `type` comes first, positionally."""

    _ARGS = (
        _Arg("type", DatabaseType_t, DatabaseType_t.parallel_hash_map, allowed=_VOLATILE),
        _Arg("address", "str", "127.0.0.1:7000"),
        _Arg("user_name", "str", "default"),
        _Arg("password", "str", ""),
        _Arg("num_partitions", "uint", min(16, os.cpu_count() or 1)),
        _Arg("allocation_rate", "uint", 256 * 1024 * 1024),
        _Arg("shared_memory_size", "uint", 16 * 1024 ** 3),
        _Arg("shared_memory_name", "str", "hctr_mp_hash_map_database"),
        _Arg("shared_memory_auto_remove", "bool", True),
        _Arg("num_node_connections", "uint", 5),
        _Arg("max_batch_size", "uint", 64 * 1024),
        _Arg("enable_tls", "bool", False),
        _Arg("tls_ca_certificate", "str", "cacertbundle.crt"),
        _Arg("tls_client_certificate", "str", "client_cert.pem"),
        _Arg("tls_client_key", "str", "client_key.pem"),
        _Arg("tls_server_name_identification", "str", "redis.localhost"),
        _Arg("overflow_margin", "uint", 2**64 - 1),
        _Arg("overflow_policy", DatabaseOverflowPolicy_t, DatabaseOverflowPolicy_t.evict_random),
        _Arg("overflow_resolution_target", "float", 0.8),
        _Arg("initialize_after_startup", "bool", True),
        _Arg("initial_cache_rate", "float", 1.0),
        _Arg("cache_missed_embeddings", "bool", False),
        _Arg("update_filters", "list[str]", factory=lambda: ["^hps_.+$"]),
    )
    _LEGACY = {"max_get_batch_size": "max_batch_size", "max_set_batch_size": "max_batch_size",
               "refresh_time_after_fetch": None, "algorithm": None}

    def to_dict(self) -> dict[str, Any] | None:
        """The ps.json `volatile_db` object (the keys of its type), or None when disabled."""
        if self.type is DatabaseType_t.disabled:
            return None
        config_class = RedisClusterConfig if self.type is DatabaseType_t.redis_cluster else HashMapConfig
        keys = {f.name for f in fields(config_class)}
        out: dict[str, Any] = {"type": self.type.name}
        out.update({a.name: _json_value(getattr(self, a.name)) for a in self._ARGS[1:] if a.name in keys})
        return out


class PersistentDatabaseParams(_Params):
    """`hugectr.inference.PersistentDatabaseParams(backend=DatabaseType_t.disabled, path=..., ...)`: the
    RocksDB tier (ps.json `persistent_db`, reference §1.4). HugeCTR's keyword is `backend=` (its docs
    wrote `type=`; both work); the attribute is `type`, as in HugeCTR's struct, and `backend`."""

    _ARGS = (
        _Arg("backend", DatabaseType_t, DatabaseType_t.disabled,
             allowed=(DatabaseType_t.disabled, DatabaseType_t.rocks_db)),
        _Arg("path", "path", os.path.join(tempfile.gettempdir(), "rocksdb")),
        _Arg("num_threads", "uint", 16),
        _Arg("read_only", "bool", False),
        _Arg("max_batch_size", "uint", 64 * 1024),
        _Arg("initialize_after_startup", "bool", True),
        _Arg("update_filters", "list[str]", factory=lambda: ["^hps_.+$"]),
    )
    _LEGACY = {"type": "backend", "max_get_batch_size": "max_batch_size", "max_set_batch_size": "max_batch_size"}
    _ATTR_ALIASES = {"type": "backend"}

    def to_dict(self) -> dict[str, Any] | None:
        """The ps.json `persistent_db` object, or None when disabled."""
        if self.backend is DatabaseType_t.disabled:
            return None
        return {"type": self.backend.name, **{a.name: _json_value(getattr(self, a.name)) for a in self._ARGS[1:]}}


class UpdateSourceParams(_Params):
    """`hugectr.inference.UpdateSourceParams(type=UpdateSourceType_t.null, brokers=..., ...)`: the Kafka
    update source (ps.json `update_source`, reference §1.5)."""

    _ARGS = (
        _Arg("type", UpdateSourceType_t, UpdateSourceType_t.null),
        _Arg("brokers", "str", "127.0.0.1:9092"),
        _Arg("metadata_refresh_interval_ms", "uint", 30_000),
        _Arg("receive_buffer_size", "uint", 256 * 1024),
        _Arg("poll_timeout_ms", "uint", 500),
        _Arg("max_batch_size", "uint", 8 * 1024),
        _Arg("failure_backoff_ms", "uint", 50),
        _Arg("max_commit_interval", "uint", 32),
    )

    def to_dict(self) -> dict[str, Any] | None:
        """The ps.json `update_source` object, or None for `UpdateSourceType_t.null`."""
        if self.type is UpdateSourceType_t.null:
            return None
        return {a.name: _json_value(getattr(self, a.name)) for a in self._ARGS}


#: InferenceParams argument → ps.json model key (None: a legacy or per-PS field, not written)
_MODEL_KEYS: dict[str, str | None] = {
    "model_name": "model", "max_batchsize": "max_batch_size", "hit_rate_threshold": "hit_rate_threshold",
    "dense_model_file": "dense_file", "sparse_model_files": "sparse_files", "device_id": None,
    "use_gpu_embedding_cache": "gpucache", "cache_size_percentage": "gpucacheper", "i64_input_key": None,
    "use_mixed_precision": None, "scaler": None, "use_algorithm_search": None, "use_cuda_graph": None,
    "number_of_worker_buffers_in_pool": "num_of_worker_buffer_in_pool",
    "number_of_refresh_buffers_in_pool": "num_of_refresher_buffer_in_pool",
    "thread_pool_size": "thread_pool_size",
    "cache_refresh_percentage_per_iteration": "cache_refresh_percentage_per_iteration",
    "deployed_devices": "deployed_device_list", "default_value_for_each_table": None,
    "volatile_db": None, "persistent_db": None, "update_source": None,
    "maxnum_des_feature_per_sample": "maxnum_des_feature_per_sample", "refresh_delay": "refresh_delay",
    "refresh_interval": "refresh_interval", "maxnum_catfeature_query_per_table_per_sample": None,
    "embedding_vecsize_per_table": None, "embedding_table_names": None, "network_file": "network_file",
    "label_dim": "label_dim", "slot_num": "slot_num", "non_trainable_params_file": None,
    "use_static_table": "use_static_table", "embedding_cache_type": "embedding_cache_type",
    "use_context_stream": "use_context_stream", "fuse_embedding_table": None,
    "use_hctr_cache_implementation": "use_hctr_cache_implementation", "init_ec": "init_ec",
    "enable_pagelock": "enable_pagelock", "fp8_quant": "fp8_quant",
}


class InferenceParams(_Params):
    """`hugectr.inference.InferenceParams(model_name, max_batchsize, hit_rate_threshold, dense_model_file,
    sparse_model_files, device_id=0, use_gpu_embedding_cache, cache_size_percentage, i64_input_key, ...)`:
    one model (a ps.json `models[]` entry under HugeCTR's Python names, reference §1.8)."""

    _ARGS = (
        _Arg("model_name", "str"),
        _Arg("max_batchsize", "uint"),
        _Arg("hit_rate_threshold", "float"),
        _Arg("dense_model_file", "path"),
        _Arg("sparse_model_files", "list[path]"),
        _Arg("device_id", "int", 0),  # deprecated in HugeCTR, ignored
        _Arg("use_gpu_embedding_cache", "bool"),
        _Arg("cache_size_percentage", "float"),
        _Arg("i64_input_key", "bool"),
        _Arg("use_mixed_precision", "bool", False),  # legacy dense inference, ignored
        _Arg("scaler", "float", 1.0),  # legacy, ignored
        _Arg("use_algorithm_search", "bool", True),  # legacy, ignored
        _Arg("use_cuda_graph", "bool", True),  # legacy, ignored
        _Arg("number_of_worker_buffers_in_pool", "int", 2),
        _Arg("number_of_refresh_buffers_in_pool", "int", 1),
        _Arg("thread_pool_size", "int", 16),
        _Arg("cache_refresh_percentage_per_iteration", "float", 0.0),
        _Arg("deployed_devices", "list[int]", factory=lambda: [0]),
        _Arg("default_value_for_each_table", "list[float]", factory=lambda: [0.0]),
        _Arg("volatile_db", VolatileDatabaseParams, factory=VolatileDatabaseParams),
        _Arg("persistent_db", PersistentDatabaseParams, factory=PersistentDatabaseParams),
        _Arg("update_source", UpdateSourceParams, factory=UpdateSourceParams),
        _Arg("maxnum_des_feature_per_sample", "int", 26),  # legacy, ignored
        _Arg("refresh_delay", "float", 0.0),
        _Arg("refresh_interval", "float", 0.0),
        _Arg("maxnum_catfeature_query_per_table_per_sample", "list[uint]", factory=lambda: [26]),
        _Arg("embedding_vecsize_per_table", "list[uint]", factory=lambda: [128]),
        _Arg("embedding_table_names", "list[str]", factory=lambda: [""]),
        _Arg("network_file", "path", ""),  # legacy, ignored
        _Arg("label_dim", "uint", 1),  # legacy, ignored
        _Arg("slot_num", "uint", 10),  # legacy, ignored
        _Arg("non_trainable_params_file", "path", ""),  # legacy, ignored
        _Arg("use_static_table", "bool", False),
        _Arg("embedding_cache_type", EmbeddingCacheType_t, EmbeddingCacheType_t.Dynamic),
        _Arg("use_context_stream", "bool", True),
        _Arg("fuse_embedding_table", "bool", False),
        _Arg("use_hctr_cache_implementation", "bool", True),
        _Arg("init_ec", "bool", True),
        _Arg("enable_pagelock", "bool", False),
        _Arg("fp8_quant", "bool", False),
    )

    def to_dict(self, table_names: list[str], dims: list[int], keys_per_sample: list[int]) -> dict[str, Any]:
        """The ps.json `models[]` entry, with the per-table lists from `ParameterServerConfig`'s maps."""
        where = f"InferenceParams(model_name={self.model_name!r})"
        for own, given, default in ((self.embedding_table_names, table_names, [""]),
                                    (self.embedding_vecsize_per_table, dims, [128]),
                                    (self.maxnum_catfeature_query_per_table_per_sample, keys_per_sample, [26])):
            if own != default and own != given:
                warnings.warn(f"{where}: {own} differs from ParameterServerConfig's {given}, which is used "
                              "(as in HugeCTR)", ConfigWarning, stacklevel=4)
        if self.fuse_embedding_table:
            warnings.warn(f"{where}.fuse_embedding_table: table fusion is available only through a ps.json "
                          "(as in HugeCTR); disabled", ConfigWarning, stacklevel=4)
        num_tables = len(self.sparse_model_files)
        defaults = self.default_value_for_each_table
        if len(defaults) != num_tables:  # HugeCTR's Python path: every table gets the first value
            if len(defaults) > 1:
                warnings.warn(f"{where}.default_value_for_each_table: {len(defaults)} values for {num_tables} "
                              f"tables; every table gets the first, {defaults[0]} (as in HugeCTR)",
                              ConfigWarning, stacklevel=4)
            defaults = [defaults[0] if defaults else 0.0] * num_tables
        out: dict[str, Any] = {key: _json_value(getattr(self, name)) for name, key in _MODEL_KEYS.items() if key}
        out["embedding_cache_type"] = self.embedding_cache_type.name.lower()
        out.update({"embedding_table_names": list(table_names), "embedding_vecsize_per_table": list(dims),
                    "maxnum_catfeature_query_per_table_per_sample": list(keys_per_sample),
                    "default_value_for_each_table": defaults})
        return out


_MAPS = ("emb_table_name", "embedding_vec_size", "max_feature_num_per_sample_per_emb_table")
_MAP_KEYS = {"embedding_table_names": "emb_table_name", "embedding_vecsize_per_table": "embedding_vec_size",
             "maxnum_catfeature_query_per_table_per_sample": "max_feature_num_per_sample_per_emb_table"}


class ParameterServerConfig(_Params):
    """`hugectr.inference.ParameterServerConfig(emb_table_name, embedding_vec_size,
    max_feature_num_per_sample_per_emb_table, inference_params_array, volatile_db=VolatileDatabaseParams(),
    persistent_db=PersistentDatabaseParams(), update_source=UpdateSourceParams())`: a whole ps.json.

    The three maps are {model name: one entry per table}: table names, dims, most keys per sample."""

    _ARGS = (
        _Arg("emb_table_name", "dict[list[str]]"),
        _Arg("embedding_vec_size", "dict[list[uint]]"),
        _Arg("max_feature_num_per_sample_per_emb_table", "dict[list[uint]]"),
        _Arg("inference_params_array", "list[InferenceParams]"),
        _Arg("volatile_db", VolatileDatabaseParams, factory=VolatileDatabaseParams),
        _Arg("persistent_db", PersistentDatabaseParams, factory=PersistentDatabaseParams),
        _Arg("update_source", UpdateSourceParams, factory=UpdateSourceParams),
    )

    def to_dict(self) -> dict[str, Any]:
        """The equivalent ps.json dict (`json.dump` it to get a file `HPS` and Triton take)."""
        models = self.inference_params_array
        if not models:
            raise ConfigError("ParameterServerConfig.inference_params_array: expected at least one InferenceParams")
        for map_name in _MAPS:
            given = getattr(self, map_name)
            names = [p.model_name for p in models]
            if len(given) != len(models) or any(name not in given for name in names):
                raise ConfigError(f"ParameterServerConfig.{map_name}: expected one entry for each model of "
                                  f"inference_params_array {names}, got {sorted(given)}")
        key_types = {p.i64_input_key for p in models}
        if len(key_types) > 1:
            raise ConfigError("ParameterServerConfig.inference_params_array: i64_input_key differs between models; "
                              "one key type serves every model (HugeCTR refused hybrid key types too)")
        for p in models:
            for name in ("volatile_db", "persistent_db", "update_source"):
                own = getattr(p, name)
                if own != type(own)() and own != getattr(self, name):
                    warnings.warn(f"InferenceParams(model_name={p.model_name!r}).{name} is replaced by "
                                  f"ParameterServerConfig.{name} (as in HugeCTR)", ConfigWarning, stacklevel=3)
        out: dict[str, Any] = {"supportlonglong": key_types.pop(), "fuse_embedding_table": False}
        for name in ("volatile_db", "persistent_db", "update_source"):
            section = getattr(self, name).to_dict()
            if section is not None:
                out[name] = section
        out["models"] = [p.to_dict(self.emb_table_name[p.model_name], self.embedding_vec_size[p.model_name],
                                   self.max_feature_num_per_sample_per_emb_table[p.model_name]) for p in models]
        return out

    def to_ps_config(self, base_dir: str | None = None) -> PsConfig:
        """The parsed `PsConfig`; relative paths resolve against `base_dir` (default: the current directory,
        as in HugeCTR). `ConfigError`s name the Python argument as well as the ps.json key."""
        try:
            return parse_config(self.to_dict(), base_dir=base_dir or os.getcwd())
        except ConfigError as exc:
            raise ConfigError(_python_names(str(exc), self)) from None


_PY_NAMES = {key: name for name, key in _MODEL_KEYS.items() if key}


def _python_names(message: str, config: ParameterServerConfig) -> str:
    """Prefix a parser message about `models[i].key` / `volatile_db.key` with the Python argument."""
    match = re.match(r"(models\[(\d+)\]|volatile_db|persistent_db|update_source)\.(\w+)", message)
    if match is None:
        return message
    section, index, key = match.groups()
    if index is None:
        name = "backend" if (section, key) == ("persistent_db", "type") else key
        return f"ParameterServerConfig.{section}.{name} (ps.json {match.group(0)}): {message}"
    model = config.inference_params_array[int(index)].model_name
    if key in _MAP_KEYS:
        where = f"ParameterServerConfig.{_MAP_KEYS[key]}[{model!r}]"
    else:
        where = f"InferenceParams(model_name={model!r}).{_PY_NAMES.get(key, key)}"
    return f"{where} (ps.json {match.group(0)}): {message}"


# ---------------------------------------------------------------------------------------------- HPS
class HPS(parameter_server.HPS):
    """`hugectr.inference.HPS(ps_config)` / `HPS(hps_json_config_file)`: `hps.HPS` under HugeCTR's API.

    `lookup` returns host (numpy) arrays whatever the keys, as HugeCTR's did; everything else of
    `hps.HPS` (stats, add_model, close, `with`) works too."""

    def __init__(self, ps_config: ParameterServerConfig | str | os.PathLike | None = None, *,
                 hps_json_config_file: str | os.PathLike | None = None, show_progress: bool = True) -> None:
        """ps_config: a `ParameterServerConfig` or a ps.json path (HugeCTR's two constructors; a dict or an
        `hps.config.PsConfig` work too); or `hps_json_config_file=` a ps.json path."""
        if (ps_config is None) == (hps_json_config_file is None):
            raise ConfigError("HPS: pass exactly one of ps_config (a ParameterServerConfig) or hps_json_config_file")
        if hps_json_config_file is not None:
            if not isinstance(hps_json_config_file, (str, os.PathLike)):
                raise ConfigError(f"HPS: hps_json_config_file must be a path, got {_describe(hps_json_config_file)}")
            config: Any = hps_json_config_file
        elif isinstance(ps_config, ParameterServerConfig):
            config = ps_config.to_ps_config()
        elif isinstance(ps_config, (str, os.PathLike, dict, PsConfig)):
            config = ps_config
        else:
            raise ConfigError(f"HPS: ps_config must be a ParameterServerConfig or a ps.json path, "
                              f"got {_describe(ps_config)}")
        super().__init__(config, show_progress=show_progress)

    def lookup(self, h_keys: Any, model_name: str, table_id: int, device_id: int = 0) -> np.ndarray:
        """Vectors of `h_keys` ((n,) int64, or a list; any shape `S` works) from table `table_id` of
        `model_name`, looked up on `device_id`'s cache: a numpy float32 array of shape `S + (dim,)`."""
        vectors = super().lookup(h_keys, model_name, table_id, device_id)
        return vectors if isinstance(vectors, np.ndarray) else vectors.detach().cpu().numpy()

    def lookup_fromdlpack(self, keys: Any, out_tensor: Any, model_name: str, table_id: int,
                          device_id: int = 0) -> None:
        """Write the vectors of `keys` into `out_tensor` in place (HugeCTR's keyword names); both are DLPack
        capsules from `to_dlpack` (left unconsumed: `from_dlpack(out_capsule)` afterwards reads the vectors)
        or tensors, on the CPU or a GPU. See `hps.HPS.lookup_fromdlpack`."""
        super().lookup_fromdlpack(keys, out_tensor, model_name, table_id, device_id)
