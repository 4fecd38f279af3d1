"""Run a dense model (ONNX through onnxruntime, or TorchScript) on the flat vectors hps returns.

The embedding model answers a 1-D float32 array (OUTPUT0, samples × width floats, with
width = Σ maxnum[t] × dim[t]); the seed's dense model takes (samples, width) and answers
(samples, 1). `DenseRunner` reshapes, runs and returns (samples, 1) float32. A model exported
with a fixed batch (the seed's ONNX is fixed to 1,024 samples) is fed in chunks of that size,
the last one zero-padded. Used by `dense_model.py` inside Triton and by the in-process benchmark.

On a GPU (`device="cuda:N"`, the GPU layout) `run_tensor` takes and answers torch tensors: TorchScript
runs on that GPU; ONNX runs there through onnxruntime's CUDAExecutionProvider when this onnxruntime
has it (inputs and outputs bound to GPU memory), else on the CPU with one copy of the input to the
host (`note` says so, for the log).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hps.errors import require
from hps.serving.triton.errors import RepositoryError, RequestError

ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript")
TENSORRT_SUFFIXES = (".plan", ".trt", ".engine")

#: onnxruntime session settings used everywhere a dense model runs (the Triton stub and the in-process
#: benchmark baseline alike): worker threads block instead of spinning when they run out of work. With
#: more than one intra-op thread a spinning pool keeps cores busy between requests, and on a small
#: machine those are the cores tritonserver's frontend threads and the other python stubs need.
#: Execution is sequential (one inter-op thread): the dense towers served here are chains of layers.
ORT_SESSION_CONFIG = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def dense_kind(path: str | os.PathLike) -> str:
    """"onnx", "torchscript" or "tensorrt" from the file suffix; `RepositoryError` otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in TORCHSCRIPT_SUFFIXES:
        return "torchscript"
    if suffix in TENSORRT_SUFFIXES:
        return "tensorrt"
    raise RepositoryError(f"{path}: unknown dense model type {suffix!r}; expected .onnx, .pt (TorchScript) "
                          "or .plan/.trt (TensorRT)")


class DenseRunner:
    """A dense model on flat inputs: `runner(flat (samples × width,) float32) -> (samples, 1) float32`.

    path: .onnx or TorchScript .pt file; width: floats per sample, or None to take it from the
    model's input shape; threads: intra-op threads (0 = the runtime's default: one per core).
    ONNX sessions use `ORT_SESSION_CONFIG` (no spin-waiting), sequential execution, all graph optimizations.
    device: "cpu" or a CUDA device ("cuda", "cuda:1") for `run_tensor`; `on_gpu` says whether the model
    runs there (False for ONNX without onnxruntime's CUDAExecutionProvider: `note` says why).
    """

    def __init__(self, path: str | os.PathLike, width: int | None = None, threads: int = 0, device: str = "cpu"):
        self.path = Path(path)
        self.kind = dense_kind(self.path)
        if not self.path.is_file():
            raise RepositoryError(f"{self.path}: dense model file not found")
        self.fixed_batch: int | None = None
        self.device = str(device)
        self.on_gpu = False
        #: Why a model asked to run on a GPU runs on the CPU (None when it runs where asked).
        self.note: str | None = None
        self.torch_device: Any = None
        self._out_cols: int | None = None
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise RepositoryError(f"{self.path}: device must be 'cpu' or 'cuda[:N]', not {self.device!r}")
        if self.kind == "onnx":
            self._init_onnx(threads)
        elif self.kind == "torchscript":
            self._init_torch(threads)
        else:
            raise RepositoryError(f"{self.path}: a TensorRT plan runs only in Triton's tensorrt backend")
        if width is None:
            width = self.model_width
        if width is None:
            raise RepositoryError(f"{self.path}: the model's input width is not fixed; pass width "
                                  "(Σ maxnum keys per sample × dim)")
        if self.model_width is not None and width != self.model_width:
            raise RepositoryError(f"{self.path}: the model takes {self.model_width} floats per sample but the "
                                  f"embedding model gives {width} (Σ maxnum keys per sample × dim)")
        self.width = int(width)

    def _init_onnx(self, threads: int) -> None:
        gpu = None
        if self.device != "cpu":
            ort = require("onnxruntime", "onnx")
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" in available:
                torch = require("torch", "torch")
                self._torch, self.torch_device = torch, torch.device(self.device)
                gpu = self.torch_device.index if self.torch_device.index is not None else torch.cuda.current_device()
                self.torch_device = torch.device("cuda", gpu)
                self.on_gpu = True
            else:
                self.note = (f"dense model {self.path.name}: this onnxruntime has no CUDAExecutionProvider "
                             f"(providers {available}), so the model runs on the CPU and its input is copied to "
                             "the host once per request; a TorchScript dense model runs on the GPU")
        self._session = onnx_session(self.path, threads, cuda_device=gpu)
        outputs = self._session.get_outputs()
        out_shape = list(outputs[0].shape)
        if len(out_shape) == 2 and isinstance(out_shape[-1], int):
            self._out_cols = out_shape[-1]
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise RepositoryError(f"{self.path}: the dense model must take exactly 1 input, it takes "
                                  f"{[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = self._session.get_outputs()[0].name
        shape = list(inputs[0].shape)
        self.model_width = shape[-1] if len(shape) == 2 and isinstance(shape[-1], int) else None
        if len(shape) == 2 and isinstance(shape[0], int) and shape[0] > 0:
            self.fixed_batch = shape[0]

    def _init_torch(self, threads: int) -> None:
        torch = require("torch", "torch")
        if threads:
            torch.set_num_threads(threads)
        if self.device != "cpu" and not torch.cuda.is_available():
            raise RepositoryError(f"{self.path}: device {self.device!r} asked for, but torch {torch.__version__} "
                                  "sees no CUDA device")
        self.torch_device = torch.device(self.device)
        try:
            self._module = torch.jit.load(str(self.path), map_location=self.torch_device).eval()
        except Exception as exc:  # torch raises RuntimeError for bad archives
            raise RepositoryError(f"{self.path}: torch.jit.load cannot load the model: {exc}") from exc
        self.on_gpu = self.device != "cpu"
        self._torch = torch
        self.input_name, self.output_name, self.model_width = "input_1", "output_1", None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.kind == "onnx":
            if self.on_gpu:
                out = self._run_onnx_cuda(self._torch.from_numpy(batch).to(self.torch_device)).cpu().numpy()
            else:
                out = self._session.run([self.output_name], {self.input_name: batch})[0]
        else:
            with self._torch.inference_mode():
                out = self._module(self._torch.from_numpy(batch).to(self.torch_device)).cpu().numpy()
        return np.asarray(out, dtype=np.float32).reshape(batch.shape[0], -1)

    def __call__(self, flat: np.ndarray) -> np.ndarray:
        """flat: float32 (samples × width,) (any shape with that many floats) → (samples, 1) float32."""
        flat = np.asarray(flat)
        if flat.dtype != np.float32:
            raise RequestError(f"dense model {self.path.name}: input must be FP32, got {flat.dtype}")
        if flat.size % self.width:
            raise RequestError(f"dense model {self.path.name}: {flat.size} floats are not a whole number of "
                               f"samples of {self.width} floats")
        batch = np.ascontiguousarray(flat.reshape(-1, self.width))
        n = batch.shape[0]
        if self.fixed_batch is None or n == self.fixed_batch:
            return self._run(batch)
        step = self.fixed_batch
        out = []
        for start in range(0, n, step):
            chunk = batch[start:start + step]
            if chunk.shape[0] < step:
                chunk = np.concatenate([chunk, np.zeros((step - chunk.shape[0], self.width), np.float32)])
            out.append(self._run(chunk)[: min(step, n - start)])
        return np.concatenate(out) if out else np.empty((0, 1), np.float32)


    def run_tensor(self, flat: Any) -> Any:
        """flat: float32 torch tensor of samples × width floats (any shape), on the CPU or a GPU →
        (samples, 1) float32 torch tensor: on `device` when the model runs there (`on_gpu`), else on the CPU.
        Inputs elsewhere are moved first (one copy). Raises `RequestError` for a wrong dtype or size."""
        torch = require("torch", "torch")
        if flat.dtype != torch.float32:
            raise RequestError(f"dense model {self.path.name}: input must be FP32, got {flat.dtype}")
        if flat.numel() % self.width:
            raise RequestError(f"dense model {self.path.name}: {flat.numel()} floats are not a whole number of "
                               f"samples of {self.width} floats")
        batch = flat.reshape(-1, self.width)
        if self.kind == "torchscript":
            if batch.device != self.torch_device:
                batch = batch.to(self.torch_device)
            with torch.inference_mode():
                out = self._module(batch.contiguous())
            return out.reshape(batch.shape[0], -1).to(torch.float32).contiguous()
        if self.on_gpu:
            return self._run_onnx_cuda(batch)
        host = batch.detach().cpu().contiguous().numpy()  # onnxruntime on the CPU: the one host copy
        return torch.from_numpy(self(host))

    def _run_onnx_cuda(self, batch: Any) -> Any:
        """(n, width) float32 torch tensor → (n, cols) on this GPU, through onnxruntime's CUDA provider with
        the input and output bound to GPU memory (chunks of `fixed_batch` rows, the last one zero-padded)."""
        torch = self._torch
        batch = batch.to(self.torch_device).contiguous()
        n = batch.shape[0]
        step = self.fixed_batch or max(n, 1)
        index = self.torch_device.index
        outs = []
        torch.cuda.current_stream(self.torch_device).synchronize()  # onnxruntime runs on its own stream
        for start in range(0, max(n, 1), step):
            chunk = batch[start:start + step]
            if chunk.shape[0] < step:
                pad = torch.zeros((step - chunk.shape[0], self.width), dtype=torch.float32, device=self.torch_device)
                chunk = torch.cat([chunk, pad])
            chunk = chunk.contiguous()
            binding = self._session.io_binding()
            binding.bind_input(self.input_name, "cuda", index, np.float32, list(chunk.shape), chunk.data_ptr())
            if self._out_cols is not None:
                out = torch.empty((chunk.shape[0], self._out_cols), dtype=torch.float32, device=self.torch_device)
                binding.bind_output(self.output_name, "cuda", index, np.float32, list(out.shape), out.data_ptr())
                self._session.run_with_iobinding(binding)
            else:
                binding.bind_output(self.output_name, "cuda", index)
                self._session.run_with_iobinding(binding)
                out = torch.from_numpy(binding.copy_outputs_to_cpu()[0]).to(self.torch_device)
            outs.append(out.reshape(chunk.shape[0], -1)[: min(step, n - start)])
        return torch.cat(outs) if n else torch.empty((0, 1), dtype=torch.float32, device=self.torch_device)


def onnx_session(path: Any, threads: int = 0, cuda_device: int | None = None) -> Any:
    """An onnxruntime session of the ONNX model at `path`, `threads` intra-op threads (0: its default), on
    the CPU, or on GPU `cuda_device` through the CUDAExecutionProvider (CPU provider as fallback for
    operators it lacks); `RepositoryError` naming the file if onnxruntime cannot load it."""
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    for key, value in ORT_SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    try:
        providers: list[Any] = ["CPUExecutionProvider"]
        if cuda_device is not None:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(cuda_device)}))
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own non-HpsError types
        raise RepositoryError(f"{path}: onnxruntime cannot load the model: {exc}") from exc
