"""Triton python-backend model running the dense part (ONNX via onnxruntime, or TorchScript).

Copied into repositories as `<dense>/1/model.py` by `hps.serving.triton.repository`; it runs inside
Triton's python stub. config.pbtxt parameters:
  dense_file  the model file inside the version directory (.onnx or .pt)
  width       floats per sample: Σ maxnum keys per sample × dim (the embedding model's OUTPUT0 per sample)
  threads     intra-op threads (0 = the runtime's default)

Request: input_1 FP32 [-1] (the embedding model's OUTPUT0), reshaped inside to (samples, width).
Response: output_1 FP32 (samples, 1).
"""

import gc
import json
import os

import triton_python_backend_utils as pb_utils

from hps.serving.triton.dense_runner import DenseRunner
from hps.serving.triton.errors import RequestError


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in self.model_config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.name = args["model_name"]
        width = int(params["width"]) if params.get("width") else None
        self.runner = DenseRunner(os.path.join(version_dir, params["dense_file"]), width=width,
                                  threads=int(params.get("threads") or 0))
        self.input_name = self.model_config["input"][0]["name"]
        self.output_name = self.model_config["output"][0]["name"]
        pb_utils.Logger.log_info(f"dense model {self.name}: {self.runner.kind} {params['dense_file']}, "
                                 f"{self.runner.width} floats per sample")
        gc.freeze()  # keep the imported modules' objects out of full collections (tens of ms each)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
                if tensor is None:
                    raise ValueError(f"the request needs {self.input_name}")
                out = self.runner(tensor.as_numpy())
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, out)]))
            except Exception as exc:  # every failure becomes this request's error response
                code = (pb_utils.TritonError.INVALID_ARG if isinstance(exc, (RequestError, ValueError))
                        else pb_utils.TritonError.INTERNAL)  # a client mistake is HTTP 400, not 500
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"dense model {self.name}: {exc}", code)))
        return responses
