"""`make bench-dpo`: the DPO step of a plain PyTorch loop, TRL's DPOTrainer and Tether (default and
cluster.torch_threads=2), one after the other on the same model, pairs and sizes; writes
bench/results/dpo.md and bench/results/dpo.json. Run with the project venv's Python."""

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
TRL_PY = HERE / ".venv-trl" / "bin" / "python"
RESULTS = ROOT / "bench" / "results"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(HERE)}


def model_dir() -> str:
    from omegaconf import OmegaConf
    from orchestrator.models import resolve_model_path
    return resolve_model_path(OmegaConf.load(ROOT / "conf" / "model" / "smollm2_135m.yaml").model)


def run(name, py, script, model, *overrides) -> dict:
    """Run one peer (``script MODEL OUT WORK [override ...]``) in its own process; its result JSON."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    argv = [str(a) for a in (py, HERE / script, model, tmp / "result.json", tmp / "work", *overrides)]
    print(f"== {name}: {' '.join(argv)}", flush=True)
    proc = subprocess.run(argv, env={**ENV, "BENCH_T0": repr(time.time())}, cwd=ROOT)
    if proc.returncode != 0 or not (tmp / "result.json").is_file():
        print(f"== {name} FAILED (exit {proc.returncode})", flush=True)
        return {"error": f"failed (exit {proc.returncode})"}
    res = json.loads((tmp / "result.json").read_text())
    shutil.rmtree(tmp, ignore_errors=True)  # Tether's run folder holds a 0.5 GB final model
    return res


def versions(py) -> str:
    code = ("import importlib.metadata as m\nfor p in ('torch','transformers','trl','deepspeed','accelerate'):\n"
            " try: print(p, m.version(p))\n except m.PackageNotFoundError: pass")
    return ", ".join(subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout.split("\n")[:-1])


def fmt(x):
    return "-" if x is None else f"{x:.2f} s"


def write(res: dict, model: str) -> None:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    cols = ["plain", "trl", "tether", "tether_t2"]
    med = {k: res[k].get("median_s") for k in cols}
    ratio = lambda a, b: "-" if not (med[a] and med[b]) else f"{med[a] / med[b]:.2f}"  # noqa: E731
    lines = [
        "# DPO step, side by side (issue 17)", "",
        f"Written by `make bench-dpo` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        f"Machine: {os.cpu_count()} CPUs (`nproc` {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}), "
        f"{cpu}, Python {platform.python_version()}.", "",
        f"- project venv: {versions(sys.executable)}",
        f"- TRL venv: {versions(TRL_PY)}", "",
        f"Work: SmolLM2-135M-Instruct (float32 HF folder `{model}`), the 64 pairs of "
        "`orchestrator/assets/preferences/tiny.jsonl` (chat-templated prompt, response + EOS; "
        f"{res['plain'].get('tokens_per_step', 0):.0f} tokens a step over 16 sequences), 8 pairs a step, sigmoid DPO, "
        "beta 0.1, AdamW lr 1e-6, fp32, 8 steps. Step time: median of steps 3..8. Time to first step: from "
        "process start to step 1 done. Run one after the other, nothing else running.", "",
        "| work | plain loop (2 threads) | TRL 1.16 DPOTrainer | Tether default | Tether torch_threads=2 "
        "| Tether/TRL (default, t=2) | Tether/plain (default, t=2) |",
        "|---|---|---|---|---|---|---|",
        f"| DPO step | {fmt(med['plain'])} | {fmt(med['trl'])} | {fmt(med['tether'])} | {fmt(med['tether_t2'])} "
        f"| {ratio('tether', 'trl')}, {ratio('tether_t2', 'trl')} | {ratio('tether', 'plain')}, {ratio('tether_t2', 'plain')} |",
        "| time to first step | " + " | ".join(fmt(res[k].get("first_step_s")) for k in cols) + " | | |", "",
        "Tether phases (median of steps 3..8; `time/step` = reference then train, one after the other):", "",
        "| Tether run | time/step | time/train | time/reference | whole process |", "|---|---|---|---|---|",
    ]
    for k, label in (("tether", "default"), ("tether_t2", "cluster.torch_threads=2")):
        pm = res[k].get("phase_medians", {})
        lines.append(f"| {label} | {fmt(pm.get('time/step'))} | {fmt(pm.get('time/train'))} | "
                     f"{fmt(pm.get('time/reference'))} | {fmt(res[k].get('total_s'))} |")
    lines += ["", "Every step (s):", ""]
    for k in cols:
        lines.append(f"- {k}: " + (", ".join(f"{t:.2f}" for t in res[k]["steps_s"]) if "steps_s" in res[k]
                                   else res[k].get("error", "not measured")))
    lines += ["", "Notes: TRL runs with `bf16=False` and `gradient_checkpointing=False` (its DPOConfig turns both "
              "on by default) so that all three do the same fp32 work without recomputation; TRL's prompt is given "
              "already chat-templated (the text Tether renders), and the token counts of all three match. "
              "TRL and the plain loop use 2 torch threads (TRL by default on this machine)."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dpo.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "dpo.json").write_text(json.dumps(res, indent=1) + "\n")
    print("\n".join(lines))


def main():
    model = model_dir()
    res = {
        "plain": run("plain", sys.executable, "dpo_plain.py", model),
        "trl": run("trl", TRL_PY, "dpo_trl.py", model),
        "tether": run("tether", sys.executable, "dpo_tether.py", model),
        "tether_t2": run("tether t=2", sys.executable, "dpo_tether.py", model, "cluster.torch_threads=2"),
    }
    write(res, model)


if __name__ == "__main__":
    main()
