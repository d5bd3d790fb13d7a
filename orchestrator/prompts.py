"""RLHF prompts: loading and checking them (with the reward function or model), and tokenising
them once, before the first step.

``RunContext(cfg, load_prompt_data, prepare_prompts)`` runs both before any actor starts. Each prepared
row is ``{"prompt_ids": [...], "prompt_text": str}``: the chat-templated, left-truncated token ids
the rollout engines continue, and the prompt as reward functions and reward models see it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from orchestrator.data import last_tokens, load_prompt_rows, load_train_and_held_out, render_prompt
from orchestrator.errors import ConfigError
from orchestrator.preference_data import prompt_text
from orchestrator.rewards.loader import check_reward_file

log = logging.getLogger("tether")


def load_prompt_data(cfg) -> tuple[list[dict], list[dict]]:
    """RLHF input checks: prompt rows (train, held-out) and the reward function / model."""
    rows = load_train_and_held_out(cfg, load_prompt_rows, "trainer.rollout_batch_size", "prompt rows",
                                   prompt_key=cfg.data.prompt_key)
    if cfg.reward.function:
        check_reward_file(cfg.reward.function, cfg.reward.import_timeout_s)
    if cfg.reward.model_path and not (Path(cfg.reward.model_path) / "config.json").is_file():
        raise ConfigError(f"reward.model_path={cfg.reward.model_path!r}: not a model folder (no config.json)")
    return rows


def encode_prompts(tokenizer, rows: list[dict], prompt_key: str, max_tokens: int) -> tuple[list[dict], int]:
    """Prepared rows (see the module) and how many prompts were longer than ``max_tokens``."""
    texts = [render_prompt(tokenizer, row[prompt_key]) for row in rows]
    ids, truncated = last_tokens(tokenizer, texts, max_tokens)
    return [{"prompt_ids": i, "prompt_text": prompt_text(row[prompt_key])} for i, row in zip(ids, rows)], truncated


def prepare_prompts(ctx) -> tuple[list[dict], list[dict]]:
    """Tokenise the train and held-out prompts once; says once how many were cut to
    ``data.max_prompt_tokens`` (from the left)."""
    d = ctx.cfg.data
    out, cut = [], []
    for name, rows in (("train", ctx.train_rows), ("held-out", ctx.eval_rows)):
        prepared, truncated = encode_prompts(ctx.tokenizer, rows, d.prompt_key, d.max_prompt_tokens)
        out.append(prepared)
        if truncated:
            cut.append(f"{truncated} of {len(rows)} {name} prompts")
    if cut:
        log.warning("%s are longer than data.max_prompt_tokens=%d tokens and are cut from the left",
                    " and ".join(cut), d.max_prompt_tokens)
    return out[0], out[1]


def prompt_ids(rows: list[dict]) -> list[list[int]]:
    """The token ids of prepared rows, for the rollout engines."""
    return [row["prompt_ids"] for row in rows]


def reward_prompts(rows: list[dict], n: int) -> list[str]:
    """The prompt each of ``n`` samples per prepared row answers, as reward functions get it: the
    row's prompt string, or for chat rows the content of the last user message."""
    return [row["prompt_text"] for row in rows for _ in range(n)]
