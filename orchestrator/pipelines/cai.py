"""Constitutional AI: critique-and-revise SFT (stage 1), then AI-feedback preference pairs (stage 2).

Stage 1, as on paper:
  1. the policy answers every prompt (by default the shipped red-team prompts) on the rollout engines;
  2. ``cai.revision_rounds`` times, with a principle drawn at random from the constitution
     (``cai.constitution``): the policy critiques its answer (the principle's critique request is the
     next user turn), then rewrites it (the revision request);
  3. SFT on (prompt, last revision) for ``trainer.max_steps`` steps, one optimizer step each; the rows,
     with every critique, are kept in ``<output_dir>/cai/revisions.jsonl``.
Stage 2, after the last SFT step (its numbers: ``<output_dir>/cai/summary.json``, the wandb summary,
TensorBoard at the last step):
  4. the fine-tuned weights go to the rollout engines, which sample ``cai.feedback_samples`` responses
     per prompt; consecutive samples form pairs;
  5. the feedback model (``cai.feedback.model_path``, by default the initial model) answers a principle's
     comparison question about each pair in both orders; P(first is better) is the mean of the two
     answers (``orchestrator/algorithms/feedback.py``);
  6. the labelled pairs are written to ``<output_dir>/cai/preferences.jsonl`` (prompt, chosen, rejected,
     p_chosen, principle): train on them with ``pipeline=dpo`` or ``pipeline=rm``;
  7. with ``cai.then=dpo``, DPO on those pairs starts from the SFT model for ``cai.then_steps`` steps
     (``<output_dir>/dpo``, its final model in ``<output_dir>/dpo/final``).
Assumes a causal LM that follows chat turns: a model that does not (the tiny default) runs every step,
but its critiques are noise. Empty revisions are dropped; pairs with an empty or two equal responses too.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from pathlib import Path


from orchestrator import atomic
from orchestrator import constitution as con
from orchestrator.algorithms.feedback import first_preferred_probability, position_agreement
from orchestrator.batching import pack_samples
from orchestrator.data import load_prompt_rows, load_train_and_held_out, render_prompt
from orchestrator.errors import ConfigError, DataError
from orchestrator.inputs import resolve_data_path
from orchestrator.pipelines.offline import encode_both, fit
from orchestrator.placement import role_specs
from orchestrator.preference_data import encode_sft, prompt_text
from orchestrator.roles import RolloutPool, TrainerGroup, feedback_actor
from orchestrator.run import RunContext
from orchestrator.runtime import wait
from orchestrator.weight_sync import make_weight_sync

log = logging.getLogger("tether")


def load_cai_data(cfg) -> tuple[list[dict], list[dict]]:
    """Prompt rows (train, held-out) and the constitution, checked before anything starts."""
    rows = load_train_and_held_out(cfg, load_prompt_rows, "trainer.mini_batch_size", "prompt rows",
                                   prompt_key=cfg.data.prompt_key)
    con.load_constitution(resolve_data_path(cfg.cai.constitution))
    path = cfg.cai.feedback.model_path
    if path and not (Path(path) / "config.json").is_file():
        raise ConfigError(f"cai.feedback.model_path={path!r}: not a model folder (no config.json)")
    return rows


def write_jsonl(path, rows: list[dict]) -> None:
    """Write rows atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def generate_texts(ctx, rollouts: RolloutPool, conversations: list, n: int, call: int, what: str) -> list[str]:
    """``n`` sampled replies per conversation (chat-templated, left-truncated to fit the engine);
    ``call`` numbers the generation calls of a run so that each samples with its own seeds."""
    start = time.perf_counter()
    seed = ctx.cfg.seed * 1_000_000_007 + call * 1_000_003
    limit = ctx.cfg.rollout.max_model_len - ctx.cfg.rollout.max_new_tokens
    ids = [ctx.tokenizer(render_prompt(ctx.tokenizer, c), add_special_tokens=False)["input_ids"][-limit:]
           for c in conversations]
    texts = [ctx.decode(s["response_ids"]).strip() for s in rollouts.generate(ids, n, seed)]
    log.info("cai: %s: %d replies in %.1f s", what, len(texts), time.perf_counter() - start)
    return texts


def critique_and_revise(ctx, rollouts, rows: list[dict], principles, rng: random.Random) -> list[dict]:
    """Stage 1 for ``rows``: answer, then critique and revise ``cai.revision_rounds`` times."""
    prompts = [row[ctx.cfg.data.prompt_key] for row in rows]
    responses = generate_texts(ctx, rollouts, [con.as_messages(p) for p in prompts], 1, 0, "answers")
    out = [{"prompt": p, "initial": r, "critiques": [], "principles": []} for p, r in zip(prompts, responses)]
    for k in range(ctx.cfg.cai.revision_rounds):
        chosen = [rng.choice(principles) for _ in prompts]
        critiques = generate_texts(ctx, rollouts, [con.critique_request(p, r, c) for p, r, c in zip(prompts, responses, chosen)],
                                   1, 2 * k + 1, f"critiques (round {k + 1})")
        responses = generate_texts(ctx, rollouts, [con.revision_request(p, r, q, c) for p, r, q, c
                                                   in zip(prompts, responses, critiques, chosen)], 1, 2 * k + 2,
                                   f"revisions (round {k + 1})")
        for row, q, c in zip(out, critiques, chosen):
            row["critiques"].append(q)
            row["principles"].append(c.name)
    for row, r in zip(out, responses):
        row["response"] = r
    return [row for row in out if row["response"]]


def label_pairs(ctx, rollouts, feedback, rows: list[dict], principles, rng: random.Random):
    """Stage 2: sample pairs from the current policy, label them with the feedback model."""
    n = ctx.cfg.cai.feedback_samples
    prompts = [row["prompt"] for row in rows]
    with ctx.phase("generate"):
        texts = generate_texts(ctx, rollouts, [con.as_messages(p) for p in prompts], n, 2 * ctx.cfg.cai.revision_rounds + 1,
                               "pairs to label")
    pairs = [(p, texts[i * n + j], texts[i * n + j + 1]) for i, p in enumerate(prompts) for j in range(0, n - 1, 2)]
    kept = [(p, a, b, rng.choice(principles)) for p, a, b in pairs if a and b and a != b]
    if not kept:
        return [], {"cai/pairs": 0, "cai/pairs_dropped": len(pairs)}
    with ctx.phase("feedback"):
        questions = [con.comparison_question(prompt_text(p), a, b, c) for p, a, b, c in kept]
        questions += [con.comparison_question(prompt_text(p), b, a, c) for p, a, b, c in kept]
        logps = wait(feedback.option_logprobs.remote(questions, ["A", "B"]), "feedback (option logprobs)",
                     ctx.cfg.cluster.call_timeout_s)
    in_order, swapped = logps[: len(kept)], logps[len(kept):]
    p_first = first_preferred_probability(in_order, swapped).tolist()
    labelled = [{"prompt": p, "chosen": a if q >= 0.5 else b, "rejected": b if q >= 0.5 else a,
                 "p_chosen": max(q, 1 - q), "principle": c.name} for (p, a, b, c), q in zip(kept, p_first)]
    stats = {"cai/pairs": len(labelled), "cai/pairs_dropped": len(pairs) - len(kept),
             "cai/feedback/p_chosen_mean": sum(r["p_chosen"] for r in labelled) / len(labelled),
             "cai/feedback/position_agreement": float(position_agreement(in_order, swapped).float().mean())}
    return labelled, stats


def run(cfg) -> dict:
    """Stage 1 (critique, revise, SFT for ``trainer.max_steps`` steps), then stage 2 (labelled pairs)."""
    c, t = cfg.cai, cfg.cluster.call_timeout_s
    with RunContext(cfg, load_cai_data) as ctx:
        principles = con.load_constitution(resolve_data_path(c.constitution))
        placement = ctx.place(role_specs(cfg, ["rollout", "policy", "feedback"]))
        rollouts = RolloutPool(cfg, ctx.model_path, placement, uuid.uuid4().hex[:6])
        policy = TrainerGroup("policy", ctx.model_path, cfg, placement, t, "sft")
        feedback = feedback_actor(cfg, c.feedback.model_path or ctx.model_path, placement)
        rollouts.weights = policy.state_dict_ref
        rollouts.wait_ready()
        wait(feedback.ready.remote(), "feedback (start-up)", t)
        stage_dir = ctx.output_dir / "cai"
        revisions = stage_dir / "revisions.jsonl"
        if cfg.resume and revisions.exists():  # stage 1's generations are reused on resume
            revised = [json.loads(line) for line in revisions.read_text(encoding="utf-8").splitlines()]
        else:
            with ctx.phase("generate"):
                revised = critique_and_revise(ctx, rollouts, ctx.train_rows + ctx.eval_rows, principles, random.Random(cfg.seed))
            write_jsonl(revisions, revised)
        held_out = {json.dumps(row[cfg.data.prompt_key]) for row in ctx.eval_rows}
        ctx.train_rows = [r for r in revised if json.dumps(r["prompt"]) not in held_out]
        ctx.eval_rows = [r for r in revised if json.dumps(r["prompt"]) in held_out]
        if len(ctx.train_rows) < cfg.trainer.mini_batch_size:
            raise DataError(f"only {len(ctx.train_rows)} prompts got a non-empty revision, fewer than "
                            f"trainer.mini_batch_size={cfg.trainer.mini_batch_size}; raise rollout.max_new_tokens or add prompts")
        train, held_out_rows = encode_both(ctx, encode_sft, max_prompt_tokens=cfg.data.max_prompt_tokens)
        eval_batch = pack_samples(held_out_rows, ctx.pad_id) if held_out_rows else None
        metrics = fit(ctx, policy, "policy", train, eval_batch, lambda rows: pack_samples(rows, ctx.pad_id))

        # stage 2: the fine-tuned policy samples pairs, the feedback model labels them
        with ctx.phase("weight_sync"):  # one push per run: no NCCL group is worth setting up
            make_weight_sync(cfg, policy, rollouts, nccl=False).push()
        pairs, stats = label_pairs(ctx, rollouts, feedback, revised, principles, random.Random(cfg.seed + 1))
        write_jsonl(stage_dir / "preferences.jsonl", pairs)
        log.info("cai: %d labelled pairs in %s", len(pairs), stage_dir / "preferences.jsonl")
        stage2 = {**stats, "cai/revised_prompts": len(revised), **ctx.times,
                  "cai/revision_changed": sum(r["response"] != r["initial"] for r in revised) / len(revised)}
        ctx.times = {}
        ctx.summarize("cai/summary.json", stage2)
    if c.then == "dpo":  # stage 3: DPO on the labelled pairs, from the SFT model, in <output_dir>/dpo
        from orchestrator.redteam.stages import derived_config, run_stage
        from orchestrator.storage import child

        dpo = derived_config(cfg, {"pipeline": "dpo", "algorithm": "dpo", "pipeline_algorithms": ["dpo"],
                                   "model.path": str(child(ctx.storage, "final")), "model.gguf": None,
                                   "data.path": str(stage_dir / "preferences.jsonl"), "data.eval_path": None,
                                   "trainer.max_steps": c.then_steps, "cai.then": None, "resume": None,
                                   "output_dir": str(ctx.output_dir / "dpo")})
        stage2.update({f"dpo/{k}": v for k, v in run_stage(dpo, "cai.then=dpo").items()})
    return {**metrics, **stage2}
