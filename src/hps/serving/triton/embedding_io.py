"""The HugeCTR HPS-backend request format, as pure numpy (reference/hugectr-hps.md §3.6).

A request carries `KEYS` (all keys of the batch, table by table: table 0's keys, then table 1's, ...)
and `NUMKEYS` (the key count per table). The answer `OUTPUT0` is 1-D float32: every table's vectors,
flattened, in the same table-major order. The python-backend model (`model.py`) wraps these
functions; they live here so they can be tested and reused without a running Triton.

`split_keys` / `lookup_request` take numpy keys (the CPU deployment); `split_key_tensor` /
`lookup_request_tensor` take torch keys on the CPU or a GPU (the GPU deployment, where the keys come
through DLPack and the vectors stay on the keys' device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from hps.serving.triton.errors import RequestError


@dataclass(frozen=True)
class EmbeddingSpec:
    """What one hps embedding model accepts: per-table vector size and keys per sample, and the sample limit."""

    model_name: str
    dims: tuple[int, ...]
    maxnum_keys_per_sample: tuple[int, ...]
    max_batch_size: int

    @property
    def num_tables(self) -> int:
        return len(self.dims)

    @property
    def keys_per_sample(self) -> int:
        """Σ maxnum_catfeature_query_per_table_per_sample."""
        return int(sum(self.maxnum_keys_per_sample))

    @property
    def sample_width(self) -> int:
        """Floats per sample in OUTPUT0: Σ maxnum[t] × dim[t] (the dense model's input width)."""
        return int(sum(m * d for m, d in zip(self.maxnum_keys_per_sample, self.dims)))

    @classmethod
    def from_model_config(cls, model) -> "EmbeddingSpec":
        """Spec of an `hps.config.ModelConfig`."""
        return cls(model.name, tuple(model.embedding_vecsize_per_table),
                   tuple(model.maxnum_catfeature_query_per_table_per_sample), int(model.max_batch_size))


def split_keys(keys: np.ndarray, numkeys: np.ndarray, spec: EmbeddingSpec) -> list[np.ndarray]:
    """Split a request's keys into one array per table.

    keys: any shape, int64 (or int32), table-major concatenation, flattened here;
    numkeys: any shape holding `spec.num_tables` non-negative int32 counts with Σ = keys.size.
    Returns `spec.num_tables` 1-D views of `keys`. Raises `RequestError` naming what is wrong.
    """
    keys = np.asarray(keys)
    numkeys = np.asarray(numkeys)
    if keys.dtype not in (np.int64, np.int32):
        raise RequestError(f"model {spec.model_name!r}: KEYS must be INT64, got {keys.dtype}")
    if numkeys.dtype.kind not in "iu":
        raise RequestError(f"model {spec.model_name!r}: NUMKEYS must be INT32, got {numkeys.dtype}")
    return _split(keys.reshape(-1), numkeys, spec)


def _split(flat, numkeys: np.ndarray, spec: EmbeddingSpec) -> list:
    """Check the counts of `numkeys` against `flat` (1-D numpy array or torch tensor of keys) and `spec`;
    the per-table slices of `flat`."""
    # NUMKEYS holds one count per table: checked as Python ints (a few µs), not numpy ops (~20 µs a request)
    counts = [int(c) for c in numkeys.reshape(-1).tolist()]
    if len(counts) != spec.num_tables:
        raise RequestError(f"model {spec.model_name!r}: NUMKEYS has {len(counts)} entries but the model has "
                           f"{spec.num_tables} table(s); send one key count per table")
    if min(counts, default=0) < 0:
        raise RequestError(f"model {spec.model_name!r}: NUMKEYS {counts} has a negative count")
    total = sum(counts)
    size = flat.shape[0]
    if total != size:
        raise RequestError(f"model {spec.model_name!r}: NUMKEYS {counts} adds up to {total} keys "
                           f"but KEYS holds {size}")
    samples = num_samples(total, spec)
    if samples > spec.max_batch_size:
        raise RequestError(
            f"model {spec.model_name!r}: {total} keys are {samples} samples of {spec.keys_per_sample} key(s), "
            f"more than max_batch_size {spec.max_batch_size} in the ps.json")
    parts, start = [], 0
    for t, (count, maxnum) in enumerate(zip(counts, spec.maxnum_keys_per_sample)):
        if count > spec.max_batch_size * maxnum:
            raise RequestError(
                f"model {spec.model_name!r}: table {t} got {count} keys, more than max_batch_size "
                f"{spec.max_batch_size} × {maxnum} keys per sample")
        parts.append(flat[start:start + count])
        start += count
    return parts


def num_samples(total_keys: int, spec: EmbeddingSpec) -> int:
    """Samples in a request of `total_keys` keys: ceil(total / Σ maxnum) (HugeCTR divides; we round up)."""
    per = spec.keys_per_sample
    return -(-int(total_keys) // per) if per else 0


def lookup_request(keys: np.ndarray, numkeys: np.ndarray, spec: EmbeddingSpec,
                   lookup: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Answer one request: OUTPUT0, float32 (Σ_t numkeys[t] × dim[t],), table-major.

    `lookup(keys (n,) int64, table_id) -> (n, dim) float32` is e.g.
    `lambda k, t: ps.lookup(k, model_name, t)`.
    """
    parts = split_keys(keys, numkeys, spec)
    if len(parts) == 1:  # one table (the seed's case): the lookup's own array is the answer, no extra copy
        vectors = lookup(np.ascontiguousarray(parts[0]), 0) if parts[0].size else np.empty(0, np.float32)
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)
    out = np.empty(sum(p.size * d for p, d in zip(parts, spec.dims)), dtype=np.float32)
    offset = 0
    for t, part in enumerate(parts):
        size = part.size * spec.dims[t]
        if size:
            vectors = lookup(np.ascontiguousarray(part), t)
            out[offset:offset + size] = np.asarray(vectors, dtype=np.float32).reshape(-1)
        offset += size
    return out


def split_key_tensor(keys, numkeys: np.ndarray, spec: EmbeddingSpec) -> list:
    """`split_keys` for torch keys: keys (any shape) int64 / int32 torch tensor on the CPU or a GPU,
    table-major; numkeys: numpy counts (NUMKEYS is tiny: read on the host). Returns `spec.num_tables`
    1-D views of `keys` on its device. Raises `RequestError` naming what is wrong."""
    import torch

    if keys.dtype not in (torch.int64, torch.int32):
        raise RequestError(f"model {spec.model_name!r}: KEYS must be INT64, got {keys.dtype}")
    numkeys = np.asarray(numkeys)
    if numkeys.dtype.kind not in "iu":
        raise RequestError(f"model {spec.model_name!r}: NUMKEYS must be INT32, got {numkeys.dtype}")
    return _split(keys.reshape(-1), numkeys, spec)


def lookup_request_tensor(keys, numkeys: np.ndarray, spec: EmbeddingSpec, lookup: Callable, *,
                          device=None, lookup_many: Callable | None = None):
    """Answer one request from torch keys: OUTPUT0, a float32 torch tensor (Σ_t numkeys[t] × dim[t],),
    table-major, on `device` (default: the keys' device). Keys on another device are moved there first
    (one copy of the keys, never of the vectors).

    `lookup(keys (n,) int64 tensor, table_id, out) -> (n, dim) float32 tensor` writes into `out` (a
    (n, dim) view of OUTPUT0) when it is not None, e.g. `lambda k, t, out: ps.lookup(k, model, t,
    device_id, out=out)`; `lookup_many(keys_per_table, table_ids) -> list of (n_t, dim_t) tensors`, when
    given, takes requests of several tables in one call (`HPS.lookup_many`: one pass per fused table).
    """
    import torch

    parts = split_key_tensor(keys, numkeys, spec)
    device = keys.device if device is None else torch.device(device)
    if keys.device != device or keys.dtype is not torch.int64:  # one copy of all the keys, then views of it
        flat = keys.reshape(-1).to(device=device, dtype=torch.int64)
        sizes = [p.shape[0] for p in parts]
        parts = list(flat.split(sizes)) if sizes else []
    if len(parts) == 1:  # one table (the seed's and the DLRM case): the lookup's own tensor is the answer
        if not parts[0].shape[0]:
            return torch.empty(0, dtype=torch.float32, device=device)
        return lookup(parts[0].contiguous(), 0, None).reshape(-1)
    if lookup_many is not None:
        nonempty = [t for t, p in enumerate(parts) if p.shape[0]]
        vectors = lookup_many([parts[t].contiguous() for t in nonempty], nonempty) if nonempty else []
        flat = [v.reshape(-1) for v in vectors]
        return torch.cat(flat) if flat else torch.empty(0, dtype=torch.float32, device=device)
    out = torch.empty(sum(p.shape[0] * d for p, d in zip(parts, spec.dims)), dtype=torch.float32, device=device)
    offset = 0
    for t, part in enumerate(parts):
        n, dim = part.shape[0], spec.dims[t]
        if n:
            lookup(part.contiguous(), t, out[offset:offset + n * dim].view(n, dim))
        offset += n * dim
    return out


def make_request(per_table_keys: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Client side: per-table key arrays → (KEYS (1, Σn) int64, NUMKEYS (1, tables) int32)."""
    parts = [np.asarray(k, dtype=np.int64).reshape(-1) for k in per_table_keys]
    keys = np.concatenate(parts).reshape(1, -1) if parts else np.empty((1, 0), np.int64)
    numkeys = np.array([[p.size for p in parts]], dtype=np.int32)
    return keys, numkeys
