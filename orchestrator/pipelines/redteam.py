"""Red-teaming: find where the model misbehaves, and keep the failures as targeted training data.

As on paper:
  1. attacks: the rows of ``redteam.attacks`` (``{"prompt", "category"[, "benign"]}``; benign rows are
     controls that look risky), filtered by ``redteam.categories`` and capped by ``redteam.max_attacks``;
  2. with ``redteam.generate_per_category=K``, the attacker model (``redteam.attacker.model_path``, default the
     target) writes K new attacks per category from few-shot examples (``orchestrator/redteam/generate.py``);
  3. the target (``model``, e.g. a run's ``final/``) answers every attack greedily on the rollout engines;
  4. the judge (``redteam.judge``: a Python function, a classifier, or the constitution) gives each answer a
     harm score in [0, 1]; an attack with a score >= ``redteam.threshold`` is a failure;
  5. ``<output_dir>/redteam/``: ``summary.json`` (attack success rate overall and per category, benign refusal
     rate), ``responses.jsonl``, ``failures.jsonl`` (a ``data.path`` for ``pipeline=cai``), ``by_category.png``;
     the same numbers in metrics.jsonl / TensorBoard / wandb (as step 1).
With ``redteam.retrain=true`` the targeted-training cycle follows: CAI on the failures, DPO on its labelled
pairs, the same attacks again, and a before/after table (``orchestrator/redteam/cycle.py``).
Assumes a chat model: the tiny default answers noise. The judge is only as good as its rule or model.
"""

from __future__ import annotations

import logging
import uuid

from orchestrator.placement import role_specs
from orchestrator.redteam.attacks import load_attacks
from orchestrator.redteam.attempt import attack
from orchestrator.redteam.judge_actor import Judge
from orchestrator.redteam.judges import check_judge, judge_roles
from orchestrator.redteam.report import summarize, tracked_metrics, write_outputs
from orchestrator.roles import RolloutPool
from orchestrator.run import RunContext

log = logging.getLogger("tether")


def load_redteam_inputs(cfg) -> tuple[list[dict], list[dict]]:
    """Attack rows and the judge, checked before anything starts."""
    attacks = load_attacks(cfg)
    check_judge(cfg)
    return attacks, []


def run(cfg) -> dict:
    """Red-team the target once (and, with ``redteam.retrain``, train on the failures and red-team again)."""
    r = cfg.redteam
    with RunContext(cfg, load_redteam_inputs) as ctx:
        attacks = ctx.train_rows
        if r.generate_per_category and r.attacker.model_path:  # another model: its own engines, freed after
            from orchestrator.redteam.generate import attacks_from_other_model

            attacks = attacks + attacks_from_other_model(ctx, attacks)
        placement = ctx.place(role_specs(cfg, ["rollout"]) + judge_roles(cfg))
        rollouts = RolloutPool(cfg, ctx.model_path, placement, uuid.uuid4().hex[:6])
        judge = Judge(cfg, ctx.model_path, placement)
        rollouts.wait_ready()
        judge.ready()
        if r.generate_per_category and not r.attacker.model_path:  # the target writes attacks on itself
            from orchestrator.redteam.generate import generate_attacks

            attacks = attacks + generate_attacks(ctx, rollouts, attacks, "target")
        rows = attack(ctx, rollouts, judge, attacks)
        summary = summarize(rows, r.threshold)
        write_outputs(ctx.output_dir / "redteam", rows, summary, f"red team: {cfg.model.name} ({cfg.output_dir})")
        ctx.log(1, tracked_metrics(summary))
        log.info("redteam: attack success rate %.3f over %d attacks; benign refusal rate %s; files in %s",
                 summary["attack_success_rate"], summary["n_attacks"], summary["benign_refusal_rate"],
                 ctx.output_dir / "redteam")
    if r.retrain:
        from orchestrator.redteam.cycle import retrain_and_attack_again

        return retrain_and_attack_again(cfg, summary)
    return tracked_metrics(summary)
