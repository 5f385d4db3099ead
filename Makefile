# normlab: the short verbs. `make train` and `make test` install what they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
ARGS   ?=

# glibc malloc settings that remove most CPU timing noise (README, "Development").
export MALLOC_MMAP_THRESHOLD_ := 33554432
export MALLOC_TRIM_THRESHOLD_ := 68719476736
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast test-all test-cluster sweep bench report results lint format data clean

help: ## list the verbs
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -e ".[dev,bench]"
	touch $(BENCH_STAMP)

install: $(STAMP) ## create .venv and install normlab (editable) with dev extras

train: $(STAMP) ## run the default job (real digits data, CPU); extra overrides via ARGS="..."
	$(BIN)/python train.py $(ARGS)

# The edit loop: the tests marked `fast` (in-process: layers, models, statistics, optimizer,
# config, report; no train.py subprocess). Mark a module with `pytestmark = pytest.mark.fast`,
# a single test with `@pytest.mark.fast` (the marker is declared in pyproject.toml).
test-fast: $(STAMP) ## the tests marked fast (in-process, no train.py subprocesses): about 1.5 minutes on 2 cores
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "fast and not slow" $(ARGS)

test: $(STAMP) ## the test suite CI runs (every test but the slow and cluster ones)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow and not cluster" $(ARGS)

test-all: $(STAMP) ## run every test but the cluster ones, the slow ones too
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not cluster" $(ARGS)

SLURM_LOCAL ?= ../shared/tools/slurm_local.sh
test-cluster: $(STAMP) ## a 2-job sweep under a real SLURM, interrupted every way (starts $(SLURM_LOCAL) as root; ~25 min)
	@if [ -f "$(SLURM_LOCAL)" ] && [ "$$(id -u)" = 0 ]; then bash $(SLURM_LOCAL) start; fi
	SLURM_CONF=$${SLURM_CONF:-/tmp/slurm-local/etc/slurm.conf} NORMLAB_SLURM_LOCAL=$(abspath $(SLURM_LOCAL)) \
		$(BIN)/python -m pytest -q -s -m cluster tests/cluster $(ARGS)

sweep: $(STAMP) ## example multirun: BN vs GN at two batch sizes on digits
	$(BIN)/python train.py -m norm=bn,gn batch_size=4,32 $(ARGS)

bench: $(BENCH_STAMP) ## every benchmark (norms, framework, virtual devices, PreciseBN) -> docs/performance.md
	$(BIN)/python scripts/performance.py $(ARGS)

report: $(STAMP) ## table + plots of a sweep folder: make report ARGS=multirun/<date>/<time>
	$(BIN)/python scripts/report.py $(ARGS)

results: $(STAMP) ## regenerate docs/results.md from the committed run records (ARGS=--publish: first copy them from multirun/; --publish NAME --runs DIR...: add a chunk's finished runs)
	$(BIN)/python scripts/results.py $(ARGS)

data: $(STAMP) ## unpack the shared CIFAR-10 JPEGs into .cache/data
	$(BIN)/python -m normlab.data.shared

lint: $(STAMP) ## ruff check + format check + generated norm configs and README table up to date
	$(BIN)/ruff check src tests scripts train.py eval.py
	$(BIN)/ruff format --check src tests scripts train.py eval.py
	$(BIN)/python -m normlab.norms.catalog

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests scripts train.py eval.py
	$(BIN)/ruff format src tests scripts train.py eval.py

clean: ## remove outputs and caches (keeps .venv)
	rm -rf outputs multirun lightning_logs .pytest_cache .ruff_cache
