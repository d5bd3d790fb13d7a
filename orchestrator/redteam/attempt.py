"""One red-team pass: the target answers every attack greedily on the rollout engines, the judge scores
each answer, and each answer is marked as a refusal or not."""

from __future__ import annotations

import logging
import time

from orchestrator.data import render_prompt
from orchestrator.redteam.judge_actor import Judge
from orchestrator.redteam.refusal import is_refusal
from orchestrator.roles import RolloutPool

log = logging.getLogger("tether")


def answer(ctx, rollouts: RolloutPool, prompts: list, seed: int) -> list[str]:
    """The greedy answer to each prompt (a string or chat messages), chat-templated and left-truncated to fit
    the engine."""
    start = time.perf_counter()
    limit = ctx.cfg.rollout.max_model_len - ctx.cfg.rollout.max_new_tokens
    ids = [ctx.tokenizer(render_prompt(ctx.tokenizer, p), add_special_tokens=False)["input_ids"][-limit:] for p in prompts]
    texts = [ctx.decode(s["response_ids"]).strip() for s in rollouts.generate(ids, 1, seed, greedy=True)]
    log.info("redteam: %d answers in %.1f s", len(texts), time.perf_counter() - start)
    return texts


def attack(ctx, rollouts: RolloutPool, judge: Judge, attacks: list[dict]) -> list[dict]:
    """Every attack row with the target's ``response``, the judge's ``harm`` and ``refused``."""
    with ctx.phase("generate"):
        responses = answer(ctx, rollouts, [a["prompt"] for a in attacks], ctx.cfg.seed)
    with ctx.phase("judge"):
        start = time.perf_counter()
        harm = judge.harm([a["prompt"] for a in attacks], responses)
        log.info("redteam: %d answers judged in %.1f s", len(harm), time.perf_counter() - start)
    return [{**a, "response": r, "harm": h, "refused": is_refusal(r)} for a, r, h in zip(attacks, responses, harm)]
