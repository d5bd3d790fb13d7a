"""Which RLHF passes run (orchestrator/algorithms/passes.py), and the policy objective without an
old-log-prob pass: the same loss and gradient as with old log-probs from a separate forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from orchestrator.algorithms import needs_old_logprobs, uses_reference
from orchestrator.batching import pack_samples, with_fields
from workers.common import batched_logprobs
from workers.objectives import ppo

RL = {"kl_coef": 0.05, "kl_target": None, "ppo_epochs": 1, "kl_mode": "loss", "policy_loss": "ppo",
      "clip_eps": 0.2, "entropy_coef": 0.0, "kl_estimator": "k3"}


@pytest.mark.parametrize("change,reference,old", [
    ({}, True, False),                                   # GRPO-like, one update per batch
    ({"kl_coef": 0.0}, False, False),                    # no KL term at all
    ({"kl_coef": 0.0, "kl_target": 6.0}, True, False),   # adaptive controller may raise the coefficient
    ({"kl_mode": "reward"}, True, True),                 # the penalty is computed before training
    ({"kl_mode": "reward", "kl_coef": 0.0}, False, False),
    ({"ppo_epochs": 2}, True, True),                     # the ratio moves in the second epoch
])
def test_passes_needed(change, reference, old):
    a = {**RL, **change}
    assert uses_reference(a) == reference
    assert needs_old_logprobs(a, samples_per_step=32, mini_batch_size=32) == old
    assert needs_old_logprobs(a, samples_per_step=32, mini_batch_size=16)  # two mini-batches: always


def test_ppo_objective_without_old_logprobs_matches_a_separate_pass(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    g = torch.Generator().manual_seed(0)
    samples = [{"prompt_ids": torch.randint(5, 400, (3 + i % 3,), generator=g).tolist(),
                "response_ids": torch.randint(5, 400, (4 + i % 4,), generator=g).tolist()} for i in range(6)]
    batch = pack_samples(samples, 0)
    ref = batched_logprobs(model, batch, 6) + 0.1 * batch["response_mask"]
    adv = torch.linspace(-1, 1, 6)[:, None] * batch["response_mask"]
    common = dict(advantages=adv, ref_logprobs=ref, kl_coef=0.05)
    results = []
    for old in (batched_logprobs(model, batch, 6), None):
        model.zero_grad()
        loss, stats = ppo(model, with_fields(batch, old_logprobs=old, **common), RL)
        loss.backward()
        results.append((float(loss), stats, [p.grad.clone() for p in model.parameters()]))
    (loss_a, stats_a, grads_a), (loss_b, stats_b, grads_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-5, abs=1e-6) and stats_b["clipfrac"] == 0.0
    assert stats_b["kl"] == pytest.approx(stats_a["kl"], rel=1e-5)
    # ref = logp + 0.1 on response tokens: KL per sequence = -0.1 x its length
    assert stats_b["kl"] == pytest.approx(-0.1 * float(batch["response_mask"].sum(-1).mean()), rel=1e-4)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_entropy_bonus_off_is_a_metric_and_on_enters_the_loss(tiny_model_path):
    """entropy_coef=0 measures the entropy without a graph through it; a positive coefficient subtracts
    that same entropy from the loss."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    g = torch.Generator().manual_seed(1)
    samples = [{"prompt_ids": torch.randint(5, 400, (4,), generator=g).tolist(),
                "response_ids": torch.randint(5, 400, (3 + i,), generator=g).tolist()} for i in range(4)]
    batch = with_fields(pack_samples(samples, 0), advantages=torch.ones(4, 6), kl_coef=0.0)
    off, stats_off = ppo(model, batch, RL)
    on, stats_on = ppo(model, batch, {**RL, "entropy_coef": 0.01})
    assert stats_off["entropy"] == pytest.approx(stats_on["entropy"], rel=1e-6) and stats_off["entropy"] > 0
    assert float(on) == pytest.approx(float(off) - 0.01 * stats_on["entropy"], rel=1e-5, abs=1e-7)
