"""Sparse models from PyTorch: an `nn.Embedding` (or any module), a state_dict, or a tensor.

torch is imported only here, through `hps.errors.require`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hps.errors import ModelFormatError, require
from hps.model_format.reader import DEFAULT_CHUNK_ROWS, SparseModel
from hps.model_format.writer import write_sparse_model


def _flatten_tensors(source: Mapping[Any, Any], prefix: str, torch: Any, out: dict[str, Any]) -> None:
    """Collect every tensor of a (possibly nested) checkpoint mapping under dotted names."""
    for name, value in source.items():
        full = f"{prefix}{name}"
        if isinstance(value, torch.Tensor):
            out[full] = value
        elif isinstance(value, torch.nn.Module):
            _flatten_tensors(value.state_dict(), f"{full}.", torch, out)
        elif isinstance(value, Mapping):
            _flatten_tensors(value, f"{full}.", torch, out)


def select_embedding_weight(source: Any, param_name: str | None = None, where: str = "torch source") -> Any:
    """Pick the embedding table out of `source` and return it as a 2-D torch tensor.

    source: a tensor `(rows, dim)`; an `nn.Embedding` / `nn.EmbeddingBag` (its weight);
    any other `nn.Module` or a (possibly nested) state_dict / checkpoint mapping, where the
    table is the tensor named `param_name` or, without it, the only 2-D floating tensor.
    Raises `ModelFormatError` listing the candidates when the choice is ambiguous."""
    torch = require("torch", "torch")
    if isinstance(source, torch.Tensor):
        if param_name is not None:
            raise ModelFormatError(f"{where}: param_name={param_name!r} given, but the source is a bare tensor")
        weight, name = source, "tensor"
    else:
        if isinstance(source, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and param_name is None:
            return _check_2d(source.weight, f"{where} ({type(source).__name__}.weight)")
        if isinstance(source, torch.nn.Module):
            source = source.state_dict()
        if not isinstance(source, Mapping):
            raise ModelFormatError(
                f"{where}: expected a tensor, an nn.Module or a state_dict, got {type(source).__name__}"
            )
        tensors: dict[str, Any] = {}
        _flatten_tensors(source, "", torch, tensors)
        if param_name is not None:
            if param_name not in tensors:
                raise ModelFormatError(
                    f"{where}: no tensor named {param_name!r}; tensors: "
                    + ", ".join(f"{n} {tuple(t.shape)}" for n, t in tensors.items())
                )
            weight, name = tensors[param_name], param_name
        else:
            candidates = {n: t for n, t in tensors.items() if t.dim() == 2 and t.is_floating_point()}
            if len(candidates) != 1:
                listed = ", ".join(f"{n} {tuple(t.shape)}" for n, t in candidates.items()) or "none"
                raise ModelFormatError(
                    f"{where}: {len(candidates)} 2-D floating tensors ({listed}); "
                    f"name the embedding table with param_name"
                )
            ((name, weight),) = candidates.items()
    return _check_2d(weight, f"{where} ({name})")


def _check_2d(weight: Any, where: str) -> Any:
    if weight.dim() != 2:
        raise ModelFormatError(f"{where}: the embedding table must be 2-D (rows, dim), got shape {tuple(weight.shape)}")
    if weight.is_complex() or str(weight.dtype) == "torch.bool":
        raise ModelFormatError(f"{where}: the embedding table must be real, got dtype {weight.dtype}")
    return weight


def write_from_torch(
    path: str | os.PathLike[str],
    source: Any,
    param_name: str | None = None,
    keys: Any = None,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    overwrite: bool = False,
) -> SparseModel:
    """Write a PyTorch embedding table as a sparse model directory `path`.

    source: `nn.Embedding`, any `nn.Module`, a state_dict, or a tensor `(rows, dim)` (any
    device, any real dtype; stored as float32). param_name: which state_dict entry holds the
    table (default: the only 2-D floating tensor). keys: `(rows,)` integers (numpy or torch);
    default `0..rows-1`."""
    torch = require("torch", "torch")
    weight = select_embedding_weight(source, param_name, f"write_from_torch({str(path)!r})")
    vectors = weight.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    if keys is None:
        key_array = np.arange(vectors.shape[0], dtype=np.int64)
    elif isinstance(keys, torch.Tensor):
        key_array = keys.detach().cpu().numpy()
    else:
        key_array = np.asarray(keys)
    return write_sparse_model(path, key_array, vectors, chunk_rows=chunk_rows, overwrite=overwrite)
