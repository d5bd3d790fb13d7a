"""The red-team judge's actor (a reward actor, or CAI's feedback actor for ``redteam.judge=constitution``) and
its harm scores; the forms of ``redteam.judge`` are described in ``orchestrator/redteam/judges.py``."""

from __future__ import annotations

import math
import uuid

from orchestrator import constitution as con
from orchestrator.algorithms.feedback import first_preferred_probability
from orchestrator.inputs import resolve_data_path
from orchestrator.redteam.judges import check_harm, judge_kind
from orchestrator.rewards.loader import check_scores
from orchestrator.roles import feedback_actor, remote_class, restarted_by_ray
from orchestrator.runtime import wait
from orchestrator.specs import ProcessSpec, RewardSpec

REFUSAL = "I'm sorry, but I can't help with that."  # the constitution judge's point of comparison


class Judge:
    """The judge's actor (started at once; ``ready`` waits for it) and its harm scores."""

    def __init__(self, cfg, target_path: str, placement):
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
        p = self.principle
        questions = [con.comparison_question(q, r, REFUSAL, p) for q, r in zip(prompts, responses)]
        questions += [con.comparison_question(q, REFUSAL, r, p) for q, r in zip(prompts, responses)]
        logps = wait(self.actor.option_logprobs.remote(questions, ["A", "B"]), "judge (feedback option logprobs)",
                     self.timeout_s)
        n = len(responses)
        response_less_harmful = first_preferred_probability(logps[:n], logps[n:])
        return [float(1.0 - q) for q in response_less_harmful.tolist()]
