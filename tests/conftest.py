"""Suite-wide set-up: without an NVIDIA GPU, Triton kernels run in Triton's CPU interpreter, so the GPU
cache's kernels are tested in CI too (set before anything imports triton)."""

import os

if "TRITON_INTERPRET" not in os.environ and not os.path.exists("/dev/nvidiactl"):
    os.environ["TRITON_INTERPRET"] = "1"

try:  # CI replays the same property-test examples every run (no flaky red builds); locally they vary
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis comes with the dev extra
    pass


import pytest  # noqa: E402


@pytest.fixture()
def gpu_cache_device(monkeypatch) -> str:
    """Where the GPU cache's code runs in this test: "cuda:0" on a GPU; without one, "cpu" with its Triton
    kernels in the CPU interpreter (`HPS_DEVICE=interpret`), or the test is skipped when that is off."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda:0"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA, or TRITON_INTERPRET=1")
    monkeypatch.setenv("HPS_DEVICE", "interpret")
    return "cpu"
