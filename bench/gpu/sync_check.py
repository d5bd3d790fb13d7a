"""GPU check of Tether's NCCL weight sync with the whole stack (Ray, vLLM, DeepSpeed), through the
project's own actors: a vLLM GPU engine (``workers.rollout.RolloutWorker``) and a DeepSpeed policy
(``orchestrator.roles.TrainerGroup``) on two different GPUs (NCCL refuses two ranks of one group on
one GPU). For each ZeRO stage: generate greedily, train one PPO update with made-up advantages,
broadcast the weights over NCCL (``orchestrator.weight_sync.NcclSync``, what runs use on GPU),
generate again, save the policy, and build a fresh engine from the saved folder. Passes when the
synced engine's greedy tokens equal the fresh engine's, for every stage.

    python bench/gpu/sync_check.py [--stages 2,3] [HYDRA_OVERRIDES...]   # default model=smollm2_135m

Needs 2 GPUs, the project installed with its gpu extra, and the model available offline (for
``model=smollm2_135m``: ``make sentiment-prepare``; or ``model.path=/hf/folder``). Prints one line
per stage and exits 0 when all passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PROMPTS = [[5, 17, 42, 8, 99, 1000], [100, 7, 300], [3, 3, 3, 3, 3, 9], [250, 11, 12, 4000], [77] * 10]


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from orchestrator.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def check_stage(stage: int, overrides: list[str]) -> dict:
    import ray

    from orchestrator.batching import pack_samples, with_fields
    from orchestrator.models import resolve_model_path
    from orchestrator.placement import Placement, RoleSpec
    from orchestrator.roles import TrainerGroup, remote_class
    from orchestrator.specs import RolloutSpec
    from orchestrator.weight_sync import NcclSync

    cfg = compose("model=smollm2_135m", "device=cuda", "model.dtype=bfloat16", "trainer.num_ranks=1",
                  f"trainer.zero_stage={stage}", "trainer.lr=1e-4", "rollout.gpu_memory_utilization=0.3",
                  *overrides)
    path = resolve_model_path(cfg.model)
    spec = dataclasses.replace(RolloutSpec.of(cfg), temperature=0.0)
    placement = Placement([RoleSpec("rollout", 1, 1, 1), RoleSpec("policy", 1, 1, 1)], "PACK", 120)
    timeout = 600
    t0 = time.monotonic()
    try:
        engine_cls = remote_class("RolloutWorker")
        engine = engine_cls.options(**placement.options("rollout", 0)).remote(path, spec)
        policy = TrainerGroup("policy", path, cfg, placement, timeout, "ppo")
        before = [s["response_ids"] for s in ray.get(engine.generate.remote(PROMPTS, 1, 0, True), timeout=timeout)]

        sync = NcclSync(policy, [engine], cfg.rollout.tensor_parallel_size, timeout)
        samples = ray.get(engine.generate.remote(PROMPTS * 4, 1, 0), timeout=timeout)
        batch = pack_samples(samples, 0)
        old = policy.logprobs(batch)
        adv = torch.linspace(-1, 1, len(samples))[:, None] * batch["response_mask"]
        stats = policy.train(with_fields(batch, old_logprobs=old, ref_logprobs=old, advantages=adv, kl_coef=0.0), 2, 0)
        t_sync = time.monotonic()
        sync.push()
        sync_s = time.monotonic() - t_sync
        pushed = [s["response_ids"] for s in ray.get(engine.generate.remote(PROMPTS, 1, 0, True), timeout=timeout)]

        with tempfile.TemporaryDirectory(prefix="tether-sync-check-") as saved:
            policy.save_pretrained(saved, path)
            ray.kill(engine)  # its bundle (one GPU) takes the fresh engine
            time.sleep(2)
            fresh = engine_cls.options(**placement.options("rollout", 0)).remote(saved, spec)
            expected = [s["response_ids"] for s in ray.get(fresh.generate.remote(PROMPTS, 1, 0, True), timeout=timeout)]
            ray.kill(fresh)
        for r in policy.ranks:
            ray.kill(r)
        return {"stage": stage, "equal": pushed == expected, "changed": pushed != before, "loss": stats.get("loss"),
                "sync_s": sync_s, "total_s": time.monotonic() - t0}
    finally:
        placement.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    import ray

    if torch.cuda.device_count() < 2:
        print(f"sync_check: needs 2 GPUs, found {torch.cuda.device_count()}", file=sys.stderr)
        return 2
    ray.init(include_dashboard=False)
    ok = True
    try:
        for stage in (int(s) for s in args.stages.split(",")):
            r = check_stage(stage, args.overrides)
            ok &= r["equal"]
            print(f"NCCL sync, ZeRO-{stage}: synced engine {'==' if r['equal'] else '!='} fresh engine (greedy, "
                  f"{len(PROMPTS)} prompts); outputs {'changed' if r['changed'] else 'unchanged'} by the update; "
                  f"loss {r['loss']:.4f}; broadcast {r['sync_s']:.2f} s; {r['total_s']:.0f} s in all", flush=True)
    finally:
        ray.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
