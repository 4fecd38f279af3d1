"""Triton python-backend model standing in for a framework backend the server lacks (tensorflow, pytorch,
onnxruntime); written into converted repositories as `<model>/<version>/model.py` by
`hps triton convert`. It runs inside Triton's python stub. config.pbtxt parameters:
  hps_runner_backend  the backend it stands in for: tensorflow, pytorch or onnxruntime
  hps_model_file      the model inside the version directory (model.savedmodel, model.pt, model.onnx, or
                      the original config's default_model_filename)
  hps_threads         intra-op threads (0 = the framework's default)

Inputs and outputs are the original config's: each request's tensors go to the model as they are
(`BackendRunner`); outputs are cast to the config's data types. A request the model cannot take gets
an INVALID_ARG error (HTTP 400), other failures INTERNAL.

On a KIND_GPU instance (or with FORCE_CPU_ONLY_INPUT_TENSORS "no": `instance_device`) the tensors are
taken and given through DLPack: a pytorch model runs on the instance's GPU and its outputs are handed
on as GPU tensors; other backends get host copies.
"""

import gc
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from hps.serving.triton.backend_runner import BackendRunner
from hps.serving.triton.errors import RequestError
from hps.serving.triton.instance_device import instance_device


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in self.model_config.get("parameters", {}).items()}
        self.name = args["model_name"]
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.input_names = [i["name"] for i in self.model_config["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"]))
                        for o in self.model_config["output"]]
        backend = params["hps_runner_backend"]
        where = instance_device(args, params)
        self.dlpack = where.dlpack
        if self.dlpack:
            import torch
            import torch.utils.dlpack  # noqa: F401 - a submodule, not imported by `import torch`

            self._torch = torch
            self._torch_dtypes = {name: _torch_dtype(torch, dtype) for name, dtype in self.outputs}
        self.runner = BackendRunner(backend, os.path.join(version_dir, params["hps_model_file"]),
                                    self.input_names, [n for n, _ in self.outputs],
                                    threads=int(params.get("hps_threads") or 0),
                                    device=where.torch_device if backend == "pytorch" else "cpu")
        pb_utils.Logger.log_info(f"model {self.name}: {backend} model {params['hps_model_file']} run by hps "
                                 f"in the python backend ({self._tensors(where)}; "
                                 f"this server has no {backend} backend)")
        gc.freeze()

    def _tensors(self, where):
        if not self.dlpack:
            return "numpy tensors"
        return f"DLPack tensors on {where.torch_device if self.runner.on_gpu else 'cpu'}"

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                if self.dlpack:
                    tensors = self._execute_dlpack(request)
                else:
                    inputs = {}
                    for name in self.input_names:
                        tensor = pb_utils.get_input_tensor_by_name(request, name)
                        if tensor is not None:
                            inputs[name] = tensor.as_numpy()
                    result = self.runner(inputs)
                    tensors = [pb_utils.Tensor(name, np.ascontiguousarray(result[name], dtype=dtype))
                               for name, dtype in self.outputs]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # every failure becomes this request's error response
                code = pb_utils.TritonError.INVALID_ARG if isinstance(exc, RequestError) else pb_utils.TritonError.INTERNAL
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"model {self.name}: {exc}", code)))
        if self.dlpack and self.runner.on_gpu:  # GPU outputs written on torch's stream: done before Triton reads them
            self._torch.cuda.current_stream(self.runner.torch_device).synchronize()
        return responses

    def _execute_dlpack(self, request):
        dlpack = self._torch.utils.dlpack
        inputs = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = dlpack.from_dlpack(tensor.to_dlpack())
        result = self.runner.run_tensors(inputs)
        tensors = []
        for name, dtype in self.outputs:
            out, torch_dtype = result[name], self._torch_dtypes[name]
            if torch_dtype is None:  # a type torch lacks (strings): through the host as before
                tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(out.detach().cpu().numpy(), dtype=dtype)))
            else:
                tensors.append(pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(out.to(torch_dtype).contiguous())))
        return tensors


def _torch_dtype(torch, dtype):
    """The torch dtype of numpy `dtype`, or None when torch has none (TYPE_STRING's object arrays)."""
    try:
        return torch.from_numpy(np.empty(0, dtype)).dtype
    except (TypeError, ValueError):
        return None
