"""The output head runs only on the positions that predict response tokens (``logits_to_keep``), with
the same logits as a full forward sliced afterwards; a head that cannot skip positions (the critic's
token classification) still gets the full forward. Rows that share a prompt run it once."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, MistralConfig, MistralForCausalLM

from orchestrator.batching import pack_samples
from workers.common import (gather_logprobs, keeps_logits, prompt_groups, response_logits, response_tokens,
                            shuffled_order)


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


def _grouped_batch(prompts=2, samples=3):
    """``prompts`` distinct prompts of different lengths, each with ``samples`` responses of different lengths."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(prompts):
        prompt = torch.randint(5, 400, (4 + 3 * i,), generator=g).tolist()
        rows += [{"prompt_ids": prompt, "response_ids": torch.randint(5, 400, (2 + j,), generator=g).tolist()}
                 for j in range(samples)]
    return pack_samples(rows, 0)


def test_rows_sharing_a_prompt_run_it_once_with_the_same_logits_and_gradients(tiny_model_path):
    """A GRPO group's rows share their prompt: it runs through the model once (counted at the embedding)
    and the response logits, and the gradients of a loss on them, equal one whole forward per row."""
    b = _grouped_batch()
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_path).train()
    seen = []
    lm.get_input_embeddings().register_forward_hook(lambda mod, args, out: seen.append(args[0].numel()))
    first, group = prompt_groups(b)
    assert first.tolist() == [0, 3] and group.tolist() == [0, 0, 0, 1, 1, 1]

    def logits_and_grads(fn):
        lm.zero_grad()
        logits = fn(lm, b)
        (gather_logprobs(logits, response_tokens(b)) * b["response_mask"]).sum().backward()
        return logits.detach(), [p.grad.clone() for p in lm.parameters()]

    whole, whole_grads = logits_and_grads(_full_then_sliced)
    assert seen == [b["input_ids"].numel()]
    seen.clear()
    shared, shared_grads = logits_and_grads(response_logits)
    p, t = b["prompt_len"], b["response_mask"].shape[1]
    assert seen == [2 * p, 6 * (t - 1)]  # two prompts once each, then every row's response tokens
    mask = b["response_mask"].bool()
    torch.testing.assert_close(shared[mask], whole[mask], rtol=1e-4, atol=1e-5)
    for a, w in zip(shared_grads, whole_grads):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-6)


def test_distinct_prompts_and_sliding_window_models_run_whole_rows(tiny_model_path):
    """No shared prompt: no groups. A sliding-window model (its prompt cache keeps only the window) gets
    whole rows, the same logits as a full forward, and is not tried again."""
    assert prompt_groups(_batch()) is None
    config = MistralConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=3)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    b = _grouped_batch()
    with torch.no_grad():
        kept = response_logits(model, b)
        assert model.tether_whole_rows_only
        torch.testing.assert_close(kept, _full_then_sliced(model, b))


def test_shuffled_order_keeps_groups_together():
    """By group: a permutation in which every prompt's rows are adjacent and in batch order, the groups'
    order drawn from the generator; by row: the generator's plain permutation."""
    b = _grouped_batch(prompts=5, samples=3)
    orders = []
    for seed in range(6):
        order = shuffled_order(b, torch.Generator().manual_seed(seed), by_group=True)
        assert sorted(order.tolist()) == list(range(15))
        blocks = order.view(5, 3)
        assert all(blocks[i].tolist() == list(range(blocks[i, 0], blocks[i, 0] + 3)) for i in range(5))
        assert all(int(blocks[i, 0]) % 3 == 0 for i in range(5))
        orders.append(tuple(order.tolist()))
    assert len(set(orders)) > 1
    rows = shuffled_order(b, torch.Generator().manual_seed(3), by_group=False)
    assert torch.equal(rows, torch.randperm(15, generator=torch.Generator().manual_seed(3)))
