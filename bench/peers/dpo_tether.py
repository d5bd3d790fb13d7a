"""Tether's DPO pipeline on the same model, pairs, batch and loss, read back from metrics.jsonl.

    .venv/bin/python bench/peers/dpo_tether.py MODEL_DIR OUT.json WORK_DIR [override ...]

Time to first step: from just before the process starts to the moment metrics.jsonl first holds a
step-1 row (polled every 0.1 s). Step times: ``time/step`` (and the phases ``time/train``,
``time/reference``) of each row.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dpo_common as c

PHASES = ("time/step", "time/train", "time/reference")


def rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line still being written
    return [r for r in out if "time/step" in r]


def main(model_dir, out, work, *overrides):
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, "-m", "orchestrator", "pipeline=dpo", f"model.path={model_dir}",
           f"data.path={c.PAIRS}", f"trainer.mini_batch_size={c.BATCH}", f"trainer.micro_batch_size={c.BATCH}",
           f"algorithm.beta={c.BETA}", f"trainer.lr={c.LR}", f"trainer.max_steps={c.STEPS}",
           "logger.wandb=false", "logger.progress_bar=false", f"output_dir={work}", *overrides]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=c.ROOT)
    first = None
    while proc.poll() is None:
        if first is None and rows(work / "metrics.jsonl"):
            first = time.time() - t0
        time.sleep(0.1)
    total = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"tether exited {proc.returncode}")
    data = rows(work / "metrics.jsonl")
    first = first if first is not None else total
    phases = {k: [r.get(k) for r in data] for k in PHASES}
    res = c.summary(phases["time/step"], first, total_s=total, overrides=list(overrides),
                    phases=phases, phase_medians={k: c.statistics.median([v for v in vs[2:] if v is not None] or [0])
                                                  for k, vs in phases.items()})
    json.dump(res, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
