"""Static and uvm GPU tables: a whole embedding table behind one Triton lookup kernel.

- `GpuStaticTable(keys, vectors, device, pagelock=False)`: every row in device memory, or, with
  `pagelock=True` (ps.json `enable_pagelock`), in pinned host memory read by the kernel over the
  bus (zero-copy: a pinned tensor's address is valid on the device under unified addressing).
- `GpuUvmTable(keys, vectors, hot_rows, device)`: rows `[0, hot_rows)` (file order) in device
  memory, the rest pinned in host memory; one kernel serves both.

With `fp8_quant=True` (ps.json `fp8_quant`, as HugeCTR's static tables) both keep each row as
`dim` e4m3 bytes plus one float32 scale (`hps.cache.fp8`): dim + 4 bytes a row instead of 4·dim. The
rows are quantised at load (a file with NaN or Inf is refused: `ModelFormatError`) and by `assign`;
the kernel decodes the bits and returns float32 (error ≤ 2^-4 of the row's largest magnitude).

The index is open addressing with linear probing over `(P,) int64` keys and `(P,) int32` row
numbers, P = max(64, 2 × rows) (load ≤ 0.5), built on the device in vectorized rounds. Misses get
`default_value` (HugeCTR: static tables consult no database). The key set is fixed at load:
`assign` overwrites present rows (the device is synchronized around it, so no lookup sees a torn
row), `insert_or_assign` accepts only present keys, `erase` raises `UpdateError`.

What the lookup pipeline does with them (`read_only = True`): call `find` and return its vectors
as they are (misses already hold the default value); never dedupe misses, query tiers or insert.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import numpy as np

from hps.cache import fp8 as F8
from hps.cache.gpu_graphs import on_device, synchronize
from hps.errors import ClosedError, ConfigError, KeyInputError, ModelFormatError, UpdateError, require

torch = require("torch", "gpu")
K = require("hps.cache.gpu_kernels", "gpu")

#: Serializes interpreter launches (the Triton interpreter patches module state while it runs).
INTERPRET_LOCK = threading.Lock()


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def run_kernel(kernel: Any, grid: tuple[int], device: Any, interpret: bool, *args: Any, **kw: Any) -> None:
    """Launch Triton `kernel[grid](*args, **kw)` on `device` (a torch.device); in the CPU interpreter,
    one launch at a time."""
    if interpret:
        with INTERPRET_LOCK:
            kernel[grid](*args, **kw)
    else:
        with on_device(device):
            kernel[grid](*args, **kw)


def normalize_device(device: str, who: str) -> str:
    """"cuda" / "cuda:1" / "cpu" → "cuda:<i>" or "cpu"; "cpu" only under TRITON_INTERPRET=1."""
    dev = torch.device(device)
    if dev.type == "cpu":
        if not interpreting():
            raise ConfigError(f"{who}: device 'cpu' needs TRITON_INTERPRET=1 (the Triton CPU interpreter)")
        return "cpu"
    if dev.type != "cuda":
        raise ConfigError(f"{who}: device must be 'cuda:<i>' or 'cpu', got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"{who}: device {device!r} asked for, but torch sees no CUDA device")
    return f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"


def load_whole_table(loader: Callable[[], Any], dim: int, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """Call `loader()`: `(keys, vectors)` numpy arrays or an iterable of such chunks (file order) →
    `(keys (m,) int64, vectors (m, dim) float32)`."""
    got = loader()
    if isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], np.ndarray):
        chunks = [got]
    else:
        chunks = list(got)
    if not chunks:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    keys = np.concatenate([np.asarray(c[0], dtype=np.int64).reshape(-1) for c in chunks])
    vectors = np.concatenate([np.asarray(c[1], dtype=np.float32).reshape(-1, dim) for c in chunks])
    if keys.shape[0] != vectors.shape[0]:
        raise ModelFormatError(f"table {tag}: {keys.shape[0]} keys but {vectors.shape[0]} vectors of dim {dim}")
    return keys, vectors


def check_out(out: Any, n: int, dim: int, device: Any, where: str) -> Any:
    """`out` if it is a contiguous `(n, dim) float32` tensor on `device`; a new one when `out` is None;
    else `KeyInputError` naming `where`."""
    if out is None:
        return torch.empty((n, dim), dtype=torch.float32, device=device)
    if (not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or tuple(out.shape) != (n, dim)
            or out.device != device or not out.is_contiguous()):
        got = (f"{out.dtype} {tuple(out.shape)} on {out.device}" if isinstance(out, torch.Tensor)
               else type(out).__name__)
        raise KeyInputError(f"{where}: out must be a contiguous float32 ({n}, {dim}) tensor on {device}, got {got}")
    return out


def pow2(x: int) -> int:
    """The smallest power of two >= x (1 for x <= 1)."""
    return 1 << max(0, (x - 1).bit_length())


class _WholeTable:
    """Shared implementation: index + rows split at `hot_rows` between device and pinned host."""

    array_module = "torch"

    read_only = True

    def __init__(self, keys: np.ndarray, vectors: np.ndarray, device: str, hot_rows: int,
                 default_value: float, storage_dtype: Any, who: str, fp8_quant: bool = False) -> None:
        self.device = normalize_device(device, who)
        self.torch_device = torch.device(self.device)
        self._who = who
        keys = np.ascontiguousarray(np.asarray(keys, dtype=np.int64).reshape(-1))
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != keys.shape[0]:
            raise ModelFormatError(f"{who}: {keys.shape[0]} keys but vectors of shape {vectors.shape}")
        n, dim = vectors.shape
        self.dim = int(dim)
        self.capacity_rows = int(n)
        self.hot_rows = int(min(max(hot_rows, 0), n))
        self.default_value = float(default_value)
        self._interpret = interpreting()
        self._lock = threading.Lock()
        self._closed = False
        dev = self.device
        on_cuda = dev.startswith("cuda")
        self.fp8_quant = bool(fp8_quant)
        self._keys = torch.from_numpy(keys).to(dev)
        if self.fp8_quant:
            storage_dtype = torch.uint8
            self._quantize_table(keys, vectors)
        else:
            self._scales = torch.ones(1, dtype=torch.float32, device=dev)  # unread
            self._dev_rows = torch.from_numpy(np.ascontiguousarray(vectors[: self.hot_rows])).to(dev, storage_dtype)
            cold = torch.from_numpy(np.ascontiguousarray(vectors[self.hot_rows:])).to(storage_dtype)
            self._host_rows = cold.pin_memory() if on_cuda and cold.numel() else cold
        if self._dev_rows.numel() == 0:
            self._dev_rows = torch.zeros((1, self.dim), dtype=storage_dtype, device=dev)
        if self._host_rows.numel() == 0:
            self._host_rows = torch.zeros((1, self.dim), dtype=storage_dtype, pin_memory=on_cuda)
        self._build_index()
        # H200, dim 16: 64 keys / 2 warps per program beat 256 / 4 (13.5 vs 11.7 G keys/s at 1M keys, 73 vs
        # 96 µs for 26,624 keys host-synced): a program waits for its longest linear probe
        self.find_block = max(8, min(64, 4096 // pow2(self.dim)))
        self.find_warps = 2 if pow2(self.dim) <= 64 else 4

    def _quantize_table(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Fill `_dev_rows (hot_rows, dim) uint8`, `_host_rows (n - hot_rows, dim) uint8` (pinned on a GPU)
        and `_scales (n,) float32` (device) from `vectors: (n, dim)`, in chunks quantised on the device;
        `ModelFormatError` naming the first key whose row holds NaN or Inf."""
        n, dim, hot, dev = self.capacity_rows, self.dim, self.hot_rows, self.device
        on_cuda = dev.startswith("cuda")
        self._dev_rows = torch.empty((hot, dim), dtype=torch.uint8, device=dev)
        host = torch.empty((n - hot, dim), dtype=torch.uint8)
        self._host_rows = host.pin_memory() if on_cuda and host.numel() else host
        self._scales = torch.empty(max(n, 1), dtype=torch.float32, device=dev)
        step = F8.chunk_rows(dim)
        for a in range(0, n, step):
            b = min(n, a + step)
            chunk = torch.from_numpy(np.ascontiguousarray(vectors[a:b], dtype=np.float32)).to(dev)
            bad = F8.nonfinite_rows(chunk)
            if bad.numel():
                r = a + int(bad[0])
                raise ModelFormatError(f"{self._who}: fp8_quant cannot scale the row of key {int(keys[r])} "
                                       f"(row {r} of the table): it holds NaN or Inf; fix the sparse file or "
                                       "set fp8_quant false")
            codes, scales = F8.quantize_rows(chunk)
            self._scales[a:b] = scales
            if a < hot:
                self._dev_rows[a:min(b, hot)] = codes[: min(b, hot) - a]
            if b > hot:
                self._host_rows[max(a, hot) - hot:b - hot] = codes[max(a, hot) - a:].cpu()

    def _build_index(self) -> None:
        """Linear-probing index over all keys: `(P,) int64` keys, `(P,) int32` row numbers, P = max(64, 2n)."""
        n = self._keys.shape[0]
        self._empty_index(max(64, 2 * n))
        special = (self._keys == K.EMPTY).nonzero().flatten()
        if special.numel():
            self._special_idx[0] = special[0]
        pend = (self._keys != K.EMPTY).nonzero().flatten()
        self._place(self._keys[pend], pend)

    def _empty_index(self, num_slots: int) -> None:
        dev = self.device
        self.num_slots = num_slots
        self._skeys = torch.full((num_slots,), K.EMPTY, dtype=torch.int64, device=dev)
        self._sidx = torch.full((num_slots,), -1, dtype=torch.int32, device=dev)
        self._special_idx = torch.full((1,), -1, dtype=torch.int64, device=dev)

    def _place(self, keys: Any, rows: Any) -> None:
        """Add distinct `keys: (m,) int64` (absent from the index, none equal to EMPTY) with row numbers
        `rows: (m,)`, in rounds: each round every unplaced key tries its next position; one contender per
        free position wins (scatter), the rest move on."""
        p = self.num_slots
        pend = torch.arange(keys.shape[0], device=self.device)
        pos = self._home(keys, p)
        owner = torch.full((p,), -1, dtype=torch.int64, device=self.device)
        while pend.numel():
            free = self._skeys[pos] == K.EMPTY
            cand, cpos = pend[free], pos[free]
            owner[cpos] = cand
            won = owner[cpos] == cand
            wi, wp = cand[won], cpos[won]
            self._skeys[wp] = keys[wi]
            self._sidx[wp] = rows[wi].to(torch.int32)
            placed = torch.zeros(pend.shape[0], dtype=torch.bool, device=self.device)
            placed[free.nonzero().flatten()[won]] = True
            pend, pos = pend[~placed], pos[~placed]
            pos = torch.where(pos + 1 == p, torch.zeros_like(pos), pos + 1)

    def _home(self, keys: Any, num_slots: int) -> Any:
        out = torch.empty_like(keys)
        if keys.numel():
            self._run(K.bucket_kernel, (-(-keys.numel() // 1024),), keys, out, keys.numel(), num_slots, BLOCK=1024)
        return out

    def _run(self, kernel: Any, grid: tuple[int], *args: Any, **kw: Any) -> None:
        run_kernel(kernel, grid, self.torch_device, self._interpret, *args, **kw)

    def _check_keys(self, keys: Any, op: str) -> Any:
        if self._closed:
            raise ClosedError(f"{self._who} on {self.device} is closed")
        if not isinstance(keys, torch.Tensor) or keys.dim() != 1 or keys.dtype not in (torch.int64, torch.int32):
            raise KeyInputError(f"{self._who}.{op}: keys must be a 1-D int64 torch tensor")
        if keys.device != self.torch_device:
            raise KeyInputError(f"{self._who}.{op}: keys are on {keys.device}, the table is on {self.device}")
        if keys.dtype != torch.int64 or not keys.is_contiguous():  # each torch call costs µs on the lookup path
            keys = keys.to(torch.int64).contiguous()
        return keys

    def _lookup(self, keys: Any, out: Any = None) -> tuple[Any, Any]:
        n = keys.shape[0]
        out = check_out(out, n, self.dim, self.torch_device, f"{self._who}.find")
        found = torch.empty(n, dtype=torch.int8, device=self.device)
        if n:
            two = self.hot_rows < self.capacity_rows
            self._run(K.static_find_kernel, (-(-n // self.find_block),), keys, n, self._skeys, self._sidx,
                      self.num_slots, self._special_idx, self._dev_rows, self._host_rows, self._scales,
                      self.hot_rows, self.default_value, out, found, DIM=self.dim, DIM_P2=pow2(self.dim),
                      BK=self.find_block, TWO_TIERS=two, FP8=self.fp8_quant, num_warps=self.find_warps)
        return out, found.view(torch.bool)

    def find(self, keys: Any, out: Any = None) -> tuple[Any, Any]:
        """`keys: (n,) int64` on the table's device → `(vectors (n, dim) float32, found (n,) bool)`;
        misses hold `default_value`. `out`: a contiguous `(n, dim) float32` tensor on the table's device
        to write every row into (returned as `vectors`)."""
        keys = self._check_keys(keys, "find")
        with self._lock:  # only excludes a running `assign`
            return self._lookup(keys, out)

    def _slots_of(self, keys: Any) -> Any:
        """Index position of each key, -1 if absent; keys equal to EMPTY get -1 (host-synchronizing)."""
        pos = self._home(keys, self.num_slots)
        slot = torch.full_like(keys, -1)
        active = keys != K.EMPTY
        while bool(active.any()):
            sk = self._skeys[pos]
            hit = active & (sk == keys)
            slot = torch.where(hit, pos, slot)
            active = active & ~hit & (sk != K.EMPTY)
            pos = torch.where(pos + 1 == self.num_slots, torch.zeros_like(pos), pos + 1)
        return slot

    def _row_numbers(self, keys: Any) -> Any:
        """Row number of each key, -1 if absent (host-synchronizing)."""
        if keys.numel() == 0:
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        slot = self._slots_of(keys)
        idx = torch.where(slot >= 0, self._sidx[slot.clamp(min=0)].to(torch.int64), -1)
        return torch.where(keys == K.EMPTY, self._special_idx[0], idx)

    def assign(self, keys: Any, vectors: Any) -> None:
        """Overwrite the rows of present `keys: (n,) int64` with `vectors: (n, dim)`; absent keys are
        ignored. Synchronizes the device before and after, under the table's lock."""
        keys = self._check_keys(keys, "assign")
        if not isinstance(vectors, torch.Tensor) or tuple(vectors.shape) != (keys.shape[0], self.dim):
            raise KeyInputError(f"{self._who}.assign: vectors must be a ({keys.shape[0]}, {self.dim}) tensor")
        self._assign(keys, vectors, must_exist=False)

    def _assign(self, keys: Any, vectors: Any, must_exist: bool) -> None:
        with self._lock:
            if self.device.startswith("cuda"):
                synchronize(self.device)
            idx = self._row_numbers(keys)
            present = idx >= 0
            if must_exist and not bool(present.all()):
                raise UpdateError(f"{self._who}: cannot insert new keys into a static table (e.g. "
                                  f"{keys[~present][:5].tolist()}); its key set is fixed at load")
            vec = vectors.to(self.device, torch.float32)
            if self.fp8_quant:
                vec = self._quantized_update(keys, vec, idx, present)
            hot = present & (idx < self.hot_rows)
            cold = present & (idx >= self.hot_rows)
            if bool(hot.any()):
                self._dev_rows[idx[hot]] = vec[hot].to(self._dev_rows.dtype)
            if bool(cold.any()):
                rows = (idx[cold] - self.hot_rows).cpu()
                self._host_rows[rows] = vec[cold].cpu().to(self._host_rows.dtype)
            if self.device.startswith("cuda"):
                synchronize(self.device)

    def _quantized_update(self, keys: Any, vec: Any, idx: Any, present: Any) -> Any:
        """fp8 tables: `vec: (n, dim) float32` → its e4m3 codes `(n, dim) uint8`, the scales of present rows
        written to `_scales[idx]`; `UpdateError` (changing nothing) if a present key's vector is not finite."""
        bad = F8.nonfinite_rows(vec[present])
        if bad.numel():
            raise UpdateError(f"{self._who}: fp8_quant cannot scale the update of key "
                              f"{int(keys[present][bad[0]])}: it holds NaN or Inf; nothing was written")
        codes, scales = F8.quantize_rows(torch.nan_to_num(vec))
        self._scales[idx[present]] = scales[present]
        return codes

    def insert_or_assign(self, keys: Any, vectors: Any) -> None:
        """Overwrite present keys; raises `UpdateError` (changing nothing) if any key is absent."""
        keys = self._check_keys(keys, "insert_or_assign")
        if not isinstance(vectors, torch.Tensor) or tuple(vectors.shape) != (keys.shape[0], self.dim):
            raise KeyInputError(f"{self._who}.insert_or_assign: vectors must be a ({keys.shape[0]}, {self.dim}) tensor")
        self._assign(keys, vectors, must_exist=True)

    def erase(self, keys: Any) -> None:
        """Static tables hold every row: raises `UpdateError`."""
        raise UpdateError(f"{self._who}: rows cannot be erased from a static table")

    def dump(self) -> Any:
        """All keys, `(m,) int64` on the device, in file order."""
        self._check_keys(torch.zeros(0, dtype=torch.int64, device=self.device), "dump")
        return self._keys.clone()

    def size(self) -> int:
        return self.capacity_rows

    def memory_bytes(self) -> int:
        """Device bytes held: the device rows (4·dim B a row in float32, dim B in fp8), fp8 scales (4 B a
        row, for every row), the keys (8 B a row) and the index (12 B a position, 2 positions a row)."""
        rows = self._dev_rows.numel() * self._dev_rows.element_size() if self.hot_rows else 0
        scales = 4 * self.capacity_rows if self.fp8_quant else 0
        return rows + scales + 8 * self.capacity_rows + 12 * self.num_slots

    def host_bytes(self) -> int:
        """Pinned host bytes held: the rows past `hot_rows` (pagelock static, uvm)."""
        cold = self.capacity_rows - self.hot_rows
        return cold * self.dim * self._host_rows.element_size() if cold else 0

    def close(self) -> None:
        """Free device and pinned memory. Idempotent."""
        self._closed = True
        self._keys = self._skeys = self._sidx = self._dev_rows = self._host_rows = self._scales = None


class GpuStaticTable(_WholeTable):
    """The whole table on the GPU: `keys: (n,) int64`, `vectors: (n, dim) float32` numpy arrays.
    `pagelock=True` keeps the rows in pinned host memory and reads them zero-copy from the kernel.
    `fp8_quant=True` stores e4m3 rows with a float32 scale each (see the module docstring)."""

    def __init__(self, keys: np.ndarray, vectors: np.ndarray, device: str = "cuda:0", *, pagelock: bool = False,
                 default_value: float = 0.0, storage_dtype: Any = torch.float32, fp8_quant: bool = False) -> None:
        n = int(np.asarray(keys).shape[0])
        super().__init__(keys, vectors, device, 0 if pagelock else n, default_value, storage_dtype, "GpuStaticTable",
                         fp8_quant)
        self.pagelock = pagelock


class GpuUvmTable(_WholeTable):
    """Rows `[0, hot_rows)` of the table (file order) in device memory, the rest in pinned host memory."""

    def __init__(self, keys: np.ndarray, vectors: np.ndarray, hot_rows: int, device: str = "cuda:0", *,
                 default_value: float = 0.0, storage_dtype: Any = torch.float32, fp8_quant: bool = False) -> None:
        super().__init__(keys, vectors, device, hot_rows, default_value, storage_dtype, "GpuUvmTable", fp8_quant)
