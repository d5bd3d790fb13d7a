"""AI feedback: turning a feedback model's answer log-probabilities into preference labels.

The feedback model reads each pair twice, in both orders ((A) = first response, then (A) = second),
so that a model that favours a position cannot decide the label on its own (position bias).
"""

from __future__ import annotations

import torch


def option_probabilities(option_logps: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` log-probs of K option letters -> probabilities normalised over the K options."""
    return torch.softmax(option_logps.float(), dim=-1)


def first_preferred_probability(logps_in_order: torch.Tensor, logps_swapped: torch.Tensor) -> torch.Tensor:
    """P(first response is better) ``[N]``: the mean of P(A) when the first response is (A) and
    P(B) when the order is swapped. Inputs are ``[N, 2]`` log-probs of the letters (A, B)."""
    p_in_order = option_probabilities(logps_in_order)[:, 0]
    p_swapped = option_probabilities(logps_swapped)[:, 1]
    return (p_in_order + p_swapped) / 2


def position_agreement(logps_in_order: torch.Tensor, logps_swapped: torch.Tensor) -> torch.Tensor:
    """``[N]`` booleans: both orders pick the same response (a measure of position bias: 1.0 is none)."""
    first_in_order = logps_in_order[:, 0] >= logps_in_order[:, 1]
    first_swapped = logps_swapped[:, 1] >= logps_swapped[:, 0]
    return first_in_order == first_swapped
