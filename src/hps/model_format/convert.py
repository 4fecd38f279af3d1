"""`convert_file`: a `.npy` table or a PyTorch checkpoint → a sparse model directory
(the engine of the `hps convert` command)."""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path

import numpy as np

from hps.errors import ModelFormatError, require
from hps.model_format.reader import DEFAULT_CHUNK_ROWS, SparseModel
from hps.model_format.writer import write_sparse_model

NUMPY_SUFFIXES = (".npy",)
TORCH_SUFFIXES = (".pt", ".pth")


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"cannot read {what} {path} as a .npy array: {exc}") from exc


def _load_torch(path: Path, allow_pickle: bool) -> object:
    """The checkpoint's contents through torch's safe loader (tensors and containers only); the
    unsafe loader, which runs code from the file, only with `allow_pickle` (and a warning)."""
    torch = require("torch", "torch")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise ModelFormatError(
                f"{path} is not a plain state_dict: it pickles Python objects{_unpickler_detail(exc)}. Loading it "
                f"runs code from the file, so it is refused; if you trust the file, pass --allow-pickle "
                f"(hps convert) or allow_pickle=True (convert_file), or re-save it as a state_dict"
            ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise ModelFormatError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc
    warnings.warn(f"{path}: loading a pickled checkpoint (allow_pickle): this runs code from the file; "
                  f"do it only for files you trust", UserWarning, stacklevel=3)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling a module can fail in arbitrary ways
        raise ModelFormatError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc


def _unpickler_detail(exc: BaseException) -> str:
    """The part of torch's weights_only error that names what was refused (e.g. "Unsupported
    global: GLOBAL io.open"), as " (...)", or ""."""
    for line in str(exc).splitlines():
        _, found, detail = line.partition("WeightsUnpickler error:")
        if found:
            return f" ({detail.strip().split(' was not', 1)[0]})"
    return ""


def convert_file(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    param_name: str | None = None,
    keys_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> SparseModel:
    """Convert one embedding table file into the sparse model directory `out_dir` (see
    `_convert_local` for the formats). Any of `input_path`, `keys_path` and `out_dir` may be an
    fsspec URL (`s3://bucket/emb.npy`): a remote input is copied to a temporary local file first,
    a remote output is written locally, then uploaded (`remote.upload_table`: `key` written last).
    Returns the written `SparseModel` (remote for a remote `out_dir`)."""
    from hps.model_format.remote import download, is_remote, redact, refuse_existing, upload_table

    if not any(p is not None and is_remote(p) for p in (input_path, keys_path, out_dir)):
        return _convert_local(input_path, out_dir, param_name=param_name, keys_path=keys_path,
                              overwrite=overwrite, allow_pickle=allow_pickle, chunk_rows=chunk_rows)
    remote_out = str(out_dir) if is_remote(out_dir) else None
    if remote_out is not None:
        refuse_existing(remote_out, overwrite)  # before the work, not after it
    with tempfile.TemporaryDirectory(prefix="hps-convert-") as tmp:
        shown: dict[str, str] = {}  # local copy → the URL its errors name

        def local_copy(url: str | os.PathLike[str], folder: str, what: str) -> str:
            os.mkdir(os.path.join(tmp, folder))
            local = download(str(url), os.path.join(tmp, folder), what)
            shown[local] = redact(str(url))
            return local

        if is_remote(input_path):
            input_path = local_copy(input_path, "input", "input file")
        if keys_path is not None and is_remote(keys_path):
            keys_path = local_copy(keys_path, "keys", "keys file")
        if remote_out is not None:
            out_dir = os.path.join(tmp, "out")
            shown[out_dir] = redact(remote_out)
        try:
            model = _convert_local(input_path, out_dir, param_name=param_name, keys_path=keys_path,
                                   overwrite=overwrite, allow_pickle=allow_pickle, chunk_rows=chunk_rows)
        except ModelFormatError as exc:  # name the URLs, not the temporary copies
            message = str(exc)
            for local, where in shown.items():
                message = message.replace(local, where)
            raise ModelFormatError(message) from None
        if remote_out is None:
            return model
        upload_table(out_dir, remote_out, overwrite)
        return SparseModel(remote_out, model.dim)


def _convert_local(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    param_name: str | None = None,
    keys_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> SparseModel:
    """Convert one embedding table file into the sparse model directory `out_dir`.

    input_path: `.npy` holding a 2-D table `(rows, dim)` (read memory-mapped), or a PyTorch
    checkpoint `.pt` / `.pth` holding a state_dict, a checkpoint dict, an `nn.Module` or a
    tensor (`param_name` picks the table among several 2-D tensors). keys_path: optional
    `.npy` of `(rows,)` integer keys; default `0..rows-1`. A checkpoint is read with torch's
    safe loader (`weights_only`); one that pickles Python objects (a whole `nn.Module`) is
    refused with a `ModelFormatError` unless `allow_pickle` is True, which warns: unpickling
    runs code from the file.
    Returns the written `SparseModel`."""
    input_path = Path(input_path)
    if not input_path.is_file():
        raise ModelFormatError(f"convert: input file {input_path} does not exist")
    keys = None
    if keys_path is not None:
        keys_path = Path(keys_path)
        if keys_path.suffix != ".npy":
            raise ModelFormatError(f"convert: keys file {keys_path} must be a .npy array of integer keys")
        keys = _load_npy(keys_path, "keys file")
    suffix = input_path.suffix.lower()
    if suffix in NUMPY_SUFFIXES:
        if param_name is not None:
            raise ModelFormatError(f"convert: param_name={param_name!r} given, but {input_path} is a single .npy array")
        table = _load_npy(input_path, "embedding table")
        if table.ndim != 2:
            raise ModelFormatError(f"convert: {input_path} holds an array of shape {table.shape}; expected (rows, dim)")
        if keys is None:
            keys = np.arange(table.shape[0], dtype=np.int64)
        return write_sparse_model(out_dir, keys, table, chunk_rows=chunk_rows, overwrite=overwrite)
    if suffix in TORCH_SUFFIXES:
        from hps.model_format.from_torch import write_from_torch

        source = _load_torch(input_path, allow_pickle)
        return write_from_torch(
            out_dir, source, param_name, keys, chunk_rows=chunk_rows, overwrite=overwrite
        )
    raise ModelFormatError(
        f"convert: cannot tell the format of {input_path} from its suffix {input_path.suffix!r}; "
        f"supported: {', '.join(NUMPY_SUFFIXES + TORCH_SUFFIXES)}"
    )
