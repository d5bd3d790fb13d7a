"""The output head runs only on the positions that predict response tokens (``logits_to_keep``), with
the same logits as a full forward sliced afterwards; a head that cannot skip positions (the critic's
token classification) still gets the full forward."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from orchestrator.batching import pack_samples
from workers.common import keeps_logits, response_logits


def _batch():
    g = torch.Generator().manual_seed(0)
    samples = [{"prompt_ids": torch.randint(5, 400, (3 + i % 5,), generator=g).tolist(),
                "response_ids": torch.randint(5, 400, (2 + i % 4,), generator=g).tolist()} for i in range(6)]
    return pack_samples(samples, 0)


def _full_then_sliced(model, b):
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"]).logits
    p, t = b["prompt_len"], b["response_mask"].shape[1]
    return logits[:, p - 1 : p - 1 + t].float()


@torch.no_grad()
def test_kept_logits_equal_the_full_forward(tiny_model_path):
    b = _batch()
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    critic = AutoModelForTokenClassification.from_pretrained(tiny_model_path, num_labels=1).eval()
    assert keeps_logits(lm) and not keeps_logits(critic)
    for model in (lm, critic):
        kept = response_logits(model, b)
        assert kept.shape[:2] == b["response_mask"].shape
        assert torch.equal(kept, _full_then_sliced(model, b))
