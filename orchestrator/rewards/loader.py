"""Load a reward function named ``path/to/file.py:name`` (only from the path the config names)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Callable

from orchestrator.errors import ConfigError, RewardError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_file(path: str) -> Path:
    """A relative path is taken from the current directory, else from the project root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    alt = PROJECT_ROOT / p
    return alt if alt.exists() else p


def load_reward_function(spec: str) -> Callable:
    """Import ``FILE.py:NAME`` and return the callable; ConfigError on any problem."""
    if ":" not in spec:
        raise ConfigError(f"reward.function={spec!r} must look like path/to/file.py:function_name")
    file_part, name = spec.rsplit(":", 1)
    path = resolve_file(file_part)
    if not path.is_file():
        raise ConfigError(f"reward.function={spec!r}: no such file: {file_part}")
    module_name = f"tether_reward_{abs(hash(str(path)))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # user code: report it on one line
        raise ConfigError(f"reward.function={spec!r}: importing {path.name} failed: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"reward.function={spec!r}: {path.name} has no function named {name!r}")
    return fn


def call_reward_function(fn: Callable, spec: str, prompts: list[str], responses: list[str]) -> list[float]:
    """Call a reward function and check it returned one finite number per response."""
    try:
        scores = fn(prompts, responses)
    except Exception as exc:
        raise RewardError(f"reward function {spec} raised {type(exc).__name__}: {exc}") from exc
    try:
        scores = [float(s) for s in scores]
    except (TypeError, ValueError) as exc:
        raise RewardError(f"reward function {spec} must return a list of numbers, got {type(scores).__name__}") from exc
    if len(scores) != len(responses):
        raise RewardError(f"reward function {spec} returned {len(scores)} scores for {len(responses)} responses")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise RewardError(f"reward function {spec} returned a non-finite score at index {bad[0]}")
    return scores
