"""Where tritonserver comes from, and what its python backend needs to run hps models.

The binary is the user's own `tritonserver` when one is on PATH, else the one bundled in the
nvidia-pytriton wheel. For the bundled one we prepare what its python backend needs
(reference/ecosystem-notes.md §1): a writable backend directory with the python stub under
~/.cache/hps/triton-backends (site-packages stays untouched), LD_LIBRARY_PATH with the wheel's
libraries and this interpreter's libpython, and this environment's bin/ first on PATH so the stub's
embedded Python imports this environment's numpy (< 2) and hps.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hps.errors import pip_install_hint
from hps.serving.triton.errors import ServerError

CACHE_DIR = Path(os.environ.get("HPS_CACHE_DIR", Path.home() / ".cache" / "hps"))


@dataclass(frozen=True)
class TritonInstall:
    """How to run tritonserver: the binary, an optional --backend-directory, and extra environment."""

    binary: Path
    backend_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    bundled: bool = False


def find_tritonserver(binary: str | os.PathLike | None = None) -> TritonInstall:
    """The tritonserver to run: `binary` if given, else `tritonserver` on PATH, else nvidia-pytriton's.

    Raises `ServerError` saying what to install when there is none."""
    if binary is not None:
        path = Path(binary)
        if not path.is_file():
            raise ServerError(f"{path}: tritonserver binary not found")
        return TritonInstall(path, env=_stub_env({}))
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path), env=_stub_env({}))
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("no tritonserver on PATH and nvidia-pytriton is not installed; install it with: "
                          f"{pip_install_hint('triton')}")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    server = root / "bin" / "tritonserver"
    if not server.is_file():
        raise ServerError(f"{server}: the nvidia-pytriton wheel has no tritonserver binary")
    if int(np.__version__.split(".")[0]) >= 2:
        raise ServerError(f"the tritonserver of nvidia-pytriton runs its python models on numpy 1.x: with numpy "
                          f"{np.__version__} every output comes back empty; install numpy<2 in this environment "
                          f"({pip_install_hint('triton')} pins it) or pass your own tritonserver binary")
    site = root.parent.parent
    libs = site / "nvidia_pytriton.libs"
    ld = [str(libs), sysconfig.get_config_var("LIBDIR") or ""]
    if os.environ.get("LD_LIBRARY_PATH"):
        ld.append(os.environ["LD_LIBRARY_PATH"])
    env = _stub_env({"LD_LIBRARY_PATH": ":".join(p for p in ld if p)})
    return TritonInstall(server, backend_dir=prepare_backends(root), env=env, bundled=True)


def _stub_env(env: dict[str, str]) -> dict[str, str]:
    """PATH with this environment's bin/ first: the python stub finds python3 there, then its site-packages."""
    bin_dir = str(Path(sys.prefix) / "bin")
    path = os.environ.get("PATH", "")
    return {**env, "PATH": bin_dir + (os.pathsep + path if path else "")}


def prepare_backends(pytriton_root: Path, cache_dir: Path = CACHE_DIR) -> Path:
    """A backend directory holding the wheel's python backend plus the stub for this Python version.

    Built once under `cache_dir`/triton-backends/<key> (atomically, so concurrent servers agree)."""
    pyver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = pytriton_root / "python_backend_stubs" / pyver / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"{stub}: nvidia-pytriton has no python backend stub for Python {pyver}")
    source = pytriton_root / "backends" / "python"
    key = f"py{pyver}-{int(stub.stat().st_mtime)}-{stub.stat().st_size}"
    target = cache_dir / "triton-backends" / key
    if (target / "python" / "triton_python_backend_stub").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        shutil.copytree(source, staging / "python", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
        try:
            os.rename(staging, target)
        except OSError:  # another process won the race; use its copy
            if not (target / "python" / "triton_python_backend_stub").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def server_backends(install: TritonInstall | None = None) -> set[str]:
    """Names of the backends the tritonserver hps would run has ({"python"} for nvidia-pytriton's):
    the directories of its --backend-directory, else of `<prefix>/backends` beside its bin/.
    Without any tritonserver, {"python"}: the only backend hps's repositories need."""
    try:
        install = install or find_tritonserver()
    except ServerError:
        return {"python"}
    base = install.backend_dir or install.binary.resolve().parent.parent / "backends"
    found = {d.name for d in base.iterdir() if d.is_dir()} if base.is_dir() else set()
    return found or {"python"}


_OPTIONS_CACHE: dict[tuple[str, float], frozenset[str]] = {}


def server_options(install: TritonInstall) -> frozenset[str]:
    """The command-line options this tritonserver binary accepts (from its --help), e.g.
    "--http-max-input-size" (Triton 2.59+), "--http-restricted-api"."""
    key = (str(install.binary), install.binary.stat().st_mtime)
    if key not in _OPTIONS_CACHE:
        try:
            run = subprocess.run([str(install.binary), "--help"], capture_output=True, text=True, timeout=30,
                                 env={**os.environ, **install.env})
            text = run.stdout + run.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServerError(f"{install.binary} --help failed: {exc}") from exc
        _OPTIONS_CACHE[key] = frozenset(re.findall(r"^\s+(--[a-z0-9-]+)", text, re.MULTILINE))
    return _OPTIONS_CACHE[key]
