"""Triton python-backend model serving one hps embedding model with HugeCTR's HPS-backend I/O.

Copied into repositories as `<model>/1/model.py` by `hps.serving.triton.repository`; it runs
inside Triton's python stub, where `triton_python_backend_utils` exists, so it is never imported
by hps itself. config.pbtxt parameters:
  ps_json            the ps.json, relative to the model directory (holds this model only)
  hps_model_name     the model name inside the ps.json (default: the Triton model name)
  metrics_interval_s how often hps statistics are copied to Triton's metrics endpoint (0 = every request)
  dense_file, width, threads   (fused layout only) a dense model in the version directory, run on the
                     vectors in this same process (see dense_model.py)

Request: KEYS INT64 (any shape; table-major concatenation), NUMKEYS INT32 (one count per table).
Response: OUTPUT0 FP32 (Σ_t NUMKEYS[t] × dim[t],), 1-D whatever the config's max_batch_size (as HugeCTR's backend). The fused layout names them as the seed's ensemble
does (EMB_KEY, EMB_N_KEY → DENSE_OUTPUT FP32 (samples, 1)): the INT64 input is the keys, the INT32 one
the counts, the first output the answer. A bad request gets an error response naming the
problem (INVALID_ARG, HTTP 400, for a client mistake); the model keeps serving.
"""

import gc
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

import hps
from hps.errors import KeyInputError
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
        self.ps = hps.HPS(_config_with_overrides(ps_json, self.hps_model, params), show_progress=False)
        self.spec = EmbeddingSpec.from_model_config(self.ps.config.model(self.hps_model))
        by_type = {i["data_type"]: i["name"] for i in self.model_config["input"]}
        self.keys_name = by_type.get("TYPE_INT64", "KEYS")       # KEYS, or EMB_KEY in the fused layout
        self.numkeys_name = by_type.get("TYPE_INT32", "NUMKEYS")  # NUMKEYS, or EMB_N_KEY
        # OUTPUT0 is 1-D (Σ_t NUMKEYS[t] × dim[t],) whatever max_batch_size says, as HugeCTR's backend
        # answers it; ensembles feed it to dense models declared with dims [-1] and max_batch_size 0
        self.output_name = self.model_config["output"][0]["name"]
        self.dense = None
        if params.get("dense_file"):
            from hps.serving.triton.dense_runner import DenseRunner

            version_dir = os.path.join(model_dir, args["model_version"])
            self.dense = DenseRunner(os.path.join(version_dir, params["dense_file"]),
                                     width=int(params.get("width") or self.spec.sample_width),
                                     threads=int(params.get("threads") or 0))
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
            f"max_batch_size {self.spec.max_batch_size}, hps {hps.__version__}, numpy {np.__version__})"
            + (f", fused with dense model {params['dense_file']}" if self.dense is not None else ""))
        # the stub holds ~100k long-lived objects (numpy, numba, onnxruntime, hps): a full collection of them
        # takes tens of ms (65 ms measured on a 2-core VM), paid by whichever request triggers it
        gc.freeze()

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                keys = pb_utils.get_input_tensor_by_name(request, self.keys_name)
                numkeys = pb_utils.get_input_tensor_by_name(request, self.numkeys_name)
                if keys is None or numkeys is None:
                    raise ValueError(f"the request needs both {self.keys_name} and {self.numkeys_name}")
                keys = keys.as_numpy()
                out = lookup_request(keys, numkeys.as_numpy(), self.spec,
                                     lambda k, t: self.ps.lookup(k, self.hps_model, t))
                if self.dense is not None:
                    out = self.dense(out)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(self.output_name, out)]))
            except Exception as exc:  # every failure becomes this request's error response
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(
                    f"hps model {self.triton_name}: {exc}", exc)))
        if self.metrics is not None:
            try:
                self.metrics.maybe_update()
            except Exception as exc:
                pb_utils.Logger.log_warn(f"hps model {self.triton_name}: metrics update failed: {exc}")
                self.metrics = None
        return responses

    def finalize(self):
        if getattr(self, "metrics", None) is not None:  # its thread reads the HPS: stop it first
            self.metrics.close()
        if getattr(self, "ps", None) is not None:
            self.ps.close()
            self.ps = None


def _error(message, exc):
    """The request's error: INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT) for a client mistake, INTERNAL otherwise."""
    client_mistake = isinstance(exc, (KeyInputError, ValueError))
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG if client_mistake
                                else pb_utils.TritonError.INTERNAL)


#: HugeCTR HPS-backend config.pbtxt parameters that override the ps.json (reference §1.6)
OVERRIDES = {"refresh_interval": float, "refresh_delay": float}


def _config_with_overrides(ps_json, model_name, params):
    """The ps.json path, or its parsed config with `refresh_interval` / `refresh_delay` taken from
    the config.pbtxt parameters (as HugeCTR's backend did); other HugeCTR parameters are ignored."""
    given = {k: conv(params[k]) for k, conv in OVERRIDES.items() if params.get(k, "") != ""}
    if not given:
        return ps_json
    from hps.config import parse_config

    with open(ps_json) as f:
        raw = json.load(f)
    for entry in raw.get("models", []):
        if entry.get("model") == model_name:
            entry.update(given)
    pb_utils.Logger.log_info(f"hps model {model_name}: config.pbtxt overrides {given}")
    return parse_config(raw, base_dir=os.path.dirname(os.path.abspath(ps_json)))
