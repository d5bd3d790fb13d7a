"""Shared by the peers: the work (DPO: the 64 pairs of orchestrator/assets/preferences/tiny.jsonl and their
token ids as Tether encodes them: chat-templated prompt, response + EOS; GRPO / RLOO: the 64 prompts of
orchestrator/assets/prompts/tiny.jsonl, chat-templated, and the letter-frequency reward of
orchestrator/rewards/examples.py), its sizes, and the step-time summary. Imports only the standard
library at the top, so it runs in the project venv and in the TRL venv."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAIRS = ROOT / "orchestrator" / "assets" / "preferences" / "tiny.jsonl"
BATCH, BETA, LR, STEPS, THREADS = 8, 0.1, 1e-6, 8, 2
PROMPTS = ROOT / "orchestrator" / "assets" / "prompts" / "tiny.jsonl"
RL = {"prompts_per_step": 8, "samples": 4, "new_tokens": 32, "lr": 1e-6, "steps": 6}  # GRPO / RLOO step
T0_ENV = "BENCH_T0"  # the driver's time.time() just before it started the process


def rows(path: Path = PAIRS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def letter_frequency(prompts, completions, **_) -> list[float]:
    """The reward of orchestrator/rewards/examples.py:letter_frequency (share of the letter e), in the
    signature TRL's trainers call."""
    return [r.count("e") / max(len(r), 1) for r in completions]


def render(tok, prompt: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def encode(tok, data: list[dict]) -> list[dict]:
    """prompt_ids / chosen_ids / rejected_ids, as orchestrator.preference_data.encode_pairs builds them."""
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [{"prompt_ids": ids(render(tok, r["prompt"])), "chosen_ids": ids(r["chosen"]) + [tok.eos_token_id],
             "rejected_ids": ids(r["rejected"]) + [tok.eos_token_id]} for r in data]


def summary(step_s: list[float], first_step_s: float | None, **extra) -> dict:
    """Median of steps 3..N (1-based) after warm-up (None with fewer than 3 steps), plus every step and the
    time to first step."""
    median = statistics.median(step_s[2:]) if len(step_s) > 2 else None
    return {"median_s": median, "steps_s": step_s, "first_step_s": first_step_s, **extra}


def since_start(t0_env: str | None) -> float | None:
    return time.time() - float(t0_env) if t0_env else None
