#!/usr/bin/env bash
# Unpack the pack that tools/triton_gpu/pack.sh built and make an environment that runs tritonserver
# for hps on THIS machine (a GPU machine, no internet needed). Run from anywhere:
#
#     tools/triton_gpu/setup.sh [PACK_DIR] [DEST]     # defaults: <repo>/.triton-pack, /tmp/hps-triton
#     source DEST/env.sh                              # then python is DEST/venv/bin/python
#
# What it makes under DEST:
#   site/    pytriton/tritonserver (server, python backend, the stub for this Python) + nvidia_pytriton.libs
#   venv/    `python3 -m venv --without-pip` of this machine's python3, holding numpy 1.x (the stub's
#            embedded Python and hps's tritonserver launcher refuse numpy 2) and rocksdict when packed, and
#            zz-hps-triton.pth: <repo>/src, <repo>, DEST/site, then the site-packages of this machine's
#            python3 (torch, numba, onnxruntime, grpcio, ...) AFTER the venv's own, so numpy 1.x wins
#   bin/perf_analyzer   a wrapper running the packed perf_analyzer 2.51 with its libraries (libb64,
#            libcudart 12 from nvidia_pytriton.libs)
#   env.sh   PATH (venv/bin and bin first), HPS_CACHE_DIR, PERF_ANALYZER
# Environment: PYTHON (the interpreter to base the venv on, default python3).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PACK="$(cd "${1:-$REPO/.triton-pack}" && pwd)"
DEST="${2:-/tmp/hps-triton}"
PYTHON="${PYTHON:-python3}"
[ -f "$PACK/triton.tar.xz" ] || { echo "setup.sh: $PACK/triton.tar.xz not found: run tools/triton_gpu/pack.sh where pip works and carry its folder" >&2; exit 1; }

mkdir -p "$DEST/site" "$DEST/bin"
DEST="$(cd "$DEST" && pwd)"
xz -dc "$PACK/triton.tar.xz" | tar -C "$DEST/site" -xf -

PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
STUB="$DEST/site/pytriton/tritonserver/python_backend_stubs/$PYVER/triton_python_backend_stub"
[ -f "$STUB" ] || { echo "setup.sh: the pack has no python stub for Python $PYVER ($STUB); rebuild it with PY=$PYVER tools/triton_gpu/pack.sh" >&2; exit 1; }
# site-packages of the base interpreter (when python3 is itself a venv, --system-site-packages would not see them)
BASE_SITE="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
BASE_PLAT="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')"

rm -rf "$DEST/venv"
"$PYTHON" -m venv --without-pip "$DEST/venv"
VSITE="$("$DEST/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if "$PYTHON" -m pip --version >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$VSITE" "$PACK"/wheels/*.whl
else  # no pip: a wheel is a zip of site-packages
  for whl in "$PACK"/wheels/*.whl; do "$PYTHON" -m zipfile -e "$whl" "$VSITE"; done
fi
{
  echo "$REPO/src"
  echo "$REPO"
  echo "$DEST/site"
  echo "$BASE_SITE"
  [ "$BASE_PLAT" = "$BASE_SITE" ] || echo "$BASE_PLAT"
} > "$VSITE/zz-hps-triton.pth"

# the stub links libpython$PYVER: hps's launcher puts the interpreter's LIBDIR on LD_LIBRARY_PATH
LIBDIR="$("$DEST/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')"
EXTRA_LD=""
if ! LD_LIBRARY_PATH="$DEST/site/nvidia_pytriton.libs:$LIBDIR" ldd "$STUB" | grep -q "libpython$PYVER.*=> /"; then
  # not in the interpreter's LIBDIR: look where Python builds usually put it, and add that folder
  found="$(find /usr /opt /root/.local /usr/local -name "libpython$PYVER.so.1.0" 2>/dev/null | head -1 || true)"
  if [ -n "$found" ]; then
    EXTRA_LD="$(dirname "$found")"
    echo "setup.sh: libpython$PYVER found in $EXTRA_LD (not in LIBDIR $LIBDIR): env.sh adds it to LD_LIBRARY_PATH"
  else
    echo "setup.sh: WARNING: no libpython$PYVER.so.1.0 on this machine; the python stub (python models) will not start" >&2
  fi
fi
if ! LD_LIBRARY_PATH="$DEST/site/nvidia_pytriton.libs" ldd "$DEST/site/pytriton/tritonserver/bin/tritonserver" | grep -q "not found"; then :; else
  echo "setup.sh: WARNING: tritonserver misses libraries:" >&2
  LD_LIBRARY_PATH="$DEST/site/nvidia_pytriton.libs" ldd "$DEST/site/pytriton/tritonserver/bin/tritonserver" | grep "not found" >&2
fi

if [ -f "$PACK/perf_analyzer.xz" ]; then
  mkdir -p "$DEST/palibs"
  xz -dc "$PACK/perf_analyzer.xz" > "$DEST/bin/perf_analyzer.bin"
  chmod +x "$DEST/bin/perf_analyzer.bin"
  ln -sf "$(ls "$DEST"/site/nvidia_pytriton.libs/libb64-*.so.0d)" "$DEST/palibs/libb64.so.0d"
  ln -sf "$(ls "$DEST"/site/nvidia_pytriton.libs/libcudart-*.so.12*)" "$DEST/palibs/libcudart.so.12"
  # libssl / libcrypto 3 from the system; the bundled ones only where the system has none
  for lib in ssl crypto; do
    if ! ldconfig -p 2>/dev/null | grep -q "lib$lib.so.3 "; then
      ln -sf "$(ls "$DEST"/site/nvidia_pytriton.libs/lib$lib-*.so.3)" "$DEST/palibs/lib$lib.so.3"
    fi
  done
  cat > "$DEST/bin/perf_analyzer" <<WRAP
#!/usr/bin/env bash
LD_LIBRARY_PATH="$DEST/palibs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$DEST/bin/perf_analyzer.bin" "\$@"
WRAP
  chmod +x "$DEST/bin/perf_analyzer"
fi

cat > "$DEST/env.sh" <<ENV
# source this: the hps triton environment made by tools/triton_gpu/setup.sh
export PATH="$DEST/venv/bin:$DEST/bin:\$PATH"
export HPS_CACHE_DIR="$DEST/cache"
export PERF_ANALYZER="$DEST/bin/perf_analyzer"
${EXTRA_LD:+export LD_LIBRARY_PATH="$EXTRA_LD\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"}
ENV

HPS_CACHE_DIR="$DEST/cache" PATH="$DEST/venv/bin:$PATH" "$DEST/venv/bin/python" - <<PY
import numpy, sys
import hps
from hps.serving.triton.install import find_tritonserver
inst = find_tritonserver()
print(f"setup.sh: python {sys.version.split()[0]} numpy {numpy.__version__} hps {hps.__version__}")
print(f"setup.sh: tritonserver {inst.binary} (backends {inst.backend_dir})")
try:
    import torch
    print(f"setup.sh: torch {torch.__version__}, CUDA {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
except Exception as exc:  # torch is optional for CPU-only serving
    print(f"setup.sh: torch not importable: {exc}")
PY
[ -x "$DEST/bin/perf_analyzer" ] && "$DEST/bin/perf_analyzer" --version 2>&1 | head -1 || true
cat <<MSG
setup.sh: ready. Use it as:
  source $DEST/env.sh
  python -c 'from hps.serving.triton import build_repository, serve; ...'   # see tools/triton_gpu/README.md
  python benchmarks/bench_triton_gpu.py --help
  perf_analyzer -m ensemble_model -u 127.0.0.1:<port> -i grpc ...            # packed perf_analyzer 2.51
/dev/shm (the python backend's tensors and multi_process_hash_map live there): $(df -h /dev/shm | tail -1)
MSG
