"""Masked reductions and the policy / value / KL loss terms.

All per-token tensors are ``[B, T]`` over response tokens; ``mask`` is ``[B, T]`` (float or bool)
with 1 marking a real response token. Losses are averaged over real tokens of the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from orchestrator.algorithms import kl as _kl  # noqa: F401  (registers the KL estimators)
from orchestrator.algorithms.registry import KL_ESTIMATORS, POLICY_LOSSES


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over entries where ``mask`` is 1 (over all dims, or along ``dim``).

    A reduction with no real entries returns 0 instead of NaN.
    """
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp_min(1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` with mean and (biased) variance over masked entries.

    Positions where ``mask`` is 0 are transformed too but are meaningless: callers multiply the
    result by ``mask``.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution given by ``logits`` ``[B, T, V]`` -> ``[B, T]``.

    Computed in float32 as ``logsumexp(z) - sum(softmax(z) * z)``; logits must be finite.
    """
    z = logits.float()
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)


@POLICY_LOSSES.register("ppo")
def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate policy loss.

    ``ratio = exp(logp - old_logp)``; per token the loss is
    ``max(-A * ratio, -A * clip(ratio, 1 - clip_eps, 1 + clip_eps))``, averaged over real tokens.
    Returns ``(loss, stats)`` where stats holds python floats: ``clipfrac`` (fraction of real
    tokens where the clipped term was selected) and ``approx_kl`` (masked mean of
    ``0.5 * (logp - old_logp)**2``).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
        approx_kl = masked_mean(0.5 * log_ratio.detach() ** 2, mask)
    return loss, {"clipfrac": float(clipfrac), "approx_kl": float(approx_kl)}


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
) -> Tensor:
    """Clipped value loss ``0.5 * masked_mean(max((v - R)^2, (v_clip - R)^2))``.

    ``v_clip = old_values + clamp(values - old_values, -clip_eps, clip_eps)`` keeps the new value
    estimate within ``clip_eps`` of the one used when the batch was collected.
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    err = (values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)


def kl_loss_term(logp: Tensor, ref_logp: Tensor, mask: Tensor, estimator: str = "k3") -> Tensor:
    """Masked mean of the named KL estimator, for the KL-as-a-loss-term mode.

    An unknown ``estimator`` raises :class:`ConfigError` listing the valid names.
    """
    return masked_mean(KL_ESTIMATORS.get(estimator)(logp, ref_logp), mask)
