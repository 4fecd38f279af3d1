"""Triton python-backend model running the dense part (ONNX via onnxruntime, or TorchScript).

Copied into repositories as `<dense>/1/model.py` by `hps.serving.triton.repository`; it runs inside
Triton's python stub. config.pbtxt parameters:
  dense_file  the model file inside the version directory (.onnx or .pt)
  width       floats per sample: Σ maxnum keys per sample × dim (the embedding model's OUTPUT0 per sample)
  threads     intra-op threads (0 = the runtime's default)
  FORCE_CPU_ONLY_INPUT_TENSORS  the python backend's; "no" (the GPU layout) lets inputs arrive in GPU memory

Request: input_1 FP32 [-1] (the embedding model's OUTPUT0), reshaped inside to (samples, width).
Response: output_1 FP32 (samples, 1).

On a KIND_GPU instance (or with FORCE_CPU_ONLY_INPUT_TENSORS "no") the input is taken through DLPack
wherever it is (the GPU embedding model hands OUTPUT0 on in GPU memory) and a TorchScript model runs on
the instance's GPU; an ONNX model runs there only with onnxruntime's CUDAExecutionProvider, else on the
CPU (said once in the log). output_1 ((samples, 1) floats: the ensemble's answer to the client) is
handed back through DLPack in host memory, copied here: a GPU output would cost the python backend one
more exchange between the stub and the server, and then the same copy.
"""

import gc
import json
import os

import triton_python_backend_utils as pb_utils

from hps.serving.triton.dense_runner import DenseRunner
from hps.serving.triton.errors import RequestError
from hps.serving.triton.instance_device import instance_device


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in self.model_config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.name = args["model_name"]
        width = int(params["width"]) if params.get("width") else None
        where = instance_device(args, params)
        self.dlpack, device = where.dlpack, where.torch_device
        if self.dlpack:
            import torch
            import torch.utils.dlpack  # noqa: F401 - a submodule, not imported by `import torch`

            self._torch = torch
        self.runner = DenseRunner(os.path.join(version_dir, params["dense_file"]), width=width,
                                  threads=int(params.get("threads") or 0), device=device)
        self.input_name = self.model_config["input"][0]["name"]
        self.output_name = self.model_config["output"][0]["name"]
        if self.runner.note:
            pb_utils.Logger.log_warn(f"dense model {self.name}: {self.runner.note}")
        pb_utils.Logger.log_info(f"dense model {self.name}: {self.runner.kind} {params['dense_file']}, "
                                 f"{self.runner.width} floats per sample, "
                                 + (f"DLPack tensors, runs on {device if self.runner.on_gpu else 'cpu'}"
                                    if self.dlpack else "numpy tensors"))
        gc.freeze()  # keep the imported modules' objects out of full collections (tens of ms each)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
                if tensor is None:
                    raise ValueError(f"the request needs {self.input_name}")
                if self.dlpack:
                    dlpack = self._torch.utils.dlpack
                    out = self.runner.run_tensor(dlpack.from_dlpack(tensor.to_dlpack())).cpu()  # see docstring
                    output = pb_utils.Tensor.from_dlpack(self.output_name, dlpack.to_dlpack(out.contiguous()))
                else:
                    output = pb_utils.Tensor(self.output_name, self.runner(tensor.as_numpy()))
                responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            except Exception as exc:  # every failure becomes this request's error response
                code = (pb_utils.TritonError.INVALID_ARG if isinstance(exc, (RequestError, ValueError))
                        else pb_utils.TritonError.INTERNAL)  # a client mistake is HTTP 400, not 500
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"dense model {self.name}: {exc}", code)))
        return responses

