"""`GpuEmbeddingCache`: the set-associative embedding cache in device memory, on Triton kernels.

Geometry: a bucket is one line of `ways` int64 words (8 by default: 64 B, one probe per lookup):
`ways - 1` slot keys and the bucket's version word, so `capacity_rows` is rounded up to whole buckets
of 7 slots; bucket = mix(key) (splitmix64-style) mapped to [0, buckets) by multiply-shift. Rows are
row-major, `storage_dtype` float32 or float16 (lookups return float32). The key equal to the empty
marker (INT64_MIN) is cacheable: it has a slot of its own.

Eviction: "lru" (default) keeps a 64-bit clock per slot and 8 reference bits per bucket (in the
bucket's version word). A find sets the reference bit of each slot it hits, with an atomic OR only
when the bit is clear (so a hot slot costs one atomic per writer visit, not one store per hit). The
next writer to lock the bucket folds set bits into the clocks (referenced since the last write =
newer than every earlier insert), clears them, and evicts the lowest clock of a full bucket; an insert
batch gives key i the clock + i and replaces a slot only if that slot's clock is older, so one batch
behaves as if inserted in order (the latest rows win). The one approximation: slots referenced between
the same two writer visits tie (HugeCTR orders them by the last query). "lfu" counts hits (one atomic
add per hit). `touch_every_calls`: 1 (every find marks its hits), N (every N-th find), 0 (never).

Consistency: per-bucket seqlocks (see `gpu_kernels`): a find racing insert/assign/erase on another
stream returns the whole old row, the whole new row, or reports a miss (misses are data: the
lookup pipeline then refetches the row from the tiers). Writers lock buckets, so concurrent writers
on several streams are safe too. Kernels run on the caller's current stream.

Static and uvm tables (whole tables on the GPU or in pinned host memory) are in `gpu_static`;
`make_gpu_cache` builds the right one from a model's config.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

from hps.cache.gpu_graphs import FindGraphs, find_counted_eager
from hps.cache.gpu_launch import CompiledLaunch
from hps.cache.gpu_static import (GpuStaticTable, GpuUvmTable, check_out, interpreting, load_whole_table,
                                  normalize_device, pow2, run_kernel)
from hps.cache.gpu_whole import GpuWholeTableCache
from hps.config.schema import ModelConfig, TableConfig
from hps.errors import ClosedError, ConfigError, KeyInputError, ModelFormatError, require

torch = require("torch", "gpu")
K = require("hps.cache.gpu_kernels", "gpu")

MIN_CAPACITY_ROWS = 64
DEFAULT_WAYS = 8
_NO_LOCK = contextlib.nullcontext()
#: Counted finds that may be in flight at once (each holds one int64 miss word on the device).
MISS_SLOTS = 256
#: Batch sizes per thread whose counted-find buffers are kept (the oldest size is dropped first), for batches
#: of at most `WORK_MAX_KEYS` keys (9 bytes a key): larger ones allocate per call, where it costs little next
#: to the kernel. At most 4 × 9 MiB of device memory per calling thread.
WORK_SIZES = 4
WORK_MAX_KEYS = 1 << 20
def _storage_dtype(dtype: Any) -> Any:
    named = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}
    dtype = named.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in (torch.float32, torch.float16):
        raise ConfigError(f"GpuEmbeddingCache: storage_dtype must be torch.float32 or torch.float16, got {dtype!r}")
    return dtype


class GpuEmbeddingCache:
    """A fixed-capacity key → vector cache in device memory (`EmbeddingCache` protocol, torch tensors).

    `capacity_rows`: rows wanted (rounded up to whole buckets of `ways`); `dim`: vector width;
    `device`: "cuda:<i>" (or "cpu" under TRITON_INTERPRET=1, for tests)."""

    array_module = "torch"

    def __init__(self, capacity_rows: int, dim: int, device: str = "cuda:0", *, ways: int = DEFAULT_WAYS,
                 eviction: str = "lru", storage_dtype: Any = torch.float32, touch_every_calls: int = 1,
                 consistent_reads: bool = True) -> None:
        if not isinstance(capacity_rows, int) or capacity_rows < 1:
            raise ConfigError(f"GpuEmbeddingCache: capacity_rows must be a positive int, got {capacity_rows!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"GpuEmbeddingCache: dim must be a positive int, got {dim!r}")
        if ways < 2 or ways & (ways - 1) or ways > 64:
            raise ConfigError(f"GpuEmbeddingCache: ways must be a power of two in [2, 64], got {ways!r}")
        if eviction not in ("lru", "lfu"):
            raise ConfigError(f"GpuEmbeddingCache: eviction must be 'lru' or 'lfu', got {eviction!r}")
        if touch_every_calls < 0:
            raise ConfigError(f"GpuEmbeddingCache: touch_every_calls must be >= 0, got {touch_every_calls!r}")
        self.device = normalize_device(device, "GpuEmbeddingCache")
        self.torch_device = torch.device(self.device)
        self.dim = dim
        self.ways = ways
        self.eviction = eviction
        self.storage_dtype = _storage_dtype(storage_dtype)
        self.touch_every_calls = touch_every_calls
        self.consistent_reads = consistent_reads
        self.slots_per_bucket = ways - 1
        self.num_buckets = -(-capacity_rows // self.slots_per_bucket)
        self.capacity_rows = self.num_buckets * self.slots_per_bucket
        if self.num_buckets * ways >= 2**31:
            raise ConfigError(f"GpuEmbeddingCache: {capacity_rows} rows is more than 2^31 slots")
        lines = self.num_buckets + 1  # the last bucket holds the key equal to the empty marker
        dev = self.device
        self._keys = torch.full((lines * ways,), K.EMPTY, dtype=torch.int64, device=dev)
        self._keys.view(lines, ways)[:, ways - 1] = 0  # version words
        self._ver32 = self._keys.view(torch.int32)
        self._scores = torch.zeros(lines * ways, dtype=torch.int64, device=dev)
        self._rows = torch.zeros((lines * self.slots_per_bucket, dim), dtype=self.storage_dtype, device=dev)
        self._special = torch.zeros(1, dtype=torch.int64, device=dev)
        self._lock = threading.Lock()
        self._clock = 1
        self._calls = 0
        self._closed = False
        self._interpret = interpreting()
        self._dim_p2 = pow2(dim)
        self._graphs = FindGraphs(self.find, self.torch_device, dim)
        #: Replay a CUDA graph per batch size in `find_counted` instead of one direct launch.
        self.use_graphs = False
        #: Concurrent `find_counted` calls launch one at a time (see there).
        self.serialize_launches = True
        self._launch_lock = threading.Lock()
        self._local = threading.local()  # per thread: the found mask and scratch of counted finds, by size
        # Miss words: one per counted find in flight (lent from `_free_slots`), the last for `find`.
        self._misses = torch.zeros(MISS_SLOTS + 1, dtype=torch.int64, device=dev)
        self._miss_words = list(self._misses.unbind())
        self._free_slots = list(range(MISS_SLOTS))
        self._launcher = CompiledLaunch(K.find_kernel)
        # Launch geometry (benchmarks may override these attributes).
        self.find_block = 32  # H200: 32 keys and 1 warp per program was fastest at dims 16, 32 and 128
        self.find_warps = 1
        self.write_block = 128 if self._interpret else max(4, min(64, 2048 // self._dim_p2))
        self.write_warps = 4 if self._dim_p2 >= 64 else 2

    # ---- validation ----
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"GpuEmbeddingCache on {self.device} is closed")

    def _check_keys(self, keys: Any, op: str) -> Any:
        self._check_open()
        if not isinstance(keys, torch.Tensor):
            raise KeyInputError(f"GpuEmbeddingCache.{op}: keys must be a torch tensor on {self.device}, "
                                f"got {type(keys).__name__}")
        if keys.dim() != 1:
            raise KeyInputError(f"GpuEmbeddingCache.{op}: keys must be 1-D, got shape {tuple(keys.shape)}")
        if keys.dtype not in (torch.int64, torch.int32):
            raise KeyInputError(f"GpuEmbeddingCache.{op}: keys must be int64 or int32, got {keys.dtype}")
        if keys.device != self.torch_device:
            raise KeyInputError(f"GpuEmbeddingCache.{op}: keys are on {keys.device}, the cache is on {self.device}")
        if keys.dtype != torch.int64 or not keys.is_contiguous():
            keys = keys.to(torch.int64).contiguous()
        return keys

    def _check_vectors(self, vectors: Any, n: int, op: str) -> Any:
        if not isinstance(vectors, torch.Tensor) or vectors.device != self.torch_device:
            raise KeyInputError(f"GpuEmbeddingCache.{op}: vectors must be a torch tensor on {self.device}")
        if tuple(vectors.shape) != (n, self.dim):
            raise KeyInputError(f"GpuEmbeddingCache.{op}: vectors have shape {tuple(vectors.shape)}, "
                                f"expected ({n}, {self.dim})")
        if not vectors.is_floating_point():
            raise KeyInputError(f"GpuEmbeddingCache.{op}: vectors must be floating point, got {vectors.dtype}")
        return vectors.to(torch.float32).contiguous()

    def _launch(self, kernel: Any, grid: tuple[int], *args: Any, **kw: Any) -> None:
        run_kernel(kernel, grid, self.torch_device, self._interpret, *args, **kw)

    # ---- the protocol ----
    def find(self, keys: Any, out: Any = None) -> tuple[Any, Any]:
        """Probe `keys: (n,) int64` (duplicates allowed) → `(vectors: (n, dim) float32, found: (n,) bool)`,
        both on the cache's device; rows of misses are zeros. Stamps hits per `touch_every_calls`.
        `out`: a contiguous `(n, dim) float32` tensor on the cache's device to write the vectors into
        (returned as `vectors`); every row is written."""
        keys = self._check_keys(keys, "find")
        out = check_out(out, keys.shape[0], self.dim, self.torch_device, "GpuEmbeddingCache.find")
        found = self._probe(keys, out, MISS_SLOTS)  # the last miss word: nobody reads it
        return out, found.view(torch.bool)

    def _probe(self, keys: Any, out: Any, miss_slot: int, work: tuple | None = None) -> Any:
        """Launch the find of checked `keys` into `out`, adding the misses to `self._misses[miss_slot]`;
        returns the found mask, `(n,) int8`. `work`: `(found (n,) int8, scratch (n,) int64 | None)` to use
        instead of new ones."""
        n = keys.shape[0]
        dev = self.torch_device
        if work is None:
            found = torch.empty(n, dtype=torch.int8, device=dev)
            scratch = torch.empty(n, dtype=torch.int64, device=dev) if self.consistent_reads and n else keys
        else:
            found, scratch = work
        if n == 0:
            return found
        with self._lock:
            self._clock += 1
            self._calls += 1
            clock = self._clock
            touch = self.touch_every_calls > 0 and self._calls % self.touch_every_calls == 0
        if scratch is None:
            scratch = keys
        args = (keys, n, self._keys, self._ver32, self._scores, self._rows, self._special, out, found, scratch,
                self.num_buckets, clock, 0, self._misses, miss_slot)
        grid0 = -(-n // self.find_block)
        constexprs = (("DIM", self.dim), ("DIM_P2", self._dim_p2), ("W", self.ways), ("BK", self.find_block),
                      ("CHECK", self.consistent_reads), ("TOUCH", touch), ("LFU", self.eviction == "lfu"))
        if self._interpret:
            self._launch(K.find_kernel, (grid0,), *args, **dict(constexprs), num_warps=self.find_warps)
        else:
            # what the JIT specializes on besides the constexprs: caller pointers' 16-byte alignment and
            # whether the clock still fits an int32
            variant = (touch, keys.data_ptr() % 16 == 0, out.data_ptr() % 16 == 0, clock > 0x7FFFFFFF,
                       self.find_block, self.find_warps)
            index = dev.index
            if torch.cuda.current_device() == index:
                self._launcher.launch(variant, grid0, args, constexprs, self.find_warps, index)
            else:
                with torch.cuda.device(dev):
                    self._launcher.launch(variant, grid0, args, constexprs, self.find_warps, index)
        return found

    def find_counted(self, keys: Any, out: Any = None) -> tuple[Any, Any, int]:
        """`find` plus the number of hits, as `(vectors, found, num_found: int)` (host-synchronizing);
        `found` is None when every key was found (the all-hit path skips copying the mask); `vectors`
        is `out` when given (see `find`).

        One kernel launch, straight into the result (`out`, or a new tensor), through the compiled
        kernel's own launcher (`gpu_launch.CompiledLaunch`); the kernel adds the misses to a word of
        its own (one of `MISS_SLOTS`, lent for the call), and one 8-byte copy of that word to the host
        is the only synchronization. An all-hit batch does no atomic and leaves the word at zero; a
        batch with misses zeroes it before the word is lent again. `use_graphs = True` replays a CUDA
        graph per batch size instead (`gpu_graphs.FindGraphs`: a copy of the keys in, of the vectors out)."""
        keys = self._check_keys(keys, "find")
        n = keys.shape[0]
        free = self._free_slots
        if n == 0 or not free:  # more than MISS_SLOTS calls at once: the rest count with a reduction
            return find_counted_eager(self.find, keys, out)
        if (self.use_graphs and self.touch_every_calls == 1 and not self._interpret
                and n <= self._graphs.max_graph_keys):
            return self._graphs(keys, out)
        # Concurrent callers take turns for the launch (Python, under the GIL) and wait for their own
        # count outside the lock: each torch call releases and retakes the GIL, and with several threads
        # contending for it every retake can queue behind the others (a convoy); threads asleep on this
        # lock do not contend. `serialize_launches = False` lets them all contend.
        with self._launch_lock if self.serialize_launches else _NO_LOCK:
            out = check_out(out, n, self.dim, self.torch_device, "GpuEmbeddingCache.find")
            slot = free.pop()  # atomic under the GIL
            found = self._probe(keys, out, slot, self._thread_work(n) if n <= WORK_MAX_KEYS else None)
        word = self._miss_words[slot]
        misses = word.item()  # waits for the find (this stream)
        mask = None
        if misses:
            mask = found.view(torch.bool).clone()  # the thread's buffer is reused by its next call
            word.zero_()
            if not self._interpret:  # the word zeroed (and the mask copied) before either is used again
                torch.cuda.current_stream(self.torch_device).synchronize()
        free.append(slot)  # (a call interrupted before this line leaves its word out of the pool)
        return out, mask, n - misses

    def _thread_work(self, n: int) -> tuple:
        """This thread's `(found (n,) int8, scratch (n,) int64 | None)` for counted finds of `n` keys, made
        once per size (up to `WORK_SIZES` sizes per thread): a counted find waits for its kernel before it
        returns, so the thread's next one may reuse them; two allocations fewer per call."""
        sizes = getattr(self._local, "work", None)
        if sizes is None:
            sizes = self._local.work = {}
        work = sizes.get(n)
        if work is None:
            if len(sizes) >= WORK_SIZES:
                sizes.pop(next(iter(sizes)))
            dev = self.torch_device
            work = sizes[n] = (torch.empty(n, dtype=torch.int8, device=dev),
                               torch.empty(n, dtype=torch.int64, device=dev) if self.consistent_reads else None)
        return work

    def _write(self, keys: Any, vectors: Any, mode: int, op: str) -> None:
        keys = self._check_keys(keys, op)
        n = keys.shape[0]
        vectors = self._check_vectors(vectors, n, op) if mode != K.MODE_ERASE else keys
        if n == 0:
            return
        with self._lock:
            base = self._clock + 1
            self._clock += n + 1
        scratch = torch.empty(n, dtype=torch.int64, device=self.device)
        grid = (triton_cdiv(n, self.write_block),)
        self._launch(K.write_kernel, grid, keys, vectors, n, self._keys, self._ver32, self._scores, self._rows,
                     self._special, scratch, self.num_buckets, base,
                     DIM=self.dim, DIM_P2=self._dim_p2, W=self.ways, BK=self.write_block, MODE=mode,
                     LFU=self.eviction == "lfu", ASM=not self._interpret, num_warps=self.write_warps)

    def insert_or_assign(self, keys: Any, vectors: Any) -> None:
        """Insert or overwrite `keys: (n,) int64` with `vectors: (n, dim)` (float32 or float16); a full
        bucket evicts its lowest-score slot. Repeated keys keep one of their rows, whole."""
        self._write(keys, vectors, K.MODE_UPSERT, "insert_or_assign")

    def assign(self, keys: Any, vectors: Any) -> None:
        """Overwrite `keys: (n,) int64` that are present with `vectors: (n, dim)`; absent keys are ignored."""
        self._write(keys, vectors, K.MODE_ASSIGN, "assign")

    def erase(self, keys: Any) -> None:
        """Remove `keys: (n,) int64` if present."""
        self._write(keys, None, K.MODE_ERASE, "erase")

    def dump(self) -> Any:
        """All cached keys, `(m,) int64` on the cache's device (host-synchronizing)."""
        self._check_open()
        slots = self._slot_keys()
        out = slots[slots != K.EMPTY]
        if int(self._special[0]) != 0:
            out = torch.cat([out, torch.full((1,), K.EMPTY, dtype=torch.int64, device=self.device)])
        return out

    def size(self) -> int:
        """Number of cached keys (host-synchronizing)."""
        self._check_open()
        return int((self._slot_keys() != K.EMPTY).sum()) + int(self._special[0] != 0)

    def _slot_keys(self) -> Any:
        """The slot keys of the regular buckets, `(num_buckets, ways - 1) int64` (a view)."""
        return self._keys.view(self.num_buckets + 1, self.ways)[: self.num_buckets, : self.slots_per_bucket]

    def _version_words(self) -> Any:
        """Every bucket's version word (the special bucket last), `(num_buckets + 1,) int64` (a view)."""
        return self._keys.view(self.num_buckets + 1, self.ways)[:, self.ways - 1]

    def close(self) -> None:
        """Free the device memory; later calls raise `ClosedError`. Idempotent."""
        self._closed = True
        self._keys = self._ver32 = self._scores = self._rows = self._special = self._misses = None
        self._miss_words = []
        self._local = threading.local()  # drops this thread's buffers (other threads' go with their threads)

    def memory_bytes(self) -> int:
        """Device bytes held: per bucket line `ways` × (key 8 + score 8) plus `ways - 1` rows."""
        row = self.dim * (4 if self.storage_dtype == torch.float32 else 2)
        return (self.num_buckets + 1) * (self.ways * 16 + self.slots_per_bucket * row)


def triton_cdiv(n: int, block: int) -> int:
    """Programs needed for `n` items at `block` per program."""
    return -(-n // block)


def make_gpu_cache(model: ModelConfig, table: TableConfig, rows: int, device_id: int,
                   keys_vectors_loader: Callable[[], Any] | None = None, *, device: str | None = None) -> Any:
    """The GPU cache of one table replica, by `model.cache_type`.

    - "dynamic": `GpuEmbeddingCache(max(64, floor(gpucacheper × rows)), dim)`, or `GpuWholeTableCache` of
      that many rows when they cover the whole table.
    - "static": `GpuStaticTable` with every row (in pinned host memory when `enable_pagelock`).
    - "uvm": `GpuUvmTable`, the first floor(gpucacheper × rows) rows (file order) on the device.

    `model.fp8_quant` stores static and uvm rows as e4m3 with a float32 scale per row (HugeCTR: static
    tables only); a dynamic cache keeps float32 (the config parser warns).

    `keys_vectors_loader()` returns `(keys (m,) int64, vectors (m, dim) float32)` numpy arrays, or
    an iterable of such chunks in file order; static and uvm need it. `device` overrides
    "cuda:<device_id>" (tests use "cpu" under TRITON_INTERPRET=1)."""
    dev = device or f"cuda:{device_id}"
    kind = model.cache_type
    if kind == "dynamic":
        capacity = max(MIN_CAPACITY_ROWS, int(model.gpucacheper * rows))
        if capacity >= rows:  # the whole table fits: an exact index, no set collisions (HugeCTR #278)
            return GpuWholeTableCache(capacity, table.dim, dev)
        return GpuEmbeddingCache(capacity, table.dim, dev)
    if keys_vectors_loader is None:
        raise ConfigError(f"model {model.name!r} table {table.name!r}: embedding_cache_type {kind!r} holds the "
                          "whole table and needs a row loader")
    keys, vectors = load_whole_table(keys_vectors_loader, table.dim, table.tag)
    try:
        if kind == "static":
            return GpuStaticTable(keys, vectors, dev, pagelock=model.enable_pagelock,
                                  default_value=table.default_value, fp8_quant=model.fp8_quant)
        if kind == "uvm":
            hot = int(model.gpucacheper * keys.shape[0])
            return GpuUvmTable(keys, vectors, hot, dev, default_value=table.default_value, fp8_quant=model.fp8_quant)
    except ModelFormatError as e:
        raise ModelFormatError(f"table {table.tag} ({table.sparse_file}): {e}") from e
    raise ConfigError(f"model {model.name!r}: unknown embedding_cache_type {kind!r}")


__all__ = ["GpuEmbeddingCache", "GpuStaticTable", "GpuUvmTable", "GpuWholeTableCache", "make_gpu_cache",
           "MIN_CAPACITY_ROWS"]
