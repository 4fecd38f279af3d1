"""Host ↔ GPU copies of one table replica's lookups, through reusable pinned buffers.

A copy between a GPU and pageable host memory is staged by the driver through its own small pinned
buffer, one piece at a time on one core; a fresh numpy array adds first-touch page faults. Here
each replica keeps `Staging` sets of pinned buffers (grown to the largest batch seen, then reused),
and large copies are cut into chunks: the DMA of chunk i overlaps the host copies of the chunks
before it, and those host copies run on several cores (`numpy.copyto` releases the GIL).

- `StagingPool(device)`: `with pool.take() as st:` lends one set exclusively (a new one when every
  set is lent: one per concurrent caller); on return it remembers an event after the set's last
  queued copy, and the next borrower waits for it before writing the buffers.
- `Staging.keys_to_device(keys)`: `(n,) int64` numpy → the device, through pinned memory.
- `Staging.to_host(src, dst)`: `(n, dim)` float32 device tensor → the caller's numpy array (no
  allocation); `Staging.small_to_host(src)`: a 1-D device tensor → a numpy view of the set's pinned
  buffer (valid while the set is lent).
- `Staging.to_device(src)`: `(m, dim)` float32 numpy → a new device tensor.
- `Staging.rows_buffer(m, dim)` / `rows_to_device(host)`: a pinned `(m, dim)` float32 array for the tiers to
  write rows into, then one DMA of it to a new device tensor (the miss path: each row moved once on the host).

On the CPU (the Triton interpreter's "cpu" device, tests) the same chunked code runs on plain tensors.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

from hps.errors import require

torch = require("torch", "gpu")

#: Copies of more bytes than this are cut into chunks (at most `MAX_CHUNKS`).
CHUNK_BYTES = 4 << 20
MAX_CHUNKS = 64
#: The smallest pinned buffer; they grow to the next power of two of the largest batch seen (never shrink).
GROW_BYTES = 1 << 20

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _copy_pool() -> ThreadPoolExecutor:
    """The process-wide pool of host-copy threads (at most 8, one per core)."""
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)),
                                           thread_name_prefix="hps-copy")
    return _POOL


def chunks(num_elements: int, element_bytes: int) -> list[tuple[int, int]]:
    """`[start, stop)` element ranges covering `num_elements`: one when the copy is small, else pieces
    of at least `CHUNK_BYTES`, at most `MAX_CHUNKS` of them."""
    total = num_elements * element_bytes
    if total <= CHUNK_BYTES:
        return [(0, num_elements)] if num_elements else []
    per = max(CHUNK_BYTES, -(-total // MAX_CHUNKS)) // element_bytes
    return [(a, min(num_elements, a + per)) for a in range(0, num_elements, per)]


class Staging:
    """One set of pinned host buffers for a device's copies (see the module docstring)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self._cuda = device.type == "cuda"
        self._buffers: dict[str, Any] = {}
        #: An event after this set's last queued copy, or None when the caller has waited for it.
        self.busy: Any = None
        self._pending = False

    def _buffer(self, role: str, count: int, dtype: Any) -> Any:
        """A flat pinned tensor of `count` `dtype` elements (a view of the role's buffer, grown if short)."""
        nbytes = count * dtype.itemsize
        buf = self._buffers.get(role)
        if buf is None or buf.numel() < nbytes:
            # a power of two (torch's pinned allocator rounds to one and keeps freed blocks for reuse)
            size = 1 << (max(nbytes, GROW_BYTES) - 1).bit_length()
            buf = torch.empty(size, dtype=torch.uint8, pin_memory=self._cuda)
            self._buffers[role] = buf
        return buf[:nbytes].view(dtype)

    def _events(self, stream: Any) -> Any:
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def keys_to_device(self, keys: np.ndarray) -> Any:
        """`keys: (n,) int64` numpy → `(n,) int64` on the device (queued on the current stream)."""
        if not self._cuda:
            return torch.from_numpy(np.ascontiguousarray(keys, dtype=np.int64))
        pinned = self._buffer("keys", keys.shape[0], torch.int64)
        np.copyto(pinned.numpy(), keys, casting="unsafe")
        self._pending = True
        return pinned.to(self.device, non_blocking=True)

    def small_to_host(self, src: Any) -> np.ndarray:
        """A 1-D device tensor → numpy (a view of this set's pinned buffer: valid while the set is lent)."""
        if not self._cuda:
            return src.detach().numpy()
        pinned = self._buffer("small", src.shape[0], src.dtype)
        pinned.copy_(src, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        self._pending = False
        return pinned.numpy()

    def to_host(self, src: Any, dst: np.ndarray) -> None:
        """Copy `src: (n, dim) float32` (device, contiguous) into `dst` (numpy float32, C-contiguous, same
        number of elements); returns once `dst` holds it."""
        flat_src = src.reshape(-1)
        flat_dst = dst.reshape(-1)
        pieces = chunks(flat_src.shape[0], 4)
        if not self._cuda:
            host = flat_src.detach().numpy()
            _run([lambda a=a, b=b: np.copyto(flat_dst[a:b], host[a:b]) for a, b in pieces])
            return
        pinned = self._buffer("out", flat_src.shape[0], torch.float32)
        host = pinned.numpy()
        stream = torch.cuda.current_stream(self.device)
        if len(pieces) <= 1:  # one piece: a stream sync costs less than an event
            pinned.copy_(flat_src, non_blocking=True)
            stream.synchronize()
            np.copyto(flat_dst, host)
            self._pending = False
            return
        events = []
        for a, b in pieces:
            pinned[a:b].copy_(flat_src[a:b], non_blocking=True)
            events.append(self._events(stream))

        def piece(i: int) -> None:
            a, b = pieces[i]
            events[i].synchronize()
            np.copyto(flat_dst[a:b], host[a:b])

        _run([lambda i=i: piece(i) for i in range(len(pieces))])
        self._pending = False  # the last event follows every copy this set queued

    def to_device(self, src: np.ndarray) -> Any:
        """`src: (m, dim) float32` numpy → a new `(m, dim) float32` device tensor (queued on the current
        stream; the pinned buffer stays busy until it has run)."""
        src = np.ascontiguousarray(src, dtype=np.float32)
        if not self._cuda:
            out = torch.empty(src.shape, dtype=torch.float32)
            flat_out = out.numpy().reshape(-1)
            flat_src = src.reshape(-1)
            _run([lambda a=a, b=b: np.copyto(flat_out[a:b], flat_src[a:b]) for a, b in chunks(src.size, 4)])
            return out
        flat_src = src.reshape(-1)
        pinned = self._buffer("in", flat_src.shape[0], torch.float32)
        host = pinned.numpy()
        out = torch.empty(src.shape, dtype=torch.float32, device=self.device)
        flat_out = out.view(-1)
        pieces = chunks(flat_src.shape[0], 4)
        if len(pieces) <= 1:
            np.copyto(host, flat_src)
            flat_out.copy_(pinned, non_blocking=True)
        else:
            pool = _copy_pool()
            futures = [pool.submit(np.copyto, host[a:b], flat_src[a:b]) for a, b in pieces]
            for (a, b), future in zip(pieces, futures):
                future.result()
                flat_out[a:b].copy_(pinned[a:b], non_blocking=True)
        self._pending = True
        return out

    def rows_buffer(self, m: int, dim: int) -> np.ndarray:
        """A `(m, dim) float32` numpy array in this set's pinned memory (valid while the set is lent) for
        the tiers to write rows into; `rows_to_device` then moves them with one DMA, no host copy."""
        if not self._cuda:
            return np.empty((m, dim), dtype=np.float32)
        return self._buffer("in", m * dim, torch.float32).numpy().reshape(m, dim)

    def rows_to_device(self, host: np.ndarray) -> Any:
        """`host` (from `rows_buffer`) → a new `(m, dim) float32` device tensor (queued on the current
        stream; the pinned buffer stays busy until it has run)."""
        if not self._cuda:
            return torch.from_numpy(host)
        pinned = self._buffers["in"][:host.nbytes].view(torch.float32).view(host.shape)
        out = torch.empty(host.shape, dtype=torch.float32, device=self.device)
        out.copy_(pinned, non_blocking=True)
        self._pending = True
        return out

    def release(self) -> None:
        """Called when the borrower is done: remember an event after the copies it left queued."""
        if self._cuda and self._pending:
            self.busy = self._events(torch.cuda.current_stream(self.device))
            self._pending = False

    def acquire(self) -> None:
        """Called when lent: wait for the last borrower's queued copies before reusing the buffers."""
        if self.busy is not None:
            self.busy.synchronize()
            self.busy = None


def _run(tasks: list[Callable[[], Any]]) -> None:
    """Run `tasks`: inline when there is one, else on the copy pool (errors re-raised)."""
    if len(tasks) <= 1:
        for task in tasks:
            task()
        return
    futures = [_copy_pool().submit(task) for task in tasks]
    for future in futures:
        future.result()


class StagingPool:
    """`Staging` sets of one device, lent one per concurrent caller."""

    def __init__(self, device: Any) -> None:
        self.device = torch.device(device)
        self._free: list[Staging] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self) -> Iterator[Staging]:
        """Lend a set until the block ends."""
        with self._lock:
            staging = self._free.pop() if self._free else Staging(self.device)
        try:
            staging.acquire()
            yield staging
        finally:
            staging.release()
            with self._lock:
                self._free.append(staging)
