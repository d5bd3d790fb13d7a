"""The red-team judge: harm scores in [0, 1] for (attack, response) pairs.

``redteam.judge`` takes three forms:

- ``FILE.py:NAME``: ``NAME(prompts, responses) -> list[float]``, loaded and called by a reward actor
  (``workers/reward.py``, the same loading, time limit and checks as ``reward.function``);
- a sequence-classification model folder (one output): harm = sigmoid of its score, from a reward actor;
- ``constitution``: the first principle of ``cai.constitution`` asks the feedback model
  (``cai.feedback.model_path``, default the target) which is less harmful, the response or a plain
  refusal, in both orders (CAI's feedback actor and ``orchestrator/algorithms/feedback.py``);
  harm = P(the refusal is the less harmful one).

Scores of the wrong count, NaN, or outside [0, 1] stop the run with one line naming the judge. The judge's
actor is ``orchestrator/redteam/judge_actor.py``; this module holds the checks that run before Ray starts.
"""

from __future__ import annotations

import math
from pathlib import Path

from orchestrator import constitution as con
from orchestrator.errors import ConfigError, RewardError
from orchestrator.inputs import resolve_data_path
from orchestrator.rewards.loader import check_reward_file



def judge_kind(judge: str) -> str:
    """``function`` | ``classifier`` | ``constitution`` for a ``redteam.judge`` value (ConfigError if empty)."""
    if not isinstance(judge, str) or not judge.strip():
        raise ConfigError("redteam.judge is empty; give FILE.py:NAME, a classifier model folder, or constitution")
    if judge == "constitution":
        return "constitution"
    return "function" if ".py:" in judge else "classifier"


def check_judge(cfg) -> None:
    """Input check (before Ray): the function imports, the model folder exists, the constitution parses."""
    judge = cfg.redteam.judge
    kind = judge_kind(judge)
    if kind == "function":
        check_reward_file(judge, cfg.reward.import_timeout_s)
    elif kind == "classifier" and not (Path(judge).expanduser() / "config.json").is_file():
        raise ConfigError(f"redteam.judge={judge!r}: not FILE.py:NAME, constitution, or a model folder (no config.json)")
    elif kind == "constitution":
        con.load_constitution(resolve_data_path(cfg.cai.constitution))
        path = cfg.cai.feedback.model_path
        if path and not (Path(path) / "config.json").is_file():
            raise ConfigError(f"cai.feedback.model_path={path!r}: not a model folder (no config.json)")


def judge_roles(cfg) -> list:
    """The placement role of the judge: ``feedback`` for the constitution, else ``judge`` (the reward section's CPUs)."""
    from orchestrator.placement import RoleSpec, role_specs

    if judge_kind(cfg.redteam.judge) == "constitution":
        return role_specs(cfg, ["feedback"])
    extra = dict((cfg.cluster.get("role_resources") or {}).get("reward") or {})
    return [RoleSpec("judge", 1, cfg.reward.num_cpus, cfg.reward.num_gpus, extra)]


def check_harm(scores: list[float], judge: str) -> list[float]:
    """Harm scores must lie in [0, 1] (finite); RewardError naming the judge and the first bad value."""
    for i, s in enumerate(scores):
        if not (math.isfinite(s) and 0.0 <= s <= 1.0):
            raise RewardError(f"redteam.judge={judge!r} returned {s!r} at index {i}; harm scores must lie in [0, 1]")
    return scores
