"""Start, watch and stop a tritonserver for an hps model repository (CLI `hps triton serve`).

The binary and its environment come from `hps.serving.triton.install.find_tritonserver` (the user's
own tritonserver, else nvidia-pytriton's). Every server binds 127.0.0.1 unless told otherwise and gets
its own python-backend shared-memory prefix; `stop()` removes whatever /dev/shm regions remain under it.

Safe by default, for clients that reach the port:
- model control "none": every model is loaded at start and Triton refuses the repository API's load /
  unload (a load request may carry model files, a python model's code included, which would run).
  Hot-adding models ("explicit") is an opt-in that binds loopback only.
- inputs are limited (`max_input_bytes`, 64 MiB like Triton 2.59+): with `--http-max-input-size` when the
  binary has it, else through `guard.py`, an HTTP front on the client port that refuses oversized or
  inconsistent inference requests with HTTP 400 before Triton allocates for them (Triton 2.51, the
  bundled one, dies of std::bad_alloc on one JSON input declaring a 4 TiB shape).
- Triton's logging and trace settings APIs answer only a header no client knows (2.51 already refuses
  new log or trace file locations over the network, but not verbose logging); so does the shared-memory
  registration API when the server binds beyond loopback.
- a port already in use is named in the error.
"""

from __future__ import annotations

import collections
import glob
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

from hps.errors import require
from hps.serving.triton.errors import ServerError
from hps.serving.triton.guard import DEFAULT_MAX_INPUT_BYTES
from hps.serving.triton.install import find_tritonserver, server_backends, server_options

GUARD_SCRIPT = Path(__file__).resolve().parent / "guard.py"
CONSOLE = "-"

SHM_DIR = Path("/dev/shm")
PYTHON_SHM_DEFAULT_BYTES = 4 * 1024 * 1024


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on `address` right now."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class TritonServer:
    """A tritonserver process serving `repo`; a context manager that stops it on exit.

    Ports given as 0 are picked free. model_control: "none" (default: all models loaded at start, the
    repository API refuses loads), "explicit" (hot-add through the repository API: anyone reaching the
    port can load a model, its code included, so only on a loopback `address`) or "poll".
    input_guard: "auto" (limit inputs to `max_input_bytes` with --http-max-input-size when the binary
    has it, else with the guard front), True (always the front), False (no limit: a hostile client can
    crash the server). log_path "-" streams the log to stdout (its tail still goes into errors).
    Attributes: url_http ("127.0.0.1:8000"), url_grpc, url_metrics, log_path, shm_prefix, process,
    guard_process (None without the front).
    """

    def __init__(self, repo: str | os.PathLike, *, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, address: str = "127.0.0.1", model_control: str = "none",
                 load_models: Sequence[str] | None = None, tritonserver: str | os.PathLike | None = None,
                 log_path: str | os.PathLike | None = None, log_verbose: int = 0,
                 extra_args: Iterable[str] = (), input_guard: bool | str = "auto",
                 max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES):
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise ServerError(f"{self.repo}: model repository not found")
        if model_control not in ("explicit", "none", "poll"):
            raise ServerError(f"model_control must be 'explicit', 'none' or 'poll', not {model_control!r}")
        if model_control != "none" and not is_loopback(address):
            raise ServerError(
                f"model control {model_control!r} lets any client that reaches {address} load models, their "
                "code included; it binds loopback only (address 127.0.0.1), or serve with model control 'none'")
        if input_guard not in (True, False, "auto"):
            raise ServerError(f"input_guard must be True, False or 'auto', not {input_guard!r}")
        self.address = address
        self.http_port = http_port or free_port(address)
        self.grpc_port = grpc_port or free_port(address)
        self.metrics_port = metrics_port or free_port(address)
        self.model_control = model_control
        self.load_models = list(load_models) if load_models is not None else None
        self.install = find_tritonserver(tritonserver)
        self.shm_prefix = f"hps_{os.getpid()}_{secrets.token_hex(4)}_"
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="hps-tritonserver-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        self.max_input_bytes = int(max_input_bytes)
        options = server_options(self.install)
        self.input_guard = (input_guard is True or
                            (input_guard == "auto" and "--http-max-input-size" not in options))
        self._limit_option = input_guard == "auto" and not self.input_guard
        # Triton's logging and trace settings (verbose logs that fill the disk and show requests) answer
        # only requests carrying this header, which no client is told
        self._restrict = {flag for flag in ("--http-restricted-api", "--grpc-restricted-protocol") if flag in options}
        self.admin_header = ("hps-admin-token", secrets.token_hex(16))
        self.upstream_http_port = free_port("127.0.0.1") if self.input_guard else self.http_port
        self.process: subprocess.Popen | None = None
        self.guard_process: subprocess.Popen | None = None
        self._guard_log = None
        self._log_file = None
        self._console_tail: collections.deque[str] | None = None

    @property
    def url_http(self) -> str:
        return f"{_client_host(self.address)}:{self.http_port}"

    @property
    def url_grpc(self) -> str:
        return f"{_client_host(self.address)}:{self.grpc_port}"

    @property
    def url_metrics(self) -> str:
        return f"http://{_client_host(self.address)}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        """The tritonserver command line."""
        http_address = "127.0.0.1" if self.input_guard else self.address
        cmd = [str(self.install.binary), f"--model-repository={self.repo}",
               f"--http-address={http_address}", f"--http-port={self.upstream_http_port}",
               f"--grpc-address={self.address}", f"--grpc-port={self.grpc_port}",
               f"--metrics-address={self.address}", f"--metrics-port={self.metrics_port}",
               "--allow-gpu-metrics=false", "--exit-timeout-secs=3", f"--log-verbose={self.log_verbose}",
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
               f"--backend-config=python,shm-default-byte-size={PYTHON_SHM_DEFAULT_BYTES}",
               f"--model-control-mode={self.model_control}"]
        if self.install.backend_dir is not None:
            cmd.append(f"--backend-directory={self.install.backend_dir}")
        if self._limit_option:
            cmd.append(f"--http-max-input-size={self.max_input_bytes}")
        key, value = self.admin_header
        # shared-memory registration maps any /dev/shm object by name (this server's python-backend regions,
        # a multi-process hash map's table): useful only to clients on this host, so closed on other addresses
        apis = "logging,trace" if is_loopback(self.address) else "logging,trace,shared-memory"
        for flag in sorted(self._restrict):
            cmd.append(f"{flag}={apis}:{key}={value}")
        if self.model_control == "explicit":
            for name in (self.load_models if self.load_models is not None else ["*"]):
                cmd.append(f"--load-model={name}")
        return cmd + self.extra_args

    def guard_command(self) -> list[str]:
        """The command line of the HTTP guard front (see guard.py)."""
        return [sys.executable, str(GUARD_SCRIPT), f"--listen={self.address}:{self.http_port}",
                f"--upstream=127.0.0.1:{self.upstream_http_port}", f"--max-input-bytes={self.max_input_bytes}"]

    def start(self) -> "TritonServer":
        """Start the process (in its own session, so its python stubs can be stopped with it), and the
        guard front when there is one. `ServerError` naming the port when one is already in use."""
        if self.process is not None:
            raise ServerError(f"tritonserver for {self.repo} is already started")
        for port, what, flag in ((self.http_port, "HTTP", "--http-port"), (self.grpc_port, "gRPC", "--grpc-port"),
                                 (self.metrics_port, "metrics", "--metrics-port")):
            if port_in_use(self.address, port):
                raise ServerError(f"port {port} ({what}) on {self.address} is already in use: stop what listens "
                                  f"there or pick another port ({flag})")
        self.check_backends()
        env = {**os.environ, **self.install.env}
        if self.log_path == Path(CONSOLE):
            self._console_tail = collections.deque(maxlen=400)
            stdout = subprocess.PIPE
        else:
            self._log_file = open(self.log_path, "ab")
            stdout = self._log_file
        try:
            self.process = subprocess.Popen(self.command(), stdout=stdout, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            if self.input_guard:
                self._guard_log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would block it
                self.guard_process = subprocess.Popen(self.guard_command(), stdout=subprocess.DEVNULL,
                                                      stderr=self._guard_log, stdin=subprocess.DEVNULL,
                                                      start_new_session=True)
        except OSError as exc:
            self.stop()
            raise ServerError(f"cannot start {self.install.binary}: {exc}") from exc
        if self._console_tail is not None:
            threading.Thread(target=self._pump_log, args=(self.process.stdout,), daemon=True).start()
        return self

    def check_backends(self) -> None:
        """`ServerError` naming each model (of those loaded at start) whose backend this tritonserver lacks,
        and what to do, instead of Triton's failure to find a backend library."""
        from hps.serving.triton import config_text
        from hps.serving.triton.backend_runner import RUNNABLE, backend_of

        base = self.install.backend_dir or self.install.binary.resolve().parent.parent / "backends"
        if not base.is_dir() or any(a.startswith("--backend-directory") for a in self.extra_args):
            return  # this server's backends are not known here: Triton will say
        available = server_backends(self.install) | {"ensemble"}
        wanted = None if self.model_control == "none" or self.load_models in (None, ["*"]) else set(self.load_models)
        problems = []
        for cfg in sorted(self.repo.glob("*/config.pbtxt")):
            text = cfg.read_text(errors="replace")
            name = config_text.top_level_field(text, "name") or cfg.parent.name
            backend = backend_of(config_text.top_level_field(text, "backend"),
                                 config_text.top_level_field(text, "platform"))
            if backend is None or backend in available or (wanted is not None and name not in wanted):
                continue
            if backend == "hps":
                todo = "rewrite the repository for hps first: hps triton convert REPO --config ps.json"
            elif backend in RUNNABLE:
                todo = "hps triton convert gives it a python-backend runner"
            else:
                todo = ("use a tritonserver that has it (on PATH), or replace the model with the ONNX / TorchScript "
                        "model it was built from (hps triton build --dense model.onnx)")
            problems.append(f"model {name!r} ({cfg}) needs Triton's {backend!r} backend: {todo}")
        if problems:
            raise ServerError(f"{self.install.binary} has only the backends {sorted(available - {'ensemble'})}:\n"
                              + "\n".join(problems))

    def _pump_log(self, stream) -> None:
        """Copy the server's output to stdout, keeping its last lines for error messages."""
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace")
            self._console_tail.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()
        stream.close()

    def wait_ready(self, timeout_s: float = 60.0) -> "TritonServer":
        """Block until /v2/health/ready answers 200; `ServerError` with the log tail if the server
        exits or is not ready within `timeout_s`."""
        if self.process is None:
            raise ServerError("tritonserver is not started")
        deadline = time.monotonic() + timeout_s
        url = f"http://{self.url_http}/v2/health/ready"
        while True:
            code = self.process.poll()
            if code is not None:
                time.sleep(0.2)  # let the log pump take the last lines
                self.stop()
                raise ServerError(self._failure(f"tritonserver exited with code {code} before it was ready"))
            if self.guard_process is not None and self.guard_process.poll() is not None:
                self._guard_log.seek(0)
                message = self._guard_log.read().decode(errors="replace").strip()
                self.stop()
                raise ServerError(f"the HTTP guard on {self.address}:{self.http_port} exited with code "
                                  f"{self.guard_process.returncode} before it was ready: {message}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(self._failure(f"tritonserver not ready at {url} after {timeout_s:g} s"))
            time.sleep(0.1)

    def is_alive(self) -> bool:
        """The server process runs (and its guard front, when it has one)."""
        guard_ok = self.guard_process is None or self.guard_process.poll() is None
        return self.process is not None and self.process.poll() is None and guard_ok

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL the whole process group; remove leftover
        /dev/shm regions with this server's prefix. Returns the exit code (None if never started)."""
        if self.guard_process is not None:
            guard = self.guard_process
            if guard.poll() is None:
                guard.terminate()
                try:
                    guard.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    guard.kill()
                    guard.wait(timeout=5)
            if self._guard_log is not None:
                self._guard_log.close()
                self._guard_log = None
        if self.process is None:
            return None
        proc = self.process
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        _kill_group(proc.pid)  # python stubs left behind by a crashed server
        self._close_log()
        self.cleanup_shm()
        return proc.returncode

    def cleanup_shm(self) -> list[str]:
        """Remove /dev/shm regions with this server's prefix; returns the removed paths."""
        removed = []
        for path in glob.glob(str(SHM_DIR / f"{self.shm_prefix}*")):
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
        return removed

    def shm_regions(self) -> list[str]:
        """/dev/shm regions currently under this server's prefix."""
        return glob.glob(str(SHM_DIR / f"{self.shm_prefix}*"))

    def log_errors(self) -> list[str]:
        """Error lines of the server log (model load failures first), without CPU-only noise."""
        noise = ("CudaDriverHelper", "pinned", "NVML", "DCGM", "CUDA driver")
        out = []
        for line in self.log_tail(1 << 20).splitlines():
            if ((line.startswith("E") and line[1:5].isdigit()) or line.startswith("error:")
                    or "UNAVAILABLE" in line) and not any(n in line for n in noise):
                out.append(" ".join(line.replace("\\n", " ").split())[:600])
        return out

    def _failure(self, what: str) -> str:
        errors = "\n".join(self.log_errors()) or self.log_tail(2000)
        return f"{what} (log {self.log_path}):\n{errors}"

    def log_tail(self, chars: int = 4000) -> str:
        """The last `chars` characters of the server log."""
        if self._console_tail is not None:
            return "".join(self._console_tail)[-chars:]
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- model control (needs tritonclient) -----------------------------------------------

    def client(self):
        """A `tritonclient.http.InferenceServerClient` for this server."""
        http = require("tritonclient.http", "triton")
        return http.InferenceServerClient(url=self.url_http)

    def load_model(self, name: str) -> None:
        """Load (or reload) model `name` from the repository (model_control "explicit");
        `ServerError` with Triton's message if it fails."""
        self._control("load_model", name)

    def unload_model(self, name: str) -> None:
        """Unload model `name` (model_control "explicit")."""
        self._control("unload_model", name)

    def is_model_ready(self, name: str) -> bool:
        return bool(self.client().is_model_ready(name))

    def _control(self, action: str, name: str) -> None:
        utils = require("tritonclient.utils", "triton")
        client = self.client()
        try:
            getattr(client, action)(name)
        except utils.InferenceServerException as exc:
            raise ServerError(f"{action.replace('_', ' ')} {name!r} on {self.url_http} failed: "
                              f"{exc.message()}") from None
        finally:
            client.close()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "TritonServer":
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        return f"TritonServer({str(self.repo)!r}, http={self.url_http}, grpc={self.url_grpc}, {state})"


def port_in_use(address: str, port: int) -> bool:
    """True when `port` on `address` cannot be bound now (something listens there)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return True
    return False


def _client_host(address: str) -> str:
    return "127.0.0.1" if address in ("0.0.0.0", "") else address


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def serve(repo: str | os.PathLike, *, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
          address: str = "127.0.0.1", model_control: str = "none", load_models: Sequence[str] | None = None,
          ready_timeout_s: float = 60.0, tritonserver: str | os.PathLike | None = None,
          log_path: str | os.PathLike | None = None, extra_args: Iterable[str] = (),
          input_guard: bool | str = "auto", max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> TritonServer:
    """Start tritonserver on `repo` and wait until it is ready; returns the running `TritonServer`.

    model_control "none" (default) loads everything once and refuses the repository API's loads;
    "explicit" (loopback `address` only) loads `load_models` (None: every model) at start and allows
    load / unload later. Ports given as 0 are picked free. input_guard, max_input_bytes: see `TritonServer`.
    Use as `with serve(repo) as server: ...` to stop it afterwards."""
    server = TritonServer(repo, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          address=address, model_control=model_control, load_models=load_models,
                          tritonserver=tritonserver, log_path=log_path, extra_args=extra_args,
                          input_guard=input_guard, max_input_bytes=max_input_bytes)
    server.start()
    return server.wait_ready(ready_timeout_s)


def serve_forever(repo: str | os.PathLike, *, log_to_console: bool = True, **kwargs) -> int:
    """Run tritonserver on `repo` (arguments as `serve`) until SIGINT / SIGTERM or until it exits;
    stop it cleanly and return its exit code. With `log_to_console` the server log goes to stdout."""
    if log_to_console and "log_path" not in kwargs:
        kwargs["log_path"] = CONSOLE
    stop_requested = []

    def on_signal(signum, _frame):
        stop_requested.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        server = serve(repo, **kwargs)
        print(f"hps: tritonserver ready: HTTP {server.url_http}, gRPC {server.url_grpc}, "
              f"metrics {server.url_metrics}", file=sys.stderr, flush=True)
        while not stop_requested and server.is_alive():
            time.sleep(0.2)
        code = server.stop()
        return 0 if stop_requested else int(code or 0)
    finally:
        if server is not None and server.is_alive():
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
