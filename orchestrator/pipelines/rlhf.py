"""RLHF: PPO with a critic (``algorithm.estimator=gae``) or critic-free GRPO / RLOO / REINFORCE++.

One step, as on paper:
  1. sample ``n_samples`` responses per prompt from the current policy (rollout engines; with
     ``rollout.asynchronous`` they were sampled by the previous step's policy while it trained, and the
     engine's sampling log-probs are the old policy of the ratio: ``rollout/staleness`` = 1);
  2. score them (reward actor), and get reference, old-policy log-probs and values (concurrently;
     a pass no term reads is skipped: ``orchestrator/algorithms/passes.py``);
  3. KL to the reference as a per-token reward penalty (``kl_mode=reward``) or a loss term (``loss``);
  4. advantages from the named estimator; 5. clipped-surrogate policy (and value) updates;
  6. push the new weights into every rollout engine; log the step.
Assumes a causal LM policy whose tokenizer has a pad or eos token. Sequence rewards only (the
reward is given at the last response token). The KL reported (``kl``) is the per-sequence sum of
``log pi - log pi_ref`` over response tokens, averaged over the batch (absent when no KL term is used).
"""

from __future__ import annotations

import math

import torch

from orchestrator.ahead import OneAhead
from orchestrator.algorithms import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, make_kl_controller, masked_whiten
from orchestrator.algorithms.advantages import check_finite_advantages
from orchestrator.batching import pack_samples, with_fields
from orchestrator.data import PromptLoader
from orchestrator.loop import train
from orchestrator.placement import rlhf_roles
from orchestrator.prompts import load_prompt_data, prepare_prompts, prompt_ids, reward_prompts
from orchestrator.roles import RLHFRoles
from orchestrator.run import RunContext
from orchestrator.weight_sync import make_weight_sync


def step_metrics(scores: dict, mask, kl: float | None, kl_coef: float, policy: dict, critic: dict,
                 generate_s: float, epoch: int, staleness: int) -> dict:
    """The step's metrics row (phase times are added by the run context)."""
    rewards = torch.tensor(scores["reward"])
    n_tokens = float(mask.sum())
    row = {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std(unbiased=False)),
           **{f"{k}/mean": sum(v) / len(v) for k, v in scores.items() if k != "reward"},
           "kl": kl, "kl_coef": kl_coef, "lr": policy.get("lr", 0.0), "entropy": policy.get("entropy", 0.0),
           "loss/policy": policy["loss"],
           "clipfrac": policy.get("clipfrac", 0.0), "response_length/mean": n_tokens / mask.shape[0],
           "tokens_per_second": n_tokens / max(generate_s or 0.0, 1e-9), "epoch": epoch, "rollout/staleness": staleness,
           "train/nonfinite_skips": policy["nonfinite_skips"] + critic.get("nonfinite_skips", 0)}
    if critic:
        row["loss/value"] = critic["loss"]
    if generate_s is None:  # asynchronous: the step waits for only part of the generation
        del row["tokens_per_second"]
    if kl is None:  # no reference pass: no KL to report
        del row["kl"], row["kl_coef"]
    return row


def evaluate(roles: RLHFRoles, ctx: RunContext, seed: int) -> dict:
    """Greedy responses to the held-out prompts, scored by the reward actor."""
    samples = roles.generate(prompt_ids(ctx.eval_rows), 1, seed, greedy=True)
    scores = roles.score(reward_prompts(ctx.eval_rows, 1), [ctx.decode(s["response_ids"]) for s in samples])
    return {"eval/reward/mean": sum(scores["reward"]) / len(samples),
            "eval/response_length/mean": sum(len(s["response_ids"]) for s in samples) / len(samples)}


def run(cfg) -> dict:
    """Train the policy for ``trainer.max_steps`` steps; returns the last step's metrics."""
    a = cfg.algorithm
    with RunContext(cfg, load_prompt_data, prepare_prompts) as ctx:
        roles = RLHFRoles(cfg, ctx.model_path, ctx.place(rlhf_roles(cfg)))
        sync = make_weight_sync(cfg, roles.policy, roles.rollouts)
        estimator = ADVANTAGE_ESTIMATORS.get(a.estimator)
        kl_fn = KL_ESTIMATORS.get(a.kl_estimator)
        kl_ctl = make_kl_controller(a.kl_coef, a.kl_target, a.kl_horizon)
        loader = PromptLoader(ctx.train_rows, cfg.trainer.rollout_batch_size, cfg.seed)
        # rollout.asynchronous: step n+1's batch is sampled (by the weights of step n-1) while step n trains
        stream = OneAhead(loader, lambda rows, n: roles.rollouts.submit(
            prompt_ids(rows), a.n_samples, seed=cfg.seed * 1_000_000_007 + n * 1_000_003),
            roles.rollouts.collect, cfg.rollout.asynchronous, cfg.trainer.max_steps)

        def step(n: int) -> tuple[dict, tuple]:
            with ctx.phase("generate"):
                rows, samples, early, epoch = stream.next(n)
                staleness = int(early)  # policy updates between the sampling weights and the trained ones
            batch = pack_samples(samples, ctx.pad_id, cfg.rollout.temperature)
            mask = batch["response_mask"]
            # reward, reference log-probs, old log-probs and values: concurrently, each timed
            responses = [ctx.decode(s["response_ids"]) for s in samples]
            scores, ref_logp, old_logp, values, seconds = roles.score_and_logprobs(
                batch, reward_prompts(rows, a.n_samples), responses)
            if "sampling_logprobs" in batch:  # asynchronous: the ratio is against the policy that sampled
                old_logp = batch.pop("sampling_logprobs")
            ctx.times.update({f"time/{k}": v for k, v in seconds.items()})
            rewards = torch.tensor(scores["reward"])

            penalty = torch.zeros_like(mask)
            if a.kl_mode == "reward" and ref_logp is not None:  # old_logp is there too (algorithms/passes.py)
                penalty = kl_ctl.coef * kl_fn(old_logp, ref_logp) * mask
            advantages, returns = estimator(rewards, penalty, mask, values, a.n_samples, a.gamma, a.lam)
            if a.estimator == "gae" and a.whiten_advantages:
                advantages = masked_whiten(advantages, mask) * mask
            check_finite_advantages(advantages, returns, scores["reward"], n)

            train_batch = with_fields(batch, old_logprobs=old_logp, ref_logprobs=ref_logp, advantages=advantages,
                                      returns=returns, old_values=values, kl_coef=kl_ctl.coef)
            with ctx.phase("train"):
                policy_stats = roles.policy.train(train_batch, a.ppo_epochs, seed=cfg.seed + n)
                critic_stats = roles.critic.train(train_batch, a.ppo_epochs, seed=cfg.seed + n) if roles.critic else {}
            with ctx.phase("generate"):  # asynchronous: the next batch's generation, if it is still running
                roles.rollouts.settle(stream.in_flight)
            with ctx.phase("weight_sync"):
                sync.push()

            seq_kl = None  # per-sequence KL to the reference before the update (None: no KL term)
            if ref_logp is not None:  # without an old-log-prob pass the training forward measured it
                seq_kl = (float(((old_logp - ref_logp) * mask).sum(-1).mean()) if old_logp is not None
                          else policy_stats.get("kl", math.nan))
                if math.isfinite(seq_kl):
                    kl_ctl.update(seq_kl, len(samples))
            metrics = step_metrics(scores, mask, seq_kl, kl_ctl.coef, policy_stats, critic_stats,
                                   None if cfg.rollout.asynchronous else ctx.times["time/generate"], epoch, staleness)
            return metrics, (policy_stats, critic_stats)

        return train(ctx, step, groups=roles.trainer_groups(), state={"loader": stream, "kl_controller": kl_ctl},
                     final=roles.policy, evaluate=lambda: evaluate(roles, ctx, cfg.seed), on_resume=sync.push)
