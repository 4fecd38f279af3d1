"""The `hps` command: inspect, lookup, convert, demo, publish, triton build / convert / add-model / serve.

`inspect` and `lookup` live in their own modules (`hps.cli.inspect`, `hps.cli.lookup`).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any, Sequence

from hps.cli import inspect as inspect_command
from hps.cli import lookup as lookup_command
from hps.cli import serve_metrics as serve_metrics_command
from hps.cli.flag_words import flag_words
from hps.errors import HpsError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hps` console script; returns the exit status (2 on an `HpsError`)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args) or 0
    except HpsError as exc:
        print(f"hps: error: {flag_words(str(exc), getattr(args, 'flags', {}))}", file=sys.stderr)
        return 2


def _add(sub: Any, name: str, help: str, example: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose --help shows `help` and, after the arguments, `example` (one or more lines)."""
    return sub.add_parser(name, help=help, description=kwargs.pop("description", help[:1].upper() + help[1:] + "."),
                          epilog="example" + ("s" if "\n" in example else "") + ":\n  " + example.replace("\n", "\n  "),
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hps", description="Hierarchical parameter server (HugeCTR HPS compatible).",
                                     epilog="run `hps COMMAND --help` for a command's arguments and an example")
    parser.add_argument("--version", action="version", version=_version_line(),
                        help="print hps's version (package hierarchical-parameter-server) and exit")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log INFO lines on stderr (each loading phase and its time), e.g. hps -v lookup ...")
    sub = parser.add_subparsers(metavar="COMMAND")

    inspect_command.register(sub)
    lookup_command.register(sub)
    serve_metrics_command.register(sub)

    p = _add(sub, "convert", ".npy table or torch checkpoint → HugeCTR sparse model directory",
             "hps convert table.npy sparse/t0 --keys ids.npy\nhps convert model.pt s3://bucket/t0 --param emb.weight "
             "--overwrite")
    p.add_argument("input", help=".npy (rows, dim) table, or .pt/.pth state_dict / module (a path, or a URL: "
                                 "s3://bucket/emb.npy, gs://, hdfs://, https://)")
    p.add_argument("output", help="sparse model directory to write (a path, or a URL such as s3://bucket/t0)")
    p.add_argument("--param", help="state_dict entry holding the table, when there are several 2-D tensors")
    p.add_argument("--keys", help=".npy of (rows,) keys; default 0..rows-1")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (default: refused)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also read checkpoints that pickle Python objects (a whole nn.Module): this runs code "
                        "from the file, only for files you trust (default: refused)")
    p.set_defaults(run=_convert, flags={"overwrite": "--overwrite", "allow_pickle": "--allow-pickle",
                                        "param_name": "--param", "keys_path": "--keys"})

    p = _add(sub, "demo", "train a small model, split it, serve it through hps (and Triton), compare; "
                          "keeps ps.json, the sparse and dense models and a Triton repository in ./hps-demo",
             "hps demo --out hps-demo --no-triton")
    p.add_argument("--out", default="hps-demo",
                   help="folder for the artefacts, kept (default ./hps-demo); created, or empty, or an earlier "
                        "demo's folder (its files are replaced)")
    p.add_argument("--batch-size", type=int, default=8192,
                   help="training samples per step, 10 steps (default 8192; HugeCTR's tutorial used 65536)")
    p.add_argument("--no-triton", action="store_true",
                   help="do not start Triton Inference Server (the repository is written anyway; skipped "
                        "anyway without the triton extra)")
    p.set_defaults(run=_demo)

    p = _add(sub, "publish", "publish a sparse model or .npy files as HCTR Kafka updates",
             "hps publish --brokers localhost:9092 --model m --table sparse_embedding0 --sparse-model t0 --config "
             "ps.json\nhps publish --brokers localhost:9092 --model m --table t0 --keys k.npy --vectors v.npy")
    p.add_argument("--brokers", required=True, help="Kafka bootstrap servers, host:port[,host:port...]")
    p.add_argument("--model", required=True, help="model name (the topic is hps_et.<model>.<table>)")
    p.add_argument("--table", required=True, help="table name (the topic is hps_et.<model>.<table>)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sparse-model", help="sparse model directory (needs --dim or --config)")
    src.add_argument("--keys", help=".npy of keys (needs --vectors)")
    p.add_argument("--vectors", help=".npy of (n, dim) vectors")
    p.add_argument("--dim", type=int, help="vector width of --sparse-model (or give --config)")
    p.add_argument("--config", help="the servers' ps.json: refuse a table that is not in it or another dim")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the broker (default 5)")
    p.set_defaults(run=_publish, flags={"connect_timeout_s": "--timeout", "ps_config": "--config"})

    triton = _add(sub, "triton", "Triton Inference Server: build a model repository, serve it",
                  "hps triton build --config ps.json --dense dense.onnx --out repo && hps triton serve repo")
    tsub = triton.add_subparsers(metavar="ACTION")
    p = _add(tsub, "build", "write a Triton model repository: hps_embedding → dense model ensemble",
             "hps triton build --config hps-demo/ps.json --dense hps-demo/dense.onnx --out repo --overwrite")
    p.add_argument("--config", required=True, help="ps.json")
    p.add_argument("--dense", required=True, help="dense model: .onnx, TorchScript .pt or TensorRT .plan")
    p.add_argument("--out", required=True, help="model repository folder")
    p.add_argument("--model", help="the ps.json model to serve (when it has several)")
    p.add_argument("--layout", choices=("ensemble", "fused"), default="ensemble",
                   help="ensemble: three models, hps_embedding → dense_model → ensemble_model (HugeCTR's "
                        "tutorial); fused: one python model with the same I/O (faster)")
    p.add_argument("--instances", type=int, default=1, help="model instances (processes) per model")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: KIND_CPU instances, numpy tensors; gpu: KIND_GPU instances, tensors through DLPack "
                        "on the GPU (GPU cache lookup, TorchScript dense model on the GPU; docs/triton.md)")
    p.add_argument("--gpus", type=int, nargs="+", metavar="ID",
                   help="with --device gpu: the GPUs the instances go on (default: the model's deployed_device_list)")
    p.add_argument("--dense-instances", type=int, help="instances of the dense model (default: --instances)")
    p.add_argument("--shared-host-tier", action=argparse.BooleanOptionalAction, default=None,
                   help="one host tier for all instances: an in-process volatile_db becomes a multi_process_hash_map "
                        "(default: with --device gpu and --instances above 1)")
    p.add_argument("--no-copy-sparse", action="store_true", help="point at the sparse files instead of copying")
    p.add_argument("--overwrite", action="store_true", help="replace existing model folders (default: refused)")
    p.set_defaults(run=_triton_build, flags={"overwrite": "--overwrite", "instance_count": "--instances",
                                             "layout": "--layout", "model_name": "--model", "device": "--device",
                                             "gpus": "--gpus", "dense_instance_count": "--dense-instances",
                                             "shared_host_tier": "--shared-host-tier"})
    p = _add(tsub, "convert", "rewrite a HugeCTR repository (backend 'hps') to run on hps",
             "hps triton convert hugectr_repo --config hugectr_repo/ps.json --out hps_repo")
    p.add_argument("repo_in", help="the HugeCTR model repository (with models of backend 'hps')")
    p.add_argument("--out", help="new repository folder (default: rewrite in place)")
    p.add_argument("--config", required=True, help="the ps.json the HugeCTR backend was started with")
    p.add_argument("--backend", action="append", dest="backends", metavar="NAME",
                   help="a backend the target tritonserver has (repeatable; default: those of the tritonserver "
                        "hps runs, only python for nvidia-pytriton's); dense models of other backends get a "
                        "python runner (tensorflow, pytorch, onnxruntime) or fail with what to do")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: KIND_CPU instances, numpy tensors; gpu: the models keep their KIND_GPU instance "
                        "groups and take tensors through DLPack on the GPU")
    p.set_defaults(run=_triton_convert, flags={"device": "--device"})
    p = _add(tsub, "add-model", "add an hps_embedding model for another ps.json to a repository",
             "hps triton add-model repo --config other/ps.json --model other")
    p.add_argument("repo", help="the model repository to add to")
    p.add_argument("--config", required=True, help="ps.json of the new model")
    p.add_argument("--model", help="the ps.json model to add (when it has several)")
    p.add_argument("--instances", type=int, default=1, help="model instances (processes)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="as for `hps triton build`")
    p.add_argument("--gpus", type=int, nargs="+", metavar="ID", help="as for `hps triton build`")
    p.add_argument("--shared-host-tier", action=argparse.BooleanOptionalAction, default=None,
                   help="as for `hps triton build`")
    p.set_defaults(run=_triton_add_model, flags={"model_name": "--model", "instance_count": "--instances",
                                                 "device": "--device", "gpus": "--gpus",
                                                 "shared_host_tier": "--shared-host-tier"})
    p = _add(tsub, "serve", "start tritonserver on a model repository (stops on Ctrl-C / SIGTERM)",
             "hps triton serve repo --http-port 8000")
    p.add_argument("repo", help="the model repository folder (hps triton build --out)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus /metrics port (default 8002)")
    p.add_argument("--address", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--allow-model-control", action="store_true",
                   help="let clients load / unload models through Triton's repository API (hot-add; a load "
                        "request can carry model code, which runs): binds loopback only")
    p.add_argument("--load-model", action="append",
                   help="with --allow-model-control: model to load at start (repeatable; default: all)")
    p.add_argument("--max-input-bytes", type=int, default=64 * 1024 * 1024,
                   help="largest input a request may declare (default 64 MiB); larger requests get HTTP 400")
    p.add_argument("--cuda-memory-pool", action="append", metavar="GPU:BYTES", default=[],
                   help="Triton's CUDA memory pool on a GPU (repeatable; Triton's default 64 MiB): GPU tensors "
                        "between the models of a --device gpu repository go through it (size it for the vectors of "
                        "the largest requests in flight)")
    p.set_defaults(run=_triton_serve, flags={"http_port": "--http-port", "grpc_port": "--grpc-port",
                                             "metrics_port": "--metrics-port", "max_input_bytes": "--max-input-bytes",
                                             "load_models": "--load-model"})
    return parser


def _version_line() -> str:
    """`hps 0.1.0 (hierarchical-parameter-server, Python 3.11.2)`."""
    import platform

    from hps import __version__
    from hps.errors import DISTRIBUTION

    return f"hps {__version__} ({DISTRIBUTION}, Python {platform.python_version()})"


def _convert(args: argparse.Namespace) -> int:
    from hps.model_format import convert_file

    model = convert_file(args.input, args.output, param_name=args.param, keys_path=args.keys,
                         overwrite=args.overwrite, allow_pickle=args.allow_pickle)
    print(f"wrote {model.where}: {model.num_rows:,} rows of dim {model.dim}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hps.demo import run_demo
    from hps.errors import pip_install_hint

    with_triton = not args.no_triton
    if with_triton and importlib.util.find_spec("tritonclient") is None:
        print("hps demo: Triton Inference Server is not started: tritonclient is not installed "
              f"({pip_install_hint('triton')})")
        with_triton = False
    max_diff = run_demo(args.out, global_batch_size=args.batch_size, with_triton=with_triton)
    return 0 if max_diff < 1e-4 else 1


def _publish(args: argparse.Namespace) -> int:
    from hps.update.publisher import publish_npy, publish_sparse_model

    common = {"ps_config": args.config, "connect_timeout_s": args.timeout}
    if args.sparse_model:
        if args.dim is None and args.config is None:
            raise HpsError("hps publish: --sparse-model needs --dim (or --config with the table)")
        count = publish_sparse_model(args.brokers, args.model, args.table, args.sparse_model, args.dim, **common)
    else:
        if not args.vectors:
            raise HpsError("hps publish: --keys needs --vectors")
        count = publish_npy(args.brokers, args.model, args.table, args.keys, args.vectors, **common)
    print(f"published {count:,} rows to hps_et.{args.model}.{args.table}")
    return 0


def _triton_build(args: argparse.Namespace) -> int:
    from hps.serving.triton import build_repository

    repo = build_repository(args.config, args.dense, args.out, model_name=args.model, layout=args.layout,
                            instance_count=args.instances, copy_sparse=not args.no_copy_sparse,
                            overwrite=args.overwrite, device=args.device, gpus=args.gpus,
                            dense_instance_count=args.dense_instances, shared_host_tier=args.shared_host_tier)
    print(f"wrote Triton model repository {repo}")
    if args.device == "gpu":
        from hps.config import load_config
        from hps.serving.triton.gpu_layout import describe_instance_memory

        config = load_config(args.config)
        name = args.model or config.models[0].name
        print(describe_instance_memory(config, name, args.instances, shared=args.shared_host_tier))
    return 0


def _triton_convert(args: argparse.Namespace) -> int:
    from hps.serving.triton import convert_hugectr_repository

    backends = None if args.backends is None else {"python", *args.backends}
    converted = convert_hugectr_repository(args.repo_in, args.out, args.config, backends=backends,
                                           device=args.device)
    print(f"rewrote {', '.join(converted) or 'no model'} to run on hps")
    return 0


def _triton_add_model(args: argparse.Namespace) -> int:
    from hps.serving.triton import add_model_to_repository

    path = add_model_to_repository(args.repo, args.config, model_name=args.model, instance_count=args.instances,
                                   device=args.device, gpus=args.gpus, shared_host_tier=args.shared_host_tier)
    print(f"added {path}; load it through the repository API of a server started with "
          "`hps triton serve --allow-model-control`, or restart the server (it loads every model at start)")
    return 0


def _triton_serve(args: argparse.Namespace) -> int:
    from hps.serving.triton import serve_forever

    if args.load_model and not args.allow_model_control:
        raise HpsError("hps triton serve: --load-model needs --allow-model-control (without it every model loads)")
    pools = []
    for pool in args.cuda_memory_pool:
        gpu, _, size = pool.partition(":")
        if not (gpu.strip().isdigit() and size.strip().isdigit()):
            raise HpsError(f"hps triton serve: --cuda-memory-pool {pool!r} must be GPU:BYTES, e.g. 0:2147483648")
        pools.append(f"--cuda-memory-pool-byte-size={int(gpu)}:{int(size)}")
    return serve_forever(args.repo, http_port=args.http_port, grpc_port=args.grpc_port,
                         metrics_port=args.metrics_port, address=args.address,
                         model_control="explicit" if args.allow_model_control else "none",
                         load_models=args.load_model, max_input_bytes=args.max_input_bytes,
                         **({"extra_args": pools} if pools else {}))


if __name__ == "__main__":
    sys.exit(main())
