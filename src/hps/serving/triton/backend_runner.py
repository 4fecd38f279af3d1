"""Run a dense model the way Triton's own framework backend would, for a server that lacks that backend.

HugeCTR's Triton samples serve their dense model with Triton's tensorflow backend (a SavedModel,
`platform: "tensorflow_savedmodel"`) or its pytorch backend (TorchScript, `platform: "pytorch_libtorch"`).
The tritonserver bundled with nvidia-pytriton has only the python backend, so `hps triton convert`
gives such a model a python-backend runner (`backend_model.py`) built on `BackendRunner`: the request's
tensors go to the model unchanged (names and shapes as the client or the ensemble sent them), exactly
as the framework backend passes them, and the model's outputs come back by name.

    runner = BackendRunner("tensorflow", "dense/1/model.savedmodel", ["input_1"], ["output_1"])
    runner({"input_1": flat (n,) float32}) -> {"output_1": (samples, 1) float32}

Input mapping, as in Triton's backends:
  tensorflow  the SavedModel's `serving_default` signature, inputs and outputs by signature key.
  pytorch     forward() arguments by name when the config names match them, else by the `NAME__<i>`
              suffix, else in config order; a tuple / list result maps to the config outputs by the
              `__<i>` suffix or in order, a dict by key, a single tensor to the one output.
  onnxruntime the graph's inputs and outputs by name.

On a GPU (`device="cuda:N"`, a converted repository's KIND_GPU instance) a pytorch model is loaded onto
that GPU and `run_tensors` takes and answers torch tensors there (through DLPack in the stub, no host
copy); tensorflow and onnxruntime models take host arrays (`run_tensors` copies GPU inputs to the host).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hps.errors import require
from hps.serving.triton.errors import RepositoryError, RequestError

#: Triton backend name → the file or directory it loads from a version directory by default.
DEFAULT_MODEL_FILES = {"tensorflow": "model.savedmodel", "pytorch": "model.pt", "onnxruntime": "model.onnx"}
#: Triton `platform` values → their backend.
PLATFORM_BACKENDS = {"tensorflow_savedmodel": "tensorflow", "tensorflow_graphdef": "tensorflow",
                     "pytorch_libtorch": "pytorch", "onnxruntime_onnx": "onnxruntime",
                     "tensorrt_plan": "tensorrt", "ensemble": "ensemble"}
#: Backends `BackendRunner` can stand in for (python package that runs them, extra that installs it).
RUNNABLE = {"tensorflow": ("tensorflow", "tf"), "pytorch": ("torch", "torch"), "onnxruntime": ("onnxruntime", "onnx")}

_INDEX_SUFFIX = re.compile(r"__(\d+)$")


class BackendRunner:
    """A framework model called with named numpy arrays, answering named numpy arrays.

    backend: "tensorflow" (SavedModel directory), "pytorch" (TorchScript file) or "onnxruntime";
    path: the model file or directory; input_names / output_names: the config.pbtxt's, in order;
    device: "cpu" or "cuda[:N]", where a pytorch model runs.
    Raises `RepositoryError` naming the path when the model cannot be loaded.
    """

    def __init__(self, backend: str, path: str | os.PathLike, input_names: Sequence[str],
                 output_names: Sequence[str], threads: int = 0, device: str = "cpu"):
        if backend not in RUNNABLE:
            raise RepositoryError(f"{path}: no python runner for Triton backend {backend!r}; "
                                  f"runnable: {sorted(RUNNABLE)}")
        self.backend = backend
        self.path = Path(path)
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.device = str(device)
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise RepositoryError(f"{self.path}: device must be 'cpu' or 'cuda[:N]', not {self.device!r}")
        #: Whether the model runs on `device` (a pytorch model on a GPU); `run_tensors` answers there.
        self.on_gpu = False
        if not self.path.exists():
            raise RepositoryError(f"{self.path}: {backend} model not found")
        getattr(self, f"_init_{backend}")(threads)

    # --- loading ----------------------------------------------------------------------------

    def _init_tensorflow(self, threads: int) -> None:
        tf = require("tensorflow", "tf")
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        try:
            loaded = tf.saved_model.load(str(self.path))
        except Exception as exc:  # TF raises its own error types for unreadable SavedModels
            raise RepositoryError(f"{self.path}: tensorflow cannot load the SavedModel: {exc}") from exc
        signature = loaded.signatures.get("serving_default")
        if signature is None:
            raise RepositoryError(f"{self.path}: the SavedModel has no serving_default signature "
                                  f"(has {sorted(loaded.signatures)})")
        _, kwargs = signature.structured_input_signature
        missing = [n for n in self.input_names if n not in kwargs]
        if missing:
            raise RepositoryError(f"{self.path}: config inputs {missing} are not inputs of the SavedModel's "
                                  f"serving_default signature {sorted(kwargs)}")
        self._tf, self._loaded, self._signature = tf, loaded, signature
        self._tf_dtypes = {name: spec.dtype for name, spec in kwargs.items()}

    def _init_pytorch(self, threads: int) -> None:
        torch = require("torch", "torch")
        if threads:
            torch.set_num_threads(threads)
        if self.device != "cpu" and not torch.cuda.is_available():
            raise RepositoryError(f"{self.path}: device {self.device!r} asked for, but torch {torch.__version__} "
                                  "sees no CUDA device")
        self.torch_device = torch.device(self.device)
        try:
            module = torch.jit.load(str(self.path), map_location=self.torch_device).eval()
        except Exception as exc:  # torch raises RuntimeError for bad archives
            raise RepositoryError(f"{self.path}: torch.jit.load cannot load the model: {exc}") from exc
        self._torch, self._module = torch, module
        self.on_gpu = self.device != "cpu"
        try:
            args = [a.name for a in module.forward.schema.arguments][1:]  # drop self
        except Exception:
            args = []
        if all(n in args for n in self.input_names):
            self._order = sorted(self.input_names, key=args.index)
        elif all(_INDEX_SUFFIX.search(n) for n in self.input_names):
            self._order = sorted(self.input_names, key=lambda n: int(_INDEX_SUFFIX.search(n).group(1)))
        else:
            self._order = list(self.input_names)

    def _init_onnxruntime(self, threads: int) -> None:
        from hps.serving.triton.dense_runner import onnx_session

        self._session = onnx_session(self.path, threads)

    # --- running ----------------------------------------------------------------------------

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """inputs: config input name → array (as the request holds it) → config output name → array.

        Raises `RequestError` when an input is missing or the model rejects the tensors
        (a shape or dtype the model cannot take)."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise RequestError(f"{self.backend} model {self.path.name}: the request needs inputs {missing}")
        try:
            return getattr(self, f"_run_{self.backend}")(inputs)
        except RequestError:
            raise
        except Exception as exc:  # a framework error on these tensors is the request's problem
            raise RequestError(f"{self.backend} model {self.path.name} rejects the request: "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc

    def _run_tensorflow(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        feed = {n: tf.convert_to_tensor(inputs[n], dtype=self._tf_dtypes[n]) for n in self.input_names}
        result = self._signature(**feed)
        return self._pick_outputs({k: v.numpy() for k, v in result.items()})

    def run_tensors(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """`__call__` on torch tensors (CPU or GPU): a pytorch model gets them on its device and answers torch
        tensors there; other backends get host copies and answer torch CPU tensors."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise RequestError(f"{self.backend} model {self.path.name}: the request needs inputs {missing}")
        if self.backend != "pytorch":
            import torch

            host = {n: inputs[n].detach().cpu().numpy() for n in self.input_names}
            return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self(host).items()}
        try:
            return self._run_pytorch_tensors([inputs[n] for n in self._order])
        except RequestError:
            raise
        except Exception as exc:  # a framework error on these tensors is the request's problem
            raise RequestError(f"{self.backend} model {self.path.name} rejects the request: "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc

    def _run_pytorch_tensors(self, tensors: list[Any]) -> dict[str, Any]:
        torch = self._torch
        tensors = [t if t.device == self.torch_device else t.to(self.torch_device) for t in tensors]
        with torch.inference_mode():
            result = self._module(*tensors)
        if isinstance(result, dict):
            return self._pick_outputs(dict(result))
        if isinstance(result, (tuple, list)):
            names = self.output_names
            if all(_INDEX_SUFFIX.search(n) for n in names):
                return {n: result[int(_INDEX_SUFFIX.search(n).group(1))] for n in names}
            return dict(zip(names, result))
        return {self.output_names[0]: result}

    def _run_pytorch(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        result = self._run_pytorch_tensors([torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self._order])
        return {k: v.detach().cpu().numpy() for k, v in result.items()}

    def _run_onnxruntime(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._session.run(self.output_names, {n: inputs[n] for n in self.input_names})
        return dict(zip(self.output_names, out))

    def _pick_outputs(self, result: dict[str, Any]) -> dict[str, Any]:
        missing = [n for n in self.output_names if n not in result]
        if missing:
            if len(result) == len(self.output_names) == 1:
                return {self.output_names[0]: next(iter(result.values()))}
            raise RequestError(f"{self.backend} model {self.path.name}: outputs {missing} are not among the "
                               f"model's outputs {sorted(result)}")
        return {n: result[n] for n in self.output_names}


def backend_of(backend: str | None, platform: str | None) -> str | None:
    """The Triton backend a config.pbtxt asks for: its `backend`, else the one its `platform` implies."""
    if backend:
        return backend
    return PLATFORM_BACKENDS.get(platform or "", platform or None)
