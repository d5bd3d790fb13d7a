"""The evaluation suite: a named set of evaluations on a model, and a gate against a baseline.

As on paper:
  1. the suite ``eval.suite`` (``orchestrator/evals``: hhh, helpful, harmless, honest) names the evaluations;
  2. the model (``model``, e.g. a run's ``final/``) is measured (``orchestrator/evals/measures.py``): held-out
     reward of greedy answers, held-out preference accuracy, red-team attack success rate and benign refusal
     rate (``redteam.*``, outputs in ``<output_dir>/eval/redteam``), accuracy on true/false statements;
  3. ``<output_dir>/eval/summary.json`` holds the numbers with their direction and HHH property; the same
     numbers go to metrics.jsonl / TensorBoard / wandb as ``eval/<name>`` (step 1);
  4. with ``eval.baseline`` (an earlier summary of the same suite), a metric worse by more than
     ``eval.tolerance`` ends the run with exit status 3 and one line per regressed metric.
Every measure is on greedy answers or log-probs, so a rerun on the same model gives the same numbers.
"""

from __future__ import annotations

import json
import logging
import uuid

from orchestrator import atomic
from orchestrator.data import load_prompt_rows
from orchestrator.evals import EVALS, SUITES
from orchestrator.evals import measures
from orchestrator.evals.gate import gate, load_baseline
from orchestrator.inputs import ASSETS, resolve_data_path
from orchestrator.placement import RoleSpec, role_specs
from orchestrator.preference_data import load_pair_rows
from orchestrator.redteam.attacks import load_attacks
from orchestrator.redteam.attempt import attack
from orchestrator.redteam.judge_actor import Judge
from orchestrator.redteam.judges import check_judge, judge_roles
from orchestrator.redteam.report import summarize, write_outputs
from orchestrator.rewards.loader import check_reward_file
from orchestrator.roles import RolloutPool, reference_actor, reward_actor
from orchestrator.run import RunContext
from orchestrator.runtime import wait

log = logging.getLogger("tether")
DEFAULTS = {"prompts_path": f"{ASSETS}/prompts/tiny_eval.jsonl", "pairs_path": f"{ASSETS}/preferences/tiny_eval.jsonl",
            "honesty_path": f"{ASSETS}/honesty/true_false.jsonl"}


def load_eval_inputs(cfg) -> tuple[dict, list]:
    """Every input the suite reads, and the baseline, checked before anything starts."""
    names, e, limit = SUITES[cfg.eval.suite], cfg.eval, cfg.data.max_row_bytes
    path = lambda key: resolve_data_path(e.get(key) or DEFAULTS[key])  # noqa: E731
    inputs = {"baseline": load_baseline(cfg)}
    if "held_out_reward" in names:
        inputs["prompts"] = load_prompt_rows(path("prompts_path"), cfg.data.prompt_key, field="eval.prompts_path",
                                             max_row_bytes=limit)
        if cfg.reward.function:
            check_reward_file(cfg.reward.function, cfg.reward.import_timeout_s)
    if "preference_accuracy" in names:
        inputs["pairs"] = load_pair_rows(path("pairs_path"), field="eval.pairs_path", max_row_bytes=limit)
    if "honesty_accuracy" in names:
        inputs["honesty"] = measures.load_honesty_rows(path("honesty_path"), limit)
    if {"attack_success_rate", "benign_refusal_rate"} & set(names):
        inputs["attacks"] = load_attacks(cfg)
        check_judge(cfg)
    return inputs, []


def roles(cfg, names: list[str]) -> list[RoleSpec]:
    """The actors the suite's evaluations need."""
    out = role_specs(cfg, ["rollout"]) if {"held_out_reward", "attack_success_rate", "benign_refusal_rate"} & set(names) else []
    out += role_specs(cfg, ["reward"]) if "held_out_reward" in names else []
    out += role_specs(cfg, ["reference"]) if {"preference_accuracy", "honesty_accuracy"} & set(names) else []
    return out + (judge_roles(cfg) if {"attack_success_rate", "benign_refusal_rate"} & set(names) else [])


def run(cfg) -> dict:
    """Measure the suite, write the summary, then gate against the baseline (exit 3 on a regression)."""
    names = SUITES[cfg.eval.suite]
    with RunContext(cfg, load_eval_inputs) as ctx:
        inputs, t = ctx.train_rows, cfg.cluster.call_timeout_s
        placement = ctx.place(roles(cfg, names))
        actors = {s.name: s for s in placement.roles}
        rollouts = RolloutPool(cfg, ctx.model_path, placement, uuid.uuid4().hex[:6]) if "rollout" in actors else None
        reward = reward_actor(cfg, placement, uuid.uuid4().hex[:6]) if "reward" in actors else None
        reference = reference_actor(cfg, ctx.model_path, placement) if "reference" in actors else None
        judge = Judge(cfg, ctx.model_path, placement) if "attacks" in inputs else None
        metrics: dict[str, float | None] = {}
        if rollouts is not None:
            rollouts.wait_ready()
        if "held_out_reward" in names:
            wait(reward.ready.remote(), "reward (start-up)", t)
            metrics["held_out_reward"] = measures.held_out_reward(ctx, rollouts, reward, inputs["prompts"])
        if "preference_accuracy" in names:
            metrics["preference_accuracy"] = measures.preference_accuracy(ctx, reference, inputs["pairs"])
        if "honesty_accuracy" in names:
            metrics["honesty_accuracy"] = measures.honesty_accuracy(ctx, reference, inputs["honesty"])
        if judge is not None:
            judge.ready()
            rows = attack(ctx, rollouts, judge, inputs["attacks"])
            red = summarize(rows, cfg.redteam.threshold)
            write_outputs(ctx.output_dir / "eval" / "redteam", rows, red, f"red team: {cfg.model.name}")
            metrics.update({k: red[k] for k in ("attack_success_rate", "benign_refusal_rate") if k in names})
        summary = {"suite": cfg.eval.suite, "model": str(ctx.model_path),
                   "metrics": {n: metrics[n] for n in names}, "direction": {n: EVALS[n][0] for n in names},
                   "hhh": {n: EVALS[n][1] for n in names}}
        (ctx.output_dir / "eval").mkdir(parents=True, exist_ok=True)
        atomic.write_text(ctx.output_dir / "eval" / "summary.json", json.dumps(summary, indent=1) + "\n")
        ctx.log(1, {f"eval/{n}": v for n, v in summary["metrics"].items() if v is not None})
        log.info("eval: %s (%s)", " ".join(f"{n}={v:.4g}" for n, v in metrics.items() if v is not None),
                 ctx.output_dir / "eval" / "summary.json")
    gate(cfg, summary, inputs["baseline"])
    return {f"eval/{n}": v for n, v in summary["metrics"].items() if v is not None}
