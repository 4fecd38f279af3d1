"""ps.json → `PsConfig`: every HugeCTR key, alias and default; errors name the JSON path.

HugeCTR's parser is strict about types (`"true"` is not a bool) and silently ignores
unknown keys; we keep the strict types, raise `ConfigError` with the JSON path for bad
values, and warn (`ConfigWarning`) about unknown keys instead of ignoring them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from hps.config.schema import (HashMapConfig, KafkaConfig, ModelConfig, PsConfig, RedisClusterConfig,
                               RocksDBConfig)
from hps.errors import ConfigError

MODEL_NAME_RE = re.compile(r"[a-zA-Z0-9_\-]{1,120}")

VOLATILE_TYPES = {
    **dict.fromkeys(("disabled", "disable", "none"), None),
    **dict.fromkeys(("hash_map", "hashmap", "hash", "map"), "hash_map"),
    **dict.fromkeys(("parallel_hash_map", "parallel_hashmap", "parallel_hash", "parallel_map"),
                    "parallel_hash_map"),
    **dict.fromkeys(("multi_process_hash_map", "multi_process_hashmap", "multi_process_hash",
                     "multi_process_map"), "multi_process_hash_map"),
    **dict.fromkeys(("redis_cluster", "redis"), "redis_cluster"),
}
PERSISTENT_TYPES = {**dict.fromkeys(("disabled", "disable", "none"), None),
                    **dict.fromkeys(("rocks_db", "rocksdb", "rocks"), "rocks_db")}
UPDATE_SOURCE_TYPES = {**dict.fromkeys(("null", "none"), None),
                       **dict.fromkeys(("kafka_message_queue", "kafka_mq", "kafka"), "kafka_message_queue")}


class ConfigWarning(UserWarning):
    """A ps.json oddity that does not stop loading (unknown key, legacy key, fallback)."""


def load_config(source: str | os.PathLike | dict | PsConfig) -> PsConfig:
    """Parse a ps.json path, an already-loaded dict, or pass a `PsConfig` through.

    Relative `sparse_files` and `persistent_db.path` resolve against the ps.json's folder
    (the current directory for a dict)."""
    if isinstance(source, PsConfig):
        return source
    if isinstance(source, dict):
        return parse_config(source, base_dir=os.getcwd())
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ps.json: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
        try:
            return parse_config(data, base_dir=str(path.resolve().parent))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    raise ConfigError(f"config must be a ps.json path, a dict or a PsConfig, not {type(source).__name__}")


def parse_config(data: Any, base_dir: str = "") -> PsConfig:
    """Parse a ps.json dict into a frozen `PsConfig` (see `load_config`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"<root>: expected a JSON object, got {_describe(data)}")
    data = dict(data)
    sections: dict[str, Any] = {}
    sections["volatile_db"] = _parse_volatile(data.pop("volatile_db", None))
    sections["persistent_db"] = _parse_typed(data.pop("persistent_db", None), "persistent_db",
                                             PERSISTENT_TYPES, {"rocks_db": RocksDBConfig}, "disabled")
    sections["update_source"] = _parse_typed(data.pop("update_source", None), "update_source",
                                             UPDATE_SOURCE_TYPES, {"kafka_message_queue": KafkaConfig}, "null")
    models = data.pop("models", None)
    if not isinstance(models, list) or not models:
        raise ConfigError(f"models: expected a non-empty list of model objects, got {_describe(models)}")
    sections["models"] = tuple(_parse_model(m, f"models[{i}]", base_dir) for i, m in enumerate(models))
    names = [m.name for m in sections["models"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"models: duplicate model name(s) {dupes}")
    top = _parse_fields(PsConfig, data, "", skip=("volatile_db", "persistent_db", "update_source", "models",
                                                  "base_dir"))
    pdb = sections["persistent_db"]
    if pdb is not None and base_dir and not os.path.isabs(pdb.path):
        sections["persistent_db"] = _replace(pdb, path=os.path.join(base_dir, pdb.path))
    return PsConfig(**top, **sections, base_dir=base_dir)


def _parse_volatile(raw: Any) -> HashMapConfig | RedisClusterConfig | None:
    classes = {"hash_map": HashMapConfig, "parallel_hash_map": HashMapConfig,
               "multi_process_hash_map": HashMapConfig, "redis_cluster": RedisClusterConfig}
    cfg = _parse_typed(raw, "volatile_db", VOLATILE_TYPES, classes, "disabled")
    if cfg is not None and cfg.type == "multi_process_hash_map":
        warnings.warn("volatile_db.type: multi_process_hash_map runs as an in-process hash_map in hps "
                      "(each process holds its own copy)", ConfigWarning, stacklevel=4)
    return cfg


def _parse_typed(raw: Any, path: str, types: dict[str, str | None], classes: dict[str, type],
                 default_type: str) -> Any:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected an object, got {_describe(raw)}")
    raw = dict(raw)
    type_name = raw.pop("type", default_type)
    if not isinstance(type_name, str) or type_name.lower() not in types:
        raise ConfigError(f"{path}.type: unknown value {type_name!r}; expected one of {sorted(types)}")
    canonical = types[type_name.lower()]
    if canonical is None:
        return None
    cls = classes[canonical]
    values = _parse_fields(cls, raw, path, skip=("type",))
    return cls(type=canonical, **values)


def _parse_model(raw: Any, path: str, base_dir: str) -> ModelConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a model object, got {_describe(raw)}")
    values = _parse_fields(ModelConfig, raw, path)
    name = values["name"]
    if not MODEL_NAME_RE.fullmatch(name):
        raise ConfigError(f"{path}.model: {name!r} is not a valid model name "
                          "(1-120 characters of letters, digits, '_' and '-')")
    num_tables = len(values["sparse_files"])
    if num_tables == 0:
        raise ConfigError(f"{path}.sparse_files: expected at least one table directory, got []")
    if not values["embedding_table_names"]:
        values["embedding_table_names"] = tuple(f"sparse_embedding{i}" for i in range(num_tables))
    for key in ("embedding_vecsize_per_table", "maxnum_catfeature_query_per_table_per_sample",
                "embedding_table_names"):
        n = len(values[key])
        if n != num_tables:
            raise ConfigError(f"{path}.{key}: {n} {'entry' if n == 1 else 'entries'} for {num_tables} "
                              f"{'table' if num_tables == 1 else 'tables'}")
    defaults = values["default_value_for_each_table"]
    if len(defaults) > num_tables:
        raise ConfigError(f"{path}.default_value_for_each_table: {len(defaults)} entries for {num_tables} tables")
    values["default_value_for_each_table"] = tuple(defaults) + (0.0,) * (num_tables - len(defaults))
    if not values["deployed_device_list"]:
        raise ConfigError(f"{path}.deployed_device_list: expected at least one device id, got []")
    table_names = values["embedding_table_names"]
    for i, table_name in enumerate(table_names):
        if not MODEL_NAME_RE.fullmatch(table_name):
            raise ConfigError(f"{path}.embedding_table_names[{i}]: {table_name!r} is not a valid table name")
    if len(set(table_names)) != len(table_names):
        raise ConfigError(f"{path}.embedding_table_names: duplicate names in {list(table_names)}")
    if base_dir:
        values["sparse_files"] = tuple(f if _is_remote_or_abs(f) else os.path.join(base_dir, f)
                                       for f in values["sparse_files"])
    if raw.get("embedding_cache_type") == "stochastic":
        warnings.warn(f"{path}.embedding_cache_type: 'stochastic' falls back to 'dynamic' (as in HugeCTR)",
                      ConfigWarning, stacklevel=4)
    return ModelConfig(**values)


def _is_remote_or_abs(path: str) -> bool:
    return os.path.isabs(path) or "://" in path


def _parse_fields(cls: type, raw: dict, path: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read the fields of dataclass `cls` from `raw` (aliases, types, ranges); warn on unknown keys."""
    raw = dict(raw)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        key = f.metadata.get("json") or f.name
        names = (key, *f.metadata.get("aliases", ()))
        present = [n for n in names if n in raw]
        if len(present) > 1:
            raise ConfigError(f"{_join(path, key)}: given twice, as {present}")
        if present:
            values[f.name] = _convert(raw.pop(present[0]), f.metadata, _join(path, present[0]))
        elif f.metadata.get("required"):
            raise ConfigError(f"{_join(path, key)}: required key is missing")
        elif f.default is not MISSING:
            values[f.name] = f.default
        elif f.default_factory is not MISSING:
            values[f.name] = f.default_factory()
    for unknown in raw:
        warnings.warn(f"{_join(path, unknown)}: unknown key ignored", ConfigWarning, stacklevel=5)
    return values


def _convert(value: Any, meta: dict, path: str) -> Any:
    kind = meta["kind"]
    if kind.startswith("list["):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
        inner = {**meta, "kind": kind[5:-1]}
        return tuple(_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value))
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_describe(value)}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {_describe(value)}")
        value = float(value)
    elif kind in ("str", "enum"):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_describe(value)}")
        if kind == "enum":
            choices = meta["choices"]
            if value.lower() not in choices:
                raise ConfigError(f"{path}: unknown value {value!r}; expected one of {sorted(choices)}")
            value = choices[value.lower()]
    _check_range(value, meta.get("check"), path)
    return value


def _check_range(value: Any, check: tuple[str, Any] | None, path: str) -> None:
    if check is None:
        return
    rule, arg = check
    if rule == "min" and value < arg:
        raise ConfigError(f"{path}: {value!r} is below the minimum {arg}")
    if rule == "closed01" and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{path}: {value!r} is outside [0, 1]")
    if rule == "open01" and not 0.0 < value < 1.0:
        raise ConfigError(f"{path}: {value!r} must be strictly between 0 and 1")


def _describe(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)
