# internvideo-fast: `make demo` and `make test` set up everything from nothing (.venv, torch, the build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS_STAMP := $(VENV)/.ivf-deps
REQUIREMENTS := requirements/constraints.txt requirements/build.txt requirements/runtime.txt requirements/test.txt
PYTEST_JOBS ?= 2

.PHONY: demo demo-downstream test bench gpu-check build deps ffmpeg aot-check cuda-resources clean

demo: build
	$(PY) -m internvideo_fast.cli demo

# The downstream tasks' demos on generated data, each printing its metric against chance (one thread:
# their tiny models lose more to thread synchronization on shared cores than they gain).
demo-downstream: build
	for task in tal open_set stal vqa; do OMP_NUM_THREADS=1 $(PY) -m internvideo_fast.cli demo --task $$task || exit 1; done

test: build
	$(PY) -m pytest tests -n $(PYTEST_JOBS) --durations=10

bench: build
	cd bench && ../$(PY) -m pytest . -p no:xdist -p no:cacheprovider -o python_files='bench_*.py' \
	  --benchmark-only --benchmark-group-by=group --benchmark-columns=min,median,mean,rounds --benchmark-sort=name

# For a lent GPU machine with its own Python/torch/triton: no venv, no downloads (bench/gpu_check.py).
# Here (DRY_RUN=1) it uses .venv's Python when there is one.
gpu-check:
	$(if $(wildcard $(PY)),$(PY),python3) bench/gpu_check.py $(if $(DRY_RUN),--dry-run)

# ptxas resource use of every CUDA kernel for sm_90a (no GPU needed).
cuda-resources: build
	$(PY) bench/cuda_resources.py | tee bench/results/cuda-resources-sm90a.txt

aot-check: build
	$(PY) -m internvideo_fast.cli aot-check

# Incremental: CMake rebuilds only what changed (build/cmake-py*).
build: deps
	$(PIP) install -q -e . --no-build-isolation --no-deps -c requirements/constraints.txt

deps: $(DEPS_STAMP) ffmpeg

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): $(REQUIREMENTS) | $(PY)
	$(PIP) install -q -c requirements/constraints.txt torch==2.14.1 triton==3.8.0
	$(PIP) install -q -c requirements/constraints.txt -r requirements/build.txt -r requirements/runtime.txt -r requirements/test.txt
	touch $@

# Debian's ffmpeg: sample clips and torchcodec's decoding libraries.
ffmpeg:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  echo "installing Debian's ffmpeg"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; }

clean:
	rm -rf build internvideo_fast/_C*.so
