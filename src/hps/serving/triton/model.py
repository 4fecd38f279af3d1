"""Triton python-backend model serving one hps embedding model with HugeCTR's HPS-backend I/O.

Copied into repositories as `<model>/1/model.py` by `hps.serving.triton.repository`; it runs
inside Triton's python stub, where `triton_python_backend_utils` exists, so it is never imported
by hps itself. config.pbtxt parameters:
  ps_json            the ps.json, relative to the model directory (holds this model only)
  hps_model_name     the model name inside the ps.json (default: the Triton model name)
  metrics_interval_s how often hps statistics are copied to Triton's metrics endpoint (0 = every request)
  dense_file, width, threads   (fused layout only) a dense model in the version directory, run on the
                     vectors in this same process (see dense_model.py)
  FORCE_CPU_ONLY_INPUT_TENSORS  the python backend's; "no" (the GPU layout) lets inputs arrive in GPU memory

Two ways through a request:
- numpy (a KIND_CPU instance whose inputs are forced to the host, the CPU layout): KEYS as numpy, the
  vectors as numpy, OUTPUT0 a host tensor;
- DLPack (a KIND_GPU instance, or FORCE_CPU_ONLY_INPUT_TENSORS "no": the GPU layout): KEYS is taken
  with `to_dlpack()` wherever Triton put it, as a torch tensor; on a GPU instance keys in host memory
  are copied to the instance's GPU once, looked up in its GPU cache (`HPS.lookup` with CUDA keys,
  `HPS.lookup_many` for several tables of a fused model), and OUTPUT0 is handed on with
  `Tensor.from_dlpack` as a GPU tensor: no host round trip. The fused layout runs the dense model on
  the GPU tensor and answers its predictions ((samples, 1) floats, for the client) in host memory:
  a GPU output costs the python backend one more exchange between the stub and the server. Each GPU
  instance's `hps.HPS` serves only its own GPU (deployed_device_list = [the instance's GPU]). On a
  KIND_CPU instance the same path runs on CPU tensors.

Request: KEYS INT64 (any shape; table-major concatenation), NUMKEYS INT32 (one count per table).
Response: OUTPUT0 FP32 (Σ_t NUMKEYS[t] × dim[t],), 1-D whatever the config's max_batch_size (as HugeCTR's backend). The fused layout names them as the seed's ensemble
does (EMB_KEY, EMB_N_KEY → DENSE_OUTPUT FP32 (samples, 1)): the INT64 input is the keys, the INT32 one
the counts, the first output the answer. A bad request gets an error response naming the
problem (INVALID_ARG, HTTP 400, for a client mistake); the model keeps serving.
"""

import gc
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

import hps
from hps.errors import KeyInputError
from hps.serving.triton.errors import RepositoryError
from hps.serving.triton.instance_device import instance_device
from hps.serving.triton.embedding_io import EmbeddingSpec, lookup_request, lookup_request_tensor


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
        self.dlpack, self.device, gpu = _tensor_path(args, params)
        if self.dlpack:
            import torch
            import torch.utils.dlpack  # noqa: F401 - a submodule, not imported by `import torch`

            self._torch = torch
        started = time.monotonic()
        self.ps = hps.HPS(_config_with_overrides(ps_json, self.hps_model, params, gpu), show_progress=False)
        load_s = time.monotonic() - started
        model_config = self.ps.config.model(self.hps_model)
        self.spec = EmbeddingSpec.from_model_config(model_config)
        self.device_id = gpu if gpu is not None else (model_config.deployed_device_list or (0,))[0]
        # several tables of a fused model: one lookup_many pass per fused table instead of one call per table
        fused = self.ps.config.fuse_embedding_table and model_config.fuse_embedding_table
        self.lookup_many = self._lookup_many if self.spec.num_tables > 1 and fused else None
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
                                     threads=int(params.get("threads") or 0),
                                     device=str(self.device) if self.dlpack else "cpu")
            if self.dense.note:
                pb_utils.Logger.log_warn(f"hps model {self.triton_name}: {self.dense.note}")
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
            f"max_batch_size {self.spec.max_batch_size}, hps {hps.__version__}, numpy {np.__version__}), "
            + (f"tensors through DLPack on {self.device}" if self.dlpack else "numpy tensors")
            + f", loaded in {load_s:.1f} s, volatile_db {_tier_name(self.ps.config.volatile_db)}"
            + (f", fused with dense model {params['dense_file']}" if self.dense is not None else ""))
        # the stub holds ~100k long-lived objects (numpy, numba, onnxruntime, hps): a full collection of them
        # takes tens of ms (65 ms measured on a 2-core VM), paid by whichever request triggers it
        gc.freeze()

    def execute(self, requests):
        responses = []
        self._gpu_outputs = False
        for request in requests:
            try:
                keys = pb_utils.get_input_tensor_by_name(request, self.keys_name)
                numkeys = pb_utils.get_input_tensor_by_name(request, self.numkeys_name)
                if keys is None or numkeys is None:
                    raise ValueError(f"the request needs both {self.keys_name} and {self.numkeys_name}")
                if self.dlpack:
                    output = self._execute_dlpack(keys, numkeys)
                else:
                    out = lookup_request(keys.as_numpy(), numkeys.as_numpy(), self.spec,
                                         lambda k, t: self.ps.lookup(k, self.hps_model, t))
                    if self.dense is not None:
                        out = self.dense(out)
                    output = pb_utils.Tensor(self.output_name, out)
                responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            except Exception as exc:  # every failure becomes this request's error response
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(
                    f"hps model {self.triton_name}: {exc}", exc)))
        if self._gpu_outputs:  # GPU answers written on torch's stream: finished before Triton reads them
            self._torch.cuda.current_stream(self.device).synchronize()
        if self.metrics is not None:
            try:
                self.metrics.maybe_update()
            except Exception as exc:
                pb_utils.Logger.log_warn(f"hps model {self.triton_name}: metrics update failed: {exc}")
                self.metrics = None
        return responses

    def _execute_dlpack(self, keys, numkeys):
        """One request on the DLPack path: the output tensor (on `self.device`), no host round trip."""
        from_dlpack, to_dlpack = self._torch.utils.dlpack.from_dlpack, self._torch.utils.dlpack.to_dlpack
        key_tensor = from_dlpack(keys.to_dlpack())
        counts = numkeys.as_numpy() if numkeys.is_cpu() else from_dlpack(numkeys.to_dlpack()).cpu().numpy()
        out = lookup_request_tensor(key_tensor, counts, self.spec, self._lookup, device=self.device,
                                    lookup_many=self.lookup_many)
        if self.dense is not None:
            out = self.dense.run_tensor(out)
            if out.is_cuda:  # the predictions go to the client: 4 bytes a sample, copied here (see docstring)
                out = out.cpu()
        else:
            self._gpu_outputs |= out.is_cuda
        return pb_utils.Tensor.from_dlpack(self.output_name, to_dlpack(out.contiguous()))

    def _lookup(self, keys, table_id, out):
        """(n,) int64 torch keys on `self.device` → (n, dim) float32 on the same device (into `out` if given)."""
        return self.ps.lookup(keys, self.hps_model, table_id, self.device_id, out=out)

    def _lookup_many(self, keys_per_table, table_ids):
        return self.ps.lookup_many(keys_per_table, self.hps_model, table_ids, self.device_id)

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


def _tensor_path(args, params):
    """(dlpack, torch device or None, GPU id or None) of this instance (`instance_device`); a KIND_GPU
    instance needs a CUDA build of torch in the stub's environment."""
    where = instance_device(args, params)
    if not where.dlpack:
        return False, None, None
    import torch

    if where.gpu is None:
        return True, torch.device("cpu"), None
    if not torch.cuda.is_available():
        raise RepositoryError(f"a KIND_GPU instance on GPU {where.gpu}, but torch {torch.__version__} sees no CUDA "
                              f"device (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); install a "
                              "CUDA build of torch in the stub's environment, or build the repository with "
                              "device='cpu'")
    torch.cuda.set_device(where.gpu)
    return True, torch.device("cuda", where.gpu), where.gpu


def _tier_name(volatile):
    if volatile is None:
        return "none"
    name = getattr(volatile, "shared_memory_name", None)
    return f"{volatile.type} {name!r}" if volatile.type == "multi_process_hash_map" else volatile.type


def _config_with_overrides(ps_json, model_name, params, gpu=None):
    """The ps.json path, or its parsed config with `refresh_interval` / `refresh_delay` taken from
    the config.pbtxt parameters (as HugeCTR's backend did), and on a GPU instance deployed_device_list
    = [its GPU] (each instance is its own process: one GPU cache, on the GPU Triton gave it); other
    HugeCTR parameters are ignored."""
    given = {k: conv(params[k]) for k, conv in OVERRIDES.items() if params.get(k, "") != ""}
    if gpu is not None:
        given["deployed_device_list"] = [int(gpu)]
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
