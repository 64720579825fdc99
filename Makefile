# bctbench — thin, self-documenting aliases over the `bctbench` CLI (`make help`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

METHOD ?= advbct
BENCH  ?= synth_class30to100
SEED   ?= 0
SEEDS  ?= 0 1 2
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help venv bench bench-all reference reference-plan reference-boards tune tune-all smoke leaderboard reevaluate data test test-all lint format clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-16s %s\n", $$1, $$2}'
	@echo "  variables: METHOD=$(METHOD) BENCH=$(BENCH) SEED=$(SEED) SEEDS='$(SEEDS)'"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install bctbench with dev extras

bench: $(STAMP) ## train (old model cached), evaluate METHOD on BENCH with SEED, print the leaderboard
	$(BIN)/bctbench run --benchmark $(BENCH) --method $(METHOD) --seed $(SEED) $(ARGS)

bench-all: $(STAMP) ## every registered method x SEEDS on BENCH, JOBS at a time (default: auto), then the leaderboard
	$(BIN)/bctbench run-all --benchmark $(BENCH) --seeds $(SEEDS) $(if $(JOBS),--jobs $(JOBS)) $(ARGS)

reference: $(STAMP) ## maintainers: every method x SEEDS into results/reference (clean tree only; ARGS=--force redoes existing ones)
	$(BIN)/bctbench run-all --reference --benchmark $(BENCH) --seeds $(SEEDS) $(ARGS)

reference-plan: $(STAMP) ## maintainers: every run of the reference boards (clean tree only; resumable; ARGS=--list prints the steps)
	PYTHON=$(BIN)/python benchmarks/reference_plan.sh $(ARGS)

reference-boards: $(STAMP) ## maintainers: rebuild results/reference/<bench>/leaderboard.md and plots/ from the committed reference results
	PYTHON=$(BIN)/python benchmarks/reference_boards.sh $(ARGS)

tune: $(STAMP) ## tune METHOD on BENCH's validation sets (writes benchmarks/presets/BENCH/METHOD.yaml; resumable)
	$(BIN)/bctbench tune --benchmark $(BENCH) --method $(METHOD) $(ARGS)

tune-all: $(STAMP) ## tune every method on BENCH, JOBS (default 2) at a time, one thread each; phi* (independent) first
	OMP_NUM_THREADS=1 $(BIN)/bctbench tune --benchmark $(BENCH) --method independent --num-workers 0 --quiet $(ARGS)
	$(BIN)/bctbench methods | awk '{print $$1}' | grep -vx independent | OMP_NUM_THREADS=1 xargs -P $(or $(JOBS),2) -I{} \
		$(BIN)/bctbench tune --benchmark $(BENCH) --method {} --num-workers 0 --quiet $(ARGS)

smoke: $(STAMP) ## every registered method on the tiny smoke benchmark (CPU, CI-sized)
	$(BIN)/bctbench run-all --benchmark smoke --seeds 0 $(ARGS)

leaderboard: $(STAMP) ## leaderboard of BENCH: reference results + yours (results/local), figures, published to W&B (offline run files without an API key)
	$(BIN)/bctbench leaderboard --benchmark $(BENCH) --wandb $(ARGS)

reevaluate: $(STAMP) ## re-score BENCH's finished runs with the spec's current evaluation section
	$(BIN)/bctbench reevaluate --benchmark $(BENCH) $(ARGS)

data: $(STAMP) ## generate the embedded synthetic dataset (cached in the data root)
	$(BIN)/bctbench make-synthetic

test: $(STAMP) ## default test tier (CPU, offline; not slow/gpu/data)
	$(BIN)/python -m pytest -q -m "not slow and not gpu and not data"

test-all: $(STAMP) ## every test tier the machine can run
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## remove caches and build outputs (keeps .venv, data/ and results/)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info lightning_logs
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
