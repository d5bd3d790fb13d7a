"""Run Tether's CLI once on a peer's work and read its step times back from metrics.jsonl, with the memory
of every process of the run.

    .venv/bin/python bench/peers/tether_run.py dpo|grpo|rloo MODEL_DIR OUT.json WORK_DIR [override ...]

Time to first step: from just before the process starts to the moment metrics.jsonl first holds a step-1
row (polled every 0.2 s). Step times: ``time/step`` and every phase (``time/generate``, ``time/train``, ...)
of each row. CPU: the seconds each process of the run had used when step 1's row appeared (the start-up's
work: what the cores must share before the first step). Memory: the resident set (RSS) of the driver and of
every Ray worker process under it, sampled every 0.2 s; Ray titles a worker process ``ray::<actor class>...``,
which names it here. Besides each one's peak, its RSS when each step's row appears shows whether anything grows step over step.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

import common as c

WORK = {
    "dpo": ["pipeline=dpo", f"data.path={c.PAIRS}", f"trainer.mini_batch_size={c.BATCH}",
            f"trainer.micro_batch_size={c.BATCH}", f"algorithm.beta={c.BETA}", f"trainer.lr={c.LR}",
            f"trainer.max_steps={c.STEPS}"],
    **{algo: ["pipeline=rlhf", f"algorithm={algo}", f"data.path={c.PROMPTS}", "data.eval_path=null",
              f"trainer.rollout_batch_size={c.RL['prompts_per_step']}", f"algorithm.n_samples={c.RL['samples']}",
              f"rollout.max_new_tokens={c.RL['new_tokens']}", "algorithm.kl_coef=0",
              f"trainer.mini_batch_size={c.RL['prompts_per_step'] * c.RL['samples']}", "trainer.micro_batch_size=8",
              f"trainer.lr={c.RL['lr']}", f"trainer.max_steps={c.RL['steps']}",
              "reward.function=orchestrator/rewards/examples.py:letter_frequency"]
       for algo in ("grpo", "rloo")},
}


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


def processes(proc: psutil.Process, names: dict[int, str], used: dict[int, float]) -> dict:
    """RSS in bytes of the driver and of each Ray actor process under it (by pid). Ray titles
    an actor's process ``ray::ActorClass`` or ``ray::<actor name>`` over time; ``names`` keeps the class.
    The same walk stores each process's CPU seconds so far (user + system) in ``used``, Ray's own processes
    included; a process that has exited keeps its last reading."""
    used[proc.pid] = sum(proc.cpu_times()[:2])
    out = {"driver": proc.memory_info().rss}
    for child in proc.children(recursive=True):
        try:
            used[child.pid] = sum(child.cpu_times()[:2])
            actor = re.match(r"ray::([\w-]+)", " ".join(child.cmdline()))
            if actor is None or actor.group(1) in ("IDLE", "DashboardAgent", "RuntimeEnvAgent"):
                continue
            if child.pid not in names or actor.group(1)[0].isupper():
                names[child.pid] = actor.group(1).split(".")[0]
            out[child.pid] = child.memory_info().rss
        except psutil.Error:
            pass
    return out


def cpu_by_process(driver: int, names: dict[int, str], used: dict[int, float]) -> dict[str, float]:
    """``used`` summed as ``{"driver" | actor class | "Ray": CPU seconds}``; "Ray" is the rest of Ray's
    processes together (GCS, raylet, dashboard, agents, idle workers)."""
    out: dict[str, float] = {}
    for pid, secs in used.items():
        label = "driver" if pid == driver else names.get(pid, "Ray")
        out[label] = round(out.get(label, 0.0) + secs, 2)
    return out


def labelled(rss: dict, names: dict[int, str]) -> dict[str, int]:
    """``{"ActorClass pid" | "driver": MiB}`` with each process's last known actor class."""
    return {(k if k == "driver" else f"{names.get(k, 'actor')} {k}"): round(v / 2**20) for k, v in rss.items()}


def main(work_name, model_dir, out, work, *overrides):
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, "-m", "orchestrator", *WORK[work_name], f"model.path={model_dir}", "model.gguf=null",
           "logger.wandb=false", "logger.progress_bar=false", "trainer.save_final=false", f"output_dir={work}",
           *overrides]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=os.environ.get("BENCH_TETHER_ROOT", c.ROOT))  # bench.py's baseline: another checkout
    ps = psutil.Process(proc.pid)
    first, peak, at_steps, seen, names, used, cpu_first = None, {}, [], 0, {}, {}, {}
    while proc.poll() is None:
        try:
            now = processes(ps, names, used)
        except psutil.Error:
            now = {}
        for k, v in now.items():
            peak[k] = max(peak.get(k, 0), v)
        done = len(rows(work / "metrics.jsonl"))
        if done > seen:
            seen = done
            at_steps.append(now)
            if first is None:
                first, cpu_first = time.time() - t0, cpu_by_process(ps.pid, names, used)
        time.sleep(0.2)
    total = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"tether exited {proc.returncode}")
    data = rows(work / "metrics.jsonl")
    keys = sorted({k for r in data for k in r if k.startswith("time/") and k != "time/to_first_step"
                   and not k.startswith("time/start/")})
    phases = {k: [r.get(k) for r in data] for k in keys}
    medians = {k: c.statistics.median([v for v in vs[2:] if v is not None] or [0]) for k, vs in phases.items()}
    res = c.summary(phases["time/step"], first if first is not None else total, total_s=total,
                    overrides=list(overrides), phases=phases, phase_medians=medians,
                    peak_rss_mb=labelled(peak, names), rss_at_steps_mb=[labelled(r, names) for r in at_steps],
                    reward=[r.get("reward/mean") for r in data], cpu_to_first_step_s=cpu_first,
                    logged_to_first_step_s=data[0].get("time/to_first_step") if data else None,
                    start_stages_s={k[11:]: v for k, v in (data[0] if data else {}).items() if k.startswith("time/start/")})
    json.dump(res, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
