"""Where the time to first step goes: the CPU seconds each process of a run has used when step 1's row
appears, for Tether now and as it was before the speed work, rounds alternating; writes
bench/results/start_cpu.md.

    .venv/bin/python bench/peers/start_cpu.py [dpo] [grpo] [rloo]     # default: dpo; BENCH_ROUNDS=2

Busy = CPU seconds of all the run's processes / (cores x time to first step): how much of the machine the
start-up used. With the same CPU work, a time to first step can fall only as far as busy can rise to 1.
"""

import datetime
import os
import statistics
import sys

import bench

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
STEPS = "trainer.max_steps=3"  # the step-time median needs 3 steps; the start is what is measured here


def one(work: str, model: str, baseline: bool) -> dict:
    """One run of ``work``; ``bench.run`` starts the baseline's from its checkout (by the label)."""
    label = f"{work} / {bench.BASELINE_LABEL}" if baseline else f"{work} / Tether"
    return bench.run(label, sys.executable, "tether_run.py", model, [work, *bench.M, STEPS])


def table(work: str, runs: dict[str, list[dict]]) -> list[str]:
    cores = os.cpu_count()
    labels = sorted({k for rs in runs.values() for r in rs for k in r.get("cpu_to_first_step_s", {})})
    out = [f"### {work}", "", "| run | time to first step | busy | CPU s, all | " + " | ".join(labels) + " |",
           "|---|---|---|---|" + "---|" * len(labels)]
    for name, rs in runs.items():
        for r in rs:
            if "error" in r:
                out.append(f"| {name} | {r['error']} |")
                continue
            cpu = r["cpu_to_first_step_s"]
            total = sum(cpu.values())
            out.append(f"| {name} | {r['first_step_s']:.1f} s | {total / (cores * r['first_step_s']):.0%} | {total:.1f} | "
                       + " | ".join(f"{cpu.get(k, 0):.1f}" for k in labels) + " |")
    med = {n: statistics.median([r["first_step_s"] for r in rs if "error" not in r] or [float("nan")])
           for n, rs in runs.items()}
    now, before = med["Tether"], med[f"Tether at {bench.BASELINE}"]
    out += ["", f"Median time to first step: {now:.1f} s against {before:.1f} s ({now / before:.2f}x).", ""]
    return out


def main(works: list[str]) -> None:
    model = bench.model_dir()
    lines = ["# Time to first step: CPU seconds by process", "",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
             f"{bench.versions(sys.executable)}; `bench/peers/start_cpu.py`, {ROUNDS} rounds alternating.", ""]
    for work in works:
        runs: dict[str, list[dict]] = {"Tether": [], f"Tether at {bench.BASELINE}": []}
        for _ in range(ROUNDS):
            runs[f"Tether at {bench.BASELINE}"].append(one(work, model, True))
            runs["Tether"].append(one(work, model, False))
        lines += table(work, runs)
    (bench.RESULTS / "start_cpu.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:] or ["dpo"])
