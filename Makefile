# internvideo-fast: `make demo` and `make test` set up everything from nothing (.venv, torch, the build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS_STAMP := $(VENV)/.ivf-deps
REQUIREMENTS := requirements/constraints.txt requirements/build.txt requirements/runtime.txt requirements/test.txt
PYTEST_JOBS ?= 2

.PHONY: demo demo-downstream test bench gpu-check gpu-dali device-kit build deps ffmpeg aot-check cuda-resources clean

demo: build
	$(PY) -m internvideo_fast.cli demo

# The downstream tasks' demos on generated data, each printing its metric against chance (one thread:
# their tiny models lose more to thread synchronization on shared cores than they gain).
demo-downstream: build
	for task in tal open_set stal vqa; do OMP_NUM_THREADS=1 $(PY) -m internvideo_fast.cli demo --task $$task || exit 1; done

# The AOT check of each kernel's default plan is part of `make test`; the sweep of every config is not.
test: build
	$(PY) -m pytest tests -n $(PYTEST_JOBS) -m "not aot_sweep" --durations=10

bench: build
	cd bench && ../$(PY) -m pytest . -p no:xdist -p no:cacheprovider -o python_files='bench_*.py' \
	  --benchmark-only --benchmark-group-by=group --benchmark-columns=min,median,mean,rounds --benchmark-sort=name

# For a GPU machine with its own Python/torch/triton: no venv, no downloads (bench/gpu_check.py).
# Here (DRY_RUN=1) it uses .venv's Python when there is one.
gpu-check:
	$(if $(wildcard $(PY)),$(PY),python3) bench/gpu_check.py $(if $(DRY_RUN),--dry-run)

# DALI on the GPU (bench/gpu_dali.py): installs the device kit's parts, runs the DALI GPU tests, the loader
# and loader-fed training benchmarks into $OUT; DRY_RUN=1 proves it on CPU.
gpu-dali:
	$(if $(wildcard $(PY)),$(PY),python3) bench/gpu_dali.py $(if $(DRY_RUN),--dry-run)

# What an offline GPU machine lacks (DALI for Python 3.12, its dependencies, PyAV, encoded clips), in parts of
# PART_MIB (default 56) MiB with SHA256SUMS, in build/device-kit/parts/ (bench/device_kit.py; pip download).
device-kit: deps
	$(PY) bench/device_kit.py build $(if $(PART_MIB),--part-mib $(PART_MIB))

# ptxas resource use of every CUDA kernel for sm_90a (no GPU needed).
cuda-resources: build
	$(PY) bench/cuda_resources.py | tee bench/results/cuda-resources-sm90a.txt

# Every Triton kernel at every config and variant compiled for sm_90a, with the instruction budgets (no GPU
# needed; 10-25 minutes on two cores with a cold Triton cache). `ivf aot-check` prints the same check as a table.
aot-check: build
	$(PY) -m pytest tests/test_aot_sm90.py -m aot_sweep -p no:xdist --durations=5

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
	rm -rf build internvideo_fast/_C*.so internvideo_fast/_build_info.json
