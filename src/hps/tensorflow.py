"""hps.tensorflow: HugeCTR's TensorFlow HPS plugin (`import hierarchical_parameter_server as hps`),
re-implemented on `hps.HPS`; HugeCTR users change only their import (reference §3.3).

    import hps.tensorflow as hps
    hps.Init(global_batch_size=1024, ps_config_file="ps.json")
    layer = hps.LookupLayer(model_name="m", table_id=0, emb_vec_size=16)
    vectors = layer(ids)                     # ids (B, ...) int64 -> (B, ..., 16) float32

The layers run eagerly, inside `tf.function` and in Keras models (`fit`, `predict`), under Keras 3
and under Keras 2 (`tf-keras` with `TF_USE_LEGACY_KERAS=1`). Eagerly the lookup is a direct call of
`HPS.lookup`; in a graph it is a stateful `PyFunc` op (so an online update is seen by the next call)
with the static output shape `ids.shape + [emb_vec_size]`.

Saved models load in another process. `tf.numpy_function` names its callback `pyfunc_<n>`, a number
valid only in the process that built the graph (HugeCTR-era models failed with "Could not find
callback with key=pyfunc_16 in the registry"). Our op's token instead spells out the lookup:
`hps_lookup:v1:{"emb_vec_size":16,"global_batch_size":1024,"model_name":"m","ps_config_file":"ps.json",
"table_id":0}`, and importing `hps.tensorflow` (or `hierarchical_parameter_server`) teaches TensorFlow's
py-func registry to answer such tokens: the first call creates (or attaches to) the process-wide HPS
of that ps.json (as given, so a relative path resolves against the loading process's working
directory), or uses the `Init`-ed one when the layer had no file. So a SavedModel
(`tf.saved_model.save`, Keras 2 `model.save(dir)`) holding these layers runs wherever hps is imported;
Keras `.keras` / `.h5` files rebuild the layers from their config (the classes are registered as
`hps>LookupLayer` and `hps>SparseLookupLayer`, so `custom_objects` is not needed).

A layer reads its ps.json at its first lookup, not when it is built or traced (HugeCTR's Triton demo
builds and saves the model before it writes the file); the checks against the config (table, dim,
key dtype) run at construction and tracing only when that HPS is already loaded, and always at the
first lookup. The lookup op has no gradient: the layers are for inference (`trainable=False`).

Differences from HugeCTR, on purpose:
- Every validation failure raises an `HpsError` (HugeCTR logged and returned zeros, §1.9 #9).
  Eagerly and while tracing, the `HpsError` itself is raised; a failure that can only be seen
  when a graph runs (more keys than max_batch_size × maxnum keys per sample, HugeCTR's per-call
  limit, or any check on a ps.json first read when the graph runs) comes back as a
  `tf.errors.OpError` (TensorFlow wraps exceptions raised inside a py-func op) whose message holds the
  `HpsError`'s text.
- Key dtype: as in HugeCTR, ids must be int64 when ps.json says `supportlonglong: true` and int32
  when it says false (its LookupManager::forward_check compared the tensor dtype with
  i64_input_key and logged "Input tensor dtype should be consistent with HPS configuration");
  we raise `KeyInputError`.
  Any other dtype (floats, uint8, ...) raises too.
- The lookup runs on the host, so a graph holding these layers cannot be XLA-compiled
  (`supports_jit = False`), and a SavedModel holding them needs a Python process with hps imported
  (not TensorFlow Serving or Triton's C++ TF backend): serve such models with Python, or split them
  into an `hps_embedding` model and a dense model with `hps.serving.triton`.
- `Init` works without GPUs: replicas come from the active `tf.distribute` strategy (one when
  none), and `deployed_device_list` is checked only when TensorFlow sees GPUs.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from hps import __version__
from hps.config import PsConfig
from hps.errors import ConfigError, HpsError, KeyInputError, require
from hps.registry import close_all, is_loaded, real_path, shared_config, shared_hps

tf = require("tensorflow", "tf")

from tensorflow.python.ops import gen_script_ops, script_ops  # noqa: E402 - after the require above

__all__ = ["Init", "LookupLayer", "Shutdown", "SparseLookupLayer", "__version__"]

_COMBINERS = ("mean", "sum", "sqrtn")

_lock = threading.Lock()
_default_path: list[str] = []          # the first file given to Init: used by layers without a file


def _check_int(value: Any, minimum: int, what: str) -> int:
    """`value` as an int, or `ConfigError` saying `what` must be an int >= minimum (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _num_replicas() -> int:
    """Replicas in sync of the active tf.distribute strategy (1 without a strategy)."""
    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def _check_init(global_batch_size: int, config: PsConfig, path: str) -> None:
    """HugeCTR's Init checks: batch divisible by the replicas, per-replica batch within every
    model's max_batch_size, and (with GPUs) the replicas' devices in deployed_device_list."""
    global_batch_size = _check_int(global_batch_size, 1, "Init: global_batch_size")
    replicas = _num_replicas()
    if global_batch_size % replicas:
        raise ConfigError(f"Init: global_batch_size {global_batch_size} is not divisible by the "
                          f"{replicas} replicas in sync")
    per_replica = global_batch_size // replicas
    gpus = len(tf.config.list_logical_devices("GPU"))
    for i, model in enumerate(config.models):
        if per_replica > model.max_batch_size:
            raise ConfigError(
                f"{path}: models[{i}].max_batch_size is {model.max_batch_size} but Init got "
                f"global_batch_size {global_batch_size} ({per_replica} per replica, {replicas} replicas); "
                f"raise max_batch_size or lower the batch")
        if gpus and replicas > 1:
            missing = sorted(set(range(replicas)) - set(model.deployed_device_list))
            if missing:
                raise ConfigError(
                    f"{path}: models[{i}].deployed_device_list {list(model.deployed_device_list)} lacks "
                    f"the devices {missing} of the {replicas} replicas")


def Init(global_batch_size: int, ps_config_file: str) -> str:  # noqa: N802 - HugeCTR's name
    """Create the process-wide HPS for `ps_config_file` and check it against the batch size.

    global_batch_size: samples per step over all replicas; each replica's share must be at most
    every model's `max_batch_size`. Thread-safe and idempotent: the tables are loaded once per file
    (later calls only repeat the checks). The first file given is the one used by layers built
    without `ps_config_file`. Returns "OK"; raises `ConfigError` on a failed check.
    """
    path = real_path(ps_config_file)
    _check_init(global_batch_size, shared_config(path), path)
    shared_hps(path)
    with _lock:
        if not _default_path:
            _default_path.append(path)
    return "OK"


def Shutdown() -> None:  # noqa: N802 - named like Init
    """Close every process-wide HPS (an hps extension; also run at interpreter exit).

    Frees the caches and closes the tiers, releasing e.g. the RocksDB lock so that another process
    (a Triton server) can open the same database. A later `Init`, or a layer's first call with its
    own `ps_config_file`, loads the tables again."""
    with _lock:
        _default_path.clear()
    close_all()


def _server(ps_config_file: str, global_batch_size: int) -> Any:
    """The HPS a layer uses: its own file (lazily Init-ed), else the first Init-ed one."""
    if ps_config_file:
        if not is_loaded(ps_config_file):
            Init(global_batch_size, ps_config_file)
        return shared_hps(ps_config_file)
    if _default_path and is_loaded(_default_path[0]):
        return shared_hps(_default_path[0])
    raise HpsError("hps.tensorflow: no HPS yet; call hps.tensorflow.Init(global_batch_size, ps_config_file) "
                   "first or give the layer ps_config_file")


def _loaded_config(ps_config_file: str) -> PsConfig | None:
    """The config a layer will use when its HPS is already loaded in this process, else None (the file is
    then read at the first lookup: HugeCTR's Triton demo builds and saves the model before writing it)."""
    if ps_config_file:
        return shared_config(ps_config_file) if is_loaded(ps_config_file) else None
    return shared_config(_default_path[0]) if _default_path and is_loaded(_default_path[0]) else None


def _check_table(config: PsConfig, model_name: str, table_id: int, emb_vec_size: int, where: str) -> None:
    """The model and table exist and their dim equals emb_vec_size (`ConfigError` otherwise)."""
    table = config.model(model_name).table(table_id)
    if table.dim != emb_vec_size:
        raise ConfigError(
            f"{where}: emb_vec_size {emb_vec_size} does not match the table {table.name!r} "
            f"dim {table.dim} (embedding_vecsize_per_table in ps.json)")


def _check_ids_dtype(config: PsConfig | None, dtype: Any, what: str, where: str) -> None:
    """ids must be int64 with supportlonglong, int32 without (`KeyInputError` otherwise); with no config
    yet, any int32|int64."""
    dtype = tf.as_dtype(dtype)
    if dtype not in (tf.int32, tf.int64):
        raise KeyInputError(f"{where}: {what} must be int64 or int32 keys, got {dtype.name}")
    if config is None:
        return
    expected = tf.int64 if config.supportlonglong else tf.int32
    if dtype != expected:
        raise KeyInputError(
            f"{where}: {what} are {dtype.name} but ps.json has supportlonglong="
            f"{str(config.supportlonglong).lower()}, which takes {expected.name} keys; "
            f"cast them with tf.cast(ids, tf.{expected.name})")


_TOKEN_PREFIX = "hps_lookup:v1:"


@dataclass(frozen=True)
class _TableLookup:
    """One table's host lookup: what a lookup op needs, and all its token carries (so that a graph saved
    in one process runs in another). `ps_config_file` "" means the first `Init`-ed file."""

    model_name: str
    table_id: int
    emb_vec_size: int
    ps_config_file: str
    global_batch_size: int

    @property
    def where(self) -> str:
        return f"LookupLayer({self.model_name!r}, table_id={self.table_id})"

    def token(self) -> str:
        """The py-func token of this lookup: a prefix, then this object as canonical JSON."""
        return _TOKEN_PREFIX + json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_token(cls, token: str) -> "_TableLookup":
        """Parse `token()`'s output (`ConfigError` naming the token when it is not one)."""
        try:
            fields = json.loads(token[len(_TOKEN_PREFIX):])
            lookup = cls(**fields)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"hps.tensorflow: malformed lookup op token {token!r}: {exc}") from exc
        if (not isinstance(lookup.model_name, str) or not isinstance(lookup.ps_config_file, str)
                or not all(isinstance(v, int) and not isinstance(v, bool)
                           for v in (lookup.table_id, lookup.emb_vec_size, lookup.global_batch_size))):
            raise ConfigError(f"hps.tensorflow: malformed lookup op token {token!r}: wrong field types")
        return lookup

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Host lookup. ids: (...) int32|int64 → (..., emb_vec_size) float32. Loads the HPS of ps_config_file
        on first use. As in HugeCTR, a call may carry at most max_batch_size ×
        maxnum_catfeature_query_per_table_per_sample keys (`HPS.lookup` raises otherwise)."""
        server = _server(self.ps_config_file, self.global_batch_size)
        config = server.config
        _check_table(config, self.model_name, self.table_id, self.emb_vec_size, self.where)
        _check_ids_dtype(config, ids.dtype, "ids", self.where)
        vectors = server.lookup(ids, self.model_name, self.table_id)
        if vectors.shape != ids.shape + (self.emb_vec_size,) or vectors.dtype != np.float32:
            raise HpsError(f"{self.where}: HPS returned {vectors.dtype} {vectors.shape}, expected float32 "
                           f"{ids.shape + (self.emb_vec_size,)}")
        return vectors


_resolved: dict[str, Callable[[np.ndarray], np.ndarray]] = {}  # token -> callback (strong refs: the registry's are weak)


def _resolve(token: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The callback of an hps lookup token (created once per token), None for any other token."""
    if isinstance(token, bytes):
        token = token.decode("utf-8", "replace")
    if not isinstance(token, str) or not token.startswith(_TOKEN_PREFIX):
        return None
    func = _resolved.get(token)
    if func is None:
        with _lock:
            func = _resolved.get(token)
            if func is None:
                func = _resolved[token] = _TableLookup.from_token(token)
    return func


def _install_token_resolver() -> None:
    """Teach TensorFlow's py-func registry (`script_ops._py_funcs`, the object its C++ PyFunc kernel calls
    with each op's token) to answer hps lookup tokens that no one registered in this process: its
    `__call__` fetches callbacks with `self.get(token)`, so this wraps `get` on the registry instance
    (once per process; other tokens are answered as before)."""
    registry = getattr(script_ops, "_py_funcs", None)
    if not callable(getattr(registry, "get", None)):  # pragma: no cover - TF internals moved
        raise HpsError("hps.tensorflow: TensorFlow's script_ops._py_funcs registry has no get(); "
                       f"TensorFlow {tf.__version__} is not supported")
    if getattr(registry, "_hps_token_resolver", False):
        return
    plain_get = registry.get

    def get(token: Any, default: Any = None) -> Any:
        func = plain_get(token, None)
        if func is None:
            func = _resolve(token)
        return default if func is None else func

    registry.get = get
    registry._hps_token_resolver = True


_install_token_resolver()


def _serializable(cls: type) -> type:
    """Register a layer class for Keras serialization as `hps>ClassName` (Keras 2 and 3)."""
    return tf.keras.utils.register_keras_serializable(package="hps")(cls)


class _HpsLayerBase(tf.keras.layers.Layer):
    """Arguments, checks and the host lookup shared by `LookupLayer` and `SparseLookupLayer`."""

    def __init__(self, model_name: str, table_id: int, emb_vec_size: int, emb_vec_dtype: Any = tf.float32,
                 ps_config_file: str = "", global_batch_size: int = 1, **kwargs: Any) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        where = f"{type(self).__name__}({model_name!r}, table_id={table_id!r})"
        if not isinstance(model_name, str) or not model_name:
            raise ConfigError(f"{where}: model_name must be a non-empty str")
        table_id = _check_int(table_id, 0, f"{where}: table_id")
        emb_vec_size = _check_int(emb_vec_size, 1, f"{where}: emb_vec_size")
        global_batch_size = _check_int(global_batch_size, 1, f"{where}: global_batch_size")
        if tf.as_dtype(emb_vec_dtype) != tf.float32:
            raise ConfigError(f"{where}: emb_vec_dtype must be tf.float32 (HPS stores float32), "
                              f"got {tf.as_dtype(emb_vec_dtype).name}")
        self.model_name = model_name
        self.table_id = table_id
        self.emb_vec_size = emb_vec_size
        self.emb_vec_dtype = tf.float32
        self.ps_config_file = os.fspath(ps_config_file) if ps_config_file else ""
        self.global_batch_size = global_batch_size
        self.supports_jit = False  # a host lookup (py-func op) cannot be XLA-compiled
        self._where = where
        self._hps_lookup = _TableLookup(model_name, table_id, emb_vec_size, self.ps_config_file, global_batch_size)
        config = _loaded_config(self.ps_config_file)
        if config is not None:
            _check_table(config, model_name, table_id, emb_vec_size, where)

    def get_config(self) -> dict[str, Any]:
        """Keras serialization: the constructor's arguments."""
        config = super().get_config()
        config.update(model_name=self.model_name, table_id=self.table_id, emb_vec_size=self.emb_vec_size,
                      ps_config_file=self.ps_config_file, global_batch_size=self.global_batch_size)
        return config

    def _check_ids_dtype(self, dtype: Any, what: str) -> None:
        """ids must be int32|int64, and match supportlonglong once the config is loaded (KeyInputError)."""
        _check_ids_dtype(_loaded_config(self.ps_config_file), dtype, what, self._where)

    def _lookup_numpy(self, ids: np.ndarray) -> np.ndarray:
        """Host lookup. ids: (...) int32|int64 → (..., D) float32 (see `_TableLookup.__call__`)."""
        return self._hps_lookup(ids)

    def _lookup(self, ids: Any) -> Any:
        """ids: tf int tensor (...) → float32 (..., D), eagerly or as a graph op (a stateful PyFunc whose
        token any process with hps.tensorflow imported can resolve)."""
        if tf.executing_eagerly() and hasattr(ids, "numpy"):
            return tf.convert_to_tensor(self._hps_lookup(ids.numpy()))
        token = self._hps_lookup.token()
        _resolve(token)  # the callback exists (and stays alive) before the op can run
        (vectors,) = gen_script_ops.py_func(input=[ids], token=token, Tout=[tf.float32], name="hps_lookup")
        vectors.set_shape(ids.shape.concatenate([self.emb_vec_size]))
        return vectors


@_serializable
class LookupLayer(_HpsLayerBase):
    """Dense lookup: `layer(ids, max_norm=None)`, ids (B, ...) int64|int32 → (B, ..., emb_vec_size) float32.

    Constructor as HugeCTR's: `LookupLayer(model_name, table_id, emb_vec_size, emb_vec_dtype=tf.float32,
    ps_config_file="", global_batch_size=1, **kwargs)`; with `ps_config_file` the HPS is created on the
    first call (thread-safe, once per file), else `Init` must have been called.
    `max_norm` clips each vector's L2 norm, as `tf.nn.embedding_lookup` does.
    """

    def call(self, ids: Any, max_norm: float | None = None) -> Any:
        """ids: (B, ...) int64|int32 tensor → (B, ..., emb_vec_size) float32."""
        if isinstance(ids, (tf.SparseTensor, tf.RaggedTensor)):
            raise KeyInputError(f"{self._where}: ids must be a dense tensor, got {type(ids).__name__}; "
                                f"use SparseLookupLayer for sparse ids")
        ids = tf.convert_to_tensor(ids)
        self._check_ids_dtype(ids.dtype, "ids")
        if ids.shape.rank == 0:
            raise KeyInputError(f"{self._where}: ids must have rank >= 1 (batch first), got a scalar")
        vectors = self._lookup(ids)
        if max_norm is not None:
            vectors = tf.clip_by_norm(vectors, max_norm, axes=[-1])
        return vectors


@_serializable
class SparseLookupLayer(_HpsLayerBase):
    """Sparse lookup with `tf.nn.embedding_lookup_sparse` semantics (same constructor as `LookupLayer`).

    `layer(sp_ids, sp_weights, name=None, combiner="mean", max_norm=None)`: sp_ids a (B, M) SparseTensor of
    int64|int32 ids, sp_weights None or a SparseTensor of float weights with the same indices →
    (B', emb_vec_size) float32, B' = 1 + the last row holding an id (TF's rule). The unique ids are looked up
    once, gathered back, weighted and combined per row ("sum", "mean" or "sqrtn"); `max_norm` clips each
    looked-up vector before weighting.
    """

    def call(self, sp_ids: Any, sp_weights: Any = None, name: str | None = None, combiner: str | None = None,
             max_norm: float | None = None) -> Any:
        """sp_ids: (B, M) SparseTensor int64|int32; sp_weights: None | SparseTensor → (B', D) float32."""
        combiner = "mean" if combiner is None else combiner
        if combiner not in _COMBINERS:
            raise ConfigError(f"{self._where}: combiner must be one of {_COMBINERS}, got {combiner!r}")
        if not isinstance(sp_ids, tf.SparseTensor):
            raise KeyInputError(f"{self._where}: sp_ids must be a tf.SparseTensor, got {type(sp_ids).__name__}")
        if sp_weights is not None and not isinstance(sp_weights, tf.SparseTensor):
            raise KeyInputError(f"{self._where}: sp_weights must be None or a tf.SparseTensor, "
                                f"got {type(sp_weights).__name__}")
        if sp_ids.shape.rank is not None and sp_ids.shape.rank != 2:
            raise KeyInputError(f"{self._where}: sp_ids must have rank 2 (batch, ids per sample), "
                                f"got rank {sp_ids.shape.rank}")
        self._check_ids_dtype(sp_ids.dtype, "sp_ids")
        unique_ids, positions = tf.unique(sp_ids.values, out_idx=tf.int64)
        vectors = self._lookup(unique_ids)
        remapped = tf.SparseTensor(sp_ids.indices, positions, sp_ids.dense_shape)
        return tf.nn.embedding_lookup_sparse(vectors, remapped, sp_weights, combiner=combiner,
                                             max_norm=max_norm, name=name)
