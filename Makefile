# The two commands of the README, and what they stand on. `make` needs only python3.11 and
# the package index: the environment is built in .venv from requirements.lock (exact pins).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.germline-installed

.PHONY: setup demo test lint lock clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)

# The main job: the panel experiment on an embedded local Ray, in ./lake (LAKE=... for another).
LAKE ?= lake
demo: $(STAMP)
	$(BIN)/germline --lake $(LAKE) run experiments/panel.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The whole suite, then the vLLM engine and `generate` on it, in their own environment (vllm.mk).
test: lint
	$(BIN)/pytest
	$(MAKE) test-vllm

# Re-resolve the pins from pyproject.toml (torch, when it comes, is pinned to the CPU build
# that lies on the machine, so no CUDA build is ever pulled).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	.venv-lock/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	.venv-lock/bin/pip freeze --exclude-editable --disable-pip-version-check > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV)

# The vLLM engine's environment and tests (after the targets above: `make` alone still sets up).
include vllm.mk
