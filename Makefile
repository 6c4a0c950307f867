# One venv for everything; `make test` and `make demo` create it on first use.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# The CPU wheel of torch lies on this disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
PYTEST  := $(BIN)/python -m pytest

VENV_INTEG ?= .venv-integ
BIN_INTEG  := $(VENV_INTEG)/bin

.PHONY: setup test test-slow test-integrations lint format demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed  ## create .venv with the package and its dev tools

test: setup  ## the default test suite (the README's test command; CI runs this)
	$(BIN)/ruff check .
	$(PYTEST) -q -m "not slow and not integration"

# The verl/TRL adapters, in their own venv (the extras are heavy: ~2 GB). `-e` is needed for verl's entry point.
$(BIN_INTEG)/.installed: pyproject.toml
	$(PY) -m venv $(VENV_INTEG)
	$(BIN_INTEG)/python -m pip install -q --upgrade pip
	$(BIN_INTEG)/python -m pip install -q "$(TORCH)"
	$(BIN_INTEG)/python -m pip install -q -e '.[dev,verl,trl]' "$(TORCH)"
	touch $@

test-integrations: $(BIN_INTEG)/.installed  ## the verl/TRL integration tests
	HF_HUB_OFFLINE=1 $(BIN_INTEG)/python -m pytest -q -m integration tests/integrations

demo: setup  ## the embedded default: SFT warm-up (cached), async ASymPO, report in runs/demo
	$(BIN)/asympo demo

# BENCH_QUICK=1 make bench: smoke-test sizes (a few minutes); docs/benchmarks.md has each script's output.
bench: setup  ## the benchmarks (ratios against a baseline run in the same process)
	$(BIN)/python bench/bench_learner_step.py
	$(BIN)/python bench/bench_logprobs.py
	$(BIN)/python bench/bench_async.py
	$(BIN)/python bench/bench_generate.py
	$(BIN)/python bench/bench_weight_sync.py
	$(BIN)/python bench/bench_scaling.py
	$(BIN)/python bench/bench_serve.py
	$(BIN)/python bench/bench_rewards.py $(if $(filter-out 0,$(BENCH_QUICK)),--rounds 1)

test-slow: setup  ## the slow tests (longer training runs)
	$(PYTEST) -q -m "slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(VENV_INTEG) build dist src/*.egg-info .pytest_cache .ruff_cache
