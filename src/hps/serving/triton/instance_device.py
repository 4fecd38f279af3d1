"""Where a python-backend model instance of an hps repository runs, and how its tensors travel.

Triton tells each instance its kind and device (`args["model_instance_kind"]`, "CPU" or "GPU", and
`args["model_instance_device_id"]`); the python backend's `FORCE_CPU_ONLY_INPUT_TENSORS` parameter
("yes" by default) says whether inputs are copied to the host before the model sees them. The hps
models (model.py, dense_model.py, backend_model.py) take:

- the numpy path on a KIND_CPU instance whose inputs are forced to the host (the CPU layout);
- the DLPack path otherwise: on a KIND_GPU instance, on its GPU (inputs may arrive in host or GPU
  memory; outputs are handed on as GPU tensors), and on a KIND_CPU instance with
  FORCE_CPU_ONLY_INPUT_TENSORS "no", on the CPU (the same code on CPU tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

FORCE_CPU_ONLY_INPUT_TENSORS = "FORCE_CPU_ONLY_INPUT_TENSORS"
_NO = ("no", "false", "0", "off")


@dataclass(frozen=True)
class InstanceDevice:
    """dlpack: take and give tensors through DLPack (torch); gpu: the instance's GPU id, or None on the CPU."""

    dlpack: bool
    gpu: int | None

    @property
    def torch_device(self) -> str:
        """"cuda:<gpu>" or "cpu"."""
        return f"cuda:{self.gpu}" if self.gpu is not None else "cpu"


def instance_device(args: Mapping[str, Any], params: Mapping[str, str]) -> InstanceDevice:
    """The `InstanceDevice` of a python-backend instance from its `initialize` args and config parameters."""
    kind = str(args.get("model_instance_kind", "CPU")).upper()
    forced = str(params.get(FORCE_CPU_ONLY_INPUT_TENSORS, "yes")).strip().lower() not in _NO
    if kind == "GPU":
        return InstanceDevice(True, int(args.get("model_instance_device_id") or 0))
    return InstanceDevice(not forced, None)
