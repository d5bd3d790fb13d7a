"""Active selection on a simulated annotator: how many labels a reward model needs to reach a held-out
accuracy when pairs are served in random order and when the least certain pairs come first
(``collect.selection=uncertainty``, ``orchestrator/collect/selection.py``).

The annotator is a hidden scoring function: every word of a response has a hidden value, the person
prefers a over b with probability ``sigmoid((s_a - s_b) / NOISE)`` (a Bradley-Terry person who is
unsure on close calls). Responses are 8-24 words drawn from a 64-word vocabulary. The reward model
is a linear Bradley-Terry model on bag-of-words counts, refitted (L2-regularised logistic regression)
after every batch of labels. Held-out accuracy: the share of held-out pairs on which the model
ranks the responses as the hidden score does. Both strategies start from the same random seed batch.

    python bench/collect/simulate.py            # writes bench/collect/results.{md,json} and active_selection.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from orchestrator.collect.selection import uncertainty  # noqa: E402

VOCAB, POOL, HELD_OUT, NOISE = 64, 3000, 1000, 0.5
SEED_LABELS, BATCH, BUDGET, SEEDS, TARGETS = 20, 20, 600, 8, (0.85, 0.90)
HERE = Path(__file__).parent


def responses(rng, n: int) -> np.ndarray:
    """Bag-of-words counts of ``n`` random responses."""
    counts = np.zeros((n, VOCAB))
    for row, length in zip(counts, rng.integers(8, 25, n)):
        np.add.at(row, rng.integers(0, VOCAB, length), 1)
    return counts


def fit(diffs: np.ndarray, labels: np.ndarray, l2: float = 1e-2, steps: int = 200) -> np.ndarray:
    """Linear Bradley-Terry weights: logistic regression of ``label`` (a preferred) on ``x_a - x_b`` (Newton)."""
    w = np.zeros(diffs.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-diffs @ w))
        grad = diffs.T @ (p - labels) + l2 * w
        hess = (diffs * (p * (1 - p))[:, None]).T @ diffs + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def run(seed: int) -> dict[str, list[float]]:
    """Held-out accuracy after each batch of labels, for both strategies."""
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=VOCAB)  # the hidden scoring function
    a, b = responses(rng, POOL + HELD_OUT), responses(rng, POOL + HELD_OUT)
    diffs = a - b
    true = diffs @ taste
    person = (rng.random(len(true)) < 1 / (1 + np.exp(-true / NOISE))).astype(float)  # labels, with the person's noise
    pool, held = np.arange(POOL), np.arange(POOL, POOL + HELD_OUT)
    first = rng.choice(pool, SEED_LABELS, replace=False)
    curves = {}
    for strategy in ("random", "uncertainty"):
        order = np.random.default_rng(seed + 1).permutation(np.setdiff1d(pool, first))
        labelled, accuracy = list(first), []
        while True:
            w = fit(diffs[labelled], person[labelled])
            accuracy.append(float(np.mean(np.sign(diffs[held] @ w) == np.sign(true[held]))))
            if len(labelled) >= BUDGET:
                break
            rest = np.setdiff1d(order, labelled, assume_unique=True) if strategy == "uncertainty" else \
                [i for i in order if i not in set(labelled)]
            if strategy == "uncertainty":
                scores = [uncertainty(x @ w, y @ w) for x, y in zip(a[rest], b[rest])]
                pick = [rest[i] for i in np.argsort(scores, kind="stable")[:BATCH]]
            else:
                pick = rest[:BATCH]
            labelled += list(pick)
        curves[strategy] = accuracy
    return curves


def labels_to_reach(curve: list[float], target: float) -> int | None:
    hits = [i for i, acc in enumerate(curve) if acc >= target]
    return SEED_LABELS + BATCH * hits[0] if hits else None


def main() -> None:
    runs = [run(s) for s in range(SEEDS)]
    sizes = [SEED_LABELS + BATCH * i for i in range(len(runs[0]["random"]))]
    mean = {k: np.mean([r[k] for r in runs], axis=0).tolist() for k in ("random", "uncertainty")}
    reach = {k: {str(t): [labels_to_reach(r[k], t) for r in runs] for t in TARGETS} for k in mean}
    result = {"settings": {"vocab": VOCAB, "pool": POOL, "held_out": HELD_OUT, "noise": NOISE, "seed_labels": SEED_LABELS,
                           "batch": BATCH, "budget": BUDGET, "seeds": SEEDS},
              "labels": sizes, "mean_accuracy": mean, "labels_to_reach": reach}
    (HERE / "results.json").write_text(json.dumps(result, indent=1))

    def median(values):
        got = [v for v in values if v is not None]
        return f"{int(np.median(got))}" + ("" if len(got) == len(values) else f" ({len(values) - len(got)} of {len(values)} never)")

    lines = ["# Active selection on a simulated annotator", "",
             f"Linear Bradley-Terry reward model on bag-of-words features; {SEEDS} seeds; pool {POOL} pairs, "
             f"held-out {HELD_OUT}; the person's noise {NOISE} (see simulate.py).", "",
             "| held-out accuracy | labels needed, random order (median) | labels needed, uncertainty first (median) |",
             "|---|---|---|"]
    lines += [f"| {t:.2f} | {median(reach['random'][str(t)])} | {median(reach['uncertainty'][str(t)])} |" for t in TARGETS]
    lines += ["", "| labels | " + " | ".join(str(n) for n in sizes[::5]) + " |", "|---|" + "---|" * len(sizes[::5])]
    lines += [f"| {k} | " + " | ".join(f"{v:.3f}" for v in mean[k][::5]) + " |" for k in mean]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in mean:
        ax.plot(sizes, mean[k], label=f"{k} order")
    for t in TARGETS:
        ax.axhline(t, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("labels")
    ax.set_ylabel(f"held-out accuracy (mean of {SEEDS} seeds)")
    ax.set_title("Reward model accuracy vs labels, simulated annotator")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "active_selection.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
