"""Shared fixtures: one local Ray per test module, the tiny model, a CLI runner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for the module (2 CPUs, no dashboard), shut down afterwards."""
    import ray

    from orchestrator.runtime import actor_env

    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": actor_env()},
             logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """Folder of the default tiny model (built once, cached)."""
    from orchestrator.config import TinyModelConfig
    from orchestrator.models import build_tiny_model

    from dataclasses import asdict

    return str(build_tiny_model(asdict(TinyModelConfig())))


def run_cli(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m orchestrator <overrides>`` as a user would; returns the finished process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "orchestrator", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The ``tether: error:`` line of a failed run (asserting there is exactly one)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tether: error:")]
    assert len(lines) == 1, f"expected one error line, got rc={proc.returncode}\n{proc.stderr[-3000:]}"
    return lines[0]


def interrupted_copy(run: Path, dest: Path, checkpoint_step: int, logged_steps: int, drop=("final",)) -> Path:
    """The output folder a run killed after logging step ``logged_steps`` leaves behind, made from the
    finished ``run``: its checkpoints up to ``checkpoint_step``, its first ``logged_steps`` metrics rows,
    and none of what a run writes only at its end (``drop``: ``final/`` and the like)."""
    from orchestrator import checkpoint

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(*drop))
    for folder in checkpoint.root(dest).glob("step_*"):
        if int(folder.name.split("_")[1]) > checkpoint_step:
            shutil.rmtree(folder)
    assert (checkpoint.root(dest) / f"step_{checkpoint_step:06d}").is_dir(), f"{run}: no checkpoint at step {checkpoint_step}"
    checkpoint.truncate_metrics(dest / "metrics.jsonl", logged_steps)
    steps = [json.loads(r)["step"] for r in (dest / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, logged_steps + 1)), steps
    return dest


class RunsCode:
    """Unpickling this runs ``touch <marker>``: what a tampered checkpoint file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def compose_config(*overrides: str):
    """The config a CLI run with these overrides would get."""
    from hydra import compose, initialize_config_dir

    from orchestrator.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
