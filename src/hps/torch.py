"""hps.torch: HugeCTR's PyTorch HPS plugin (`hps_torch`), re-implemented on `hps.HPS` (reference §3.4).

    import hps.torch as hps_torch
    layer = hps_torch.LookupLayer("ps.json", "my_model", table_id=0, emb_vec_size=16)
    vectors = layer(keys)                    # (B, N) int64 -> (B, N, 16) float32, on keys.device

The lookup is the torch custom op `torch.ops.hps.lookup(keys, ps_config_file, model_name, table_id,
emb_vec_size)` with a fake (meta) implementation giving the output shape, so the layer works under
`torch.compile` (one opaque op, no graph break) and `torch.export`. Under TorchScript the layer is that op
too: `torch.jit.script` / `torch.jit.trace` of a model holding LookupLayers work, `torch.jit.fork` runs
lookups of several tables at once (HugeCTR's table-fusion pattern), and a model saved with `torch.jit.save`
runs after `torch.jit.load` in any Python process that imported `hps.torch` (the import registers the op;
the layer keeps the ps.json's absolute path, so the loading process may run elsewhere). Eagerly the layer
skips the op's dispatcher for the HPS's numpy path. The HPS of a ps.json is created on the first lookup,
once per process (thread-safe). Keys on a GPU stay there: with the GPU embedding cache the vectors are
written on that GPU and returned without a host round trip; with a CPU cache they come back to the keys'
device.

Differences from HugeCTR, on purpose: CPU keys work too; every device in `deployed_device_list` works
(HugeCTR's op was limited to device 0, §3.4); a bad input raises an `HpsError` (HugeCTR logged and left
the output unset, §1.9 #9; under TorchScript it arrives as TorchScript's `RuntimeError`, whose message
names the `HpsError` class and what is wrong). As in HugeCTR the key dtype must match `supportlonglong`
(int64 when true, int32 when false).
"""

from typing import Any

from hps.errors import ConfigError, KeyInputError, require
from hps.registry import real_path, shared_config, shared_hps

torch = require("torch", "torch")

__all__ = ["LookupLayer", "lookup"]

# The checks of every eager forward, bound once (each `torch.jit.…` attribute walk costs ~80 ns a call).
# TorchScript and dynamo recognise these functions by identity, not by name, so the aliases keep working:
# `_is_scripting()` is a constant True when TorchScript compiles, `_is_compiling()` True when dynamo traces.
_is_scripting = torch.jit.is_scripting
_is_compiling = torch.compiler.is_compiling
#: True while `torch.jit.trace` records: the layer then calls the op, which the trace records (the numpy
#: fast path would be recorded as a constant output). The C function, not `torch.jit.is_tracing()` (a
#: Python wrapper around it).
_is_tracing = torch._C._is_tracing

def _check(keys: Any, ps_config_file: str, model_name: str, table_id: int, emb_vec_size: int) -> None:
    """Static checks (valid on fake tensors too): a (B, N) tensor whose dtype matches supportlonglong,
    a known model and table, and emb_vec_size equal to the table's dim."""
    where = f"hps.torch lookup ({model_name!r}, table_id={table_id})"
    if not isinstance(keys, torch.Tensor):
        raise KeyInputError(f"{where}: keys must be a torch.Tensor, got {type(keys).__name__}")
    config = shared_config(ps_config_file)
    table = config.model(model_name).table(table_id)
    if table.dim != emb_vec_size:
        raise ConfigError(f"{where}: emb_vec_size {emb_vec_size} does not match the table {table.name!r} "
                          f"dim {table.dim} (embedding_vecsize_per_table in ps.json)")
    expected = torch.int64 if config.supportlonglong else torch.int32
    if keys.dtype not in (torch.int32, torch.int64):
        raise KeyInputError(f"{where}: keys must be int64 or int32, got {keys.dtype}")
    if keys.dtype != expected:
        raise KeyInputError(f"{where}: keys are {keys.dtype} but ps.json has supportlonglong="
                            f"{str(config.supportlonglong).lower()}, which takes {expected} keys; "
                            f"cast them with keys.to({expected})")
    if keys.dim() != 2:
        raise KeyInputError(f"{where}: keys must have shape (batch, keys per sample), got {tuple(keys.shape)}")


def _lookup_eager(keys: torch.Tensor, ps_config_file: str, model_name: str, table_id: int,
                  emb_vec_size: int) -> torch.Tensor:
    """The lookup itself (what the custom op runs on real tensors)."""
    _check(keys, ps_config_file, model_name, table_id, emb_vec_size)
    return _hps_lookup(keys, ps_config_file, model_name, table_id)


def _hps_lookup(keys: torch.Tensor, ps_config_file: str, model_name: str, table_id: int) -> torch.Tensor:
    """The process-wide HPS's lookup on the keys' device; never an alias of `keys`."""
    server = shared_hps(ps_config_file)
    # CPU keys: numpy views both ways, no torch op, a new array. HPS.lookup takes tensors too, but its
    # generic type dispatch made the frameworks benchmark's layer 22-23 µs instead of 20 (same run phase)
    if keys.is_cpu and keys.layout is torch.strided:
        return torch.from_numpy(server.lookup(keys.numpy(), model_name, table_id))
    device_id = (keys.device.index or 0) if keys.is_cuda else 0
    vectors = server.lookup(keys, model_name, table_id, device_id=device_id)
    if vectors.data_ptr() == keys.data_ptr() and keys.numel():  # an op's output may not alias its input
        vectors = vectors.clone()
    return vectors


def _lookup_kernel(keys: torch.Tensor, ps_config_file: str, model_name: str, table_id: int,
                   emb_vec_size: int) -> torch.Tensor:
    """The op's kernel on real tensors, CPU and CUDA alike (CompositeExplicitAutograd)."""
    return _lookup_eager(keys, ps_config_file, model_name, table_id, emb_vec_size)


def _lookup_fake(keys: torch.Tensor, ps_config_file: str, model_name: str, table_id: int,
                 emb_vec_size: int) -> torch.Tensor:
    """Output shape for torch.compile / torch.export: (B, N, emb_vec_size) float32 on keys.device."""
    _check(keys, ps_config_file, model_name, table_id, emb_vec_size)
    return keys.new_empty((*keys.shape, emb_vec_size), dtype=torch.float32)


# The op, registered at import (a process that `torch.jit.load`s a saved model finds it by name). Defined
# with torch.library's low-level calls, not `torch.library.custom_op`: the dispatcher then calls the kernel
# directly, where custom_op's Python wrappers (autograd, dynamo guard, redispatch) cost ~25 µs a call under
# TorchScript and in compiled graphs (78 vs 52 µs a call, kernel alone 34 µs, 11 × 5 keys, this 2-vCPU VM).
# Keys are integers, so no autograd formula is needed; the kernel never returns an alias of `keys`.
_LIBRARY = torch.library.Library("hps", "DEF")  # the op lives as long as this object: keep it
_LIBRARY.define("lookup(Tensor keys, str ps_config_file, str model_name, SymInt table_id, "
                "SymInt emb_vec_size) -> Tensor", tags=(torch.Tag.pt2_compliant_tag,))
_LIBRARY.impl("lookup", _lookup_kernel, "CompositeExplicitAutograd")
torch.library.register_fake("hps::lookup", _lookup_fake, lib=_LIBRARY)

#: `lookup(keys, ps_config_file, model_name, table_id, emb_vec_size)`: the op `torch.ops.hps.lookup`.
#: keys: (B, N) int64|int32 on the CPU or a GPU → (B, N, emb_vec_size) float32 on keys.device. Raises
#: `KeyInputError` / `ConfigError` / `UnknownModelError` on a bad input; as in HugeCTR, more than
#: max_batch_size × maxnum_catfeature_query_per_table_per_sample keys raise `KeyInputError`.
lookup = torch.ops.hps.lookup


class LookupLayer(torch.nn.Module):
    """`LookupLayer(ps_config_file, model_name, table_id, emb_vec_size)`: (B, N) int64|int32 keys on the CPU
    or a GPU → (B, N, emb_vec_size) float32 on the same device (HugeCTR's `hps_torch.LookupLayer`).

    The config is read (not the tables) at construction to check the model, the table and its dim;
    the tables are loaded on the first forward. No parameters: the embeddings live in the HPS."""

    def __init__(self, ps_config_file: str, model_name: str, table_id: int, emb_vec_size: int) -> None:
        super().__init__()
        if isinstance(table_id, bool) or not isinstance(table_id, int) or table_id < 0:
            raise ConfigError(f"hps.torch.LookupLayer: table_id must be an int >= 0, got {table_id!r}")
        if isinstance(emb_vec_size, bool) or not isinstance(emb_vec_size, int) or emb_vec_size < 1:
            raise ConfigError(f"hps.torch.LookupLayer: emb_vec_size must be a positive int, got {emb_vec_size!r}")
        self.ps_config_file = real_path(ps_config_file)
        self.model_name = model_name
        self.table_id = table_id
        self.emb_vec_size = emb_vec_size
        config = shared_config(self.ps_config_file)
        table = config.model(model_name).table(table_id)
        if table.dim != emb_vec_size:
            raise ConfigError(f"hps.torch.LookupLayer({model_name!r}, table_id={table_id}): emb_vec_size "
                              f"{emb_vec_size} does not match the table {table.name!r} dim {table.dim}")
        #: The key dtype the ps.json takes (supportlonglong): keys of it, 2-D, need no other check.
        self._key_dtype = torch.int64 if config.supportlonglong else torch.int32

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        """keys: (B, N) int64|int32 → (B, N, emb_vec_size) float32 on keys.device."""
        if _is_scripting():
            # TorchScript compiles this branch only (`is_scripting` is a constant there): the op, by name, so a
            # saved model runs wherever `hps.torch` was imported, and `torch.jit.fork` can run lookups at once
            return torch.ops.hps.lookup(keys, self.ps_config_file, self.model_name, self.table_id,
                                        self.emb_vec_size)
        if type(keys) is torch.Tensor and not _is_compiling() and not _is_tracing():
            # eager: skip the op's dispatch (min 53 µs through the op vs 36 µs straight, 1,024 × 3 keys, this
            # 2-vCPU VM); the model, table and dim were checked at construction, so keys of the right dtype
            # and rank go straight to the HPS
            if keys.dtype is self._key_dtype and keys.dim() == 2:
                return _hps_lookup(keys, self.ps_config_file, self.model_name, self.table_id)
            return _lookup_eager(keys, self.ps_config_file, self.model_name, self.table_id, self.emb_vec_size)
        return lookup(keys, self.ps_config_file, self.model_name, self.table_id, self.emb_vec_size)

    def extra_repr(self) -> str:
        return (f"ps_config_file={self.ps_config_file!r}, model_name={self.model_name!r}, "
                f"table_id={self.table_id}, emb_vec_size={self.emb_vec_size}")
