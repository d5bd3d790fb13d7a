"""Supervised fine-tuning: next-token likelihood of the responses, the prompt tokens carry no loss.

One step: take ``trainer.mini_batch_size`` rows (prompt + response, or chat ``messages`` whose last
assistant message is the response), and take one optimizer step on the mean negative log-likelihood
of the response tokens (each ends with the tokenizer's eos token). Metrics: ``loss`` (per token),
``ppl``, and the same on the held-out rows (``eval/...``). Only the last assistant turn of a chat
row is trained on; earlier turns are context.
"""

from __future__ import annotations

from functools import partial

from orchestrator.batching import pack_samples
from orchestrator.pipelines.offline import encode_both, fit, load_sft_data
from orchestrator.placement import role_specs
from orchestrator.preference_data import encode_sft
from orchestrator.roles import TrainerGroup
from orchestrator.run import RunContext


def run(cfg) -> dict:
    """Fine-tune the policy for ``trainer.max_steps`` steps; returns the last metrics."""
    prepare = partial(encode_both, encode=encode_sft, max_prompt_tokens=cfg.data.max_prompt_tokens)
    with RunContext(cfg, load_sft_data, prepare) as ctx:
        train, held_out = ctx.train_rows, ctx.eval_rows
        placement = ctx.place(role_specs(cfg, ["policy"]))
        policy = TrainerGroup("policy", ctx.model_path, cfg, placement, cfg.cluster.call_timeout_s, "sft")
        eval_batch = pack_samples(held_out, ctx.pad_id) if held_out else None
        return fit(ctx, policy, "policy", train, eval_batch, lambda rows: pack_samples(rows, ctx.pad_id))
