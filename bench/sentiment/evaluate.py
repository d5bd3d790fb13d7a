"""Held-out reward and KL-to-reference of each trained policy (the points of the frontier plot).

    python bench/sentiment/evaluate.py       # every finished stage under outputs/sentiment

For each policy (and the initial SmolLM2, the origin point), with the same settings for all:
``SAMPLES`` responses per held-out prompt (``data/sentiment/prompts_eval.jsonl``), drawn with
transformers ``generate`` at temperature 1, no top-k / top-p cut, at most ``MAX_NEW_TOKENS``
tokens, from a fixed seed. Each response is scored by the trained reward model on
``reward_text(prompt, response)`` (prompt and response on two lines: what the RLHF reward actor scores), and its KL to the reference is the sum
over its tokens (up to and including end-of-sequence) of ``log pi(y_t) - log pi_ref(y_t)`` on the
policy's own sample: an unbiased single-sample estimate of the sequence KL(pi || pi_ref). As a
check on the learned reward that no method trained on, each response alone is also scored by
VADER (a rule-based sentiment lexicon; compound score in [-1, 1]). The means (and standard
errors) go to ``outputs/sentiment/eval.json``.

Limits: 64 prompts x 1 sample (sized for a 2-core CPU) give standard errors of a few hundredths of
a reward unit and of about 10-20% of the KL; a single seed.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from orchestrator.preference_data import reward_text  # noqa: E402

OUTPUTS = ROOT / "outputs" / "sentiment"
PROMPTS = ROOT / "data" / "sentiment" / "prompts_eval.jsonl"
SAMPLES = 1  # responses per prompt
MAX_NEW_TOKENS = 24  # the rollout length of the RLHF runs
BATCH = 64  # sequences per generate call
SEED = 1234


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return mean, math.sqrt(var / n)


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], seed: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) for ``SAMPLES`` samples of each chat-rendered prompt."""
    from orchestrator.data import render_prompt

    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    rendered = [render_prompt(tokenizer, p) for p in prompts for _ in range(SAMPLES)]
    out = []
    tokenizer.padding_side = "left"
    for i in range(0, len(rendered), BATCH):
        enc = tokenizer(rendered[i:i + BATCH], return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
        width = enc["input_ids"].shape[1]
        for row, mask, full in zip(enc["input_ids"], enc["attention_mask"], gen):
            response = full[width:].tolist()
            if eos in response:
                response = response[:response.index(eos) + 1]
            out.append((row[mask.bool()].tolist(), response))
    return out


@torch.no_grad()
def sequence_logprobs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int) -> list[float]:
    """Sum of log-probs of each response's tokens given its prompt (right-padded forward passes)."""
    sums = []
    for i in range(0, len(pairs), BATCH):
        chunk = pairs[i:i + BATCH]
        seqs = [p + r for p, r in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, :len(s)] = torch.tensor(s)
            mask[j, :len(s)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        for j, (p, r) in enumerate(chunk):
            sums.append(float(logp[j, len(p) - 1:len(p) - 1 + len(r)].sum()))
    return sums


@torch.no_grad()
def rm_scores(rm, rm_tokenizer, texts: list[str]) -> list[float]:
    """Reward-model scores of the given texts."""
    scores = []
    for i in range(0, len(texts), BATCH):
        enc = rm_tokenizer(texts[i:i + BATCH], return_tensors="pt", padding=True, truncation=True, max_length=512)
        scores += rm(**enc).logits[:, 0].float().tolist()
    return scores


def evaluate(policies: dict[str, str], reference: str, reward_model: str, prompts_path: Path = PROMPTS) -> dict:
    """Mean RM reward and KL(policy || reference) of each policy folder on the held-out prompts."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    lexicon = SentimentIntensityAnalyzer()

    torch.set_num_threads(2)
    prompts = [json.loads(line)["prompt"] for line in prompts_path.read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(reference)
    ref = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32).eval()
    rm_tokenizer = AutoTokenizer.from_pretrained(reward_model)
    rm = AutoModelForSequenceClassification.from_pretrained(reward_model, dtype=torch.float32).eval()
    results = {}
    for name, folder in policies.items():
        start = time.perf_counter()
        policy = ref if folder == reference else AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        samples = sample(policy, tokenizer, prompts, SEED)
        kls = [a - b for a, b in zip(sequence_logprobs(policy, samples, tokenizer.pad_token_id),
                                     sequence_logprobs(ref, samples, tokenizer.pad_token_id))]
        responses = [tokenizer.decode(r, skip_special_tokens=True) for _, r in samples]
        texts = [reward_text(prompts[k // SAMPLES], responses[k]) for k in range(len(responses))]
        rewards = rm_scores(rm, rm_tokenizer, texts)
        (reward, reward_se), (kl, kl_se) = _mean_se(rewards), _mean_se(kls)
        vader, vader_se = _mean_se([lexicon.polarity_scores(r)["compound"] for r in responses])
        results[name] = {"reward": reward, "reward_se": reward_se, "kl": kl, "kl_se": kl_se,
                         "vader": vader, "vader_se": vader_se, "prompts": len(prompts), "samples": len(samples),
                         "response_tokens": sum(len(r) for _, r in samples) / len(samples),
                         "examples": [texts[k] for k in range(0, min(len(texts), 6 * SAMPLES), SAMPLES)],
                         "seconds": time.perf_counter() - start, "folder": folder}
        print(f"{name}: reward {reward:.3f} +- {reward_se:.3f}, KL {kl:.2f} +- {kl_se:.2f}, VADER {vader:.3f} "
              f"({results[name]['seconds']:.0f} s)", flush=True)
    return results


def finished_policies() -> dict[str, str]:
    """``{stage: final folder}`` of every finished policy stage under outputs/sentiment, in chain order."""
    from omegaconf import OmegaConf

    from orchestrator.models import resolve_model_path

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "smollm2_135m.yaml")
    found = {"initial": resolve_model_path(cfg.model)}
    order = {"ppo": 0, "grpo": 1, "dpo": 2}  # chain order, then any others by name
    for stage in sorted((p.parent.name for p in OUTPUTS.glob("*/final")), key=lambda s: (order.get(s, 3), s)):
        if stage != "rm":
            found[stage] = str(OUTPUTS / stage / "final")
    return found


if __name__ == "__main__":
    policies = finished_policies()
    out = evaluate(policies, policies["initial"], str(OUTPUTS / "rm" / "final"))
    (OUTPUTS / "eval.json").write_text(json.dumps(out, indent=1))
