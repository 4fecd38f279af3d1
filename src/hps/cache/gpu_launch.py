"""`CompiledLaunch`: a Triton kernel launched through its compiled handle, past the JIT's per-call work.

`kernel[grid](*args)` binds and specializes every argument, builds a cache key and looks the compiled
kernel up on every call: tens of µs from Python, more than the all-hit find of a 1,024 × 26 batch takes on
the GPU. `CompiledLaunch(kernel)` launches the first call of each variant through the JIT (compiling it)
and keeps the compiled kernel it returns; later calls of that variant go straight to its launcher
(`CompiledKernel.run`, the same call the JIT ends with). The caller names the variant: every constexpr
and every property the JIT specializes on must be the same within one variant (here: tensor dtypes, and
pointers aligned to 16 bytes, which the caller checks). Any failure of the direct launch turns it off
for good (the JIT path keeps working). Only on CUDA, with no Triton launch hooks set (profilers).

Off unless `HPS_DIRECT_LAUNCH=1`: it has not yet run on a GPU (the session that wrote it had no device
time left), and a launcher handed its arguments in the wrong order would answer wrong rows, not fail.
Turn it on by default once `tests/cache` and `benchmarks/bench_dlrm.py` have run with it on a GPU.
"""

from __future__ import annotations

import os
from typing import Any

from hps.errors import require

triton = require("triton", "gpu")

#: Direct launches are made only when this is true (`HPS_DIRECT_LAUNCH=1`); see the module docstring.
ENABLED = os.environ.get("HPS_DIRECT_LAUNCH", "0") == "1"


def _launch_hooks_set() -> bool:
    """Whether Triton launch hooks are installed (then every launch goes through the JIT)."""
    try:
        from triton import knobs

        return knobs.runtime.launch_enter_hook is not None or knobs.runtime.launch_exit_hook is not None
    except Exception:  # noqa: BLE001 - an older Triton without knobs: no direct launches
        return True


def current_stream_getter() -> Any:
    """The JIT's own way to a device's current stream, `get(device_index) -> raw stream handle` (torch's);
    None where Triton has no active GPU driver."""
    try:
        from triton.runtime import driver

        return driver.active.get_current_stream
    except Exception:  # noqa: BLE001 - no direct launches then
        return None


class CompiledLaunch:
    """Launch Triton `kernel` with positional `args` (every non-constexpr parameter, in order) and
    `constexprs` (the constexpr parameters in signature order, as a tuple of `(name, value)` pairs).

    `launch(variant, grid0, args, constexprs, num_warps)`: `variant` is any hashable value the caller
    keeps equal exactly when the JIT would pick the same compiled kernel."""

    def __init__(self, kernel: Any) -> None:
        self._kernel = kernel
        self._compiled: dict[Any, Any] = {}
        self.enabled = ENABLED and not _launch_hooks_set()
        self._stream: Any = None
        #: Direct launches made (tests and benchmarks read it).
        self.direct_launches = 0

    def launch(self, variant: Any, grid0: int, args: tuple, constexprs: tuple, num_warps: int,
               device_index: int) -> None:
        """Launch on CUDA device `device_index` (which must be current) on its current stream."""
        direct = self._compiled.get(variant) if self.enabled else None
        if direct is not None:
            run, function, metadata, values = direct
            try:
                run(grid0, 1, 1, self._stream(device_index), function, metadata, None, None, None, *args, *values)
                self.direct_launches += 1
                return
            except Exception:  # noqa: BLE001 - never again; the JIT path below launches this call
                self.enabled = False
                self._compiled.clear()
        compiled = self._kernel[(grid0,)](*args, **dict(constexprs), num_warps=num_warps)
        if self._stream is None and self.enabled:
            self._stream = current_stream_getter()
            self.enabled = self._stream is not None
        if self.enabled and hasattr(compiled, "function") and self._fits(args, constexprs):
            self._compiled[variant] = (compiled.run, compiled.function, compiled.packed_metadata,
                                       tuple(v for _, v in constexprs))

    def _fits(self, args: tuple, constexprs: tuple) -> bool:
        """Whether `args` then the constexprs' values are the kernel's parameters in signature order
        (the order the compiled launcher takes them in)."""
        names = list(getattr(self._kernel, "arg_names", ()))
        return len(names) == len(args) + len(constexprs) and names[len(args):] == [n for n, _ in constexprs]
