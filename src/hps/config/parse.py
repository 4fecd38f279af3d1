"""ps.json → `PsConfig`: every HugeCTR key, alias and default; errors name the JSON path.

HugeCTR's parser is strict about types (`"true"` is not a bool) and silently ignores
unknown keys; we keep the strict types, raise `ConfigError` with the JSON path for bad
values, and warn (`ConfigWarning`) about unknown keys instead of ignoring them.

Whatever the input (a file of random bytes, a dict built by a program), the only exception
that leaves `load_config` / `parse_config` is `ConfigError`:

- types are strict: `true` is not an integer, a list is not a string, a string is not a list;
- numbers must be finite (NaN, Infinity, 1e400 are refused) and in range: ints fit int64
  unless the key says otherwise, librdkafka settings are in librdkafka's ranges;
- strings hold no NUL and no lone surrogate; addresses are host:port lists with ports in
  1..65535; `persistent_db.path` is not an existing file nor under /proc or /sys.

What HugeCTR documents is accepted, including its quirks: a key given twice in one JSON
object (the last wins, as with nlohmann::json, with a warning); the legacy
`max_get_batch_size` / `max_set_batch_size` pair (see `_merge_names`); keys of another
volatile_db type (checked, then ignored). Keys hps reads but does not act on are listed in
`hps.config.inert.NOT_ACTED_ON` and warned about by name when set to a non-default value.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import warnings
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from hps.config.inert import NOT_ACTED_ON
from hps.config.json_file import join_path, read_ps_json, short_repr
from hps.config.schema import (INT64_MAX, HashMapConfig, KafkaConfig, ModelConfig, PsConfig, RedisClusterConfig,
                               RocksDBConfig, parse_host_ports)
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
    (the current directory for a dict). Errors are `ConfigError`s naming the file and the
    JSON path; a file that is not UTF-8 JSON (or nests absurdly deep) is one too."""
    if isinstance(source, PsConfig):
        return source
    if isinstance(source, dict):
        return parse_config(source, base_dir=os.getcwd())
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        data = read_ps_json(path, ConfigWarning)
        try:
            return parse_config(data, base_dir=str(Path(path).resolve().parent))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    raise ConfigError(f"config must be a ps.json path, a dict or a PsConfig, not {type(source).__name__}")


def parse_config(data: Any, base_dir: str = "") -> PsConfig:
    """Parse a ps.json dict into a frozen `PsConfig` (see `load_config`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"<root>: expected a JSON object, got {_describe(data)}")
    data = dict(data)
    _check_keys_are_strings(data, "<root>")
    sections: dict[str, Any] = {}
    sections["volatile_db"] = _parse_volatile(data.pop("volatile_db", None))
    sections["persistent_db"] = _parse_typed(data.pop("persistent_db", None), "persistent_db",
                                             PERSISTENT_TYPES, {"rocks_db": RocksDBConfig}, "disabled")
    sections["update_source"] = _parse_typed(data.pop("update_source", None), "update_source",
                                             UPDATE_SOURCE_TYPES, {"kafka_message_queue": KafkaConfig}, "null")
    if sections["update_source"] is not None:
        sections["update_source"].broker_nodes  # noqa: B018 - ConfigError for a bad broker list, now
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
    if pdb is not None:
        if base_dir and not os.path.isabs(pdb.path):
            pdb = sections["persistent_db"] = dataclasses.replace(pdb, path=os.path.join(base_dir, pdb.path))
        _check_persistent_path(pdb.path, "persistent_db.path")
    config = PsConfig(**top, **sections, base_dir=base_dir)
    _warn_not_acted_on(config, "", "")
    return config


def _parse_volatile(raw: Any) -> HashMapConfig | RedisClusterConfig | None:
    classes = {"hash_map": HashMapConfig, "parallel_hash_map": HashMapConfig,
               "multi_process_hash_map": HashMapConfig, "redis_cluster": RedisClusterConfig}
    cfg = _parse_typed(raw, "volatile_db", VOLATILE_TYPES, classes, "disabled")
    if isinstance(cfg, RedisClusterConfig):
        parse_host_ports(cfg.address, default_port=7000, where="volatile_db.address")
    return cfg


def _parse_typed(raw: Any, path: str, types: dict[str, str | None], classes: dict[str, type],
                 default_type: str) -> Any:
    """A section with a `type`: the class it names, read from `raw`. Keys that belong to another
    type of the same section (HugeCTR reads them all whatever the type) are checked, then
    ignored, with a warning when their value is not the default."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected an object, got {_describe(raw)}")
    raw = dict(raw)
    _check_keys_are_strings(raw, path)
    type_name = raw.pop("type", default_type)
    if not isinstance(type_name, str) or type_name.lower() not in types:
        raise ConfigError(f"{path}.type: unknown value {_describe(type_name, short=True)}; "
                          f"expected one of {sorted(types)}")
    canonical = types[type_name.lower()]
    if canonical is None:
        return None
    cls = classes[canonical]
    own = {_json_name(f) for f in fields(cls)} | {a for f in fields(cls) for a in f.metadata.get("aliases", ())}
    for other in dict.fromkeys(c for c in classes.values() if c is not cls):
        for f in fields(other):
            names = [n for n in (_json_name(f), *f.metadata.get("aliases", ())) if n in raw and n not in own]
            for name in names:
                value = _convert(raw.pop(name), f.metadata, join_path(path, name))
                if value != _default(f):
                    kinds = sorted(t for t, c in classes.items() if c is other)
                    warnings.warn(f"{join_path(path, name)}: applies to {path}.type {' / '.join(kinds)}, "
                                  f"not {canonical}; ignored", ConfigWarning, stacklevel=5)
    values = _parse_fields(cls, raw, path, skip=("type",))
    cfg = cls(type=canonical, **values)
    _warn_not_acted_on(cfg, path, path)
    return cfg


def _parse_model(raw: Any, path: str, base_dir: str) -> ModelConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a model object, got {_describe(raw)}")
    _check_keys_are_strings(raw, path)
    values = _parse_fields(ModelConfig, raw, path)
    name = values["name"]
    if not MODEL_NAME_RE.fullmatch(name):
        raise ConfigError(f"{path}.model: {_describe(name, short=True)} is not a valid model name "
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
            raise ConfigError(f"{path}.embedding_table_names[{i}]: {_describe(table_name, short=True)} is not a "
                              "valid table name")
    if len(set(table_names)) != len(table_names):
        raise ConfigError(f"{path}.embedding_table_names: duplicate names in {short_repr(list(table_names))}")
    if base_dir:
        values["sparse_files"] = tuple(f if _is_remote_or_abs(f) else os.path.join(base_dir, f)
                                       for f in values["sparse_files"])
    cache_type = raw.get("embedding_cache_type")
    if isinstance(cache_type, str) and cache_type.lower() == "stochastic":
        warnings.warn(f"{path}.embedding_cache_type: 'stochastic' falls back to 'dynamic' (as in HugeCTR)",
                      ConfigWarning, stacklevel=4)
    model = ModelConfig(**values)
    if model.fp8_quant and (model.cache_type == "dynamic" or not model.gpucache):
        warnings.warn(f"{path}.fp8_quant: applies to static tables only (embedding_cache_type static or uvm with "
                      "gpucache, as in HugeCTR); this model's vectors stay float32", ConfigWarning, stacklevel=4)
    _warn_not_acted_on(model, "models[]", path)
    return model


def _is_remote_or_abs(path: str) -> bool:
    """An absolute path, or a URL with a scheme (`s3://b/t`, `hdfs://h/p`): kept as it is, never
    joined with the ps.json's folder (model_format.remote opens URLs)."""
    return os.path.isabs(path) or re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://", path) is not None


def _json_name(f: Field) -> str:
    return f.metadata.get("json") or f.name


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _check_keys_are_strings(raw: dict, path: str) -> None:
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: keys must be strings, got {_describe(key, short=True)}")


def _parse_fields(cls: type, raw: dict, path: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read the fields of dataclass `cls` from `raw` (aliases, types, ranges); warn on unknown keys."""
    raw = dict(raw)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        key = _json_name(f)
        names = (key, *f.metadata.get("aliases", ()))
        present = [n for n in names if n in raw]
        if len(present) > 1 and f.metadata.get("merge"):
            given = {n: _convert(raw.pop(n), f.metadata, join_path(path, n)) for n in present}
            values[f.name] = _merge_names(given, key, path)
        elif len(present) > 1:
            raise ConfigError(f"{join_path(path, key)}: given twice, as {present}")
        elif present:
            values[f.name] = _convert(raw.pop(present[0]), f.metadata, join_path(path, present[0]))
        elif f.metadata.get("required"):
            raise ConfigError(f"{join_path(path, key)}: required key is missing")
        else:
            values[f.name] = _default(f)
    for unknown in raw:
        warnings.warn(f"{join_path(path, unknown)}: unknown key ignored", ConfigWarning, stacklevel=5)
    return values


def _merge_names(given: dict[str, Any], key: str, path: str) -> Any:
    """One value for a key given under several of its names (HugeCTR's pre-23.02
    `max_get_batch_size` and `max_set_batch_size` beside or instead of `max_batch_size`).

    `key` itself wins when present (HugeCTR 24.x reads only it); otherwise the smallest value:
    each legacy key capped the size of one kind of request, and hps's single batch size caps
    both, so the smaller one keeps every request within both of the user's limits (HugeCTR's
    docs warn that Redis breaks above 262143 keys per request). A `ConfigWarning` names the
    keys when their values differ."""
    chosen = given[key] if key in given else min(given.values())
    if len(set(given.values())) > 1:
        listed = ", ".join(f"{n}={v}" for n, v in given.items())
        rule = f"{key} wins" if key in given else "the smaller is used"
        warnings.warn(f"{join_path(path, key)}: given as {listed}; {rule}: {chosen}", ConfigWarning, stacklevel=6)
    return chosen


def _convert(value: Any, meta: Any, path: str) -> Any:
    kind = meta["kind"]
    secret = bool(meta.get("secret"))
    if isinstance(value, float) and not math.isfinite(value) and kind != "str":
        raise ConfigError(f"{path}: {float(value)!r} is not a finite number (NaN, Infinity and numbers beyond "
                          "the float range are refused)")
    if kind.startswith("list["):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {_describe(value, secret)}")
        inner = {**meta, "kind": kind[5:-1]}
        return tuple(_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value))
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_describe(value, secret)}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{path}: expected an integer, got {_describe(value, secret)}")
        value = int(value)
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{path}: expected a number, got {_describe(value, secret)}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{path}: {_describe(value, secret, short=True)} is beyond the float range") from None
        if not math.isfinite(value):
            raise ConfigError(f"{path}: {value!r} is not a finite number")
    elif kind in ("str", "enum"):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_describe(value, secret)}")
        _check_text(value, meta, path)
        if kind == "enum":
            choices = meta["choices"]
            if value.lower() not in choices:
                raise ConfigError(f"{path}: unknown value {_describe(value, short=True)}; "
                                  f"expected one of {sorted(choices)}")
            value = choices[value.lower()]
    if value not in meta.get("also", ()):
        _check_range(value, meta.get("check"), kind, path)
    return value


def _check_text(value: str, meta: Any, path: str) -> None:
    if "\0" in value:
        raise ConfigError(f"{path}: contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{path}: not valid Unicode (a lone surrogate at character {exc.start})") from None
    if meta.get("nonempty") and not value:
        raise ConfigError(f"{path}: must not be empty")


def _check_range(value: Any, check: tuple[str, Any] | None, kind: str, path: str) -> None:
    rule, arg = check if check is not None else (None, None)
    if rule == "min":
        lo, hi = arg, (INT64_MAX if kind == "int" else None)
    elif rule == "range":
        lo, hi = arg
    elif kind == "int":
        lo, hi = -INT64_MAX - 1, INT64_MAX
    else:
        lo = hi = None
    if lo is not None and value < lo:
        raise ConfigError(f"{path}: {short_repr(value)} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{path}: {short_repr(value)} is above the maximum {hi}")
    if rule == "closed01" and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{path}: {value!r} is outside [0, 1]")
    if rule == "open01" and not 0.0 < value < 1.0:
        raise ConfigError(f"{path}: {value!r} must be strictly between 0 and 1")


def _check_persistent_path(path: str, where: str) -> None:
    """RocksDB creates its directory and writes into it: refuse a path that is an existing file
    (or any non-directory) and paths under /proc or /sys (kernel interfaces, not storage)."""
    real = os.path.realpath(path)
    for root in ("/proc", "/sys"):
        if real == root or real.startswith(root + os.sep):
            raise ConfigError(f"{where}: {path!r} is under {root}, not a place for a database")
    if os.path.lexists(real) and not os.path.isdir(real):
        what = "a regular file" if os.path.isfile(real) else "not a directory"
        raise ConfigError(f"{where}: {path!r} exists and is {what}; RocksDB needs a directory")


def _warn_not_acted_on(obj: Any, section: str, path: str) -> None:
    """`ConfigWarning` for each key of `obj` in `NOT_ACTED_ON` (with `warn`) set to a non-default value."""
    for f in fields(obj):
        key = _json_name(f)
        entry = NOT_ACTED_ON.get(f"{section}.{key}" if section else key)
        if entry is None or not entry.warn:
            continue
        if key.startswith("shared_memory_") and getattr(obj, "type", None) == "multi_process_hash_map":
            continue  # read by hps.storage.shared_hash_map
        value = getattr(obj, f.name)
        if value != _default(f):
            warnings.warn(f"{join_path(path, key)}: {short_repr(value)} is read but not acted on by hps: "
                          f"{entry.reason}", ConfigWarning, stacklevel=5)


def _describe(value: Any, secret: bool = False, short: bool = False) -> str:
    """`type value` for error messages: long values shortened, secrets hidden."""
    if value is None:
        return "nothing"
    if secret:
        return f"a {type(value).__name__} (value hidden: secret)"
    text = short_repr(value)
    return text if short else f"{type(value).__name__} {text}"
