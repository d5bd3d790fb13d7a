"""Pairwise preference losses (DPO family), the Bradley-Terry reward-model loss and the SFT loss.

Conventions: a batch holds ``B`` pairs of responses to the same prompt, one *chosen* and one
*rejected*. Each response enters as the log-probability of its tokens **summed** over the response
(``[B]``), plus its token count so length-normalised variants can average. Every DPO-family loss is
registered by name in :data:`PREFERENCE_LOSSES` and has the signature

    fn(p: PairLogps, params: PreferenceParams) -> (losses [B], chosen_rewards [B], rejected_rewards [B])

The losses are per pair (the caller reduces them, usually with a mean); the rewards are the implicit
rewards the loss works with, for logging. Rewards are returned detached: they are for metrics, the
gradient flows through ``losses`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from orchestrator.algorithms.registry import Registry

PREFERENCE_LOSSES = Registry("preference loss", "algorithm.preference_loss")

# Losses that use only the policy; the pipeline skips the reference forward pass for these.
_REFERENCE_FREE = frozenset({"simpo", "orpo"})


@dataclass
class PairLogps:
    """Summed log-probabilities of the chosen and rejected responses of ``B`` pairs.

    ``chosen_len`` / ``rejected_len`` count response tokens (float, at least 1). ``ref_chosen`` and
    ``ref_rejected`` are the reference model's summed log-probs; they may be ``None`` for the
    reference-free losses (``simpo``, ``orpo``).
    """

    chosen: Tensor  # [B] policy log-prob of the chosen response, summed over its tokens
    rejected: Tensor  # [B] policy log-prob of the rejected response, summed over its tokens
    chosen_len: Tensor  # [B] number of response tokens of the chosen response (float, >= 1)
    rejected_len: Tensor  # [B] number of response tokens of the rejected response (float, >= 1)
    ref_chosen: Tensor | None = None  # [B] reference summed log-prob of the chosen response
    ref_rejected: Tensor | None = None  # [B] reference summed log-prob of the rejected response


@dataclass
class PreferenceParams:
    """Hyper-parameters shared by the DPO-family losses (each loss reads the ones it needs)."""

    beta: float = 0.1  # temperature of the implicit reward
    label_smoothing: float = 0.0  # conservative DPO: assumed probability that a label is flipped
    simpo_gamma: float = 0.5  # SimPO target margin (in reward units)
    orpo_lambda: float = 0.1  # ORPO weight of the odds-ratio term


def needs_reference(name: str) -> bool:
    """Whether the named loss uses reference log-probs (False for ``simpo`` and ``orpo``).

    An unknown name raises :class:`ConfigError` listing the valid names.
    """
    PREFERENCE_LOSSES.get(name)
    return name not in _REFERENCE_FREE


def _reference(p: PairLogps, loss: str) -> tuple[Tensor, Tensor]:
    """The reference log-probs, or ``ValueError`` when a reference-based loss got none."""
    if p.ref_chosen is None or p.ref_rejected is None:
        raise ValueError(
            f"preference loss {loss!r} needs reference log-probs (ref_chosen, ref_rejected)"
        )
    return p.ref_chosen, p.ref_rejected


def _dpo_logits(p: PairLogps, params: PreferenceParams, loss: str):
    """``h = beta * ((c - ref_c) - (r - ref_r))`` and the summed implicit rewards."""
    ref_c, ref_r = _reference(p, loss)
    chosen_ratio = p.chosen - ref_c
    rejected_ratio = p.rejected - ref_r
    h = params.beta * (chosen_ratio - rejected_ratio)
    rewards = (params.beta * chosen_ratio.detach(), params.beta * rejected_ratio.detach())
    return h, rewards


@PREFERENCE_LOSSES.register("sigmoid")
def dpo_sigmoid_loss(p: PairLogps, params: PreferenceParams) -> tuple[Tensor, Tensor, Tensor]:
    """DPO: ``-logsigmoid(h)`` with ``h = beta * ((c - ref_c) - (r - ref_r))``.

    Rewards are ``beta * (logp - ref_logp)``. With policy equal to the reference ``h = 0`` and the
    loss is ``log 2`` whatever ``beta`` is.
    """
    h, (chosen_rewards, rejected_rewards) = _dpo_logits(p, params, "sigmoid")
    return -F.logsigmoid(h), chosen_rewards, rejected_rewards


@PREFERENCE_LOSSES.register("label_smoothing")
def dpo_label_smoothing_loss(
    p: PairLogps, params: PreferenceParams
) -> tuple[Tensor, Tensor, Tensor]:
    """Conservative DPO: ``-(1 - eps) * logsigmoid(h) - eps * logsigmoid(-h)``.

    ``eps = params.label_smoothing`` is the assumed probability that a preference label is flipped;
    ``eps = 0`` is plain DPO. For ``eps > 0`` the loss has a finite minimum at
    ``h = log((1 - eps) / eps)`` instead of pushing the margin to infinity. Rewards as in DPO.
    """
    eps = params.label_smoothing
    h, (chosen_rewards, rejected_rewards) = _dpo_logits(p, params, "label_smoothing")
    losses = -(1.0 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
    return losses, chosen_rewards, rejected_rewards


@PREFERENCE_LOSSES.register("ipo")
def ipo_loss(p: PairLogps, params: PreferenceParams) -> tuple[Tensor, Tensor, Tensor]:
    """IPO: ``(h' - 1 / (2 * beta))**2`` on length-averaged log-ratios.

    ``h' = (c - ref_c) / len_c - (r - ref_r) / len_r``; the loss is a parabola with its minimum
    (zero) at ``h' = 1 / (2 * beta)``, so it never drives the margin to infinity. Reported rewards
    are the summed ``beta * (logp - ref_logp)`` as in DPO, not the averaged ratios the loss uses.
    """
    ref_c, ref_r = _reference(p, "ipo")
    h = (p.chosen - ref_c) / p.chosen_len - (p.rejected - ref_r) / p.rejected_len
    losses = (h - 1.0 / (2.0 * params.beta)) ** 2
    chosen_rewards = params.beta * (p.chosen - ref_c).detach()
    rejected_rewards = params.beta * (p.rejected - ref_r).detach()
    return losses, chosen_rewards, rejected_rewards


@PREFERENCE_LOSSES.register("simpo")
def simpo_loss(p: PairLogps, params: PreferenceParams) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO (reference-free): ``-logsigmoid(r_c - r_r - simpo_gamma)``, ``r = beta * logp / len``.

    The reward is the length-averaged policy log-prob, so ``beta`` here plays a different role from
    DPO's: SimPO setups usually use a much larger ``beta`` (around 2) than DPO's 0.1.
    """
    chosen_rewards = params.beta * p.chosen / p.chosen_len
    rejected_rewards = params.beta * p.rejected / p.rejected_len
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - params.simpo_gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate near 0 and for very negative ``x``.

    Uses ``log(-expm1(x))`` for ``x > -log 2`` and ``log1p(-exp(x))`` below. ``x`` is clamped to
    at most minus the smallest normal number of its dtype, so ``x = 0`` (a response of probability
    1) gives a large negative number instead of ``-inf``; its gradient there is not meaningful.
    """
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near_zero = x > -0.6931471805599453
    # Evaluate each branch on inputs that are safe for it, so neither produces NaN gradients.
    a = torch.log(-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -1.0))))
    b = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -1.0), x)))
    return torch.where(near_zero, a, b)


@PREFERENCE_LOSSES.register("orpo")
def orpo_loss(p: PairLogps, params: PreferenceParams) -> tuple[Tensor, Tensor, Tensor]:
    """ORPO (reference-free): per-token NLL of the chosen response plus an odds-ratio term.

    With ``avg = logp / len`` (the per-token average log-prob) and ``odds = p / (1 - p)`` at that
    average, ``log_odds = (avg_c - log(1 - exp(avg_c))) - (avg_r - log(1 - exp(avg_r)))`` and the
    loss is ``-avg_c - orpo_lambda * logsigmoid(log_odds)``. Rewards are ``beta * avg``. The SFT
    part means a caller should not add a separate SFT loss on the chosen responses.
    """
    avg_c = p.chosen / p.chosen_len
    avg_r = p.rejected / p.rejected_len
    log_odds = (avg_c - log1mexp(avg_c)) - (avg_r - log1mexp(avg_r))
    losses = -avg_c - params.orpo_lambda * F.logsigmoid(log_odds)
    return losses, params.beta * avg_c.detach(), params.beta * avg_r.detach()


def _mean(x: Tensor) -> float:
    """Batch mean as a python float, reduced in float64 (the inputs are small ``[B]`` vectors)."""
    return float(x.detach().to(torch.float64).mean())


def preference_metrics(
    losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor, p: PairLogps
) -> dict[str, float]:
    """Batch means under the names TRL uses, as python floats.

    ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies`` (fraction of pairs
    with chosen reward strictly above rejected; ties count as wrong), ``rewards/margins`` (mean of
    chosen minus rejected reward), ``logps/chosen`` and ``logps/rejected`` (summed policy log-probs).
    """
    chosen_rewards = chosen_rewards.detach()
    rejected_rewards = rejected_rewards.detach()
    return {
        "loss": _mean(losses),
        "rewards/chosen": _mean(chosen_rewards),
        "rewards/rejected": _mean(rejected_rewards),
        "rewards/accuracies": _mean((chosen_rewards > rejected_rewards).float()),
        "rewards/margins": _mean(chosen_rewards - rejected_rewards),
        "logps/chosen": _mean(p.chosen),
        "logps/rejected": _mean(p.rejected),
    }


def bradley_terry_loss(
    chosen_scores: Tensor, rejected_scores: Tensor, margin: Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Reward-model loss ``mean(-logsigmoid(s_c - s_r - margin))`` over ``B`` pairs.

    ``margin`` (``[B]``, optional) asks for the chosen score to beat the rejected one by at least
    that much (e.g. from graded preference labels). Stats: ``loss``, ``accuracy`` (fraction with
    ``s_c > s_r``, ties count as wrong, margin not subtracted), ``scores/chosen``,
    ``scores/rejected`` and ``scores/margins`` (mean of ``s_c - s_r``).
    """
    diff = chosen_scores - rejected_scores
    logits = diff if margin is None else diff - margin
    loss = -F.logsigmoid(logits).mean()
    diff = diff.detach()
    stats = {
        "loss": float(loss.detach()),
        "accuracy": _mean((diff > 0).float()),
        "scores/chosen": _mean(chosen_scores),
        "scores/rejected": _mean(rejected_scores),
        "scores/margins": _mean(diff),
    }
    return loss, stats


def sft_loss(logprobs: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Token-mean negative log-likelihood over response tokens.

    ``logprobs`` ``[B, T]`` are the log-probs of the target tokens; ``mask`` ``[B, T]`` marks
    response tokens with 1 (prompt and padding 0), so the loss is
    ``-(logprobs * mask).sum() / mask.sum()`` over the whole batch (long responses weigh more than
    short ones). Masked positions are zeroed before the sum, so a ``-inf`` log-prob there (padding)
    neither reaches the loss nor its gradient. A batch with no response token gives 0, not NaN.
    Stats: ``loss`` and ``ppl`` (``exp(loss)``).
    """
    m = mask.to(logprobs.dtype)
    real = torch.where(m > 0, logprobs, torch.zeros_like(logprobs))
    loss = -(real * m).sum() / m.sum().clamp_min(1.0)
    value = float(loss.detach())
    return loss, {"loss": value, "ppl": float(torch.exp(loss.detach().double()))}
