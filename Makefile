# Two commands on a fresh machine:  make demo  |  make test
# Each creates what it needs first: .venv (the local side) and .venv-pod (the pod side).

PYTHON ?= python3
VENV := .venv
POD_VENV := .venv-pod
SNAKEMAKE := $(VENV)/bin/snakemake
CORES ?= 2

.PHONY: demo test lint bench venvs clean-demo help

help:
	@echo "make demo   build the whole graph on the embedded sample (tiny model, local CPU) in demo/"
	@echo "make test   run the test suite"
	@echo "make lint   snakemake --lint, snakefmt --check, shellcheck, the conda pins (tests/test_lint.py)"
	@echo "make bench  the graph's own work against its floors, one table of ratios in bench/results.md (~10 min)"

venvs: $(VENV)/.installed $(POD_VENV)/.installed

$(VENV)/.installed: requirements/local.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements/dev.txt
	touch $@

$(POD_VENV)/.installed: requirements/pod.txt
	$(PYTHON) -m venv $(POD_VENV)
	$(POD_VENV)/bin/pip install -q --upgrade pip
	$(POD_VENV)/bin/pip install -q -r requirements/pod.txt
	touch $@

# The demo runs in its own working directory, so it never touches a real run's results. It ends
# with the report and a block saying where the bundle is and how to use it, here and on a Mac.
DEMO := $(SNAKEMAKE) --snakefile Snakefile --directory demo --configfile=config/demo.yaml

demo: venvs
	$(DEMO) --cores $(CORES) --printshellcmds lovecraft_mlx
	$(DEMO) --report $(CURDIR)/demo/report.html lovecraft_mlx
	@$(VENV)/bin/python scripts/bundle_help.py --workdir demo --run lovecraft --report demo/report.html

test: venvs
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests/test_lint.py

# Reports, gates nothing (not part of `make test`): see bench/run.py and README "Performance".
bench: venvs
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

clean-demo:
	rm -rf demo
