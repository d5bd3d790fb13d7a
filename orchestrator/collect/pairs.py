"""The pairs to label: ready ones from ``collect.pairs_path``, or two responses per prompt sampled on
the rollout engines (two samples of ``model``, or one of ``model`` and one of ``collect.model_b_path``),
and, for ``collect.selection=uncertainty``, each pair's predicted preference from a reward model.

Rows of ``collect.pairs_path``: ``{"prompt": str | chat messages, "response_a": str, "response_b": str}``
(other keys are ignored); a malformed row stops the run with ``file:line``. Generated pairs with an
empty response or two equal responses are left out (the log says how many).
"""

from __future__ import annotations

import copy
import logging
import time
import uuid

from omegaconf import OmegaConf

from orchestrator.collect.selection import uncertainty
from orchestrator.data import check_object, check_prompt, load_prompt_rows, render_prompt
from orchestrator.errors import DataError
from orchestrator.inputs import ASSETS, json_type_name, load_rows, resolve_data_path
from orchestrator.placement import role_specs
from orchestrator.preference_data import prompt_text
from orchestrator.roles import RolloutPool, reward_actor
from orchestrator.runtime import wait

log = logging.getLogger("tether")
SHIPPED_PROMPTS = f"{ASSETS}/prompts/tiny.jsonl"  # prompts when data.path is null


def check_pair_row(row, where: str) -> dict:
    """One row of ``collect.pairs_path``; DataError naming ``where`` when it is malformed."""
    check_object(row, where, ("prompt", "response_a", "response_b"))
    check_prompt(row["prompt"], where)
    for key in ("response_a", "response_b"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise DataError(f"{where}: '{key}' must be a non-empty string, got "
                            f"{json_type_name(row[key]) if not isinstance(row[key], str) else 'an empty string'}")
    if row["response_a"].strip() == row["response_b"].strip():
        raise DataError(f"{where}: 'response_a' and 'response_b' are the same response; a pair needs two different ones")
    return {"prompt": row["prompt"], "response_a": row["response_a"], "response_b": row["response_b"]}


def load_inputs(cfg) -> list[dict]:
    """Ready pairs (``collect.pairs_path``) or prompt rows (``data.path``, else the shipped prompts)."""
    if cfg.collect.pairs_path:
        return load_rows(resolve_data_path(cfg.collect.pairs_path), check_pair_row, field="collect.pairs_path",
                         max_row_bytes=cfg.data.max_row_bytes)
    return load_prompt_rows(resolve_data_path(cfg.data.path or SHIPPED_PROMPTS), cfg.data.prompt_key,
                            cfg.data.split, max_row_bytes=cfg.data.max_row_bytes)


def _sample(ctx, pool: RolloutPool, tokenizer, prompts: list, n: int, stream: int = 0) -> list[str]:
    """``n`` sampled responses per prompt (chat-templated, left-truncated to fit the engine); ``stream``
    gives each model its own sampling seeds (the same seeds would couple two models' samples)."""
    limit = ctx.cfg.rollout.max_model_len - ctx.cfg.rollout.max_new_tokens
    ids = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"][-limit:] for p in prompts]
    samples = pool.generate(ids, n, ctx.cfg.seed * 1_000_003 + stream * 500_009)
    return [tokenizer.decode(s["response_ids"], skip_special_tokens=True).strip() for s in samples]


def generate_pairs(ctx, prompt_rows: list[dict]) -> list[dict]:
    """Two responses per prompt from the rollout engines: two samples of ``model``, or with
    ``collect.model_b_path`` one sample of each model (each with its own engines and tokenizer)."""
    cfg, start = ctx.cfg, time.perf_counter()
    prompts = [row[cfg.data.prompt_key] for row in prompt_rows]
    pool_a = RolloutPool(cfg, ctx.model_path, ctx.place(role_specs(cfg, ["rollout"])), uuid.uuid4().hex[:6])
    pool_a.wait_ready()
    if cfg.collect.model_b_path:
        from transformers import AutoTokenizer

        path_b = cfg.collect.model_b_path
        pool_b = RolloutPool(cfg, path_b, ctx.place(role_specs(cfg, ["rollout"])), uuid.uuid4().hex[:6])
        pool_b.wait_ready()
        tokenizer_b = AutoTokenizer.from_pretrained(path_b, trust_remote_code=cfg.model.trust_remote_code)
        a, b = _sample(ctx, pool_a, ctx.tokenizer, prompts, 1), _sample(ctx, pool_b, tokenizer_b, prompts, 1, stream=1)
        source = "model_a_vs_b"
    else:
        texts = _sample(ctx, pool_a, ctx.tokenizer, prompts, 2)
        a, b, source = texts[0::2], texts[1::2], "two_samples"
    pairs = [{"prompt": p, "response_a": x, "response_b": y, "source": source}
             for p, x, y in zip(prompts, a, b) if x and y and x != y]
    log.info("collect: %d pairs generated in %.1f s (%d left out: an empty response or two equal ones)",
             len(pairs), time.perf_counter() - start, len(prompts) - len(pairs))
    if not pairs:
        raise DataError("collect: every generated pair had an empty response or two equal ones; raise "
                        "rollout.max_new_tokens or rollout.temperature, or give ready pairs with collect.pairs_path")
    return pairs


def score_pairs(ctx, pairs: list[dict]) -> list[dict]:
    """Each pair's ``priority``: the distance of the reward model's predicted preference from 0.5
    (``collect.reward_model_path`` on the reward actor), so the least certain pairs are served first."""
    cfg = copy.deepcopy(ctx.cfg)
    OmegaConf.update(cfg, "reward", {"function": None, "model_path": cfg.collect.reward_model_path,
                                     "remote_url": None}, merge=True)
    actor = reward_actor(cfg, ctx.place(role_specs(cfg, ["reward"])), uuid.uuid4().hex[:6])
    prompts = [prompt_text(p["prompt"]) for p in pairs]
    texts = [p["response_a"] for p in pairs] + [p["response_b"] for p in pairs]
    reply = wait(actor.score_tagged.remote(prompts + prompts, texts), "reward (score pairs)", cfg.cluster.call_timeout_s)
    scores = reply["scores"]["reward"]
    n = len(pairs)
    log.info("collect: %d pairs scored by the reward model %s", n, cfg.collect.reward_model_path)
    return [{**p, "priority": uncertainty(scores[i], scores[n + i])} for i, p in enumerate(pairs)]
