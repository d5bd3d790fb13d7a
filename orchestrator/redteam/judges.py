"""The red-team judge: harm scores in [0, 1] for (attack, response) pairs.

``redteam.judge`` takes three forms:

- ``FILE.py:NAME``: ``NAME(prompts, responses) -> list[float]``, loaded and called by a reward actor
  (``workers/reward.py``, the same loading, time limit and checks as ``reward.function``);
- a sequence-classification model folder (one output): harm = sigmoid of its score, from a reward actor;
- ``constitution``: the first principle of ``cai.constitution`` asks the feedback model
  (``cai.feedback.model_path``, default the target) which is less harmful, the response or a plain
  refusal, in both orders (CAI's feedback actor and ``orchestrator/algorithms/feedback.py``);
  harm = P(the refusal is the less harmful one).

Scores of the wrong count, NaN, or outside [0, 1] stop the run with one line naming the judge.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

from orchestrator import constitution as con
from orchestrator.errors import ConfigError, RewardError
from orchestrator.inputs import resolve_data_path
from orchestrator.placement import RoleSpec, role_specs
from orchestrator.rewards.loader import check_reward_file, check_scores
from orchestrator.runtime import wait
from orchestrator.specs import ProcessSpec, RewardSpec

REFUSAL = "I'm sorry, but I can't help with that."  # the constitution judge's point of comparison


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


def judge_roles(cfg) -> list[RoleSpec]:
    """The placement role of the judge: ``feedback`` for the constitution, else ``judge`` (the reward section's CPUs)."""
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


class Judge:
    """The judge's actor (started at once; ``ready`` waits for it) and its harm scores."""

    def __init__(self, cfg, target_path: str, placement):
        from orchestrator.roles import feedback_actor, remote_class, restarted_by_ray

        self.cfg, self.judge, self.kind = cfg, cfg.redteam.judge, judge_kind(cfg.redteam.judge)
        self.timeout_s = cfg.cluster.call_timeout_s
        if self.kind == "constitution":
            self.principle = con.load_constitution(resolve_data_path(cfg.cai.constitution))[0]
            self.actor = feedback_actor(cfg, cfg.cai.feedback.model_path or target_path, placement)
            return
        function, model = (self.judge, None) if self.kind == "function" else (None, self.judge)
        spec = RewardSpec(ProcessSpec.of(cfg), function=function, model_path=model,
                          import_timeout_s=cfg.reward.import_timeout_s, batch_size=cfg.reward.batch_size,
                          max_length=cfg.rollout.max_model_len)
        self.actor = (remote_class("RewardWorker").options(name=f"judge-{uuid.uuid4().hex[:6]}", **restarted_by_ray(cfg),
                                                           **placement.options("judge"))
                      .remote(spec, None))

    def ready(self) -> None:
        wait(self.actor.ready.remote(), "judge (start-up)", self.timeout_s)

    def harm(self, prompts: list[str], responses: list[str]) -> list[float]:
        """One harm score in [0, 1] per response."""
        if not responses:
            return []
        if self.kind == "constitution":
            return check_harm(self._constitution(prompts, responses), self.judge)
        scores = wait(self.actor.score.remote(prompts, responses), "judge (score)", self.timeout_s)["reward"]
        scores = check_scores(scores, len(responses), f"redteam.judge={self.judge!r}")
        if self.kind == "classifier":
            scores = [1.0 / (1.0 + math.exp(-s)) for s in scores]
        return check_harm(scores, self.judge)

    def _constitution(self, prompts: list[str], responses: list[str]) -> list[float]:
        from orchestrator.algorithms.feedback import first_preferred_probability

        p = self.principle
        questions = [con.comparison_question(q, r, REFUSAL, p) for q, r in zip(prompts, responses)]
        questions += [con.comparison_question(q, REFUSAL, r, p) for q, r in zip(prompts, responses)]
        logps = wait(self.actor.option_logprobs.remote(questions, ["A", "B"]), "judge (feedback option logprobs)",
                     self.timeout_s)
        n = len(responses)
        response_less_harmful = first_preferred_probability(logps[:n], logps[n:])
        return [float(1.0 - q) for q in response_less_harmful.tolist()]
