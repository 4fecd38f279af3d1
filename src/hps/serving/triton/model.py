"""Triton python-backend model serving one hps embedding model with HugeCTR's HPS-backend I/O.

Copied into repositories as `<model>/1/model.py` by `hps.serving.triton.repository`; it runs
inside Triton's python stub, where `triton_python_backend_utils` exists, so it is never imported
by hps itself. config.pbtxt parameters:
  ps_json            the ps.json, relative to the model directory (holds this model only)
  hps_model_name     the model name inside the ps.json (default: the Triton model name)
  metrics_interval_s how often hps statistics are copied to Triton's metrics endpoint (0 = every request)

Request: KEYS INT64 (any shape; table-major concatenation), NUMKEYS INT32 (one count per table).
Response: OUTPUT0 FP32 (Σ_t NUMKEYS[t] × dim[t],). A bad request gets an error response naming
the problem; the model keeps serving.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

import hps
from hps.serving.triton.embedding_io import EmbeddingSpec, lookup_request


class TritonPythonModel:
    """One `hps.HPS` per model instance (each instance is its own stub process)."""

    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in self.model_config.get("parameters", {}).items()}
        model_dir = args["model_repository"]
        self.triton_name = args["model_name"]
        ps_json = params.get("ps_json") or f"{self.triton_name}.json"
        if not os.path.isabs(ps_json):
            ps_json = os.path.join(model_dir, ps_json)
        self.hps_model = params.get("hps_model_name") or self.triton_name
        self.ps = hps.HPS(ps_json)
        self.spec = EmbeddingSpec.from_model_config(self.ps.config.model(self.hps_model))
        self.metrics = None
        try:
            from hps.serving.triton.metrics import TritonMetricsExporter

            self.metrics = TritonMetricsExporter(pb_utils, self.ps, self.triton_name,
                                                 float(params.get("metrics_interval_s") or 1.0))
        except Exception as exc:  # metrics are optional: never fail the model for them
            pb_utils.Logger.log_warn(f"hps model {self.triton_name}: custom metrics disabled: {exc}")
        pb_utils.Logger.log_info(
            f"hps model {self.triton_name}: serving {self.hps_model!r} from {ps_json} "
            f"({self.spec.num_tables} table(s), dims {list(self.spec.dims)}, "
            f"max_batch_size {self.spec.max_batch_size}, hps {hps.__version__}, numpy {np.__version__})")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                keys = pb_utils.get_input_tensor_by_name(request, "KEYS")
                numkeys = pb_utils.get_input_tensor_by_name(request, "NUMKEYS")
                if keys is None or numkeys is None:
                    raise ValueError("the request needs both KEYS and NUMKEYS")
                out = lookup_request(keys.as_numpy(), numkeys.as_numpy(), self.spec,
                                     lambda k, t: self.ps.lookup(k, self.hps_model, t))
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", out)]))
            except Exception as exc:  # every failure becomes this request's error response
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"hps model {self.triton_name}: {exc}")))
        if self.metrics is not None:
            try:
                self.metrics.maybe_update()
            except Exception as exc:
                pb_utils.Logger.log_warn(f"hps model {self.triton_name}: metrics update failed: {exc}")
                self.metrics = None
        return responses

    def finalize(self):
        if getattr(self, "ps", None) is not None:
            self.ps.close()
            self.ps = None
