# The two commands of the README, and what they stand on. `make` needs only python3.11 and
# the package index: the environment is built in .venv from requirements.lock (exact pins).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.germline-installed

.PHONY: setup demo test test-main environments test-faults test-e2e lint lock clean browser

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
# The explorer's browser tests (tests/test_ui.py) need Debian's chromium (see `browser`).
# The fault suite runs here too, but for its training test (a minute; tests/test_train.py
# already kills and resumes a training run): `make test-faults` runs all four.
# The vLLM and harness environments are built while the main suite runs (the suite waits
# mostly on Ray's start-ups): on CI's 2 cores the run ends minutes sooner. pip itself is busy on
# the CPU, byte-compiling what it installs (the main environment: 151 s, 150 CPU-s idle).
test: lint browser
	$(MAKE) --no-print-directory -j2 test-main environments
	$(MAKE) test-vllm
	$(MAKE) test-harness

test-main: $(STAMP)
	GERMLINE_REQUIRE_BROWSER=1 $(BIN)/pytest --deselect \
		tests/test_faults.py::test_train_resumes_from_its_last_checkpoint_when_a_worker_node_dies

environments:
	$(MAKE) --no-print-directory setup-vllm
	$(MAKE) --no-print-directory setup-harness

# Debian's chromium for the explorer's browser tests: installed when missing and make runs as
# root (as on CI's machine), else one line says how. Playwright drives it; nothing downloads a
# browser of its own.
browser:
	@command -v chromium >/dev/null || { test "$$(id -u)" = 0 && export DEBIAN_FRONTEND=noninteractive \
		&& { apt-get install -y -q chromium >/dev/null \
			|| { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } \
		|| { echo "the browser tests need Debian's chromium: apt-get install chromium" >&2; exit 1; }

# The fault suite alone: a Ray worker node killed under generate and train, the Serve model
# pool's replica killed under load, an S3 lake whose server fails requests (tests/test_faults.py).
test-faults: $(STAMP)
	$(BIN)/pytest -m faults tests/test_faults.py

# The README's experiments at their own size (11 min 42 s on 2 idle cores): owl-small submitted
# as a Ray job and the explorer opened on its lake, panel-small end to end. The main suite
# covers each with a smaller run (pytest -m e2e lists them; their docstrings name the cover).
test-e2e: $(STAMP)
	GERMLINE_REQUIRE_BROWSER=1 $(BIN)/pytest -m e2e

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

# The eval harnesses (lm-eval, inspect_ai) against `germline serve`, in .venv-harness.
include harness.mk
