"""DPO and its variants: learn from preference pairs with no reward model and no sampling.

One step, as on paper:
  1. take ``trainer.mini_batch_size`` pairs (prompt, chosen, rejected);
  2. reference log-probs of both responses: from the reference actor each step
     (``algorithm.reference_mode=online``; ``overlap``: the next step's while this step trains) or
     computed once for the whole data set before training (``precompute``; the reference actor is then
     freed); reference-free losses (simpo, orpo) need none;
  3. one optimizer step on ``algorithm.preference_loss`` over the summed response log-probs of the
     policy (``sigmoid`` = DPO, ``ipo``, ``label_smoothing`` = conservative DPO, ``simpo``, ``orpo``);
  4. log TRL-named metrics (``loss``, ``rewards/{chosen,rejected,accuracies,margins}``,
     ``logps/{chosen,rejected}``), and the same on the held-out pairs every ``trainer.eval_every`` steps
     and after the last (``eval/...``).
The policy and reference start from ``model``; responses end with the tokenizer's eos token.
"""

from __future__ import annotations

from functools import partial

import ray
import torch

from orchestrator.algorithms import needs_reference
from orchestrator.batching import flatten_pairs
from orchestrator.pipelines.offline import encode_both, fit, load_pair_data
from orchestrator.placement import role_specs
from orchestrator.preference_data import encode_pairs, pack_pairs
from orchestrator.roles import TrainerGroup, reference_actor
from orchestrator.run import RunContext
from orchestrator.runtime import wait


class ReferenceLogps:
    """Reference log-probs ``[B, 2]`` of pair batches: online, or precomputed once per pair."""

    def __init__(self, actor, timeout_s: float):
        self.actor, self.timeout_s = actor, timeout_s

    def __call__(self, batch: dict) -> torch.Tensor:
        return self.result(self.submit(batch))

    def submit(self, batch: dict):
        """Start the reference pass of a pair batch; ``result`` waits for it."""
        return self.actor.logprobs.remote(flatten_pairs(batch))

    def result(self, ref) -> torch.Tensor:
        return wait(ref, "reference (logprobs)", self.timeout_s).sum(-1).view(-1, 2)

    def precompute(self, encoded: list[dict], pad_id: int, chunk: int) -> None:
        """Store every pair's reference log-probs in the pair (``"ref"``), then free the actor."""
        for i in range(0, len(encoded), chunk):
            part = encoded[i : i + chunk]
            for pair, ref in zip(part, self(pack_pairs(part, pad_id)).tolist()):
                pair["ref"] = ref


def with_precomputed(batch: dict, pairs: list[dict]) -> dict:
    """The batch plus ``ref_logps`` from the pairs, when they were precomputed."""
    if pairs and "ref" in pairs[0]:
        batch["ref_logps"] = torch.tensor([p["ref"] for p in pairs], dtype=torch.float32)
    return batch


def run(cfg) -> dict:
    """Train the policy on preference pairs for ``trainer.max_steps`` steps; returns the last metrics."""
    a, t = cfg.algorithm, cfg.cluster.call_timeout_s
    prepare = partial(encode_both, encode=encode_pairs, max_prompt_tokens=cfg.data.max_prompt_tokens)
    with RunContext(cfg, load_pair_data, prepare) as ctx:
        train, held_out = ctx.train_rows, ctx.eval_rows
        use_ref = needs_reference(a.preference_loss)
        placement = ctx.place(role_specs(cfg, ["policy"] + (["reference"] if use_ref else [])))
        policy = TrainerGroup("policy", ctx.model_path, cfg, placement, t, "dpo")
        reference = ReferenceLogps(reference_actor(cfg, ctx.model_path, placement), t) if use_ref else None
        if use_ref and a.reference_mode == "precompute":
            with ctx.phase("reference"):
                for pairs in (train, held_out):
                    reference.precompute(pairs, ctx.pad_id, cfg.trainer.mini_batch_size)
            ray.kill(reference.actor)
            reference = None
        eval_batch = with_precomputed(pack_pairs(held_out, ctx.pad_id), held_out) if held_out else None
        if eval_batch is not None and reference is not None:
            eval_batch["ref_logps"] = reference(eval_batch)

        def make_batch(pairs: list[dict]) -> tuple[dict, object]:
            batch = with_precomputed(pack_pairs(pairs, ctx.pad_id), pairs)
            return batch, reference.submit(batch) if reference is not None else None

        def finish(started: tuple[dict, object]) -> dict:
            batch, ref = started
            if ref is not None:
                with ctx.phase("reference"):  # overlap: only the part of the pass the step still waits for
                    batch["ref_logps"] = reference.result(ref)
            return batch

        return fit(ctx, policy, "policy", train, eval_batch, make_batch, finish,
                   ahead=reference is not None and a.reference_mode == "overlap")
