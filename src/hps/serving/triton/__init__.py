"""Triton Inference Server deployment of hps.

    from hps.serving.triton import build_repository, serve
    build_repository("ps.json", "dense.onnx", "repo")          # hps_embedding + dense_model + ensemble_model
    with serve("repo", http_port=0, grpc_port=0, metrics_port=0) as server:
        ...                                                     # tritonclient against server.url_http / url_grpc

The embedding model keeps HugeCTR's HPS-backend I/O (KEYS, NUMKEYS → OUTPUT0, 1-D), so existing
clients and ensembles work unchanged; `convert_hugectr_repository` rewrites HugeCTR repositories,
giving dense models whose backend the server lacks a python runner (`backend_runner.py`). `model.py`,
`dense_model.py` and `backend_model.py` run inside Triton's python stub and are not imported here.
A served repository refuses model uploads unless model control is opted into (loopback only), and
its HTTP inputs are limited (`guard.py` in front of a tritonserver without --http-max-input-size).
"""

from hps.serving.triton.errors import RepositoryError, RequestError, ServerError
from hps.serving.triton.repository import add_model_to_repository, build_repository, convert_hugectr_repository
from hps.serving.triton.install import find_tritonserver
from hps.serving.triton.server import TritonServer, free_port, serve, serve_forever

__all__ = ["RepositoryError", "RequestError", "ServerError", "TritonServer", "add_model_to_repository",
           "build_repository", "convert_hugectr_repository", "find_tritonserver", "free_port", "serve",
           "serve_forever"]
