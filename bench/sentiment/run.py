"""The controlled-sentiment chain: reward model -> PPO -> GRPO -> DPO, then evaluation and report.

    make sentiment                  # prepare (once) + this script
    python bench/sentiment/run.py   # after make sentiment-prepare

Each stage is one ``python -m orchestrator`` command (its overrides are in ``STAGES``) writing
into ``outputs/sentiment/<stage>`` (log: ``outputs/sentiment/<stage>.log``); its wall time, start-up
included, goes to ``outputs/sentiment/timings.json`` with the machine's 5-minute load average at its end. A stage whose ``final`` folder exists is
skipped, so an interrupted chain continues where it stopped (delete ``outputs/sentiment`` to start
over). Then ``evaluate.py`` scores every policy on the held-out prompts and ``report.py`` writes
``bench/sentiment/REPORT.md`` and ``frontier.png``.

The sizes (steps, prompts per step, samples) are chosen so that the chain fits in about half an
hour on a 2-core CPU machine; they are far below the DPO paper's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUTPUTS = ROOT / "outputs" / "sentiment"
DATA = "data/sentiment"
QUIET = ["logger.wandb=false", "logger.tensorboard=false", "logger.progress_bar=false"]
POLICY = ["model=smollm2_135m"]
RLHF = POLICY + ["pipeline=rlhf", "reward.function=null", f"reward.model_path={OUTPUTS / 'rm' / 'final'}",
                 f"data.path={DATA}/prompts.jsonl", f"data.eval_path={DATA}/prompts_eval.jsonl",
                 "trainer.max_steps=10", "trainer.rollout_batch_size=4", "algorithm.n_samples=4",
                 "trainer.mini_batch_size=16", "trainer.micro_batch_size=8", "trainer.lr=2e-5"]
PAIRS = [f"data.path={DATA}/pairs.jsonl", f"data.eval_path={DATA}/pairs_eval.jsonl"]
STAGES = {
    "rm": ["pipeline=rm", "model=minilm_l6", *PAIRS, "trainer.max_steps=40", "trainer.mini_batch_size=32",
           "trainer.micro_batch_size=32", "trainer.lr=1e-4", "cluster.torch_threads=2"],
    "ppo": [*RLHF, "algorithm=ppo", "algorithm.kl_coef=0.05", "trainer.critic_lr=2e-5"],
    "grpo": [*RLHF, "algorithm=grpo", "algorithm.kl_coef=0.05"],
    "dpo": ["pipeline=dpo", *POLICY, "algorithm=dpo", *PAIRS, "algorithm.beta=0.1", "trainer.max_steps=20",
            "trainer.mini_batch_size=8", "trainer.micro_batch_size=8", "trainer.lr=5e-6", "data.max_length=128",
            "data.max_prompt_tokens=64", "cluster.torch_threads=2"],
}


def run_stage(name: str, overrides: list[str]) -> float | None:
    """Run one stage unless it already finished; returns its wall time in seconds (None: skipped)."""
    out = OUTPUTS / name
    if (out / "final").is_dir():
        print(f"{name}: done already ({out / 'final'})", flush=True)
        return None
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "orchestrator", *overrides, *QUIET, f"output_dir={out}"]
    print(f"{name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    with open(OUTPUTS / f"{name}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{name} failed (exit {proc.returncode}) after {seconds:.0f} s; see {OUTPUTS / f'{name}.log'}")
    print(f"{name}: {seconds:.0f} s", flush=True)
    return seconds


def main() -> None:
    """Run the stages, the evaluation and the report; keep every stage's wall time."""
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    timings_path = OUTPUTS / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for name, overrides in STAGES.items():
        seconds = run_stage(name, overrides)
        if seconds is not None:
            timings[name] = {"seconds": seconds, "overrides": overrides, "load_avg": os.getloadavg()[1]}
            timings_path.write_text(json.dumps(timings, indent=1))
    from bench.sentiment.evaluate import OUTPUTS as EVAL_OUT, evaluate, finished_policies

    start = time.perf_counter()
    policies = finished_policies()
    results = evaluate(policies, policies["initial"], str(EVAL_OUT / "rm" / "final"))
    (OUTPUTS / "eval.json").write_text(json.dumps(results, indent=1))
    timings["evaluate"] = {"seconds": time.perf_counter() - start, "overrides": [], "load_avg": os.getloadavg()[1]}
    timings_path.write_text(json.dumps(timings, indent=1))
    from bench.sentiment.report import write_report

    print(write_report())


if __name__ == "__main__":
    main()
