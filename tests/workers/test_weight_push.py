"""After a push, a running vLLM engine generates exactly what a fresh engine built from the
trainer's saved weights generates (greedy), and something different from before the push."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from orchestrator.batching import pack_samples, with_fields
from orchestrator.placement import Placement, RoleSpec
from orchestrator.roles import TrainerGroup
from orchestrator.specs import RolloutSpec
from orchestrator.weight_sync import ObjectStoreSync
from tests.conftest import compose_config
from workers.rollout import RolloutWorker

pytestmark = pytest.mark.slow

PROMPTS = [[5, 17, 42, 8], [100, 7], [3, 3, 3, 3, 3, 9], [250, 11, 12]]


def _engine(ray, path, cfg, placement, index):
    spec = dataclasses.replace(RolloutSpec.of(cfg), temperature=0.0)
    return ray.remote(RolloutWorker).options(**placement.options("rollout", index)).remote(path, spec)


def test_push_equals_fresh_engine(ray_local, tiny_model_path, tmp_path):
    ray = ray_local
    cfg = compose_config("trainer.num_ranks=1", "trainer.zero_stage=0", "trainer.lr=0.01")
    placement = Placement([RoleSpec("rollout", 2, 0.5, 0), RoleSpec("policy", 1, 0.5, 0)], "PACK", 60)
    policy = TrainerGroup("policy", tiny_model_path, cfg, placement, 600, "ppo")
    engine = _engine(ray, tiny_model_path, cfg, placement, 0)
    before = [s["response_ids"] for s in ray.get(engine.generate.remote(PROMPTS, 1, 0))]

    # one real update with made-up advantages, so the weights move
    samples = ray.get(engine.generate.remote(PROMPTS * 4, 1, 0))
    batch = pack_samples(samples, 0)
    old = policy.logprobs(batch)
    adv = torch.linspace(-1, 1, len(samples))[:, None] * batch["response_mask"]
    policy.train(with_fields(batch, old_logprobs=old, ref_logprobs=old, advantages=adv, kl_coef=0.0), 1, 0)

    ObjectStoreSync(policy, [engine], 600).push()  # the transport WeightSync uses on CPU
    pushed = [s["response_ids"] for s in ray.get(engine.generate.remote(PROMPTS, 1, 0))]

    saved = tmp_path / "saved"
    policy.save_pretrained(str(saved), tiny_model_path)
    fresh = _engine(ray, str(saved), cfg, placement, 1)
    expected = [s["response_ids"] for s in ray.get(fresh.generate.remote(PROMPTS, 1, 0))]

    assert pushed == expected
    assert pushed != before
    placement.remove()
