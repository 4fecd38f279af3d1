"""Suite-wide set-up: without an NVIDIA GPU, Triton kernels run in Triton's CPU interpreter, so the GPU
cache's kernels are tested in CI too (set before anything imports triton)."""

import os

if "TRITON_INTERPRET" not in os.environ and not os.path.exists("/dev/nvidiactl"):
    os.environ["TRITON_INTERPRET"] = "1"
