"""config.pbtxt text for the models of an hps repository (protobuf text format, written by hand).

The embedding model keeps exactly the HugeCTR HPS backend's I/O (KEYS INT64 [-1,-1], NUMKEYS
INT32 [-1,-1] → OUTPUT0 FP32 [-1]); the ensemble is the seed's `ensemble_model`
(EMB_KEY, EMB_N_KEY → DENSE_OUTPUT).
"""

from __future__ import annotations

import json
import re
from typing import Mapping, Sequence

from hps.serving.triton.errors import RepositoryError
from hps.serving.triton.instance_device import FORCE_CPU_ONLY_INPUT_TENSORS

EMBEDDING_INPUTS = (("KEYS", "TYPE_INT64"), ("NUMKEYS", "TYPE_INT32"))
EMBEDDING_OUTPUT = "OUTPUT0"
ENSEMBLE_INPUTS = (("EMB_KEY", "TYPE_INT64"), ("EMB_N_KEY", "TYPE_INT32"))
ENSEMBLE_OUTPUT = "DENSE_OUTPUT"
LOOKUP_VECTORS = "LOOKUP_VECTORS"
DENSE_INPUT = "input_1"
DENSE_OUTPUT_NAME = "output_1"


def quote(text: str) -> str:
    """A protobuf text-format string literal."""
    return json.dumps(str(text))


#: Devices a python-backend model of an hps repository can run on (`instance_group` kind).
DEVICES = ("cpu", "gpu")


def instance_group(instance_count: int, device: str = "cpu", gpus: Sequence[int] | None = None) -> str:
    """The `instance_group` line: `instance_count` instances of kind KIND_CPU, or KIND_GPU (on each GPU of
    `gpus`, every visible GPU when None; each instance is its own python stub process)."""
    if device not in DEVICES:
        raise RepositoryError(f"device must be one of {DEVICES}, not {device!r}")
    if device == "cpu":
        return f"instance_group [ {{ count: {int(instance_count)} kind: KIND_CPU }} ]\n"
    where = f" gpus: [ {', '.join(str(int(g)) for g in gpus)} ]" if gpus else ""
    return f"instance_group [ {{ count: {int(instance_count)} kind: KIND_GPU{where} }} ]\n"


def device_parameters(device: str) -> dict[str, str]:
    """Parameters a python model needs on `device`: on a GPU, inputs may arrive in GPU memory
    (FORCE_CPU_ONLY_INPUT_TENSORS "no"), so the models take them through DLPack."""
    return {FORCE_CPU_ONLY_INPUT_TENSORS: "no"} if device == "gpu" else {}


def parameters_block(parameters: Mapping[str, str]) -> str:
    """`parameters { key: ... value: { string_value: ... } }` lines, one per entry."""
    return "".join(f"parameters {{ key: {quote(k)} value: {{ string_value: {quote(v)} }} }}\n"
                   for k, v in parameters.items())


def embedding_config(name: str, parameters: Mapping[str, str], *, instance_count: int = 1, device: str = "cpu",
                     gpus: Sequence[int] | None = None) -> str:
    """config.pbtxt of a python-backend hps embedding model (max_batch_size 0, HugeCTR I/O); `device`
    "gpu": KIND_GPU instances whose inputs may arrive in GPU memory (`device_parameters`)."""
    return (
        f"name: {quote(name)}\n"
        'backend: "python"\n'
        "max_batch_size: 0\n"
        "input [\n"
        '  { name: "KEYS" data_type: TYPE_INT64 dims: [ -1, -1 ] },\n'
        '  { name: "NUMKEYS" data_type: TYPE_INT32 dims: [ -1, -1 ] }\n'
        "]\n"
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        "version_policy: { specific: { versions: [ 1 ] } }\n"
        + instance_group(instance_count, device, gpus)
        + parameters_block({**parameters, **device_parameters(device)})
    )


#: The seed's ensemble I/O (reference §4): EMB_KEY, EMB_N_KEY → DENSE_OUTPUT.
ENSEMBLE_IO = (
    "input [\n"
    '  { name: "EMB_KEY" data_type: TYPE_INT64 dims: [ -1, -1 ] },\n'
    '  { name: "EMB_N_KEY" data_type: TYPE_INT32 dims: [ -1, -1 ] }\n'
    "]\n"
    'output [ { name: "DENSE_OUTPUT" data_type: TYPE_FP32 dims: [ -1, 1 ] } ]\n'
)


def fused_config(name: str, parameters: Mapping[str, str], *, instance_count: int = 1, device: str = "cpu",
                 gpus: Sequence[int] | None = None) -> str:
    """config.pbtxt of the fused python model: the ensemble's I/O (EMB_KEY, EMB_N_KEY → DENSE_OUTPUT),
    lookup and dense model in one stub process (one IPC hop instead of two, no intermediate copy)."""
    return (
        f"name: {quote(name)}\n"
        'backend: "python"\n'
        "max_batch_size: 0\n"
        + ENSEMBLE_IO
        + "version_policy: { specific: { versions: [ 1 ] } }\n"
        + instance_group(instance_count, device, gpus)
        + parameters_block({**parameters, **device_parameters(device)})
    )


def python_dense_config(name: str, parameters: Mapping[str, str], *, instance_count: int = 1, device: str = "cpu",
                        gpus: Sequence[int] | None = None) -> str:
    """config.pbtxt of the python-backend dense model: input_1 FP32 [-1] → output_1 FP32 [-1, 1]."""
    return (
        f"name: {quote(name)}\n"
        'backend: "python"\n'
        "max_batch_size: 0\n"
        f'input [ {{ name: "{DENSE_INPUT}" data_type: TYPE_FP32 dims: [ -1 ] }} ]\n'
        f'output [ {{ name: "{DENSE_OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ -1, 1 ] }} ]\n'
        "version_policy: { specific: { versions: [ 1 ] } }\n"
        + instance_group(instance_count, device, gpus)
        + parameters_block({**parameters, **device_parameters(device)})
    )


def tensorrt_dense_config(name: str, filename: str, width: int, batch: int, *, input_name: str = DENSE_INPUT,
                          output_name: str = "fc_3") -> str:
    """config.pbtxt of a TensorRT plan, as in the seed's notebook 03: input FP32 [batch × width]
    reshaped to [batch, width], output FP32 [-1, 1]; needs a Triton with the tensorrt backend and a GPU."""
    return (
        f"name: {quote(name)}\n"
        'platform: "tensorrt_plan"\n'
        f"default_model_filename: {quote(filename)}\n"
        "max_batch_size: 0\n"
        f"input [ {{ name: {quote(input_name)} data_type: TYPE_FP32 dims: [ {batch * width} ] "
        f"reshape: {{ shape: [ {batch}, {width} ] }} }} ]\n"
        f"output [ {{ name: {quote(output_name)} data_type: TYPE_FP32 dims: [ -1, 1 ] }} ]\n"
        "version_policy: { specific: { versions: [ 1 ] } }\n"
        "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]\n"
    )


def ensemble_config(name: str, embedding_name: str, dense_name: str, *, dense_input: str = DENSE_INPUT,
                    dense_output: str = DENSE_OUTPUT_NAME) -> str:
    """config.pbtxt of the seed's ensemble: EMB_KEY, EMB_N_KEY → embedding → dense → DENSE_OUTPUT."""
    return (
        f"name: {quote(name)}\n"
        'platform: "ensemble"\n'
        "max_batch_size: 0\n"
        + ENSEMBLE_IO
        + "ensemble_scheduling {\n"
        "  step [\n"
        f"    {{ model_name: {quote(embedding_name)} model_version: -1\n"
        '      input_map { key: "KEYS" value: "EMB_KEY" }\n'
        '      input_map { key: "NUMKEYS" value: "EMB_N_KEY" }\n'
        f'      output_map {{ key: "OUTPUT0" value: "{LOOKUP_VECTORS}" }} }},\n'
        f"    {{ model_name: {quote(dense_name)} model_version: -1\n"
        f'      input_map {{ key: {quote(dense_input)} value: "{LOOKUP_VECTORS}" }}\n'
        f'      output_map {{ key: {quote(dense_output)} value: "DENSE_OUTPUT" }} }}\n'
        "  ]\n"
        "}\n"
    )


# --- reading / rewriting existing (HugeCTR-style) config.pbtxt files ---------------------------

_BACKEND_RE = re.compile(r'^\s*backend\s*:\s*"([^"]*)"', re.MULTILINE)
_PLATFORM_RE = re.compile(r'^\s*platform\s*:\s*"([^"]*)"', re.MULTILINE)
_NAME_RE = re.compile(r'^\s*name\s*:\s*"([^"]*)"', re.MULTILINE)


def top_level_field(text: str, field: str) -> str | None:
    """The value of a top-level string field (`backend`, `platform`, `name`) of a config.pbtxt."""
    pattern = {"backend": _BACKEND_RE, "platform": _PLATFORM_RE, "name": _NAME_RE}[field]
    body = _strip_comments(text)
    depth_free = _top_level_text(body)
    match = pattern.search(depth_free)
    return match.group(1) if match else None


def rewrite_hps_config(text: str, parameters: Mapping[str, str], *, device: str = "cpu") -> str:
    """A HugeCTR `backend: "hps"` config.pbtxt rewritten for hps: backend "python", KIND_CPU instances
    (the python model picks its devices from the ps.json), `parameters` added or replaced. Inputs,
    outputs (their dims included), max_batch_size and other parameters stay as the user wrote them.
    device "gpu": the user's KIND_GPU instance_group is kept (else one KIND_GPU instance) and inputs may
    arrive in GPU memory (`device_parameters`)."""
    body = _strip_comments(text)
    body = _BACKEND_RE.sub('backend: "python"', body, count=1)
    return _with_instances(body, parameters, device)


def _with_instances(body: str, parameters: Mapping[str, str], device: str) -> str:
    """`body` (comments stripped) with its instance_group for `device` and `parameters` (plus the device's)
    added or replaced, at the end."""
    group = instance_group(1, device)
    if device == "gpu":
        kept = _block_text(body, "instance_group")
        if kept is not None and "KIND_GPU" in kept:
            group = kept.strip() + "\n"
    body = _remove_block(body, "instance_group")
    parameters = {**parameters, **device_parameters(device)}
    for key in parameters:
        body = _remove_parameter(body, key)
    return body.rstrip() + "\n" + group + parameters_block(parameters)


def rewrite_dense_config(text: str, parameters: Mapping[str, str], *, device: str = "cpu") -> str:
    """A framework-backend config.pbtxt (tensorflow / pytorch / onnxruntime) rewritten for hps's python
    runner: backend "python" instead of `platform` / `backend`, no `default_model_filename` (the python
    backend would take it for its model.py; the runner gets the file through `parameters`), KIND_CPU
    instances (device "gpu": as in `rewrite_hps_config`). Name, inputs, outputs (dims included),
    max_batch_size and the rest stay as written."""
    body = _strip_comments(text)
    for field in ("platform", "backend", "default_model_filename"):
        body = _remove_scalar(body, field)
    return 'backend: "python"\n' + _with_instances(body.strip() + "\n", parameters, device)


def top_level_string(text: str, field: str) -> str | None:
    """The value of any top-level string field of a config.pbtxt (`default_model_filename`, ...)."""
    match = re.search(rf'(^|\s){field}\s*:\s*"([^"]*)"', _top_level_text(_strip_comments(text)))
    return match.group(2) if match else None


def _remove_scalar(text: str, field: str) -> str:
    """Remove every top-level `field: "value"` / `field: value`."""
    while True:
        match = re.search(rf'(^|\s)({field}\s*:\s*("[^"]*"|[^\s,\]}}]+)\s*,?)', _top_level_text(text))
        if not match:
            return text
        text = text[:match.start(2)] + text[match.end(2):]


def _strip_comments(text: str) -> str:
    out = []
    for line in text.splitlines():
        in_str = False
        for i, ch in enumerate(line):
            if ch == '"' and (i == 0 or line[i - 1] != "\\"):
                in_str = not in_str
            elif ch == "#" and not in_str:
                line = line[:i]
                break
        out.append(line)
    return "\n".join(out) + "\n"


def _top_level_text(text: str) -> str:
    """`text` with everything inside brackets or braces blanked out (keeps top-level fields only)."""
    out, depth, in_str = [], 0, False
    for i, ch in enumerate(text):
        if ch == '"' and (i == 0 or text[i - 1] != "\\"):
            in_str = not in_str
        if not in_str and ch in "]}":
            depth -= 1
        keep = depth == 0 or ch == "\n"
        if not in_str and ch in "[{":
            depth += 1
        out.append(ch if keep else " ")
    return "".join(out)


def _block_span(text: str, start: int) -> int:
    """Index just past the bracketed value that starts at or after `start`."""
    depth, in_str, i = 0, False, start
    while i < len(text):
        ch = text[i]
        if ch == '"' and text[i - 1] != "\\":
            in_str = not in_str
        elif not in_str and ch in "[{":
            depth += 1
        elif not in_str and ch in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def _block_text(text: str, field: str) -> str | None:
    """The first top-level `field [ ... ]` / `field { ... }` of `text`, as written; None if there is none."""
    match = re.search(rf"(^|\s){field}\s*:?\s*[\[{{]", _top_level_text(text))
    if not match:
        return None
    start = match.start() + len(match.group(1))
    return text[start:_block_span(text, match.end() - 1)]


def _remove_block(text: str, field: str) -> str:
    """Remove every top-level `field [ ... ]` / `field { ... }` / `field: [...]`."""
    while True:
        top = _top_level_text(text)
        match = re.search(rf"(^|\s){field}\s*:?\s*[\[{{]", top)
        if not match:
            return text
        start = match.start() + len(match.group(1))
        end = _block_span(text, match.end() - 1)
        text = text[:start] + text[end:]


def _remove_parameter(text: str, key: str) -> str:
    """Remove top-level `parameters { key: "<key>" ... }` entries (one per block form)."""
    top = _top_level_text(text)
    spans = []
    for match in re.finditer(r"(^|\s)parameters\s*:?\s*\{", top):
        start = match.start() + len(match.group(1))
        end = _block_span(text, match.end() - 1)
        if re.search(rf'key\s*:\s*"{re.escape(key)}"', text[start:end]):
            spans.append((start, end))
    for start, end in reversed(spans):
        text = text[:start] + text[end:]
    return text
