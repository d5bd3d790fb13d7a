"""With ``rollout.asynchronous`` the engine returns the log-prob of each token it sampled, under the
distribution it sampled from (logits / temperature): the trainer's log-probs of the same tokens with
the same weights, which is what makes them usable as the old policy of the importance ratio."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from orchestrator.batching import pack_samples
from orchestrator.specs import RolloutSpec
from tests.conftest import compose_config
from workers.common import batched_logprobs
from workers.rollout import RolloutWorker

pytestmark = pytest.mark.slow

PROMPTS = [[5, 17, 42, 8], [100, 7], [3, 3, 3, 3, 3, 9]]


def test_engine_sampling_logprobs_equal_trainer_logprobs(ray_local, tiny_model_path):
    cfg = compose_config("rollout.asynchronous=true", "rollout.temperature=0.7", "rollout.max_new_tokens=12")
    spec = RolloutSpec.of(cfg)
    assert spec.sampling_logprobs and spec.temperature == 0.7
    engine = ray_local.remote(RolloutWorker).options(num_cpus=0.5).remote(tiny_model_path, spec)
    samples = ray_local.get(engine.generate.remote(PROMPTS, 2, 0))
    assert len(samples) == 6 and all(len(s["logprobs"]) == len(s["response_ids"]) > 0 for s in samples)

    batch = pack_samples(samples, 0, temperature=0.7)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    want = batched_logprobs(model, batch, micro_batch_size=6)
    mask = batch["response_mask"].bool()
    torch.testing.assert_close(batch["sampling_logprobs"][mask], want[mask], rtol=0, atol=2e-3)
    # at temperature 1 the same tokens are likelier or less likely: the temperature is taken into account
    raw = batched_logprobs(model, dict(batch, temperature=1.0), micro_batch_size=6)
    assert (raw[mask] - want[mask]).abs().max() > 0.05

    # the synchronous default returns no log-probs (nothing extra computed or sent)
    plain = dataclasses.replace(spec, sampling_logprobs=False)
    engine2 = ray_local.remote(RolloutWorker).options(num_cpus=0.5).remote(tiny_model_path, plain)
    assert "logprobs" not in ray_local.get(engine2.generate.remote(PROMPTS[:1], 1, 0))[0]
    assert "sampling_logprobs" not in pack_samples(ray_local.get(engine2.generate.remote(PROMPTS[:1], 1, 0)), 0)
