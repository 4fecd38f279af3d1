"""CUDA-graph replay of a GPU cache's find and hit count, one capture per batch size.

A lookup's all-hit path needs the probe and the number of hits; from Python that is a Triton launch
plus a reduction and a host sync, most of its time on a fast GPU (DESIGN.md: launch ≈ 45 µs, graph
replay ≈ 19 µs). `FindGraphs(find, device)` captures `find` of n keys and the hit count once per n
(up to `MAX_GRAPHS` sizes) and replays it. The captured kernels read the cache's tensors by address:
a cache must not reallocate them while it keeps its `FindGraphs`.

A replay writes into the graph's static output, which must then be copied out (a second full read
and write of the vectors). That is cheap next to the launch cost it saves only for small batches:
batches whose vectors exceed `GRAPH_MAX_BYTES` run `find` eagerly, writing straight into the result
(or the caller's `out`), with the hit count the only host synchronization.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Any, Callable

from hps.errors import require

torch = require("torch", "gpu")

#: Batch sizes with a captured find graph per cache (the oldest capture is dropped first).
MAX_GRAPHS = 8
#: Batches whose vectors take more bytes than this skip the graph: the copy out of its static buffer
#: would cost more than the launch it saves (H100: a launch from Python ~45 µs ≈ copying ~64 MB; at 4,096 × 26
#: keys of dim 128, 54 MB, eager took 188 µs p50 on an H100 where an earlier run replayed it in 150).
GRAPH_MAX_BYTES = 64 << 20
#: Held while a graph is captured, and by `synchronize`: a whole-device synchronize from another thread
#: during a capture invalidates it (cudaErrorStreamCaptureInvalidated).
_CAPTURE_LOCK = threading.Lock()


def on_device(device: Any) -> Any:
    """A context making CUDA `device` (a torch.device) current; a no-op when it already is (entering
    `torch.cuda.device` costs ~7 µs on the H200, a tenth of an all-hit lookup)."""
    if torch.cuda.current_device() == device.index:
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def synchronize(device: Any) -> None:
    """`torch.cuda.synchronize(device)`, never while this process captures a find graph."""
    with _CAPTURE_LOCK:
        torch.cuda.synchronize(device)


def find_counted_eager(find: Callable[..., tuple[Any, Any]], keys: Any, out: Any = None) -> tuple[Any, Any, int]:
    """`find(keys, out=out)` plus its hit count, without a graph (the CPU interpreter, empty and large
    batches): `(vectors, found | None, num_found)`, `found` None when every key was found; `vectors` is
    `out` when given."""
    vectors, found = find(keys, out=out)
    num_found = int(found.sum())
    return vectors, (found if num_found < keys.shape[0] else None), num_found


class _FindGraph:
    """A captured find of a fixed number of keys: the graph and its static buffers."""

    def __init__(self, graph: Any, keys: Any, out: Any, flags: Any) -> None:
        #: `flags`: int8, the found mask in its first n bytes, the hit count as an int64 in its last 8
        #: (one copy out takes both)
        self.graph, self.keys, self.out, self.flags = graph, keys, out, flags
        #: The stream of the last caller: its copies out of the static buffers are queued there.
        self.stream: Any = None


class FindGraphs:
    """`find: (keys (n,) int64, out=None) -> (vectors (n, dim) float32, found (n,) bool)` on CUDA `device`,
    replayed from graphs: `graphs(keys, out=None) -> (vectors, found | None, num_found: int)`
    (host-synchronizing; `found` is None when every key was found; `vectors` is `out` when given).
    `dim` sizes the vectors: batches of more than `GRAPH_MAX_BYTES` run `find` eagerly."""

    def __init__(self, find: Callable[..., tuple[Any, Any]], device: Any, dim: int) -> None:
        self._find = find
        self._device = device
        self._graphs: dict[int, _FindGraph] = {}
        self._lock = threading.Lock()
        #: Batches of more keys than this run eagerly.
        self.max_graph_keys = max(1, GRAPH_MAX_BYTES // (4 * dim))

    def __call__(self, keys: Any, out: Any = None) -> tuple[Any, Any, int]:
        n = keys.shape[0]
        if n > self.max_graph_keys:
            with on_device(self._device):
                return find_counted_eager(self._find, keys, out)
        with self._lock, on_device(self._device):
            graph = self._graphs.get(n)
            if graph is None:
                if len(self._graphs) >= MAX_GRAPHS:
                    self._graphs.pop(next(iter(self._graphs)))
                graph = self._graphs[n] = self._capture(n)
            stream = torch.cuda.current_stream(self._device)
            if graph.stream is not None and graph.stream != stream:
                stream.wait_stream(graph.stream)  # the previous caller's copies out, on its stream
            graph.stream = stream
            graph.keys.copy_(keys)
            graph.graph.replay()
            # copied out before the host waits, on this stream: the next caller's replay queues behind these
            # copies (wait_stream above), so the wait below runs outside the lock
            vectors = graph.out.clone() if out is None else out.copy_(graph.out)
            flags = graph.flags.clone()
        num_found = int(flags[-8:].view(torch.int64).item())
        found = flags[:n].view(torch.bool) if num_found < n else None
        return vectors, found, num_found

    def _capture(self, n: int) -> _FindGraph:
        """Capture `find` of `n` keys and its hit count into a CUDA graph with static buffers."""
        keys = torch.zeros(n, dtype=torch.int64, device=self._device)
        stream = torch.cuda.Stream(self._device)
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(stream):
            self._find(keys)  # compiles and warms the kernel outside the capture
        torch.cuda.current_stream(self._device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # On a stream of the cache's device: torch's default capture stream lives on the device current
        # when it was first made, and a capture there records nothing of kernels launched on another
        # device (they run once, eagerly, and every replay would return that first result).
        # thread_local: other threads may launch work (inserts, updates) while this one captures.
        flags = torch.zeros(-(-n // 8) * 8 + 8, dtype=torch.int8, device=self._device)
        # No garbage collection inside the capture: freeing an unreachable object that holds CUDA resources
        # (pinned buffers record an event on the stream that last used them, often the legacy default
        # stream) from the capturing thread invalidates the capture (cudaErrorStreamCaptureImplicit); torch
        # no longer collects on entering torch.cuda.graph. Seen on an H100 with a closed HPS's pinned buffers.
        gc.collect()
        collecting = gc.isenabled()
        gc.disable()
        try:
            with _CAPTURE_LOCK, torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                out, found = self._find(keys)
                flags[:n].copy_(found.view(torch.int8))
                flags[-8:].view(torch.int64).copy_(found.view(torch.int8).sum().view(1))
        finally:
            if collecting:
                gc.enable()
        return _FindGraph(graph, keys, out, flags)
