"""The one place that picks a cache implementation for a table replica.

`gpucache: true` uses the GPU cache when a CUDA device is present and falls back to the
CPU cache otherwise (said once in the log). `HPS_DEVICE=cpu` forces the CPU.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
from typing import Callable, Iterator

import numpy as np

from hps.cache.base import EmbeddingCache
from hps.config.schema import ModelConfig, TableConfig

log = logging.getLogger(__name__)

MIN_CAPACITY_ROWS = 64
#: Yields `(keys: (m,) int64, vectors: (m, dim) float32)` chunks of a table in file order.
RowLoader = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA device (and HPS_DEVICE is not "cpu").

    Without an NVIDIA driver (/dev/nvidiactl) torch is not imported: that costs seconds."""
    if os.environ.get("HPS_DEVICE", "").lower() == "cpu" or importlib.util.find_spec("torch") is None:
        return False
    if "torch" not in sys.modules and not os.path.exists("/dev/nvidiactl"):
        return False
    import torch

    return torch.cuda.is_available()


def _interpreted_gpu_cache() -> bool:
    """HPS_DEVICE=interpret with TRITON_INTERPRET=1: the GPU cache's Triton kernels run in the CPU
    interpreter on CPU tensors, so CI tests the GPU pipeline path without a GPU."""
    return os.environ.get("HPS_DEVICE") == "interpret" and os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=1)
def _say_cpu_fallback() -> None:
    log.warning("gpucache is true but no CUDA device is available: using the CPU embedding cache")


def capacity_rows(model: ModelConfig, rows: int) -> int:
    """HugeCTR's sizing for a dynamic cache: max(64, floor(gpucacheper × rows))."""
    return max(MIN_CAPACITY_ROWS, int(model.gpucacheper * rows))


def make_cache(model: ModelConfig, table: TableConfig, rows: int, device_id: int,
               load_rows: RowLoader) -> EmbeddingCache | None:
    """The cache of one table replica: None when `gpucache` is false.

    Static and uvm tables are filled with the whole table through `load_rows`; a dynamic
    cache starts empty (the caller pre-fills it when `cache_refresh_percentage_per_iteration`
    > 0 and `init_ec`)."""
    if not model.gpucache:
        return None
    if cuda_available() or _interpreted_gpu_cache():
        from hps.cache.gpu import make_gpu_cache

        return make_gpu_cache(model, table, rows, device_id, load_rows,
                              device=None if cuda_available() else "cpu")
    _say_cpu_fallback()
    if model.fp8_quant and model.cache_type != "dynamic":
        log.warning("model %s: fp8_quant applies only to the GPU cache; without a CUDA device its static "
                    "tables stay float32 in the CPU cache", model.name)
    from hps.cache.cpu_static import CpuStaticTable

    if model.cache_type == "dynamic":
        capacity = capacity_rows(model, rows)
        if capacity >= rows:  # the whole table fits: no set collisions (HugeCTR #278), room for 2x the rows
            prefilled = model.init_ec and model.cache_refresh_percentage_per_iteration > 0  # sized once, not grown
            return CpuStaticTable(table.dim, capacity_rows=2 * capacity, reserve_rows=rows if prefilled else 0)
        from hps.cache.cpu import CpuEmbeddingCache

        return CpuEmbeddingCache(capacity, table.dim)
    static = CpuStaticTable(table.dim, reserve_rows=rows)
    for keys, vectors in load_rows():
        static.insert_or_assign(keys, vectors)
    return static
