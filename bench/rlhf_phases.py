"""Where an RLHF step's time goes: runs the CLI for each setting and tabulates the phase times.

    python bench/rlhf_phases.py                          # the settings below, 25 steps each
    python bench/rlhf_phases.py trainer.max_steps=10     # extra overrides, added to every setting

Each setting runs ``python -m orchestrator`` with its overrides; the table reports the mean of
every ``time/*`` metric over the steps after the first (warm-up), tokens per second, the
wall time of the whole command (start-up included) and the reward's first -> last value.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "ppo / vllm": ["algorithm=ppo"],
    "grpo / vllm": ["algorithm=grpo"],
    "ppo / hf": ["algorithm=ppo", "rollout=hf"],
    "grpo / vllm / 2 ranks ZeRO-2": ["algorithm=grpo", "trainer.num_ranks=2", "trainer.zero_stage=2"],
}
PHASES = ["generate", "reward", "reference", "old_logprobs", "values", "train", "weight_sync", "step"]


def run_setting(overrides: list[str]) -> dict:
    """Run one setting; return its mean phase times and totals."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "orchestrator", "trainer.max_steps=25", f"output_dir={tmp}/run",
               "logger.wandb=false", "logger.tensorboard=false", "logger.progress_bar=false",
               "trainer.save_final=false", *overrides]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    warm = rows[1:] or rows
    out = {p: sum(r.get(f"time/{p}", 0.0) for r in warm) / len(warm) for p in PHASES}
    out["tokens_per_second"] = sum(r["tokens_per_second"] for r in warm) / len(warm)
    out["wall"] = wall
    out["reward_change"] = f"{rows[0]['reward/mean']:.3f} -> {rows[-1]['reward/mean']:.3f}"
    return out


def main() -> None:
    """Run every setting (plus the command line's overrides) and print a markdown table."""
    extra = sys.argv[1:]
    print("| setting | " + " | ".join(f"{p} s" for p in PHASES) + " | tok/s | wall s | reward |")
    print("|---" * (len(PHASES) + 4) + "|")
    for name, overrides in SETTINGS.items():
        r = run_setting(overrides + extra)
        cells = " | ".join(f"{r[p]:.3f}" for p in PHASES)
        print(f"| {name} | {cells} | {r['tokens_per_second']:.0f} | {r['wall']:.0f} | {r['reward_change']} |", flush=True)


if __name__ == "__main__":
    main()
