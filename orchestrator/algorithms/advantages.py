"""Advantage estimators.

Every estimator is registered in :data:`ADVANTAGE_ESTIMATORS` and has the same signature::

    fn(rewards, kl_penalty, mask, values, group_size, gamma, lam) -> (advantages, returns)

* ``rewards``: ``[B]`` sequence-level scalar rewards.
* ``kl_penalty``: ``[B, T]`` per-token KL penalty already multiplied by the KL coefficient (all
  zeros when KL is used as a loss term instead).
* ``mask``: ``[B, T]`` (float or bool), 1 on real response tokens.
* ``values``: ``[B, T]`` critic values, or None for critic-free estimators.
* ``group_size``: samples per prompt; the samples of one prompt are contiguous rows, so
  ``B = num_prompts * group_size``.
* ``gamma`` / ``lam``: discount and GAE lambda (ignored by estimators that do not use them).

Both outputs are ``[B, T]`` and zero at masked-out positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from orchestrator.algorithms.losses import masked_whiten
from orchestrator.algorithms.registry import ADVANTAGE_ESTIMATORS
from orchestrator.errors import NumericalError

GROUP_STD_EPS = 1e-6
LARGE_REWARD = 1e15  # rewards past this overflow float32 batch statistics (squares pass 3.4e38) in large batches


def check_finite_advantages(advantages: Tensor, returns: Tensor, rewards: list[float], step: int) -> None:
    """NumericalError (one line, naming the rewards) when the advantages or returns an estimator
    computed from the finite ``rewards`` of ``step`` are not finite: otherwise every update of the
    step is skipped as a "non-finite loss" and the run stops later blaming the loss."""
    bad = [name for name, t in (("advantages", advantages), ("returns", returns)) if not bool(torch.isfinite(t).all())]
    if not bad:
        return
    low, high = min(rewards), max(rewards)
    why = (f"rewards this large overflow float32 (at most 3.4e38, and squared for normalisation); scale the "
           f"reward down (|reward| < {LARGE_REWARD:g})" if max(-low, high) >= LARGE_REWARD else
           "the rewards are moderate, so the KL penalty or the critic's values were not finite")
    raise NumericalError(f"{' and '.join(bad)} are not finite: the rewards of step {step} range over "
                         f"[{low:g}, {high:g}]; {why}")


def _check_shapes(rewards: Tensor, kl_penalty: Tensor, mask: Tensor) -> None:
    if kl_penalty.dim() != 2 or mask.shape != kl_penalty.shape:
        raise ValueError(
            f"kl_penalty and mask must both be [B, T], got {tuple(kl_penalty.shape)} "
            f"and {tuple(mask.shape)}"
        )
    if rewards.shape != kl_penalty.shape[:1]:
        raise ValueError(
            f"rewards must be [B]={tuple(kl_penalty.shape[:1])}, got {tuple(rewards.shape)}"
        )


def token_rewards(rewards: Tensor, kl_penalty: Tensor, mask: Tensor) -> Tensor:
    """Per-token rewards ``-kl_penalty``, plus each row's reward on its last real token.

    Rows with no real token get no reward. The result is zero at masked-out positions.
    """
    _check_shapes(rewards, kl_penalty, mask)
    m = mask.to(kl_penalty.dtype)
    r = -kl_penalty * m
    batch, length = m.shape
    positions = torch.arange(1, length + 1, device=m.device)
    last = (m.long() * positions).argmax(dim=-1)  # index of the last real token of each row
    has_tokens = m.sum(dim=-1) > 0
    rows = torch.arange(batch, device=m.device)[has_tokens]
    r[rows, last[has_tokens]] += rewards[has_tokens].to(r.dtype)
    return r


def _discounted_returns(r: Tensor, m: Tensor, gamma: float) -> Tensor:
    """``G_t = r_t + gamma * G_{t+1}`` over real tokens only (masked positions are skipped)."""
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        g = r[:, t] + gamma * running
        running = m[:, t] * g + (1.0 - m[:, t]) * running
        out[:, t] = g * m[:, t]
    return out


def _group_scores(
    rewards: Tensor, kl_penalty: Tensor, mask: Tensor, group_size: int
) -> tuple[Tensor, Tensor]:
    """Sequence scores ``rewards - sum_t(kl_penalty * mask)`` reshaped to ``[num_groups, G]``."""
    _check_shapes(rewards, kl_penalty, mask)
    batch = rewards.shape[0]
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group-based estimators, got {group_size}")
    if batch % group_size != 0:
        raise ValueError(f"group_size={group_size} does not divide the batch size {batch}")
    m = mask.to(kl_penalty.dtype)
    scores = rewards.to(kl_penalty.dtype) - (kl_penalty * m).sum(dim=-1)
    return scores.view(-1, group_size), m


@ADVANTAGE_ESTIMATORS.register("gae")
def gae(
    rewards: Tensor,
    kl_penalty: Tensor,
    mask: Tensor,
    values: Tensor | None,
    group_size: int,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation with a critic.

    Token rewards are ``-kl_penalty`` plus the sequence reward on the last real token.
    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (the value after the last real token is 0) and
    ``A_t = delta_t + gamma * lam * A_{t+1}``; ``returns = A + V``. Masked positions are
    skipped. The advantages are NOT whitened here; the caller may whiten them.
    ``values`` is required (ValueError if None); ``group_size`` is ignored.
    """
    if values is None:
        raise ValueError("the 'gae' advantage estimator needs critic values, got None")
    r = token_rewards(rewards, kl_penalty, mask)
    m = mask.to(r.dtype)
    v = values.to(r.dtype) * m
    advantages = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv = delta + gamma * lam * next_adv
        next_adv = m[:, t] * adv + (1.0 - m[:, t]) * next_adv
        next_value = m[:, t] * v[:, t] + (1.0 - m[:, t]) * next_value
        advantages[:, t] = adv * m[:, t]
    returns = (advantages + v) * m
    return advantages, returns


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
def reinforce_pp(
    rewards: Tensor,
    kl_penalty: Tensor,
    mask: Tensor,
    values: Tensor | None,
    group_size: int,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Critic-free REINFORCE with batch-whitened discounted returns.

    Token rewards as in ``gae``; ``returns_t`` is the ``gamma``-discounted sum of token rewards
    from ``t`` to the end of the row; advantages are the returns whitened over all real tokens of
    the batch. ``values``, ``group_size`` and ``lam`` are ignored.
    """
    r = token_rewards(rewards, kl_penalty, mask)
    m = mask.to(r.dtype)
    returns = _discounted_returns(r, m, gamma)
    advantages = masked_whiten(returns, m) * m
    return advantages, returns


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo(
    rewards: Tensor,
    kl_penalty: Tensor,
    mask: Tensor,
    values: Tensor | None,
    group_size: int,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Group-normalised sequence scores broadcast to every real token.

    ``s_i = rewards_i - sum_t(kl_penalty_i,t)`` over real tokens; within each group of
    ``group_size`` contiguous rows, ``A_i = (s_i - mean) / (std + 1e-6)`` where ``std`` is the
    population standard deviation (divides by ``group_size``, not ``group_size - 1``).
    ``returns = advantages``. ``group_size`` must be >= 2 and divide B (ValueError otherwise).
    ``values``, ``gamma`` and ``lam`` are ignored.
    """
    scores, m = _group_scores(rewards, kl_penalty, mask, group_size)
    mean = scores.mean(dim=-1, keepdim=True)
    std = scores.std(dim=-1, correction=0, keepdim=True)
    seq_adv = ((scores - mean) / (std + GROUP_STD_EPS)).reshape(-1)
    advantages = seq_adv[:, None] * m
    return advantages, advantages.clone()


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo(
    rewards: Tensor,
    kl_penalty: Tensor,
    mask: Tensor,
    values: Tensor | None,
    group_size: int,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Leave-one-out baseline: ``A_i = s_i - mean of the other scores in the group``.

    Scores as in ``grpo``; ``A_i = s_i - (sum_group - s_i) / (group_size - 1)`` broadcast to
    every real token; ``returns = advantages``. ``group_size`` must be >= 2 and divide B.
    ``values``, ``gamma`` and ``lam`` are ignored.
    """
    scores, m = _group_scores(rewards, kl_penalty, mask, group_size)
    total = scores.sum(dim=-1, keepdim=True)
    seq_adv = (scores - (total - scores) / (group_size - 1)).reshape(-1)
    advantages = seq_adv[:, None] * m
    return advantages, advantages.clone()
