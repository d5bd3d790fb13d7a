"""Agreement between annotators on the pairs that more than one judged (``collect.overlap`` > 1).

Each pair judged by two or more annotators gives one comparison per two of its annotators; skips
are left out (a skip is no opinion). Over those comparisons: the agreement rate (share where both
gave the same label: ``a``, ``b`` or ``tie``) and Cohen's kappa, ``(p_o - p_e) / (1 - p_e)``, where
``p_e`` is the agreement expected by chance from how often each label was given (the labels of both
sides of every comparison pooled, so the measure does not depend on who is called first).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations

LABELS = ("a", "b", "tie")


def label_pairs(judgements: list[dict]) -> list[tuple[str, str]]:
    """``(label, label)`` of every two annotators who judged the same pair (skips left out)."""
    by_pair: dict[str, list[str]] = defaultdict(list)
    for j in judgements:
        if j["choice"] in LABELS:
            by_pair[j["pair_id"]].append(j["choice"])
    return [two for labels in by_pair.values() for two in combinations(labels, 2)]


def agreement(judgements: list[dict]) -> dict:
    """``{"compared": n, "agreement": rate, "kappa": kappa}``; rate and kappa are None when nothing
    was compared, kappa also when every label given was the same (chance agreement is then 1)."""
    pairs = label_pairs(judgements)
    if not pairs:
        return {"compared": 0, "agreement": None, "kappa": None}
    observed = sum(x == y for x, y in pairs) / len(pairs)
    counts = Counter(label for two in pairs for label in two)
    expected = sum((n / (2 * len(pairs))) ** 2 for n in counts.values())
    kappa = None if expected >= 1.0 else (observed - expected) / (1.0 - expected)
    return {"compared": len(pairs), "agreement": observed, "kappa": kappa}


def balance(judgements: list[dict]) -> dict:
    """Label counts and, of the decisive judgements (``a`` or ``b``), the share that picked the response
    shown on the left (position bias) and the share that picked response a."""
    counts = Counter(j["choice"] for j in judgements)
    decisive = [j for j in judgements if j["choice"] in ("a", "b")]
    left = sum(j["choice"] == j["left"] for j in decisive)
    return {"labels": len(judgements), "decisive": len(decisive), "ties": counts["tie"], "skips": counts["skip"],
            "left_share": left / len(decisive) if decisive else None,
            "a_share": counts["a"] / len(decisive) if decisive else None}
