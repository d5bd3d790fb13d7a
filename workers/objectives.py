"""What a trainer rank minimises, by objective: one function per objective,
``fn(model, batch, algorithm) -> (loss, stats)`` (``algorithm``: the run's algorithm section as a
dict). The maths lives in ``orchestrator.algorithms``; these functions run the model forward on a
micro-batch and hand the results to it.

Objectives: ``ppo`` (clipped surrogate policy loss, optional entropy bonus and KL term) and
``value`` (clipped value loss) for RLHF; ``dpo`` (any registered preference loss), ``reward_model``
(Bradley-Terry on pairs) and ``sft`` (response-token NLL) for the offline pipelines. Every stats
dict holds plain floats; ``weight`` (rows or tokens) is how evaluation averages micro-batches.
"""

from __future__ import annotations

import torch

from orchestrator.algorithms import (POLICY_LOSSES, PREFERENCE_LOSSES, PairLogps, PreferenceParams,
                                     bradley_terry_loss, clipped_value_loss, entropy_from_logits,
                                     kl_loss_term, masked_mean, preference_metrics, sft_loss)
from workers.common import gather_logprobs, pair_sequence_logprobs, policy_logits, response_logits, response_tokens


def values(model, b: dict) -> torch.Tensor:
    """Critic values ``[B, T]`` (token-classification head with one label)."""
    return response_logits(model, b)[..., 0]


def ppo(model, b: dict, a: dict):
    """Clipped-surrogate policy loss, minus the entropy bonus, plus the KL term in ``kl_mode=loss``."""
    logits = policy_logits(model, b)
    mask = b["response_mask"]
    logp = gather_logprobs(logits, response_tokens(b))
    old = b.get("old_logprobs")
    if old is None:  # one update per rollout batch: this forward is the old policy (ratio 1)
        old = logp.detach()
    loss, stats = POLICY_LOSSES.get(a["policy_loss"])(logp, old, b["advantages"], mask, a["clip_eps"])
    if a["entropy_coef"]:
        entropy = masked_mean(entropy_from_logits(logits), mask)
        loss = loss - a["entropy_coef"] * entropy
    else:  # a metric only: no backward through a second softmax over [B, T, V] (~0.2 s a micro-batch here)
        with torch.no_grad():
            entropy = masked_mean(entropy_from_logits(logits), mask)
    stats["entropy"] = float(entropy)
    ref = b.get("ref_logprobs")  # None when no KL term reads it
    if ref is not None:  # per-sequence KL of the policy before this update, as the driver reports it
        stats["kl"] = float(((logp.detach() - ref) * mask).sum(-1).mean())
    if a["kl_mode"] == "loss" and ref is not None:  # padding: use ref there so exp(ref - logp) cannot overflow
        kl = kl_loss_term(torch.where(mask.bool(), logp, ref), ref, mask, a["kl_estimator"])
        loss = loss + b["kl_coef"] * kl
        stats["kl_loss"] = float(kl.detach())
    return loss, stats


def value(model, b: dict, a: dict):
    """Clipped value loss of the critic."""
    loss = clipped_value_loss(values(model, b), b["old_values"], b["returns"], b["response_mask"],
                              a["value_clip_eps"])
    return loss, {}


def preference_params(a: dict) -> PreferenceParams:
    """The preference-loss settings of an ``algorithm`` config section."""
    return PreferenceParams(beta=a["beta"], label_smoothing=a["label_smoothing"], simpo_gamma=a["simpo_gamma"],
                            orpo_lambda=a["orpo_lambda"])


def dpo(model, b: dict, a: dict):
    """A preference loss (``algorithm.preference_loss``) on a pair batch; reference log-probs, when the
    loss needs them, come in ``b["ref_logps"]`` ``[B, 2]``."""
    seq, lengths = pair_sequence_logprobs(model, b)
    ref = b.get("ref_logps")
    pairs = PairLogps(chosen=seq[:, 0], rejected=seq[:, 1], chosen_len=lengths[:, 0], rejected_len=lengths[:, 1],
                      ref_chosen=None if ref is None else ref[:, 0], ref_rejected=None if ref is None else ref[:, 1])
    losses, chosen_rewards, rejected_rewards = PREFERENCE_LOSSES.get(a["preference_loss"])(pairs, preference_params(a))
    stats = preference_metrics(losses, chosen_rewards, rejected_rewards, pairs)
    stats["weight"] = float(seq.shape[0])
    return losses.mean(), stats


def reward_model(model, b: dict, a: dict):
    """Bradley-Terry loss of a sequence-classification model on a pair batch (``[B, 2, L]``)."""
    length = b["input_ids"].shape[-1]
    out = model(input_ids=b["input_ids"].reshape(-1, length), attention_mask=b["attention_mask"].reshape(-1, length))
    scores = out.logits[:, 0].float().view(-1, 2)
    loss, stats = bradley_terry_loss(scores[:, 0], scores[:, 1])
    stats["weight"] = float(scores.shape[0])
    return loss, stats


def sft(model, b: dict, a: dict):
    """Mean negative log-likelihood of the response tokens (prompt tokens carry no loss)."""
    logp = gather_logprobs(policy_logits(model, b), response_tokens(b))
    loss, stats = sft_loss(logp, b["response_mask"])
    stats["weight"] = float(b["response_mask"].sum())
    return loss, stats


OBJECTIVES = {"ppo": ppo, "value": value, "dpo": dpo, "reward_model": reward_model, "sft": sft}
