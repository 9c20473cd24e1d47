# Two commands on a fresh machine:  make demo  |  make test
# Each creates what it needs first: .venv (the local side) and .venv-pod (the pod side).

PYTHON ?= python3
VENV := .venv
POD_VENV := .venv-pod
SNAKEMAKE := $(VENV)/bin/snakemake
CORES ?= 2

.PHONY: demo test test-unit test-graph lint bench venvs clean-demo help gpu-wheels gpu-check-cpu

help:
	@echo "make demo   build the whole graph on the embedded sample (tiny model, local CPU) in demo/"
	@echo "make test   run the test suite"
	@echo "make test-unit  the in-process tier only (tests/unit: no subprocess, no .venv-pod; seconds)"
	@echo "make test-graph tests/unit and tests/graph: Snakemake and the command lines, no .venv-pod, no sshd"
	@echo "make lint   snakemake --lint, snakefmt --check, shellcheck, the conda pins (tests/graph/test_lint.py)"
	@echo "make bench  the graph's own work against its floors, one table of ratios in bench/results.md (~10 min)"
	@echo "make gpu-wheels     the wheels the GPU check carries, in .whl/, and the size of one device call"
	@echo "make gpu-check-cpu  the GPU check rehearsed on this CPU, up to what needs CUDA (bench/gpu/README.md)"

venvs: $(VENV)/.installed $(POD_VENV)/.installed

# The package itself goes into both environments editable and without dependencies: each side
# pins its own stack (llamafactory 0.9.5 and mlx-lm 0.32 cannot share transformers).
$(VENV)/.installed: requirements/local.txt requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements/dev.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

$(POD_VENV)/.installed: requirements/pod.txt pyproject.toml
	$(PYTHON) -m venv $(POD_VENV)
	$(POD_VENV)/bin/pip install -q --upgrade pip
	$(POD_VENV)/bin/pip install -q -r requirements/pod.txt
	$(POD_VENV)/bin/pip install -q --no-deps -e .
	touch $@

# A job's `python -m lora_style...` is the python on PATH: the local side's, as in an activated venv.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# The demo runs in its own working directory, so it never touches a real run's results. It ends
# with the report and a block saying where the bundle is and how to use it, here and on a Mac.
DEMO := $(SNAKEMAKE) --snakefile Snakefile --directory demo --configfile=config/demo.yaml

demo: venvs
	$(DEMO) --cores $(CORES) lovecraft_mlx
	$(DEMO) --report $(CURDIR)/demo/report.html lovecraft_mlx
	@$(VENV)/bin/python -m lora_style.report.bundle_help --workdir demo --run lovecraft --report demo/report.html

# The suite in TEST_WORKERS processes (pytest-xdist), each test file whole in one of them (its
# module fixtures: an sshd, a Slurm cluster, a trained run), the longest files first
# (tests/conftest.py's LONGEST_FIRST). Most of a test's time is one core busy or none (a
# training held at a step, a budget or Slurm's one-minute limit running out, a pod booting), so
# on 2 cores 4 workers overlap the waits (each process one thread: tests/conftest.py).
# TEST_WORKERS=0 runs them in this process, one by one.
TEST_WORKERS ?= 4
XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: venvs
	$(VENV)/bin/python -m pytest $(XDIST) --durations=15 $(PYTEST_ARGS)

# The in-process tier: the checks, the plan, costs, estimates, the package's shape. Needs only .venv.
test-unit: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

# The in-process tier and the graph tier: dry and real Snakemake runs, the scripts' command lines,
# MLX on the tiny model. Needs only .venv: no .venv-pod, no sshd, no Slurm (those are tests/pod).
test-graph: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(XDIST) --durations=15 tests/unit tests/graph $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests/graph/test_lint.py

# Reports, gates nothing (not part of `make test`): see bench/run.py and docs/performance.md.
bench: venvs
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

# The 4-bit path on a lent GPU (bench/gpu/README.md). gpu-wheels builds .whl/ (git-ignored; a
# device call names it in carry); gpu-check-cpu runs the same check here on a shrunk model, in a
# Python 3.12 environment standing in for the GPU machine's (bench/gpu/image.txt).
PYTHON312 ?= python3.12
GPU_IMAGE := .venv-gpu-image

gpu-wheels:
	PYTHON=$(PYTHON) bench/gpu/wheels.sh

$(GPU_IMAGE)/.installed: bench/gpu/image.txt
	$(PYTHON312) -m venv $(GPU_IMAGE)
	$(GPU_IMAGE)/bin/pip install -q -r bench/gpu/image.txt
	touch $@

gpu-check-cpu: $(GPU_IMAGE)/.installed
	test -d .whl || $(MAKE) gpu-wheels
	PYTHON=$(GPU_IMAGE)/bin/python GPU_CHECK_SITE=/tmp/gpu-check-site nice -n 19 bench/gpu/check.sh --cpu $(GPU_CHECK_ARGS)

clean-demo:
	rm -rf demo
