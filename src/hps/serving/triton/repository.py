"""Write Triton model repositories that serve hps (CLI `hps triton build`).

A repository built here holds the seed's three models (reference/hugectr-hps.md §4):

    <out>/<model>/config.pbtxt        python backend, HugeCTR HPS I/O (KEYS, NUMKEYS → OUTPUT0)
    <out>/<model>/<model>.json        the ps.json, this model only, sparse_files relative to it
    <out>/<model>/1/model.py          hps.serving.triton.model (runs hps.HPS)
    <out>/<model>/1/<table dirs>      the sparse model files (hard-linked when possible, else copied)
    <out>/<dense>/config.pbtxt        python backend running ONNX / TorchScript, or a tensorrt_plan config
    <out>/<dense>/1/model.py + model file
    <out>/ensemble_model/config.pbtxt EMB_KEY, EMB_N_KEY → DENSE_OUTPUT; empty 1/

`layout="fused"` writes `ensemble_model` instead as one python model with the same inputs and output
that runs the lookup and the dense model in one stub process (one IPC hop instead of two, and the
vectors are not copied between models; see benchmarks/bench_triton.py); clients cannot tell the difference.

`convert_hugectr_repository` turns an existing repository whose embedding model uses HugeCTR's
`backend: "hps"` into one served by hps (dense models whose backend the server lacks get a python
runner, `backend_model.py`); `add_model_to_repository` writes one more embedding model
(its own ps.json) into a repository a server already serves, to be loaded through the model-control API.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from hps.config import ModelConfig, PsConfig, load_config
from hps.errors import ConfigError, pip_install_hint
from hps.serving.triton import config_text
from hps.serving.triton.backend_runner import DEFAULT_MODEL_FILES, RUNNABLE, backend_of
from hps.serving.triton.dense_runner import DenseRunner, dense_kind
from hps.serving.triton.embedding_io import EmbeddingSpec
from hps.serving.triton.errors import RepositoryError
from hps.serving.triton.gpu_layout import shared_host_tier_json
from hps.serving.triton.install import server_backends

PACKAGE_DIR = Path(__file__).resolve().parent
EMBEDDING_MODEL_SOURCE = PACKAGE_DIR / "model.py"
DENSE_MODEL_SOURCE = PACKAGE_DIR / "dense_model.py"
BACKEND_MODEL_SOURCE = PACKAGE_DIR / "backend_model.py"
VERSION = "1"


def build_repository(ps_json: str | os.PathLike, dense_model: str | os.PathLike, out_dir: str | os.PathLike, *,
                     model_name: str | None = None, ensemble_name: str = "ensemble_model",
                     dense_name: str | None = None, batch_size_hint: int = 1024, copy_sparse: bool = True,
                     instance_count: int = 1, dense_threads: int = 1, metrics_interval_s: float = 1.0,
                     layout: str = "ensemble", overwrite: bool = False, device: str = "cpu",
                     gpus: Sequence[int] | None = None, shared_host_tier: bool | None = None,
                     dense_instance_count: int | None = None) -> Path:
    """Write a model repository serving `ps_json`'s model and `dense_model` as the seed's ensemble.

    ps_json: HugeCTR ps.json; model_name picks its model (needed when it has several);
    dense_model: .onnx or TorchScript .pt (python backend, onnxruntime / torch), or .plan/.trt
    (a `tensorrt_plan` config for a Triton with that backend; fixed to `batch_size_hint` samples);
    dense_name: defaults to "dense_model"; copy_sparse: put the sparse files into the repository
    (False: the json points at the originals); dense_threads: onnxruntime intra-op threads;
    metrics_interval_s: how often the embedding model refreshes its Prometheus metrics;
    layout: "ensemble" (the seed's three models) or "fused" (one python model named `ensemble_name`
    with the ensemble's I/O; ONNX / TorchScript only).
    device: "cpu" (KIND_CPU instances, numpy tensors) or "gpu": the python models get KIND_GPU instances
    (on `gpus`, default the model's deployed_device_list) and FORCE_CPU_ONLY_INPUT_TENSORS "no"; they take
    their inputs through DLPack wherever they are, look keys up in the instance's GPU cache and hand the
    vectors to the dense model (TorchScript on the GPU) as GPU tensors (docs/triton.md, "On a GPU").
    instance_count: instances of the embedding (or fused) model; dense_instance_count: of the python
    dense model (default: instance_count). shared_host_tier: give the instances one host tier
    (`gpu_layout.shared_host_tier_json`: an in-process volatile_db becomes a multi_process_hash_map);
    None: on a GPU with instance_count > 1.
    Returns the repository path. Raises `RepositoryError` / `ConfigError` naming the file.
    """
    out = Path(out_dir)
    config, model = _open_model(ps_json, model_name, instance_count)
    gpus = _check_device(device, gpus, model)
    share = shared_host_tier if shared_host_tier is not None else (device == "gpu" and instance_count > 1)
    dense_instance_count = instance_count if dense_instance_count is None else dense_instance_count
    if dense_instance_count < 1:
        raise RepositoryError(f"dense_instance_count must be at least 1, got {dense_instance_count}")
    dense_path = Path(dense_model)
    if not dense_path.is_file():
        raise RepositoryError(f"{dense_path}: dense model file not found")
    kind = dense_kind(dense_path)
    dense_name = dense_name or "dense_model"
    if layout not in ("ensemble", "fused"):
        raise RepositoryError(f"layout must be 'ensemble' or 'fused', not {layout!r}")
    if layout == "fused":
        if kind == "tensorrt":
            raise RepositoryError(f"{dense_path}: a TensorRT plan cannot be fused; use layout='ensemble'")
        spec = EmbeddingSpec.from_model_config(model)
        DenseRunner(dense_path, width=spec.sample_width)
        _claim_model_dir(out / ensemble_name, overwrite)
        _write_embedding_model(out / ensemble_name, ps_json, config, model, copy_sparse=copy_sparse,
                               instance_count=instance_count, metrics_interval_s=metrics_interval_s,
                               dense=(dense_path, spec.sample_width, dense_threads), device=device, gpus=gpus,
                               shared_host_tier=share)
        return out
    names = [model.name, dense_name, ensemble_name]
    if len(set(names)) != 3:
        raise RepositoryError(f"model names must differ, got embedding {model.name!r}, dense {dense_name!r}, "
                              f"ensemble {ensemble_name!r}")
    for name in names:
        _claim_model_dir(out / name, overwrite)
    spec = EmbeddingSpec.from_model_config(model)
    dense_input, dense_output = config_text.DENSE_INPUT, config_text.DENSE_OUTPUT_NAME
    if kind in ("onnx", "torchscript"):
        DenseRunner(dense_path, width=spec.sample_width)  # fails now, not in the server, on a width mismatch
    _write_embedding_model(out / model.name, ps_json, config, model, copy_sparse=copy_sparse,
                           instance_count=instance_count, metrics_interval_s=metrics_interval_s,
                           device=device, gpus=gpus, shared_host_tier=share)
    dense_dir = out / dense_name
    (dense_dir / VERSION).mkdir(parents=True)
    shutil.copy2(dense_path, dense_dir / VERSION / dense_path.name)
    if kind == "tensorrt":
        dense_output = "fc_3"
        text = config_text.tensorrt_dense_config(dense_name, dense_path.name, spec.sample_width, batch_size_hint)
    else:
        shutil.copy2(DENSE_MODEL_SOURCE, dense_dir / VERSION / "model.py")
        text = config_text.python_dense_config(dense_name, {
            "dense_file": dense_path.name, "width": str(spec.sample_width), "threads": str(int(dense_threads)),
        }, instance_count=dense_instance_count, device=device, gpus=gpus)
    (dense_dir / "config.pbtxt").write_text(text)
    ens_dir = out / ensemble_name
    (ens_dir / VERSION).mkdir(parents=True)
    (ens_dir / "config.pbtxt").write_text(config_text.ensemble_config(
        ensemble_name, model.name, dense_name, dense_input=dense_input, dense_output=dense_output))
    return out


def add_model_to_repository(repo: str | os.PathLike, ps_json: str | os.PathLike, *, model_name: str | None = None,
                            copy_sparse: bool = True, instance_count: int = 1, metrics_interval_s: float = 1.0,
                            overwrite: bool = False, device: str = "cpu", gpus: Sequence[int] | None = None,
                            shared_host_tier: bool | None = None) -> Path:
    """Write one more hps embedding model (HugeCTR I/O, its own ps.json) into `repo`.

    For a model that is not in the running server's ps.json (HugeCTR issue #451): write it here,
    then load it with `TritonServer.load_model(name)` (model-control mode explicit); it runs in its
    own python stub process with its own `hps.HPS`. device, gpus, shared_host_tier: as in
    `build_repository`. Returns the new model directory.
    """
    config, model = _open_model(ps_json, model_name, instance_count)
    gpus = _check_device(device, gpus, model)
    share = shared_host_tier if shared_host_tier is not None else (device == "gpu" and instance_count > 1)
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"{repo}: model repository not found")
    model_dir = repo / model.name
    _claim_model_dir(model_dir, overwrite)
    _write_embedding_model(model_dir, ps_json, config, model, copy_sparse=copy_sparse,
                           instance_count=instance_count, metrics_interval_s=metrics_interval_s,
                           device=device, gpus=gpus, shared_host_tier=share)
    return model_dir


def convert_hugectr_repository(repo_in: str | os.PathLike, repo_out: str | os.PathLike | None,
                               ps_json: str | os.PathLike, *, metrics_interval_s: float = 1.0,
                               backends: Iterable[str] | None = None, device: str = "cpu") -> list[str]:
    """Rewrite a HugeCTR Triton repository to run on hps; returns the names of the rewritten models.

    Every `backend: "hps"` model becomes hps's python model: it is matched to the ps.json model of the
    same name and gets its own `<name>.json`; sparse files keep their paths, or, when those do not exist,
    the copies inside the model directory (the samples copy them into the version directory).
    Every dense model whose backend the target server lacks (`backends`; default: the backends of the
    tritonserver hps runs, only "python" for nvidia-pytriton's) gets a python-backend runner when hps
    has one: a TF SavedModel (tensorflow), TorchScript (pytorch) or ONNX (onnxruntime) model; inputs,
    outputs and max_batch_size stay as written. Any other backend the server lacks (a TensorRT plan
    without TensorRT) is a `RepositoryError` naming the model, the backend and what to do.
    Original configs are kept as `config.pbtxt.hugectr`. ps_json: the file HugeCTR got as
    `--backend-config=hps,ps=...`. device "gpu": the rewritten python models keep the user's KIND_GPU
    instance groups (HugeCTR's samples have them) and take their tensors through DLPack on the GPU
    (`build_repository`'s device="gpu"); "cpu" (the default): KIND_CPU, numpy tensors.

    repo_out: a new (or empty) directory, or None / the same path to rewrite in place. Nothing is
    half-applied: the work happens in a temporary directory beside the target that replaces it by
    rename at the end, and is removed if anything fails.
    """
    src = Path(repo_in)
    if not src.is_dir():
        raise RepositoryError(f"{src}: model repository not found")
    in_place = repo_out is None or Path(repo_out).resolve() == src.resolve()
    dst = src if in_place else Path(repo_out)
    if not in_place and dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise RepositoryError(f"{dst}: output directory exists and is not empty")
    if not in_place and src.resolve() in dst.resolve().parents:
        raise RepositoryError(f"{dst}: the output directory cannot be inside the repository {src}")
    config = load_config(ps_json)
    if device not in config_text.DEVICES:
        raise RepositoryError(f"device must be one of {list(config_text.DEVICES)}, not {device!r}")
    available = set(backends) if backends is not None else server_backends()
    parent = dst.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.hps-convert-", dir=parent))
    try:
        work = staging / "repo"
        # in place, the copy hard-links (every file it changes is replaced, never rewritten); to a new
        # directory it copies, so later edits of either repository stay apart
        shutil.copytree(src, work, copy_function=_link_or_copy if in_place else shutil.copy2, symlinks=True)
        try:
            converted = _convert_tree(work, config, ps_json, metrics_interval_s, available, device)
        except RepositoryError as exc:  # name the user's paths, not the temporary copy's
            raise RepositoryError(str(exc).replace(str(work), str(src))) from None
        if in_place:
            os.rename(src, staging / "original")
            os.rename(work, src)
        else:
            if dst.exists():
                dst.rmdir()
            os.rename(work, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return converted


def _convert_tree(repo: Path, config: PsConfig, ps_json: Any, metrics_interval_s: float,
                  available: set[str], device: str = "cpu") -> list[str]:
    """Rewrite the models of `repo` (a private copy) in place; see `convert_hugectr_repository`."""
    models = []
    for cfg_path in sorted(repo.glob("*/config.pbtxt")):
        text = cfg_path.read_text()
        backend = backend_of(config_text.top_level_field(text, "backend"),
                             config_text.top_level_field(text, "platform"))
        models.append((cfg_path, text, config_text.top_level_field(text, "name") or cfg_path.parent.name, backend))
    if not any(backend == "hps" for *_, backend in models):
        raise RepositoryError(f"{repo}: no model with backend \"hps\" found")
    converted = []
    for cfg_path, text, name, backend in models:
        if backend == "hps":
            _convert_hps_model(cfg_path, text, name, config, ps_json, metrics_interval_s, device)
        elif backend in (None, "python", "ensemble") or backend in available:
            continue
        else:
            _convert_dense_model(cfg_path, text, name, backend, available, device)
        converted.append(name)
    return converted


def _convert_hps_model(cfg_path: Path, text: str, name: str, config: PsConfig, ps_json: Any,
                       metrics_interval_s: float, device: str = "cpu") -> None:
    model_dir = cfg_path.parent
    if name != model_dir.name:
        raise RepositoryError(f"{cfg_path}: name {name!r} differs from its directory {model_dir.name!r}")
    try:
        model = config.model(name)
    except Exception as exc:
        raise RepositoryError(f"{cfg_path}: no model {name!r} in {ps_json}: {exc}") from None
    sparse = [_locate_sparse(p, model_dir) for p in model.sparse_files]
    json_name = f"{name}.json"
    raw = _single_model_json(ps_json, config, model, [_rel_or_abs(p, model_dir) for p in sparse])
    _write_new(model_dir / json_name, json.dumps(raw, indent=2) + "\n")
    for version in _versions(model_dir):
        version.mkdir(exist_ok=True)
        _copy_new(EMBEDDING_MODEL_SOURCE, version / "model.py")
    _copy_new(cfg_path, model_dir / "config.pbtxt.hugectr")
    _write_new(cfg_path, config_text.rewrite_hps_config(text, _embedding_parameters(
        json_name, model.name, metrics_interval_s), device=device))


def _convert_dense_model(cfg_path: Path, text: str, name: str, backend: str, available: set[str],
                         device: str = "cpu") -> None:
    """Give a framework-backend model hps's python runner, or say why it cannot run here."""
    platform = config_text.top_level_field(text, "platform")
    if backend not in RUNNABLE or platform == "tensorflow_graphdef":
        what = f"platform {platform!r}" if platform else f"backend {backend!r}"
        raise RepositoryError(
            f"{cfg_path}: model {name!r} ({what}) needs Triton's {backend!r} backend; the target tritonserver "
            f"has only {sorted(available)} and hps has no python runner for it. Either serve this repository "
            f"with a tritonserver that has the {backend} backend (put it on PATH, and convert with "
            f"--backend {backend} so this model is kept), or replace the model with the ONNX or TorchScript "
            "model it was built from (e.g. `hps triton build --dense model.onnx`)")
    model_dir = cfg_path.parent
    filename = config_text.top_level_string(text, "default_model_filename") or DEFAULT_MODEL_FILES[backend]
    versions = _versions(model_dir, create=False)
    if not versions:
        raise RepositoryError(f"{model_dir}: model {name!r} has no version directory holding its {filename}")
    for version in versions:
        if not (version / filename).exists():
            raise RepositoryError(f"{version / filename}: {backend} model of {name!r} not found")
        if (version / "model.py").exists():
            raise RepositoryError(f"{version / 'model.py'}: exists; hps's python runner for {name!r} "
                                  "would replace it")
    module, extra = RUNNABLE[backend]
    if importlib.util.find_spec(module) is None:
        raise RepositoryError(f"{cfg_path}: model {name!r} is a {backend} model, run by hps in the python "
                              f"backend through {module}, which is not installed: {pip_install_hint(extra)}")
    for version in versions:
        _copy_new(BACKEND_MODEL_SOURCE, version / "model.py")
    _copy_new(cfg_path, model_dir / "config.pbtxt.hugectr")
    _write_new(cfg_path, config_text.rewrite_dense_config(text, {
        "hps_runner_backend": backend, "hps_model_file": filename}, device=device))


def _versions(model_dir: Path, create: bool = True) -> list[Path]:
    """The numbered version directories of a model (`1/` when there is none and `create`)."""
    found = sorted(d for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit())
    return found or ([model_dir / VERSION] if create else [])


def _write_new(path: Path, text: str) -> None:
    """Write `path` as a new file (a hard-linked original is left untouched)."""
    path.unlink(missing_ok=True)
    path.write_text(text)


def _copy_new(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    shutil.copy2(src, dst)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --- internals --------------------------------------------------------------------------------


def _open_model(ps_json: Any, model_name: str | None, instance_count: int) -> tuple[PsConfig, ModelConfig]:
    """The parsed ps.json and the model it serves, checked for `instance_count` model instances."""
    config = load_config(ps_json)
    model = _pick_model(config, model_name, ps_json)
    _check_instances(config, instance_count, ps_json)
    return config, model


def _pick_model(config: PsConfig, model_name: str | None, ps_json: Any) -> ModelConfig:
    if model_name is None:
        if len(config.models) != 1:
            raise ConfigError(f"{ps_json}: has models {[m.name for m in config.models]}; say which one to serve")
        return config.models[0]
    return config.model(model_name)


def _check_instances(config: PsConfig, instance_count: int, ps_json: Any) -> None:
    """Each model instance is its own process with its own HPS; a writable RocksDB opens in one only."""
    if instance_count < 1:
        raise RepositoryError(f"instance_count must be at least 1, got {instance_count}")
    pdb = config.persistent_db
    if instance_count > 1 and pdb is not None and not pdb.read_only:
        raise RepositoryError(
            f"{ps_json}: persistent_db {pdb.path} is opened read-write by each of the {instance_count} model "
            "instances (one process each) and RocksDB allows one writer; use instance_count=1 or set "
            "persistent_db.read_only to true")


def _check_device(device: str, gpus: Sequence[int] | None, model: ModelConfig) -> list[int] | None:
    """The GPUs a `device` "gpu" model's instances go on (`gpus`, else the model's deployed_device_list);
    None for "cpu". `RepositoryError` for another device, or gpus given for the CPU."""
    if device not in config_text.DEVICES:
        raise RepositoryError(f"device must be one of {list(config_text.DEVICES)}, not {device!r}")
    if device == "cpu":
        if gpus:
            raise RepositoryError(f"gpus {list(gpus)} given for device 'cpu'; pass device='gpu'")
        return None
    chosen = [int(g) for g in (gpus if gpus else model.deployed_device_list)]
    if not chosen or min(chosen) < 0 or len(set(chosen)) != len(chosen):
        raise RepositoryError(f"model {model.name!r}: gpus must be distinct GPU ids >= 0, got {chosen}")
    return chosen


def _claim_model_dir(path: Path, overwrite: bool) -> None:
    if path.exists():
        if not overwrite:
            raise RepositoryError(f"{path}: already exists (pass overwrite=True to replace it)")
        shutil.rmtree(path)


def _embedding_parameters(json_name: str, model_name: str, metrics_interval_s: float) -> dict[str, str]:
    return {"ps_json": json_name, "hps_model_name": model_name, "metrics_interval_s": repr(float(metrics_interval_s))}


def _write_embedding_model(model_dir: Path, ps_json: Any, config: PsConfig, model: ModelConfig, *,
                           copy_sparse: bool, instance_count: int, metrics_interval_s: float,
                           dense: tuple[Path, int, int] | None = None, device: str = "cpu",
                           gpus: Sequence[int] | None = None, shared_host_tier: bool = False) -> None:
    """Write config.pbtxt, <name>.json, 1/model.py and (copy_sparse) 1/<table dirs> under `model_dir`
    (named like the directory); with `dense` = (model file, width, threads) the fused layout; `device`
    "gpu": KIND_GPU instances on `gpus`; `shared_host_tier`: one host tier for all instances."""
    version = model_dir / VERSION
    version.mkdir(parents=True)
    try:
        if copy_sparse:
            sparse = []
            used: set[str] = set()
            for t, path in enumerate(model.sparse_files):
                src = Path(path)
                if not src.is_dir():
                    raise RepositoryError(f"{ps_json}: model {model.name!r} table {t}: sparse model directory "
                                          f"{src} not found")
                name = src.name if src.name not in used else f"{t}_{src.name}"
                used.add(name)
                _link_or_copy_tree(src, version / name)
                sparse.append(f"{VERSION}/{name}")
        else:
            sparse = [str(Path(p).resolve()) if "://" not in p else p for p in model.sparse_files]
        json_name = f"{model.name}.json"
        raw = _single_model_json(ps_json, config, model, sparse)
        if shared_host_tier:
            raw, _ = shared_host_tier_json(raw, config, model)
        (model_dir / json_name).write_text(json.dumps(raw, indent=2) + "\n")
        shutil.copy2(EMBEDDING_MODEL_SOURCE, version / "model.py")
        params = _embedding_parameters(json_name, model.name, metrics_interval_s)
        if dense is None:
            text = config_text.embedding_config(model_dir.name, params, instance_count=instance_count,
                                                device=device, gpus=gpus)
        else:
            dense_path, width, threads = dense
            shutil.copy2(dense_path, version / dense_path.name)
            params.update(dense_file=dense_path.name, width=str(width), threads=str(int(threads)))
            text = config_text.fused_config(model_dir.name, params, instance_count=instance_count,
                                            device=device, gpus=gpus)
        (model_dir / "config.pbtxt").write_text(text)
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise


def _single_model_json(ps_json: Any, config: PsConfig, model: ModelConfig, sparse_files: list[str]) -> dict:
    """The user's ps.json (their keys kept), reduced to `model`, with new sparse_files and an absolute
    persistent_db.path (relative paths were meant relative to the original file)."""
    if isinstance(ps_json, (str, os.PathLike)):
        raw = json.loads(Path(ps_json).read_text())
    elif isinstance(ps_json, dict):
        raw = json.loads(json.dumps(ps_json))
    else:
        raw = config.to_dict()
    entry = next((m for m in raw.get("models", []) if isinstance(m, dict) and m.get("model") == model.name), None)
    if entry is None:
        entry = next(m for m in config.to_dict()["models"] if m["model"] == model.name)
    entry = dict(entry)
    entry.pop("sparse_model_files", None)
    entry["sparse_files"] = list(sparse_files)
    raw["models"] = [entry]
    if isinstance(raw.get("persistent_db"), dict) and config.persistent_db is not None:
        raw["persistent_db"] = {**raw["persistent_db"], "path": config.persistent_db.path}
    return raw


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    """Copy a sparse model directory, hard-linking files when src and dst share a file system.

    The sparse model writer replaces directories by rename, never rewrites a file in place, so
    a hard link keeps the bytes the repository was built with."""
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


def _locate_sparse(path: str, model_dir: Path) -> str:
    """`path` if it exists; else the same-named directory inside `model_dir` or one of its versions."""
    if "://" in path or Path(path).is_dir():
        return path
    base = Path(path).name
    candidates = [model_dir / base] + sorted(d / base for d in model_dir.iterdir() if d.is_dir())
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate)
    raise RepositoryError(f"sparse model {path} not found, nor {base} inside {model_dir}")


def _rel_or_abs(path: str, model_dir: Path) -> str:
    if "://" in path:
        return path
    p = Path(path).resolve()
    try:
        return str(p.relative_to(model_dir.resolve()))
    except ValueError:
        return str(p)

