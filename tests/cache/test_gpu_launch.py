"""`CompiledLaunch`: the first launch of a variant goes through the JIT, later ones straight to the compiled
kernel's launcher with every parameter in signature order; a failing direct launch falls back for good.

Runs without a GPU: the kernel is a stand-in recording what it is called with."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")
pytest.importorskip("torch")

from hps.cache import gpu_launch  # noqa: E402
from hps.cache.gpu_launch import CompiledLaunch  # noqa: E402


class _Compiled:
    def __init__(self, log: list, fail: bool = False) -> None:
        self.log, self.fail = log, fail
        self.function, self.packed_metadata = "fn", "meta"

    @property
    def run(self):
        def run(*args):
            if self.fail:
                raise TypeError("launcher refused its arguments")
            self.log.append(("direct", args))
        return run


class _Kernel:
    arg_names = ["q_ptr", "n", "DIM", "TOUCH"]

    def __init__(self, fail_direct: bool = False) -> None:
        self.log: list = []
        self.fail_direct = fail_direct
        self.compiled = 0

    def __getitem__(self, grid):
        def jit(*args, **kw):
            self.log.append(("jit", grid, args, kw))
            self.compiled += 1
            return _Compiled(self.log, self.fail_direct)
        return jit


@pytest.fixture(autouse=True)
def _stream(monkeypatch):
    monkeypatch.setattr(gpu_launch, "current_stream_getter", lambda: (lambda index: 1000 + index))
    monkeypatch.setattr(gpu_launch, "_launch_hooks_set", lambda: False)
    monkeypatch.setattr(gpu_launch, "ENABLED", True)  # (off by default until it has run on a GPU)


def test_off_by_default_every_launch_goes_through_the_jit(monkeypatch):
    monkeypatch.setattr(gpu_launch, "ENABLED", False)
    kernel = _Kernel()
    launch = CompiledLaunch(kernel)
    for _ in range(3):
        launch.launch("a", 5, ("keys", 7), (("DIM", 16), ("TOUCH", True)), 1, 0)
    assert [entry[0] for entry in kernel.log] == ["jit", "jit", "jit"] and not launch.enabled


def test_later_launches_of_a_variant_go_direct_with_every_parameter_in_order():
    kernel = _Kernel()
    launch = CompiledLaunch(kernel)
    consts = (("DIM", 16), ("TOUCH", True))
    launch.launch("a", 5, ("keys", 7), consts, 1, 0)
    launch.launch("a", 6, ("keys2", 8), consts, 1, 2)
    launch.launch("b", 3, ("keys3", 9), (("DIM", 16), ("TOUCH", False)), 1, 0)  # another variant: the JIT
    assert [entry[0] for entry in kernel.log] == ["jit", "direct", "jit"]
    assert kernel.log[0][1:] == ((5,), ("keys", 7), {"DIM": 16, "TOUCH": True, "num_warps": 1})
    assert kernel.log[1][1] == (6, 1, 1, 1002, "fn", "meta", None, None, None, "keys2", 8, 16, True)
    assert launch.direct_launches == 1


def test_a_failing_direct_launch_falls_back_to_the_jit_for_good():
    kernel = _Kernel(fail_direct=True)
    launch = CompiledLaunch(kernel)
    consts = (("DIM", 16), ("TOUCH", True))
    for _ in range(3):
        launch.launch("a", 5, ("keys", 7), consts, 1, 0)
    assert [entry[0] for entry in kernel.log] == ["jit", "jit", "jit"]
    assert not launch.enabled and launch.direct_launches == 0


def test_parameters_out_of_signature_order_never_go_direct():
    kernel = _Kernel()
    launch = CompiledLaunch(kernel)
    consts = (("TOUCH", True), ("DIM", 16))  # not the signature's order
    for _ in range(2):
        launch.launch("a", 5, ("keys", 7), consts, 1, 0)
    assert [entry[0] for entry in kernel.log] == ["jit", "jit"]


def test_no_direct_launches_without_a_gpu_driver(monkeypatch):
    monkeypatch.setattr(gpu_launch, "current_stream_getter", lambda: None)
    kernel = _Kernel()
    launch = CompiledLaunch(kernel)
    for _ in range(2):
        launch.launch("a", 5, ("keys", 7), (("DIM", 16), ("TOUCH", True)), 1, 0)
    assert [entry[0] for entry in kernel.log] == ["jit", "jit"] and not launch.enabled
