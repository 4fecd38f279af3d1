"""The tritonserver launcher: backend preparation, command line, start failures, serve_forever and signals."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from hps.serving.triton import ServerError, TritonServer, find_tritonserver, free_port
from hps.serving.triton.install import prepare_backends, server_backends

IDENTITY_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        if "{fail}":
            raise RuntimeError("this model refuses to load: {fail}")

    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * 2)]) for r in requests]
'''

IDENTITY_CONFIG = '''name: "twice"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
'''


def trivial_repo(root: Path, fail: str = "") -> Path:
    (root / "twice" / "1").mkdir(parents=True)
    (root / "twice" / "config.pbtxt").write_text(IDENTITY_CONFIG)
    (root / "twice" / "1" / "model.py").write_text(IDENTITY_MODEL.replace("{fail}", fail))
    return root


@pytest.mark.triton
def test_find_and_prepare_backends(tmp_path):
    install = find_tritonserver()
    assert install.binary.is_file()
    assert install.env["PATH"].split(os.pathsep)[0] == str(Path(sys.prefix) / "bin")
    if install.bundled:
        stub = install.backend_dir / "python" / "triton_python_backend_stub"
        assert stub.is_file() and "site-packages" not in str(install.backend_dir)
        assert "nvidia_pytriton.libs" in install.env["LD_LIBRARY_PATH"]
        root = install.binary.parent.parent
        first = prepare_backends(root, cache_dir=tmp_path)
        assert prepare_backends(root, cache_dir=tmp_path) == first
        assert (first / "python" / "libtriton_python.so").is_file()
    with pytest.raises(ServerError, match="not found"):
        find_tritonserver(tmp_path / "nope")


@pytest.mark.triton
def test_bundled_server_refuses_numpy_2(monkeypatch):
    # nvidia-pytriton's python stub returns 0-byte outputs under numpy 2: refuse instead of serving them
    monkeypatch.setattr("numpy.__version__", "2.0.0")
    monkeypatch.setenv("PATH", "/nonexistent")  # no tritonserver of the user's: the bundled one
    with pytest.raises(ServerError, match="numpy 2.0.0"):
        find_tritonserver()


@pytest.mark.triton
def test_command_line(tmp_path):
    default = TritonServer(trivial_repo(tmp_path), http_port=0, grpc_port=0, metrics_port=0).command()
    assert "--model-control-mode=none" in default and not any(a.startswith("--load-model") for a in default)
    server = TritonServer(tmp_path, http_port=0, grpc_port=0, metrics_port=0, load_models=["twice"],
                          model_control="explicit")
    cmd = server.command()
    assert "--http-address=127.0.0.1" in cmd and "--grpc-address=127.0.0.1" in cmd
    assert "--model-control-mode=explicit" in cmd and "--load-model=twice" in cmd
    # the bundled Triton 2.51 has no --http-max-input-size: tritonserver's HTTP port is private, the guard
    # front takes the client port
    assert server.input_guard and f"--http-port={server.upstream_http_port}" in cmd
    assert f"--listen=127.0.0.1:{server.http_port}" in server.guard_command()
    assert server.upstream_http_port != server.http_port
    with pytest.raises(ServerError, match="binds loopback only"):
        TritonServer(tmp_path, address="0.0.0.0", model_control="explicit")
    key, value = server.admin_header
    assert f"--http-restricted-api=logging,trace:{key}={value}" in cmd
    assert f"--grpc-restricted-protocol=logging,trace:{key}={value}" in cmd
    public = TritonServer(tmp_path, address="0.0.0.0", http_port=0, grpc_port=0, metrics_port=0)
    key, value = public.admin_header
    assert f"--http-restricted-api=logging,trace,shared-memory:{key}={value}" in public.command()
    assert TritonServer(tmp_path, address="::1", model_control="explicit", http_port=0, grpc_port=0,
                        metrics_port=0).model_control == "explicit"
    assert f"--backend-config=python,shm-region-prefix-name={server.shm_prefix}" in cmd
    assert len({server.http_port, server.grpc_port, server.metrics_port}) == 3
    with pytest.raises(ServerError, match="model_control"):
        TritonServer(tmp_path, model_control="sometimes")
    with pytest.raises(ServerError, match="model repository not found"):
        TritonServer(tmp_path / "missing")


@pytest.mark.triton
def test_start_failure_reports_the_models_error(tmp_path):
    server = TritonServer(trivial_repo(tmp_path, fail="broken on purpose"), http_port=0, grpc_port=0,
                          metrics_port=0)
    server.start()
    with pytest.raises(ServerError, match="broken on purpose"):
        server.wait_ready(60)
    assert not server.is_alive() and server.shm_regions() == []


@pytest.mark.triton
def test_serve_forever_stops_on_sigterm(tmp_path):
    repo = trivial_repo(tmp_path / "repo")
    ports = [free_port() for _ in range(3)]
    code = ("from hps.serving.triton import serve_forever; import sys; "
            f"sys.exit(serve_forever({str(repo)!r}, http_port={ports[0]}, grpc_port={ports[1]}, "
            f"metrics_port={ports[2]}, model_control='none', log_path={str(tmp_path / 'log')!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=1).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
            time.sleep(0.2)
        prefixes = {Path(p).name.split("_")[1] for p in glob.glob("/dev/shm/hps_*")}
        assert str(proc.pid) in prefixes  # the prefix names the launching process
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "tritonserver ready" in proc.stderr.read()
        assert glob.glob(f"/dev/shm/hps_{proc.pid}_*") == []
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.triton
@pytest.mark.parametrize("flag,what", [("--http-port", "HTTP"), ("--grpc-port", "gRPC"), ("--metrics-port", "metrics")])
def test_serve_names_a_port_in_use(tmp_path, capsys, flag, what):
    from hps.cli.main import main

    repo = trivial_repo(tmp_path / "repo")
    ports = {"--http-port": free_port(), "--grpc-port": free_port(), "--metrics-port": free_port()}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        ports[flag] = busy.getsockname()[1]
        args = [a for k, v in ports.items() for a in (k, str(v))]
        assert main(["triton", "serve", str(repo), *args]) == 2
    err = capsys.readouterr().err
    assert f"port {ports[flag]} ({what}) on 127.0.0.1 is already in use" in err and flag in err


def test_serve_model_control_is_opt_in_and_loopback_only(tmp_path, capsys):
    from hps.cli.main import main

    repo = trivial_repo(tmp_path / "repo")
    assert main(["triton", "serve", str(repo), "--allow-model-control", "--address", "0.0.0.0"]) == 2
    assert "binds loopback only" in capsys.readouterr().err
    assert main(["triton", "serve", str(repo), "--load-model", "twice"]) == 2
    assert "--load-model needs --allow-model-control" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["triton", "serve", str(repo), "--model-control", "explicit"])  # the old open-by-default switch


@pytest.mark.triton
def test_a_backend_the_server_lacks_is_named_before_start(tmp_path):
    repo = trivial_repo(tmp_path / "repo")
    (repo / "dense_trt" / "1").mkdir(parents=True)
    (repo / "dense_trt" / "config.pbtxt").write_text('name: "dense_trt"\nplatform: "tensorrt_plan"\nmax_batch_size: 0\n')
    (repo / "hps_embedding").mkdir()
    (repo / "hps_embedding" / "config.pbtxt").write_text('name: "hps_embedding"\nbackend: "hps"\n')
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0)
    if "tensorrt" in server_backends(server.install):
        pytest.skip("this tritonserver has TensorRT")
    with pytest.raises(ServerError) as caught:
        server.start()
    message = str(caught.value)
    assert "'dense_trt'" in message and "'tensorrt' backend" in message and "hps triton build --dense" in message
    assert "'hps_embedding'" in message and "hps triton convert" in message
    assert server.process is None
    # models that are not loaded at start do not matter
    TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, model_control="explicit",
                 load_models=["twice"]).check_backends()
