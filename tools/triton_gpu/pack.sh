#!/usr/bin/env bash
# Build the carry folder that a GPU machine without internet needs to run tritonserver for hps
# (issue 16). Run HERE (a machine with pip access and nvidia-pytriton 0.7.0 installed):
#
#     tools/triton_gpu/pack.sh [OUT_DIR]        # default OUT_DIR: <repo>/.triton-pack
#
# OUT_DIR then holds (see README.md beside this script):
#   triton.tar.xz   site-packages layout: pytriton/__init__.py + pytriton/tritonserver/{bin/tritonserver,
#                   backends/python, python_backend_stubs/<PY>/} and nvidia_pytriton.libs/ without the
#                   libraries neither tritonserver nor the python backend loads (checked with readelf below)
#   wheels/         numpy 1.26.x for CPython <PY> (the python stub runs on numpy < 2), rocksdict when
#                   <repo>/.whl holds one for <PY>
#   perf_analyzer.xz  perf_analyzer 2.51 from the tritonclient 2.51.0 wheel (unless NO_PERF_ANALYZER=1)
#   MANIFEST        what is in it and the sizes
# Environment: PY (the GPU machine's Python, default 3.12), PYTRITON_SITE (the site-packages holding
# pytriton/ and nvidia_pytriton.libs/; default: the one of <repo>/.venv), PIP (default <repo>/.venv/bin/python -m pip),
# XZ_LEVEL (default 9), MAX_MB (refuse a pack above this, default 60: the device tool carries 64 MiB with the working tree).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$REPO/.triton-pack}"
PY="${PY:-3.12}"
MAX_MB="${MAX_MB:-60}"
PIP="${PIP:-$REPO/.venv/bin/python -m pip}"
if [ -z "${PYTRITON_SITE:-}" ]; then
  PYTRITON_SITE="$("$REPO/.venv/bin/python" -c 'import importlib.util, os; s = importlib.util.find_spec("pytriton"); print(os.path.dirname(list(s.submodule_search_locations)[0]))')"
fi
SRC_ROOT="$PYTRITON_SITE/pytriton/tritonserver"
LIBS="$PYTRITON_SITE/nvidia_pytriton.libs"
for need in "$SRC_ROOT/bin/tritonserver" "$SRC_ROOT/backends/python/libtriton_python.so" \
            "$SRC_ROOT/python_backend_stubs/$PY/triton_python_backend_stub" "$LIBS"; do
  [ -e "$need" ] || { echo "pack.sh: $need not found (is nvidia-pytriton 0.7.0 installed in $PYTRITON_SITE?)" >&2; exit 1; }
done
command -v readelf >/dev/null || { echo "pack.sh: readelf (binutils) is needed to trim the libraries" >&2; exit 1; }

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/site/pytriton/tritonserver/bin" "$STAGE/site/pytriton/tritonserver/backends/python" \
         "$STAGE/site/pytriton/tritonserver/python_backend_stubs/$PY" "$STAGE/site/nvidia_pytriton.libs"
# hps finds the server through importlib.util.find_spec("pytriton"): a package with only __init__.py is enough
: > "$STAGE/site/pytriton/__init__.py"
cp -p "$SRC_ROOT/bin/tritonserver" "$STAGE/site/pytriton/tritonserver/bin/"
cp -p "$SRC_ROOT/backends/python/libtriton_python.so" "$SRC_ROOT/backends/python/triton_python_backend_utils.py" \
      "$STAGE/site/pytriton/tritonserver/backends/python/"
cp -p "$SRC_ROOT/python_backend_stubs/$PY/triton_python_backend_stub" "$STAGE/site/pytriton/tritonserver/python_backend_stubs/$PY/"

# The bundled libraries reachable (NEEDED, transitively) from the server, the python backend and the stub;
# everything else (libpython3.13 of the wheel's own Python, ...) stays behind.
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
declare -A KEEP=()
queue=("$SRC_ROOT/bin/tritonserver" "$SRC_ROOT/backends/python/libtriton_python.so"
       "$SRC_ROOT/python_backend_stubs/$PY/triton_python_backend_stub")
while [ "${#queue[@]}" -gt 0 ]; do
  file="${queue[0]}"; queue=("${queue[@]:1}")
  for lib in $(needed "$file"); do
    if [ -f "$LIBS/$lib" ] && [ -z "${KEEP[$lib]:-}" ]; then
      KEEP[$lib]=1
      queue+=("$LIBS/$lib")
    fi
  done
done
for lib in "${!KEEP[@]}"; do cp -p "$LIBS/$lib" "$STAGE/site/nvidia_pytriton.libs/"; done
DROPPED="$(cd "$LIBS" && for f in *; do [ -n "${KEEP[$f]:-}" ] || echo "$f"; done | tr '\n' ' ')"

mkdir -p "$OUT"
rm -rf "$OUT/wheels" "$OUT/triton.tar.xz" "$OUT/perf_analyzer.xz"
mkdir -p "$OUT/wheels"
echo "pack.sh: compressing tritonserver + ${#KEEP[@]} libraries (xz -${XZ_LEVEL:-9}, a minute or two)"
tar -C "$STAGE/site" -cf - pytriton nvidia_pytriton.libs | xz -T0 -"${XZ_LEVEL:-9}" > "$OUT/triton.tar.xz"

PIP_PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
$PIP download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp $PIP_PLATFORMS \
     -d "$OUT/wheels" "numpy>=1.26,<2"
for whl in "$REPO"/.whl/rocksdict-*-cp${PY/./}-*.whl; do
  [ -f "$whl" ] && cp -p "$whl" "$OUT/wheels/"
done
if [ "${NO_PERF_ANALYZER:-0}" != 1 ]; then
  $PIP download -q --no-deps --only-binary=:all: --python-version "$PY" $PIP_PLATFORMS -d "$STAGE" tritonclient==2.51.0
  (cd "$STAGE" && python3 -m zipfile -e tritonclient-2.51.0-*.whl tc >/dev/null 2>&1 || unzip -q tritonclient-2.51.0-*.whl -d tc)
  xz -T0 -"${XZ_LEVEL:-9}" -c "$STAGE"/tc/tritonclient-2.51.0.data/data/bin/perf_analyzer > "$OUT/perf_analyzer.xz"
fi

{
  echo "hps triton GPU pack, built $(date -u '+%Y-%m-%d %H:%M UTC') from $PYTRITON_SITE for Python $PY"
  echo "libraries kept: $(printf '%s ' "${!KEEP[@]}")"
  echo "libraries dropped (no binary above loads them): $DROPPED"
  (cd "$OUT" && find . -type f ! -name MANIFEST -printf '%s %p\n' | sort -k2)
} > "$OUT/MANIFEST"
total=$(du -sb "$OUT" | cut -f1)
echo "pack.sh: $OUT holds $((total / 1048576)) MiB:"
(cd "$OUT" && ls -la triton.tar.xz wheels/* perf_analyzer.xz 2>/dev/null)
if [ "$total" -gt $((MAX_MB * 1048576)) ]; then
  echo "pack.sh: $((total / 1048576)) MiB is over MAX_MB=$MAX_MB (the device tool carries 64 MiB with the tree)" >&2
  exit 1
fi
