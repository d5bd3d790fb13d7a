"""Which pair to serve first: ``collect.selection=order`` keeps the load order; ``uncertainty`` serves
first the pairs whose predicted preference ``P(a better) = sigmoid(r_a - r_b)`` (a reward model's
scores of both responses) is closest to 0.5, the labels a reward model learns the most from.
``bench/collect/simulate.py`` measures what that saves with a simulated annotator."""

from __future__ import annotations

import math


def preference(score_a: float, score_b: float) -> float:
    """Bradley-Terry probability that response a is preferred."""
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, score_a - score_b))))


def uncertainty(score_a: float, score_b: float) -> float:
    """A pair's priority: the distance of its predicted preference from 0.5 (0: a coin toss, served first)."""
    return abs(preference(score_a, score_b) - 0.5)
