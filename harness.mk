# The eval harnesses of the README ("Serving models to eval harnesses") against a real
# `germline serve`: lm-evaluation-harness and inspect_ai live in their own environment
# .venv-harness (their CLIs only, not germline), built from requirements-harness.txt (exact
# pins). The test runs in .venv's pytest, which serves a lake made for it and runs the two
# CLIs from .venv-harness/bin as a shell would. The main Makefile includes this fragment; it
# also runs alone: make -f harness.mk test-harness
PYTHON ?= python3.11
HARNESS_VENV := .venv-harness
HARNESS_BIN := $(HARNESS_VENV)/bin
HARNESS_STAMP := $(HARNESS_VENV)/.pins-installed
HARNESS_PIP := $(HARNESS_BIN)/pip install --quiet --disable-pip-version-check
# The harnesses are required here: a missing or broken one fails the run instead of skipping.
HARNESS_ENV := GERMLINE_HARNESS_BIN=$(abspath $(HARNESS_BIN)) GERMLINE_REQUIRE_HARNESS=1

# What lock-harness resolves: lm-eval with its API models (local-completions and
# local-chat-completions), the tokenizer they count context tokens with (transformers, no
# torch: lm-eval 0.4.13 needs torch only for its in-process `hf` models), and inspect_ai with
# the openai client its openai-api provider talks through.
HARNESS_TOP := 'lm-eval[api]==0.4.13' inspect-ai==0.3.285 'transformers>=4.45' 'openai>=1.60'

.PHONY: setup-harness test-harness lock-harness clean-harness

# Built from scratch whenever the pins change (with --no-deps, pip would never remove a
# package that an older pin set left behind).
$(HARNESS_STAMP): requirements-harness.txt
	rm -rf $(HARNESS_VENV)
	$(PYTHON) -m venv $(HARNESS_VENV)
	$(HARNESS_PIP) --no-deps -r requirements-harness.txt
	@touch $@

setup-harness: $(HARNESS_STAMP)

test-harness: $(HARNESS_STAMP) $(STAMP)
	$(HARNESS_ENV) $(or $(BIN),.venv/bin)/pytest tests/test_harness.py

# Re-resolve the pins: install the top-level set with its dependencies and freeze it, keeping
# this file's header comment. torch must not come in (an unpinned one is a multi-GB CUDA build).
lock-harness:
	rm -rf .venv-harness-lock
	$(PYTHON) -m venv .venv-harness-lock
	.venv-harness-lock/bin/pip install --quiet --disable-pip-version-check $(HARNESS_TOP)
	grep '^#' requirements-harness.txt > requirements-harness.txt.new
	.venv-harness-lock/bin/pip freeze --exclude-editable --disable-pip-version-check \
		>> requirements-harness.txt.new
	! grep -qi '^torch==' requirements-harness.txt.new
	mv requirements-harness.txt.new requirements-harness.txt
	rm -rf .venv-harness-lock

clean-harness:
	rm -rf $(HARNESS_VENV)
