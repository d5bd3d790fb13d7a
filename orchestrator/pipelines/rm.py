"""Reward-model training: Bradley-Terry on preference pairs.

One step: take ``trainer.mini_batch_size`` pairs, score ``prompt + chosen`` and ``prompt + rejected``
with a sequence-classification head (one output) on ``model`` (any HF backbone: encoder such as
BERT / MiniLM, or decoder), and minimise ``-log sigmoid(s_chosen - s_rejected)``. Metrics: ``loss``,
``accuracy`` (share of pairs with s_chosen > s_rejected), the mean scores, and the same on the
held-out pairs (``eval/...``). The text scored is the prompt (a chat prompt: its last user message)
followed directly by the response, exactly what the RLHF reward actor scores, so ``<output_dir>/final``
plugs in as ``reward.model_path`` of ``pipeline=rlhf``. The head of a backbone that has none starts
from random weights (transformers warns about it).
"""

from __future__ import annotations

from functools import partial

from orchestrator.pipelines.offline import encode_both, fit, load_pair_data
from orchestrator.placement import role_specs
from orchestrator.preference_data import encode_reward_pairs, pack_reward_pairs
from orchestrator.roles import TrainerGroup
from orchestrator.run import RunContext


def run(cfg) -> dict:
    """Train the reward model for ``trainer.max_steps`` steps; returns the last metrics."""
    prepare = partial(encode_both, encode=encode_reward_pairs)
    with RunContext(cfg, load_pair_data, prepare) as ctx:
        train, held_out = ctx.train_rows, ctx.eval_rows
        placement = ctx.place(role_specs(cfg, ["reward_model"]))
        model = TrainerGroup("reward_model", ctx.model_path, cfg, placement, cfg.cluster.call_timeout_s,
                             "reward_model")
        eval_batch = pack_reward_pairs(held_out, ctx.pad_id) if held_out else None
        return fit(ctx, model, "reward_model", train, eval_batch, lambda pairs: pack_reward_pairs(pairs, ctx.pad_id))
